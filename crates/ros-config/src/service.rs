//! Service definitions: the `[services.<name>]` tables of a user-data, and of the definitions
//! shipped in the image (same schema; the user-data's keys win, key by key). See
//! `docs/user-data.md` for every key. Cross-service checks (unknown dependencies, cycles, unknown
//! images) are in [`crate::check`], run on the layered result.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::error::Pos;
use crate::node::{Node, Value};
use crate::types::{Dur, Hostname, ranges};
use crate::walk::{Walker, join, suggest};

/// A value and where it was written (for errors found after layering). Two are equal when their
/// values are: moving a line in a file changes no definition.
#[derive(Debug, Clone, Serialize)]
pub struct Located<T> {
    pub value: T,
    #[serde(skip)]
    pub source: String,
    #[serde(skip)]
    pub pos: Pos,
}

impl<T: PartialEq> PartialEq for Located<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T: Eq> Eq for Located<T> {}

impl<T> Located<T> {
    /// A value made by ros itself (no source to point at).
    pub fn builtin(value: T, source: &str) -> Located<T> {
        Located {
            value,
            source: source.to_string(),
            pos: Pos::default(),
        }
    }
}

impl<T> std::ops::Deref for Located<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// `value`, located at `node` in the walker's source.
pub fn located<T>(w: &Walker<'_>, node: &Node, value: T) -> Located<T> {
    Located {
        value,
        source: w.source().to_string(),
        pos: node.pos,
    }
}

/// A namespace a service can share with the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostNs {
    Net,
    Pid,
    Ipc,
    Uts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    Always,
    OnFailure,
    No,
}

/// Where a volume's data lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeSource {
    /// `name:/path`: a folder kept under the state folder, `volumes/<name>`.
    Named(String),
    /// `/host/path:/path`: a host folder or file.
    Host(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    pub source: VolumeSource,
    pub target: String,
    pub read_only: bool,
}

/// A host device given to a service: `/dev/vdb`, `/dev/vdb:r` (read only), or
/// `/dev/vdb:/dev/disk0[:rwm]` (another name inside).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceSpec {
    pub host: String,
    pub container: String,
    pub read: bool,
    pub write: bool,
    pub mknod: bool,
}

