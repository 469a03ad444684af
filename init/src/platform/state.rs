//! The persistent state disk: an ext4 filesystem labelled `ROS_STATE`, found by its label on any
//! block device, mounted on `/var/lib/ros` (config, service volumes and writable layers, logs).
//! When none exists, the first blank disk among the autoformat candidates is formatted: blank
//! means a whole disk whose first MiB is zeros (no partition table, no filesystem), so a disk in
//! use is never touched. Without a state disk ros runs from memory and says so.
//!
//! The decision ([`choose`]) is pure; [`setup`] reads the devices, runs `mke2fs` and mounts.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;

use crate::platform::sys::Sys;

/// The filesystem label that marks the state disk.
pub const LABEL: &str = "ROS_STATE";
/// Where the state disk is mounted (the supervisor's state folder).
pub const MOUNT: &str = ros_api::paths::STATE;
/// The log folder; on the state disk it is `MOUNT/log`, bind-mounted here.
pub const LOGS: &str = ros_api::paths::LOGS;
/// Disks formatted when blank, in this order, unless `ros.state.autoformat=` names others (a
/// comma list of device names, or `none`).
pub const DEFAULT_AUTOFORMAT: &[&str] = &["vda", "sda", "xvda", "nvme0n1"];
/// The command line option naming the autoformat candidates.
pub const AUTOFORMAT_OPTION: &str = "state.autoformat";
/// A smaller disk is not worth a filesystem.
const MIN_BYTES: u64 = 32 << 20;
/// How much of a disk must be zeros for it to count as blank.
const BLANK_BYTES: usize = 1 << 20;
/// The image with `mke2fs` (`system-services/images.toml`).
pub const MKFS_IMAGE: &str = "e2fsprogs";

/// What the first bytes of a block device hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// An ext2/3/4 filesystem, with its label.
    Ext { label: String },
    /// Zeros only.
    Blank,
    /// Something else (a partition table, another filesystem, data).
    Other,
}

/// A block device as seen in `/sys/class/block`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Kernel name, e.g. `vda` or `vda1`.
    pub name: String,
    /// A partition rather than a whole disk.
    pub partition: bool,
    pub bytes: u64,
    pub content: Content,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Mount(String),
    Format(String),
    None,
}

/// Reads the first bytes of a device (at least 2 KiB; [`BLANK_BYTES`] to tell a blank disk).
pub fn content(head: &[u8]) -> Content {
    const SB: usize = 1024;
    if head.len() >= SB + 136 && head[SB + 56..SB + 58] == [0x53, 0xef] {
        let raw = &head[SB + 120..SB + 136];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        return Content::Ext {
            label: String::from_utf8_lossy(&raw[..end]).into_owned(),
        };
    }
    if head.len() >= BLANK_BYTES && head.iter().all(|&b| b == 0) {
        return Content::Blank;
    }
    Content::Other
}

