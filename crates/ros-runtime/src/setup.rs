//! What happens inside a new container before its program runs, as a plan of steps computed
//! purely from the config (so the order is unit-tested), then carried out by [`apply`].
//!
//! Order: nothing propagates back to the host; the root is assembled (an overlay, or a folder
//! bound on itself) and the config's mounts go into it, with the device nodes; the root becomes
//! `/` by `pivot_root`; sysctls; then paths are masked or made read-only, and the root itself if
//! asked; the hostname.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::config::{Config, DeviceKind, NsMode, Rootfs};

/// Host folders a container's setup uses.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Where the root is assembled (the overlay's mount point).
    pub root: PathBuf,
    /// Where a tmpfs for the overlay's writable layer is mounted.
    pub scratch: PathBuf,
    /// The container's cgroup on the host (bound in place of a cgroup2 mount that a user
    /// namespace without a cgroup namespace of its own may not make).
    pub cgroup: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Sets the propagation of the mount at `target`.
    Propagation {
        target: String,
        flags: MsFlags,
    },
    Mkdir {
        path: String,
    },
    Mount {
        source: String,
        target: String,
        fstype: String,
        flags: MsFlags,
        data: String,
    },
    /// Remounts a bind mount with `flags` (e.g. read-only), keeping its other flags.
    RemountBind {
        target: String,
        flags: MsFlags,
    },
    Mknod {
        path: String,
        kind: DeviceKind,
        major: u64,
        minor: u64,
        mode: u32,
        owner: Option<(Option<u32>, Option<u32>)>,
    },
    Symlink {
        target: String,
        link: String,
    },
    PivotRoot {
        new_root: String,
    },
    /// Hides a path: /dev/null over a file, an empty read-only tmpfs over a folder.
    Mask {
        path: String,
    },
    /// Makes a path read-only (a bind of itself, remounted read-only), if it exists.
    ReadOnly {
        path: String,
    },
    Sethostname {
        name: String,
    },
    Sysctl {
        key: String,
        value: String,
    },
}

fn join(root: &str, abs: &str) -> String {
    format!(
        "{}/{}",
        root.trim_end_matches('/'),
        abs.trim_start_matches('/')
    )
}

/// Binds `source` on `target` (recursively or not), then makes it read-only, nosuid, nodev and
/// noexec.
fn read_only_bind(steps: &mut Vec<Step>, source: String, target: String, recursive: bool) {
    steps.push(Step::Mount {
        source,
        target: target.clone(),
        fstype: "bind".into(),
        flags: if recursive {
            MsFlags::MS_BIND | MsFlags::MS_REC
        } else {
            MsFlags::MS_BIND
        },
        data: String::new(),
    });
    steps.push(Step::RemountBind {
        target,
        flags: MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    });
}

