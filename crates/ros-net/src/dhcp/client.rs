//! The DHCPv4 client as a pure state machine (RFC 2131 §4.4): messages and timer expiries in,
//! actions out (send this, bind that lease, drop that one). Time is milliseconds on a monotonic
//! clock that the caller passes in, so every path, lease renewal included, is unit-tested
//! without sockets or waiting.
//!
//! Choices: the first valid offer is taken; DISCOVER is resent after 1, 2, 4 ... 64 s (RFC 2131
//! suggests starting at 4 s; a booting machine wants its address sooner); REQUEST is resent four
//! times before starting over; while renewing or rebinding a request is resent after half the time
//! left, but at least every 10 s (RFC 2131 says 60 s, which is longer than short test leases
//! allow), never past T2 or the expiry.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::msg::{BOOT_REPLY, Message, MessageType, code};
use super::wire;

const FIRST_DISCOVER_RETRY_MS: u64 = 1_000;
const MAX_RETRY_MS: u64 = 64_000;
const REQUEST_TRIES: u32 = 4;
const MIN_RENEW_RETRY_MS: u64 = 10_000;
/// Lease time assumed when a server gives none.
const DEFAULT_LEASE_SECS: u32 = 3600;

/// What the client knows of its machine.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub mac: [u8; 6],
    pub hostname: Option<String>,
    /// Seeds transaction ids and retry jitter.
    pub seed: u64,
}

/// A lease: the address and what came with it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub server: Ipv4Addr,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    /// Names the server gave that are not DNS names, dropped (the driver says so).
    pub dropped_names: Vec<String>,
    pub mtu: Option<u16>,
    /// Classless static routes (option 121): destination, gateway.
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
    pub lease_secs: u32,
    pub t1_secs: u32,
    pub t2_secs: u32,
    /// When the server's ACK arrived (ms on the caller's clock).
    pub acquired_ms: u64,
}

/// When `secs` after `acquired_ms` falls, in ms; none for "forever" (0xffffffff, in DHCPv4
/// and DHCPv6 alike).
pub(crate) fn after(acquired_ms: u64, secs: u32) -> Option<u64> {
    (secs != u32::MAX).then(|| acquired_ms + u64::from(secs) * 1000)
}

