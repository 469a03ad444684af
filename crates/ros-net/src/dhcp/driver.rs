//! Runs a [`Client`] on one interface: opens the sockets its state needs, sends what it asks,
//! feeds it replies and timer expiries, applies and removes its leases over netlink, and reports
//! each change as an [`Event`]. It never returns an error: a failure is logged and retried at the
//! client's next timer. A message on `stop` releases the lease and ends it.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::client::{Action, Client, ClientConfig, Dest, Lease, State};
use super::msg::Message;
use super::socket::{PacketSocket, udp_socket};
use super::wire;
use crate::apply;
use crate::netlink::Net;

/// The interface a driver runs on.
#[derive(Debug, Clone)]
pub struct DhcpLink {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    /// The config sets this interface's MTU, so a lease's MTU option is not applied.
    pub mtu_fixed: bool,
}

/// What happened to an interface's lease.
#[derive(Debug, Clone)]
pub enum Event {
    Bound {
        index: u32,
        lease: Lease,
    },
    Unbound {
        index: u32,
        address: Ipv4Addr,
    },
    /// DHCPv6 configured the interface (stateful, stateless, or SLAAC alone).
    Bound6 {
        index: u32,
        lease: crate::dhcp6::Lease,
    },
    Unbound6 {
        index: u32,
    },
    Failed {
        index: u32,
        error: String,
    },
}

/// Asks a driver to release its lease and stop; answers once done.
pub type StopRequest = oneshot::Sender<()>;

struct Driver {
    client: Client,
    link: DhcpLink,
    net: Net,
    events: mpsc::UnboundedSender<Event>,
    packet: Option<PacketSocket>,
    udp: Option<tokio::net::UdpSocket>,
}