/// A size in bytes: `64M`, `1G`, `512K`, a number of bytes, or `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Size(pub Option<u64>);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "max" {
            return Ok(Size(None));
        }
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (n, unit) = t.split_at(split);
        let n: u64 = n
            .parse()
            .map_err(|_| format!("expected a size like 64M or 1G, found `{s}`"))?;
        let mult: u64 = match unit.to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "K" | "KB" | "KIB" => 1 << 10,
            "M" | "MB" | "MIB" => 1 << 20,
            "G" | "GB" | "GIB" => 1 << 30,
            _ => return Err(format!("unknown size unit in `{s}`; use K, M or G")),
        };
        n.checked_mul(mult)
            .filter(|v| i64::try_from(*v).is_ok())
            .map(|v| Size(Some(v)))
            .ok_or_else(|| format!("size `{s}` is too large"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheck {
    /// A command run in the container; healthy when it exits 0.
    Exec(Vec<String>),
    /// A TCP connection to this port in the container's network namespace.
    Tcp(u16),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub check: HealthCheck,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
}

crate::table! {
    /// One service, every key optional (layers merge key by key).
    #[derive(Debug, Clone, Default, PartialEq, Serialize)]
    pub struct Service {
        planned: [],
        #[serde(skip_serializing_if = "Option::is_none")]
        enabled: Option<bool> = "enabled" => |w, p, n| w.bool(p, n),
        #[serde(skip_serializing_if = "Option::is_none")]
        image: Option<Located<String>> = "image" => |w, p, n| {
            w.string(p, n).map(|v| located(w, n, v))
        },
        /// When a registry image is pulled: `if-not-present` (the default), `always` (each
        /// time the definition is applied), `never`.
        #[serde(skip_serializing_if = "Option::is_none")]
        pull: Option<String> = "pull" => |w, p, n| {
            let v = w.string(p, n)?;
            if !matches!(v.as_str(), "if-not-present" | "always" | "never") {
                w.err(n.pos, p, format!("expected `if-not-present`, `always` or `never`, found `{v}`"));
                return None;
            }
            Some(v)
        },
        #[serde(skip_serializing_if = "Option::is_none")]
        command: Option<Vec<String>> = "command" => |w, p, n| {
            let c = w.list(p, n, |w, p, n| w.string(p, n))?;
            if c.is_empty() {
                w.err(n.pos, p, "the command is empty");
                return None;
            }
            Some(c)
        },
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String> = "env" => read_env,
        #[serde(skip_serializing_if = "Option::is_none")]
        working_dir: Option<String> = "working_dir" => abs_path,
        /// (uid, gid)
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<(u32, u32)> = "user" => read_user,
        #[serde(skip_serializing_if = "Option::is_none")]
        hostname: Option<Located<Hostname>> = "hostname" => |w, p, n| {
            w.parsed(p, n, "a hostname").map(|h| located(w, n, h))
        },
        #[serde(skip_serializing_if = "Option::is_none")]
        host_namespaces: Option<Vec<HostNs>> = "host_namespaces" => |w, p, n| {
            w.list(p, n, host_ns)
        },
        #[serde(skip_serializing_if = "Option::is_none")]
        privileged: Option<bool> = "privileged" => |w, p, n| w.bool(p, n),
        #[serde(skip_serializing_if = "Option::is_none")]
        capabilities: Option<Vec<String>> = "capabilities" => |w, p, n| w.list(p, n, cap_name),
        #[serde(skip_serializing_if = "Option::is_none")]
        cap_add: Option<Vec<String>> = "cap_add" => |w, p, n| w.list(p, n, cap_name),
        #[serde(skip_serializing_if = "Option::is_none")]
        cap_drop: Option<Vec<String>> = "cap_drop" => |w, p, n| w.list(p, n, cap_name),
        #[serde(skip_serializing_if = "Option::is_none")]
        read_only: Option<bool> = "read_only" => |w, p, n| w.bool(p, n),
        #[serde(skip_serializing_if = "Option::is_none")]
        persistent: Option<bool> = "persistent" => |w, p, n| w.bool(p, n),
        #[serde(skip_serializing_if = "Option::is_none")]
        volumes: Option<Vec<Volume>> = "volumes" => |w, p, n| w.list(p, n, volume),
        #[serde(skip_serializing_if = "Option::is_none")]
        devices: Option<Vec<DeviceSpec>> = "devices" => |w, p, n| w.list(p, n, device),
        resources: Resources = "resources" => Resources::read,
        #[serde(skip_serializing_if = "Option::is_none")]
        depends_on: Option<Vec<Located<String>>> = "depends_on" => |w, p, n| {
            w.list(p, n, |w, p, n| {
                let v = w.string(p, n)?;
                Some(located(w, n, v))
            })
        },
        #[serde(skip_serializing_if = "Option::is_none")]
        restart: Option<Restart> = "restart" => read_restart,
        #[serde(skip_serializing_if = "Option::is_none")]
        oneshot: Option<bool> = "oneshot" => |w, p, n| w.bool(p, n),
        backoff: Backoff = "backoff" => Backoff::read,
        #[serde(skip_serializing_if = "Option::is_none")]
        health: Option<Health> = "health" => read_health,
        #[serde(skip_serializing_if = "Option::is_none")]
        stop_signal: Option<String> = "stop_signal" => read_stop_signal,
        #[serde(skip_serializing_if = "Option::is_none")]
        stop_timeout: Option<Dur> = "stop_timeout" => |w, p, n| {
            w.duration(p, n, ranges::STOP_TIMEOUT)
        },
        #[serde(skip_serializing_if = "Option::is_none")]
        syslog: Option<bool> = "syslog" => |w, p, n| w.bool(p, n),
        #[serde(skip_serializing_if = "Option::is_none")]
        init: Option<bool> = "init" => |w, p, n| w.bool(p, n),
        /// Resource limits by name (`nofile`, `nproc` ...): (soft, hard).
        #[serde(skip_serializing_if = "Option::is_none")]
        rlimits: Option<BTreeMap<String, (u64, u64)>> = "rlimits" => read_rlimits,
    }
}

crate::table! {
    #[derive(Debug, Clone, Default, PartialEq, Serialize)]
    pub struct Resources {
        planned: [],
        #[serde(skip_serializing_if = "Option::is_none")]
        memory: Option<Size> = "memory" => |w, p, n| match &n.value {
            Value::Integer(b) if *b > 0 => u64::try_from(*b).ok().map(|b| Size(Some(b))),
            _ => w.parsed(p, n, "a size like \"64M\""),
        },
        #[serde(skip_serializing_if = "Option::is_none")]
        pids: Option<i64> = "pids" => |w, p, n| w.int(p, n, 1, 4_194_304),
        /// CPUs, e.g. 0.5.
        #[serde(skip_serializing_if = "Option::is_none")]
        cpu: Option<f64> = "cpu" => read_cpu,
        #[serde(skip_serializing_if = "Option::is_none")]
        cpu_weight: Option<u64> = "cpu_weight" => |w, p, n| {
            w.int(p, n, 1, 10_000).and_then(|v| u64::try_from(v).ok())
        },
        #[serde(skip_serializing_if = "Option::is_none")]
        io_weight: Option<u64> = "io_weight" => |w, p, n| {
            w.int(p, n, 1, 10_000).and_then(|v| u64::try_from(v).ok())
        },
    }
}

crate::table! {
    /// Restart delays: from `initial`, doubled after each failed run, up to `max`.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
    pub struct Backoff {
        planned: [],
        #[serde(skip_serializing_if = "Option::is_none")]
        initial: Option<Located<Dur>> = "initial" => |w, p, n| {
            w.duration(p, n, ranges::BACKOFF_INITIAL).map(|d| located(w, n, d))
        },
        #[serde(skip_serializing_if = "Option::is_none")]
        max: Option<Dur> = "max" => |w, p, n| w.duration(p, n, ranges::BACKOFF_MAX),
    }
}

/// The rlimits a service may set.
pub const RLIMITS: &[&str] = &[
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

const HEALTH_KEYS: &[&str] = &["exec", "tcp", "interval", "timeout", "retries"];

/// The capabilities Linux knows (6.1), by their canonical names.
pub const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The signals a service may stop with.
pub const SIGNALS: &[&str] = &[
    "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGPWR",
];

/// A service name: 1-63 lowercase letters, digits and `-`, starting with a letter.
pub fn service_name_ok(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a service name: 1-63 lowercase letters, digits and `-`, starting with a letter"
        ))
    }
}

