//! What to run, as the runtime needs it: built from an OCI runtime spec (a bundle's
//! `config.json`) or directly by the supervisor. Checked when built, so the setup code runs only
//! on a config that makes sense. Pure.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Error, Result};
use crate::mounts::{MountSpec, parse_options};
use crate::seccomp::{Profile, SeccompConfig};

/// The bundle annotation that asks for an overlay root (`"true"`).
pub const OVERLAY_ANNOTATION: &str = "org.ros.rootfs.overlay";
/// The bundle annotation that asks for the minimal init as PID 1 (`"true"`).
pub const INIT_ANNOTATION: &str = "org.ros.init";
/// The bundle annotation that asks for ros's default seccomp profile (`"true"`), the one its
/// services get (Docker's refusals, by the container's capabilities), when the bundle has no
/// `linux.seccomp` of its own: what Kubernetes calls `RuntimeDefault`.
pub const SECCOMP_DEFAULT_ANNOTATION: &str = "org.ros.seccomp.default";

/// How a container gets a namespace of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NsMode {
    /// A new one.
    New,
    /// The host's (the runtime's own).
    Host,
    /// An existing one, joined through its `/proc/PID/ns/*` or bind-mounted file.
    Path(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespaces {
    pub mount: NsMode,
    pub pid: NsMode,
    pub uts: NsMode,
    pub ipc: NsMode,
    pub net: NsMode,
    pub user: NsMode,
    pub cgroup: NsMode,
}

impl Namespaces {
    /// Every namespace new but the user namespace (the default for ros services).
    pub fn isolated() -> Self {
        Namespaces {
            mount: NsMode::New,
            pid: NsMode::New,
            uts: NsMode::New,
            ipc: NsMode::New,
            net: NsMode::New,
            user: NsMode::Host,
            cgroup: NsMode::New,
        }
    }
}

/// The container's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rootfs {
    /// A folder used as is (an OCI bundle's `rootfs/`).
    Dir(PathBuf),
    /// An overlay: read-only `lower` layers (topmost first) under a writable layer, kept in
    /// `upper` (a folder that persists) or, when none, in a tmpfs that lives as long as the
    /// container.
    Overlay {
        lower: Vec<PathBuf>,
        upper: Option<PathBuf>,
    },
}

/// A capability set: none means keep every capability (privileged).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities {
    pub bounding: Vec<caps::Capability>,
    pub effective: Vec<caps::Capability>,
    pub permitted: Vec<caps::Capability>,
    pub inheritable: Vec<caps::Capability>,
    pub ambient: Vec<caps::Capability>,
}

/// The process run in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// `None`: keep all capabilities.
    pub capabilities: Option<Capabilities>,
    /// (resource, soft, hard)
    pub rlimits: Vec<(libc::c_int, u64, u64)>,
    pub no_new_privileges: bool,
    /// Written to `/proc/self/oom_score_adj` before the program runs.
    pub oom_score_adj: Option<i32>,
    /// The program gets a new terminal as its standard streams (`process.terminal`).
    pub terminal: bool,
    /// An AppArmor profile or SELinux label to exec under; refused where that LSM is off.
    pub lsm: Option<Lsm>,
    pub umask: Option<u32>,
    /// The program's nice value (`process.scheduler.nice`, policy SCHED_OTHER); `None` keeps
    /// the caller's. Set just before the exec, so the setup runs at the caller's priority.
    pub nice: Option<i32>,
}

/// A security module's label for the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lsm {
    AppArmor(String),
    SeLinux(String),
}

/// cgroup v2 limits; none means no limit set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resources {
    /// A negative value means no limit (`max`), in this and the other limits.
    pub memory_max: Option<i64>,
    pub memory_swap_max: Option<i64>,
    pub pids_max: Option<i64>,
    /// (quota, period) in microseconds; a negative quota means no limit.
    pub cpu_max: Option<(i64, u64)>,
    /// A new period for the quota already set (`update --cpu-period` alone).
    pub cpu_period: Option<u64>,
    pub cpu_weight: Option<u64>,
    pub io_weight: Option<u64>,
    /// Files of the cgroup written as given, after the fields above: OCI `unified`, and the
    /// OCI limits that are one file each in cgroup v2 (`memory.low`, `cpuset.cpus`, `io.max`,
    /// `hugetlb.2MB.max`, ...). A controller a file needs is enabled for the group.
    pub unified: Vec<(String, String)>,
}

/// A limit that has no cgroup v2 form: refused, never dropped.
fn no_v2(key: &str, why: &str) -> Error {
    Error::Config(format!(
        "linux.resources.{key}: {why}; cgroup v2, the only cgroups ros-runtime drives, has no such limit"
    ))
}

