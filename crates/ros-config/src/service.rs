//! Service definitions: the `[services.<name>]` tables of a user-data, and of the definitions
//! shipped in the image (same schema; the user-data's keys win, key by key). See
//! `docs/user-data.md` for every key. Cross-service checks (unknown dependencies, cycles, unknown
//! images) are in [`check`], run on the layered result.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::error::{ConfigError, Pos};
use crate::node::{Node, Value};
use crate::types::{Dur, Hostname};
use crate::walk::{Walker, join, suggest};

/// A value and where it was written (for errors found after layering).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Located<T> {
    pub value: T,
    #[serde(skip)]
    pub source: String,
    #[serde(skip)]
    pub pos: Pos,
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
            .map(|v| Size(Some(v)))
            .ok_or_else(|| format!("size `{s}` is too large"))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Resources {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
    /// CPUs, e.g. 0.5.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_weight: Option<u64>,
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

/// One service, every key optional (layers merge key by key).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Service {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<Located<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// (uid, gid)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<(u32, u32)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Hostname>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_namespaces: Option<Vec<HostNs>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub privileged: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap_add: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap_drop: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Volume>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<String>>,
    pub resources: Resources,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<Vec<Located<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<Restart>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oneshot: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_initial: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_max: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syslog: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    /// Resource limits by name (`nofile`, `nproc` ...): (soft, hard).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rlimits: Option<BTreeMap<String, (u64, u64)>>,
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

const SERVICE_KEYS: &[&str] = &[
    "enabled",
    "image",
    "command",
    "env",
    "working_dir",
    "user",
    "hostname",
    "host_namespaces",
    "privileged",
    "capabilities",
    "cap_add",
    "cap_drop",
    "read_only",
    "persistent",
    "volumes",
    "devices",
    "resources",
    "depends_on",
    "restart",
    "oneshot",
    "backoff",
    "health",
    "stop_signal",
    "stop_timeout",
    "syslog",
    "init",
    "rlimits",
];
const RESOURCE_KEYS: &[&str] = &["memory", "pids", "cpu", "cpu_weight", "io_weight"];
const BACKOFF_KEYS: &[&str] = &["initial", "max"];
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

fn abs_path(w: &mut Walker<'_>, path: &str, node: &Node) -> Option<String> {
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

fn located(w: &Walker<'_>, node: &Node, value: String) -> Located<String> {
    Located {
        value,
        source: w.source().to_string(),
        pos: node.pos,
    }
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
            "interval" => interval = w.parsed::<Dur>(&p, &e.node, "a duration"),
            "timeout" => timeout = w.parsed::<Dur>(&p, &e.node, "a duration"),
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
    Some(Health {
        check,
        interval: interval.map_or(Duration::from_secs(10), |d| d.0),
        timeout: timeout.map_or(Duration::from_secs(3), |d| d.0),
        retries: retries.unwrap_or(3),
    })
}

/// Reads one `[services.<name>]` table.
pub fn read_service(w: &mut Walker<'_>, path: &str, node: &Node) -> Service {
    let mut s = Service::default();
    for e in w.table(path, node, SERVICE_KEYS).unwrap_or_default() {
        let p = join(path, &e.key);
        let n = &e.node;
        match e.key.as_str() {
            "enabled" => s.enabled = w.bool(&p, n),
            "image" => s.image = w.string(&p, n).map(|v| located(w, n, v)),
            "command" => {
                s.command = w.list(&p, n, |w, p, n| w.string(p, n));
                if s.command.as_ref().is_some_and(Vec::is_empty) {
                    w.err(n.pos, &p, "the command is empty");
                    s.command = None;
                }
            }
            "env" => {
                for v in w.map(&p, n).unwrap_or_default() {
                    let vp = join(&p, &v.key);
                    if v.key.is_empty() || v.key.contains('=') {
                        w.err(
                            v.key_pos,
                            &vp,
                            "an environment variable name holds no `=` and is not empty",
                        );
                        continue;
                    }
                    if let Some(val) = w.scalar_text(&vp, &v.node) {
                        s.env.insert(v.key.clone(), val);
                    }
                }
            }
            "working_dir" => s.working_dir = abs_path(w, &p, n),
            "user" => {
                s.user = w.string(&p, n).and_then(|u| {
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
                                &p,
                                format!("expected UID or UID:GID (numbers), found `{u}`"),
                            );
                            None
                        }
                    }
                })
            }
            "hostname" => s.hostname = w.parsed(&p, n, "a hostname"),
            "host_namespaces" => {
                s.host_namespaces = w.list(&p, n, |w, p, n| {
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
                })
            }
            "privileged" => s.privileged = w.bool(&p, n),
            "capabilities" => s.capabilities = w.list(&p, n, cap_name),
            "cap_add" => s.cap_add = w.list(&p, n, cap_name),
            "cap_drop" => s.cap_drop = w.list(&p, n, cap_name),
            "read_only" => s.read_only = w.bool(&p, n),
            "persistent" => s.persistent = w.bool(&p, n),
            "volumes" => s.volumes = w.list(&p, n, volume),
            "devices" => {
                s.devices = w.list(&p, n, |w, p, n| {
                    let d = abs_path(w, p, n)?;
                    if d.starts_with("/dev/") {
                        Some(d)
                    } else {
                        w.err(n.pos, p, format!("`{d}` is not under /dev"));
                        None
                    }
                })
            }
            "resources" => {
                for r in w.table(&p, n, RESOURCE_KEYS).unwrap_or_default() {
                    let rp = join(&p, &r.key);
                    match r.key.as_str() {
                        "memory" => {
                            s.resources.memory = match &r.node.value {
                                Value::Integer(b) if *b > 0 => {
                                    Some(Size(Some(u64::try_from(*b).unwrap_or(0))))
                                }
                                _ => w.parsed(&rp, &r.node, "a size like \"64M\""),
                            }
                        }
                        "pids" => s.resources.pids = w.int(&rp, &r.node, 1, 4_194_304),
                        "cpu" => {
                            s.resources.cpu = match &r.node.value {
                                Value::Float(f) if *f > 0.0 && *f <= 1024.0 => Some(*f),
                                Value::Integer(i) if *i > 0 && *i <= 1024 => {
                                    i32::try_from(*i).ok().map(f64::from)
                                }
                                Value::Text(t) => t.parse::<f64>().ok().filter(|f| *f > 0.0),
                                _ => {
                                    w.err(
                                        r.node.pos,
                                        &rp,
                                        "expected a number of CPUs above 0, like 0.5",
                                    );
                                    None
                                }
                            }
                        }
                        "cpu_weight" => {
                            s.resources.cpu_weight = w
                                .int(&rp, &r.node, 1, 10_000)
                                .and_then(|v| u64::try_from(v).ok())
                        }
                        "io_weight" => {
                            s.resources.io_weight = w
                                .int(&rp, &r.node, 1, 10_000)
                                .and_then(|v| u64::try_from(v).ok())
                        }
                        _ => {}
                    }
                }
            }
            "depends_on" => {
                s.depends_on = w.list(&p, n, |w, p, n| {
                    let v = w.string(p, n)?;
                    Some(located(w, n, v))
                })
            }
            "restart" => {
                s.restart = w.string(&p, n).and_then(|r| match r.as_str() {
                    "always" => Some(Restart::Always),
                    "on-failure" => Some(Restart::OnFailure),
                    "no" => Some(Restart::No),
                    other => {
                        w.err(
                            n.pos,
                            &p,
                            format!("`{other}` is not a restart policy: always, on-failure or no"),
                        );
                        None
                    }
                })
            }
            "oneshot" => s.oneshot = w.bool(&p, n),
            "backoff" => {
                for b in w.table(&p, n, BACKOFF_KEYS).unwrap_or_default() {
                    let bp = join(&p, &b.key);
                    let d = w.parsed::<Dur>(&bp, &b.node, "a duration");
                    if b.key == "initial" {
                        s.backoff_initial = d;
                    } else {
                        s.backoff_max = d;
                    }
                }
            }
            "health" => s.health = read_health(w, &p, n),
            "stop_signal" => {
                s.stop_signal = w.string(&p, n).and_then(|v| {
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
                            &p,
                            format!(
                                "`{v}` is not a stop signal; use one of {}",
                                SIGNALS.join(", ")
                            ),
                        );
                        None
                    }
                })
            }
            "stop_timeout" => s.stop_timeout = w.parsed(&p, n, "a duration"),
            "syslog" => s.syslog = w.bool(&p, n),
            "init" => s.init = w.bool(&p, n),
            "rlimits" => {
                let mut out = BTreeMap::new();
                let before = w.errors.len();
                for e in w.table(&p, n, RLIMITS).unwrap_or_default() {
                    let ep = join(&p, &e.key);
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
                if w.errors.len() == before {
                    s.rlimits = Some(out);
                }
            }
            _ => {}
        }
    }
    s
}

