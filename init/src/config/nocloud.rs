//! The NoCloud config drive, as cloud-init defines it: a volume labelled `cidata` (ISO9660 or
//! vfat) holding `user-data` (here: ros's TOML, gzip allowed) and `meta-data` (`instance-id`,
//! `local-hostname`). It is found by reading the label from each block device's first bytes,
//! mounted read-only for the time it takes to read the two files (each capped; a symlink, a FIFO
//! or a device in their place is refused, not followed), and unmounted.

use std::io::Read;
use std::path::Path;

use nix::mount::MsFlags;

use crate::platform::kmod::Loader;
use crate::platform::sys::Sys;

/// The volume label cloud-init looks for (either case).
pub const LABEL: &str = "cidata";
/// Where the drive is mounted while it is read.
const MOUNT: &str = "/run/ros/nocloud";
/// How much of a device is read to find its label (the ISO9660 descriptor is at 32 KiB).
const HEAD: usize = 36 * 1024;
/// A larger `meta-data` is refused (ros reads two keys of it).
const META_DATA_MAX: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fs {
    Iso9660,
    Vfat,
}

impl Fs {
    fn kernel_name(self) -> &'static str {
        match self {
            Fs::Iso9660 => "iso9660",
            Fs::Vfat => "vfat",
        }
    }

    fn modules(self) -> &'static [&'static str] {
        match self {
            Fs::Iso9660 => &["isofs"],
            Fs::Vfat => &["vfat", "nls_cp437", "nls_ascii"],
        }
    }
}

/// The filesystem and label at the start of a device, when it is ISO9660 or FAT.
pub fn label(head: &[u8]) -> Option<(Fs, String)> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim_end().to_string();
    // ISO9660: the primary volume descriptor in sector 16 (2048-byte sectors).
    const PVD: usize = 16 * 2048;
    if head.len() >= PVD + 72 && head[PVD] == 1 && &head[PVD + 1..PVD + 6] == b"CD001" {
        return Some((Fs::Iso9660, text(&head[PVD + 40..PVD + 72])));
    }
    // FAT: a boot sector with the 0x55AA signature; the label in the extended BPB of FAT12/16
    // (offset 43) or FAT32 (offset 71), after a 0x29 boot signature.
    if head.len() >= 512 && head[510] == 0x55 && head[511] == 0xaa {
        for (sig, lab, fstype) in [(38usize, 43usize, 54usize), (66, 71, 82)] {
            if head[sig] == 0x29 && head[fstype..fstype + 3] == *b"FAT" {
                return Some((Fs::Vfat, text(&head[lab..lab + 11])));
            }
        }
    }
    None
}

/// What the drive holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drive {
    /// `/dev/vdb`.
    pub device: String,
    pub user_data: Option<Vec<u8>>,
    pub meta_data: MetaData,
    /// Files that were there and were not read (too large, not regular files).
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaData {
    pub instance_id: Option<String>,
    pub local_hostname: Option<String>,
}

/// Reads `meta-data`: cloud-init's is YAML; ros reads its flat `key: value` lines, which is
/// what NoCloud seeds hold.
pub fn meta_data(text: &str) -> MetaData {
    let mut m = MetaData::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
        if v.is_empty() {
            continue;
        }
        match k.trim() {
            "instance-id" => m.instance_id = Some(v),
            "local-hostname" | "hostname" => m.local_hostname = Some(v),
            _ => {}
        }
    }
    m
}

/// The first block device labelled `cidata`, by kernel name.
pub fn find(sys_block: &Path, dev: &Path) -> Option<(String, Fs)> {
    let mut names: Vec<String> = std::fs::read_dir(sys_block)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram") && !n.starts_with("zram"))
        .collect();
    names.sort();
    for name in names {
        let Ok(f) = std::fs::File::open(dev.join(&name)) else {
            continue;
        };
        let mut head = Vec::with_capacity(HEAD);
        if f.take(HEAD as u64).read_to_end(&mut head).is_err() {
            continue;
        }
        if let Some((fs, l)) = label(&head)
            && l.eq_ignore_ascii_case(LABEL)
        {
            return Some((name, fs));
        }
    }
    None
}

