//! Carries a [`Plan`] out over netlink, and applies or removes DHCP leases. Every step that fails
//! is reported and the next one still runs: one bad route must not cost the interface.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

use crate::dhcp::Lease;
use crate::netlink::Net;
use crate::plan::Plan;
use crate::types::{LinkInfo, RouteInfo};

/// Metric of routes learnt by DHCP (above static ones, as systemd-networkd does).
pub const DHCP_ROUTE_METRIC: u32 = 1024;

/// Brings the loopback interface up.
pub async fn loopback(net: &Net, links: &[LinkInfo]) -> Result<(), String> {
    let lo = links
        .iter()
        .find(|l| l.loopback)
        .ok_or("there is no loopback interface")?;
    net.set_up(lo.index).await.map_err(|e| e.to_string())
}

/// Applies the static part of a plan (MTU, link up, addresses, routes). Returns the errors per
/// interface label.
pub async fn apply_static(net: &Net, plan: &Plan) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    for i in &plan.interfaces {
        let mut err = |e: String| errors.push((i.label.clone(), e));
        if let Some(mtu) = i.mtu
            && let Err(e) = net.set_mtu(i.index, mtu).await
        {
            err(e.to_string());
        }
        if i.dhcp6 {
            for e in ipv6_for_dhcp6(&i.name) {
                err(e);
            }
        }
        if let Err(e) = net.set_up(i.index).await {
            err(e.to_string());
        }
        for a in &i.addresses {
            if let Err(e) = net.add_address(i.index, *a).await {
                err(e.to_string());
            }
        }
        for r in &i.routes {
            if let Err(e) = net.add_route(r).await {
                err(e.to_string());
            }
        }
    }
    errors
}

/// Readies an interface for DHCPv6: router advertisements, whose flags pick the DHCPv6 mode,
/// accepted even when forwarding is on (`accept_ra = 2`; a container host often forwards).
/// Optimistic DAD (RFC 4429) would save the second of duplicate address detection before the
/// link-local address is usable, but measured on Linux 6.18 a router advertisement answering the
/// optimistic solicitation is then ignored (no flags, no SLAAC address), so it stays off.
pub fn ipv6_for_dhcp6(ifname: &str) -> Vec<String> {
    let dir = std::path::Path::new("/proc/sys/net/ipv6/conf").join(ifname);
    [("accept_ra", "2")]
        .iter()
        .filter_map(|(k, v)| {
            let p = dir.join(k);
            std::fs::write(&p, v)
                .err()
                .map(|e| format!("writing {v} to {}: {e}", p.display()))
        })
        .collect()
}

/// The routes a lease asks for: its classless static routes when it has any (RFC 3442 says the
/// router option is then ignored), else a default route through its first router.
pub fn lease_routes(lease: &Lease, dev: u32) -> Vec<RouteInfo> {
    if !lease.routes.is_empty() {
        return lease
            .routes
            .iter()
            .map(|(to, gw)| RouteInfo {
                to: IpNet::V4(*to),
                via: (!gw.is_unspecified()).then_some(IpAddr::V4(*gw)),
                dev,
                metric: Some(DHCP_ROUTE_METRIC),
            })
            .collect();
    }
    lease
        .routers
        .first()
        .map(|gw| RouteInfo {
            to: IpNet::V4(Ipv4Net::default()),
            via: Some(IpAddr::V4(*gw)),
            dev,
            metric: Some(DHCP_ROUTE_METRIC),
        })
        .into_iter()
        .collect()
}

/// Configures a lease on interface `dev`; `set_mtu` when the config does not fix the MTU.
pub async fn add_lease(net: &Net, dev: u32, lease: &Lease, set_mtu: bool) -> Vec<String> {
    let mut errors = Vec::new();
    if set_mtu
        && let Some(mtu) = lease.mtu
        && let Err(e) = net.set_mtu(dev, u32::from(mtu)).await
    {
        errors.push(e.to_string());
    }
    if let Err(e) = net.add_address(dev, IpNet::V4(lease.net())).await {
        errors.push(e.to_string());
    }
    for r in lease_routes(lease, dev) {
        if let Err(e) = net.add_route(&r).await {
            errors.push(e.to_string());
        }
    }
    errors
}

/// Removes a lease's address (the kernel drops the routes through it).
pub async fn remove_lease(net: &Net, dev: u32, lease: &Lease) -> Result<(), String> {
    net.del_address(dev, IpNet::V4(lease.net()))
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn lease() -> Lease {
        Lease {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix: 24,
            server: Ipv4Addr::new(10, 0, 2, 2),
            routers: vec![Ipv4Addr::new(10, 0, 2, 2)],
            dns: vec![],
            domain: None,
            search: vec![],
            dropped_names: vec![],
            mtu: None,
            routes: vec![],
            lease_secs: 3600,
            t1_secs: 1800,
            t2_secs: 3150,
            acquired_ms: 0,
        }
    }

    #[test]
    fn a_lease_gives_a_default_route_through_its_router() {
        let r = lease_routes(&lease(), 2);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].to.to_string(), "0.0.0.0/0");
        assert_eq!(r[0].via, Some(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2))));
        assert_eq!(r[0].metric, Some(DHCP_ROUTE_METRIC));
    }

    #[test]
    fn classless_routes_replace_the_router_option() {
        let mut l = lease();
        l.routes = vec![
            (
                "10.9.0.0/16".parse().expect("net"),
                Ipv4Addr::new(10, 0, 2, 9),
            ),
            (
                "0.0.0.0/0".parse().expect("net"),
                Ipv4Addr::new(10, 0, 2, 1),
            ),
        ];
        let r: Vec<String> = lease_routes(&l, 2)
            .iter()
            .map(|r| format!("{} {:?}", r.to, r.via))
            .collect();
        assert_eq!(
            r,
            ["10.9.0.0/16 Some(10.0.2.9)", "0.0.0.0/0 Some(10.0.2.1)"]
        );
    }
}