/// Reads the `services` table.
pub fn read_services(w: &mut Walker<'_>, node: &Node) -> BTreeMap<String, Service> {
    let mut out = BTreeMap::new();
    for e in w.map("services", node).unwrap_or_default() {
        let path = join("services", &e.key);
        if let Err(msg) = service_name_ok(&e.key) {
            w.err(e.key_pos, &path, msg);
            continue;
        }
        out.insert(e.key.clone(), read_service(w, &path, &e.node));
    }
    out
}

impl Service {
    /// Layers `h` over `self`, key by key (`env` merges by variable).
    pub fn merge(&mut self, h: Service) {
        fn set<T>(low: &mut Option<T>, high: Option<T>) {
            if high.is_some() {
                *low = high;
            }
        }
        set(&mut self.enabled, h.enabled);
        set(&mut self.image, h.image);
        set(&mut self.command, h.command);
        self.env.extend(h.env);
        set(&mut self.working_dir, h.working_dir);
        set(&mut self.user, h.user);
        set(&mut self.hostname, h.hostname);
        set(&mut self.host_namespaces, h.host_namespaces);
        set(&mut self.privileged, h.privileged);
        set(&mut self.capabilities, h.capabilities);
        set(&mut self.cap_add, h.cap_add);
        set(&mut self.cap_drop, h.cap_drop);
        set(&mut self.read_only, h.read_only);
        set(&mut self.persistent, h.persistent);
        set(&mut self.volumes, h.volumes);
        set(&mut self.devices, h.devices);
        set(&mut self.resources.memory, h.resources.memory);
        set(&mut self.resources.pids, h.resources.pids);
        set(&mut self.resources.cpu, h.resources.cpu);
        set(&mut self.resources.cpu_weight, h.resources.cpu_weight);
        set(&mut self.resources.io_weight, h.resources.io_weight);
        set(&mut self.depends_on, h.depends_on);
        set(&mut self.restart, h.restart);
        set(&mut self.oneshot, h.oneshot);
        set(&mut self.backoff_initial, h.backoff_initial);
        set(&mut self.backoff_max, h.backoff_max);
        set(&mut self.health, h.health);
        set(&mut self.stop_signal, h.stop_signal);
        set(&mut self.stop_timeout, h.stop_timeout);
        set(&mut self.syslog, h.syslog);
        set(&mut self.init, h.init);
        set(&mut self.rlimits, h.rlimits);
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }

