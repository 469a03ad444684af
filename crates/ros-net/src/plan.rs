//! The network plan: which interface gets what, decided from the config and the links present.
//! Pure, so every rule is unit-tested without a kernel.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use ros_config::Network;
use serde::Serialize;

use crate::types::{LinkInfo, RouteInfo};

/// Metric of routes from the config's `gateway4`/`gateway6` (the kernel's default).
pub const STATIC_GATEWAY_METRIC: u32 = 0;

/// What to do with one interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IfacePlan {
    /// The config key it came from (`eth0`, or a label such as `lan`); `default` when ros chose it.
    pub label: String,
    pub index: u32,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    pub addresses: Vec<IpNet>,
    pub routes: Vec<RouteInfo>,
    pub dhcp4: bool,
    pub dhcp6: bool,
}

/// A configured interface that matches no link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Missing {
    pub label: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub interfaces: Vec<IfacePlan>,
    pub missing: Vec<Missing>,
    /// Set when ros fell back to DHCP on the first Ethernet NIC, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// Plans the network for `cfg` over `links`.
///
/// Rules: with no interface configured, DHCP runs on the first physical Ethernet NIC (lowest
/// index). A configured interface is found by `mac` when given, else by its key as the kernel
/// name. When interfaces are configured but none of them is present, ros still takes DHCP on the
/// first NIC, so a wrong name cannot leave the machine unreachable.
pub fn plan(cfg: &Network, links: &[LinkInfo]) -> Plan {
    let mut out = Plan::default();
    for (label, iface) in &cfg.interfaces {
        let found = match iface.mac.as_ref().map(|m| m.value) {
            Some(mac) => links.iter().find(|l| l.mac == Some(mac)),
            None => links.iter().find(|l| l.name == label.as_str()),
        };
        let Some(link) = found else {
            let reason = match iface.mac.as_ref().map(|m| m.value) {
                Some(mac) => format!("no interface has MAC {mac}"),
                None => format!("no interface is named {label}"),
            };
            out.missing.push(Missing {
                label: label.to_string(),
                reason,
            });
            continue;
        };
        if let Some(other) = out.interfaces.iter().find(|p| p.index == link.index) {
            out.missing.push(Missing {
                label: label.to_string(),
                reason: format!("{} is already configured by `{}`", link.name, other.label),
            });
            continue;
        }
        let mut routes: Vec<RouteInfo> = iface
            .routes
            .iter()
            .flatten()
            .map(|r| RouteInfo {
                to: r.to,
                via: r.via,
                dev: link.index,
                metric: r.metric,
            })
            .collect();
        if let Some(gw) = iface.gateway4 {
            routes.push(default_route(IpAddr::V4(gw), link.index));
        }
        if let Some(gw) = iface.gateway6 {
            routes.push(default_route(IpAddr::V6(gw), link.index));
        }
        out.interfaces.push(IfacePlan {
            label: label.to_string(),
            index: link.index,
            name: link.name.clone(),
            mtu: iface.mtu,
            addresses: iface.addresses.clone().unwrap_or_default(),
            routes,
            dhcp4: iface.dhcp4_enabled(),
            dhcp6: iface.dhcp6_enabled(),
        });
    }
    if out.interfaces.is_empty() {
        let first = links
            .iter()
            .filter(|l| l.is_physical_ethernet())
            .min_by_key(|l| l.index);
        if let Some(link) = first {
            if !cfg.interfaces.is_empty() {
                out.fallback = Some(format!(
                    "no configured interface is present; DHCP on {} instead",
                    link.name
                ));
            }
            out.interfaces.push(IfacePlan {
                label: "default".into(),
                index: link.index,
                name: link.name.clone(),
                mtu: None,
                addresses: Vec::new(),
                routes: Vec::new(),
                dhcp4: true,
                dhcp6: false,
            });
        }
    }
    out
}

