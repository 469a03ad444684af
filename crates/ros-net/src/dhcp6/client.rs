//! The DHCPv6 client as a pure state machine (RFC 8415 §18): messages and timer expiries in,
//! actions out. Two modes, chosen by the driver from the router's advertisement: stateful
//! (Solicit, Advertise, Request, Reply, then Renew at T1 and Rebind at T2 for an IA_NA address)
//! and stateless (Information-request for DNS only, refreshed as option 32 says).
//!
//! Choices: the first Advertise that offers an address is taken (RFC 8415 lets a client wait the
//! first retransmission time for a better one; a booting machine wants its address now);
//! Solicit and Information-request back off to 64 s at most, not the RFC's 3600 s, so an address
//! comes within a minute of a late server; the first Solicit is not delayed by up to a second
//! (§18.2.1 says SHOULD): the retransmission jitter below already spreads a fleet's retries.
//! Every address is bound as a /128 (DHCPv6 carries no prefix length; the on-link prefix and the
//! default route come from router advertisements, which the kernel handles).

use std::net::Ipv6Addr;

use super::msg::{self, IaAddr, Message, code, kind, status};

/// Retransmission parameters (RFC 8415 §7.6), in ms.
#[derive(Debug, Clone, Copy)]
struct Timing {
    irt: u64,
    mrt: u64,
    /// Most transmissions; 0 for no limit.
    mrc: u32,
}

const SOLICIT: Timing = Timing {
    irt: 1_000,
    mrt: 64_000,
    mrc: 0,
};
const REQUEST: Timing = Timing {
    irt: 1_000,
    mrt: 30_000,
    mrc: 10,
};
const RENEW: Timing = Timing {
    irt: 10_000,
    mrt: 600_000,
    mrc: 0,
};
const INFORM: Timing = Timing {
    irt: 1_000,
    mrt: 64_000,
    mrc: 0,
};
/// Information refresh time when the server gives none, and its floor (RFC 8415 §21.23).
const DEFAULT_REFRESH_SECS: u32 = 86_400;
const MIN_REFRESH_SECS: u32 = 600;

/// The options the client asks for.
const REQUESTED: &[u16] = &[
    code::DNS_SERVERS,
    code::DOMAIN_LIST,
    code::INFORMATION_REFRESH_TIME,
];

/// What the client knows of its machine.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub mac: [u8; 6],
    /// Seeds transaction ids and retransmission jitter.
    pub seed: u64,
    pub mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Addresses and DNS from a server (router advertisement with the M flag, or no router).
    Stateful,
    /// DNS only (router advertisement with the O flag).
    Stateless,
    /// The router says no DHCPv6 is needed: addresses come from SLAAC alone (no client runs).
    Slaac,
}

/// What DHCPv6 gave an interface.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lease {
    pub mode: Mode,
    pub addresses: Vec<IaAddr>,
    /// The server's DUID, in hex.
    pub server: String,
    pub dns: Vec<Ipv6Addr>,
    pub search: Vec<String>,
    /// Names the server gave that are not DNS names, dropped (the driver says so).
    pub dropped_names: Vec<String>,
    pub t1_secs: u32,
    pub t2_secs: u32,
    /// The longest valid lifetime of the addresses (stateful), or the refresh time (stateless).
    pub valid_secs: u32,
    /// When the Reply arrived (ms on the caller's clock).
    pub acquired_ms: u64,
}

