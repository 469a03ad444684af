//! Fixtures for the tests that boot ros in QEMU: images built once per change (under a lock, so
//! parallel test processes share one build), guests configured for a test, and typed access to
//! the ready line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
pub use ros_image::Arch;
use ros_image::{BuildOptions, InitKind};
use ros_qemu::{BootConfig, Guest};

/// How long a boot may take to the ready line under TCG on a busy 2-core machine.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Builds (or finds up to date) the image for `arch` and returns its folder. Parallel callers
/// wait on one lock file, so one build serves them all.
pub fn image(arch: Arch) -> Result<PathBuf> {
    build(arch, InitKind::Ros)
}

/// The same kernel with the null init (`initramfs-null.img` in the image folder).
pub fn null_image(arch: Arch) -> Result<PathBuf> {
    build(arch, InitKind::Null)
}

fn build(arch: Arch, init: InitKind) -> Result<PathBuf> {
    let out = ros_image::default_out(arch);
    std::fs::create_dir_all(&out)?;
    let lock_path = out.join(".build.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", lock_path.display()))?;
    ros_image::build(&BuildOptions {
        arch,
        out: out.clone(),
        refresh_kernel: false,
        init,
        quiet: true,
        layer_store: ros_image::images::LayerStore::Erofs,
    })?;
    Ok(out)
}

/// A boot of the image for `arch` with QEMU's defaults for the tests.
pub fn config(arch: Arch) -> Result<BootConfig> {
    Ok(BootConfig {
        image: image(arch)?,
        ..BootConfig::new(arch)
    })
}

/// Boots and waits for the ready line.
pub fn boot_ready(cfg: &BootConfig) -> Result<(Guest, serde_json::Value)> {
    let g = Guest::spawn(cfg)?;
    let ready = g.wait_ready(READY_TIMEOUT)?;
    Ok((g, ready))
}

/// The architectures the tests run on: both, or the one named by `ROS_TEST_ARCH`.
pub fn arches() -> Vec<Arch> {
    match std::env::var("ROS_TEST_ARCH") {
        Ok(a) => a
            .parse()
            .map(|a| vec![a])
            .unwrap_or_else(|_| Arch::ALL.to_vec()),
        Err(_) => Arch::ALL.to_vec(),
    }
}

/// A ready line's interface by name.
pub fn interface<'a>(ready: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    ready["interfaces"]
        .as_array()?
        .iter()
        .find(|i| i["name"] == name)
}

/// The strings of a JSON array.
pub fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