impl Resources {
    /// The limits of an OCI `linux.resources` (also `ros-runtime update --resources`), as crun
    /// converts them to cgroup v2. What v2 has no form for is an error (kernel memory, the
    /// swappiness, disabling the OOM killer, real-time CPU time, leaf weights, net_cls and
    /// net_prio), so a limit a bundle asks for is never silently missing. (`devices` is the
    /// device filter's, read elsewhere.)
    pub fn from_oci(res: &oci_spec::runtime::LinuxResources) -> Result<Resources> {
        let mut r = Resources::default();
        if let Some(m) = res.memory() {
            r.memory_max = m.limit();
            if let Some(low) = m.reservation() {
                r.unified.push(("memory.low".into(), limit_value(low)));
            }
            if let Some(swap) = m.swap() {
                r.memory_swap_max = Some(swap_from_total(swap, m.limit())?);
            }
            if m.kernel().is_some() {
                return Err(no_v2(
                    "memory.kernel",
                    "kernel memory is accounted with the rest",
                ));
            }
            if m.kernel_tcp().is_some() {
                return Err(no_v2(
                    "memory.kernelTCP",
                    "TCP buffers are accounted with the rest",
                ));
            }
            if m.swappiness().is_some() {
                return Err(no_v2(
                    "memory.swappiness",
                    "there is no per-group swappiness",
                ));
            }
            if m.disable_oom_killer() == Some(true) {
                return Err(no_v2(
                    "memory.disableOOMKiller",
                    "the OOM killer cannot be turned off per group",
                ));
            }
        }
        if let Some(c) = res.cpu() {
            r.set_cpu(c.quota(), c.period());
            r.cpu_weight = c.shares().map(shares_to_weight);
            if let Some(cpus) = c.cpus().as_ref().filter(|s| !s.is_empty()) {
                r.unified.push(("cpuset.cpus".into(), cpus.clone()));
            }
            if let Some(mems) = c.mems().as_ref().filter(|s| !s.is_empty()) {
                r.unified.push(("cpuset.mems".into(), mems.clone()));
            }
            if let Some(idle) = c.idle() {
                r.unified.push(("cpu.idle".into(), idle.to_string()));
            }
            if let Some(burst) = c.burst() {
                r.unified.push(("cpu.max.burst".into(), burst.to_string()));
            }
            if c.realtime_runtime().is_some_and(|v| v != 0)
                || c.realtime_period().is_some_and(|v| v != 0)
            {
                return Err(no_v2(
                    "cpu.realtimeRuntime",
                    "real-time CPU time is a cgroup v1 limit",
                ));
            }
        }
        // runtime-spec: a pids limit of 0 or below means none; 0 is left as it is.
        r.pids_max = res.pids().as_ref().map(|p| p.limit()).filter(|l| *l != 0);
        if let Some(b) = res.block_io() {
            r.io_weight = b.weight().map(|w| blkio_to_io_weight(u64::from(w)));
            if b.leaf_weight().is_some() {
                return Err(no_v2("blockIO.leafWeight", "leaf weights are cgroup v1's"));
            }
            for d in b.weight_device().iter().flatten() {
                if d.leaf_weight().is_some() {
                    return Err(no_v2(
                        "blockIO.weightDevice.leafWeight",
                        "leaf weights are cgroup v1's",
                    ));
                }
                if let Some(w) = d.weight() {
                    let w = blkio_to_io_weight(u64::from(w));
                    r.unified.push((
                        "io.weight".into(),
                        format!("{}:{} {w}", d.major(), d.minor()),
                    ));
                }
            }
            let throttles = [
                ("rbps", b.throttle_read_bps_device()),
                ("wbps", b.throttle_write_bps_device()),
                ("riops", b.throttle_read_iops_device()),
                ("wiops", b.throttle_write_iops_device()),
            ];
            for (key, list) in throttles {
                for d in list.iter().flatten() {
                    r.unified.push((
                        "io.max".into(),
                        format!("{}:{} {key}={}", d.major(), d.minor(), d.rate()),
                    ));
                }
            }
        }
        for h in res.hugepage_limits().iter().flatten() {
            let size = h.page_size();
            if size.is_empty() || !size.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(Error::Config(format!(
                    "linux.resources.hugepageLimits: page size {size:?} is not like 2MB"
                )));
            }
            r.unified
                .push((format!("hugetlb.{size}.max"), limit_value(h.limit())));
        }
        if res.network().is_some() {
            return Err(no_v2(
                "network",
                "net_cls and net_prio are cgroup v1 controllers",
            ));
        }
        for (dev, l) in res.rdma().iter().flatten() {
            let mut v = dev.clone();
            if let Some(n) = l.hca_handles() {
                v.push_str(&format!(" hca_handle={n}"));
            }
            if let Some(n) = l.hca_objects() {
                v.push_str(&format!(" hca_object={n}"));
            }
            r.unified.push(("rdma.max".into(), v));
        }
        let mut unified: Vec<(String, String)> = res
            .unified()
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        unified.sort();
        r.unified.extend(unified);
        Ok(r)
    }

    /// A CPU quota with its period (100 ms when none is given), or a period alone for the
    /// quota in force.
    pub fn set_cpu(&mut self, quota: Option<i64>, period: Option<u64>) {
        match (quota, period) {
            (Some(q), p) => self.cpu_max = Some((q, p.unwrap_or(100_000))),
            (None, Some(p)) => self.cpu_period = Some(p),
            (None, None) => {}
        }
    }
}

/// cgroup v2's `memory.swap.max` from OCI's and runc's memory+swap total: the total less the
/// memory limit; -1 (no limit) stays -1. A total under the memory limit, or a total with no
/// memory limit to subtract, is an error.
pub fn swap_from_total(total: i64, memory: Option<i64>) -> Result<i64> {
    if total < 0 {
        return Ok(-1);
    }
    match memory {
        Some(m) if m >= 0 && total >= m => Ok(total - m),
        Some(m) if m >= 0 => Err(Error::Config(format!(
            "memory+swap limit {total} is under the memory limit {m}"
        ))),
        _ => Err(Error::Config(format!(
            "memory+swap limit {total} needs a memory limit to subtract"
        ))),
    }
}

fn limit_value(v: i64) -> String {
    if v < 0 { "max".into() } else { v.to_string() }
}