impl IfacePlan {
    /// Whether `other` sets the interface up the same way (the config key's name aside).
    pub fn same_setup(&self, other: &IfacePlan) -> bool {
        self.index == other.index
            && self.mtu == other.mtu
            && self.addresses == other.addresses
            && self.routes == other.routes
            && self.dhcp4 == other.dhcp4
            && self.dhcp6 == other.dhcp6
    }
}

/// What a live change of the network config does: interfaces to take down (their DHCP released,
/// the old plan's addresses and routes removed), and interfaces to set up. One whose setup changed
/// is in both; one set up the same way is in neither and keeps its leases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    pub down: Vec<IfacePlan>,
    pub up: Vec<IfacePlan>,
}

/// The change from plan `old` to plan `new`.
pub fn change(old: &Plan, new: &Plan) -> Change {
    let kept = |i: &IfacePlan, other: &Plan| other.interfaces.iter().any(|o| o.same_setup(i));
    Change {
        down: old
            .interfaces
            .iter()
            .filter(|i| !kept(i, new))
            .cloned()
            .collect(),
        up: new
            .interfaces
            .iter()
            .filter(|i| !kept(i, old))
            .cloned()
            .collect(),
    }
}

/// A default route through `gw` on interface `dev`.
pub fn default_route(gw: IpAddr, dev: u32) -> RouteInfo {
    let to = match gw {
        IpAddr::V4(_) => IpNet::V4(Ipv4Net::default()),
        IpAddr::V6(_) => IpNet::V6(Ipv6Net::default()),
    };
    RouteInfo {
        to,
        via: Some(gw),
        dev,
        metric: Some(STATIC_GATEWAY_METRIC),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ros_config::from_toml;

    fn link(index: u32, name: &str, mac: &str) -> LinkInfo {
        LinkInfo {
            index,
            name: name.into(),
            mac: mac.parse().ok(),
            kind: None,
            ethernet: !mac.is_empty(),
            loopback: name == "lo",
            up: false,
            carrier: true,
            mtu: 1500,
        }
    }

    fn links() -> Vec<LinkInfo> {
        vec![
            link(1, "lo", ""),
            link(3, "eth1", "52:54:00:12:34:57"),
            link(2, "eth0", "52:54:00:12:34:56"),
        ]
    }

    fn net(toml: &str) -> Network {
        let r = from_toml("t", toml);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        r.data.network
    }

    #[test]
    fn no_config_means_dhcp_on_the_first_ethernet_nic() {
        let p = plan(&Network::default(), &links());
        assert_eq!(p.interfaces.len(), 1);
        assert_eq!(p.interfaces[0].name, "eth0");
        assert!(p.interfaces[0].dhcp4);
        assert_eq!(p.fallback, None);
    }

    #[test]
    fn virtual_links_are_not_the_first_nic() {
        let mut l = links();
        l.push(LinkInfo {
            kind: Some("veth".into()),
            ..link(0, "veth0", "02:00:00:00:00:01")
        });
        assert_eq!(plan(&Network::default(), &l).interfaces[0].name, "eth0");
    }

    #[test]
    fn match_by_mac_and_by_name_with_static_addresses_and_routes() {
        let cfg = net(r#"
[network.interfaces.eth0]
dhcp4 = true
[network.interfaces.lan]
mac = "52:54:00:12:34:57"
addresses = ["192.168.77.10/24", "fd00:77::10/64"]
gateway4 = "192.168.77.1"
gateway6 = "fd00:77::1"
mtu = 1400
[[network.interfaces.lan.routes]]
to = "10.99.0.0/16"
via = "192.168.77.1"
metric = 50
"#);
        let p = plan(&cfg, &links());
        assert!(p.missing.is_empty());
        let eth0 = p
            .interfaces
            .iter()
            .find(|i| i.label == "eth0")
            .expect("eth0");
        assert_eq!((eth0.index, eth0.dhcp4), (2, true));
        let lan = p.interfaces.iter().find(|i| i.label == "lan").expect("lan");
        assert_eq!(lan.name, "eth1");
        assert!(!lan.dhcp4);
        assert_eq!(lan.mtu, Some(1400));
        assert_eq!(lan.addresses.len(), 2);
        let routes: Vec<String> = lan
            .routes
            .iter()
            .map(|r| format!("{} via {:?} m{:?}", r.to, r.via, r.metric))
            .collect();
        assert_eq!(
            routes,
            [
                "10.99.0.0/16 via Some(192.168.77.1) mSome(50)",
                "0.0.0.0/0 via Some(192.168.77.1) mSome(0)",
                "::/0 via Some(fd00:77::1) mSome(0)",
            ]
        );
    }

    #[test]
    fn a_missing_interface_is_reported_and_the_rest_planned() {
        let cfg = net(
            "[network.interfaces.eth0]\n[network.interfaces.eth9]\naddresses = [\"10.0.0.1/8\"]\n[network.interfaces.x]\nmac = \"02:00:00:00:00:99\"\n",
        );
        let p = plan(&cfg, &links());
        assert_eq!(p.interfaces.len(), 1);
        let reasons: Vec<_> = p.missing.iter().map(|m| m.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "no interface is named eth9",
                "no interface has MAC 02:00:00:00:00:99"
            ]
        );
        assert_eq!(p.fallback, None);
    }

    #[test]
    fn when_no_configured_interface_exists_dhcp_still_runs_on_the_first_nic() {
        let cfg = net("[network.interfaces.ens3]\naddresses = [\"10.0.0.1/8\"]\n");
        let p = plan(&cfg, &links());
        assert_eq!(p.interfaces.len(), 1);
        assert_eq!(p.interfaces[0].name, "eth0");
        assert!(p.interfaces[0].dhcp4);
        assert!(p.fallback.as_deref().is_some_and(|f| f.contains("eth0")));
        assert_eq!(p.missing.len(), 1);
    }

    #[test]
    fn two_keys_for_one_link_keep_the_first() {
        let cfg = net(
            "[network.interfaces.eth0]\nmtu = 1400\n[network.interfaces.wan]\nmac = \"52:54:00:12:34:56\"\n",
        );
        let p = plan(&cfg, &links());
        assert_eq!(p.interfaces.len(), 1);
        assert_eq!(p.interfaces[0].label, "eth0");
        assert!(p.missing[0].reason.contains("already configured by `eth0`"));
    }

    #[test]
    fn no_nic_at_all_plans_nothing() {
        let p = plan(&Network::default(), &[link(1, "lo", "")]);
        assert!(p.interfaces.is_empty());
    }

    #[test]
    fn a_live_change_touches_only_interfaces_whose_setup_changed() {
        let old = plan(&Network::default(), &links());
        // eth0 named in the config, set up as before: kept; eth1 new.
        let new = plan(
            &net(
                "[network.interfaces.eth0]\n[network.interfaces.eth1]\naddresses = [\"192.168.79.10/24\"]\n",
            ),
            &links(),
        );
        let c = change(&old, &new);
        assert!(c.down.is_empty(), "{c:?}");
        assert_eq!(c.up.len(), 1);
        assert_eq!((c.up[0].name.as_str(), c.up[0].dhcp4), ("eth1", false));

        // eth1's address changes, eth0 gets DHCPv6 too: both go down and up again.
        let newer = plan(
            &net(
                "[network.interfaces.eth0]\ndhcp6 = true\n[network.interfaces.eth1]\naddresses = [\"192.168.79.11/24\"]\n",
            ),
            &links(),
        );
        let c = change(&new, &newer);
        let names = |v: &[IfacePlan]| v.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&c.down), ["eth0", "eth1"]);
        assert_eq!(names(&c.up), ["eth0", "eth1"]);

        // Back to no config: eth1 down, eth0 down (DHCPv6 off) and up with DHCPv4 alone.
        let c = change(&newer, &old);
        assert_eq!(names(&c.down), ["eth0", "eth1"]);
        assert_eq!(names(&c.up), ["eth0"]);
        assert_eq!(change(&old, &old), Change::default());
    }
}
