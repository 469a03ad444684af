//! A layer's tar stream into a folder that overlayfs takes as a lower layer: entries are
//! unpacked with the `tar` crate's `unpack_in` (which refuses `..` and paths through symlinks
//! that leave the folder), owners, modes, times and extended attributes kept; the OCI
//! whiteouts become overlayfs's own: `.wh.NAME` a 0/0 character device named NAME,
//! `.wh..wh..opq` the folder's `trusted.overlay.opaque` attribute.

use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// The entry's path relative to the layer root, without `.` parts; `None` when it would leave
/// the root (a `..` part).
fn relative(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Makes the folders of `rel` under `root`, refusing to go through anything but folders.
fn folders(root: &Path, rel: &Path) -> Result<PathBuf, String> {
    let mut at = root.to_path_buf();
    for c in rel.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "{}: a whiteout under something that is not a folder",
                    rel.display()
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&at).map_err(|e| format!("creating {}: {e}", at.display()))?;
            }
            Err(e) => return Err(format!("{}: {e}", at.display())),
        }
    }
    Ok(at)
}

fn cstr(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{}: NUL in path", p.display()))
}

fn whiteout(root: &Path, parent: &Path, name: &std::ffi::OsStr) -> Result<(), String> {
    let dir = folders(root, parent)?;
    if name == OPAQUE {
        let path = cstr(&dir)?;
        // SAFETY: valid NUL-terminated strings and a 1-byte value.
        let r = unsafe {
            libc::lsetxattr(
                path.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        if r != 0 {
            return Err(format!(
                "marking {} opaque: {}",
                dir.display(),
                std::io::Error::last_os_error()
            ));
        }
        return Ok(());
    }
    let hidden = &name.as_bytes()[WHITEOUT.len()..];
    if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
        return Err(format!(
            "whiteout `{}` names nothing",
            name.to_string_lossy()
        ));
    }
    let target = dir.join(std::ffi::OsStr::from_bytes(hidden));
    match std::fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&target),
        Ok(_) => std::fs::remove_file(&target),
        Err(_) => Ok(()),
    }
    .map_err(|e| format!("replacing {}: {e}", target.display()))?;
    nix::sys::stat::mknod(
        &target,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        nix::sys::stat::makedev(0, 0),
    )
    .map_err(|e| format!("whiteout {}: {e}", target.display()))
}

/// An error with its causes (the tar crate puts the system's reason in the source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(&format!(": {c}"));
        src = c.source();
    }
    s
}

/// Unpacks the tar stream `r` into `root` (an empty folder); what follows the archive's end
/// is left unread.
pub fn unpack<R: Read + ?Sized>(r: &mut R, root: &Path) -> Result<(), String> {
    let mut a = tar::Archive::new(r);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_preserve_mtime(true);
    a.set_unpack_xattrs(true);
    a.set_overwrite(true);
    for entry in a.entries().map_err(|e| format!("reading the layer: {e}"))? {
        let mut entry = entry.map_err(|e| format!("reading the layer: {e}"))?;
        let raw = entry
            .path()
            .map_err(|e| format!("an entry's path: {e}"))?
            .into_owned();
        let Some(rel) = relative(&raw) else {
            return Err(format!("entry `{}` leaves the layer", raw.display()));
        };
        if rel.as_os_str().is_empty() {
            continue;
        }
        if let Some(name) = rel.file_name()
            && name.as_bytes().starts_with(WHITEOUT.as_bytes())
        {
            let parent = rel.parent().unwrap_or(Path::new(""));
            whiteout(root, parent, name)?;
            continue;
        }
        match entry.unpack_in(root) {
            Ok(true) => {}
            Ok(false) => return Err(format!("entry `{}` leaves the layer", raw.display())),
            Err(e) => return Err(format!("unpacking `{}`: {}", raw.display(), chain(&e))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if *kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_size(data.len() as u64);
            h.set_mtime(1);
            h.set_uid(0);
            h.set_gid(0);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            // set_path refuses `..`; write the name bytes directly for the hostile cases.
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn files_and_whiteouts_land_as_overlayfs_reads_them() {
        use tar::EntryType as T;
        let t = tempfile::tempdir().unwrap();
        let data = tar_of(&[
            ("etc/", T::Directory, b"", None),
            ("etc/hostname", T::Regular, b"x\n", None),
            ("etc/.wh.passwd", T::Regular, b"", None),
            ("var/.wh..wh..opq", T::Regular, b"", None),
            ("bin/sh", T::Symlink, b"", Some("busybox")),
        ]);
        unpack(&mut &data[..], t.path()).unwrap();
        assert_eq!(
            std::fs::read(t.path().join("etc/hostname")).unwrap(),
            b"x\n"
        );
        let w = std::fs::symlink_metadata(t.path().join("etc/passwd")).unwrap();
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        assert!(
            w.file_type().is_char_device() && w.rdev() == 0,
            "a 0/0 whiteout"
        );
        assert!(t.path().join("var").is_dir());
        assert_eq!(
            std::fs::read_link(t.path().join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
    }

    #[test]
    fn entries_that_leave_the_layer_are_refused() {
        use tar::EntryType as T;
        for (entries, says) in [
            (
                vec![("../evil", T::Regular, &b"x"[..], None)],
                "leaves the layer",
            ),
            (
                vec![
                    ("link", T::Symlink, &b""[..], Some("/etc")),
                    ("link/passwd", T::Regular, &b"x"[..], None),
                ],
                "unpacking `link/passwd`",
            ),
            (
                vec![
                    ("link", T::Symlink, &b""[..], Some("/tmp")),
                    ("link/.wh.x", T::Regular, &b""[..], None),
                ],
                "not a folder",
            ),
        ] {
            let t = tempfile::tempdir().unwrap();
            let e = unpack(&mut &tar_of(&entries)[..], t.path()).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }
}