pub(crate) fn abs_path(w: &mut Walker<'_>, path: &str, node: &Node) -> Option<String> {
    let s = w.string(path, node)?;
    if !s.starts_with('/') || s.split('/').any(|p| p == "..") {
        w.err(
            node.pos,
            path,
            format!("expected an absolute path without `..`, found `{s}`"),
        );
        return None;
    }
    Some(s)
}

fn cap_name(w: &mut Walker<'_>, path: &str, node: &Node) -> Option<String> {
    let s = w.string(path, node)?;
    let up = s.to_ascii_uppercase();
    let canon = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    if CAPABILITIES.contains(&canon.as_str()) {
        return Some(canon);
    }
    let hint = suggest(&canon, CAPABILITIES)
        .map(|c| format!("; did you mean `{c}`?"))
        .unwrap_or_default();
    w.err(
        node.pos,
        path,
        format!("`{s}` is not a Linux capability{hint}"),
    );
    None
}

fn host_ns(w: &mut Walker<'_>, p: &str, n: &Node) -> Option<HostNs> {
    let v = w.string(p, n)?;
    match v.as_str() {
        "net" | "network" => Some(HostNs::Net),
        "pid" => Some(HostNs::Pid),
        "ipc" => Some(HostNs::Ipc),
        "uts" => Some(HostNs::Uts),
        other => {
            w.err(
                n.pos,
                p,
                format!("`{other}` cannot be shared; share net, pid, ipc or uts"),
            );
            None
        }
    }
}