/// The setup steps for `cfg`.
pub fn plan(cfg: &Config, paths: &Paths) -> Vec<Step> {
    let mut steps = vec![Step::Propagation {
        target: "/".into(),
        flags: MsFlags::MS_REC | MsFlags::MS_PRIVATE,
    }];
    if let Some(p) = cfg.rootfs_propagation {
        // pivot_root refuses shared mounts, and an unbindable one cannot be bound on itself:
        // until pivot_root a shared root is a slave (which still receives the host's mount
        // events) and an unbindable one private; after it, the root takes the propagation.
        let before = if p.contains(MsFlags::MS_SHARED) {
            (p - MsFlags::MS_SHARED) | MsFlags::MS_SLAVE
        } else if p.contains(MsFlags::MS_UNBINDABLE) {
            (p - MsFlags::MS_UNBINDABLE) | MsFlags::MS_PRIVATE
        } else {
            p
        };
        steps.push(Step::Propagation {
            target: "/".into(),
            flags: before,
        });
    }
    let nodev = if cfg.nodev_root {
        MsFlags::MS_NODEV
    } else {
        MsFlags::empty()
    };
    let root = match &cfg.rootfs {
        Rootfs::Dir(p) => {
            let p = p.display().to_string();
            // pivot_root needs the new root to be a mount point.
            steps.push(Step::Mount {
                source: p.clone(),
                target: p.clone(),
                fstype: "bind".into(),
                flags: MsFlags::MS_BIND | MsFlags::MS_REC,
                data: String::new(),
            });
            if cfg.nodev_root {
                steps.push(Step::RemountBind {
                    target: p.clone(),
                    flags: MsFlags::MS_NODEV,
                });
            }
            p
        }
        Rootfs::Overlay { lower, upper } => {
            let (upper_dir, work_dir) = match upper {
                Some(u) => (u.join("upper"), u.join("work")),
                None => {
                    let s = paths.scratch.display().to_string();
                    steps.push(Step::Mkdir { path: s.clone() });
                    steps.push(Step::Mount {
                        source: "tmpfs".into(),
                        target: s,
                        fstype: "tmpfs".into(),
                        flags: nodev,
                        data: "mode=0755".into(),
                    });
                    (paths.scratch.join("upper"), paths.scratch.join("work"))
                }
            };
            let root = paths.root.display().to_string();
            for d in [&upper_dir, &work_dir, &paths.root] {
                steps.push(Step::Mkdir {
                    path: d.display().to_string(),
                });
            }
            let lower: Vec<String> = lower.iter().map(|l| l.display().to_string()).collect();
            steps.push(Step::Mount {
                source: "overlay".into(),
                target: root.clone(),
                fstype: "overlay".into(),
                flags: nodev,
                data: format!(
                    "lowerdir={},upperdir={},workdir={}",
                    lower.join(":"),
                    upper_dir.display(),
                    work_dir.display()
                ),
            });
            root
        }
    };

    for m in &cfg.mounts {
        let target = join(&root, &m.destination);
        steps.push(Step::Mkdir {
            path: target.clone(),
        });
        let (mut flags, mut data) = (m.flags, m.data.clone());
        // ros is cgroup v2 only: a `cgroup` mount (the v1 type, in runc's default spec) gets the
        // unified hierarchy, as runc does on a unified host.
        let fstype = if m.fstype == "cgroup" {
            "cgroup2".to_string()
        } else {
            m.fstype.clone()
        };
        if fstype == "cgroup2" {
            data.clear();
        }
        // In a user namespace, cgroup2 can be mounted only from a cgroup namespace of its own;
        // without one, the container's own group is bound there, read-only (as runc does).
        if fstype == "cgroup2"
            && cfg.namespaces.user == NsMode::New
            && cfg.namespaces.cgroup != NsMode::New
        {
            read_only_bind(&mut steps, paths.cgroup.display().to_string(), target, true);
            continue;
        }
        // A cgroup2 mount without a cgroup namespace of its own would show the host's tree.
        if fstype == "cgroup2" && cfg.namespaces.cgroup != NsMode::New {
            flags |= MsFlags::MS_RDONLY;
        }
        if m.fstype == "sysfs" && cfg.namespaces.net != NsMode::New {
            // A sysfs of the host's network namespace: bind the host's, read-only. Not
            // recursively: the host's cgroup2 mount would come along, and the container's own
            // cgroup2 mount on the same place would then fail with EBUSY.
            read_only_bind(&mut steps, "/sys".into(), target, false);
            continue;
        }
        if m.is_bind() {
            data.clear();
            let remount = flags
                & (MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_NOEXEC);
            steps.push(Step::Mount {
                source: m.source.clone(),
                target: target.clone(),
                fstype: "bind".into(),
                flags: flags & (MsFlags::MS_BIND | MsFlags::MS_REC),
                data,
            });
            // Bind mounts ignore most flags until remounted.
            if !remount.is_empty() {
                steps.push(Step::RemountBind {
                    target: target.clone(),
                    flags: remount,
                });
            }
        } else {
            flags &= !MsFlags::MS_REMOUNT;
            steps.push(Step::Mount {
                source: m.source.clone(),
                target: target.clone(),
                fstype,
                flags,
                data,
            });
        }
        if let Some(p) = m.propagation {
            steps.push(Step::Propagation { target, flags: p });
        }
    }

    let dev_is_ours = cfg
        .mounts
        .iter()
        .any(|m| m.destination == "/dev" && !m.is_bind());
    if dev_is_ours {
        for d in &cfg.devices {
            steps.push(Step::Mknod {
                path: join(&root, &d.path),
                kind: d.kind,
                major: d.major,
                minor: d.minor,
                mode: d.mode,
                owner: (d.uid.is_some() || d.gid.is_some()).then_some((d.uid, d.gid)),
            });
        }
        for (target, link) in [
            ("/proc/self/fd", "/dev/fd"),
            ("/proc/self/fd/0", "/dev/stdin"),
            ("/proc/self/fd/1", "/dev/stdout"),
            ("/proc/self/fd/2", "/dev/stderr"),
            ("pts/ptmx", "/dev/ptmx"),
        ] {
            steps.push(Step::Symlink {
                target: target.into(),
                link: join(&root, link),
            });
        }
        for (target, link) in &cfg.dev_symlinks {
            steps.push(Step::Symlink {
                target: target.clone(),
                link: join(&root, link),
            });
        }
    }

    steps.push(Step::PivotRoot { new_root: root });
    if let Some(p) = cfg.rootfs_propagation {
        steps.push(Step::Propagation {
            target: "/".into(),
            flags: p,
        });
    }
    for (key, value) in &cfg.sysctl {
        steps.push(Step::Sysctl {
            key: key.clone(),
            value: value.clone(),
        });
    }
    for p in &cfg.masked_paths {
        steps.push(Step::Mask { path: p.clone() });
    }
    for p in &cfg.readonly_paths {
        steps.push(Step::ReadOnly { path: p.clone() });
    }
    if cfg.readonly_root {
        steps.push(Step::RemountBind {
            target: "/".into(),
            flags: MsFlags::MS_RDONLY,
        });
    }
    if let Some(h) = &cfg.hostname {
        steps.push(Step::Sethostname { name: h.clone() });
    }
    steps
}