/// Runs DHCP on `link` until a stop request arrives.
pub async fn run(
    net: Net,
    link: DhcpLink,
    cfg: ClientConfig,
    now: fn() -> u64,
    events: mpsc::UnboundedSender<Event>,
    mut stop: mpsc::Receiver<StopRequest>,
) {
    let mut d = Driver {
        client: Client::new(cfg),
        link,
        net,
        events,
        packet: None,
        udp: None,
    };
    let mut actions = d.client.start(now());
    // Two halves, one per socket, each above the 1500-byte maximum message the client asks for.
    let mut buf = vec![0u8; 4096];
    loop {
        for a in actions.drain(..) {
            d.perform(a).await;
        }
        d.sync_sockets();
        let wait = d
            .client
            .deadline()
            .map(|dl| Duration::from_millis(dl.saturating_sub(now())));
        tokio::select! {
            got = recv(d.packet.as_ref(), d.udp.as_ref(), &mut buf) => {
                if let Some(msg) = got {
                    log::debug!("dhcp: {}: got {:?} xid {:#x}", d.link.name, msg.msg_type(), msg.xid);
                    actions = d.client.on_message(now(), &msg);
                }
            }
            () = sleep(wait) => {
                actions = d.client.on_timer(now());
            }
            req = stop.recv() => {
                for a in d.client.release(now()) {
                    d.perform(a).await;
                }
                if let Some(ack) = req {
                    let _ = ack.send(());
                }
                return;
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

/// The next DHCP message from whichever socket is open.
async fn recv(
    packet: Option<&PacketSocket>,
    udp: Option<&tokio::net::UdpSocket>,
    buf: &mut [u8],
) -> Option<Message> {
    let (pbuf, ubuf) = buf.split_at_mut(2048);
    let from_packet = async {
        match packet {
            Some(p) => match p.recv(pbuf).await {
                Ok(n) => wire::unframe(&pbuf[..n]).and_then(Message::decode),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    None
                }
            },
            None => std::future::pending().await,
        }
    };
    let from_udp = async {
        match udp {
            Some(u) => match u.recv(ubuf).await {
                Ok(n) => Message::decode(&ubuf[..n]),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    None
                }
            },
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        m = from_packet => m,
        m = from_udp => m,
    }
}

impl Driver {
    /// Opens the sockets the client's state needs: the packet socket until there is an address
    /// (then kept, see the socket module), the UDP socket while there is one.
    fn sync_sockets(&mut self) {
        let has_address = matches!(
            self.client.state(),
            State::Bound | State::Renewing | State::Rebinding
        );
        if has_address {
            if self.udp.is_none() {
                self.udp = self.open_udp();
            }
        } else {
            self.udp = None;
            if self.packet.is_none() && self.client.state() != State::Released {
                self.packet = self.open_packet();
            }
        }
    }

    fn open_packet(&self) -> Option<PacketSocket> {
        PacketSocket::open(self.link.index)
            .map_err(|e| {
                self.fail(format!(
                    "cannot open a packet socket on {}: {e}",
                    self.link.name
                ))
            })
            .ok()
    }

    fn open_udp(&self) -> Option<tokio::net::UdpSocket> {
        udp_socket(&self.link.name)
            .map_err(|e| {
                self.fail(format!(
                    "cannot open UDP port 68 on {}: {e}",
                    self.link.name
                ))
            })
            .ok()
    }

    fn fail(&self, error: String) {
        log::warn!("dhcp: {error}");
        let _ = self.events.send(Event::Failed {
            index: self.link.index,
            error,
        });
    }

    async fn perform(&mut self, action: Action) {
        match action {
            Action::Send(dest, msg) => {
                let bytes = msg.encode();
                let kind = msg.msg_type();
                match self.send(&dest, &bytes).await {
                    Ok(()) => log::debug!("dhcp: {}: sent {kind:?} to {dest:?}", self.link.name),
                    Err(e) => log::debug!("dhcp: {}: sending {kind:?}: {e}", self.link.name),
                }
            }
            Action::Bind(lease) => {
                let errors =
                    apply::add_lease(&self.net, self.link.index, &lease, !self.link.mtu_fixed)
                        .await;
                for e in errors {
                    self.fail(e);
                }
                log::info!(
                    "dhcp: {}: bound {}/{} from {} for {}s",
                    self.link.name,
                    lease.address,
                    lease.prefix,
                    lease.server,
                    lease.lease_secs
                );
                for n in &lease.dropped_names {
                    log::warn!(
                        "dhcp: {}: the server gave {n:?}, which is not a DNS name; dropped",
                        self.link.name
                    );
                }
                let _ = self.events.send(Event::Bound {
                    index: self.link.index,
                    lease,
                });
            }
            Action::Unbind(lease) => {
                if let Err(e) = apply::remove_lease(&self.net, self.link.index, &lease).await {
                    self.fail(e);
                }
                log::info!("dhcp: {}: released {}", self.link.name, lease.address);
                let _ = self.events.send(Event::Unbound {
                    index: self.link.index,
                    address: lease.address,
                });
            }
        }
    }

    async fn send(&mut self, dest: &Dest, bytes: &[u8]) -> std::io::Result<()> {
        let to = match dest {
            Dest::Broadcast => Ipv4Addr::BROADCAST,
            Dest::Server(ip) => *ip,
        };
        let has_address = self.client.lease().is_some() || self.client.state() == State::Released;
        if has_address {
            if self.udp.is_none() {
                self.udp = self.open_udp();
            }
            if let Some(u) = &self.udp {
                u.send_to(bytes, SocketAddrV4::new(to, wire::SERVER_PORT))
                    .await?;
                return Ok(());
            }
        }
        if self.packet.is_none() {
            self.packet = self.open_packet();
        }
        match &self.packet {
            Some(p) => {
                p.send_broadcast(&wire::frame(Ipv4Addr::UNSPECIFIED, to, bytes))
                    .await
            }
            None => Err(std::io::Error::from(std::io::ErrorKind::NotConnected)),
        }
    }
}