impl Lease {
    fn at(&self, secs: u32) -> Option<u64> {
        crate::dhcp::client::after(self.acquired_ms, secs)
    }
    pub fn t1_at(&self) -> Option<u64> {
        self.at(self.t1_secs)
    }
    pub fn t2_at(&self) -> Option<u64> {
        self.at(self.t2_secs)
    }
    /// When the addresses expire (stateful), or the information is refreshed (stateless).
    pub fn expires_at(&self) -> Option<u64> {
        self.at(self.valid_secs)
    }
    /// The addresses, for comparing two leases.
    pub fn addrs(&self) -> Vec<Ipv6Addr> {
        self.addresses.iter().map(|a| a.addr).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Idle,
    Soliciting,
    Requesting,
    Bound,
    Renewing,
    Rebinding,
    Informing,
    Informed,
    Released,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send to All_DHCP_Relay_Agents_and_Servers on the link.
    Send(Box<Message>),
    /// Configure this lease (new, or renewed: the caller compares with what it has).
    Bind(Lease),
    /// Remove this lease's addresses (and its DNS servers).
    Unbind(Lease),
}

#[derive(Debug)]
pub struct Client {
    cfg: ClientConfig,
    duid: Vec<u8>,
    iaid: u32,
    state: State,
    xid: u32,
    rng: u64,
    /// The current exchange: when it started, its timing, its last timeout and count.
    started_ms: u64,
    timing: Timing,
    rt: u64,
    count: u32,
    deadline: Option<u64>,
    /// The Advertise being requested: server DUID and addresses.
    offer: Option<(Vec<u8>, Vec<Ipv6Addr>)>,
    server_id: Vec<u8>,
    lease: Option<Lease>,
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Self {
        let rng = cfg.seed | 1;
        let m = cfg.mac;
        Client {
            duid: msg::duid_ll(m),
            // The MAC's last four bytes: stable across boots, distinct per NIC.
            iaid: u32::from_be_bytes([m[2], m[3], m[4], m[5]]),
            cfg,
            state: State::Idle,
            xid: 0,
            rng,
            started_ms: 0,
            timing: SOLICIT,
            rt: 0,
            count: 0,
            deadline: None,
            offer: None,
            server_id: Vec::new(),
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
    pub fn duid(&self) -> &[u8] {
        &self.duid
    }
    pub fn iaid(&self) -> u32 {
        self.iaid
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64, as the DHCPv4 client.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// `base` ms plus RAND × `base`, RAND uniform in [-0.1, 0.1] (or [0, 0.1] when `up`).
    fn rand_rt(&mut self, base: u64, up: bool) -> u64 {
        let span = base / 5;
        if span == 0 {
            return base;
        }
        let r = self.next_random() % span;
        if up {
            base + 1 + r / 2
        } else {
            base - span / 2 + r
        }
    }

    /// Starts (or restarts) from nothing: Solicit or Information-request, by mode.
    pub fn start(&mut self, now: u64) -> Vec<Action> {
        self.offer = None;
        match self.cfg.mode {
            Mode::Stateless => {
                self.state = State::Informing;
                self.begin(now, INFORM)
            }
            Mode::Stateful => {
                self.state = State::Soliciting;
                self.begin(now, SOLICIT)
            }
            Mode::Slaac => {
                self.state = State::Idle;
                self.deadline = None;
                Vec::new()
            }
        }
    }

    /// A new exchange: a fresh transaction id, the first transmission.
    fn begin(&mut self, now: u64, timing: Timing) -> Vec<Action> {
        self.xid = u32::try_from(self.next_random() & 0x00ff_ffff).unwrap_or(1);
        self.started_ms = now;
        self.timing = timing;
        self.count = 0;
        self.rt = 0;
        self.transmit(now)
    }

    /// Sends the current exchange's message and sets its retransmission timer.
    fn transmit(&mut self, now: u64) -> Vec<Action> {
        let t = self.timing;
        self.rt = if self.count == 0 {
            // The first Solicit's timeout must exceed IRT (RFC 8415 §18.2.1).
            let up = self.state == State::Soliciting;
            self.rand_rt(t.irt, up)
        } else {
            let doubled = self.rand_rt(self.rt.saturating_mul(2), false);
            if doubled > t.mrt {
                self.rand_rt(t.mrt, false)
            } else {
                doubled
            }
        };
        self.count += 1;
        let mut next = now + self.rt;
        // Renew runs until T2, Rebind until the addresses expire.
        let limit = match self.state {
            State::Renewing => self.lease.as_ref().and_then(Lease::t2_at),
            State::Rebinding => self.lease.as_ref().and_then(Lease::expires_at),
            _ => None,
        };
        if let Some(l) = limit {
            next = next.min(l);
        }
        self.deadline = Some(next);
        vec![Action::Send(Box::new(self.message(now)))]
    }

    fn message(&self, now: u64) -> Message {
        let k = match self.state {
            State::Soliciting => kind::SOLICIT,
            State::Requesting => kind::REQUEST,
            State::Renewing => kind::RENEW,
            State::Rebinding => kind::REBIND,
            _ => kind::INFORMATION_REQUEST,
        };
        let elapsed_cs = u16::try_from(now.saturating_sub(self.started_ms) / 10).unwrap_or(0xffff);
        let mut m = Message::new(k, self.xid)
            .with(code::CLIENTID, self.duid.clone())
            .with(code::ELAPSED_TIME, elapsed_cs.to_be_bytes().to_vec())
            .with(code::ORO, msg::oro(REQUESTED));
        let addrs = match self.state {
            State::Requesting => self.offer.as_ref().map(|(_, a)| a.clone()),
            State::Renewing | State::Rebinding => self.lease.as_ref().map(Lease::addrs),
            State::Soliciting => Some(Vec::new()),
            _ => None,
        };
        let server = match self.state {
            State::Requesting => self.offer.as_ref().map(|(s, _)| s.clone()),
            State::Renewing => Some(self.server_id.clone()),
            _ => None,
        };
        if let Some(s) = server {
            m = m.with(code::SERVERID, s);
        }
        if let Some(a) = addrs {
            m = m.with(code::IA_NA, msg::ia_na(self.iaid, &a));
        }
        m
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
            State::Soliciting | State::Informing => self.transmit(now),
            State::Requesting => {
                if self.timing.mrc != 0 && self.count >= self.timing.mrc {
                    self.start(now)
                } else {
                    self.transmit(now)
                }
            }
            State::Informed => {
                self.state = State::Informing;
                self.begin(now, INFORM)
            }
            State::Bound | State::Renewing | State::Rebinding => self.lease_timer(now),
        }
    }

    fn lease_timer(&mut self, now: u64) -> Vec<Action> {
        let Some(lease) = self.lease.clone() else {
            return self.start(now);
        };
        if lease.expires_at().is_some_and(|e| now >= e) {
            self.lease = None;
            let mut out = vec![Action::Unbind(lease)];
            out.extend(self.start(now));
            return out;
        }
        if lease.t2_at().is_some_and(|t2| now >= t2) {
            if self.state == State::Rebinding {
                return self.transmit(now);
            }
            self.state = State::Rebinding;
            return self.begin(now, RENEW);
        }
        if self.state == State::Renewing {
            return self.transmit(now);
        }
        self.state = State::Renewing;
        self.begin(now, RENEW)
    }

    /// A DHCPv6 message arrived on the interface.
    pub fn on_message(&mut self, now: u64, m: &Message) -> Vec<Action> {
        if m.xid != self.xid {
            return Vec::new();
        }
        // The reply must name us when it names anyone, and must when it carries addresses.
        match m.option(code::CLIENTID) {
            Some(c) if c != self.duid.as_slice() => return Vec::new(),
            None if self.state != State::Informing => return Vec::new(),
            _ => {}
        }
        let Some(server) = m.option(code::SERVERID).map(<[u8]>::to_vec) else {
            return Vec::new();
        };
        match (self.state, m.kind) {
            (State::Soliciting, kind::ADVERTISE) => {
                if m.status().is_some_and(|s| s != status::SUCCESS) {
                    return Vec::new();
                }
                let Some(ia) = m.ia_na(self.iaid) else {
                    return Vec::new();
                };
                let addrs: Vec<Ipv6Addr> = ia
                    .addresses
                    .iter()
                    .filter(|a| a.valid > 0)
                    .map(|a| a.addr)
                    .collect();
                if addrs.is_empty() || ia.status.is_some_and(|s| s != status::SUCCESS) {
                    return Vec::new();
                }
                self.offer = Some((server, addrs));
                self.state = State::Requesting;
                self.begin(now, REQUEST)
            }
            (State::Requesting | State::Renewing | State::Rebinding, kind::REPLY) => {
                self.on_address_reply(now, m, server)
            }
            (State::Informing, kind::REPLY) => {
                if m.status().is_some_and(|s| s != status::SUCCESS) {
                    return Vec::new();
                }
                let refresh = m
                    .u32(code::INFORMATION_REFRESH_TIME)
                    .unwrap_or(DEFAULT_REFRESH_SECS)
                    .max(MIN_REFRESH_SECS);
                let (search, dropped_names) = crate::resolv::keep_dns_names(m.domain_list());
                let lease = Lease {
                    mode: Mode::Stateless,
                    addresses: Vec::new(),
                    server: hex(&server),
                    dns: m.dns_servers(),
                    search,
                    dropped_names,
                    t1_secs: msg::INFINITY,
                    t2_secs: msg::INFINITY,
                    valid_secs: refresh,
                    acquired_ms: now,
                };
                self.state = State::Informed;
                self.deadline = lease.expires_at();
                self.lease = Some(lease.clone());
                vec![Action::Bind(lease)]
            }
            _ => Vec::new(),
        }
    }

    fn on_address_reply(&mut self, now: u64, m: &Message, server: Vec<u8>) -> Vec<Action> {
        let ia = m.ia_na(self.iaid);
        let ia_status = ia.as_ref().and_then(|i| i.status);
        let failed = m.status().is_some_and(|s| s != status::SUCCESS)
            || matches!(
                ia_status,
                Some(status::NO_ADDRS_AVAIL | status::NO_BINDING | status::NOT_ON_LINK)
            );
        let addresses: Vec<IaAddr> = ia
            .as_ref()
            .map(|i| {
                i.addresses
                    .iter()
                    .filter(|a| a.valid > 0)
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        if failed || addresses.is_empty() {
            if self.state == State::Requesting || failed {
                // The server has nothing for us (or forgot us): drop what we hold, start over.
                let mut out: Vec<Action> =
                    self.lease.take().map(Action::Unbind).into_iter().collect();
                out.extend(self.start(now));
                return out;
            }
            // A Renew/Rebind reply without our IA: keep retrying until T2 / expiry.
            return Vec::new();
        }
        let (t1, t2) = ia.as_ref().map_or((0, 0), |i| (i.t1, i.t2));
        let (t1_secs, t2_secs) = timers(t1, t2, &addresses);
        let valid_secs = addresses.iter().map(|a| a.valid).max().unwrap_or(0);
        let (search, dropped_names) = crate::resolv::keep_dns_names(m.domain_list());
        let lease = Lease {
            mode: Mode::Stateful,
            addresses,
            server: hex(&server),
            dns: m.dns_servers(),
            search,
            dropped_names,
            t1_secs,
            t2_secs,
            valid_secs,
            acquired_ms: now,
        };
        let mut out = Vec::new();
        if let Some(old) = self.lease.take()
            && old.addrs() != lease.addrs()
        {
            out.push(Action::Unbind(old));
        }
        self.server_id = server;
        self.offer = None;
        self.state = State::Bound;
        self.deadline = lease.t1_at().or_else(|| lease.expires_at());
        self.lease = Some(lease.clone());
        out.push(Action::Bind(lease));
        out
    }

    /// Gives the addresses back (at shutdown): Release to the server, and unbind.
    pub fn release(&mut self) -> Vec<Action> {
        let was = self.state;
        self.state = State::Released;
        self.deadline = None;
        let Some(lease) = self.lease.take() else {
            return Vec::new();
        };
        if lease.mode != Mode::Stateful || was == State::Rebinding {
            return vec![Action::Unbind(lease)];
        }
        self.xid = u32::try_from(self.next_random() & 0x00ff_ffff).unwrap_or(1);
        let m = Message::new(kind::RELEASE, self.xid)
            .with(code::CLIENTID, self.duid.clone())
            .with(code::SERVERID, self.server_id.clone())
            .with(code::ELAPSED_TIME, vec![0, 0])
            .with(code::IA_NA, msg::ia_na(self.iaid, &lease.addrs()));
        vec![Action::Send(Box::new(m)), Action::Unbind(lease)]
    }
}

/// T1 and T2 in seconds: the server's, or when it leaves them to the client (0), 0.5 and 0.8 of
/// the shortest preferred lifetime (RFC 8415 §21.4).
fn timers(t1: u32, t2: u32, addrs: &[IaAddr]) -> (u32, u32) {
    if t1 != 0 && t2 != 0 && t1 <= t2 {
        return (t1, t2);
    }
    let shortest = addrs.iter().map(|a| a.preferred).min().unwrap_or(0);
    if shortest == msg::INFINITY {
        return (msg::INFINITY, msg::INFINITY);
    }
    let part = |num: u64| u32::try_from(u64::from(shortest) * num / 10).unwrap_or(u32::MAX);
    (part(5), part(8))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