fn ctx<T>(r: nix::Result<T>, what: impl FnOnce() -> String) -> Result<T, String> {
    r.map_err(|e| format!("{}: {e}", what()))
}

/// The flags of the mount at `path` that a read-only bind remount must keep (else the kernel
/// refuses to drop them).
fn kept_flags(path: &str) -> MsFlags {
    use nix::sys::statvfs::{FsFlags, statvfs};
    let Ok(st) = statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
    ] {
        if f.contains(fs) {
            out |= ms;
        }
    }
    out
}

/// Carries out the steps; the first that fails ends the setup with its error.
pub fn apply(steps: &[Step]) -> Result<(), String> {
    use nix::mount::mount;
    for s in steps {
        match s {
            Step::Propagation { target, flags } => {
                ctx(
                    mount(
                        None::<&str>,
                        target.as_str(),
                        None::<&str>,
                        *flags,
                        None::<&str>,
                    ),
                    || format!("setting propagation of {target}"),
                )?;
            }
            Step::Mkdir { path } => {
                if std::fs::symlink_metadata(path).is_err() {
                    std::fs::create_dir_all(path).map_err(|e| format!("creating {path}: {e}"))?;
                }
            }
            Step::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => {
                if flags.contains(MsFlags::MS_BIND) {
                    // A file is bound onto a file.
                    if Path::new(source).is_file() && Path::new(target).is_dir() {
                        let _ = std::fs::remove_dir(target);
                        std::fs::write(target, b"")
                            .map_err(|e| format!("creating {target}: {e}"))?;
                    }
                    ctx(
                        mount(
                            Some(source.as_str()),
                            target.as_str(),
                            None::<&str>,
                            *flags,
                            None::<&str>,
                        ),
                        || format!("binding {source} on {target}"),
                    )?;
                } else {
                    let data = (!data.is_empty()).then_some(data.as_str());
                    ctx(
                        mount(
                            Some(source.as_str()),
                            target.as_str(),
                            Some(fstype.as_str()),
                            *flags,
                            data,
                        ),
                        || format!("mounting {fstype} on {target}"),
                    )?;
                }
            }
            Step::RemountBind { target, flags } => {
                let all = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | *flags | kept_flags(target);
                ctx(
                    mount(
                        None::<&str>,
                        target.as_str(),
                        None::<&str>,
                        all,
                        None::<&str>,
                    ),
                    || format!("remounting {target}"),
                )?;
            }
            Step::Mknod {
                path,
                kind,
                major,
                minor,
                mode,
                owner,
            } => {
                let dev = nix::sys::stat::makedev(*major, *minor);
                let perm = nix::sys::stat::Mode::from_bits_truncate(*mode);
                let kind = match kind {
                    DeviceKind::Char => nix::sys::stat::SFlag::S_IFCHR,
                    DeviceKind::Block => nix::sys::stat::SFlag::S_IFBLK,
                    DeviceKind::Fifo => nix::sys::stat::SFlag::S_IFIFO,
                };
                // A node under a folder of its own (`/dev/net/tun`, `/dev/disk/x`).
                if let Some(dir) = Path::new(path).parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
                }
                match nix::sys::stat::mknod(path.as_str(), kind, perm, dev) {
                    Ok(()) => {
                        // mknod's mode is cut by the umask.
                        let _ = nix::sys::stat::fchmodat(
                            nix::fcntl::AT_FDCWD,
                            path.as_str(),
                            perm,
                            nix::sys::stat::FchmodatFlags::FollowSymlink,
                        );
                        if let Some((uid, gid)) = owner {
                            ctx(
                                nix::unistd::chown(
                                    path.as_str(),
                                    uid.map(nix::unistd::Uid::from_raw),
                                    gid.map(nix::unistd::Gid::from_raw),
                                ),
                                || format!("setting the owner of {path}"),
                            )?;
                        }
                    }
                    // In a user namespace: bind the host's node instead.
                    Err(nix::errno::Errno::EPERM) => {
                        let host = format!("/dev/{}", path.rsplit('/').next().unwrap_or(""));
                        std::fs::write(path, b"").map_err(|e| format!("creating {path}: {e}"))?;
                        ctx(
                            mount(
                                Some(host.as_str()),
                                path.as_str(),
                                None::<&str>,
                                MsFlags::MS_BIND,
                                None::<&str>,
                            ),
                            || format!("binding {host}"),
                        )?;
                    }
                    Err(e) => return Err(format!("making {path}: {e}")),
                }
            }
            Step::Symlink { target, link } => match std::os::unix::fs::symlink(target, link) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("linking {link}: {e}")),
            },
            Step::PivotRoot { new_root } => {
                ctx(nix::unistd::chdir(new_root.as_str()), || {
                    format!("entering {new_root}")
                })?;
                ctx(nix::unistd::pivot_root(".", "."), || "pivot_root".into())?;
                // The old root is now stacked under the new one: detach it.
                ctx(nix::mount::umount2(".", MntFlags::MNT_DETACH), || {
                    "detaching the old root".into()
                })?;
                ctx(nix::unistd::chdir("/"), || "chdir /".into())?;
            }
            Step::Sysctl { key, value } => {
                let path = format!("/proc/sys/{}", key.replace('.', "/"));
                std::fs::write(&path, value).map_err(|e| format!("sysctl {key}: {e}"))?;
            }
            Step::Mask { path } => match std::fs::metadata(path) {
                Err(_) => {}
                Ok(m) if m.is_dir() => ctx(
                    mount(
                        Some("tmpfs"),
                        path.as_str(),
                        Some("tmpfs"),
                        MsFlags::MS_RDONLY,
                        None::<&str>,
                    ),
                    || format!("masking {path}"),
                )?,
                Ok(_) => ctx(
                    mount(
                        Some("/dev/null"),
                        path.as_str(),
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    ),
                    || format!("masking {path}"),
                )?,
            },
            Step::ReadOnly { path } => {
                if std::fs::symlink_metadata(path).is_err() {
                    continue;
                }
                ctx(
                    mount(
                        Some(path.as_str()),
                        path.as_str(),
                        None::<&str>,
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        None::<&str>,
                    ),
                    || format!("binding {path}"),
                )?;
                let flags =
                    MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | kept_flags(path);
                ctx(
                    mount(
                        None::<&str>,
                        path.as_str(),
                        None::<&str>,
                        flags,
                        None::<&str>,
                    ),
                    || format!("making {path} read-only"),
                )?;
            }
            Step::Sethostname { name } => {
                ctx(nix::unistd::sethostname(name), || {
                    "setting the hostname".into()
                })?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::*;
    use crate::seccomp::SeccompConfig;

    fn cfg(rootfs: Rootfs) -> Config {
        Config {
            id: "c1".into(),
            rootfs,
            readonly_root: true,
            namespaces: Namespaces::isolated(),
            uid_map: vec![],
            gid_map: vec![],
            hostname: Some("c1".into()),
            mounts: default_mounts(),
            devices: default_devices(),
            device_rules: None,
            nodev_root: true,
            dev_symlinks: vec![("/run/syslog/log".into(), "/dev/log".into())],
            process: Process {
                args: vec!["/bin/true".into()],
                env: vec![],
                cwd: "/".into(),
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                capabilities: None,
                rlimits: vec![],
                no_new_privileges: true,
                oom_score_adj: None,
                terminal: false,
                lsm: None,
                umask: None,
                nice: None,
            },
            cgroup_path: "c1".into(),
            resources: Resources::default(),
            seccomp: SeccompConfig::None,
            masked_paths: vec!["/proc/kcore".into()],
            readonly_paths: vec!["/proc/sys".into()],
            sysctl: vec![("net.ipv4.ip_forward".into(), "1".into())],
            init: false,
            hooks: Default::default(),
            rootfs_propagation: None,
            preserve_fds: 0,
        }
    }

    fn paths() -> Paths {
        Paths {
            root: "/run/ros/c1/root".into(),
            scratch: "/run/ros/c1/rw".into(),
            cgroup: "/sys/fs/cgroup/c1".into(),
        }
    }

    fn kinds(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::Propagation { target, .. } => format!("propagation {target}"),
                Step::Mkdir { path } => format!("mkdir {path}"),
                Step::Mount { fstype, target, .. } => format!("mount {fstype} {target}"),
                Step::RemountBind { target, .. } => format!("remount {target}"),
                Step::Mknod { path, .. } => format!("mknod {path}"),
                Step::Symlink { link, .. } => format!("symlink {link}"),
                Step::PivotRoot { new_root } => format!("pivot_root {new_root}"),
                Step::Mask { path } => format!("mask {path}"),
                Step::ReadOnly { path } => format!("readonly {path}"),
                Step::Sethostname { name } => format!("hostname {name}"),
                Step::Sysctl { key, .. } => format!("sysctl {key}"),
            })
            .collect()
    }

    #[test]
    fn overlay_root_order() {
        let c = cfg(Rootfs::Overlay {
            lower: vec!["/images/console".into(), "/images/base".into()],
            upper: None,
        });
        let steps = plan(&c, &paths());
        let k = kinds(&steps);
        assert_eq!(
            &k[..7],
            [
                "propagation /",
                "mkdir /run/ros/c1/rw",
                "mount tmpfs /run/ros/c1/rw",
                "mkdir /run/ros/c1/rw/upper",
                "mkdir /run/ros/c1/rw/work",
                "mkdir /run/ros/c1/root",
                "mount overlay /run/ros/c1/root",
            ]
        );
        let overlay = steps.iter().find_map(|s| match s {
            Step::Mount { fstype, data, .. } if fstype == "overlay" => Some(data.clone()),
            _ => None,
        });
        assert_eq!(
            overlay.as_deref(),
            Some(
                "lowerdir=/images/console:/images/base,upperdir=/run/ros/c1/rw/upper,workdir=/run/ros/c1/rw/work"
            )
        );
        let pos = |s: &str| {
            k.iter()
                .position(|x| x == s)
                .unwrap_or_else(|| panic!("no {s} in {k:#?}"))
        };
        assert!(pos("mount proc /run/ros/c1/root/proc") < pos("mknod /run/ros/c1/root/dev/null"));
        assert!(
            pos("mount tmpfs /run/ros/c1/root/dev") < pos("mount devpts /run/ros/c1/root/dev/pts")
        );
        assert!(pos("mknod /run/ros/c1/root/dev/null") < pos("pivot_root /run/ros/c1/root"));
        assert!(pos("symlink /run/ros/c1/root/dev/log") < pos("pivot_root /run/ros/c1/root"));
        assert!(pos("pivot_root /run/ros/c1/root") < pos("sysctl net.ipv4.ip_forward"));
        assert!(pos("sysctl net.ipv4.ip_forward") < pos("readonly /proc/sys"));
        assert!(pos("mask /proc/kcore") < pos("remount /"));
        assert_eq!(k.last().map(String::as_str), Some("hostname c1"));
    }

    #[test]
    fn a_folder_root_is_bound_on_itself_and_a_persistent_upper_is_used() {
        let steps = plan(&cfg(Rootfs::Dir("/b/rootfs".into())), &paths());
        assert!(
            matches!(&steps[1], Step::Mount { source, target, .. } if source == "/b/rootfs" && target == "/b/rootfs")
        );
        let c = cfg(Rootfs::Overlay {
            lower: vec!["/l".into()],
            upper: Some("/var/lib/ros/c1".into()),
        });
        let k = kinds(&plan(&c, &paths()));
        assert!(!k.iter().any(|s| s.contains("/run/ros/c1/rw")), "{k:?}");
        assert!(k.contains(&"mkdir /var/lib/ros/c1/upper".to_string()));
    }

    #[test]
    fn bind_mounts_are_remounted_read_only() {
        let mut c = cfg(Rootfs::Dir("/r".into()));
        let (flags, propagation, data) =
            crate::mounts::parse_options("bind", &["ro".into(), "rbind".into()]);
        c.mounts = vec![crate::mounts::MountSpec {
            destination: "/data".into(),
            fstype: "bind".into(),
            source: "/var/lib/ros/volumes/v".into(),
            flags,
            propagation,
            data,
        }];
        let steps = plan(&c, &paths());
        let i = steps
            .iter()
            .position(|s| matches!(s, Step::Mount { target, .. } if target == "/r/data"))
            .expect("bind");
        assert!(
            matches!(&steps[i + 1], Step::RemountBind { target, flags } if target == "/r/data" && flags.contains(MsFlags::MS_RDONLY))
        );
    }

    #[test]
    fn sysfs_in_the_host_netns_is_a_read_only_bind() {
        let mut c = cfg(Rootfs::Dir("/r".into()));
        c.namespaces.net = NsMode::Host;
        let k = kinds(&plan(&c, &paths()));
        let i = k
            .iter()
            .position(|s| s == "mount bind /r/sys")
            .expect("bind /sys");
        assert_eq!(k[i + 1], "remount /r/sys");
    }
}
