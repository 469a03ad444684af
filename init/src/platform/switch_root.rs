//! Gets the root off the kernel's initial mount, because containers need `pivot_root` and the
//! kernel refuses it while `/` is that mount (rootfs). rootfs is a tmpfs here (the kernel makes it
//! one when booted without `root=`), so the files need not move: the same tmpfs is bind-mounted
//! on a folder, the base mounts are moved into it, that mount is moved onto `/`, and the init
//! chroots into it. `/` is then an ordinary tmpfs mount, and `pivot_root` works from it (every
//! container start relies on it, and the QEMU tests start containers).
//!
//! This differs from `switch_root`, which copies the initramfs into a new tmpfs: measured under
//! QEMU TCG, copying ros's 7 MB initramfs and re-executing the init took about 155 ms of a boot
//! whose whole budget for the init is about 250 ms; the bind and move take about 7 ms. The switch
//! is only needed by containers, so it runs at the start of the services phase.

use std::path::Path;

use nix::mount::MsFlags;
use nix::sys::stat::Mode;

/// Where the root is bind-mounted before it is moved onto `/`.
pub const BIND_AT: &str = "/.ros-root";

/// Moves `/` onto a non-initial mount of itself, with the mounts at `tops` (absolute paths of
/// mounts directly under `/`; what is mounted under them comes along), and chroots into it.
pub fn switch(tops: &[&str]) -> Result<(), String> {
    let at = Path::new(BIND_AT);
    let step = |what: &str, r: nix::Result<()>| r.map_err(|e| format!("{what}: {e}"));
    match nix::unistd::mkdir(at, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(format!("creating {BIND_AT}: {e}")),
    }
    step(
        "bind-mounting / on itself",
        nix::mount::mount(Some("/"), at, None::<&str>, MsFlags::MS_BIND, None::<&str>),
    )?;
    for top in tops {
        let inside = at.join(top.trim_start_matches('/'));
        step(
            &format!("moving {top} into the new root"),
            nix::mount::mount(
                Some(*top),
                &inside,
                None::<&str>,
                MsFlags::MS_MOVE,
                None::<&str>,
            ),
        )?;
    }
    step("entering the bind mount", nix::unistd::chdir(at))?;
    step(
        "moving the bind mount onto /",
        nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>),
    )?;
    step("chroot", nix::unistd::chroot("."))?;
    step("chdir /", nix::unistd::chdir("/"))?;
    // The folder is still there in the new root (it is the same tmpfs); it is only a name now.
    let _ = std::fs::remove_dir(at);
    Ok(())
}
