//! Runs DHCPv6 on one interface. First it waits, polling netlink, for a usable link-local address
//! and for the router's advertisement, whose flags pick the mode (M: stateful; O only: stateless;
//! neither: SLAAC alone, no client; no advertisement within `ra_wait`: stateful, for networks
//! with a DHCPv6 server and no router). Then it runs a [`Client`] over a UDP socket bound to the
//! link-local address, adds and removes its addresses over netlink, and reports each change as
//! an [`Event`] on the channel the DHCPv4 drivers use. A stop request releases and ends it.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use ipnet::{IpNet, Ipv6Net};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::client::{Action, Client, ClientConfig, Lease, Mode};
use super::msg::{self, Message};
use crate::dhcp::driver::{Event, StopRequest};
use crate::netlink::Net;
use crate::types::{Ipv6Link, RaFlags};

/// The interface a driver runs on.
#[derive(Debug, Clone)]
pub struct Dhcp6Link {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
}

/// How long to wait for a router advertisement once the link-local address is usable. The
/// kernel solicits a router up to 1 s after that, and the router may wait before it answers:
/// measured against dnsmasq in the namespace test, the advertisement came after 2 s (a client
/// waiting 2 s solicited DHCPv6 on a SLAAC-only link, twice) and within 5 s in every run.
pub const RA_WAIT: Duration = Duration::from_secs(5);
/// How often the link's IPv6 state is polled while waiting.
const POLL: Duration = Duration::from_millis(20);

/// Runs DHCPv6 on `link` until a stop request arrives.
pub async fn run(
    net: Net,
    link: Dhcp6Link,
    seed: u64,
    now: fn() -> u64,
    events: mpsc::UnboundedSender<Event>,
    mut stop: mpsc::Receiver<StopRequest>,
    ra_wait: Duration,
) {
    let prepared = tokio::select! {
        r = prepare(&net, &link, now, ra_wait) => Some(r),
        req = stop.recv() => {
            acknowledge(req);
            None
        }
    };
    let Some((link_local, mut mode, mut ra_seen)) = prepared else {
        return;
    };
    if mode == Mode::Slaac {
        // No DHCPv6 on this link: no socket either.
        announce(&link.name, mode, ra_seen, link_local);
        return slaac(&events, link.index, now, &mut stop).await;
    }
    let socket = loop {
        match open(link.index, link_local) {
            Ok(s) => break s,
            Err(e) => {
                fail(
                    &events,
                    link.index,
                    format!("dhcp6: cannot open UDP port 546 on {}: {e}", link.name),
                );
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    req = stop.recv() => return acknowledge(req),
                }
            }
        }
    };
    let d = Driver {
        net,
        link,
        socket,
        events,
        now,
    };
    loop {
        announce(&d.link.name, mode, ra_seen, link_local);
        match d.serve(seed, mode, ra_seen, &mut stop).await {
            Some(next) => {
                mode = next;
                ra_seen = true;
            }
            None => return,
        }
    }
}

fn announce(name: &str, mode: Mode, ra_seen: bool, link_local: Ipv6Addr) {
    let what = match (mode, ra_seen) {
        (Mode::Stateful, true) => "asking for an address (the router's M flag)",
        (Mode::Stateful, false) => "asking for an address (no router advertisement yet)",
        (Mode::Stateless, _) => "asking for DNS only (the router's O flag)",
        (Mode::Slaac, _) => "the router asks for SLAAC alone, no DHCPv6",
    };
    log::info!("dhcp6: {name}: {what} (link-local {link_local})");
}

/// SLAAC alone: reports the interface settled, then waits for the stop.
async fn slaac(
    events: &mpsc::UnboundedSender<Event>,
    index: u32,
    now: fn() -> u64,
    stop: &mut mpsc::Receiver<StopRequest>,
) {
    let _ = events.send(Event::Bound6 {
        index,
        lease: Lease {
            mode: Mode::Slaac,
            addresses: Vec::new(),
            server: String::new(),
            dns: Vec::new(),
            search: Vec::new(),
            dropped_names: Vec::new(),
            t1_secs: msg::INFINITY,
            t2_secs: msg::INFINITY,
            valid_secs: msg::INFINITY,
            acquired_ms: now(),
        },
    });
    acknowledge(stop.recv().await);
}

fn acknowledge(req: Option<StopRequest>) {
    if let Some(ack) = req {
        let _ = ack.send(());
    }
}

fn mode_of(ra: RaFlags) -> Mode {
    if ra.managed {
        Mode::Stateful
    } else if ra.other {
        Mode::Stateless
    } else {
        Mode::Slaac
    }
}

struct Driver {
    net: Net,
    link: Dhcp6Link,
    socket: UdpSocket,
    events: mpsc::UnboundedSender<Event>,
    now: fn() -> u64,
}

