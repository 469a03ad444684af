//! The orderly end: stop every process (TERM, a grace period, KILL), release DHCP leases, sync,
//! unmount real filesystems (read-only when busy), then reboot(2). Never returns.

use std::time::Duration;

use nix::mount::{MntFlags, MsFlags};
use nix::sys::reboot::RebootMode;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::network::NetState;
use crate::platform::power::{Action, reap};
use crate::services::supervisor::Supervisor;

/// How long processes get between TERM and KILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long DHCP drivers get to send their RELEASE.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// Filesystems that hold nothing to flush; they are left mounted.
const VIRTUAL_FS: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "tmpfs",
    "cgroup2",
    "cgroup",
    "rootfs",
    "securityfs",
    "debugfs",
    "tracefs",
    "bpf",
    "mqueue",
    "pstore",
    "configfs",
    "fusectl",
    "hugetlbfs",
];

/// Whether any user process but the init remains. (`kill(-1, 0)` cannot tell: it succeeds
/// while kernel threads exist, and they always do.)
fn others_alive() -> bool {
    reap();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let pid: u32 = match e.file_name().to_string_lossy().parse() {
            Ok(p) => p,
            Err(_) => return false,
        };
        pid > 2
            && std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| parent_pid(&s))
                .is_some_and(|ppid| ppid != 2)
    })
}

/// The parent pid in a `/proc/PID/stat` line (the field after the `)` that ends the name).
pub fn parent_pid(stat: &str) -> Option<u32> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn stop_processes() {
    if !others_alive() {
        return;
    }
    log::info!("shutdown: sending TERM to all processes");
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    while others_alive() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if others_alive() {
        log::warn!(
            "shutdown: processes left after {} s; sending KILL",
            STOP_GRACE.as_secs()
        );
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        tokio::time::sleep(Duration::from_millis(100)).await;
        reap();
    }
}

/// Mount points of real filesystems, innermost first.
pub fn real_mounts(proc_mounts: &str) -> Vec<String> {
    let mut out: Vec<String> = proc_mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_src, target, fstype) = (f.next()?, f.next()?, f.next()?);
            (target != "/" && !VIRTUAL_FS.contains(&fstype)).then(|| target.replace("\\040", " "))
        })
        .collect();
    out.reverse();
    out
}

fn unmount_all() {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for target in real_mounts(&mounts) {
        match nix::mount::umount2(target.as_str(), MntFlags::empty()) {
            Ok(()) => log::info!("shutdown: unmounted {target}"),
            Err(e) => {
                let ro = nix::mount::mount(
                    None::<&str>,
                    target.as_str(),
                    None::<&str>,
                    MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                );
                log::warn!(
                    "shutdown: {target} is busy ({e}); remounted read-only: {}",
                    ro.is_ok()
                );
            }
        }
    }
}

/// How long the services get, in all, to stop in order.
pub const SERVICES_TIMEOUT: Duration = Duration::from_secs(60);

/// Stops the services in reverse dependency order (each with its stop signal, then SIGKILL
/// after its stop timeout).
async fn stop_services(sup: &mut Supervisor) {
    let now = crate::platform::clock::uptime_ms;
    sup.stop_all(now());
    let deadline = tokio::time::Instant::now() + SERVICES_TIMEOUT;
    while !sup.all_stopped() && tokio::time::Instant::now() < deadline {
        for s in reap() {
            sup.on_exit(s, now());
        }
        sup.poll_spawned(now());
        sup.on_timer(now());
        if sup.all_stopped() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if sup.all_stopped() {
        log::info!("shutdown: services stopped");
    } else {
        log::warn!(
            "shutdown: services still running after {} s",
            SERVICES_TIMEOUT.as_secs()
        );
    }
}

pub async fn shutdown(
    action: Action,
    reason: &str,
    net: Option<&mut NetState>,
    sup: Option<&mut Supervisor>,
) -> ! {
    log::info!("shutdown: {action} requested by {reason}");
    if let Some(sup) = sup {
        stop_services(sup).await;
    }
    stop_processes().await;
    if let Some(net) = net {
        net.release_all(RELEASE_TIMEOUT).await;
    }
    nix::unistd::sync();
    unmount_all();
    nix::unistd::sync();
    log::info!("shutdown: {action} now");
    finish(action)
}

/// The last step; used also when the init cannot go on at all.
pub fn finish(action: Action) -> ! {
    let mode = match action {
        Action::Poweroff => RebootMode::RB_POWER_OFF,
        Action::Reboot => RebootMode::RB_AUTOBOOT,
    };
    let err = nix::sys::reboot::reboot(mode);
    log::error!("shutdown: reboot(2) failed: {err:?}; the machine stays up");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_pid_from_stat() {
        assert_eq!(parent_pid("42 (sh) S 1 42 42 0"), Some(1));
        assert_eq!(parent_pid("7 (a) b) c) S 2 0 0"), Some(2));
        assert_eq!(parent_pid("garbage"), None);
    }

    #[test]
    fn only_real_filesystems_innermost_first() {
        let m = "rootfs / tmpfs rw 0 0\nproc /proc proc rw 0 0\n/dev/vda /var/lib/ros ext4 rw 0 0\noverlay /var/lib/ros/c/x overlay rw 0 0\ntmpfs /run tmpfs rw 0 0\n/dev/sr0 /media/my\\040cd iso9660 ro 0 0\n";
        assert_eq!(
            real_mounts(m),
            ["/media/my cd", "/var/lib/ros/c/x", "/var/lib/ros"]
        );
    }
}