/// The autoformat candidates from the command line option's value.
pub fn autoformat(option: Option<&str>) -> Vec<String> {
    match option {
        None => DEFAULT_AUTOFORMAT.iter().map(|s| s.to_string()).collect(),
        Some(v) if v.trim() == "none" => Vec::new(),
        Some(v) => v
            .split(',')
            .map(|s| s.trim().trim_start_matches("/dev/").to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    }
}

/// A device labelled [`LABEL`] wins (the first by name); else the first blank whole disk of the
/// candidates, in their order; else nothing.
pub fn choose(devices: &[Device], candidates: &[String]) -> Choice {
    let mut labelled: Vec<&Device> = devices
        .iter()
        .filter(|d| matches!(&d.content, Content::Ext { label } if label == LABEL))
        .collect();
    labelled.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(d) = labelled.first() {
        return Choice::Mount(d.name.clone());
    }
    for c in candidates {
        if let Some(d) = devices.iter().find(|d| &d.name == c)
            && !d.partition
            && d.bytes >= MIN_BYTES
            && d.content == Content::Blank
        {
            return Choice::Format(d.name.clone());
        }
    }
    Choice::None
}

/// What the state step did, for the ready line and `ros status`.
pub use ros_api::report::StateDisk as Report;

/// The block devices the kernel has, with what they start with. Loop, RAM and optical devices
/// are left out (an ISO config drive is never the state disk).
pub fn devices(sys_block: &Path, dev: &Path) -> Vec<Device> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(sys_block) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if ["loop", "ram", "zram", "sr", "fd"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let path = e.path();
        let sectors: u64 = std::fs::read_to_string(path.join("size"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if sectors == 0 {
            continue;
        }
        let partition = path.join("partition").exists();
        // The superblock is in the first 2 KiB; the whole MiB is read only when those bytes
        // are zeros on a whole disk (a blank candidate), not on every disk at every boot.
        let content = match std::fs::File::open(dev.join(&name)) {
            Ok(f) => {
                let mut head = Vec::with_capacity(4096);
                let mut r = f.take(BLANK_BYTES as u64);
                let _ = (&mut r).take(4096).read_to_end(&mut head);
                if !partition && head.len() == 4096 && head.iter().all(|&b| b == 0) {
                    let _ = r.read_to_end(&mut head);
                }
                content(&head)
            }
            Err(_) => Content::Other,
        };
        out.push(Device {
            name,
            partition,
            bytes: sectors * 512,
            content,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Runs `mke2fs` from the `e2fsprogs` image's layer folders through their own dynamic loader
/// (the initramfs has no libc of its own), with a deadline.
fn mkfs(layers: &[PathBuf], device: &Path) -> Result<(), String> {
    // Links in the layers may be absolute (meant for the container's root): real paths only.
    let find = |rel: &str| layers.iter().map(|l| l.join(rel)).find(|p| p.is_file());
    let loader = find("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
        .or_else(|| find("lib/aarch64-linux-gnu/ld-linux-aarch64.so.1"))
        .ok_or("the e2fsprogs image has no dynamic loader")?;
    let mke2fs = find("sbin/mke2fs").ok_or("the e2fsprogs image has no mke2fs")?;
    let triplet = if cfg!(target_arch = "aarch64") {
        "aarch64-linux-gnu"
    } else {
        "x86_64-linux-gnu"
    };
    let libs: Vec<String> = layers
        .iter()
        .flat_map(|l| [l.join("lib").join(triplet), l.join("usr/lib").join(triplet)])
        .map(|p| p.display().to_string())
        .collect();
    let mut cmd = std::process::Command::new(&loader);
    cmd.arg("--library-path")
        .arg(libs.join(":"))
        .arg(&mke2fs)
        .args(["-q", "-F", "-t", "ext4", "-L", LABEL, "-m", "0"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1"])
        .arg(device)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if let Some(conf) = find("etc/mke2fs.conf") {
        cmd.env("MKE2FS_CONFIG", conf);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("running {}: {e}", mke2fs.display()))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!("mke2fs failed ({status}): {}", err.trim()));
            }
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("mke2fs took longer than 120 s; killed".into());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for mke2fs: {e}")),
        }
    }
}

/// Finds, formats when asked and blank, and mounts the state disk. `mkfs_layers` gives the
/// `e2fsprogs` image's layer folders (only asked for when a disk must be formatted).
pub fn setup(
    sys: &dyn Sys,
    autoformat_option: Option<&str>,
    mkfs_layers: impl FnOnce() -> Result<Vec<PathBuf>, String>,
) -> Report {
    let devices = devices(Path::new("/sys/class/block"), Path::new("/dev"));
    let candidates = autoformat(autoformat_option);
    let mut report = Report::default();
    let name = match choose(&devices, &candidates) {
        Choice::Mount(name) => name,
        Choice::Format(name) => {
            let dev = Path::new("/dev").join(&name);
            log::info!(
                "state: formatting the blank disk {} as {LABEL}",
                dev.display()
            );
            if let Err(e) = mkfs_layers().and_then(|l| mkfs(&l, &dev)) {
                report.detail = Some(format!("formatting {}: {e}", dev.display()));
                return report;
            }
            report.formatted = true;
            name
        }
        Choice::None => {
            report.detail = Some(format!(
                "no disk labelled {LABEL} and no blank disk among {}; config, volumes and logs \
                 are kept in memory",
                if candidates.is_empty() {
                    "(none: autoformat is off)".to_string()
                } else {
                    candidates.join(", ")
                }
            ));
            return report;
        }
    };
    let dev = format!("/dev/{name}");
    report.device = Some(dev.clone());
    if let Err(e) = mount(sys, &dev) {
        report.detail = Some(e);
        return report;
    }
    report.persistent = true;
    report
}

fn mount(sys: &dyn Sys, dev: &str) -> Result<(), String> {
    let target = Path::new(MOUNT);
    sys.mkdir_all(target, 0o755)
        .map_err(|e| format!("creating {MOUNT}: {e}"))?;
    sys.mount(dev, target, "ext4", MsFlags::MS_NOATIME, None)
        .map_err(|e| format!("mounting {dev} (ext4) on {MOUNT}: {e}"))?;
    let logs = target.join("log");
    sys.mkdir_all(&logs, 0o755)
        .map_err(|e| format!("creating {}: {e}", logs.display()))?;
    sys.mkdir_all(Path::new(LOGS), 0o755)
        .map_err(|e| format!("creating {LOGS}: {e}"))?;
    sys.mount(
        &logs.display().to_string(),
        Path::new(LOGS),
        "",
        MsFlags::MS_BIND,
        None,
    )
    .map_err(|e| format!("binding {} on {LOGS}: {e}", logs.display()))?;
    Ok(())
}

/// The mounts this step made, to carry along when the root moves.
pub fn mounts(report: &Report) -> &'static [&'static str] {
    if report.persistent {
        &[MOUNT, LOGS]
    } else {
        &[]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::sys::Recorder;

    fn ext(label: &str) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[1024 + 56] = 0x53;
        b[1024 + 57] = 0xef;
        b[1024 + 120..1024 + 120 + label.len()].copy_from_slice(label.as_bytes());
        b
    }

    fn dev(name: &str, content: Content) -> Device {
        Device {
            name: name.into(),
            partition: name.ends_with(char::is_numeric) && !name.starts_with("nvme0n1"),
            bytes: 1 << 30,
            content,
        }
    }

    #[test]
    fn reads_ext_labels_zeros_and_anything_else() {
        assert_eq!(
            content(&ext(LABEL)),
            Content::Ext {
                label: LABEL.into()
            }
        );
        assert_eq!(content(&ext("")), Content::Ext { label: "".into() });
        assert_eq!(content(&vec![0; BLANK_BYTES]), Content::Blank);
        // Zeros, but too few read to know: not blank.
        assert_eq!(content(&[0; 4096]), Content::Other);
        let mut mbr = vec![0; BLANK_BYTES];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert_eq!(content(&mbr), Content::Other);
    }

    #[test]
    fn the_label_wins_then_the_first_blank_candidate() {
        let label = Content::Ext {
            label: LABEL.into(),
        };
        let devs = vec![
            dev("vda", Content::Blank),
            dev("vdb", Content::Other),
            dev("vdb1", label.clone()),
        ];
        let cands = autoformat(None);
        assert_eq!(choose(&devs, &cands), Choice::Mount("vdb1".into()));
        let devs = vec![dev("sda", Content::Blank), dev("vda", Content::Blank)];
        // vda comes before sda among the defaults.
        assert_eq!(choose(&devs, &cands), Choice::Format("vda".into()));
        assert_eq!(
            choose(&devs, &autoformat(Some("/dev/sda"))),
            Choice::Format("sda".into())
        );
        assert_eq!(choose(&devs, &autoformat(Some("none"))), Choice::None);
    }

    #[test]
    fn never_formats_what_is_in_use_a_partition_or_a_tiny_disk() {
        let cands = autoformat(Some("vda,vdb,vdc1,vdd"));
        let mut tiny = dev("vdd", Content::Blank);
        tiny.bytes = 1 << 20;
        let devs = vec![
            dev("vda", Content::Other),
            dev(
                "vdb",
                Content::Ext {
                    label: "data".into(),
                },
            ),
            dev("vdc1", Content::Blank),
            tiny,
        ];
        assert_eq!(choose(&devs, &cands), Choice::None);
    }

    #[test]
    fn mounts_the_disk_and_binds_its_log_folder() {
        let sys = Recorder::default();
        mount(&sys, "/dev/vda").expect("mount");
        let calls = sys.calls();
        assert!(
            calls
                .iter()
                .any(|c| c.contains("/dev/vda") && c.contains(MOUNT) && c.contains("ext4")),
            "{calls:?}"
        );
        assert!(
            calls
                .iter()
                .any(|c| c.contains("/var/lib/ros/log") && c.contains(LOGS)),
            "{calls:?}"
        );
    }

    #[test]
    fn a_failed_mount_is_reported() {
        let sys = Recorder::failing(&["mount /dev/vda"]);
        let e = mount(&sys, "/dev/vda").expect_err("fails");
        assert!(
            e.contains("mounting /dev/vda (ext4) on /var/lib/ros"),
            "{e}"
        );
    }
}