/// A character or a block device, or a FIFO (a node the spec lists among devices, which the
/// device filter does not concern).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
    Fifo,
}

/// What may be done with a device: read it, write it, make its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Access {
    pub read: bool,
    pub write: bool,
    pub mknod: bool,
}

impl Access {
    pub const ALL: Access = Access {
        read: true,
        write: true,
        mknod: true,
    };
    pub const READ_WRITE: Access = Access {
        read: true,
        write: true,
        mknod: false,
    };

    /// From cgroup v1's notation (`rwm`, any subset).
    pub fn parse(s: &str) -> Option<Access> {
        s.chars()
            .all(|c| matches!(c, 'r' | 'w' | 'm'))
            .then(|| Access {
                read: s.contains('r'),
                write: s.contains('w'),
                mknod: s.contains('m'),
            })
    }
}

/// A device node made in the container's `/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub path: String,
    pub kind: DeviceKind,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    /// What the container may do with it (the device filter allows this).
    pub access: Access,
    /// Its owner in the container, when the spec gives one.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// A rule of the device filter: which devices (`None`: any), allowed or denied, for what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    pub kind: Option<DeviceKind>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: Access,
}

/// The devices every container gets, as OCI runtimes give them.
pub fn default_devices() -> Vec<Device> {
    let d = |path: &str, major, minor| Device {
        path: path.into(),
        kind: DeviceKind::Char,
        major,
        minor,
        mode: 0o666,
        access: Access::ALL,
        uid: None,
        gid: None,
    };
    vec![
        d("/dev/null", 1, 3),
        d("/dev/zero", 1, 5),
        d("/dev/full", 1, 7),
        d("/dev/random", 1, 8),
        d("/dev/urandom", 1, 9),
        d("/dev/tty", 5, 0),
    ]
}

/// The device filter of a container that is not privileged: nothing but `devices` (its nodes),
/// its console and its terminals (`/dev/console`, `/dev/ptmx`, `/dev/pts/*`, read and write
/// only), as crun and runc allow.
pub fn default_device_rules(devices: &[Device]) -> Vec<DeviceRule> {
    let char_rw = |major, minor| DeviceRule {
        allow: true,
        kind: Some(DeviceKind::Char),
        major: Some(major),
        minor,
        access: Access::READ_WRITE,
    };
    let mut rules = vec![char_rw(5, Some(1)), char_rw(5, Some(2)), char_rw(136, None)];
    rules.extend(
        devices
            .iter()
            .filter(|d| d.kind != DeviceKind::Fifo)
            .map(|d| DeviceRule {
                allow: true,
                kind: Some(d.kind),
                major: u32::try_from(d.major).ok(),
                minor: u32::try_from(d.minor).ok(),
                access: d.access,
            }),
    );
    rules
}

/// Paths hidden from containers, as runc and Docker hide them.
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths read-only in containers.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The capabilities of a container that asks for none in particular: Docker's default set
/// without CAP_MKNOD (crun's default leaves it out too): with it, a root container could make
/// the node of any device; the device filter would still refuse opening it, but one barrier
/// should not be all there is.
pub const DEFAULT_CAPABILITIES: &[caps::Capability] = &[
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_FSETID,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_NET_RAW,
    caps::Capability::CAP_SETGID,
    caps::Capability::CAP_SETUID,
    caps::Capability::CAP_SETFCAP,
    caps::Capability::CAP_SETPCAP,
    caps::Capability::CAP_NET_BIND_SERVICE,
    caps::Capability::CAP_SYS_CHROOT,
    caps::Capability::CAP_KILL,
    caps::Capability::CAP_AUDIT_WRITE,
];

impl Capabilities {
    /// The same list in every set but ambient (what a root process of the container holds).
    pub fn all_of(list: &[caps::Capability]) -> Capabilities {
        Capabilities {
            bounding: list.to_vec(),
            effective: list.to_vec(),
            permitted: list.to_vec(),
            inheritable: list.to_vec(),
            ambient: Vec::new(),
        }
    }
}

/// A uid or gid mapping for a user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub id: String,
    pub rootfs: Rootfs,
    pub readonly_root: bool,
    pub namespaces: Namespaces,
    pub uid_map: Vec<IdMap>,
    pub gid_map: Vec<IdMap>,
    pub hostname: Option<String>,
    /// In order; destinations are absolute paths in the container.
    pub mounts: Vec<MountSpec>,
    pub devices: Vec<Device>,
    /// The device filter: `None` lets the container use every device (privileged); else the
    /// rules (a container is denied what no rule allows).
    pub device_rules: Option<Vec<DeviceRule>>,
    /// Mount the root (and the writable layer's tmpfs) `nodev`, so that a device node in it
    /// cannot be opened whatever the filter says.
    pub nodev_root: bool,
    /// More links in the container's `/dev` (target, link), e.g. `/dev/log`.
    pub dev_symlinks: Vec<(String, String)>,
    pub process: Process,
    /// cgroup path relative to the cgroup v2 root, e.g. `ros/console`.
    pub cgroup_path: PathBuf,
    pub resources: Resources,
    pub seccomp: SeccompConfig,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    /// sysctls written in the container's namespaces.
    pub sysctl: Vec<(String, String)>,
    /// Run a minimal init as PID 1 that passes signals on and reaps orphans (as `docker run
    /// --init`); see [`crate::process`].
    pub init: bool,
    /// The OCI hooks (only the lifecycle of `ros-runtime create`/`start`/`delete` runs them).
    pub hooks: crate::hooks::Hooks,
    /// The propagation of the container's root (`linux.rootfsPropagation`); none: private.
    pub rootfs_propagation: Option<nix::mount::MsFlags>,
    /// Descriptors after the standard streams (3, 4, ...) the program keeps.
    pub preserve_fds: u32,
}

