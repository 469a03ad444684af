//! Picks the kernel modules an image carries (a fixed list and everything it depends on), and
//! writes them with their index into the initramfs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ros_kmod::{INDEX_FILE, Index, Module};

use crate::cpio::Archive;
use crate::modinfo;

/// Modules every image carries (their dependencies come along). What the init loads from them
/// is decided at boot, from the devices it finds and the config; see ARCHITECTURE.md.
pub const IMAGE_MODULES: &[&str] = &[
    // virtio devices, over PCI (both arches) and MMIO (arm virt)
    "virtio_pci",
    "virtio_mmio",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "virtio_console",
    "virtio_rng",
    // QEMU fw_cfg, where user-data is passed
    "qemu_fw_cfg",
    // file systems: container layers, config drives, images (erofs needs a loop device here)
    "overlay",
    "loop",
    "squashfs",
    "erofs",
    "isofs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    // networking
    "bonding",
    "8021q",
    "bridge",
    "veth",
    // the cluster's pods: outbound NAT with nftables (ros_config::schema::CLUSTER_MODULES)
    "nf_tables",
    "nft_chain_nat",
    "nft_masq",
    // the ACPI power button (x86) and its input events
    "button",
    "evdev",
];

/// The modules found for an image, keyed by name.
#[derive(Debug, Default)]
pub struct Selection {
    pub index: Index,
    files: BTreeMap<String, PathBuf>,
    /// Wanted modules this kernel does not have (e.g. `button` on arm64).
    pub missing: Vec<String>,
}

/// Finds `wanted` and their dependencies in `modules_dir` (a kernel's `lib/modules/<release>`).
pub fn select(modules_dir: &Path, release: &str, wanted: &[&str]) -> Result<Selection> {
    let mut by_name = BTreeMap::new();
    collect_ko(&modules_dir.join("kernel"), modules_dir, &mut by_name)?;
    let mut sel = Selection {
        index: Index {
            release: release.to_string(),
            ..Index::default()
        },
        ..Selection::default()
    };
    let mut queue: Vec<String> = wanted.iter().map(|w| ros_kmod::normalize(w)).collect();
    let mut seen = BTreeSet::new();
    while let Some(name) = queue.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some((rel, path)) = by_name.get(&name) else {
            sel.missing.push(name);
            continue;
        };
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let info = modinfo::read(&bytes).with_context(|| format!("reading {}", path.display()))?;
        queue.extend(info.depends.iter().cloned());
        for alias in info.aliases {
            sel.index.aliases.push((name.clone(), alias));
        }
        sel.index.modules.insert(
            name.clone(),
            Module {
                name: name.clone(),
                path: rel.clone(),
                deps: info.depends,
            },
        );
        sel.files.insert(rel.clone(), path.clone());
    }
    sel.index.aliases.sort();
    // `modules.builtin` lists `kernel/fs/ext4/ext4.ko` for what is built in.
    if let Ok(text) = std::fs::read_to_string(modules_dir.join("modules.builtin")) {
        sel.index.builtin = text
            .lines()
            .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko"))
            .map(ros_kmod::normalize)
            .collect();
    }
    sel.missing.sort();
    Ok(sel)
}

/// Maps module name -> (path relative to the modules folder, absolute path).
fn collect_ko(
    dir: &Path,
    root: &Path,
    out: &mut BTreeMap<String, (String, PathBuf)>,
) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_ko(&path, root, out)?;
        } else if let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
        {
            let rel = path
                .strip_prefix(root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.insert(ros_kmod::normalize(stem), (rel, path));
        }
    }
    Ok(())
}

impl Selection {
    /// Adds the modules and the index under `lib/modules/<release>/`.
    pub fn add_to(&self, archive: &mut Archive) -> Result<u64> {
        let base = format!("lib/modules/{}", self.index.release);
        let mut bytes = 0;
        for (rel, path) in &self.files {
            let data = std::fs::read(path)?;
            bytes += data.len() as u64;
            archive.file(&format!("{base}/{rel}"), 0o644, data);
        }
        archive.file(
            &format!("{base}/{INDEX_FILE}"),
            0o644,
            self.index.write().into_bytes(),
        );
        Ok(bytes)
    }
}
