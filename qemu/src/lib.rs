//! `ros-qemu`: boots ros images in QEMU (always TCG here: KVM is unreliable on the machines this
//! project runs on), with user networking, the user-data over fw_cfg, and a control port for a
//! clean poweroff. The CLI is in `main.rs`; the tests use [`Guest`].

pub mod cmdline;
pub mod guest;

pub use cmdline::{BootConfig, FIRST_MAC, Nic, NicNet};
pub use guest::Guest;

/// What the init prints before its ready JSON.
pub const READY_PREFIX: &str = "ros: ready ";

/// Parses `HOST:GUEST`.
pub fn parse_forward(s: &str) -> Result<(u16, u16), String> {
    let (h, g) = s
        .split_once(':')
        .ok_or_else(|| format!("expected HOST:GUEST ports, found `{s}`"))?;
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("`{p}` is not a port number"))
    };
    Ok((port(h)?, port(g)?))
}

/// Makes `path` a blank (sparse) raw disk of `bytes` unless it exists already.
pub fn blank_disk(path: &std::path::Path, bytes: u64) -> std::io::Result<()> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => f.set_len(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn forwards() {
        assert_eq!(super::parse_forward("2222:22"), Ok((2222, 22)));
        assert!(super::parse_forward("2222").is_err());
        assert!(super::parse_forward("x:22").is_err());
    }
}
