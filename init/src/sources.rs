//! Gathers the user-data from its sources, lowest precedence first: the config baked into the
//! image, the config persisted on the state disk, QEMU fw_cfg (`opt/ros/user-data`), then the
//! kernel command line's `ros.*` keys. A missing source is skipped quietly; one that cannot be
//! read is skipped with an error. A source may be gzip-compressed.

use std::io::Read as _;
use std::path::PathBuf;

use ros_config::{ConfigError, Pos, Read};
use serde::Serialize;

/// Where QEMU's `-fw_cfg name=opt/ros/user-data,...` shows up once `qemu_fw_cfg` is loaded.
pub const FW_CFG_USER_DATA: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/ros/user-data/raw";
pub const FW_CFG_SOURCE: &str = "fw_cfg:opt/ros/user-data";
/// The config baked into the image by `ros-image`.
pub const IMAGE_USER_DATA: &str = "/usr/lib/ros/user-data.toml";
/// The config persisted on the state disk (what `ros config set` writes).
pub const STATE_USER_DATA: &str = "/var/lib/ros/config/user-data.toml";
/// Where sources that are not files of their own (the NoCloud drive, unmounted once read) are
/// kept for the boot, so that `ros config` reads them as the boot did.
pub const RUN_SOURCES: &str = "/run/ros/sources";
pub const NOCLOUD_META_SOURCE: &str = "nocloud:meta-data";
pub const NOCLOUD_USER_SOURCE: &str = "nocloud:user-data";
pub const METADATA_META_SOURCE: &str = "metadata:meta-data";
pub const METADATA_USER_SOURCE: &str = "metadata:user-data";
/// Larger user-data (after decompression) is refused.
pub const MAX_BYTES: u64 = 1 << 20;

/// What each source gave, for the ready line.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SourceStatus {
    pub source: String,
    /// `read`, `absent` or `failed`.
    pub status: &'static str,
}

#[derive(Debug, Default)]
pub struct Gathered {
    pub read: Read,
    pub sources: Vec<SourceStatus>,
}

/// A source that is a file.
#[derive(Debug, Clone)]
pub struct FileSource {
    /// Its name in errors and in the ready line, e.g. `fw_cfg:opt/ros/user-data`.
    pub name: String,
    pub path: PathBuf,
}

impl FileSource {
    pub fn new(name: &str, path: impl Into<PathBuf>) -> Self {
        FileSource {
            name: name.to_string(),
            path: path.into(),
        }
    }
}

/// The file sources of a booted machine, lowest precedence first.
pub fn system_files() -> Vec<FileSource> {
    let run = std::path::Path::new(RUN_SOURCES);
    vec![
        FileSource::new(&format!("image:{IMAGE_USER_DATA}"), IMAGE_USER_DATA),
        FileSource::new(&format!("state:{STATE_USER_DATA}"), STATE_USER_DATA),
        FileSource::new(NOCLOUD_META_SOURCE, run.join("nocloud-meta-data.toml")),
        FileSource::new(NOCLOUD_USER_SOURCE, run.join("nocloud-user-data")),
        FileSource::new(FW_CFG_SOURCE, FW_CFG_USER_DATA),
        FileSource::new(METADATA_META_SOURCE, run.join("metadata-meta-data.toml")),
        FileSource::new(METADATA_USER_SOURCE, run.join("metadata-user-data")),
    ]
}

/// Keeps what the NoCloud drive gave under [`RUN_SOURCES`]: its user-data as it is, its
/// meta-data's `local-hostname` as a one-key user-data (below the drive's user-data).
pub fn keep_nocloud(drive: &crate::nocloud::Drive) -> std::io::Result<()> {
    let run = std::path::Path::new(RUN_SOURCES);
    std::fs::create_dir_all(run)?;
    if let Some(h) = &drive.meta_data.local_hostname {
        let quoted = serde_json::to_string(h).unwrap_or_default();
        std::fs::write(
            run.join("nocloud-meta-data.toml"),
            format!("hostname = {quoted}\n"),
        )?;
    }
    if let Some(u) = &drive.user_data {
        std::fs::write(run.join("nocloud-user-data"), u)?;
    }
    Ok(())
}

/// Keeps what the metadata service gave under [`RUN_SOURCES`], as for NoCloud.
pub fn keep_metadata(f: &crate::metadata::Fetched) -> std::io::Result<()> {
    let run = std::path::Path::new(RUN_SOURCES);
    std::fs::create_dir_all(run)?;
    if let Some(h) = &f.local_hostname {
        let quoted = serde_json::to_string(h).unwrap_or_default();
        std::fs::write(
            run.join("metadata-meta-data.toml"),
            format!("hostname = {quoted}\n"),
        )?;
    }
    if let Some(u) = &f.user_data {
        std::fs::write(run.join("metadata-user-data"), u)?;
    }
    Ok(())
}

