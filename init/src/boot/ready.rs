//! The ready report: what the boot did, printed once as `ros: ready {...}` (the types and the
//! format are `ros_api::report`'s, documented in `docs/ready.md`) and kept for `ros status`,
//! which refreshes its network, services and uptime.

use ros_api::report::{Dhcp, Dhcp6, Dns, Interface, Memory, MissingInterface, NetworkView, Route};

use crate::network::NetState;

/// The machine's memory now, from /proc/meminfo.
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

/// The network as it is now, as the ready line shows it.
pub async fn network(st: &mut NetState) -> NetworkView {
    let (interfaces, routes) = links_and_routes(st).await;
    let (ns, search) = st.dns();
    NetworkView {
        interfaces,
        missing_interfaces: st
            .plan
            .missing
            .iter()
            .map(|m| MissingInterface {
                label: m.label.clone(),
                reason: m.reason.clone(),
            })
            .collect(),
        routes,
        dns: Dns {
            nameservers: ns.iter().map(ToString::to_string).collect(),
            search,
        },
    }
}

/// The interfaces and routes as the kernel has them now, labelled from the plan.
async fn links_and_routes(st: &mut NetState) -> (Vec<Interface>, Vec<Route>) {
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
                state: state.to_string(),
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
                    mode: serde_json::to_value(x.mode)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
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