/// The mounts every container gets (runc's defaults): `/proc`, `/dev` and what goes in it,
/// `/sys` read-only, and the cgroup filesystem read-only.
pub fn default_mounts() -> Vec<MountSpec> {
    let m = |dest: &str, fstype: &str, source: &str, opts: &[&str]| {
        let opts: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
        let (flags, propagation, data) = parse_options(fstype, &opts);
        MountSpec {
            destination: dest.into(),
            fstype: fstype.into(),
            source: source.into(),
            flags,
            propagation,
            data,
        }
    };
    vec![
        m("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        m(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        m(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        m(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        m(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        m(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        m(
            "/sys/fs/cgroup",
            "cgroup2",
            "cgroup2",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]
}

/// Checks a container id: 1-128 letters, digits, `-`, `_`, `.`, not starting with `.`.
pub fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "container id `{id}`: use 1-128 letters, digits, `-`, `_`, `.`"
        )))
    }
}

impl Config {
    /// Checks what the setup relies on.
    pub fn validate(&self) -> Result<()> {
        check_id(&self.id)?;
        if self.namespaces.mount == NsMode::Host {
            return Err(Error::Config(
                "a container needs a new mount namespace".into(),
            ));
        }
        if self.process.args.is_empty() {
            return Err(Error::Config(
                "process.args is empty: nothing to run".into(),
            ));
        }
        if !self.process.cwd.starts_with('/') {
            return Err(Error::Config(format!(
                "process.cwd `{}` is not absolute",
                self.process.cwd
            )));
        }
        for m in &self.mounts {
            if !m.destination.starts_with('/') {
                return Err(Error::Config(format!(
                    "mount destination `{}` is not absolute",
                    m.destination
                )));
            }
        }
        if self.hostname.is_some() && self.namespaces.uts == NsMode::Host {
            return Err(Error::Config("a hostname needs a new UTS namespace".into()));
        }
        if self.namespaces.user == NsMode::New
            && (self.uid_map.is_empty() || self.gid_map.is_empty())
        {
            return Err(Error::Config(
                "a new user namespace needs uid and gid mappings".into(),
            ));
        }
        Ok(())
    }

    /// Builds the config of an OCI bundle (`config.json` + its root folder).
    pub fn from_bundle(id: &str, bundle: &Path) -> Result<Config> {
        let spec = load_spec(&bundle.join("config.json"))?;
        Config::from_spec(id, bundle, &spec)
    }