/// The text of user-data bytes: gunzipped when they are gzip, then UTF-8.
pub fn text(bytes: Vec<u8>) -> Result<String, String> {
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .take(MAX_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("the user-data looks gzip-compressed but is not: {e}"))?;
        out
    } else {
        bytes
    };
    if bytes.len() as u64 > MAX_BYTES {
        return Err(format!(
            "the user-data is larger than {} KiB",
            MAX_BYTES / 1024
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "the user-data is not UTF-8 text (byte {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Reads one source's bytes as user-data; `None` when it is absent.
pub fn read_bytes(name: &str, bytes: std::io::Result<Vec<u8>>) -> Option<(Read, &'static str)> {
    let fail = |message: String| {
        let mut r = Read::default();
        r.errors
            .push(ConfigError::new(name, Pos::default(), "", message));
        Some((r, "failed"))
    };
    match bytes {
        Ok(bytes) => match text(bytes) {
            Ok(t) => Some((ros_config::from_toml(name, &t), "read")),
            Err(e) => fail(e),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => fail(format!("cannot read: {e}")),
    }
}

/// Each present source's read, lowest precedence first (for `ros config sources`).
pub fn read_each(files: &[FileSource], cmdline: &str) -> Vec<(String, Read)> {
    let mut out: Vec<(String, Read)> = files
        .iter()
        .filter_map(|f| {
            read_bytes(&f.name, std::fs::read(&f.path)).map(|(r, _)| (f.name.clone(), r))
        })
        .collect();
    out.push(("cmdline".into(), ros_config::from_cmdline(cmdline)));
    out
}

/// Reads the file sources in order, then the command line text `cmdline`.
pub fn gather(files: &[FileSource], cmdline: &str) -> Gathered {
    let mut reads = Vec::new();
    let mut sources = Vec::new();
    for f in files {
        match read_bytes(&f.name, std::fs::read(&f.path)) {
            Some((r, st)) => {
                reads.push(r);
                sources.push(status(&f.name, st));
            }
            None => sources.push(status(&f.name, "absent")),
        }
    }
    reads.push(ros_config::from_cmdline(cmdline));
    sources.push(status("cmdline", "read"));
    Gathered {
        read: ros_config::layer(reads),
        sources,
    }
}

fn status(source: &str, status: &'static str) -> SourceStatus {
    SourceStatus {
        source: source.to_string(),
        status,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn fw(path: &Path) -> Vec<FileSource> {
        vec![FileSource::new(FW_CFG_SOURCE, path)]
    }

    #[test]
    fn fw_cfg_then_cmdline() {
        let tmp = tempfile::tempdir().expect("tmp");
        let f = tmp.path().join("raw");
        std::fs::write(&f, "hostname = \"from-fw\"\nmodules = [\"bonding\"]\n").expect("write");
        let g = gather(&fw(&f), "console=ttyS0 ros.hostname=from-cmdline");
        assert!(g.read.errors.is_empty(), "{:?}", g.read.errors);
        assert_eq!(
            g.read.data.hostname.map(|h| h.to_string()).as_deref(),
            Some("from-cmdline")
        );
        assert_eq!(g.read.data.modules.map(|m| m.len()), Some(1));
        assert_eq!(g.sources[0], status(FW_CFG_SOURCE, "read"));
    }

    #[test]
    fn an_absent_source_is_quiet_and_a_binary_one_is_an_error() {
        let tmp = tempfile::tempdir().expect("tmp");
        let g = gather(&fw(&tmp.path().join("none")), "");
        assert!(g.read.errors.is_empty());
        assert_eq!(g.sources[0].status, "absent");
        let f = tmp.path().join("bin");
        std::fs::write(&f, [0xff, 0xfe, 0x00]).expect("write");
        let g = gather(&fw(&f), "");
        assert_eq!(g.read.errors.len(), 1);
        assert!(g.read.errors[0].message.contains("not UTF-8"));
        assert_eq!(g.sources[0].status, "failed");
        // gzip magic, then garbage
        std::fs::write(&f, [0x1f, 0x8b, 0xff, 0xfe]).expect("write");
        let g = gather(&fw(&f), "");
        assert!(
            g.read.errors[0].message.contains("gzip"),
            "{:?}",
            g.read.errors
        );
    }

    #[test]
    fn gzip_is_read_and_later_files_win() {
        use std::io::Write;
        let tmp = tempfile::tempdir().expect("tmp");
        let image = tmp.path().join("image.toml");
        std::fs::write(
            &image,
            "hostname = \"baked\"\nsysctl = { \"vm.swappiness\" = \"5\" }\n",
        )
        .expect("write");
        let state = tmp.path().join("state.toml.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"hostname = \"persisted\"\n").expect("gz");
        std::fs::write(&state, gz.finish().expect("gz")).expect("write");
        let files = vec![
            FileSource::new("image:x", &image),
            FileSource::new("state:y", &state),
            FileSource::new(FW_CFG_SOURCE, tmp.path().join("absent")),
        ];
        let g = gather(&files, "");
        assert!(g.read.errors.is_empty(), "{:?}", g.read.errors);
        assert_eq!(
            g.read.data.hostname.map(|h| h.to_string()).as_deref(),
            Some("persisted")
        );
        assert_eq!(g.read.data.sysctl.len(), 1, "the image's keys stay");
        let st: Vec<_> = g.sources.iter().map(|s| s.status).collect();
        assert_eq!(st, ["read", "read", "absent", "read"]);
    }

    #[test]
    fn too_large_is_refused() {
        let big = vec![b'#'; MAX_BYTES as usize + 1];
        assert!(text(big).expect_err("big").contains("larger"));
    }
}