fn read_env(w: &mut Walker<'_>, p: &str, n: &Node) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for v in w.map(p, n).unwrap_or_default() {
        let vp = join(p, &v.key);
        if v.key.is_empty() || v.key.contains('=') {
            w.err(
                v.key_pos,
                &vp,
                "an environment variable name holds no `=` and is not empty",
            );
            continue;
        }
        if let Some(val) = w.scalar_text(&vp, &v.node) {
            out.insert(v.key.clone(), val);
        }
    }
    out
}

fn read_user(w: &mut Walker<'_>, p: &str, n: &Node) -> Option<(u32, u32)> {
    let u = w.string(p, n)?;
    let mut it = u.splitn(2, ':');
    let uid = it.next().and_then(|x| x.parse::<u32>().ok());
    let gid = match it.next() {
        Some(g) => g.parse::<u32>().ok(),
        None => uid,
    };
    match (uid, gid) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => {
            w.err(
                n.pos,
                p,
                format!("expected UID or UID:GID (numbers), found `{u}`"),
            );
            None
        }
    }
}

fn read_restart(w: &mut Walker<'_>, p: &str, n: &Node) -> Option<Restart> {
    let r = w.string(p, n)?;
    match r.as_str() {
        "always" => Some(Restart::Always),
        "on-failure" => Some(Restart::OnFailure),
        "no" => Some(Restart::No),
        other => {
            w.err(
                n.pos,
                p,
                format!("`{other}` is not a restart policy: always, on-failure or no"),
            );
            None
        }
    }
}

fn read_stop_signal(w: &mut Walker<'_>, p: &str, n: &Node) -> Option<String> {
    let v = w.string(p, n)?;
    let up = v.to_ascii_uppercase();
    let canon = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    if SIGNALS.contains(&canon.as_str()) {
        Some(canon)
    } else {
        w.err(
            n.pos,
            p,
            format!(
                "`{v}` is not a stop signal; use one of {}",
                SIGNALS.join(", ")
            ),
        );
        None
    }
}

fn read_cpu(w: &mut Walker<'_>, p: &str, n: &Node) -> Option<f64> {
    let cpus = match &n.value {
        Value::Float(f) => Some(*f),
        Value::Integer(i) => i32::try_from(*i).ok().map(f64::from),
        Value::Text(t) => t.parse::<f64>().ok(),
        _ => None,
    };
    match cpus {
        // cpu.max's quota is at least 1000 us of a 100000 us period.
        Some(c) if (0.01..=1024.0).contains(&c) => Some(c),
        _ => {
            w.err(
                n.pos,
                p,
                "expected a number of CPUs from 0.01 to 1024, like 0.5",
            );
            None
        }
    }
}

