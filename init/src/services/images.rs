//! The system-service images in the initramfs: an OCI image layout's index, manifests and
//! configs (read with oci-spec's types), and each layer as a folder used as it is (or, in an
//! image built with `--layer-store erofs`, an erofs image mounted read-only through a loop
//! device the first time a container needs it).

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

/// Where `ros-image` puts the images.
pub const STORE: &str = "/usr/lib/ros";
/// Where layers are mounted.
pub const MOUNTS: &str = "/run/ros/layers";
/// The store of images pulled from registries (`ros-pull`'s, crates/ros-registry).
pub const PULLED: &str = "/var/lib/ros/images";
/// Without a state disk the pulled images live in memory, in a tmpfs of their own capped at
/// this share of the RAM: a pull too large for it fails with "No space left on device" rather
/// than taking the memory the services run in.
pub const MEMORY_STORE_SIZE: &str = "25%";

/// Mounts the capped tmpfs for pulled images (no state disk); returns its size in bytes.
pub fn memory_store(sys: &dyn crate::platform::sys::Sys) -> Result<u64, String> {
    let dir = Path::new(PULLED);
    sys.mkdir_all(dir, 0o700)
        .map_err(|e| format!("creating {PULLED}: {e}"))?;
    sys.mount(
        "tmpfs",
        dir,
        "tmpfs",
        MsFlags::empty(),
        Some(&format!("size={MEMORY_STORE_SIZE},mode=0700")),
    )
    .map_err(|e| format!("mounting a tmpfs on {PULLED}: {e}"))?;
    Ok(nix::sys::statvfs::statvfs(dir)
        .map(|v| v.blocks() * v.fragment_size())
        .unwrap_or(0))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    /// Layer digests (hex), bottom first; for a pulled image, the layers' folders.
    pub layers: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
}

impl Image {
    /// An image of these layers, run as its config's `config` says.
    fn new(name: String, layers: Vec<String>, c: layout::Exec) -> Image {
        Image {
            name,
            layers,
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c
                .working_dir
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into()),
        }
    }
}

#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    mounts: PathBuf,
    images: BTreeMap<String, Image>,
    mounted: BTreeMap<String, PathBuf>,
    /// The pulled store's root, and the images read from it (by the name a service gives).
    pulled_root: PathBuf,
    pulled: BTreeMap<String, Image>,
}

/// A blob's file in the layout; the digest must be `algorithm:hex` (no path in it).
fn blob(root: &Path, digest: &str) -> Result<PathBuf, String> {
    let (alg, hex) = digest
        .split_once(':')
        .filter(|(a, h)| {
            !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && !h.is_empty()
                && h.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .ok_or_else(|| format!("`{digest}` is not a digest"))?;
    Ok(root.join("oci/blobs").join(alg).join(hex))
}

/// The parts of an OCI image layout (index, manifests, configs) that the store uses. Not
/// oci-spec's image types: they read and check every field of these files, much more code to
/// run once at boot (under QEMU TCG, code run for the first time is what a boot pays for);
/// these read what the store uses and skip the rest.
mod layout {
    use std::collections::BTreeMap;
    use std::path::Path;

    use serde::Deserialize;

    #[derive(Deserialize)]
    pub struct Index {
        pub manifests: Vec<Descriptor>,
    }

    #[derive(Deserialize)]
    pub struct Descriptor {
        pub digest: String,
        #[serde(default)]
        pub annotations: BTreeMap<String, String>,
    }

    #[derive(Deserialize)]
    pub struct Manifest {
        pub config: Descriptor,
    }

    #[derive(Deserialize)]
    pub struct Config {
        #[serde(default)]
        pub config: Option<Exec>,
        pub rootfs: RootFs,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "PascalCase")]
    pub struct Exec {
        pub entrypoint: Option<Vec<String>>,
        pub cmd: Option<Vec<String>>,
        pub env: Option<Vec<String>>,
        pub working_dir: Option<String>,
    }

    #[derive(Deserialize)]
    pub struct RootFs {
        pub diff_ids: Vec<String>,
    }

    pub fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }
}