    /// Builds the config of an OCI spec whose relative paths are relative to `bundle`.
    pub fn from_spec(id: &str, bundle: &Path, spec: &Spec) -> Result<Config> {
        check_version(spec.version())?;
        check_unsupported(spec)?;
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| Error::Bundle("no root".into()))?;
        let root_path = if root.path().is_absolute() {
            root.path().clone()
        } else {
            bundle.join(root.path())
        };
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| Error::Bundle("no process".into()))?;
        let linux = spec.linux().clone().unwrap_or_default();

        let mut ns = Namespaces {
            mount: NsMode::Host,
            pid: NsMode::Host,
            uts: NsMode::Host,
            ipc: NsMode::Host,
            net: NsMode::Host,
            user: NsMode::Host,
            cgroup: NsMode::Host,
        };
        for n in linux.namespaces().iter().flatten() {
            let mode = match n.path() {
                Some(p) => NsMode::Path(p.clone()),
                None => NsMode::New,
            };
            match n.typ() {
                LinuxNamespaceType::Mount => ns.mount = mode,
                LinuxNamespaceType::Pid => ns.pid = mode,
                LinuxNamespaceType::Uts => ns.uts = mode,
                LinuxNamespaceType::Ipc => ns.ipc = mode,
                LinuxNamespaceType::Network => ns.net = mode,
                LinuxNamespaceType::User => ns.user = mode,
                LinuxNamespaceType::Cgroup => ns.cgroup = mode,
                LinuxNamespaceType::Time => {
                    return Err(Error::Config("time namespaces are not supported".into()));
                }
            }
        }

        let mounts = spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| {
                let fstype = m.typ().clone().unwrap_or_else(|| "none".into());
                let (flags, propagation, data) =
                    parse_options(&fstype, m.options().as_deref().unwrap_or(&[]));
                let source = m
                    .source()
                    .as_ref()
                    .map(|s| {
                        // A relative bind source is relative to the bundle.
                        if flags.contains(nix::mount::MsFlags::MS_BIND) && s.is_relative() {
                            bundle.join(s).display().to_string()
                        } else {
                            s.display().to_string()
                        }
                    })
                    .unwrap_or_else(|| fstype.clone());
                MountSpec {
                    destination: m.destination().display().to_string(),
                    fstype,
                    source,
                    flags,
                    propagation,
                    data,
                }
            })
            .collect();

        let res = linux.resources().clone().unwrap_or_default();
        let resources = Resources::from_oci(&res)?;
        let maps = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| -> Vec<IdMap> {
            m.iter()
                .flatten()
                .map(|x| IdMap {
                    container: x.container_id(),
                    host: x.host_id(),
                    size: x.size(),
                })
                .collect()
        };
        let mut devices = default_devices();
        for d in linux.devices().iter().flatten() {
            use oci_spec::runtime::LinuxDeviceType as T;
            let path = d.path().display().to_string();
            let kind = match d.typ() {
                T::C | T::U => DeviceKind::Char,
                T::B => DeviceKind::Block,
                T::P => DeviceKind::Fifo,
                other => {
                    return Err(Error::Config(format!(
                        "device {path}: type {other:?} is not supported (only c, u, b and p)"
                    )));
                }
            };
            devices.retain(|x| x.path != path);
            devices.push(Device {
                path,
                kind,
                major: u64::try_from(d.major()).unwrap_or(0),
                minor: u64::try_from(d.minor()).unwrap_or(0),
                mode: d.file_mode().unwrap_or(0o666),
                access: Access::ALL,
                uid: d.uid(),
                gid: d.gid(),
            });
        }
        // The bundle's rules in order (the last that matches decides), then its devices;
        // without rules, crun's and runc's default: the standard devices and terminals only.
        let bundle_rules: Vec<DeviceRule> = res
            .devices()
            .iter()
            .flatten()
            .map(|r| {
                use oci_spec::runtime::LinuxDeviceType as T;
                let access = r.access().as_deref().unwrap_or("rwm");
                Ok(DeviceRule {
                    allow: r.allow(),
                    kind: match r.typ() {
                        None | Some(T::A) => None,
                        Some(T::C | T::U) => Some(DeviceKind::Char),
                        Some(T::B) => Some(DeviceKind::Block),
                        Some(other) => {
                            return Err(Error::Config(format!(
                                "device rule type {other:?} is not supported"
                            )));
                        }
                    },
                    major: r.major().and_then(|m| u32::try_from(m).ok()),
                    minor: r.minor().and_then(|m| u32::try_from(m).ok()),
                    access: Access::parse(access).ok_or_else(|| {
                        Error::Config(format!("device rule access `{access}`: use r, w and m"))
                    })?,
                })
            })
            .collect::<Result<_>>()?;
        let device_rules = if bundle_rules.is_empty() {
            default_device_rules(&devices)
        } else {
            let mut rules = bundle_rules;
            rules.extend(default_device_rules(&devices));
            rules
        };
        let default_seccomp = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(SECCOMP_DEFAULT_ANNOTATION))
            .is_some_and(|v| v == "true");
        let seccomp = match linux.seccomp() {
            Some(_) if default_seccomp => {
                return Err(Error::Config(format!(
                    "{SECCOMP_DEFAULT_ANNOTATION} and linux.seccomp both ask for a seccomp profile"
                )));
            }
            Some(s) => SeccompConfig::Profile(Profile::from_oci(s)?),
            None if default_seccomp => SeccompConfig::Default,
            None => SeccompConfig::None,
        };

        // ros's extension: the bundle's root as the lower layer of an overlay whose writable
        // layer is a tmpfs that lives as long as the container.
        let annotation = |key: &str| {
            spec.annotations()
                .as_ref()
                .and_then(|a| a.get(key))
                .is_some_and(|v| v == "true")
        };
        let overlay = annotation(OVERLAY_ANNOTATION);
        let rootfs = if overlay {
            Rootfs::Overlay {
                lower: vec![root_path],
                upper: None,
            }
        } else {
            Rootfs::Dir(root_path)
        };
        let cfg = Config {
            id: id.to_string(),
            rootfs,
            readonly_root: root.readonly().unwrap_or(false),
            namespaces: ns,
            uid_map: maps(linux.uid_mappings()),
            gid_map: maps(linux.gid_mappings()),
            hostname: spec.hostname().clone(),
            mounts,
            devices,
            device_rules: Some(device_rules),
            nodev_root: false,
            dev_symlinks: Vec::new(),
            process: Process::from_oci(process)?,
            cgroup_path: linux
                .cgroups_path()
                .clone()
                .map(|p| PathBuf::from(p.display().to_string().trim_start_matches('/')))
                .unwrap_or_else(|| PathBuf::from("ros-runtime").join(id)),
            resources,
            seccomp,
            masked_paths: linux.masked_paths().clone().unwrap_or_default(),
            readonly_paths: linux.readonly_paths().clone().unwrap_or_default(),
            sysctl: linux
                .sysctl()
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            init: annotation(INIT_ANNOTATION),
            preserve_fds: 0,
            rootfs_propagation: linux
                .rootfs_propagation()
                .as_deref()
                .and_then(crate::mounts::propagation_of),
            hooks: spec
                .hooks()
                .as_ref()
                .map(crate::hooks::Hooks::from_oci)
                .unwrap_or_default(),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl Process {
    /// The process of an OCI spec (a bundle's, or `exec --process`).
    pub fn from_oci(process: &oci_spec::runtime::Process) -> Result<Process> {
        let capabilities = process.capabilities().as_ref().map(|c| {
            let conv = |set: &Option<oci_spec::runtime::Capabilities>| -> Vec<caps::Capability> {
                // oci-spec displays `CAP_KILL` as `KILL`.
                let mut v: Vec<caps::Capability> = set
                    .iter()
                    .flatten()
                    .filter_map(|cap| format!("CAP_{cap}").parse::<caps::Capability>().ok())
                    .collect();
                v.sort_unstable_by_key(|c| c.index());
                v
            };
            let (permitted, inheritable) = (conv(c.permitted()), conv(c.inheritable()));
            // The kernel raises an ambient capability only when it is permitted and
            // inheritable. crun and runc skip the others (their default specs list ambient
            // capabilities that are not inheritable); so does ros, saying so in the log. Left
            // out, a capability is not granted: the container gets less, never more.
            let (ambient, skipped): (Vec<_>, Vec<_>) = conv(c.ambient())
                .into_iter()
                .partition(|cap| permitted.contains(cap) && inheritable.contains(cap));
            if !skipped.is_empty() {
                log::warn!(
                    "ambient capabilities {skipped:?} are not both permitted and inheritable: not raised"
                );
            }
            Capabilities {
                bounding: conv(c.bounding()),
                effective: conv(c.effective()),
                permitted,
                inheritable,
                ambient,
            }
        });

        let rlimits = process
            .rlimits()
            .iter()
            .flatten()
            .map(|r| {
                let res = rlimit_resource(&format!("{:?}", r.typ()))
                    .ok_or_else(|| Error::Config(format!("unknown rlimit {:?}", r.typ())))?;
                Ok((res, r.soft(), r.hard()))
            })
            .collect::<Result<Vec<_>>>()?;

        let user = process.user();
        let lsm = match (process.apparmor_profile(), process.selinux_label()) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "process.apparmorProfile and process.selinuxLabel are both set".into(),
                ));
            }
            (Some(p), None) if !p.is_empty() => Some(Lsm::AppArmor(p.clone())),
            (None, Some(l)) if !l.is_empty() => Some(Lsm::SeLinux(l.clone())),
            _ => None,
        };
        if let Some(l) = &lsm {
            crate::lsm::check(l)?;
        }
        let nice = match process.scheduler() {
            None => None,
            Some(s) if *s.policy() == oci_spec::runtime::LinuxSchedulerPolicy::SchedOther => {
                if let Some(n) = *s.nice()
                    && !(-20..=19).contains(&n)
                {
                    return Err(Error::Config(format!(
                        "process.scheduler.nice {n}: out of -20..19"
                    )));
                }
                *s.nice()
            }
            Some(s) => {
                return Err(Error::Config(format!(
                    "process.scheduler.policy {}: only SCHED_OTHER (with nice) is supported",
                    s.policy()
                )));
            }
        };
        Ok(Process {
            args: process.args().clone().unwrap_or_default(),
            env: process.env().clone().unwrap_or_default(),
            cwd: process.cwd().display().to_string(),
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            capabilities,
            rlimits,
            no_new_privileges: process.no_new_privileges().unwrap_or(false),
            oom_score_adj: process.oom_score_adj(),
            terminal: process.terminal().unwrap_or(false),
            lsm,
            umask: user.umask(),
            nice,
        })
    }
}

