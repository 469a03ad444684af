//! DHCPv4 messages (RFC 2131 header, RFC 2132 options): encoding and decoding.
//!
//! Hand-written rather than taken from `dhcproto`: that crate fills every message it builds
//! (`Default`, and `new_with_id` through it) with a transaction id from `rand`, i.e.
//! `getrandom(2)`, which blocks until the kernel's CRNG is seeded: measured at about one second
//! into a QEMU boot, all of it added to the time to a lease. The client supplies its own ids.
//! What is read: RFC 3396 long options (repeated codes are joined), RFC 3397 search domains
//! (with name compression), RFC 3442 classless routes. Not read: option overload (52).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

pub const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// The fixed header (236 bytes) and the magic cookie.
const HEADER: usize = 240;
/// Some servers drop BOOTP messages shorter than this.
pub const MIN_LEN: usize = 300;

pub const BOOT_REQUEST: u8 = 1;
pub const BOOT_REPLY: u8 = 2;

/// Option codes used by the client.
pub mod code {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const DOMAIN_NAME: u8 = 15;
    pub const MTU: u8 = 26;
    pub const NTP: u8 = 42;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMS: u8 = 55;
    pub const MAX_SIZE: u8 = 57;
    pub const RENEWAL: u8 = 58;
    pub const REBINDING: u8 = 59;
    pub const CLIENT_ID: u8 = 61;
    pub const DOMAIN_SEARCH: u8 = 119;
    pub const CLASSLESS_ROUTES: u8 = 121;
    pub const END: u8 = 255;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MessageType {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Discover,
            2 => Self::Offer,
            3 => Self::Request,
            4 => Self::Decline,
            5 => Self::Ack,
            6 => Self::Nak,
            7 => Self::Release,
            8 => Self::Inform,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub op: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    /// Options in order; a code appears once (long options are joined on decoding).
    pub options: Vec<(u8, Vec<u8>)>,
}

impl Message {
    /// A client request carrying `kind`.
    pub fn request(kind: MessageType, xid: u32, mac: &[u8; 6]) -> Message {
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(mac);
        Message {
            op: BOOT_REQUEST,
            xid,
            secs: 0,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr,
            options: vec![(code::MESSAGE_TYPE, vec![kind as u8])],
        }
    }

    /// Sets option `code` (replacing an earlier value).
    pub fn set(&mut self, code: u8, data: Vec<u8>) {
        self.options.retain(|(c, _)| *c != code);
        self.options.push((code, data));
    }

