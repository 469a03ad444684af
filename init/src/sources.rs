//! Gathers the user-data from its sources, lowest precedence first: QEMU fw_cfg
//! (`opt/ros/user-data`), then the kernel command line's `ros.*` keys. A missing source is
//! skipped quietly; one that cannot be read is skipped with an error.

use std::path::Path;

use ros_config::{ConfigError, Pos, Read};
use serde::Serialize;

/// Where QEMU's `-fw_cfg name=opt/ros/user-data,...` shows up once `qemu_fw_cfg` is loaded.
pub const FW_CFG_USER_DATA: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/ros/user-data/raw";
pub const FW_CFG_SOURCE: &str = "fw_cfg:opt/ros/user-data";

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

/// Reads the sources: the fw_cfg file at `fw_cfg` and the command line text `cmdline`.
pub fn gather(fw_cfg: &Path, cmdline: &str) -> Gathered {
    let mut reads = Vec::new();
    let mut sources = Vec::new();
    match std::fs::read(fw_cfg) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => {
                reads.push(ros_config::from_toml(FW_CFG_SOURCE, &text));
                sources.push(status(FW_CFG_SOURCE, "read"));
            }
            Err(e) => {
                let pos = Pos::at("", 0);
                let mut r = Read::default();
                r.errors.push(ConfigError::new(
                    FW_CFG_SOURCE,
                    pos,
                    "",
                    format!(
                        "the user-data is not UTF-8 text (byte {})",
                        e.utf8_error().valid_up_to()
                    ),
                ));
                reads.push(r);
                sources.push(status(FW_CFG_SOURCE, "failed"));
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            sources.push(status(FW_CFG_SOURCE, "absent"))
        }
        Err(e) => {
            let mut r = Read::default();
            r.errors.push(ConfigError::new(
                FW_CFG_SOURCE,
                Pos::default(),
                "",
                format!("cannot read: {e}"),
            ));
            reads.push(r);
            sources.push(status(FW_CFG_SOURCE, "failed"));
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
    use super::*;

    #[test]
    fn fw_cfg_then_cmdline() {
        let tmp = tempfile::tempdir().expect("tmp");
        let f = tmp.path().join("raw");
        std::fs::write(&f, "hostname = \"from-fw\"\nmodules = [\"bonding\"]\n").expect("write");
        let g = gather(&f, "console=ttyS0 ros.hostname=from-cmdline");
        assert!(g.read.errors.is_empty(), "{:?}", g.read.errors);
        assert_eq!(
            g.read.data.hostname.map(|h| h.to_string()).as_deref(),
            Some("from-cmdline")
        );
        assert_eq!(g.read.data.modules.map(|m| m.len()), Some(1));
        assert_eq!(g.sources[0], status(FW_CFG_SOURCE, "read"));
    }

    #[test]
    fn an_absent_fw_cfg_is_quiet_and_a_binary_one_is_an_error() {
        let tmp = tempfile::tempdir().expect("tmp");
        let g = gather(&tmp.path().join("none"), "");
        assert!(g.read.errors.is_empty());
        assert_eq!(g.sources[0].status, "absent");
        let f = tmp.path().join("bin");
        std::fs::write(&f, [0x1f, 0x8b, 0xff, 0xfe]).expect("write");
        let g = gather(&f, "");
        assert_eq!(g.read.errors.len(), 1);
        assert!(g.read.errors[0].message.contains("not UTF-8"));
        assert_eq!(g.sources[0].status, "failed");
    }
}