fn read_rlimits(w: &mut Walker<'_>, p: &str, n: &Node) -> Option<BTreeMap<String, (u64, u64)>> {
    let mut out = BTreeMap::new();
    let before = w.errors.len();
    for e in w.table(p, n, RLIMITS).unwrap_or_default() {
        let ep = join(p, &e.key);
        let limit = |w: &mut Walker<'_>, path: &str, node: &Node| match &node.value {
            Value::String(v) | Value::Text(v) if v == "unlimited" => Some(u64::MAX),
            _ => w
                .int(path, node, 0, i64::MAX)
                .and_then(|v| u64::try_from(v).ok()),
        };
        let pair = match &e.node.value {
            Value::Array(items) if items.len() == 2 => {
                match (
                    limit(w, &format!("{ep}[0]"), &items[0]),
                    limit(w, &format!("{ep}[1]"), &items[1]),
                ) {
                    (Some(a), Some(b)) if a <= b => Some((a, b)),
                    (Some(_), Some(_)) => {
                        w.err(e.node.pos, &ep, "the soft limit is above the hard one");
                        None
                    }
                    _ => None,
                }
            }
            Value::Array(_) => {
                w.err(e.node.pos, &ep, "expected one limit or [soft, hard]");
                None
            }
            _ => limit(w, &ep, &e.node).map(|v| (v, v)),
        };
        if let Some(pair) = pair {
            out.insert(e.key.clone(), pair);
        }
    }
    (w.errors.len() == before).then_some(out)
}

fn device(w: &mut Walker<'_>, path: &str, node: &Node) -> Option<DeviceSpec> {
    let s = w.string(path, node)?;
    let parts: Vec<&str> = s.split(':').collect();
    let perms_ok = |p: &str| !p.is_empty() && p.chars().all(|c| matches!(c, 'r' | 'w' | 'm'));
    let (host, container, perms) = match parts.as_slice() {
        [h] => (*h, *h, "rwm"),
        [h, p] if perms_ok(p) => (*h, *h, *p),
        [h, c] => (*h, *c, "rwm"),
        [h, c, p] if perms_ok(p) => (*h, *c, *p),
        _ => {
            w.err(
                node.pos,
                path,
                format!("expected /dev/PATH[:/dev/PATH][:rwm], found `{s}`"),
            );
            return None;
        }
    };
    for d in [host, container] {
        if !d.starts_with("/dev/") || d.split('/').any(|c| c == ".." || c == ".") {
            w.err(
                node.pos,
                path,
                format!("`{d}` is not a device path under /dev"),
            );
            return None;
        }
    }
    Some(DeviceSpec {
        host: host.to_string(),
        container: container.to_string(),
        read: perms.contains('r'),
        write: perms.contains('w'),
        mknod: perms.contains('m'),
    })
}

fn volume(w: &mut Walker<'_>, path: &str, node: &Node) -> Option<Volume> {
    let s = w.string(path, node)?;
    let parts: Vec<&str> = s.split(':').collect();
    let (src, target, mode) = match parts.as_slice() {
        [src, target] => (*src, *target, None),
        [src, target, mode] => (*src, *target, Some(*mode)),
        _ => {
            w.err(
                node.pos,
                path,
                format!("expected SOURCE:/path[:ro], found `{s}`"),
            );
            return None;
        }
    };
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(m) => {
            w.err(
                node.pos,
                path,
                format!("`{m}` in `{s}`: the mode is `ro` or `rw`"),
            );
            return None;
        }
    };
    if !target.starts_with('/') || target.split('/').any(|p| p == "..") {
        w.err(
            node.pos,
            path,
            format!("the target of `{s}` must be an absolute path without `..`"),
        );
        return None;
    }
    let source = if src.starts_with('/') {
        if src.split('/').any(|p| p == "..") {
            w.err(node.pos, path, format!("the source of `{s}` holds `..`"));
            return None;
        }
        VolumeSource::Host(src.to_string())
    } else if !src.is_empty()
        && src
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !src.starts_with('.')
    {
        VolumeSource::Named(src.to_string())
    } else {
        w.err(
            node.pos,
            path,
            format!("`{src}` is neither an absolute path nor a volume name"),
        );
        return None;
    };
    Some(Volume {
        source,
        target: target.to_string(),
        read_only,
    })
}

