//! DHCPv6 messages (RFC 8415 §8 and §21, DNS options from RFC 3646): the client/server message
//! format and the options the client sends or reads.
//!
//! Hand-written for the reason given in the DHCPv4 module (`dhcproto` draws its transaction ids
//! from `getrandom(2)`, which blocks early in a boot), and because the client needs a dozen
//! options, not the whole registry.

use std::net::Ipv6Addr;

pub const CLIENT_PORT: u16 = 546;
pub const SERVER_PORT: u16 = 547;
/// All_DHCP_Relay_Agents_and_Servers (link scope).
pub const ALL_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
/// Lifetimes and T1/T2 of this value mean "forever".
pub const INFINITY: u32 = u32::MAX;

/// Message types.
pub mod kind {
    pub const SOLICIT: u8 = 1;
    pub const ADVERTISE: u8 = 2;
    pub const REQUEST: u8 = 3;
    pub const RENEW: u8 = 5;
    pub const REBIND: u8 = 6;
    pub const REPLY: u8 = 7;
    pub const RELEASE: u8 = 8;
    pub const INFORMATION_REQUEST: u8 = 11;
}

/// Option codes.
pub mod code {
    pub const CLIENTID: u16 = 1;
    pub const SERVERID: u16 = 2;
    pub const IA_NA: u16 = 3;
    pub const IAADDR: u16 = 5;
    pub const ORO: u16 = 6;
    pub const ELAPSED_TIME: u16 = 8;
    pub const STATUS_CODE: u16 = 13;
    pub const DNS_SERVERS: u16 = 23;
    pub const DOMAIN_LIST: u16 = 24;
    pub const INFORMATION_REFRESH_TIME: u16 = 32;
}

/// Status codes.
pub mod status {
    pub const SUCCESS: u16 = 0;
    pub const NO_ADDRS_AVAIL: u16 = 2;
    pub const NO_BINDING: u16 = 3;
    pub const NOT_ON_LINK: u16 = 4;
}

/// One message: type, 24-bit transaction id, options in order (a code may repeat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: u8,
    pub xid: u32,
    pub options: Vec<(u16, Vec<u8>)>,
}

/// An address of an identity association, with its lifetimes in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IaAddr {
    pub addr: Ipv6Addr,
    pub preferred: u32,
    pub valid: u32,
}

/// An IA_NA option as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IaNa {
    pub iaid: u32,
    pub t1: u32,
    pub t2: u32,
    pub addresses: Vec<IaAddr>,
    /// The IA's own status code, when it has one.
    pub status: Option<u16>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn ip_at(b: &[u8], at: usize) -> Option<Ipv6Addr> {
    let o: [u8; 16] = b.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(o))
}

/// Splits a run of options; `None` when one overruns the buffer.
fn parse_options(mut b: &[u8]) -> Option<Vec<(u16, Vec<u8>)>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let code = u16_at(b, 0)?;
        let len = usize::from(u16_at(b, 2)?);
        let data = b.get(4..4 + len)?;
        out.push((code, data.to_vec()));
        b = &b[4 + len..];
    }
    Some(out)
}

fn put_option(out: &mut Vec<u8>, code: u16, data: &[u8]) {
    out.extend_from_slice(&code.to_be_bytes());
    // Options the client builds are far below 64 KiB.
    out.extend_from_slice(&u16::try_from(data.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(data);
}

impl Message {
    pub fn new(kind: u8, xid: u32) -> Self {
        Message {
            kind,
            xid: xid & 0x00ff_ffff,
            options: Vec::new(),
        }
    }

    pub fn with(mut self, code: u16, data: Vec<u8>) -> Self {
        self.options.push((code, data));
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(self.kind);
        out.extend_from_slice(&self.xid.to_be_bytes()[1..]);
        for (code, data) in &self.options {
            put_option(&mut out, *code, data);
        }
        out
    }

    pub fn decode(b: &[u8]) -> Option<Message> {
        let kind = *b.first()?;
        let x = b.get(1..4)?;
        let xid = u32::from_be_bytes([0, x[0], x[1], x[2]]);
        Some(Message {
            kind,
            xid,
            options: parse_options(&b[4..])?,
        })
    }

    /// The first option with this code.
    pub fn option(&self, code: u16) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, d)| d.as_slice())
    }

    /// The message's own status code (not an IA's); none means success.
    pub fn status(&self) -> Option<u16> {
        self.option(code::STATUS_CODE).and_then(|d| u16_at(d, 0))
    }

    /// The IA_NA with this IAID, if present and well formed.
    pub fn ia_na(&self, iaid: u32) -> Option<IaNa> {
        self.options
            .iter()
            .filter(|(c, _)| *c == code::IA_NA)
            .filter_map(|(_, d)| decode_ia_na(d))
            .find(|ia| ia.iaid == iaid)
    }

    pub fn dns_servers(&self) -> Vec<Ipv6Addr> {
        let Some(d) = self.option(code::DNS_SERVERS) else {
            return Vec::new();
        };
        (0..d.len() / 16).filter_map(|i| ip_at(d, i * 16)).collect()
    }

    /// The domain search list (RFC 3646 §4: uncompressed DNS names).
    pub fn domain_list(&self) -> Vec<String> {
        self.option(code::DOMAIN_LIST)
            .map(decode_names)
            .unwrap_or_default()
    }

    pub fn u32(&self, code: u16) -> Option<u32> {
        self.option(code).and_then(|d| u32_at(d, 0))
    }
}