/// Reads a `config.json`; an error names the file, the line and the column, and what is wrong
/// there (an unknown capability, a misspelt field type), where oci-spec's loader says only
/// "serde failed".
pub fn load_spec(path: &Path) -> Result<Spec> {
    let text =
        std::fs::read(path).map_err(|e| Error::Bundle(format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&text).map_err(|e| Error::Bundle(format!("{}: {e}", path.display())))
}

/// The spec versions this runtime reads: 1.0 to 1.2, as crun and runc (1.0.x-1.2.x).
fn check_version(v: &str) -> Result<()> {
    let mut parts = v.split(['.', '-', '+']);
    let major = parts.next().and_then(|x| x.parse::<u32>().ok());
    let minor = parts.next().and_then(|x| x.parse::<u32>().ok());
    match (major, minor) {
        (Some(1), Some(0..=2)) => Ok(()),
        _ => Err(Error::Bundle(format!(
            "ociVersion `{v}` is not supported (1.0 to 1.2 are)"
        ))),
    }
}

/// What the spec may ask that this runtime cannot do: an error, never dropped (a security
/// setting above all).
fn check_unsupported(spec: &Spec) -> Result<()> {
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    let unsupported = |what: &str| Err(Error::Config(format!("{what} is not supported")));
    if let Some(label) = linux.mount_label()
        && !label.is_empty()
    {
        // Mount labels are SELinux contexts given to every mount; this runtime does not label.
        return Err(Error::Config(format!(
            "linux.mountLabel `{label}`: SELinux mount labels are not supported{}",
            if crate::lsm::selinux_enabled() {
                ""
            } else {
                " (and SELinux is not enabled on this host)"
            }
        )));
    }
    if linux.intel_rdt().is_some() {
        return unsupported("linux.intelRdt");
    }
    if linux.personality().is_some() {
        return unsupported("linux.personality");
    }
    if linux.memory_policy().is_some() {
        return unsupported("linux.memoryPolicy");
    }
    if linux.rootfs_propagation().as_deref().is_some_and(|p| {
        !matches!(
            p,
            "private"
                | "rprivate"
                | "slave"
                | "rslave"
                | "shared"
                | "rshared"
                | "unbindable"
                | "runbindable"
        )
    }) {
        return Err(Error::Config(format!(
            "linux.rootfsPropagation `{}` is not a propagation",
            linux.rootfs_propagation().as_deref().unwrap_or("")
        )));
    }
    if let Some(s) = linux.seccomp() {
        if s.listener_path().is_some() {
            return unsupported("linux.seccomp.listenerPath (seccomp notify)");
        }
        for f in s.flags().iter().flatten() {
            use oci_spec::runtime::LinuxSeccompFilterFlag as F;
            // TSYNC changes nothing here (the child is one thread); the others change what the
            // filter does, and seccompiler loads filters without flags.
            if !matches!(f, F::SeccompFilterFlagTsync) {
                return Err(Error::Config(format!(
                    "linux.seccomp.flags: {f:?} is not supported"
                )));
            }
        }
    }
    Ok(())
}

/// cgroup v1 cpu shares (2-262144) to cgroup v2 cpu.weight (1-10000), as runc converts them.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// blkio weight (10-1000) to io.weight (1-10000), as runc converts it.
pub fn blkio_to_io_weight(w: u64) -> u64 {
    1 + (w.clamp(10, 1000) - 10) * 9999 / 990
}

/// An OCI rlimit name (`RlimitNofile`, as oci-spec spells it) to its resource number.
pub fn rlimit_resource(name: &str) -> Option<libc::c_int> {
    let r = match name.to_ascii_uppercase().replace('_', "").as_str() {
        "RLIMITCPU" => libc::RLIMIT_CPU,
        "RLIMITFSIZE" => libc::RLIMIT_FSIZE,
        "RLIMITDATA" => libc::RLIMIT_DATA,
        "RLIMITSTACK" => libc::RLIMIT_STACK,
        "RLIMITCORE" => libc::RLIMIT_CORE,
        "RLIMITRSS" => libc::RLIMIT_RSS,
        "RLIMITNPROC" => libc::RLIMIT_NPROC,
        "RLIMITNOFILE" => libc::RLIMIT_NOFILE,
        "RLIMITMEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMITAS" => libc::RLIMIT_AS,
        "RLIMITLOCKS" => libc::RLIMIT_LOCKS,
        "RLIMITSIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMITMSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMITNICE" => libc::RLIMIT_NICE,
        "RLIMITRTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMITRTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    };
    #[allow(
        clippy::useless_conversion,
        reason = "the constants are u32 on glibc and c_int on musl"
    )]
    i32::try_from(r).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUNDLE: &str = r#"{
      "ociVersion": "1.0.2",
      "process": {
        "user": {"uid": 1000, "gid": 1000, "additionalGids": [10]},
        "args": ["/bin/sh", "-c", "true"],
        "env": ["PATH=/bin"],
        "cwd": "/",
        "capabilities": {"bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
        "noNewPrivileges": true
      },
      "root": {"path": "rootfs", "readonly": true},
      "hostname": "c1",
      "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/data", "type": "bind", "source": "vol", "options": ["rbind", "ro"]}
      ],
      "linux": {
        "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "network", "path": "/run/netns/x"}],
        "resources": {"memory": {"limit": 67108864}, "pids": {"limit": 32}, "cpu": {"quota": 50000, "period": 100000, "shares": 1024}},
        "cgroupsPath": "/ros/c1",
        "maskedPaths": ["/proc/kcore"],
        "readonlyPaths": ["/proc/sys"],
        "seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO"}]}
      }
    }"#;

    fn spec() -> Spec {
        serde_json::from_str(BUNDLE).expect("spec")
    }

    #[test]
    fn reads_an_oci_spec() {
        let c = Config::from_spec("c1", Path::new("/b"), &spec()).expect("config");
        assert_eq!(c.rootfs, Rootfs::Dir("/b/rootfs".into()));
        assert!(c.readonly_root);
        assert_eq!(c.namespaces.pid, NsMode::New);
        assert_eq!(c.namespaces.net, NsMode::Path("/run/netns/x".into()));
        assert_eq!(c.namespaces.ipc, NsMode::Host);
        assert_eq!(c.hostname.as_deref(), Some("c1"));
        assert_eq!(
            c.mounts[1].source, "/b/vol",
            "relative bind sources are in the bundle"
        );
        assert!(c.mounts[1].is_bind());
        assert_eq!((c.process.uid, c.process.gid), (1000, 1000));
        assert_eq!(c.process.additional_gids, [10]);
        let caps = c.process.capabilities.as_ref().expect("caps");
        assert_eq!(caps.effective, [caps::Capability::CAP_KILL]);
        assert_eq!(caps.bounding.len(), 2);
        assert_eq!(
            c.process.rlimits,
            [(
                i32::try_from(libc::RLIMIT_NOFILE).expect("rlimit"),
                512,
                1024
            )]
        );
        assert!(c.process.no_new_privileges);
        assert_eq!(c.cgroup_path, PathBuf::from("ros/c1"));
        assert_eq!(c.resources.memory_max, Some(64 << 20));
        assert_eq!(c.resources.pids_max, Some(32));
        assert_eq!(c.resources.cpu_max, Some((50_000, 100_000)));
        assert_eq!(c.resources.cpu_weight, Some(39));
        assert!(matches!(c.seccomp, SeccompConfig::Profile(_)));
        assert_eq!(c.devices.len(), 6);
    }

    #[test]
    fn the_default_seccomp_profile_is_asked_for_by_annotation() {
        let mut s = spec();
        let ann = |s: &mut oci_spec::runtime::Spec| {
            let mut a = s.annotations().clone().unwrap_or_default();
            a.insert(SECCOMP_DEFAULT_ANNOTATION.into(), "true".into());
            s.set_annotations(Some(a));
        };
        ann(&mut s);
        let e = Config::from_spec("c1", Path::new("/b"), &s).expect_err("both");
        assert!(e.to_string().contains("both ask"), "{e}");
        let mut linux = s.linux().clone().expect("linux");
        linux.set_seccomp(None);
        s.set_linux(Some(linux));
        let c = Config::from_spec("c1", Path::new("/b"), &s).expect("config");
        assert_eq!(c.seccomp, SeccompConfig::Default);
    }

    #[test]
    fn rejects_what_setup_cannot_do() {
        let mut s = spec();
        let mut linux = s.linux().clone().expect("linux");
        linux.set_namespaces(Some(vec![]));
        s.set_linux(Some(linux));
        let e = Config::from_spec("c1", Path::new("/b"), &s).expect_err("no mount ns");
        assert!(e.to_string().contains("new mount namespace"), "{e}");
        assert!(Config::from_spec("bad id!", Path::new("/b"), &spec()).is_err());
    }

    #[test]
    fn nice_from_the_scheduler() {
        let with = |sched: serde_json::Value| {
            let mut v: serde_json::Value = serde_json::from_str(BUNDLE).expect("json");
            v["process"]["scheduler"] = sched;
            let s: Spec = serde_json::from_value(v).expect("spec");
            Config::from_spec("c1", Path::new("/b"), &s).map(|c| c.process.nice)
        };
        assert_eq!(
            spec()
                .process()
                .as_ref()
                .and_then(|p| p.scheduler().clone()),
            None
        );
        let c = Config::from_spec("c1", Path::new("/b"), &spec()).expect("config");
        assert_eq!(c.process.nice, None, "no scheduler: the caller's");
        assert_eq!(
            with(serde_json::json!({"policy": "SCHED_OTHER", "nice": 5})).expect("other"),
            Some(5)
        );
        let e = with(serde_json::json!({"policy": "SCHED_OTHER", "nice": 40})).expect_err("range");
        assert!(e.to_string().contains("out of -20..19"), "{e}");
        let e = with(serde_json::json!({"policy": "SCHED_FIFO", "priority": 1})).expect_err("fifo");
        assert!(e.to_string().contains("only SCHED_OTHER"), "{e}");
    }

    #[test]
    fn weight_conversions_match_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(500), 4950);
        assert_eq!(blkio_to_io_weight(1000), 10_000);
    }
}

