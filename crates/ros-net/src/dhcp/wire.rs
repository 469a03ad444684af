//! The client's messages (what each kind carries) and the IPv4/UDP framing needed on a packet
//! socket (before the interface has an address, the kernel's UDP stack cannot be used).

use std::net::Ipv4Addr;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

use super::client::ClientConfig;
use super::msg::{Message, MessageType, code};

pub const CLIENT_PORT: u16 = 68;
pub const SERVER_PORT: u16 = 67;

/// Options asked of the server.
const WANTED: &[u8] = &[
    code::SUBNET_MASK,
    code::ROUTER,
    code::DNS,
    code::DOMAIN_NAME,
    code::MTU,
    code::LEASE_TIME,
    code::RENEWAL,
    code::REBINDING,
    code::DOMAIN_SEARCH,
    code::CLASSLESS_ROUTES,
    code::NTP,
];

fn base(cfg: &ClientConfig, xid: u32, secs: u16, kind: MessageType) -> Message {
    let mut m = Message::request(kind, xid, &cfg.mac);
    m.secs = secs;
    let mut client_id = vec![1u8];
    client_id.extend_from_slice(&cfg.mac);
    m.set(code::CLIENT_ID, client_id);
    if kind != MessageType::Release {
        m.set(code::PARAMS, WANTED.to_vec());
        m.set(code::MAX_SIZE, 1500u16.to_be_bytes().to_vec());
        if let Some(h) = &cfg.hostname {
            m.set(code::HOSTNAME, h.as_bytes().to_vec());
        }
    }
    m
}

pub fn discover(cfg: &ClientConfig, xid: u32, secs: u16) -> Message {
    base(cfg, xid, secs, MessageType::Discover)
}

/// REQUEST in the SELECTING state: names the offered address and the server chosen.
pub fn request_selecting(
    cfg: &ClientConfig,
    xid: u32,
    secs: u16,
    addr: Ipv4Addr,
    server: Ipv4Addr,
) -> Message {
    let mut m = base(cfg, xid, secs, MessageType::Request);
    m.set(code::REQUESTED_IP, addr.octets().to_vec());
    m.set(code::SERVER_ID, server.octets().to_vec());
    m
}

/// REQUEST while RENEWING or REBINDING: the address goes in `ciaddr`, no server is named.
pub fn request_renewing(cfg: &ClientConfig, xid: u32, secs: u16, addr: Ipv4Addr) -> Message {
    let mut m = base(cfg, xid, secs, MessageType::Request);
    m.ciaddr = addr;
    m
}

pub fn release(cfg: &ClientConfig, xid: u32, addr: Ipv4Addr, server: Ipv4Addr) -> Message {
    let mut m = base(cfg, xid, 0, MessageType::Release);
    m.ciaddr = addr;
    m.set(code::SERVER_ID, server.octets().to_vec());
    m
}

/// An IPv4 + UDP datagram from `src`:68 to `dst`:67 around `payload`, checksums filled.
pub fn frame(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ipv4(src.octets(), dst.octets(), 64).udp(CLIENT_PORT, SERVER_PORT);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    // Writing into a Vec cannot fail but for a payload too large for IPv4, which DHCP never is.
    let _ = builder.write(&mut out, payload);
    out
}

/// The DHCP payload of an IPv4 packet, when it is UDP to the client port.
pub fn unframe(packet: &[u8]) -> Option<&[u8]> {
    let sliced = SlicedPacket::from_ip(packet).ok()?;
    if !matches!(sliced.net, Some(NetSlice::Ipv4(_))) {
        return None;
    }
    match sliced.transport {
        Some(TransportSlice::Udp(udp)) if udp.destination_port() == CLIENT_PORT => {
            Some(udp.payload())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ClientConfig {
        ClientConfig {
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            hostname: Some("node1".into()),
            seed: 7,
        }
    }

    #[test]
    fn discover_carries_what_servers_need() {
        let bytes = discover(&cfg(), 0xabcd, 3).encode();
        assert!(bytes.len() >= 300);
        let back = Message::decode(&bytes).expect("decode");
        assert_eq!((back.xid, back.secs), (0xabcd, 3));
        assert_eq!(back.msg_type(), Some(MessageType::Discover));
        assert_eq!(&back.chaddr[..6], &cfg().mac);
        assert_eq!(back.string(code::HOSTNAME).as_deref(), Some("node1"));
        assert_eq!(back.get(code::PARAMS), Some(WANTED));
        assert_eq!(back.get(code::CLIENT_ID).map(<[u8]>::len), Some(7));
    }

    #[test]
    fn selecting_request_names_server_and_address_and_renewing_uses_ciaddr() {
        let a = Ipv4Addr::new(10, 0, 2, 15);
        let s = Ipv4Addr::new(10, 0, 2, 2);
        let m = request_selecting(&cfg(), 1, 0, a, s);
        assert_eq!(m.ip(code::REQUESTED_IP), Some(a));
        assert_eq!(m.ip(code::SERVER_ID), Some(s));
        assert!(m.ciaddr.is_unspecified());
        let r = request_renewing(&cfg(), 1, 0, a);
        assert_eq!(r.ciaddr, a);
        assert_eq!(r.get(code::SERVER_ID), None);
        let rel = release(&cfg(), 1, a, s);
        assert_eq!(rel.msg_type(), Some(MessageType::Release));
        assert_eq!(rel.ciaddr, a);
        assert_eq!(rel.ip(code::SERVER_ID), Some(s));
    }

    #[test]
    fn framing_round_trips_and_filters_ports() {
        let payload = discover(&cfg(), 9, 0).encode();
        let f = frame(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, &payload);
        // The client sends to port 67, so its own frame is not a reply.
        assert_eq!(unframe(&f), None);
        let reply = PacketBuilder::ipv4([10, 0, 2, 2], [255; 4], 64).udp(SERVER_PORT, CLIENT_PORT);
        let mut buf = Vec::new();
        reply.write(&mut buf, &payload).expect("write");
        assert_eq!(unframe(&buf), Some(&payload[..]));
        assert_eq!(unframe(&[0x45, 0, 0]), None);
    }
}
