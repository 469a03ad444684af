//! The services: what containers need before the first one starts (the overlay module, the root
//! off the initramfs mount, the folders services mount, the image store), the logins the
//! console makes ([`logins`]), and the supervisor that runs them ([`supervisor`]). Which
//! services there are comes from the config (`ros_config::system`), through `config::apply`.

pub mod images;
pub mod logins;
pub mod supervisor;

use std::path::Path;

use ros_runtime::SpawnOptions;

use crate::platform::kmod::Loader;
use crate::platform::sys::Sys;
use crate::platform::{mounts, switch_root};
use images::ImageStore;
use supervisor::Supervisor;
use supervisor::spec::Paths;

/// Modules containers need: overlayfs for roots.
pub const CONTAINER_MODULES: &[&str] = &["overlay"];

/// Modules for layers kept as erofs images (`ros-image --layer-store erofs`), loaded only then.
pub const EROFS_MODULES: &[&str] = &["loop", "erofs"];

/// Everything before the first container, then a supervisor with no services yet. Problems go
/// to `errors`; the boot goes on without services when containers cannot run at all.
pub fn prepare(
    sys: &dyn Sys,
    mut loader: Option<&mut Loader>,
    extra_mounts: &[&str],
    errors: &mut Vec<String>,
) -> Option<Supervisor> {
    let mut load = |names: &[&str]| {
        if let Some(l) = loader.as_deref_mut() {
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            l.load(sys, &names);
        }
    };
    load(CONTAINER_MODULES);
    // The base mounts directly under `/`, and the state disk's (what is under those comes along).
    let tops: Vec<&str> = mounts::MOUNTS
        .iter()
        .map(|m| m.target)
        .filter(|t| t.matches('/').count() == 1)
        .chain(extra_mounts.iter().copied())
        .collect();
    if let Err(e) = switch_root::switch(&tops) {
        errors.push(format!("root: {e}; containers cannot start"));
        return None;
    }
    let paths = Paths::system();
    for d in [
        paths.run.join("containers"),
        paths.run.join("syslog"),
        paths.logs.join("services"),
        paths.state.clone(),
    ] {
        if let Err(e) = std::fs::create_dir_all(&d) {
            errors.push(format!("creating {}: {e}", d.display()));
        }
    }
    let store = match ImageStore::open(Path::new(images::STORE), Path::new(images::MOUNTS)) {
        Ok(s) => s,
        Err(e) => {
            errors.push(format!("images: {e}"));
            return None;
        }
    };
    if store.has_erofs_layers() {
        load(EROFS_MODULES);
    }
    let opts = SpawnOptions {
        cgroup_root: "/sys/fs/cgroup".into(),
        run_root: paths.run.join("containers"),
        // The init's own binary is the containers' shim (`main.rs` runs it as such).
        shim: Some("/proc/self/exe".into()),
    };
    Some(Supervisor::new(store, paths, opts))
}
