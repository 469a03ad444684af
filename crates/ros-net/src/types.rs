//! ros-net's own view of links, addresses and routes, so nothing outside this crate depends on
//! netlink-packet-route's types.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;
use ros_config::MacAddr;
use serde::Serialize;

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// The link kind of a virtual interface (`bond`, `vlan`, `veth` ...); none for hardware.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub ethernet: bool,
    pub loopback: bool,
    pub up: bool,
    pub carrier: bool,
    pub mtu: u32,
}

impl LinkInfo {
    /// A physical Ethernet NIC (not loopback, not a virtual link).
    pub fn is_physical_ethernet(&self) -> bool {
        self.ethernet && !self.loopback && self.kind.is_none()
    }
}

/// A route to add or as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteInfo {
    /// Destination; `0.0.0.0/0` or `::/0` for a default route.
    pub to: IpNet,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<IpAddr>,
    /// Output interface index.
    pub dev: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

/// An address on an interface, as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddrInfo {
    pub index: u32,
    pub addr: IpNet,
}

/// The flags of the last router advertisement a link received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RaFlags {
    /// M: addresses from DHCPv6.
    pub managed: bool,
    /// O: other configuration (DNS) from DHCPv6.
    pub other: bool,
}

/// A link's IPv6 state as the kernel reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ipv6Link {
    /// None until a router advertisement has arrived.
    pub ra: Option<RaFlags>,
    /// A link-local address that may be used as a source.
    pub link_local: Option<Ipv6Addr>,
}
