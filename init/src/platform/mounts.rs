//! The base filesystems, as one declarative table applied in order, then the cgroup v2
//! controllers enabled for children and the `/dev` links devtmpfs does not make.

use std::path::Path;

use nix::mount::MsFlags;

use crate::platform::sys::Sys;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// Mounted in this order; each target is created first.
pub const MOUNTS: &[MountSpec] = &[
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("gid=5,mode=0620,ptmxmode=0666"),
    },
    MountSpec {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    MountSpec {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    MountSpec {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    MountSpec {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("nsdelegate"),
    },
];

/// Controllers enabled for the children of the root cgroup.
pub const CGROUP_CONTROLLERS: &[&str] = &["cpu", "io", "memory", "pids"];

/// Links under /dev that programs expect and devtmpfs does not create.
pub const DEV_LINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("/proc/kcore", "/dev/core"),
];

fn under(root: &Path, abs: &str) -> std::path::PathBuf {
    root.join(abs.trim_start_matches('/'))
}

/// Mounts the table under `root` (`/` in the init). Returns one message per step that failed;
/// the following steps still run.
pub fn mount_all(sys: &dyn Sys, root: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    for m in MOUNTS {
        let target = under(root, m.target);
        if let Err(e) = sys.mkdir_all(&target, 0o755) {
            errors.push(format!("creating {}: {e}", m.target));
            continue;
        }
        if let Err(e) = sys.mount(m.source, &target, m.fstype, m.flags, m.data) {
            // Already mounted (a re-run, or the kernel did it) is fine.
            if e.raw_os_error() != Some(libc::EBUSY) {
                errors.push(format!("mounting {} on {}: {e}", m.fstype, m.target));
            }
        }
    }
    let control = under(root, "/sys/fs/cgroup/cgroup.subtree_control");
    for c in CGROUP_CONTROLLERS {
        if let Err(e) = sys.write(&control, format!("+{c}").as_bytes()) {
            errors.push(format!("enabling the cgroup {c} controller: {e}"));
        }
    }
    for (target, link) in DEV_LINKS {
        if let Err(e) = sys.symlink(target, &under(root, link)) {
            errors.push(format!("linking {link}: {e}"));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::sys::Recorder;

    #[test]
    fn mounts_in_table_order_then_controllers_and_links() {
        let r = Recorder::default();
        let errors = mount_all(&r, Path::new("/"));
        assert!(errors.is_empty(), "{errors:?}");
        let calls = r.calls();
        let mounts: Vec<_> = calls
            .iter()
            .filter(|c| c.starts_with("mount"))
            .map(|c| c.split(' ').nth(2).unwrap_or_default())
            .collect();
        assert_eq!(
            mounts,
            [
                "/proc",
                "/sys",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/run",
                "/tmp",
                "/sys/fs/cgroup"
            ]
        );
        // Each mount point is made right before it is mounted.
        let dev = calls
            .iter()
            .position(|c| c == "mkdir /dev 755")
            .expect("mkdir");
        assert!(calls[dev + 1].starts_with("mount devtmpfs /dev devtmpfs"));
        for c in ["+cpu", "+io", "+memory", "+pids"] {
            assert!(calls.contains(&format!("write /sys/fs/cgroup/cgroup.subtree_control {c}")));
        }
        assert!(calls.contains(&"symlink /proc/self/fd /dev/fd".to_string()));
        assert!(calls.iter().any(|c| c.contains("cgroup2 0xe nsdelegate")));
    }

    #[test]
    fn a_failed_mount_is_reported_and_the_rest_still_mount() {
        let r = Recorder::failing(&["mount devpts"]);
        let errors = mount_all(&r, Path::new("/"));
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("mounting devpts on /dev/pts"),
            "{errors:?}"
        );
        assert!(r.calls().iter().any(|c| c.starts_with("mount cgroup2")));
    }

    #[test]
    fn targets_go_under_the_given_root() {
        let r = Recorder::default();
        mount_all(&r, Path::new("/newroot"));
        assert!(r.calls().contains(&"mkdir /newroot/proc 755".to_string()));
    }
}