    pub fn get(&self, code: u8) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, d)| d.as_slice())
    }

    pub fn msg_type(&self) -> Option<MessageType> {
        MessageType::from_u8(*self.get(code::MESSAGE_TYPE)?.first()?)
    }

    pub fn ip(&self, code: u8) -> Option<Ipv4Addr> {
        let d: [u8; 4] = self.get(code)?.get(..4)?.try_into().ok()?;
        Some(Ipv4Addr::from(d))
    }

    pub fn ips(&self, code: u8) -> Vec<Ipv4Addr> {
        self.get(code).map_or_else(Vec::new, |d| {
            d.chunks_exact(4)
                .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                .collect()
        })
    }

    pub fn u32(&self, code: u8) -> Option<u32> {
        Some(u32::from_be_bytes(
            self.get(code)?.get(..4)?.try_into().ok()?,
        ))
    }

    pub fn u16(&self, code: u8) -> Option<u16> {
        Some(u16::from_be_bytes(
            self.get(code)?.get(..2)?.try_into().ok()?,
        ))
    }

    pub fn string(&self, code: u8) -> Option<String> {
        let d = self.get(code)?;
        let d = d.split(|b| *b == 0).next().unwrap_or(d);
        std::str::from_utf8(d).ok().map(str::to_string)
    }

    /// RFC 3397 search domains.
    pub fn search(&self) -> Vec<String> {
        self.get(code::DOMAIN_SEARCH)
            .map_or_else(Vec::new, decode_names)
    }

    /// RFC 3442 classless static routes: destination, gateway.
    pub fn classless_routes(&self) -> Vec<(Ipv4Net, Ipv4Addr)> {
        let Some(mut d) = self.get(code::CLASSLESS_ROUTES) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while let Some((&width, rest)) = d.split_first() {
            if width > 32 {
                break;
            }
            let n = usize::from(width).div_ceil(8);
            let (Some(dst), Some(gw)) = (rest.get(..n), rest.get(n..n + 4)) else {
                break;
            };
            let mut a = [0u8; 4];
            a[..n].copy_from_slice(dst);
            if let Ok(net) = Ipv4Net::new(Ipv4Addr::from(a), width) {
                out.push((net, Ipv4Addr::new(gw[0], gw[1], gw[2], gw[3])));
            }
            d = &rest[n + 4..];
        }
        out
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MIN_LEN);
        out.extend_from_slice(&[self.op, 1, 6, 0]); // op, htype Ethernet, hlen, hops
        out.extend_from_slice(&self.xid.to_be_bytes());
        out.extend_from_slice(&self.secs.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            out.extend_from_slice(&a.octets());
        }
        out.extend_from_slice(&self.chaddr);
        out.resize(HEADER - 4, 0); // sname (64) and file (128)
        out.extend_from_slice(&MAGIC);
        for (c, data) in &self.options {
            // RFC 3396: a value over 255 bytes goes in several options of the same code.
            for chunk in data.chunks(255).chain(data.is_empty().then_some(&[][..])) {
                out.push(*c);
                out.push(u8::try_from(chunk.len()).unwrap_or(255));
                out.extend_from_slice(chunk);
            }
        }
        out.push(code::END);
        if out.len() < MIN_LEN {
            out.resize(MIN_LEN, 0);
        }
        out
    }

    pub fn decode(b: &[u8]) -> Option<Message> {
        if b.len() < HEADER || b[236..240] != MAGIC {
            return None;
        }
        let ip = |i: usize| Ipv4Addr::new(b[i], b[i + 1], b[i + 2], b[i + 3]);
        let mut chaddr = [0u8; 16];
        chaddr.copy_from_slice(&b[28..44]);
        let mut m = Message {
            op: b[0],
            xid: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            secs: u16::from_be_bytes([b[8], b[9]]),
            flags: u16::from_be_bytes([b[10], b[11]]),
            ciaddr: ip(12),
            yiaddr: ip(16),
            siaddr: ip(20),
            giaddr: ip(24),
            chaddr,
            options: Vec::new(),
        };
        let mut rest = &b[HEADER..];
        while let Some((&c, tail)) = rest.split_first() {
            match c {
                code::PAD => rest = tail,
                code::END => break,
                _ => {
                    let (&len, tail) = tail.split_first()?;
                    let data = tail.get(..usize::from(len))?;
                    match m.options.iter_mut().find(|(k, _)| *k == c) {
                        Some((_, d)) => d.extend_from_slice(data),
                        None => m.options.push((c, data.to_vec())),
                    }
                    rest = &tail[usize::from(len)..];
                }
            }
        }
        Some(m)
    }
}

