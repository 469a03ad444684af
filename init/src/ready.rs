//! The ready line: `ros: ready ` and one JSON object saying what the boot did. The format is
//! documented in `docs/ready.md`; fields are only ever added.

use serde::Serialize;

use crate::kmod;
use crate::network::NetState;
use crate::sources::SourceStatus;

pub const PREFIX: &str = "ros: ready ";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Phase {
    pub phase: &'static str,
    pub start_ms: u64,
    pub end_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Ready {
    pub version: u32,
    pub ros_version: &'static str,
    pub arch: &'static str,
    pub kernel: String,
    pub hostname: String,
    pub uptime_ms: u64,
    pub timeline: Vec<Phase>,
    pub interfaces: Vec<Interface>,
    pub missing_interfaces: Vec<ros_net::plan::Missing>,
    pub routes: Vec<Route>,
    pub dns: Dns,
    /// The configured sysctls, read back from the kernel.
    pub sysctl: std::collections::BTreeMap<String, String>,
    pub modules: kmod::Report,
    /// The state disk: `persistent`, `device`, `formatted`, `detail`.
    pub state: crate::state::Report,
    pub config_sources: Vec<SourceStatus>,
    pub config_errors: Vec<ros_config::ConfigError>,
    pub services: Vec<crate::supervisor::ServiceReport>,
    pub errors: Vec<String>,
    pub init: InitInfo,
    pub memory: Memory,
}

/// The machine's memory when ready, from /proc/meminfo.
#[derive(Debug, Serialize)]
pub struct Memory {
    pub total_kib: u64,
    pub available_kib: u64,
}

pub fn memory() -> Memory {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Memory {
        total_kib: field("MemTotal:"),
        available_kib: field("MemAvailable:"),
    }
}

#[derive(Debug, Serialize)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub mtu: u32,
    pub up: bool,
    pub carrier: bool,
    /// The config key that configured it, `default` when ros chose it, none when unconfigured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// `loopback`, `unconfigured`, `static`, `dhcp` (every DHCP it runs has answered), or
    /// `no_lease` (one has not yet).
    pub state: &'static str,
    pub addresses: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<Dhcp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhcp6: Option<Dhcp6>,
}

#[derive(Debug, Serialize)]
pub struct Dhcp6 {
    /// `stateful` (an address), `stateless` (DNS only), or `slaac` (the router says no DHCPv6).
    pub mode: ros_net::dhcp6::Mode,
    pub addresses: Vec<String>,
    /// The server's DUID in hex; empty in `slaac` mode.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub server: String,
    pub dns: Vec<String>,
    pub acquired_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Dhcp {
    pub address: String,
    pub server: String,
    pub lease_secs: u32,
    pub acquired_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Route {
    pub to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    pub dev: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub search: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct InitInfo {
    pub pid: i32,
    /// Resident memory of the init when ready.
    pub rss_kib: u64,
}

/// The network as it is now, as the ready line shows it: `interfaces`, `routes`, `dns`.
pub async fn network_json(st: &mut NetState) -> serde_json::Value {
    let (interfaces, routes) = network_view(st).await;
    let (ns, search) = st.dns();
    serde_json::json!({
        "interfaces": interfaces,
        "missing_interfaces": st.plan.missing,
        "routes": routes,
        "dns": Dns {
            nameservers: ns.iter().map(ToString::to_string).collect(),
            search,
        },
    })
}

/// The interfaces and routes as the kernel has them now, labelled from the plan.
pub async fn network_view(st: &mut NetState) -> (Vec<Interface>, Vec<Route>) {
    st.refresh_links().await;
    let (addrs, routes) = match &st.net {
        Some(net) => (
            net.addresses().await.unwrap_or_default(),
            net.routes().await.unwrap_or_default(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    let interfaces = st
        .links
        .iter()
        .map(|l| {
            let plan = st.plan.interfaces.iter().find(|p| p.index == l.index);
            let lease = st.leases.get(&l.index);
            let lease6 = st.leases6.get(&l.index);
            let state = match (l.loopback, plan) {
                (true, _) => "loopback",
                (_, None) => "unconfigured",
                (_, Some(p)) if !p.dhcp4 && !p.dhcp6 => "static",
                (_, Some(p)) if (p.dhcp4 && lease.is_none()) || (p.dhcp6 && lease6.is_none()) => {
                    "no_lease"
                }
                (_, Some(_)) => "dhcp",
            };
            Interface {
                name: l.name.clone(),
                index: l.index,
                mac: l.mac.map(|m| m.to_string()),
                kind: l.kind.clone(),
                mtu: l.mtu,
                up: l.up,
                carrier: l.carrier,
                config: plan.map(|p| p.label.clone()),
                state,
                addresses: addrs
                    .iter()
                    .filter(|a| a.index == l.index)
                    .map(|a| a.addr.to_string())
                    .collect(),
                dhcp: lease.map(|x| Dhcp {
                    address: x.net().to_string(),
                    server: x.server.to_string(),
                    lease_secs: x.lease_secs,
                    acquired_ms: x.acquired_ms,
                }),
                dhcp6: lease6.map(|x| Dhcp6 {
                    mode: x.mode,
                    addresses: x.addresses.iter().map(|a| a.addr.to_string()).collect(),
                    server: x.server.clone(),
                    dns: x.dns.iter().map(ToString::to_string).collect(),
                    acquired_ms: x.acquired_ms,
                }),
            }
        })
        .collect();
    let routes = routes
        .iter()
        .filter(|r| !r.to.addr().is_multicast() && !is_ipv6_link_local(r))
        .map(|r| Route {
            to: r.to.to_string(),
            via: r.via.map(|v| v.to_string()),
            dev: st.name_of(r.dev),
            metric: r.metric,
        })
        .collect();
    (interfaces, routes)
}

fn is_ipv6_link_local(r: &ros_net::RouteInfo) -> bool {
    matches!(r.to, ipnet::IpNet::V6(n) if n.addr().segments()[0] == 0xfe80)
}

/// The init's resident memory, from /proc/self/status.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The ready line, newline-terminated.
pub fn line(r: &Ready) -> String {
    match serde_json::to_string(r) {
        Ok(json) => format!("{PREFIX}{json}\n"),
        Err(e) => format!("{PREFIX}{{\"version\":{FORMAT_VERSION},\"error\":\"{e}\"}}\n"),
    }
}
