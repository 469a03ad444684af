//! Kernel uevents (NETLINK_KOBJECT_UEVENT): the devices that appear while the init runs, with
//! their `MODALIAS`. Module loading listens here instead of rescanning sysfs after each round:
//! the events of devices revealed by a module are queued before `finit_module` returns.

use std::os::fd::OwnedFd;

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, setsockopt,
    socket, sockopt,
};

/// A socket subscribed to the kernel's uevents.
#[derive(Debug)]
pub struct Uevents {
    fd: OwnedFd,
}

impl Uevents {
    pub fn open() -> std::io::Result<Uevents> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkKObjectUEvent,
        )?;
        // A module can add many devices at once: make room so none is dropped (root may force
        // it). A smaller buffer still works, so a refusal is not an error.
        let _ = setsockopt(&fd, sockopt::RcvBufForce, &(1 << 20));
        // Group 1: the kernel's events.
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &NetlinkAddr::new(0, 1),
        )?;
        Ok(Uevents { fd })
    }

    /// The `MODALIAS` of every `add` event queued now (does not wait).
    pub fn drain_modaliases(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match recv(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                &mut buf,
                MsgFlags::empty(),
            ) {
                Ok(0) | Err(_) => return out,
                Ok(n) => out.extend(add_modalias(&buf[..n])),
            }
        }
    }
}

/// The `MODALIAS` of a kernel uevent message, when it is an `add`.
pub fn add_modalias(msg: &[u8]) -> Option<String> {
    let mut fields = msg.split(|b| *b == 0);
    // The header is `ACTION@DEVPATH`.
    if !fields.next()?.starts_with(b"add@") {
        return None;
    }
    fields
        .filter_map(|f| f.strip_prefix(b"MODALIAS="))
        .find_map(|v| std::str::from_utf8(v).ok().map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modalias_of_add_events_only() {
        let add = b"add@/devices/pci0000:00/virtio0\0ACTION=add\0SUBSYSTEM=virtio\0MODALIAS=virtio:d00000001v00001AF4\0SEQNUM=9\0";
        assert_eq!(
            add_modalias(add).as_deref(),
            Some("virtio:d00000001v00001AF4")
        );
        let remove = b"remove@/devices/x\0MODALIAS=virtio:d00000001v00001AF4\0";
        assert_eq!(add_modalias(remove), None);
        assert_eq!(add_modalias(b"add@/devices/x\0ACTION=add\0"), None);
    }
}
