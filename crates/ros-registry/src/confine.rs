//! Confinement for `ros-pull`, applied before it talks to a registry: what a registry sends
//! (TLS, HTTP, JSON, gzip, zstd, tar) is parsed by a process that can write nothing but the
//! image store and cannot reach the init's API or the machine's state.
//!
//! - its own mount namespace, where `/run` (the API socket, the containers' runtime state),
//!   `/var/lib/ros` (the persisted config, volumes, logs) and `/sys` are empty read-only
//!   tmpfs, the store alone is mounted back where it was, and every other mount is read-only;
//! - a capability set cut to what unpacking a layer as root needs (`CHOWN`, `DAC_OVERRIDE`,
//!   `FOWNER`, `FSETID`, `MKNOD`), the bounding set too, and `no_new_privs`.
//!
//! Every step must succeed: a pull that cannot be confined is refused, not run unconfined.

use std::path::{Path, PathBuf};

use caps::{CapSet, Capability};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

/// Hidden behind an empty tmpfs, in this order (the first is also the staging place).
pub const HIDDEN: &[&str] = &["/run", "/var/lib/ros", "/sys"];

/// What unpacking as root needs: owners, modes on files it does not own, set-id bits kept,
/// writing into read-only folders of the image, overlayfs whiteouts (0/0 character devices).
pub const KEPT: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_MKNOD,
];

fn m(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    mount(source, target, fstype, flags, data).map_err(|e| {
        format!(
            "confining the pull: mounting {} on {}: {e}",
            source.unwrap_or("-"),
            target.display()
        )
    })
}

/// Confines this process (see the module's text); `store` stays writable at its path.
pub fn confine(store: &Path) -> Result<(), String> {
    let store = std::fs::canonicalize(store)
        .map_err(|e| format!("confining the pull: the store {}: {e}", store.display()))?;
    unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("confining the pull: a mount namespace: {e}"))?;
    let root = Path::new("/");
    m(
        None,
        root,
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    let tmpfs = |at: &Path| {
        m(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=64k,mode=0755"),
        )
    };
    let staging = Path::new(HIDDEN[0]);
    tmpfs(staging)?;
    let parked = staging.join("store");
    std::fs::create_dir(&parked).map_err(|e| format!("confining the pull: {e}"))?;
    let s = store.to_string_lossy().into_owned();
    m(
        Some(&s),
        &parked,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    for h in &HIDDEN[1..] {
        if Path::new(h).is_dir() {
            tmpfs(Path::new(h))?;
        }
    }
    std::fs::create_dir_all(&store)
        .map_err(|e| format!("confining the pull: {}: {e}", store.display()))?;
    let p = parked.to_string_lossy().into_owned();
    m(Some(&p), &store, None, MsFlags::MS_MOVE, None)?;
    read_only_but(&store)?;
    drop_capabilities()
}

/// Remounts every reachable mount read-only (keeping its other flags), except `keep` and what
/// is under it.
fn read_only_but(keep: &Path) -> Result<(), String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("confining the pull: /proc/self/mountinfo: {e}"))?;
    for (point, opts) in mount_points(&info) {
        if point.starts_with(keep) {
            continue;
        }
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        for (name, f) in [
            ("nosuid", MsFlags::MS_NOSUID),
            ("nodev", MsFlags::MS_NODEV),
            ("noexec", MsFlags::MS_NOEXEC),
            ("noatime", MsFlags::MS_NOATIME),
            ("nodiratime", MsFlags::MS_NODIRATIME),
            ("relatime", MsFlags::MS_RELATIME),
        ] {
            if opts.split(',').any(|o| o == name) {
                flags |= f;
            }
        }
        match mount(None::<&str>, &point, None::<&str>, flags, None::<&str>) {
            Ok(()) => {}
            // Under a hidden folder now (e.g. the layers under /run): out of reach anyway.
            Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                return Err(format!(
                    "confining the pull: making {} read-only: {e}",
                    point.display()
                ));
            }
        }
    }
    Ok(())
}

/// (mount point, per-mount options) of each line of a mountinfo, octal escapes undone.
pub fn mount_points(info: &str) -> Vec<(PathBuf, String)> {
    info.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let point = f.nth(4)?;
            let opts = f.next()?;
            Some((PathBuf::from(unescape(point)), opts.to_string()))
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match oct {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn drop_capabilities() -> Result<(), String> {
    let err = |what: &str, e: caps::errors::CapsError| format!("confining the pull: {what}: {e}");
    for c in caps::all() {
        if !KEPT.contains(&c) {
            caps::drop(None, CapSet::Bounding, c).map_err(|e| err("the bounding set", e))?;
        }
    }
    let kept: caps::CapsHashSet = KEPT.iter().copied().collect();
    caps::set(None, CapSet::Inheritable, &caps::CapsHashSet::new())
        .map_err(|e| err("the inheritable set", e))?;
    caps::set(None, CapSet::Effective, &kept).map_err(|e| err("the effective set", e))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(|e| err("the permitted set", e))?;
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS and constant arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "confining the pull: no_new_privs: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_points_and_options() {
        let info = "22 1 0:21 / / rw,relatime - tmpfs rootfs rw\n\
                    30 22 0:5 / /media/my\\040cd ro,nosuid,nodev - iso9660 /dev/sr0 ro\n";
        let p = mount_points(info);
        assert_eq!(p[0], (PathBuf::from("/"), "rw,relatime".to_string()));
        assert_eq!(
            p[1],
            (PathBuf::from("/media/my cd"), "ro,nosuid,nodev".to_string())
        );
        assert_eq!(unescape("a\\011b\\\\"), "a\tb\\\\");
    }
}
