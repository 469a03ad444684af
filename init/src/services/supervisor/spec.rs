//! From a service definition (layered from the image's and the user-data's) and its image to
//! what the supervisor runs: a runtime config (without its lower layers, known once mounted)
//! and the state machine's policy. Defaults are decided here. Pure.

use std::path::{Path, PathBuf};

use ros_config::Service;
use ros_config::service::{HealthCheck, HostNs, Restart, VolumeSource};
use ros_runtime::config::{
    Capabilities, DEFAULT_CAPABILITIES, DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS,
    default_devices, default_mounts,
};
use ros_runtime::mounts::{MountSpec, parse_options};
use ros_runtime::{Config, Namespaces, NsMode, Process, Resources, Rootfs, SeccompConfig};

use super::machine::{HealthPolicy, Policy};
use crate::services::images::Image;

pub const DEFAULT_BACKOFF_INITIAL_MS: u64 = 1_000;
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 60_000;
pub const DEFAULT_STOP_TIMEOUT_MS: u64 = 10_000;

/// The host folders services use.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Persistent state: `volumes/<name>`, `services/<name>` (writable layers).
    pub state: PathBuf,
    /// Runtime files: `syslog/` (the /dev/log socket), `ssh/`, `containers/`.
    pub run: PathBuf,
    /// The log store.
    pub logs: PathBuf,
}

impl Paths {
    pub fn system() -> Paths {
        Paths {
            state: "/var/lib/ros".into(),
            run: "/run/ros".into(),
            logs: "/var/log/ros".into(),
        }
    }
}

/// A service ready to run.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub image: String,
    /// Complete but for the root's lower layers.
    pub config: Config,
    pub health: Option<HealthCheck>,
    pub policy: Policy,
    /// Host devices to give the container (`/dev/kmsg`, `/dev/vdb`).
    pub devices: Vec<ros_config::service::DeviceSpec>,
    /// Host folders that must exist before the start (volumes, the writable layer).
    pub dirs: Vec<PathBuf>,
}

/// A bind mount; `nodev` for a container that is not privileged (a device node in a volume
/// cannot be opened through it).
fn bind(source: &Path, target: &str, read_only: bool, nodev: bool) -> MountSpec {
    let mut opts = vec!["rbind".to_string()];
    if read_only {
        opts.push("ro".into());
    }
    if nodev {
        opts.push("nodev".into());
    }
    let (flags, propagation, data) = parse_options("bind", &opts);
    MountSpec {
        destination: target.to_string(),
        fstype: "bind".into(),
        source: source.display().to_string(),
        flags,
        propagation,
        data,
    }
}

fn signal_number(name: &str) -> i32 {
    name.parse::<nix::sys::signal::Signal>()
        .map_or(libc::SIGTERM, |s| s as i32)
}

