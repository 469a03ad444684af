//! The DHCP client's sockets. Before an interface has an address the client speaks through an
//! AF_PACKET socket (it builds the IP and UDP headers itself), filtered in the kernel to UDP port
//! 68 so the init never sees other traffic; once bound it sends through a plain UDP socket on
//! port 68 tied to the interface. The packet socket stays open: closing one waits for an RCU
//! grace period (`packet_release` calls `synchronize_net`), about 10 ms under emulation, and with
//! its filter an idle one costs nothing.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

const ETH_P_IP: u16 = 0x0800;

/// A datagram packet socket on one interface, for IPv4.
#[derive(Debug)]
pub struct PacketSocket {
    fd: AsyncFd<OwnedFd>,
    ifindex: i32,
}

fn sockaddr(ifindex: i32, broadcast: bool) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or(17);
    sll.sll_protocol = ETH_P_IP.to_be();
    sll.sll_ifindex = ifindex;
    if broadcast {
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    }
    sll
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A classic BPF program that keeps IPv4 UDP datagrams to port 68 that are not fragments (the
/// socket delivers from the IP header on).
fn udp68_filter() -> [libc::sock_filter; 9] {
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
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
        // SAFETY: socket takes no pointers; the fd it returns is owned below.
        let raw = check(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        })?;
        // SAFETY: raw is a new, valid fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let filter = udp68_filter();
        let prog = libc::sock_fprog {
            len: u16::try_from(filter.len()).unwrap_or(0),
            filter: filter.as_ptr().cast_mut(),
        };
        // SAFETY: prog points at `filter`, alive for the call; the kernel copies the program.
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&raw const prog).cast(),
                u32::try_from(std::mem::size_of::<libc::sock_fprog>()).unwrap_or(0),
            )
        })?;
        let sll = sockaddr(ifindex, false);
        // SAFETY: sll is a valid sockaddr_ll of the size passed.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or(0),
            )
        })?;
        // SAFETY: an OwnedFd keeps its descriptor open and unchanged until it is dropped with
        // the AsyncFd that owns it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(PacketSocket { fd, ifindex })
    }

    /// Sends an IPv4 packet to the link's broadcast address.
    pub async fn send_broadcast(&self, packet: &[u8]) -> io::Result<()> {
        let sll = sockaddr(self.ifindex, true);
        loop {
            let mut guard = self.fd.writable().await?;
            let r = guard.try_io(|fd| {
                // SAFETY: packet and sll are valid for the lengths passed.
                check(unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        (&raw const sll).cast(),
                        u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or(0),
                    ) as libc::c_int
                })
            });
            if let Ok(r) = r {
                return r.map(|_| ());
            }
        }
    }

    /// Receives one IPv4 packet.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let r = guard.try_io(|fd| {
                // SAFETY: buf is valid for writes of its length.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(usize::try_from(n).unwrap_or(0))
                }
            });
            if let Ok(r) = r {
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
