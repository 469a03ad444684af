//! Debian packages for an architecture, through an apt state folder of ros-image's own under
//! `target/ros-cache/apt/<arch>/` (the host's apt lists and dpkg state are never touched, and
//! amd64 and arm64 work alike): `apt-get update` once, `apt-get download`, `dpkg -x`. Downloads
//! and unpacked trees are cached; a later build needs no network.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::Arch;

#[derive(Debug, Clone)]
pub struct Apt {
    arch: Arch,
    dir: PathBuf,
    opts: Vec<String>,
}

impl Apt {
    pub fn new(cache: &Path, arch: Arch) -> Result<Apt> {
        let dir = cache.join("apt").join(arch.debian());
        let lists = dir.join("lists");
        let cache_dir = dir.join("cache");
        std::fs::create_dir_all(lists.join("partial"))?;
        std::fs::create_dir_all(cache_dir.join("archives/partial"))?;
        std::fs::create_dir_all(dir.join("debs"))?;
        let a = arch.debian();
        Ok(Apt {
            arch,
            opts: vec![
                format!("-oAPT::Architecture={a}"),
                format!("-oAPT::Architectures={a}"),
                format!("-oDir::State::Lists={}", lists.display()),
                format!("-oDir::Cache={}", cache_dir.display()),
                "-oDebug::NoLocking=1".to_string(),
                "-oAPT::Sandbox::User=root".to_string(),
                "-q".to_string(),
            ],
            dir,
        })
    }

    fn updated(&self) -> bool {
        std::fs::read_dir(self.dir.join("lists"))
            .map(|d| {
                d.flatten().any(|e| {
                    e.file_name().to_string_lossy().ends_with("Packages.lz4")
                        || e.file_name().to_string_lossy().ends_with("Packages")
                })
            })
            .unwrap_or(false)
    }

    /// `apt-get update` into our own lists (once, or again when `force`).
    pub fn update(&self, force: bool) -> Result<()> {
        if self.updated() && !force {
            return Ok(());
        }
        crate::progress(&format!(
            "updating apt lists for {} in {}",
            self.arch.debian(),
            self.dir.display()
        ));
        crate::kernel::run(Command::new("apt-get").args(&self.opts).arg("update"))
    }

    /// The `.deb` of `package` (downloaded once).
    pub fn deb(&self, package: &str) -> Result<PathBuf> {
        let debs = self.dir.join("debs");
        if let Ok(d) = newest_deb(&debs, package) {
            return Ok(d);
        }
        self.update(false)?;
        crate::progress(&format!("downloading {package} ({})", self.arch.debian()));
        self.download(package)
    }

    /// Downloads `package` again even when one is cached (for a newer version).
    pub fn refresh(&self, package: &str) -> Result<PathBuf> {
        self.update(true)?;
        self.download(package)
    }

    fn download(&self, package: &str) -> Result<PathBuf> {
        let debs = self.dir.join("debs");
        crate::kernel::run(
            Command::new("apt-get")
                .current_dir(&debs)
                .args(&self.opts)
                .args(["download", package]),
        )?;
        newest_deb(&debs, package)
    }

    /// `package` unpacked (once) into a folder of its own; returns the folder.
    pub fn unpacked(&self, package: &str) -> Result<PathBuf> {
        let deb = self.deb(package)?;
        let name = deb
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let out = self
            .dir
            .join("unpacked")
            .join(name.trim_end_matches(".deb"));
        if !out.join(".done").exists() {
            if out.exists() {
                std::fs::remove_dir_all(&out)?;
            }
            std::fs::create_dir_all(&out)?;
            crate::kernel::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&out))?;
            std::fs::write(out.join(".done"), "")?;
        }
        Ok(out)
    }
}

/// The newest `package_VERSION_ARCH.deb` in `dir`, by Debian's version order (`6.1.158` is newer
/// than `6.1.99`; an epoch wins over everything; `~` sorts before the release).
pub fn newest_deb(dir: &Path, package: &str) -> Result<PathBuf> {
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter_map(|p| {
            let version = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| deb_version(n, package))?;
            Some((version, p))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, p)| p)
        .with_context(|| format!("no {package}_*.deb in {}", dir.display()))
}

/// The version in a `.deb`'s file name (`name_VERSION_arch.deb`; apt writes `:` as `%3a`).
fn deb_version(file: &str, package: &str) -> Option<debversion::Version> {
    let rest = file
        .strip_prefix(package)?
        .strip_prefix('_')?
        .strip_suffix(".deb")?;
    let (version, _arch) = rest.rsplit_once('_')?;
    version.replace("%3a", ":").parse().ok()
}

/// A field of a `.deb`'s control file.
pub fn deb_field(deb: &Path, field: &str) -> Result<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_deb_is_found_by_debian_version_not_by_name() {
        let dir = tempfile::tempdir().expect("tmp");
        for f in [
            "linux-image-cloud-amd64_6.1.99-1_amd64.deb",
            "linux-image-cloud-amd64_6.1.158-1_amd64.deb",
            "linux-image-cloud-amd64_6.1.158-1~bpo11+1_amd64.deb",
            "linux-image-cloud-amd64-dbg_9.9-1_amd64.deb",
            "other_7.0-1_amd64.deb",
        ] {
            std::fs::write(dir.path().join(f), "").expect("write");
        }
        let n = newest_deb(dir.path(), "linux-image-cloud-amd64").expect("found");
        assert_eq!(
            n.file_name().and_then(|n| n.to_str()),
            Some("linux-image-cloud-amd64_6.1.158-1_amd64.deb")
        );
        std::fs::write(
            dir.path()
                .join("linux-image-cloud-amd64_1%3a5.0-1_amd64.deb"),
            "",
        )
        .expect("write");
        let n = newest_deb(dir.path(), "linux-image-cloud-amd64").expect("found");
        assert!(
            n.to_string_lossy().contains("1%3a5.0"),
            "an epoch wins: {n:?}"
        );
    }
}