#[cfg(test)]
mod resource_tests {
    use super::*;

    fn parse(json: &str) -> Result<Resources> {
        let res: oci_spec::runtime::LinuxResources = serde_json::from_str(json).expect("json");
        Resources::from_oci(&res)
    }

    #[test]
    fn every_v2_limit_is_converted() {
        let r = parse(
            r#"{
              "memory": {"limit": 67108864, "reservation": 33554432, "swap": 134217728},
              "cpu": {"shares": 512, "quota": 20000, "period": 50000, "cpus": "0-1", "mems": "0", "burst": 1000},
              "pids": {"limit": -1},
              "blockIO": {"weight": 500, "weightDevice": [{"major": 8, "minor": 0, "weight": 100}],
                          "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
                          "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 100}]},
              "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
              "unified": {"memory.high": "50000000"}
            }"#,
        )
        .expect("converts");
        assert_eq!(r.memory_max, Some(64 << 20));
        assert_eq!(r.memory_swap_max, Some(64 << 20));
        assert_eq!(r.pids_max, Some(-1));
        assert_eq!(r.cpu_max, Some((20_000, 50_000)));
        assert_eq!(r.cpu_weight, Some(20));
        assert_eq!(r.io_weight, Some(4950));
        let files: Vec<String> = r.unified.iter().map(|(f, v)| format!("{f}={v}")).collect();
        assert_eq!(
            files,
            [
                "memory.low=33554432",
                "cpuset.cpus=0-1",
                "cpuset.mems=0",
                "cpu.max.burst=1000",
                "io.weight=8:0 910",
                "io.max=8:0 rbps=1048576",
                "io.max=8:0 wiops=100",
                "hugetlb.2MB.max=4194304",
                "memory.high=50000000",
            ]
        );
    }