impl Lease {
    fn at(&self, secs: u32) -> Option<u64> {
        after(self.acquired_ms, secs)
    }
    pub fn t1_at(&self) -> Option<u64> {
        self.at(self.t1_secs)
    }
    pub fn t2_at(&self) -> Option<u64> {
        self.at(self.t2_secs)
    }
    pub fn expires_at(&self) -> Option<u64> {
        self.at(self.lease_secs)
    }
    /// The address with its prefix.
    pub fn net(&self) -> Ipv4Net {
        Ipv4Net::new(self.address, self.prefix).unwrap_or_else(|_| Ipv4Net::from(self.address))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Idle,
    Selecting,
    Requesting,
    Bound,
    Renewing,
    Rebinding,
    Released,
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// To 255.255.255.255 from 0.0.0.0 (or from the leased address while rebinding).
    Broadcast,
    /// To the server, from the leased address.
    Server(Ipv4Addr),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Send(Dest, Box<Message>),
    /// Configure this lease (new, or renewed: the caller compares with what it has).
    Bind(Lease),
    /// Remove this lease's address and routes.
    Unbind(Lease),
}

#[derive(Debug)]
pub struct Client {
    cfg: ClientConfig,
    state: State,
    xid: u32,
    rng: u64,
    attempt: u32,
    deadline: Option<u64>,
    /// When the current exchange started, for the `secs` field.
    started_ms: u64,
    /// The offer being requested: (address, server).
    offer: Option<(Ipv4Addr, Ipv4Addr)>,
    lease: Option<Lease>,
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Self {
        let rng = cfg.seed | 1;
        Client {
            cfg,
            state: State::Idle,
            xid: 0,
            rng,
            attempt: 0,
            deadline: None,
            started_ms: 0,
            offer: None,
            lease: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }
    /// When `on_timer` must be called next, if at all.
    pub fn deadline(&self) -> Option<u64> {
        self.deadline
    }
    pub fn xid(&self) -> u32 {
        self.xid
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: enough for transaction ids and jitter.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// `base` ms with up to ±1/8 jitter, so a fleet booting together does not retry in step.
    fn jittered(&mut self, base: u64) -> u64 {
        let span = base / 4;
        if span == 0 {
            return base;
        }
        base - span / 2 + self.next_random() % span
    }

    /// Starts (or restarts) discovery.
    pub fn start(&mut self, now: u64) -> Vec<Action> {
        self.state = State::Selecting;
        self.xid = u32::try_from(self.next_random() & 0xffff_ffff).unwrap_or(1);
        self.attempt = 0;
        self.started_ms = now;
        self.offer = None;
        self.send_discover(now)
    }

    fn secs(&self, now: u64) -> u16 {
        u16::try_from(now.saturating_sub(self.started_ms) / 1000).unwrap_or(u16::MAX)
    }

    fn retry_delay(&mut self) -> u64 {
        let base = FIRST_DISCOVER_RETRY_MS
            .saturating_mul(1 << self.attempt.min(6))
            .min(MAX_RETRY_MS);
        self.attempt += 1;
        self.jittered(base)
    }

    fn send_discover(&mut self, now: u64) -> Vec<Action> {
        let msg = wire::discover(&self.cfg, self.xid, self.secs(now));
        self.deadline = Some(now + self.retry_delay());
        vec![Action::Send(Dest::Broadcast, Box::new(msg))]
    }

    fn send_select_request(&mut self, now: u64) -> Vec<Action> {
        let Some((addr, server)) = self.offer else {
            return self.start(now);
        };
        let msg = wire::request_selecting(&self.cfg, self.xid, self.secs(now), addr, server);
        self.deadline = Some(now + self.retry_delay());
        vec![Action::Send(Dest::Broadcast, Box::new(msg))]
    }

    fn send_renew(&mut self, now: u64, dest: Dest, until: Option<u64>) -> Vec<Action> {
        let Some(lease) = &self.lease else {
            return self.start(now);
        };
        let msg = wire::request_renewing(&self.cfg, self.xid, self.secs(now), lease.address);
        let half = until.map_or(MIN_RENEW_RETRY_MS, |u| u.saturating_sub(now) / 2);
        let mut next = now + half.max(MIN_RENEW_RETRY_MS);
        if let Some(u) = until {
            next = next.min(u);
        }
        self.deadline = Some(next);
        vec![Action::Send(dest, Box::new(msg))]
    }

    /// The deadline has passed.
    pub fn on_timer(&mut self, now: u64) -> Vec<Action> {
        if self.deadline.is_none_or(|d| now < d) {
            return Vec::new();
        }
        match self.state {
            State::Idle | State::Released => {
                self.deadline = None;
                Vec::new()
            }
            State::Selecting => self.send_discover(now),
            State::Requesting => {
                if self.attempt >= REQUEST_TRIES {
                    self.start(now)
                } else {
                    self.send_select_request(now)
                }
            }
            State::Bound | State::Renewing | State::Rebinding => self.lease_timer(now),
        }
    }

    fn lease_timer(&mut self, now: u64) -> Vec<Action> {
        let Some(lease) = self.lease.clone() else {
            return self.start(now);
        };
        if lease.expires_at().is_some_and(|e| now >= e) {
            let mut out = vec![Action::Unbind(lease)];
            self.lease = None;
            out.extend(self.start(now));
            return out;
        }
        if lease.t2_at().is_some_and(|t2| now >= t2) {
            if self.state != State::Rebinding {
                self.state = State::Rebinding;
                self.started_ms = now;
            }
            return self.send_renew(now, Dest::Broadcast, lease.expires_at());
        }
        if self.state == State::Bound {
            self.state = State::Renewing;
            self.xid = u32::try_from(self.next_random() & 0xffff_ffff).unwrap_or(1);
            self.started_ms = now;
        }
        self.send_renew(now, Dest::Server(lease.server), lease.t2_at())
    }

    /// A DHCP message arrived for this interface.
    pub fn on_message(&mut self, now: u64, msg: &Message) -> Vec<Action> {
        if msg.op != BOOT_REPLY || msg.xid != self.xid || msg.chaddr[..6] != self.cfg.mac {
            return Vec::new();
        }
        let Some(kind) = msg.msg_type() else {
            return Vec::new();
        };
        match (self.state, kind) {
            (State::Selecting, MessageType::Offer) => {
                let server = server_id(msg);
                if msg.yiaddr.is_unspecified() || server.is_unspecified() {
                    return Vec::new();
                }
                self.offer = Some((msg.yiaddr, server));
                self.state = State::Requesting;
                self.attempt = 0;
                self.send_select_request(now)
            }
            (State::Requesting | State::Renewing | State::Rebinding, MessageType::Ack) => {
                let Some(lease) = lease_from_ack(msg, now) else {
                    return Vec::new();
                };
                let mut out = Vec::new();
                if let Some(old) = self.lease.take()
                    && old.address != lease.address
                {
                    out.push(Action::Unbind(old));
                }
                self.state = State::Bound;
                self.offer = None;
                self.attempt = 0;
                self.deadline = lease.t1_at();
                self.lease = Some(lease.clone());
                out.push(Action::Bind(lease));
                out
            }
            (State::Requesting | State::Renewing | State::Rebinding, MessageType::Nak) => {
                let mut out = Vec::new();
                if let Some(old) = self.lease.take() {
                    out.push(Action::Unbind(old));
                }
                out.extend(self.start(now));
                out
            }
            _ => Vec::new(),
        }
    }

    /// Gives the lease back (at shutdown): RELEASE to the server, and unbind.
    pub fn release(&mut self, _now: u64) -> Vec<Action> {
        self.state = State::Released;
        self.deadline = None;
        let Some(lease) = self.lease.take() else {
            return Vec::new();
        };
        self.xid = u32::try_from(self.next_random() & 0xffff_ffff).unwrap_or(1);
        let msg = wire::release(&self.cfg, self.xid, lease.address, lease.server);
        vec![
            Action::Send(Dest::Server(lease.server), Box::new(msg)),
            Action::Unbind(lease),
        ]
    }
}

fn server_id(msg: &Message) -> Ipv4Addr {
    msg.ip(code::SERVER_ID).unwrap_or(msg.siaddr)
}

fn lease_from_ack(msg: &Message, now: u64) -> Option<Lease> {
    let address = msg.yiaddr;
    if address.is_unspecified() {
        return None;
    }
    let prefix = msg
        .ip(code::SUBNET_MASK)
        .and_then(|m| u8::try_from(u32::from(m).leading_ones()).ok())
        .unwrap_or(24);
    let lease_secs = msg.u32(code::LEASE_TIME).unwrap_or(DEFAULT_LEASE_SECS);
    let scaled = |num: u64, den: u64| {
        if lease_secs == u32::MAX {
            u32::MAX
        } else {
            u32::try_from(u64::from(lease_secs) * num / den).unwrap_or(u32::MAX)
        }
    };
    let t2_secs = msg
        .u32(code::REBINDING)
        .unwrap_or_else(|| scaled(7, 8))
        .min(lease_secs);
    let t1_secs = msg
        .u32(code::RENEWAL)
        .unwrap_or_else(|| scaled(1, 2))
        .min(t2_secs);
    let mut dropped_names = Vec::new();
    let domain = msg
        .string(code::DOMAIN_NAME)
        .map(|d| d.trim_end_matches('.').to_string())
        .filter(|d| !d.is_empty())
        .and_then(|d| {
            if crate::resolv::is_dns_name(&d) {
                Some(d)
            } else {
                dropped_names.push(d);
                None
            }
        });
    let (mut search, bad) = crate::resolv::keep_dns_names(msg.search());
    dropped_names.extend(bad);
    if search.is_empty() {
        search.extend(domain.clone());
    }
    Some(Lease {
        address,
        prefix,
        server: server_id(msg),
        routers: msg.ips(code::ROUTER),
        dns: msg.ips(code::DNS),
        domain,
        search,
        dropped_names,
        mtu: msg.u16(code::MTU).filter(|m| *m >= 68),
        routes: msg.classless_routes(),
        lease_secs,
        t1_secs,
        t2_secs,
        acquired_ms: now,
    })
}
