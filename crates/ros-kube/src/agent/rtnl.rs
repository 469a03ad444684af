//! The few rtnetlink requests the pods' network makes: a bridge, a veth pair whose far end is
//! made inside a pod's namespace, a link's controller, name and up flag, an IPv4 address, a
//! default route. Written here rather than with `rtnetlink` (which ros-net uses in the init):
//! its message types cost this program ~400 KiB, which the cluster binary's size goal (8 MiB)
//! does not have room for. Blocking calls on a socket of the calling thread's network
//! namespace; each request is acknowledged or its errno returned.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_REPLACE: u16 = 0x100;

const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_GATEWAY: u16 = 5;
const RTA_OIF: u16 = 4;

/// A netlink route socket of the calling thread's network namespace.
#[derive(Debug)]
pub struct Rtnl {
    fd: OwnedFd,
    seq: u32,
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Appends an attribute (header, payload, padding to 4 bytes).
fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// Appends a nested attribute whose payload `inner` writes.
fn nested(buf: &mut Vec<u8>, kind: u16, inner: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    inner(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

fn name(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// struct ifinfomsg: family, pad, type, index, flags, change.
fn ifinfomsg(index: i32, flags: u32, change: u32) -> Vec<u8> {
    let mut v = vec![libc::AF_UNSPEC as u8, 0];
    v.extend_from_slice(&0u16.to_ne_bytes());
    v.extend_from_slice(&index.to_ne_bytes());
    v.extend_from_slice(&flags.to_ne_bytes());
    v.extend_from_slice(&change.to_ne_bytes());
    v
}

/// A link's index in the calling thread's namespace, by name.
pub fn index_of(ifname: &str) -> Option<u32> {
    let c = std::ffi::CString::new(ifname).ok()?;
    // SAFETY: a NUL-terminated name; the call only reads it.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

impl Rtnl {
    pub fn open() -> Result<Rtnl, String> {
        // SAFETY: a plain socket call; the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(os_err("a netlink socket"));
        }
        // SAFETY: fd was just made and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Rtnl { fd, seq: 0 })
    }

    /// Sends one request (header made here around `body`) and waits for its acknowledgement.
    fn request(&mut self, ty: u16, flags: u16, body: &[u8], what: &str) -> Result<(), String> {
        self.seq += 1;
        let mut msg = Vec::with_capacity(16 + body.len());
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: the buffer is valid for its length; the kernel is the destination (a zeroed
        // sockaddr_nl).
        let sent = unsafe {
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const sa).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(os_err(what));
        }
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: the buffer is valid for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(os_err(what));
            }
            let mut off = 0usize;
            let n = n as usize;
            while off + 16 <= n {
                let word = |at: usize| {
                    u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
                };
                let len = word(off) as usize;
                let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let seq = word(off + 8);
                if len < 16 || off + len > n {
                    return Err(format!("{what}: a malformed netlink answer"));
                }
                if ty == NLMSG_ERROR && seq == self.seq && len >= 20 {
                    let code = i32::from_ne_bytes([
                        buf[off + 16],
                        buf[off + 17],
                        buf[off + 18],
                        buf[off + 19],
                    ]);
                    return if code == 0 {
                        Ok(())
                    } else {
                        Err(format!(
                            "{what}: {}",
                            std::io::Error::from_raw_os_error(-code)
                        ))
                    };
                }
                off += len.next_multiple_of(4);
            }
        }
    }

    /// A bridge named `br` (none made if one is there), up; its index.
    pub fn ensure_bridge(&mut self, br: &str) -> Result<u32, String> {
        if index_of(br).is_none() {
            let mut b = ifinfomsg(0, 0, 0);
            attr(&mut b, IFLA_IFNAME, &name(br));
            nested(&mut b, IFLA_LINKINFO, |b| {
                attr(b, IFLA_INFO_KIND, b"bridge");
            });
            match self.request(
                RTM_NEWLINK,
                NLM_F_CREATE | NLM_F_EXCL,
                &b,
                &format!("making bridge {br}"),
            ) {
                Err(e) if e.contains("File exists") => {}
                r => r?,
            }
        }
        let i = index_of(br).ok_or_else(|| format!("bridge {br} made but not found"))?;
        self.set(i, None, None, true)?;
        Ok(i)
    }

    /// A veth pair: `host` here, and its peer made as `peer` in the namespace open at `netns`.
    pub fn add_veth(
        &mut self,
        host: &str,
        peer: &str,
        netns: BorrowedFd<'_>,
    ) -> Result<u32, String> {
        let mut b = ifinfomsg(0, 0, 0);
        attr(&mut b, IFLA_IFNAME, &name(host));
        nested(&mut b, IFLA_LINKINFO, |b| {
            attr(b, IFLA_INFO_KIND, b"veth");
            nested(b, IFLA_INFO_DATA, |b| {
                // The peer's ifinfomsg and attributes make VETH_INFO_PEER's payload.
                nested(b, VETH_INFO_PEER, |b| {
                    b.extend_from_slice(&ifinfomsg(0, 0, 0));
                    attr(b, IFLA_IFNAME, &name(peer));
                    attr(b, IFLA_NET_NS_FD, &netns.as_raw_fd().to_ne_bytes());
                });
            });
        });
        self.request(
            RTM_NEWLINK,
            NLM_F_CREATE | NLM_F_EXCL,
            &b,
            &format!("making veth pair {host}/{peer}"),
        )?;
        index_of(host).ok_or_else(|| format!("veth {host} made but not found"))
    }

    /// Removes link `index` (a veth goes with its peer).
    pub fn del_link(&mut self, index: u32) -> Result<(), String> {
        let b = ifinfomsg(index as i32, 0, 0);
        self.request(RTM_DELLINK, 0, &b, &format!("removing link {index}"))
    }

    /// Changes link `index`: its controller (a bridge), its name, and up.
    pub fn set(
        &mut self,
        index: u32,
        controller: Option<u32>,
        rename: Option<&str>,
        up: bool,
    ) -> Result<(), String> {
        let flag = if up { libc::IFF_UP as u32 } else { 0 };
        let mut b = ifinfomsg(index as i32, flag, flag);
        if let Some(c) = controller {
            attr(&mut b, IFLA_MASTER, &c.to_ne_bytes());
        }
        if let Some(n) = rename {
            attr(&mut b, IFLA_IFNAME, &name(n));
        }
        self.request(RTM_NEWLINK, 0, &b, &format!("changing link {index}"))
    }

    /// Adds `addr/prefix` to link `index` (replacing one that is there).
    pub fn add_address(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> Result<(), String> {
        // struct ifaddrmsg: family, prefixlen, flags, scope, index.
        let mut b = vec![libc::AF_INET as u8, prefix, 0, 0];
        b.extend_from_slice(&index.to_ne_bytes());
        attr(&mut b, IFA_LOCAL, &addr.octets());
        attr(&mut b, IFA_ADDRESS, &addr.octets());
        self.request(
            RTM_NEWADDR,
            NLM_F_CREATE | NLM_F_REPLACE,
            &b,
            &format!("adding {addr}/{prefix} to link {index}"),
        )
    }

    /// The default route through `gw` on link `index`.
    pub fn default_route(&mut self, gw: Ipv4Addr, index: u32) -> Result<(), String> {
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        let mut b = vec![
            libc::AF_INET as u8,
            0,
            0,
            0,
            libc::RT_TABLE_MAIN,
            libc::RTPROT_BOOT,
            libc::RT_SCOPE_UNIVERSE,
            libc::RTN_UNICAST,
        ];
        b.extend_from_slice(&0u32.to_ne_bytes());
        attr(&mut b, RTA_GATEWAY, &gw.octets());
        attr(&mut b, RTA_OIF, &index.to_ne_bytes());
        self.request(
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_REPLACE,
            &b,
            &format!("the default route via {gw}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested_lengths_cover_their_payload() {
        let mut b = vec![];
        attr(&mut b, IFLA_IFNAME, &name("eth0"));
        assert_eq!(b.len(), 12, "4 + 5 bytes, padded to 12");
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), 9);
        let mut n = vec![];
        nested(&mut n, IFLA_LINKINFO, |n| attr(n, IFLA_INFO_KIND, b"veth"));
        assert_eq!(u16::from_ne_bytes([n[0], n[1]]) as usize, n.len());
        assert_eq!(
            u16::from_ne_bytes([n[2], n[3]]),
            IFLA_LINKINFO | NLA_F_NESTED
        );
    }
}