    pub fn depends(&self) -> impl Iterator<Item = &str> {
        self.depends_on.iter().flatten().map(|d| d.value.as_str())
    }
}

/// Checks the layered services: every enabled service names an image that exists and
/// dependencies that are enabled services, and no dependencies go round in a cycle. Returns the
/// errors and the services that must not start (their names); the rest start.
pub fn check(
    services: &BTreeMap<String, Service>,
    images: &BTreeSet<String>,
) -> (Vec<ConfigError>, BTreeSet<String>) {
    let mut errors = Vec::new();
    let mut blocked = BTreeSet::new();
    let enabled: Vec<&str> = services
        .iter()
        .filter(|(_, s)| s.is_enabled())
        .map(|(n, _)| n.as_str())
        .collect();
    for (name, s) in services.iter().filter(|(_, s)| s.is_enabled()) {
        match &s.image {
            None => {
                errors.push(ConfigError::new(
                    "services",
                    Pos::default(),
                    &join(&join("services", name), "image"),
                    "no image given",
                ));
                blocked.insert(name.clone());
            }
            Some(img) if !images.contains(&img.value) => {
                let list: Vec<&str> = images.iter().map(String::as_str).collect();
                let hint = suggest(&img.value, &list)
                    .map(|c| format!("; did you mean `{c}`?"))
                    .unwrap_or_default();
                errors.push(ConfigError::new(
                    &img.source,
                    img.pos,
                    &join(&join("services", name), "image"),
                    format!("there is no image `{}`{hint}", img.value),
                ));
                blocked.insert(name.clone());
            }
            Some(_) => {}
        }
        for d in s.depends_on.iter().flatten() {
            if !enabled.contains(&d.value.as_str()) {
                let why = if services.contains_key(&d.value) {
                    format!("depends on `{}`, which is disabled", d.value)
                } else {
                    let hint = suggest(&d.value, &enabled)
                        .map(|c| format!("; did you mean `{c}`?"))
                        .unwrap_or_default();
                    format!("depends on `{}`, which is not a service{hint}", d.value)
                };
                errors.push(ConfigError::new(
                    &d.source,
                    d.pos,
                    &join(&join("services", name), "depends_on"),
                    why,
                ));
                blocked.insert(name.clone());
            }
        }
    }
    // Cycles: a depth-first walk; every service on a cycle is blocked.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 visiting, 2 done
    fn visit<'a>(
        n: &'a str,
        services: &'a BTreeMap<String, Service>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
        cycles: &mut Vec<Vec<String>>,
    ) {
        match state.get(n) {
            Some(2) => return,
            Some(1) => {
                if let Some(i) = stack.iter().position(|s| *s == n) {
                    let mut c: Vec<String> = stack[i..].iter().map(|s| s.to_string()).collect();
                    c.push(n.to_string());
                    cycles.push(c);
                }
                return;
            }
            _ => {}
        }
        state.insert(n, 1);
        stack.push(n);
        if let Some(s) = services.get(n) {
            for d in s.depends() {
                if services.get(d).is_some_and(Service::is_enabled) {
                    visit(d, services, state, stack, cycles);
                }
            }
        }
        stack.pop();
        state.insert(n, 2);
    }
    let mut cycles = Vec::new();
    for n in &enabled {
        visit(n, services, &mut state, &mut Vec::new(), &mut cycles);
    }
    for c in cycles {
        let first = &c[0];
        let at = services
            .get(first)
            .and_then(|s| s.depends_on.as_ref())
            .and_then(|d| d.first())
            .map_or(("services".to_string(), Pos::default()), |d| {
                (d.source.clone(), d.pos)
            });
        errors.push(ConfigError::new(
            &at.0,
            at.1,
            &join(&join("services", first), "depends_on"),
            format!(
                "services depend on each other in a cycle: {}",
                c.join(" -> ")
            ),
        ));
        blocked.extend(c);
    }
    // A service that needs a blocked one cannot start either.
    loop {
        let more: Vec<String> = services
            .iter()
            .filter(|(n, s)| {
                s.is_enabled() && !blocked.contains(*n) && s.depends().any(|d| blocked.contains(d))
            })
            .map(|(n, _)| n.clone())
            .collect();
        if more.is_empty() {
            break;
        }
        blocked.extend(more);
    }
    (errors, blocked)
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
    fn unknown_dependencies_images_and_cycles_block_only_those_concerned() {
        let s = services(
            r#"
[services.a]
image = "busybox"
depends_on = ["b"]
[services.b]
image = "busybox"
depends_on = ["a"]
[services.c]
image = "busybox"
depends_on = ["syslogg"]
[services.d]
image = "nope"
[services.e]
image = "busybox"
depends_on = ["c"]
[services.ok]
image = "busybox"
[services.off]
image = "busybox"
enabled = false
[services.f]
image = "busybox"
depends_on = ["off"]
"#,
        );
        let images: BTreeSet<String> = ["busybox".to_string()].into();
        let (errors, blocked) = check(&s, &images);
        let msgs: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            msgs.iter().any(|m| m.contains("services.c.depends_on")
                && m.contains("`syslogg`, which is not a service")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter().any(|m| m.contains("there is no image `nope`")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter().any(|m| m.contains("cycle: a -> b -> a")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter().any(|m| m.contains("`off`, which is disabled")),
            "{msgs:#?}"
        );
        let blocked: Vec<&str> = blocked.iter().map(String::as_str).collect();
        assert_eq!(blocked, ["a", "b", "c", "d", "e", "f"]);
        assert!(
            msgs.iter()
                .find(|m| m.contains("syslogg"))
                .is_some_and(|m| m.starts_with("t:10:")),
            "{msgs:#?}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!("1G".parse::<Size>(), Ok(Size(Some(1 << 30))));
        assert_eq!("max".parse::<Size>(), Ok(Size(None)));
        assert_eq!("4096".parse::<Size>(), Ok(Size(Some(4096))));
        assert!("64Q".parse::<Size>().is_err());
    }
}
