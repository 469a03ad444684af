//! DHCP messages on the wire: what each kind carries, and the IPv4/UDP framing needed on a
//! packet socket (before the interface has an address, the kernel's UDP stack cannot be used).

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

use super::client::ClientConfig;

pub const CLIENT_PORT: u16 = 68;
pub const SERVER_PORT: u16 = 67;

/// Options asked of the server.
const WANTED: &[OptionCode] = &[
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::DomainName,
    OptionCode::InterfaceMtu,
    OptionCode::AddressLeaseTime,
    OptionCode::Renewal,
    OptionCode::Rebinding,
    OptionCode::DomainSearch,
    OptionCode::ClasslessStaticRoute,
    OptionCode::NtpServers,
];

fn base(cfg: &ClientConfig, xid: u32, secs: u16, kind: MessageType) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_htype(HType::Eth)
        .set_xid(xid)
        .set_secs(secs)
        .set_flags(Flags::default())
        .set_chaddr(&cfg.mac);
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    let mut client_id = vec![1u8];
    client_id.extend_from_slice(&cfg.mac);
    opts.insert(DhcpOption::ClientIdentifier(client_id));
    if kind != MessageType::Release {
        opts.insert(DhcpOption::ParameterRequestList(WANTED.to_vec()));
        opts.insert(DhcpOption::MaxMessageSize(1500));
        if let Some(h) = &cfg.hostname {
            opts.insert(DhcpOption::Hostname(h.clone()));
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
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(addr));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    m
}

/// REQUEST while RENEWING or REBINDING: the address goes in `ciaddr`, no server is named.
pub fn request_renewing(cfg: &ClientConfig, xid: u32, secs: u16, addr: Ipv4Addr) -> Message {
    let mut m = base(cfg, xid, secs, MessageType::Request);
    m.set_ciaddr(addr);
    m
}

pub fn release(cfg: &ClientConfig, xid: u32, addr: Ipv4Addr, server: Ipv4Addr) -> Message {
    let mut m = base(cfg, xid, 0, MessageType::Release);
    m.set_ciaddr(addr);
    m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    m
}

pub fn encode(m: &Message) -> Vec<u8> {
    let mut out = m.to_vec().unwrap_or_default();
    // Some servers drop BOOTP messages shorter than 300 bytes.
    if out.len() < dhcproto::v4::MIN_PACKET_SIZE {
        out.resize(dhcproto::v4::MIN_PACKET_SIZE, 0);
    }
    out
}

pub fn decode(payload: &[u8]) -> Option<Message> {
    Message::decode(&mut Decoder::new(payload)).ok()
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
        let m = discover(&cfg(), 0xabcd, 3);
        let bytes = encode(&m);
        assert!(bytes.len() >= 300);
        let back = decode(&bytes).expect("decode");
        assert_eq!(back.xid(), 0xabcd);
        assert_eq!(back.secs(), 3);
        assert_eq!(back.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(&back.chaddr()[..6], &cfg().mac);
        assert!(
            matches!(back.opts().get(OptionCode::Hostname), Some(DhcpOption::Hostname(h)) if h == "node1")
        );
        assert!(back.opts().get(OptionCode::ParameterRequestList).is_some());
    }

    #[test]
    fn selecting_request_names_server_and_address_and_renewing_uses_ciaddr() {
        let a = Ipv4Addr::new(10, 0, 2, 15);
        let s = Ipv4Addr::new(10, 0, 2, 2);
        let m = request_selecting(&cfg(), 1, 0, a, s);
        assert!(
            matches!(m.opts().get(OptionCode::RequestedIpAddress), Some(DhcpOption::RequestedIpAddress(x)) if *x == a)
        );
        assert!(
            matches!(m.opts().get(OptionCode::ServerIdentifier), Some(DhcpOption::ServerIdentifier(x)) if *x == s)
        );
        assert!(m.ciaddr().is_unspecified());
        let r = request_renewing(&cfg(), 1, 0, a);
        assert_eq!(r.ciaddr(), a);
        assert!(r.opts().get(OptionCode::ServerIdentifier).is_none());
        let rel = release(&cfg(), 1, a, s);
        assert_eq!(rel.opts().msg_type(), Some(MessageType::Release));
        assert_eq!(rel.ciaddr(), a);
    }

    #[test]
    fn framing_round_trips_and_filters_ports() {
        let payload = encode(&discover(&cfg(), 9, 0));
        let f = frame(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, &payload);
        // The client sends to port 67, so its own frame is not a reply.
        assert_eq!(unframe(&f), None);
        // A server's reply: the same, ports swapped.
        let reply = PacketBuilder::ipv4([10, 0, 2, 2], [255; 4], 64).udp(SERVER_PORT, CLIENT_PORT);
        let mut buf = Vec::new();
        reply.write(&mut buf, &payload).expect("write");
        assert_eq!(unframe(&buf), Some(&payload[..]));
        assert_eq!(unframe(&[0x45, 0, 0]), None);
    }
}
