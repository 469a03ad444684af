//! OCI mount options (`nosuid`, `ro`, `rbind`, `mode=755` ...) turned into mount(2) flags and
//! data, as runc reads them. Pure.

use nix::mount::MsFlags;

/// A mount, ready for mount(2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// Absolute path inside the container.
    pub destination: String,
    pub fstype: String,
    pub source: String,
    pub flags: MsFlags,
    /// Propagation to set after mounting (`rprivate`, `shared` ...), if any.
    pub propagation: Option<MsFlags>,
    /// Filesystem-specific options, comma-joined.
    pub data: String,
}

impl MountSpec {
    pub fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }
}

/// Parses OCI mount options. Unknown options are passed to the filesystem as data, as runc does.
/// A propagation name (`rslave`, `private`, ...) as mount flags.
pub fn propagation_of(name: &str) -> Option<MsFlags> {
    parse_options("", &[name.to_string()]).1
}

pub fn parse_options(fstype: &str, options: &[String]) -> (MsFlags, Option<MsFlags>, String) {
    let mut flags = MsFlags::empty();
    let mut propagation = None;
    let mut data = Vec::new();
    for o in options {
        let (set, clear, prop) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty(), None),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY, None),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty(), None),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID, None),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty(), None),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV, None),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty(), None),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC, None),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty(), None),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS, None),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty(), None),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty(), None),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty(), None),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK, None),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME, None),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty(), None),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME, None),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty(), None),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty(), None),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME, None),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty(), None),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME, None),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty(), None),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty(), None),
            "private" => (
                MsFlags::empty(),
                MsFlags::empty(),
                Some(MsFlags::MS_PRIVATE),
            ),
            "rprivate" => (
                MsFlags::empty(),
                MsFlags::empty(),
                Some(MsFlags::MS_PRIVATE | MsFlags::MS_REC),
            ),
            "shared" => (MsFlags::empty(), MsFlags::empty(), Some(MsFlags::MS_SHARED)),
            "rshared" => (
                MsFlags::empty(),
                MsFlags::empty(),
                Some(MsFlags::MS_SHARED | MsFlags::MS_REC),
            ),
            "slave" => (MsFlags::empty(), MsFlags::empty(), Some(MsFlags::MS_SLAVE)),
            "rslave" => (
                MsFlags::empty(),
                MsFlags::empty(),
                Some(MsFlags::MS_SLAVE | MsFlags::MS_REC),
            ),
            "unbindable" => (
                MsFlags::empty(),
                MsFlags::empty(),
                Some(MsFlags::MS_UNBINDABLE),
            ),
            "runbindable" => (
                MsFlags::empty(),
                MsFlags::empty(),
                Some(MsFlags::MS_UNBINDABLE | MsFlags::MS_REC),
            ),
            _ => {
                data.push(o.clone());
                continue;
            }
        };
        flags |= set;
        flags &= !clear;
        if prop.is_some() {
            propagation = prop;
        }
    }
    if fstype == "bind" {
        flags |= MsFlags::MS_BIND;
    }
    (flags, propagation, data.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(o: &[&str]) -> Vec<String> {
        o.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_data_and_propagation() {
        let (f, p, d) = parse_options(
            "tmpfs",
            &opts(&["nosuid", "strictatime", "mode=755", "size=65536k"]),
        );
        assert_eq!(f, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(p, None);
        assert_eq!(d, "mode=755,size=65536k");
        let (f, p, _) = parse_options("none", &opts(&["rbind", "ro", "rprivate"]));
        assert_eq!(f, MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY);
        assert_eq!(p, Some(MsFlags::MS_PRIVATE | MsFlags::MS_REC));
    }

    #[test]
    fn later_options_win_and_bind_type_binds() {
        let (f, _, _) = parse_options("bind", &opts(&["ro", "rw"]));
        assert_eq!(f, MsFlags::MS_BIND);
    }
}
