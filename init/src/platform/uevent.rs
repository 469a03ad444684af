//! Kernel uevents (NETLINK_KOBJECT_UEVENT): the devices that appear while the init runs, with
//! their `MODALIAS`. Module loading listens here instead of rescanning sysfs after each round:
//! the events of devices revealed by a module are queued before `finit_module` returns.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A socket subscribed to the kernel's uevents.
#[derive(Debug)]
pub struct Uevents {
    fd: OwnedFd,
}

impl Uevents {
    pub fn open() -> std::io::Result<Uevents> {
        // SAFETY: socket takes no pointers; the new fd is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_KOBJECT_UEVENT,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: raw is a new fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // A module can add many devices at once: make room so none is dropped (root may force it).
        let size: libc::c_int = 1 << 20;
        // SAFETY: the option value is a c_int that lives for the call.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const size).cast(),
                u32::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4),
            );
        }
        // SAFETY: sockaddr_nl is plain old data; all zeroes is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = u16::try_from(libc::AF_NETLINK).unwrap_or(16);
        addr.nl_groups = 1; // the kernel's group
        // SAFETY: addr is a valid sockaddr_nl of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                u32::try_from(std::mem::size_of::<libc::sockaddr_nl>()).unwrap_or(12),
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Uevents { fd })
    }

    /// The `MODALIAS` of every `add` event queued now (does not wait).
    pub fn drain_modaliases(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n) = usize::try_from(n) else {
                return out;
            };
            if n == 0 {
                return out;
            }
            out.extend(add_modalias(&buf[..n]));
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