    #[test]
    fn a_period_alone_keeps_the_quota_and_zero_pids_is_no_change() {
        let r = parse(r#"{"cpu": {"period": 50000}, "pids": {"limit": 0}}"#).expect("ok");
        assert_eq!(
            (r.cpu_max, r.cpu_period, r.pids_max),
            (None, Some(50_000), None)
        );
    }

    #[test]
    fn limits_without_a_v2_form_are_refused_by_name() {
        for (json, key) in [
            (r#"{"memory": {"kernel": 1000000}}"#, "memory.kernel"),
            (r#"{"memory": {"kernelTCP": 1000000}}"#, "memory.kernelTCP"),
            (r#"{"memory": {"swappiness": 10}}"#, "memory.swappiness"),
            (
                r#"{"memory": {"disableOOMKiller": true}}"#,
                "memory.disableOOMKiller",
            ),
            (
                r#"{"cpu": {"realtimeRuntime": 1000}}"#,
                "cpu.realtimeRuntime",
            ),
            (r#"{"blockIO": {"leafWeight": 100}}"#, "blockIO.leafWeight"),
            (r#"{"network": {"classID": 1}}"#, "network"),
            (
                r#"{"hugepageLimits": [{"pageSize": "../x", "limit": 1}]}"#,
                "hugepageLimits",
            ),
        ] {
            let e = parse(json).expect_err(json).to_string();
            assert!(e.contains(key), "{json}: {e}");
        }
        // A swap total under the memory limit, or with nothing to subtract.
        assert!(parse(r#"{"memory": {"limit": 100, "swap": 50}}"#).is_err());
        assert!(parse(r#"{"memory": {"swap": 50}}"#).is_err());
        assert_eq!(
            parse(r#"{"memory": {"swap": -1}}"#)
                .expect("ok")
                .memory_swap_max,
            Some(-1)
        );
    }
}