impl ImageStore {
    /// Reads the images under `root` (`/usr/lib/ros`); layers are mounted under `mounts`.
    pub fn open(root: &Path, mounts: &Path) -> Result<ImageStore, String> {
        let index: layout::Index = layout::read(&root.join("oci/index.json"))
            .map_err(|e| format!("reading the image index: {e}"))?;
        let mut images = BTreeMap::new();
        for m in index.manifests {
            let Some(name) = m.annotations.get("org.opencontainers.image.ref.name") else {
                continue;
            };
            let manifest: layout::Manifest = layout::read(&blob(root, &m.digest)?)
                .map_err(|e| format!("image {name}: manifest: {e}"))?;
            let config: layout::Config = layout::read(&blob(root, &manifest.config.digest)?)
                .map_err(|e| format!("image {name}: config: {e}"))?;
            let c = config.config.unwrap_or_default();
            images.insert(
                name.clone(),
                Image::new(
                    name.clone(),
                    config
                        .rootfs
                        .diff_ids
                        .iter()
                        .map(|d| d.trim_start_matches("sha256:").to_string())
                        .collect(),
                    c,
                ),
            );
        }
        Ok(ImageStore {
            root: root.to_path_buf(),
            mounts: mounts.to_path_buf(),
            images,
            mounted: BTreeMap::new(),
            pulled_root: PathBuf::from(PULLED),
            pulled: BTreeMap::new(),
        })
    }

    /// Uses `root` as the pulled store (tests).
    pub fn with_pulled_root(mut self, root: &Path) -> ImageStore {
        self.pulled_root = root.to_path_buf();
        self
    }

    pub fn pulled_root(&self) -> &Path {
        &self.pulled_root
    }

    /// Whether `name` is an image of the initramfs (not one to pull).
    pub fn is_baked(&self, name: &str) -> bool {
        self.images.contains_key(name)
    }

    /// A baked image, or one pulled already (its record and config read from the store).
    pub fn find(&mut self, name: &str) -> Option<&Image> {
        if self.images.contains_key(name) {
            return self.images.get(name);
        }
        if !self.pulled.contains_key(name) {
            let img = self.read_pulled(name).ok()?;
            self.pulled.insert(name.to_string(), img);
        }
        self.pulled.get(name)
    }

    /// Forgets what was read of a pulled image (it was pulled again).
    pub fn forget_pulled(&mut self, name: &str) {
        self.pulled.remove(name);
    }

