//! What the init reports: the ready line (`ros: ready {...}`, documented in `docs/ready.md`;
//! fields are only ever added), which `ros status` shows as it is now, and the services' states.
//! Typed here so that the init writes them and the CLI reads them with the same definitions.

use std::collections::BTreeMap;

use ros_config::ConfigError;
use ros_config::load::SourceStatus;
use serde::{Deserialize, Serialize};

pub const READY_PREFIX: &str = "ros: ready ";
pub const FORMAT_VERSION: u32 = 1;

/// The ready line's object (and `ros status`'s answer).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    pub version: u32,
    pub ros_version: String,
    pub arch: String,
    pub kernel: String,
    pub hostname: String,
    pub uptime_ms: u64,
    pub timeline: Vec<Phase>,
    pub interfaces: Vec<Interface>,
    pub missing_interfaces: Vec<MissingInterface>,
    pub routes: Vec<Route>,
    pub dns: Dns,
    /// The configured sysctls, read back from the kernel.
    pub sysctl: BTreeMap<String, String>,
    pub modules: Modules,
    pub state: StateDisk,
    pub config_sources: Vec<SourceStatus>,
    /// The config's errors; at most [`MAX_LISTED_ERRORS`], the rest counted in
    /// `config_errors_omitted` (every one is in `ros config validate`).
    pub config_errors: Vec<ConfigError>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub config_errors_omitted: usize,
    pub services: Vec<ServiceReport>,
    pub errors: Vec<String>,
    pub init: InitInfo,
    pub memory: Memory,
}

/// How many config errors the ready line lists (a file of 50,000 typos must not print megabytes
/// on a serial console).
pub const MAX_LISTED_ERRORS: usize = 100;

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Phase {
    pub phase: String,
    pub start_ms: u64,
    pub end_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub mtu: u32,
    pub up: bool,
    pub carrier: bool,
    /// The config key that configured it, `default` when ros chose it, none when unconfigured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// `loopback`, `unconfigured`, `static`, `dhcp` (every DHCP it runs has answered), or
    /// `no_lease` (one has not yet).
    pub state: String,
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<Dhcp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp6: Option<Dhcp6>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dhcp {
    pub address: String,
    pub server: String,
    pub lease_secs: u32,
    pub acquired_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dhcp6 {
    /// `stateful` (an address), `stateless` (DNS only), or `slaac` (the router says no DHCPv6).
    pub mode: String,
    pub addresses: Vec<String>,
    /// The server's DUID in hex; empty in `slaac` mode.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server: String,
    pub dns: Vec<String>,
    pub acquired_ms: u64,
}

/// A configured interface that matches no link.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MissingInterface {
    pub label: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    pub dev: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub search: Vec<String>,
}

/// The network as it is now: what `ros status` refreshes in the ready report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkView {
    pub interfaces: Vec<Interface>,
    pub missing_interfaces: Vec<MissingInterface>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

/// Kernel modules loaded, and those that failed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Modules {
    pub loaded: Vec<String>,
    pub failed: Vec<ModuleFailure>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModuleFailure {
    pub name: String,
    pub error: String,
}

/// The state disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StateDisk {
    /// Whether config, volumes and logs are on a disk (else in memory, lost at power-off).
    pub persistent: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Formatted at this boot.
    pub formatted: bool,
    /// Why there is no state disk, or what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InitInfo {
    pub pid: i32,
    /// Resident memory of the init when ready (for `ros status`: now).
    pub rss_kib: u64,
    /// The longest time the init's main loop was busy without answering, since the boot.
    #[serde(default)]
    pub max_stall_ms: u64,
}

/// The machine's memory, from /proc/meminfo.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub total_kib: u64,
    pub available_kib: u64,
}

/// What the ready line and `ros service` show of a service.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceReport {
    pub name: String,
    pub image: String,
    /// `waiting`, `starting`, `running`, `backoff`, `completed`, `exited`, `failed`,
    /// `stopping`, `stopped`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<Exit>,
    pub oom_kills: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Unknown,
    Healthy,
    Unhealthy,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with code {c}"),
            Exit::Signal(s) => write!(f, "was killed by signal {s}"),
        }
    }
}

/// The ready line, newline-terminated.
pub fn line(r: &Ready) -> String {
    match serde_json::to_string(r) {
        Ok(json) => format!("{READY_PREFIX}{json}\n"),
        Err(e) => format!("{READY_PREFIX}{{\"version\":{FORMAT_VERSION},\"error\":\"{e}\"}}\n"),
    }
}
