//! The DHCP client's sockets. Before an interface has an address the client speaks through an
//! AF_PACKET socket (it builds the IP and UDP headers itself), filtered in the kernel to UDP port
//! 68 so the init never sees other traffic; once bound it sends through a plain UDP socket on
//! port 68 tied to the interface. The packet socket stays open: closing one waits for an RCU
//! grace period (`packet_release` calls `synchronize_net`), about 10 ms under emulation, and with
//! its filter an idle one costs nothing.

use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use socket2::{Domain, SockAddr, SockAddrStorage, SockFilter, Socket, Type};
use tokio::io::unix::AsyncFd;

const ETH_P_IP: u16 = 0x0800;

/// A datagram packet socket on one interface, for IPv4.
#[derive(Debug)]
pub struct PacketSocket {
    sock: AsyncFd<Socket>,
    broadcast: SockAddr,
}

/// The link-layer address of `ifindex` for IPv4: the interface itself, or its broadcast.
fn link_addr(ifindex: i32, broadcast: bool) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: the storage is large enough and suitably aligned for any socket address, and
    // zeroed, which is a valid sockaddr_ll.
    let sll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    sll.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or(17);
    sll.sll_protocol = ETH_P_IP.to_be();
    sll.sll_ifindex = ifindex;
    if broadcast {
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    }
    let len = u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or(20);
    // SAFETY: the storage holds an initialised sockaddr_ll of that length.
    unsafe { SockAddr::new(storage, len) }
}

/// A classic BPF program that keeps IPv4 UDP datagrams to port 68 that are not fragments (the
/// socket delivers from the IP header on).
fn udp68_filter() -> [SockFilter; 9] {
    let op = SockFilter::new;
    [
        op(0x30, 0, 0, 9),           // ldb [9]           protocol
        op(0x15, 0, 6, 17),          // jeq #17 (UDP)     else drop
        op(0x28, 0, 0, 6),           // ldh [6]           flags + fragment offset
        op(0x45, 4, 0, 0x1fff),      // jset #0x1fff      fragment: drop
        op(0xb1, 0, 0, 0),           // ldxb 4*([0]&0xf)  IP header length
        op(0x48, 0, 0, 2),           // ldh [x+2]         UDP destination port
        op(0x15, 0, 1, 68),          // jeq #68           else drop
        op(0x06, 0, 0, 0x0004_0000), // ret: keep
        op(0x06, 0, 0, 0),           // ret: drop
    ]
}

impl PacketSocket {
    pub fn open(ifindex: u32) -> io::Result<Self> {
        let ifindex =
            i32::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // Protocol 0 here and ETH_P_IP at bind: a socket made with a protocol is hooked on every
        // interface at once, and binding it to one unhooks it first, which waits for an RCU grace
        // period (measured 10-12 ms under emulation).
        let sock = Socket::new(Domain::PACKET, Type::DGRAM.nonblocking().cloexec(), None)?;
        sock.attach_filter(&udp68_filter())?;
        sock.bind(&link_addr(ifindex, false))?;
        // SAFETY: the Socket owns its descriptor, open and unchanged for the AsyncFd's life.
        let sock = unsafe { AsyncFd::register(sock) }?;
        Ok(PacketSocket {
            sock,
            broadcast: link_addr(ifindex, true),
        })
    }

    /// Sends an IPv4 packet to the link's broadcast address.
    pub async fn send_broadcast(&self, packet: &[u8]) -> io::Result<()> {
        loop {
            let mut guard = self.sock.writable().await?;
            if let Ok(r) = guard.try_io(|s| s.get_ref().send_to(packet, &self.broadcast)) {
                return r.map(|_| ());
            }
        }
    }

    /// Receives one IPv4 packet.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.sock.readable().await?;
            if let Ok(r) = guard.try_io(|s| s.get_ref().read(buf)) {
                return r;
            }
        }
    }
}

/// A UDP socket on port 68, bound to the interface, allowed to broadcast.
pub fn udp_socket(ifname: &str) -> io::Result<tokio::net::UdpSocket> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn, sockopt};
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::setsockopt(&fd, sockopt::Broadcast, &true)?;
    socket::setsockopt(
        &fd,
        sockopt::BindToDevice,
        &std::ffi::OsString::from(ifname),
    )?;
    let [a, b, c, d] = Ipv4Addr::UNSPECIFIED.octets();
    socket::bind(
        fd.as_raw_fd(),
        &SockaddrIn::new(a, b, c, d, super::wire::CLIENT_PORT),
    )?;
    tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd))
}