impl Driver {
    /// Runs the client in `mode` until a stop (`None`), or until a router advertisement that
    /// arrives late, while nothing is bound yet, asks for another mode (`Some(mode)`).
    async fn serve(
        &self,
        seed: u64,
        mode: Mode,
        ra_seen: bool,
        stop: &mut mpsc::Receiver<StopRequest>,
    ) -> Option<Mode> {
        let now = self.now;
        let mut client = Client::new(ClientConfig {
            mac: self.link.mac,
            seed,
            mode,
        });
        if mode == Mode::Slaac {
            slaac(&self.events, self.link.index, now, stop).await;
            return None;
        }
        let mut actions = client.start(now());
        let mut buf = vec![0u8; 2048];
        let mut watch_ra = !ra_seen;
        loop {
            for a in actions.drain(..) {
                self.perform(a).await;
            }
            let wait = client
                .deadline()
                .map(|dl| Duration::from_millis(dl.saturating_sub(now())));
            tokio::select! {
                got = self.socket.recv(&mut buf) => {
                    match got {
                        Ok(n) => {
                            if let Some(m) = Message::decode(&buf[..n]) {
                                log::debug!("dhcp6: {}: got type {} xid {:#x}", self.link.name, m.kind, m.xid);
                                actions = client.on_message(now(), &m);
                            }
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                () = sleep(wait) => {
                    actions = client.on_timer(now());
                }
                ra = late_ra(&self.net, self.link.index), if watch_ra => {
                    watch_ra = false;
                    let next = mode_of(ra);
                    if next != mode && client.lease().is_none() {
                        return Some(next);
                    }
                }
                req = stop.recv() => {
                    for a in client.release() {
                        self.perform(a).await;
                    }
                    acknowledge(req);
                    return None;
                }
            }
        }
    }
}

/// The flags of the first router advertisement, however late (polled once a second).
async fn late_ra(net: &Net, index: u32) -> RaFlags {
    loop {
        if let Ok(Ipv6Link { ra: Some(ra), .. }) = net.ipv6_link(index).await {
            return ra;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits for a usable link-local address, then for a router advertisement (up to `ra_wait`).
async fn prepare(
    net: &Net,
    link: &Dhcp6Link,
    now: fn() -> u64,
    ra_wait: Duration,
) -> (Ipv6Addr, Mode, bool) {
    let mut ready_at: Option<(u64, Ipv6Addr)> = None;
    let started = now();
    let mut poll = POLL;
    loop {
        match net.ipv6_link(link.index).await {
            Ok(st) => {
                if let Some(ra) = st.ra
                    && let Some(ll) = st.link_local.or(ready_at.map(|r| r.1))
                {
                    return (ll, mode_of(ra), true);
                }
                if let Some(ll) = st.link_local {
                    if ready_at.is_none() {
                        log::debug!("dhcp6: {}: link-local {ll} usable", link.name);
                    }
                    let (since, _) = *ready_at.get_or_insert((now(), ll));
                    if now().saturating_sub(since)
                        >= u64::try_from(ra_wait.as_millis()).unwrap_or(u64::MAX)
                    {
                        return (ll, Mode::Stateful, false);
                    }
                } else if now().saturating_sub(started) > 5_000 {
                    // Still no link-local address (no carrier, perhaps): look once a second.
                    poll = Duration::from_secs(1);
                }
            }
            Err(e) => log::debug!("dhcp6: {}: {e}", link.name),
        }
        tokio::time::sleep(poll).await;
    }
}

fn open(index: u32, link_local: Ipv6Addr) -> std::io::Result<UdpSocket> {
    let s = std::net::UdpSocket::bind(SocketAddr::V6(SocketAddrV6::new(
        link_local,
        msg::CLIENT_PORT,
        0,
        index,
    )))?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

fn fail(events: &mpsc::UnboundedSender<Event>, index: u32, error: String) {
    log::warn!("{error}");
    let _ = events.send(Event::Failed { index, error });
}

fn host(a: Ipv6Addr) -> IpNet {
    IpNet::V6(Ipv6Net::from(a))
}

impl Driver {
    async fn perform(&self, action: Action) {
        let (net, link, events) = (&self.net, &self.link, &self.events);
        match action {
            Action::Send(m) => {
                let to = SocketAddr::V6(SocketAddrV6::new(
                    msg::ALL_SERVERS,
                    msg::SERVER_PORT,
                    0,
                    link.index,
                ));
                match self.socket.send_to(&m.encode(), to).await {
                    Ok(_) => log::debug!("dhcp6: {}: sent type {}", link.name, m.kind),
                    Err(e) => log::debug!("dhcp6: {}: sending type {}: {e}", link.name, m.kind),
                }
            }
            Action::Bind(lease) => {
                for a in &lease.addresses {
                    if let Err(e) = net.add_address(link.index, host(a.addr)).await {
                        fail(events, link.index, format!("dhcp6: {e}"));
                    }
                }
                let addrs: Vec<String> =
                    lease.addresses.iter().map(|a| a.addr.to_string()).collect();
                log::info!(
                    "dhcp6: {}: bound [{}] dns [{}] from server {}",
                    link.name,
                    addrs.join(" "),
                    lease
                        .dns
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" "),
                    lease.server
                );
                for n in &lease.dropped_names {
                    log::warn!(
                        "dhcp6: {}: the server gave {n:?}, which is not a DNS name; dropped",
                        link.name
                    );
                }
                let _ = events.send(Event::Bound6 {
                    index: link.index,
                    lease,
                });
            }
            Action::Unbind(lease) => {
                for a in &lease.addresses {
                    if let Err(e) = net.del_address(link.index, host(a.addr)).await {
                        fail(events, link.index, format!("dhcp6: {e}"));
                    }
                }
                log::info!("dhcp6: {}: released", link.name);
                let _ = events.send(Event::Unbound6 { index: link.index });
            }
        }
    }
}

async fn sleep(wait: Option<Duration>) {
    match wait {
        Some(w) => tokio::time::sleep(w).await,
        None => std::future::pending().await,
    }
}
