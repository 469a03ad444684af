//! A writer of cpio "newc" archives, the format the kernel unpacks an initramfs from.
//! Hand-written (about 80 lines) because the output must be byte-for-byte reproducible: entries
//! sorted by path, fixed times, owners and inode numbers; a crate would need as much code to pin
//! those down.

use std::collections::BTreeMap;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub mode: u32,
    pub kind: Kind,
}

/// An archive being assembled: paths (without a leading `/`) to entries. Parent folders are added
/// as needed when written.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Archive {
    pub fn dir(&mut self, path: &str, perm: u32) {
        self.insert(path, perm, Kind::Dir);
    }
    pub fn file(&mut self, path: &str, perm: u32, data: Vec<u8>) {
        self.insert(path, perm, Kind::File(data));
    }
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.insert(path, 0o777, Kind::Symlink(target.to_string()));
    }
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.insert(path, perm, Kind::CharDev { major, minor });
    }

    fn insert(&mut self, path: &str, mode: u32, kind: Kind) {
        let path = path.trim_matches('/').to_string();
        let mut parent = path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            self.entries.entry(p.to_string()).or_insert(Entry {
                mode: 0o755,
                kind: Kind::Dir,
            });
            parent = p;
        }
        self.entries.insert(path, Entry { mode, kind });
    }

    /// Adds the tree at `dir` under `prefix`: folders, files (with their permission bits) and
    /// symlinks, owned by root.
    pub fn add_tree(&mut self, prefix: &str, dir: &std::path::Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = format!("{}/{name}", prefix.trim_end_matches('/'));
            let meta = std::fs::symlink_metadata(entry.path())?;
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(entry.path())?;
                self.symlink(&path, &target.to_string_lossy());
            } else if meta.is_dir() {
                self.dir(&path, mode);
                self.add_tree(&path, &entry.path())?;
            } else if meta.is_file() {
                self.file(&path, mode, std::fs::read(entry.path())?);
            }
        }
        Ok(())
    }

    /// Total bytes of file contents.
    pub fn payload_bytes(&self) -> u64 {
        self.entries
            .values()
            .map(|e| match &e.kind {
                Kind::File(d) => d.len() as u64,
                _ => 0,
            })
            .sum()
    }

    /// The archive in newc format, entries in path order (a folder sorts before what it holds).
    pub fn to_newc(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (path, e)) in (1u32..).zip(&self.entries) {
            let (type_bits, data, rdev): (u32, &[u8], (u32, u32)) = match &e.kind {
                Kind::Dir => (S_IFDIR, &[], (0, 0)),
                Kind::File(d) => (S_IFREG, d, (0, 0)),
                Kind::Symlink(t) => (S_IFLNK, t.as_bytes(), (0, 0)),
                Kind::CharDev { major, minor } => (S_IFCHR, &[], (*major, *minor)),
            };
            let nlink = if matches!(e.kind, Kind::Dir) { 2 } else { 1 };
            write_entry(&mut out, ino, type_bits | e.mode, nlink, rdev, path, data);
        }
        write_entry(&mut out, 0, 0, 1, (0, 0), "TRAILER!!!", &[]);
        out
    }
}

fn write_entry(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) {
    let namesize = name.len() + 1;
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime: fixed, for reproducible output
        u32::try_from(data.len()).unwrap_or(u32::MAX),
        0, // dev major
        0, // dev minor
        rdev.0,
        rdev.1,
        u32::try_from(namesize).unwrap_or(u32::MAX),
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout_is_what_cpio_reads() {
        let mut a = Archive::default();
        a.file("init", 0o755, b"hello".to_vec());
        let bytes = a.to_newc();
        // header (110) + "init\0" (5, padded to 115 -> 116) + "hello" (5, padded to 8)
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(&bytes[6..14], b"00000001");
        assert_eq!(&bytes[14..22], b"000081ED");
        assert_eq!(&bytes[54..62], b"00000005");
        assert_eq!(&bytes[110..115], b"init\0");
        assert_eq!(&bytes[116..121], b"hello");
        assert!(bytes.len().is_multiple_of(4));
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn parents_are_added_and_order_is_by_path() {
        let mut a = Archive::default();
        a.char_dev("dev/console", 0o600, 5, 1);
        a.file("lib/modules/x/a.ko", 0o644, vec![1]);
        a.dir("proc", 0o555);
        let names: Vec<_> = a.entries.keys().cloned().collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "lib",
                "lib/modules",
                "lib/modules/x",
                "lib/modules/x/a.ko",
                "proc"
            ]
        );
    }

    #[test]
    fn the_same_inputs_give_the_same_bytes_in_any_insert_order() {
        let mut a = Archive::default();
        a.file("b", 0o644, vec![2]);
        a.file("a/x", 0o644, vec![1]);
        let mut b = Archive::default();
        b.file("a/x", 0o644, vec![1]);
        b.file("b", 0o644, vec![2]);
        assert_eq!(a.to_newc(), b.to_newc());
    }

    /// Checks the archive with the system's own cpio, when it is installed (it is on CI).
    #[test]
    fn gnu_cpio_lists_it() {
        let Ok(_) = std::process::Command::new("cpio").arg("--version").output() else {
            return;
        };
        let mut a = Archive::default();
        a.char_dev("dev/console", 0o600, 5, 1);
        a.file("init", 0o755, b"#!x".to_vec());
        a.symlink("sbin/modprobe", "/init");
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("a.cpio");
        std::fs::write(&path, a.to_newc()).expect("write");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cpio -itv < {}", path.display()))
            .output()
            .expect("cpio");
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            listing.contains("5,   1") || listing.contains("5, 1"),
            "{listing}"
        );
        assert!(listing.contains("sbin/modprobe -> /init"), "{listing}");
    }
}
