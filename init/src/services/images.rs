//! The system-service images in the initramfs: an OCI image layout's index, manifests and
//! configs (read with oci-spec's types), and each layer as a folder used as it is (or, in an
//! image built with `--layer-store erofs`, an erofs image mounted read-only through a loop
//! device the first time a container needs it).

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

/// Where `ros-image` puts the images.
pub const STORE: &str = "/usr/lib/ros";
/// Where layers are mounted.
pub const MOUNTS: &str = "/run/ros/layers";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    /// Layer digests (hex), bottom first.
    pub layers: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
}

#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    mounts: PathBuf,
    images: BTreeMap<String, Image>,
    mounted: BTreeMap<String, PathBuf>,
}

fn blob(root: &Path, digest: &str) -> PathBuf {
    root.join("oci/blobs").join(digest.replace(':', "/"))
}

impl ImageStore {
    /// Reads the images under `root` (`/usr/lib/ros`); layers are mounted under `mounts`.
    pub fn open(root: &Path, mounts: &Path) -> Result<ImageStore, String> {
        let index = ImageIndex::from_file(root.join("oci/index.json"))
            .map_err(|e| format!("reading the image index: {e}"))?;
        let mut images = BTreeMap::new();
        for m in index.manifests() {
            let Some(name) = m
                .annotations()
                .as_ref()
                .and_then(|a| a.get("org.opencontainers.image.ref.name"))
            else {
                continue;
            };
            let manifest = ImageManifest::from_file(blob(root, m.digest().as_ref()))
                .map_err(|e| format!("image {name}: manifest: {e}"))?;
            let config =
                ImageConfiguration::from_file(blob(root, manifest.config().digest().as_ref()))
                    .map_err(|e| format!("image {name}: config: {e}"))?;
            let c = config.config().clone().unwrap_or_default();
            images.insert(
                name.clone(),
                Image {
                    name: name.clone(),
                    layers: config
                        .rootfs()
                        .diff_ids()
                        .iter()
                        .map(|d| d.trim_start_matches("sha256:").to_string())
                        .collect(),
                    entrypoint: c.entrypoint().clone().unwrap_or_default(),
                    cmd: c.cmd().clone().unwrap_or_default(),
                    env: c.env().clone().unwrap_or_default(),
                    working_dir: c.working_dir().clone().unwrap_or_else(|| "/".into()),
                },
            );
        }
        Ok(ImageStore {
            root: root.to_path_buf(),
            mounts: mounts.to_path_buf(),
            images,
            mounted: BTreeMap::new(),
        })
    }

    pub fn names(&self) -> BTreeSet<String> {
        self.images.keys().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<&Image> {
        self.images.get(name)
    }

    /// The folders of an image's layers, topmost first (as overlayfs wants them), mounting what
    /// is not mounted yet.
    pub fn lower_dirs(&mut self, name: &str) -> Result<Vec<PathBuf>, String> {
        let layers = self
            .images
            .get(name)
            .ok_or_else(|| format!("there is no image `{name}`"))?
            .layers
            .clone();
        let mut out = Vec::new();
        for hex in layers.iter().rev() {
            out.push(self.layer(hex)?);
        }
        Ok(out)
    }

    /// Whether some layer is an erofs image rather than a folder (it needs `loop` and `erofs`).
    pub fn has_erofs_layers(&self) -> bool {
        let layers = self.root.join("layers");
        self.images
            .values()
            .flat_map(|i| &i.layers)
            .any(|hex| !layers.join(hex).is_dir())
    }

    fn layer(&mut self, hex: &str) -> Result<PathBuf, String> {
        if let Some(p) = self.mounted.get(hex) {
            return Ok(p.clone());
        }
        let tree = self.root.join("layers").join(hex);
        let path = if tree.is_dir() {
            tree
        } else {
            let file = self.root.join("layers").join(format!("{hex}.erofs"));
            let target = self.mounts.join(hex);
            std::fs::create_dir_all(&target)
                .map_err(|e| format!("creating {}: {e}", target.display()))?;
            mount_erofs(&file, &target).map_err(|e| format!("layer {hex}: {e}"))?;
            target
        };
        self.mounted.insert(hex.to_string(), path.clone());
        Ok(path)
    }
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` (Linux 5.8).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Attaches `file` read-only to a free loop device (detached again when unmounted) and mounts
/// its erofs at `target`.
pub fn mount_erofs(file: &Path, target: &Path) -> Result<(), String> {
    let backing =
        std::fs::File::open(file).map_err(|e| format!("opening {}: {e}", file.display()))?;
    let ctl = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(|e| format!("opening /dev/loop-control (is the loop module loaded?): {e}"))?;
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
    let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
    if n < 0 {
        return Err(format!(
            "no free loop device: {}",
            std::io::Error::last_os_error()
        ));
    }
    let dev_path = format!("/dev/loop{n}");
    let dev = std::fs::File::open(&dev_path).map_err(|e| format!("opening {dev_path}: {e}"))?;
    let mut name = [0u8; 64];
    let fname = file.as_os_str().as_encoded_bytes();
    let len = fname.len().min(63);
    name[..len].copy_from_slice(&fname[..len]);
    let cfg = LoopConfig {
        fd: u32::try_from(backing.as_raw_fd()).map_err(|_| "bad fd")?,
        block_size: 0,
        info: LoopInfo64 {
            device: 0,
            inode: 0,
            rdevice: 0,
            offset: 0,
            sizelimit: 0,
            number: 0,
            encrypt_type: 0,
            encrypt_key_size: 0,
            flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
            file_name: name,
            crypt_name: [0; 64],
            encrypt_key: [0; 32],
            init: [0; 2],
        },
        reserved: [0; 8],
    };
    // SAFETY: cfg is a valid loop_config for the call; the kernel copies it.
    if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE as _, &raw const cfg) } < 0 {
        return Err(format!(
            "attaching {} to {dev_path}: {}",
            file.display(),
            std::io::Error::last_os_error()
        ));
    }
    nix::mount::mount(
        Some(dev_path.as_str()),
        target,
        Some("erofs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| format!("mounting {dev_path} (erofs) on {}: {e}", target.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_structs_have_the_kernel_sizes() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    /// Reads the OCI metadata that ros-image wrote, when an image was built (it is in CI).
    #[test]
    fn reads_a_built_image_store() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ros-image/x86_64");
        let store_dir = root.join("oci");
        if !store_dir.exists() {
            return;
        }
        // The build's layout is the store's `oci` folder; its layers folder is beside it.
        let s = ImageStore::open(&root, Path::new("/nonexistent")).expect("open");
        let console = s.get("console").expect("console image");
        // images.toml: console = base + busybox + glibc + dropbear + ros-cli + console, bottom first.
        assert_eq!(console.layers.len(), 6);
        assert_eq!(console.entrypoint, ["/usr/lib/ros/console-start"]);
        assert!(s.names().contains("busybox"));
    }
}
