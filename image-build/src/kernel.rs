//! The stock Debian cloud kernel for an architecture: the `linux-image-cloud-<arch>` package and
//! the versioned one it depends on, fetched through [`Apt`] and unpacked. Cached: a second build
//! reuses the unpacked kernel without the network.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::Arch;
use crate::apt::{Apt, deb_field};

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
    let apt = Apt::new(cache, arch)?;
    let meta = format!("linux-image-cloud-{}", arch.debian());
    let meta_deb = if refresh {
        apt.refresh(&meta)?
    } else {
        apt.deb(&meta)?
    };
    let depends = deb_field(&meta_deb, "Depends")?;
    let versioned = depends
        .split(',')
        .map(|d| d.trim().split(' ').next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-") && d != &meta)
        .with_context(|| format!("{meta} depends on no linux-image package: {depends}"))?
        .to_string();
    let deb = apt.deb(&versioned)?;
    if unpacked.exists() {
        std::fs::remove_dir_all(&unpacked)?;
    }
    std::fs::create_dir_all(&dir)?;
    crate::progress(&format!("unpacking {}", deb.display()));
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked))?;
    let version = deb_field(&deb, "Version")?;
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

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