    fn read_pulled(&self, name: &str) -> Result<Image, String> {
        let r = ros_registry::Reference::parse(name)?;
        let canonical = r.to_string();
        let rec_path = self
            .pulled_root
            .join("refs")
            .join(ros_registry::record::ref_file(&canonical));
        let rec: ros_registry::ImageRecord = layout::read(&rec_path)?;
        let cfg = ros_registry::Digest::parse(&rec.config)?;
        let config: layout::Config = layout::read(
            &self
                .pulled_root
                .join("blobs")
                .join(&cfg.algorithm)
                .join(&cfg.hex),
        )?;
        let layers = rec
            .layers
            .iter()
            .map(|l| {
                let d = ros_registry::Digest::parse(l)?;
                let dir = self
                    .pulled_root
                    .join("layers")
                    .join(&d.algorithm)
                    .join(&d.hex);
                if dir.is_dir() {
                    Ok(dir.display().to_string())
                } else {
                    Err(format!(
                        "layer {l} of {canonical} is missing from the store"
                    ))
                }
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Image::new(
            canonical,
            layers,
            config.config.unwrap_or_default(),
        ))
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
            .find(name)
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
        // A pulled image's layers are folders of the pulled store already.
        if hex.starts_with('/') {
            return Ok(PathBuf::from(hex));
        }
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
    #[test]
    fn the_memory_store_is_a_capped_tmpfs_and_a_failure_names_it() {
        let sys = crate::platform::sys::Recorder::default();
        let _ = memory_store(&sys);
        assert!(
            sys.calls()
                .iter()
                .any(|c| c.contains("tmpfs") && c.contains(PULLED) && c.contains("size=25%")),
            "{:?}",
            sys.calls()
        );
        let sys = crate::platform::sys::Recorder::failing(&["mount tmpfs"]);
        let e = memory_store(&sys).expect_err("fails");
        assert!(e.contains("mounting a tmpfs on /var/lib/ros/images"), "{e}");
    }

    use super::*;

    #[test]
    fn loop_structs_have_the_kernel_sizes() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    /// Writes `json` as a blob of `root`'s layout; returns its digest.
    fn put(root: &Path, name: &str, json: &str) -> String {
        let hex = format!("{:0>64}", name);
        let dir = root.join("oci/blobs/sha256");
        std::fs::create_dir_all(&dir).expect("blobs");
        std::fs::write(dir.join(&hex), json).expect("blob");
        format!("sha256:{hex}")
    }

    fn layout(root: &Path, manifest_digest: &str) {
        std::fs::write(
            root.join("oci/index.json"),
            format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":1,"annotations":{{"org.opencontainers.image.ref.name":"app"}}}},{{"digest":"sha256:ab","size":1}}]}}"#
            ),
        )
        .expect("index");
    }

    #[test]
    fn reads_what_the_store_needs_and_skips_the_rest() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path();
        let config = put(
            root,
            "c0",
            r#"{"architecture":"amd64","os":"linux","history":[{"created_by":"x"}],
               "config":{"Entrypoint":["/bin/app"],"Cmd":["-v"],"Env":["A=1"],"WorkingDir":"","Labels":{"k":"v"}},
               "rootfs":{"type":"layers","diff_ids":["sha256:11","sha256:22"]}}"#,
        );
        let manifest = put(
            root,
            "d0",
            &format!(
                r#"{{"schemaVersion":2,"config":{{"digest":"{config}","size":1}},"layers":[]}}"#
            ),
        );
        layout(root, &manifest);
        let s = ImageStore::open(root, Path::new("/nonexistent")).expect("open");
        // The descriptor without a name is not an image.
        assert_eq!(s.names().into_iter().collect::<Vec<_>>(), ["app"]);
        let app = s.get("app").expect("app");
        assert_eq!(app.layers, ["11", "22"]);
        assert_eq!(app.entrypoint, ["/bin/app"]);
        assert_eq!(app.cmd, ["-v"]);
        assert_eq!(app.env, ["A=1"]);
        // An empty working directory is the root, as for a missing one.
        assert_eq!(app.working_dir, "/");

        // A config whose `config` is null: no entrypoint, no command.
        let bare = put(
            root,
            "b",
            r#"{"config":null,"rootfs":{"type":"layers","diff_ids":[]}}"#,
        );
        let manifest = put(
            root,
            "e0",
            &format!(r#"{{"schemaVersion":2,"config":{{"digest":"{bare}","size":1}}}}"#),
        );
        layout(root, &manifest);
        let s = ImageStore::open(root, Path::new("/nonexistent")).expect("open");
        let app = s.get("app").expect("app");
        assert!(app.entrypoint.is_empty() && app.cmd.is_empty() && app.layers.is_empty());
    }

    #[test]
    fn a_digest_is_never_a_path() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path();
        std::fs::create_dir_all(root.join("oci")).expect("oci");
        for bad in [
            "sha256:../../etc/passwd",
            "../x:ab",
            "sha256:",
            "sha256",
            ":ab",
            "SHA256:ab",
        ] {
            layout(root, bad);
            let e = ImageStore::open(root, Path::new("/nonexistent")).expect_err(bad);
            assert!(e.contains("is not a digest"), "{bad}: {e}");
        }
        // A missing or broken file names itself.
        layout(root, "sha256:0f");
        let e = ImageStore::open(root, Path::new("/nonexistent")).expect_err("missing");
        assert!(e.contains("image app: manifest") && e.contains("0f"), "{e}");
        std::fs::write(root.join("oci/index.json"), "{").expect("index");
        let e = ImageStore::open(root, Path::new("/nonexistent")).expect_err("broken");
        assert!(
            e.contains("reading the image index") && e.contains("index.json"),
            "{e}"
        );
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