/// Decodes a list of DNS names (RFC 1035 labels, with compression pointers into the list).
fn decode_names(d: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < d.len() {
        let mut labels = Vec::new();
        let mut pos = i;
        let mut next = None;
        let mut hops = 0;
        loop {
            let Some(&len) = d.get(pos) else {
                return out;
            };
            if len == 0 {
                pos += 1;
                break;
            }
            if len & 0xc0 == 0xc0 {
                let Some(&lo) = d.get(pos + 1) else {
                    return out;
                };
                next.get_or_insert(pos + 2);
                pos = usize::from(len & 0x3f) << 8 | usize::from(lo);
                hops += 1;
                if hops > 16 {
                    return out;
                }
                continue;
            }
            let Some(label) = d.get(pos + 1..pos + 1 + usize::from(len)) else {
                return out;
            };
            labels.push(String::from_utf8_lossy(label).into_owned());
            pos += 1 + usize::from(len);
        }
        i = next.unwrap_or(pos);
        if !labels.is_empty() {
            out.push(labels.join("."));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_header_and_options() {
        let mut m = Message::request(MessageType::Discover, 0xdead_beef, &[2, 0, 0, 0, 0, 1]);
        m.secs = 7;
        m.ciaddr = Ipv4Addr::new(10, 0, 0, 2);
        m.set(code::HOSTNAME, b"node1".to_vec());
        m.set(code::PARAMS, vec![1, 3, 6]);
        let b = m.encode();
        assert_eq!(b.len(), MIN_LEN);
        assert_eq!(&b[236..240], &MAGIC);
        let back = Message::decode(&b).expect("decode");
        assert_eq!(back, m);
        assert_eq!(back.msg_type(), Some(MessageType::Discover));
        assert_eq!(back.string(code::HOSTNAME).as_deref(), Some("node1"));
    }

    #[test]
    fn long_options_are_split_and_joined() {
        let mut m = Message::request(MessageType::Offer, 1, &[0; 6]);
        m.set(code::DNS, (0..300u16).map(|i| (i % 256) as u8).collect());
        let back = Message::decode(&m.encode()).expect("decode");
        assert_eq!(back.get(code::DNS).map(<[u8]>::len), Some(300));
    }

    #[test]
    fn typed_option_readers() {
        let mut m = Message::request(MessageType::Ack, 1, &[0; 6]);
        m.set(code::ROUTER, vec![10, 0, 2, 2, 10, 0, 2, 1]);
        m.set(code::LEASE_TIME, 86400u32.to_be_bytes().to_vec());
        m.set(code::MTU, 1400u16.to_be_bytes().to_vec());
        assert_eq!(
            m.ips(code::ROUTER),
            [Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 1)]
        );
        assert_eq!(m.ip(code::ROUTER), Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(m.u32(code::LEASE_TIME), Some(86400));
        assert_eq!(m.u16(code::MTU), Some(1400));
        assert_eq!(m.u32(code::RENEWAL), None);
    }

    #[test]
    fn search_domains_with_compression() {
        // "eng.example.com", "example.com" (a pointer to offset 4), per RFC 3397's example shape.
        let d = b"\x03eng\x07example\x03com\x00\xc0\x04".to_vec();
        let mut m = Message::request(MessageType::Ack, 1, &[0; 6]);
        m.set(code::DOMAIN_SEARCH, d);
        assert_eq!(m.search(), ["eng.example.com", "example.com"]);
        m.set(code::DOMAIN_SEARCH, b"\xc0\x00".to_vec());
        assert!(m.search().is_empty(), "a pointer loop ends");
    }

    #[test]
    fn classless_routes() {
        let mut m = Message::request(MessageType::Ack, 1, &[0; 6]);
        // 10.9.0.0/16 via 10.0.2.9; 0.0.0.0/0 via 10.0.2.1
        m.set(
            code::CLASSLESS_ROUTES,
            vec![16, 10, 9, 10, 0, 2, 9, 0, 10, 0, 2, 1],
        );
        let r: Vec<String> = m
            .classless_routes()
            .iter()
            .map(|(n, g)| format!("{n} {g}"))
            .collect();
        assert_eq!(r, ["10.9.0.0/16 10.0.2.9", "0.0.0.0/0 10.0.2.1"]);
    }

    #[test]
    fn truncated_or_foreign_bytes_are_rejected() {
        assert_eq!(Message::decode(&[0u8; 100]), None);
        let mut b = Message::request(MessageType::Offer, 1, &[0; 6]).encode();
        b[240] = code::DNS;
        b[241] = 200; // claims more bytes than there are
        b.truncate(260);
        assert_eq!(Message::decode(&b), None);
    }
}