/// Resolves service `name`. `env` is added to every service's environment (after the image's,
/// before the service's own).
pub fn resolve(
    name: &str,
    s: &Service,
    image: &Image,
    paths: &Paths,
    env: &[String],
    blocked: Option<String>,
) -> Result<Spec, String> {
    let privileged = s.privileged.unwrap_or(false);
    let host: Vec<HostNs> = s.host_namespaces.clone().unwrap_or_default();
    let ns_mode = |k: HostNs| {
        if host.contains(&k) {
            NsMode::Host
        } else {
            NsMode::New
        }
    };
    let namespaces = Namespaces {
        net: ns_mode(HostNs::Net),
        pid: ns_mode(HostNs::Pid),
        ipc: ns_mode(HostNs::Ipc),
        uts: ns_mode(HostNs::Uts),
        ..Namespaces::isolated()
    };
    let capabilities = if privileged {
        None
    } else {
        let parse = |n: &String| {
            n.parse::<caps::Capability>()
                .map_err(|_| format!("unknown capability {n}"))
        };
        let mut set: Vec<caps::Capability> = match &s.capabilities {
            Some(list) => list.iter().map(parse).collect::<Result<_, _>>()?,
            None => DEFAULT_CAPABILITIES.to_vec(),
        };
        for c in s.cap_add.iter().flatten() {
            let c = parse(c)?;
            if !set.contains(&c) {
                set.push(c);
            }
        }
        for c in s.cap_drop.iter().flatten() {
            let c = parse(c)?;
            set.retain(|x| *x != c);
        }
        Some(Capabilities::all_of(&set))
    };

    let args = s.command.clone().unwrap_or_else(|| {
        let mut a = image.entrypoint.clone();
        a.extend(image.cmd.iter().cloned());
        a
    });
    if args.is_empty() {
        return Err(format!(
            "image {} has no entrypoint and the service gives no command",
            image.name
        ));
    }
    let mut vars: Vec<String> = Vec::new();
    let mut put = |kv: &str| {
        let key = kv.split('=').next().unwrap_or("");
        vars.retain(|v| v.split('=').next() != Some(key));
        vars.push(kv.to_string());
    };
    for v in image.env.iter().chain(env) {
        put(v);
    }
    put(&format!("ROS_SERVICE={name}"));
    for (k, v) in &s.env {
        put(&format!("{k}={v}"));
    }

    let mut mounts = default_mounts();
    // A privileged service may manage cgroups below its own (the cluster's agent makes the
    // pods' groups): its cgroup filesystem, its own namespace's view, is writable.
    if privileged {
        for m in mounts.iter_mut().filter(|m| m.fstype == "cgroup2") {
            m.flags.remove(nix::mount::MsFlags::MS_RDONLY);
        }
    }
    let mut dirs = Vec::new();
    for v in s.volumes.iter().flatten() {
        let source = match &v.source {
            VolumeSource::Named(n) => paths.state.join("volumes").join(n),
            VolumeSource::Host(p) => PathBuf::from(p),
        };
        if matches!(v.source, VolumeSource::Named(_)) || !source.exists() {
            dirs.push(source.clone());
        }
        mounts.push(bind(&source, &v.target, v.read_only, !privileged));
    }
    let syslog = s.syslog.unwrap_or(true);
    let mut dev_symlinks = Vec::new();
    if syslog {
        dirs.push(paths.run.join("syslog"));
        mounts.push(bind(
            &paths.run.join("syslog"),
            "/run/syslog",
            false,
            !privileged,
        ));
        dev_symlinks.push(("/run/syslog/log".to_string(), "/dev/log".to_string()));
    }
    let upper = s
        .persistent
        .unwrap_or(false)
        .then(|| paths.state.join("services").join(name));
    dirs.extend(upper.iter().cloned());

    let r = &s.resources;
    let memory_max = r
        .memory
        .map(|m| m.0.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX)));
    let resources = Resources {
        memory_max,
        // No swapping around the limit: over it, the OOM killer acts.
        memory_swap_max: memory_max.map(|_| 0),
        pids_max: r.pids,
        cpu_max: r.cpu.map(|c| ((c * 100_000.0).round() as i64, 100_000)),
        cpu_period: None,
        cpu_weight: r.cpu_weight,
        io_weight: r.io_weight,
        unified: Vec::new(),
    };
    let (uid, gid) = s.user.unwrap_or((0, 0));
    let config = Config {
        id: name.to_string(),
        rootfs: Rootfs::Overlay {
            lower: Vec::new(),
            upper,
        },
        readonly_root: s.read_only.unwrap_or(false),
        hostname: (namespaces.uts == NsMode::New).then(|| {
            s.hostname
                .as_ref()
                .map_or_else(|| name.to_string(), |h| h.value.to_string())
        }),
        namespaces,
        uid_map: Vec::new(),
        gid_map: Vec::new(),
        mounts,
        devices: default_devices(),
        // Filled in with the service's devices when it starts (`Supervisor::start_service`).
        device_rules: (!privileged).then(Vec::new),
        nodev_root: !privileged,
        dev_symlinks,
        process: Process {
            args,
            env: vars,
            cwd: s
                .working_dir
                .clone()
                .unwrap_or_else(|| image.working_dir.clone()),
            uid,
            gid,
            additional_gids: Vec::new(),
            capabilities,
            rlimits: s
                .rlimits
                .iter()
                .flatten()
                .filter_map(|(name, (soft, hard))| {
                    ros_runtime::config::rlimit_resource(&format!("RLIMIT_{name}"))
                        .map(|r| (r, *soft, *hard))
                })
                .collect(),
            no_new_privileges: !privileged,
            oom_score_adj: None,
            terminal: false,
            lsm: None,
            umask: None,
            // The init runs above the default priority (boot::main); its services do not.
            nice: Some(0),
        },
        cgroup_path: PathBuf::from("ros").join(name),
        resources,
        seccomp: if privileged {
            SeccompConfig::None
        } else {
            SeccompConfig::Default
        },
        masked_paths: if privileged {
            Vec::new()
        } else {
            DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect()
        },
        readonly_paths: if privileged {
            Vec::new()
        } else {
            DEFAULT_READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect()
        },
        sysctl: Vec::new(),
        init: s.init.unwrap_or(true),
        hooks: Default::default(),
        rootfs_propagation: None,
        preserve_fds: 0,
    };
    config.validate().map_err(|e| e.to_string())?;
    let oneshot = s.oneshot.unwrap_or(false);
    let initial = s
        .backoff
        .initial
        .as_ref()
        .map_or(DEFAULT_BACKOFF_INITIAL_MS, |d| d.value.millis())
        .max(1);
    let policy = Policy {
        name: name.to_string(),
        depends_on: s.depends().map(str::to_string).collect(),
        restart: s.restart.unwrap_or(if oneshot {
            Restart::No
        } else {
            Restart::Always
        }),
        oneshot,
        backoff_initial_ms: initial,
        // A max below the initial delay is a config error (reported); the initial one holds.
        backoff_max_ms: s
            .backoff
            .max
            .map_or(DEFAULT_BACKOFF_MAX_MS, ros_config::Dur::millis)
            .max(initial),
        health: s.health.as_ref().map(|h| HealthPolicy {
            interval_ms: ros_config::Dur(h.interval).millis(),
            timeout_ms: ros_config::Dur(h.timeout).millis(),
            retries: h.retries,
        }),
        stop_signal: s
            .stop_signal
            .as_deref()
            .map_or(libc::SIGTERM, signal_number),
        stop_timeout_ms: s
            .stop_timeout
            .map_or(DEFAULT_STOP_TIMEOUT_MS, ros_config::Dur::millis),
        blocked,
    };
    Ok(Spec {
        name: name.to_string(),
        image: image.name.clone(),
        config,
        health: s.health.as_ref().map(|h| h.check.clone()),
        policy,
        devices: s.devices.clone().unwrap_or_default(),
        dirs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Image {
        Image {
            name: "console".into(),
            layers: vec!["aa".into()],
            entrypoint: vec!["/usr/lib/ros/console-start".into()],
            cmd: vec![],
            env: vec!["PATH=/bin".into(), "HOME=/root".into()],
            working_dir: "/".into(),
        }
    }

    fn service(toml: &str) -> Service {
        let r = ros_config::from_toml("t", toml);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        r.data.services.into_values().next().expect("one service")
    }

    #[test]
    fn defaults_for_a_plain_service() {
        let s = service("[services.console]\nimage = \"console\"\n");
        let spec = resolve(
            "console",
            &s,
            &image(),
            &Paths::system(),
            &["ROS_NTP_SERVERS=a".into()],
            None,
        )
        .expect("spec");
        let c = &spec.config;
        assert_eq!(c.process.args, ["/usr/lib/ros/console-start"]);
        assert_eq!(
            c.process.env,
            [
                "PATH=/bin",
                "HOME=/root",
                "ROS_NTP_SERVERS=a",
                "ROS_SERVICE=console"
            ]
        );
        assert_eq!(c.hostname.as_deref(), Some("console"));
        assert_eq!(c.namespaces, Namespaces::isolated());
        assert!(c.process.no_new_privileges);
        assert_eq!(
            c.process.capabilities.as_ref().map(|x| x.bounding.len()),
            Some(DEFAULT_CAPABILITIES.len())
        );
        assert_eq!(c.seccomp, SeccompConfig::Default);
        assert!(c.device_rules.is_some(), "a device filter");
        assert!(c.nodev_root);
        assert!(
            !c.process
                .capabilities
                .as_ref()
                .is_some_and(|x| x.bounding.contains(&caps::Capability::CAP_MKNOD)),
            "no CAP_MKNOD by default"
        );
        assert_eq!(c.cgroup_path, PathBuf::from("ros/console"));
        assert!(c.mounts.iter().any(|m| m.destination == "/run/syslog"));
        assert_eq!(
            c.dev_symlinks,
            [("/run/syslog/log".to_string(), "/dev/log".to_string())]
        );
        assert_eq!(spec.policy.restart, Restart::Always);
        assert_eq!(spec.policy.stop_signal, libc::SIGTERM);
        assert_eq!(
            (spec.policy.backoff_initial_ms, spec.policy.backoff_max_ms),
            (1000, 60_000)
        );
    }

    #[test]
    fn host_namespaces_capabilities_volumes_and_limits() {
        let s = service(
            r#"[services.ntp]
image = "console"
command = ["/usr/bin/ros-ntp"]
host_namespaces = ["net", "uts"]
cap_add = ["SYS_TIME"]
cap_drop = ["CAP_MKNOD"]
volumes = ["data:/data", "/run/ros/ssh:/keys:ro"]
resources = { memory = "16M", pids = 8, cpu = 0.25 }
env = { HOME = "/tmp" }
oneshot = true
stop_signal = "SIGINT"
syslog = false
persistent = true
user = "1000"
"#,
        );
        let spec = resolve("ntp", &s, &image(), &Paths::system(), &[], None).expect("spec");
        let c = &spec.config;
        assert_eq!(
            (
                c.namespaces.net.clone(),
                c.namespaces.uts.clone(),
                c.namespaces.pid.clone()
            ),
            (NsMode::Host, NsMode::Host, NsMode::New)
        );
        assert_eq!(
            c.hostname, None,
            "the host's UTS namespace keeps the host's name"
        );
        let caps = &c.process.capabilities.as_ref().expect("caps").bounding;
        assert!(caps.contains(&caps::Capability::CAP_SYS_TIME));
        assert!(!caps.contains(&caps::Capability::CAP_MKNOD));
        assert!(c.mounts.iter().any(|m| m.destination == "/data"
            && m.source == "/var/lib/ros/volumes/data"
            && m.flags.contains(nix::mount::MsFlags::MS_NODEV)));
        assert!(
            spec.dirs
                .contains(&PathBuf::from("/var/lib/ros/volumes/data"))
        );
        assert!(!c.mounts.iter().any(|m| m.destination == "/run/syslog"));
        assert_eq!(c.resources.memory_max, Some(16 << 20));
        assert_eq!(c.resources.memory_swap_max, Some(0));
        assert_eq!(c.resources.cpu_max, Some((25_000, 100_000)));
        assert_eq!(
            c.process
                .env
                .iter()
                .filter(|v| v.starts_with("HOME="))
                .collect::<Vec<_>>(),
            ["HOME=/tmp"]
        );
        assert_eq!((c.process.uid, c.process.gid), (1000, 1000));
        assert_eq!(
            c.rootfs,
            Rootfs::Overlay {
                lower: vec![],
                upper: Some("/var/lib/ros/services/ntp".into())
            }
        );
        assert_eq!(
            spec.policy.restart,
            Restart::No,
            "one-shots are not restarted by default"
        );
        assert_eq!(spec.policy.stop_signal, libc::SIGINT);
    }

    #[test]
    fn privileged_keeps_everything() {
        let s = service("[services.p]\nimage = \"console\"\nprivileged = true\n");
        let spec = resolve("p", &s, &image(), &Paths::system(), &[], None).expect("spec");
        assert_eq!(spec.config.process.capabilities, None);
        assert_eq!(spec.config.seccomp, SeccompConfig::None);
        assert!(!spec.config.process.no_new_privileges);
        assert!(spec.config.masked_paths.is_empty());
        assert_eq!(spec.config.device_rules, None, "every device");
        assert!(!spec.config.nodev_root);
        let cg = spec
            .config
            .mounts
            .iter()
            .find(|m| m.fstype == "cgroup2")
            .expect("cgroup2");
        assert!(
            !cg.flags.contains(nix::mount::MsFlags::MS_RDONLY),
            "a writable cgroup tree"
        );
        let plain = service("[services.q]\nimage = \"console\"\n");
        let spec = resolve("q", &plain, &image(), &Paths::system(), &[], None).expect("spec");
        let cg = spec
            .config
            .mounts
            .iter()
            .find(|m| m.fstype == "cgroup2")
            .expect("cgroup2");
        assert!(
            cg.flags.contains(nix::mount::MsFlags::MS_RDONLY),
            "read-only unless privileged"
        );
    }

    #[test]
    fn an_image_without_entrypoint_needs_a_command() {
        let mut img = image();
        img.entrypoint.clear();
        let s = service("[services.x]\nimage = \"console\"\n");
        assert!(resolve("x", &s, &img, &Paths::system(), &[], None).is_err());
    }
}