fn read_health(w: &mut Walker<'_>, path: &str, node: &Node) -> Option<Health> {
    let entries = w.table(path, node, HEALTH_KEYS)?;
    let before = w.errors.len();
    let (mut check, mut interval, mut timeout, mut retries) = (None, None, None, None);
    for e in entries {
        let p = join(path, &e.key);
        match e.key.as_str() {
            "exec" => {
                if check.is_some() {
                    w.err(e.key_pos, &p, "a health check is `exec` or `tcp`, not both");
                }
                check = w
                    .list(&p, &e.node, |w, p, n| w.string(p, n))
                    .map(HealthCheck::Exec);
            }
            "tcp" => {
                if check.is_some() {
                    w.err(e.key_pos, &p, "a health check is `exec` or `tcp`, not both");
                }
                check = w
                    .int(&p, &e.node, 1, 65535)
                    .and_then(|v| u16::try_from(v).ok())
                    .map(HealthCheck::Tcp);
            }
            "interval" => interval = w.duration(&p, &e.node, ranges::HEALTH_INTERVAL),
            "timeout" => timeout = w.duration(&p, &e.node, ranges::HEALTH_TIMEOUT),
            "retries" => {
                retries = w
                    .int(&p, &e.node, 1, 100)
                    .and_then(|v| u32::try_from(v).ok())
            }
            _ => {}
        }
    }
    if w.errors.len() != before {
        return None;
    }
    let Some(check) = check else {
        w.err(
            node.pos,
            path,
            "a health check needs `exec` (a command) or `tcp` (a port)",
        );
        return None;
    };
    if matches!(&check, HealthCheck::Exec(c) if c.is_empty()) {
        w.err(node.pos, path, "the health check's command is empty");
        return None;
    }
    Some(Health {
        check,
        interval: interval.map_or(Duration::from_secs(10), |d| d.0),
        timeout: timeout.map_or(Duration::from_secs(3), |d| d.0),
        retries: retries.unwrap_or(3),
    })
}

/// Reads one `[services.<name>]` table.
pub fn read_service(w: &mut Walker<'_>, path: &str, node: &Node) -> Service {
    Service::read(w, path, node)
}

/// Reads the `services` table.
pub fn read_services(w: &mut Walker<'_>, path: &str, node: &Node) -> BTreeMap<String, Service> {
    let mut out = BTreeMap::new();
    for e in w.map(path, node).unwrap_or_default() {
        let p = join(path, &e.key);
        if let Err(msg) = service_name_ok(&e.key) {
            w.err(e.key_pos, &p, msg);
            continue;
        }
        out.insert(e.key.clone(), read_service(w, &p, &e.node));
    }
    out
}

impl Service {
    /// Layers `h` over `self`, key by key (`env` merges by variable).
    pub fn merge(&mut self, h: Service) {
        crate::layered::Layer::layer(self, h);
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }

