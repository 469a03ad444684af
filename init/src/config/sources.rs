//! The user-data's sources on this machine, lowest precedence first: the config baked into the
//! image, the config persisted on the state disk, a NoCloud drive's meta-data and user-data,
//! QEMU fw_cfg (`opt/ros/user-data`), the metadata service's meta-data and user-data, then the
//! kernel command line (read by `ros_config::load`). Each file is read with a cap, regular files
//! only, symlinks not followed; what it holds is decoded and checked by `ros_config`.

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ros_api::paths::{IMAGE_USER_DATA, RUN_SOURCES, STATE_USER_DATA};
use ros_config::load::MAX_BYTES;
use ros_config::{Input, Source};

/// Where QEMU's `-fw_cfg name=opt/ros/user-data,...` shows up once `qemu_fw_cfg` is loaded.
pub const FW_CFG_USER_DATA: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/ros/user-data/raw";
pub const FW_CFG_SOURCE: &str = "fw_cfg:opt/ros/user-data";
pub const NOCLOUD_META_SOURCE: &str = "nocloud:meta-data";
pub const NOCLOUD_USER_SOURCE: &str = "nocloud:user-data";
pub const METADATA_META_SOURCE: &str = "metadata:meta-data";
pub const METADATA_USER_SOURCE: &str = "metadata:user-data";
/// The persisted config's place in [`files`].
pub const PERSISTED: usize = 1;

/// The name of the persisted config as a source.
pub fn state_source() -> String {
    format!("state:{STATE_USER_DATA}")
}

/// The file sources of a booted machine, lowest precedence first: (name, path).
pub fn files() -> Vec<(String, PathBuf)> {
    let run = Path::new(RUN_SOURCES);
    vec![
        (format!("image:{IMAGE_USER_DATA}"), IMAGE_USER_DATA.into()),
        (state_source(), STATE_USER_DATA.into()),
        (
            NOCLOUD_META_SOURCE.into(),
            run.join("nocloud-meta-data.toml"),
        ),
        (NOCLOUD_USER_SOURCE.into(), run.join("nocloud-user-data")),
        (FW_CFG_SOURCE.into(), FW_CFG_USER_DATA.into()),
        (
            METADATA_META_SOURCE.into(),
            run.join("metadata-meta-data.toml"),
        ),
        (METADATA_USER_SOURCE.into(), run.join("metadata-user-data")),
    ]
}

/// Every file source, read.
pub fn read_all() -> Vec<Source> {
    files()
        .into_iter()
        .map(|(name, path)| Source::new(&name, read_capped(&path, MAX_BYTES)))
        .collect()
}

/// A file's bytes, at most `cap`: a regular file only, opened without following a symlink and
/// without blocking (a FIFO or a device is refused, not read).
pub fn read_capped(path: &Path, cap: usize) -> Input {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
    let f = match f {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Input::Absent,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Input::Unreadable("a symbolic link; only a regular file is read".into());
        }
        Err(e) => return Input::Unreadable(e.to_string()),
    };
    let meta = match f.metadata() {
        Ok(m) => m,
        Err(e) => return Input::Unreadable(e.to_string()),
    };
    if !meta.is_file() {
        return Input::Unreadable("not a regular file (a FIFO, a device or a folder)".into());
    }
    if meta.len() > cap as u64 {
        return Input::Unreadable(format!(
            "{} KiB; at most {} KiB is read",
            meta.len().div_ceil(1024),
            cap / 1024
        ));
    }
    let mut bytes = Vec::new();
    // sysfs files report no size of their own: the cap holds while reading too.
    match f.take(cap as u64 + 1).read_to_end(&mut bytes) {
        Ok(_) if bytes.len() > cap => Input::Unreadable(format!("larger than {} KiB", cap / 1024)),
        Ok(_) => Input::Bytes(bytes),
        Err(e) => Input::Unreadable(e.to_string()),
    }
}

/// A one-key user-data that sets the hostname (what a meta-data's `local-hostname` gives).
fn hostname_toml(h: &str) -> String {
    format!(
        "hostname = {}\n",
        serde_json::to_string(h).unwrap_or_else(|_| "\"\"".into())
    )
}

/// Keeps what the NoCloud drive gave under [`RUN_SOURCES`]: its user-data as it is, its
/// meta-data's `local-hostname` as a one-key user-data (below the drive's user-data).
pub fn keep_nocloud(drive: &super::nocloud::Drive) -> std::io::Result<()> {
    keep(
        "nocloud",
        drive.meta_data.local_hostname.as_deref(),
        drive.user_data.as_deref(),
    )
}

/// Keeps what the metadata service gave under [`RUN_SOURCES`], as for NoCloud.
pub fn keep_metadata(f: &super::metadata::Fetched) -> std::io::Result<()> {
    keep(
        "metadata",
        f.local_hostname.as_deref(),
        f.user_data.as_deref(),
    )
}

fn keep(prefix: &str, hostname: Option<&str>, user_data: Option<&[u8]>) -> std::io::Result<()> {
    let run = Path::new(RUN_SOURCES);
    std::fs::create_dir_all(run)?;
    if let Some(h) = hostname {
        std::fs::write(
            run.join(format!("{prefix}-meta-data.toml")),
            hostname_toml(h),
        )?;
    }
    if let Some(u) = user_data {
        std::fs::write(run.join(format!("{prefix}-user-data")), u)?;
    }
    Ok(())
}

/// Writes `data` to `path` so that a crash leaves the old file or the new one, never a mix:
/// a temporary file beside it, fsync, rename over, fsync of the folder.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_cap_are_read() {
        let tmp = tempfile::tempdir().expect("tmp");
        let f = tmp.path().join("f");
        std::fs::write(&f, "hostname = \"a\"\n").expect("write");
        assert_eq!(
            read_capped(&f, 100),
            Input::Bytes(b"hostname = \"a\"\n".to_vec())
        );
        assert_eq!(read_capped(&tmp.path().join("none"), 100), Input::Absent);
        let big = tmp.path().join("big");
        std::fs::write(&big, vec![b'#'; 101]).expect("write");
        assert!(matches!(read_capped(&big, 100), Input::Unreadable(e) if e.contains("at most")));
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
        assert!(
            matches!(read_capped(&link, 100), Input::Unreadable(e) if e.contains("symbolic link"))
        );
        let fifo = tmp.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        assert!(matches!(read_capped(&fifo, 100), Input::Unreadable(e) if e.contains("FIFO")));
        assert!(matches!(read_capped(tmp.path(), 100), Input::Unreadable(_)));
    }

    #[test]
    fn atomic_writes_replace_whole_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("config/user-data.toml");
        write_atomic(&p, b"hostname = \"a\"\n").expect("write");
        write_atomic(&p, b"hostname = \"b\"\n").expect("write");
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            "hostname = \"b\"\n"
        );
        let names: Vec<_> = std::fs::read_dir(p.parent().expect("dir"))
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }

    #[test]
    fn a_local_hostname_becomes_a_user_data_that_reads_back() {
        let r = ros_config::from_toml("t", &hostname_toml("node-7"));
        assert!(r.errors.is_empty());
        assert_eq!(
            r.data.hostname.map(|h| h.to_string()).as_deref(),
            Some("node-7")
        );
        // A hostile value stays a string (and fails as a hostname), nothing more.
        let r = ros_config::from_toml("t", &hostname_toml("x\"\nmodules = [\"evil\"]"));
        assert!(r.data.modules.is_none());
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    }
}
