//! A small handle over rtnetlink (pinned at 0.24; its API moves between versions, so all of it is
//! kept here) that speaks ros-net's own types.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, Inet6IfaceFlags, InfoKind, LinkAttribute, LinkFlags,
    LinkInfo as NlLinkInfo, LinkLayerType, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::types::{AddrInfo, Ipv6Link, LinkInfo, RaFlags, RouteInfo};

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

    /// The address messages of one link.
    async fn link_addresses(&self, index: u32) -> Result<Vec<AddressMessage>, NetError> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing addresses"))
    }

    /// Removes an address; one already gone is not an error.
    pub async fn del_address(&self, index: u32, addr: IpNet) -> Result<(), NetError> {
        for m in self.link_addresses(index).await? {
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

    /// What the kernel knows of a link's IPv6: router advertisement flags, a usable link-local
    /// address (DAD done, or optimistic).
    pub async fn ipv6_link(&self, index: u32) -> Result<Ipv6Link, NetError> {
        // Routes first: a route from an advertisement seen here means the flags read next
        // already reflect that advertisement (read the other way round, one arriving between
        // the two reads would look like an advertisement without M and O).
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing routes"))?;
        let route_from_ra = routes.iter().any(|r| {
            r.header.protocol == RouteProtocol::Ra
                && r.attributes.contains(&RouteAttribute::Oif(index))
        });
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl(format!("reading link {index}")))?;
        let mut out = Ipv6Link::default();
        for a in links.iter().flat_map(|m| &m.attributes) {
            let LinkAttribute::AfSpecUnspec(specs) = a else {
                continue;
            };
            for spec in specs {
                let AfSpecUnspec::Inet6(v6) = spec else {
                    continue;
                };
                for x in v6 {
                    // RA_RCVD alone misses an advertisement that answers the solicitation
                    // before the kernel notes it sent one (addrconf_dad_completed sends, then
                    // sets RS_SENT; QEMU's slirp and a veth peer are that fast), so the M and O
                    // flags count too, and below, a route the advertisement installed.
                    if let AfSpecInet6::Flags(f) = x
                        && f.intersects(
                            Inet6IfaceFlags::RaRcvd
                                | Inet6IfaceFlags::RaManaged
                                | Inet6IfaceFlags::Otherconf,
                        )
                    {
                        out.ra = Some(RaFlags {
                            managed: f.contains(Inet6IfaceFlags::RaManaged),
                            other: f.contains(Inet6IfaceFlags::Otherconf),
                        });
                    }
                }
            }
        }
        if out.ra.is_none() && route_from_ra {
            out.ra = Some(RaFlags {
                managed: false,
                other: false,
            });
        }
        for m in &self.link_addresses(index).await? {
            if m.header.family != AddressFamily::Inet6 || m.header.scope != AddressScope::Link {
                continue;
            }
            let flags = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    AddressAttribute::Flags(f) => Some(*f),
                    _ => None,
                })
                .unwrap_or_else(|| {
                    AddressFlags::from_bits_retain(u32::from(m.header.flags.bits()))
                });
            let usable = !flags.contains(AddressFlags::Dadfailed)
                && (!flags.contains(AddressFlags::Tentative)
                    || flags.contains(AddressFlags::Optimistic));
            if let Some(IpNet::V6(n)) = address_of(m)
                && usable
            {
                out.link_local = Some(n.addr());
            }
        }
        Ok(out)
    }

    /// Adds (or replaces) a route in the main table.
    pub async fn add_route(&self, r: &RouteInfo) -> Result<(), NetError> {
        let what = || format!("adding route {} via {:?} on link {}", r.to, r.via, r.dev);
        let msg = route_message(r, what)?;
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(nl(what()))
    }

    /// Removes a route from the main table; one already gone is not an error.
    pub async fn del_route(&self, r: &RouteInfo) -> Result<(), NetError> {
        let what = || format!("removing route {} via {:?} on link {}", r.to, r.via, r.dev);
        let msg = route_message(r, what)?;
        match self.handle.route().del(msg).execute().await {
            Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
            r => r.map_err(nl(what())),
        }
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

/// The netlink message for a route in the main table.
fn route_message(r: &RouteInfo, what: impl Fn() -> String) -> Result<RouteMessage, NetError> {
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
    Ok(b.build())
}