    pub fn depends(&self) -> impl Iterator<Item = &str> {
        self.depends_on.iter().flatten().map(|d| d.value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::from_toml;

    fn services(text: &str) -> BTreeMap<String, Service> {
        let r = from_toml("t", text);
        assert!(r.errors.is_empty(), "{:#?}", r.errors);
        r.data.services
    }

    #[test]
    fn reads_a_full_service() {
        let s = services(
            r#"
[services.web]
image = "busybox"
command = ["httpd", "-f", "-p", "8080"]
env = { A = "1", B = 2 }
working_dir = "/www"
user = "1000:1000"
host_namespaces = ["net"]
cap_add = ["net_admin"]
cap_drop = ["CAP_MKNOD"]
read_only = true
volumes = ["web:/www", "/run/ros/ssh:/keys:ro"]
devices = ["/dev/kmsg"]
resources = { memory = "64M", pids = 32, cpu = 0.5, cpu_weight = 50 }
depends_on = ["syslog"]
restart = "on-failure"
backoff = { initial = "500ms", max = "30s" }
hostname = "web1"
health = { tcp = 8080, interval = "2s", retries = 2 }
stop_signal = "INT"
stop_timeout = "5s"
rlimits = { nofile = 1024, nproc = [64, 128], core = "unlimited" }
init = false
"#,
        );
        let w = &s["web"];
        assert_eq!(w.image.as_ref().map(|i| i.value.as_str()), Some("busybox"));
        assert_eq!(w.env.get("B").map(String::as_str), Some("2"));
        assert_eq!(w.user, Some((1000, 1000)));
        assert_eq!(
            w.cap_add.as_deref(),
            Some(&["CAP_NET_ADMIN".to_string()][..])
        );
        let vols = w.volumes.as_ref().expect("volumes");
        assert_eq!(vols[0].source, VolumeSource::Named("web".into()));
        assert!(vols[1].read_only);
        assert_eq!(w.resources.memory, Some(Size(Some(64 << 20))));
        assert_eq!(w.resources.cpu, Some(0.5));
        assert_eq!(w.restart, Some(Restart::OnFailure));
        let h = w.health.as_ref().expect("health");
        assert_eq!(
            (h.check.clone(), h.interval, h.timeout, h.retries),
            (
                HealthCheck::Tcp(8080),
                Duration::from_secs(2),
                Duration::from_secs(3),
                2
            )
        );
        assert_eq!(w.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(w.init, Some(false));
        let rl = w.rlimits.as_ref().expect("rlimits");
        assert_eq!(
            (rl["nofile"], rl["nproc"], rl["core"]),
            ((1024, 1024), (64, 128), (u64::MAX, u64::MAX))
        );
        assert_eq!(
            w.depends_on.as_ref().expect("deps")[0].pos,
            Pos {
                line: 15,
                column: 15
            }
        );
    }

    #[test]
    fn bad_values_are_reported_with_positions() {
        let r = from_toml(
            "t",
            "[services.Web]\nimage = \"x\"\n[services.ok]\ncap_add = [\"CAP_SYS_ADMN\"]\nvolumes = [\"../x:/y\"]\nresources = { memory = \"64Q\" }\nrestart = \"sometimes\"\nhealth = { interval = \"1s\" }\n",
        );
        let msgs: Vec<String> = r.errors.iter().map(ToString::to_string).collect();
        assert_eq!(msgs.len(), 6, "{msgs:#?}");
        assert!(msgs[0].contains("services.Web") && msgs[0].contains("not a service name"));
        assert!(
            msgs[1].contains("did you mean `CAP_SYS_ADMIN`"),
            "{}",
            msgs[1]
        );
        assert!(msgs[2].contains("neither an absolute path nor a volume name"));
        assert!(msgs[3].contains("unknown size unit"));
        assert!(msgs[4].contains("not a restart policy"));
        assert!(msgs[5].contains("needs `exec`"));
    }

    #[test]
    fn layering_is_key_by_key() {
        let shipped = from_toml(
            "image",
            "[services.ntp]\nimage = \"ntp\"\nrestart = \"always\"\nenv = { A = \"1\" }\n",
        )
        .data;
        let user = from_toml(
            "fw_cfg",
            "[services.ntp]\nrestart = \"no\"\nenv = { B = \"2\" }\n",
        )
        .data;
        let mut all = shipped;
        all.merge(user);
        let n = &all.services["ntp"];
        assert_eq!(n.image.as_ref().map(|i| i.value.as_str()), Some("ntp"));
        assert_eq!(n.restart, Some(Restart::No));
        assert_eq!(n.env.len(), 2);
    }

    #[test]
    fn sizes() {
        assert_eq!("1G".parse::<Size>(), Ok(Size(Some(1 << 30))));
        assert_eq!("max".parse::<Size>(), Ok(Size(None)));
        assert_eq!("4096".parse::<Size>(), Ok(Size(Some(4096))));
        assert!("64Q".parse::<Size>().is_err());
    }
}
