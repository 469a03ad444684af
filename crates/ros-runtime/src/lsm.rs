//! Linux security modules: a process's AppArmor profile or SELinux label. A label that cannot be
//! applied is an error, never dropped: a bundle asking for one on a host without that module is
//! refused when it is read ([`check`]), and the label is set for the program's exec ([`apply`]).

use crate::config::Lsm;
use crate::error::{Error, Result};

/// Whether AppArmor is enabled on this host.
pub fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
}

/// Whether SELinux is enabled on this host.
pub fn selinux_enabled() -> bool {
    std::path::Path::new("/sys/fs/selinux/enforce").exists()
}

/// Refuses a label whose module is not enabled here.
pub fn check(l: &Lsm) -> Result<()> {
    match l {
        Lsm::AppArmor(p) if !apparmor_enabled() => Err(Error::Config(format!(
            "process.apparmorProfile `{p}`: AppArmor is not enabled on this host"
        ))),
        Lsm::SeLinux(p) if !selinux_enabled() => Err(Error::Config(format!(
            "process.selinuxLabel `{p}`: SELinux is not enabled on this host"
        ))),
        _ => Ok(()),
    }
}

/// Sets the label the next exec takes on (the process's `attr/exec`).
pub fn apply(l: &Lsm) -> std::result::Result<(), String> {
    let (file, value, what) = match l {
        // The AppArmor interface takes "exec PROFILE" on the LSM-specific file, or the
        // shared one on older kernels.
        Lsm::AppArmor(p) => (
            if std::path::Path::new("/proc/self/attr/apparmor/exec").exists() {
                "/proc/self/attr/apparmor/exec"
            } else {
                "/proc/self/attr/exec"
            },
            format!("exec {p}"),
            "AppArmor profile",
        ),
        Lsm::SeLinux(label) => ("/proc/self/attr/exec", label.clone(), "SELinux label"),
    };
    std::fs::write(file, value).map_err(|e| format!("setting the {what}: {e}"))
}