/// Finds, mounts, reads and unmounts the drive. `Ok(None)` when there is none.
pub fn read(sys: &dyn Sys, loader: Option<&mut Loader>) -> Result<Option<Drive>, String> {
    let Some((name, fs)) = find(Path::new("/sys/class/block"), Path::new("/dev")) else {
        return Ok(None);
    };
    let device = format!("/dev/{name}");
    if let Some(l) = loader {
        let names: Vec<String> = fs.modules().iter().map(|s| s.to_string()).collect();
        l.load(sys, &names);
    }
    let target = Path::new(MOUNT);
    sys.mkdir_all(target, 0o700)
        .map_err(|e| format!("creating {MOUNT}: {e}"))?;
    sys.mount(
        &device,
        target,
        fs.kernel_name(),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )
    .map_err(|e| format!("mounting {device} ({}): {e}", fs.kernel_name()))?;
    // Capped, regular files only, no symlink followed (a drive is whatever someone built).
    let mut errors = Vec::new();
    let mut file = |n: &str, cap: usize| -> Option<Vec<u8>> {
        match super::sources::read_capped(&target.join(n), cap) {
            ros_config::Input::Bytes(b) => Some(b),
            ros_config::Input::Absent => None,
            ros_config::Input::Unreadable(e) => {
                errors.push(format!("{n} on {device}: {e}"));
                None
            }
        }
    };
    let user_data = file("user-data", ros_config::load::MAX_BYTES);
    let meta = file("meta-data", META_DATA_MAX);
    let _ = nix::mount::umount(target);
    Ok(Some(Drive {
        device,
        user_data,
        meta_data: meta
            .map(|b| meta_data(&String::from_utf8_lossy(&b)))
            .unwrap_or_default(),
        errors,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_iso9660_and_fat_labels() {
        let mut iso = vec![0u8; HEAD];
        let pvd = 16 * 2048;
        iso[pvd] = 1;
        iso[pvd + 1..pvd + 6].copy_from_slice(b"CD001");
        iso[pvd + 40..pvd + 72].copy_from_slice(&[b' '; 32]);
        iso[pvd + 40..pvd + 46].copy_from_slice(b"cidata");
        assert_eq!(label(&iso), Some((Fs::Iso9660, "cidata".into())));

        let mut fat = vec![0u8; 512];
        fat[510] = 0x55;
        fat[511] = 0xaa;
        fat[38] = 0x29;
        fat[43..54].copy_from_slice(b"CIDATA     ");
        fat[54..62].copy_from_slice(b"FAT12   ");
        assert_eq!(label(&fat), Some((Fs::Vfat, "CIDATA".into())));
        let mut fat32 = vec![0u8; 512];
        fat32[510] = 0x55;
        fat32[511] = 0xaa;
        fat32[66] = 0x29;
        fat32[71..82].copy_from_slice(b"cidata     ");
        fat32[82..90].copy_from_slice(b"FAT32   ");
        assert_eq!(label(&fat32), Some((Fs::Vfat, "cidata".into())));
        // An MBR with partitions is not a FAT volume.
        let mut mbr = vec![0u8; 512];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert_eq!(label(&mbr), None);
        assert_eq!(label(&[0; 100]), None);
    }

    #[test]
    fn reads_the_flat_meta_data() {
        let m = meta_data("instance-id: iid-01\nlocal-hostname: \"node-7\"\n# c\nother: x\n");
        assert_eq!(m.instance_id.as_deref(), Some("iid-01"));
        assert_eq!(m.local_hostname.as_deref(), Some("node-7"));
        assert_eq!(meta_data(""), MetaData::default());
    }
}
