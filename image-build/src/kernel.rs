//! Fetches the stock Debian cloud kernel package for an architecture with `apt-get download`,
//! through an apt state folder of its own under `target/` (so the host's apt lists and dpkg state
//! are never touched, and amd64 and arm64 work alike), and unpacks it with `dpkg -x`. Cached: a
//! second build reuses the unpacked kernel without the network.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::Arch;

/// An unpacked kernel: its release, its image, and its modules folder.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub release: String,
    /// The Debian package version, e.g. `6.1.192-2`.
    pub package_version: String,
    pub vmlinuz: PathBuf,
    pub modules_dir: PathBuf,
}

/// Returns the cached kernel for `arch` under `cache`, fetching it first when missing (or when
/// `refresh` asks for the newest).
pub fn fetch(arch: Arch, cache: &Path, refresh: bool) -> Result<Kernel> {
    let dir = cache.join("kernel").join(arch.debian());
    let unpacked = dir.join("unpacked");
    if !refresh && let Ok(k) = find(&unpacked) {
        return Ok(k);
    }
    std::fs::create_dir_all(&dir)?;
    let apt = AptState::new(&dir, arch)?;
    crate::progress(&format!(
        "updating apt lists for {} (own state in {})",
        arch.debian(),
        dir.display()
    ));
    apt.run(&["update"])?;
    let meta = format!("linux-image-cloud-{}", arch.debian());
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs)?;
    crate::progress(&format!("downloading {meta}"));
    apt.download(&debs, &meta)?;
    let meta_deb = newest_deb(&debs, &meta)?;
    let depends = dpkg_field(&meta_deb, "Depends")?;
    let versioned = depends
        .split(',')
        .map(|d| d.trim().split(' ').next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-") && d != &meta)
        .with_context(|| format!("{meta} depends on no linux-image package: {depends}"))?
        .to_string();
    crate::progress(&format!("downloading {versioned}"));
    apt.download(&debs, &versioned)?;
    let deb = newest_deb(&debs, &versioned)?;
    if unpacked.exists() {
        std::fs::remove_dir_all(&unpacked)?;
    }
    crate::progress(&format!("unpacking {}", deb.display()));
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked))?;
    let version = dpkg_field(&deb, "Version")?;
    std::fs::write(unpacked.join(".package-version"), version.trim())?;
    find(&unpacked)
}

fn find(unpacked: &Path) -> Result<Kernel> {
    let modules = unpacked.join("lib/modules");
    let release = std::fs::read_dir(&modules)
        .with_context(|| format!("no kernel unpacked in {}", unpacked.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max()
        .context("no kernel release under lib/modules")?;
    let vmlinuz = unpacked.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.exists() {
        bail!("{} is missing", vmlinuz.display());
    }
    let package_version = std::fs::read_to_string(unpacked.join(".package-version"))
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok(Kernel {
        modules_dir: modules.join(&release),
        release,
        package_version,
        vmlinuz,
    })
}

/// apt run against a state folder of our own, for one architecture.
struct AptState {
    opts: Vec<String>,
}

impl AptState {
    fn new(dir: &Path, arch: Arch) -> Result<Self> {
        let lists = dir.join("apt/lists");
        let cache = dir.join("apt/cache");
        std::fs::create_dir_all(lists.join("partial"))?;
        std::fs::create_dir_all(cache.join("archives/partial"))?;
        let a = arch.debian();
        Ok(AptState {
            opts: vec![
                format!("-oAPT::Architecture={a}"),
                format!("-oAPT::Architectures={a}"),
                format!("-oDir::State::Lists={}", lists.display()),
                format!("-oDir::Cache={}", cache.display()),
                "-oDebug::NoLocking=1".to_string(),
                "-oAPT::Sandbox::User=root".to_string(),
                "-q".to_string(),
            ],
        })
    }

    fn run(&self, args: &[&str]) -> Result<()> {
        run(Command::new("apt-get").args(&self.opts).args(args))
    }

    fn download(&self, into: &Path, package: &str) -> Result<()> {
        run(Command::new("apt-get")
            .current_dir(into)
            .args(&self.opts)
            .args(["download", package]))
    }
}

fn newest_deb(dir: &Path, package: &str) -> Result<PathBuf> {
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .max()
        .with_context(|| {
            format!(
                "apt-get download left no {package}_*.deb in {}",
                dir.display()
            )
        })
}

fn dpkg_field(deb: &Path, field: &str) -> Result<String> {
    let out = Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb)
        .arg(field)
        .output()?;
    if !out.status.success() {
        bail!("dpkg-deb -f {} {field} failed", deb.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
