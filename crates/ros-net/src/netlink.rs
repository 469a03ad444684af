//! A small handle over rtnetlink (pinned at 0.24; its API moves between versions, so all of it is
//! kept here) that speaks ros-net's own types.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkLayerType, LinkMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::types::{AddrInfo, LinkInfo, RouteInfo};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(#[source] std::io::Error),
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

/// The errno of a netlink error reply, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// A netlink connection. Cheap to clone; the connection task runs on the current tokio runtime.
#[derive(Debug, Clone)]
pub struct Net {
    handle: Handle,
}

impl Net {
    /// Opens the connection and spawns its task; must be called inside a tokio runtime.
    pub fn connect() -> Result<Net, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Connect)?;
        tokio::spawn(conn);
        Ok(Net { handle })
    }

    pub async fn links(&self) -> Result<Vec<LinkInfo>, NetError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing links"))?;
        let mut out: Vec<LinkInfo> = msgs.iter().map(link_info).collect();
        out.sort_by_key(|l| l.index);
        Ok(out)
    }

    pub async fn set_up(&self, index: u32) -> Result<(), NetError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl(format!("setting link {index} up")))
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(nl(format!("setting the MTU of link {index} to {mtu}")))
    }

    /// Adds an address; one already there is not an error.
    pub async fn add_address(&self, index: u32, addr: IpNet) -> Result<(), NetError> {
        match self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len())
            .replace()
            .execute()
            .await
        {
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            r => r.map_err(nl(format!("adding {addr} to link {index}"))),
        }
    }

    /// Removes an address; one already gone is not an error.
    pub async fn del_address(&self, index: u32, addr: IpNet) -> Result<(), NetError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing addresses"))?;
        for m in msgs {
            if address_of(&m).is_some_and(|a| a == addr)
                && let Err(e) = self.handle.address().del(m).execute().await
                && errno(&e) != Some(libc::EADDRNOTAVAIL)
            {
                return Err(nl(format!("removing {addr} from link {index}"))(e));
            }
        }
        Ok(())
    }

    pub async fn addresses(&self) -> Result<Vec<AddrInfo>, NetError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing addresses"))?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                Some(AddrInfo {
                    index: m.header.index,
                    addr: address_of(m)?,
                })
            })
            .collect())
    }

    /// Adds (or replaces) a route in the main table.
    pub async fn add_route(&self, r: &RouteInfo) -> Result<(), NetError> {
        let what = || format!("adding route {} via {:?} on link {}", r.to, r.via, r.dev);
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(r.to.network(), r.to.prefix_len())
            .map_err(|e| NetError::Netlink {
                what: what(),
                source: rtnetlink::Error::InvalidNla(e.to_string()),
            })?
            .output_interface(r.dev);
        if let Some(via) = r.via {
            b = b.gateway(via).map_err(|e| NetError::Netlink {
                what: what(),
                source: rtnetlink::Error::InvalidNla(e.to_string()),
            })?;
        } else {
            b = b.scope(RouteScope::Link);
        }
        if let Some(m) = r.metric {
            b = b.priority(m);
        }
        self.handle
            .route()
            .add(b.build())
            .replace()
            .execute()
            .await
            .map_err(nl(what()))
    }

    /// The main table's unicast routes, both families.
    pub async fn routes(&self) -> Result<Vec<RouteInfo>, NetError> {
        let mut out = Vec::new();
        let v4 = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let v6 = RouteMessageBuilder::<Ipv6Addr>::new().build();
        for req in [v4, v6] {
            let msgs: Vec<RouteMessage> = self
                .handle
                .route()
                .get(req)
                .execute()
                .try_collect()
                .await
                .map_err(nl("listing routes"))?;
            out.extend(msgs.iter().filter_map(route_info));
        }
        Ok(out)
    }
}

fn link_info(m: &LinkMessage) -> LinkInfo {
    let mut name = String::new();
    let mut mac = None;
    let mut kind = None;
    let mut mtu = 0;
    let mut carrier = false;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name.clone_from(n),
            LinkAttribute::Address(b) if b.len() == 6 => {
                let mut m6 = [0u8; 6];
                m6.copy_from_slice(b);
                mac = Some(ros_config::MacAddr(m6));
            }
            LinkAttribute::Mtu(v) => mtu = *v,
            LinkAttribute::Carrier(c) => carrier = *c != 0,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let NlLinkInfo::Kind(k) = i {
                        kind = Some(kind_name(k));
                    }
                }
            }
            _ => {}
        }
    }
    let ethernet = m.header.link_layer_type == LinkLayerType::Ether;
    LinkInfo {
        index: m.header.index,
        name,
        mac: if ethernet { mac } else { None },
        kind,
        ethernet,
        loopback: m.header.link_layer_type == LinkLayerType::Loopback,
        up: m.header.flags.contains(LinkFlags::Up),
        carrier,
        mtu,
    }
}

fn kind_name(k: &InfoKind) -> String {
    k.to_string()
}

fn address_of(m: &AddressMessage) -> Option<IpNet> {
    // IFA_LOCAL is the interface's own address on point-to-point links; else IFA_ADDRESS.
    let mut addr = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => addr = Some(*ip),
            AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
            _ => {}
        }
    }
    IpNet::new(addr?, m.header.prefix_len).ok()
}

fn route_info(m: &RouteMessage) -> Option<RouteInfo> {
    if m.header.table != netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN
        || m.header.kind != netlink_packet_route::route::RouteType::Unicast
    {
        return None;
    }
    let v6 = m.header.address_family == AddressFamily::Inet6;
    let mut dst: Option<IpAddr> = None;
    let mut via = None;
    let mut dev = 0;
    let mut metric = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = ip_of(d),
            RouteAttribute::Gateway(g) => via = ip_of(g),
            RouteAttribute::Oif(i) => dev = *i,
            RouteAttribute::Priority(p) => metric = Some(*p),
            _ => {}
        }
    }
    let dst = dst.unwrap_or(if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    Some(RouteInfo {
        to: IpNet::new(dst, m.header.destination_prefix_length).ok()?,
        via,
        dev,
        metric,
    })
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}
