//! A pod's network namespace, kept as a bind-mounted file (as `ip netns add` keeps one) so that
//! every container of the pod joins it by path, with its loopback up.

use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

/// Makes a new network namespace and binds it at `path`. Done on a thread of its own: a
/// network namespace belongs to the thread that unshares it, and that thread ends after.
pub fn create(path: &Path) -> Result<(), String> {
    if path.exists() && is_bound(path) {
        return Ok(());
    }
    std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let p = path.to_path_buf();
    std::thread::spawn(move || -> Result<(), String> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
        loopback_up()?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("binding the network namespace at {}: {e}", p.display()))
    })
    .join()
    .map_err(|_| "the network namespace's thread panicked".to_string())?
}

fn is_bound(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(4) == path.to_str()))
}

/// `ip link set lo up` in the calling thread's namespace, by ioctl.
fn loopback_up() -> Result<(), String> {
    // SAFETY: a plain socket call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: fd is a valid socket and req a valid ifreq for these ioctls.
    let r = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            -1
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req)
        }
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd was opened above and is closed once.
    unsafe { libc::close(fd) };
    if r < 0 {
        return Err(format!("bringing lo up: {err}"));
    }
    Ok(())
}

/// Unbinds and removes the namespace file (the namespace goes with its last user).
pub fn remove(path: &Path) {
    let _ = umount2(path, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(path);
}