fn decode_ia_na(d: &[u8]) -> Option<IaNa> {
    let mut ia = IaNa {
        iaid: u32_at(d, 0)?,
        t1: u32_at(d, 4)?,
        t2: u32_at(d, 8)?,
        addresses: Vec::new(),
        status: None,
    };
    for (code, sub) in parse_options(&d[12..])? {
        match code {
            code::IAADDR => {
                let addr = ip_at(&sub, 0)?;
                let preferred = u32_at(&sub, 16)?;
                let valid = u32_at(&sub, 20)?;
                // An address with its own failure status is not offered (RFC 8415 §21.6).
                let failed = parse_options(sub.get(24..)?)?
                    .iter()
                    .any(|(c, s)| *c == code::STATUS_CODE && u16_at(s, 0) != Some(0));
                if !failed && preferred <= valid {
                    ia.addresses.push(IaAddr {
                        addr,
                        preferred,
                        valid,
                    });
                }
            }
            code::STATUS_CODE => ia.status = u16_at(&sub, 0),
            _ => {}
        }
    }
    Some(ia)
}

/// Reads a run of DNS names in wire format; stops at the first malformed one.
fn decode_names(mut d: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    'names: while !d.is_empty() {
        let mut labels: Vec<String> = Vec::new();
        loop {
            let Some(&len) = d.first() else {
                break 'names;
            };
            let len = usize::from(len);
            if len == 0 {
                d = &d[1..];
                break;
            }
            // A compression pointer or an overrun: not allowed here.
            let Some(label) = d.get(1..1 + len).filter(|_| len < 64) else {
                break 'names;
            };
            labels.push(String::from_utf8_lossy(label).into_owned());
            d = &d[1 + len..];
        }
        if !labels.is_empty() {
            out.push(labels.join("."));
        }
    }
    out
}

/// Encodes names in DNS wire format (for tests and the ORO-less server side of tests).
pub fn encode_names(names: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for n in names {
        for label in n.trim_end_matches('.').split('.') {
            out.push(u8::try_from(label.len()).unwrap_or(63));
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
    }
    out
}

/// A DUID-LL (RFC 8415 §11.4): Ethernet and the MAC, stable across boots without storage.
pub fn duid_ll(mac: [u8; 6]) -> Vec<u8> {
    let mut d = vec![0, 3, 0, 1];
    d.extend_from_slice(&mac);
    d
}

/// An IA_NA option's payload, with the given addresses (lifetimes left to the server).
pub fn ia_na(iaid: u32, addrs: &[Ipv6Addr]) -> Vec<u8> {
    let mut d = Vec::with_capacity(12 + addrs.len() * 28);
    d.extend_from_slice(&iaid.to_be_bytes());
    d.extend_from_slice(&[0; 8]);
    for a in addrs {
        let mut sub = a.octets().to_vec();
        sub.extend_from_slice(&[0; 8]);
        put_option(&mut d, code::IAADDR, &sub);
    }
    d
}

/// An IA_NA option's payload as a server sends it (for tests).
pub fn ia_na_reply(iaid: u32, t1: u32, t2: u32, addrs: &[IaAddr], status: Option<u16>) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&iaid.to_be_bytes());
    d.extend_from_slice(&t1.to_be_bytes());
    d.extend_from_slice(&t2.to_be_bytes());
    for a in addrs {
        let mut sub = a.addr.octets().to_vec();
        sub.extend_from_slice(&a.preferred.to_be_bytes());
        sub.extend_from_slice(&a.valid.to_be_bytes());
        put_option(&mut d, code::IAADDR, &sub);
    }
    if let Some(s) = status {
        put_option(&mut d, code::STATUS_CODE, &s.to_be_bytes());
    }
    d
}

/// The Option Request option's payload.
pub fn oro(codes: &[u16]) -> Vec<u8> {
    codes.iter().flat_map(|c| c.to_be_bytes()).collect()
}
