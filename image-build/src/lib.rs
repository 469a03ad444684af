//! `ros-image`: turns the workspace and a stock Debian cloud kernel into a bootable ros image: the
//! kernel's `vmlinuz` and a compressed cpio `initramfs` holding the static init, `/dev/console`,
//! the kernel modules the image carries and their index. The same inputs give the same bytes.

pub mod apt;
pub mod cpio;
pub mod elf;
pub mod images;
pub mod kernel;
pub mod modinfo;
pub mod modules;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use cpio::Archive;

/// A target architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    #[value(name = "x86_64")]
    #[serde(rename = "x86_64")]
    X86_64,
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
    /// Debian's name for it.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }
    /// The Rust target the image's binaries are built for.
    pub fn musl_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "x86_64" | "amd64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            _ => Err(format!(
                "unknown architecture `{s}`; expected x86_64 or aarch64"
            )),
        }
    }
}

/// Which init goes into the initramfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitKind {
    /// ros's init, with the kernel modules.
    Ros,
    /// An init that powers off at once (the boot benchmark's baseline); no modules.
    Null,
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub arch: Arch,
    pub out: PathBuf,
    pub refresh_kernel: bool,
    pub init: InitKind,
    /// Build with `cargo --quiet`.
    pub quiet: bool,
    /// How the system-service images' layers are kept in the initramfs.
    pub layer_store: images::LayerStore,
    /// A user-data to bake into the image (`/usr/lib/ros/user-data.toml`, the lowest source);
    /// validated first, and the build fails on any error.
    pub user_data: Option<PathBuf>,
}

/// Where the initramfs keeps the system-service images (read by the init).
pub const IMAGES_DIR: &str = "usr/lib/ros";

/// What a build wrote, also saved as `manifest.json` beside the image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub arch: Arch,
    pub kernel_release: String,
    pub kernel_package_version: String,
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
    pub init_bytes: u64,
    pub modules: usize,
    pub module_bytes: u64,
    pub missing_modules: Vec<String>,
    /// Compressed size of the initramfs.
    pub initramfs_bytes: u64,
    /// Compressed size of the same initramfs without the kernel modules and the images: the
    /// init and what it needs.
    pub initramfs_without_modules_bytes: u64,
    /// The images in the initramfs (layers as stored, plus their metadata), uncompressed.
    pub images_bytes: u64,
    pub layer_store: String,
    pub initramfs_sha256: String,
    /// A digest of everything the initramfs is made from; a build with the same inputs keeps
    /// the initramfs as it is.
    pub inputs_sha256: String,
}

/// The workspace this tool was built from.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where images go by default: `target/ros-image/<arch>`.
pub fn default_out(arch: Arch) -> PathBuf {
    workspace_root().join("target/ros-image").join(arch.name())
}

/// Downloads and caches are kept here, under `target/` so CI caches them with the build.
pub fn cache_dir() -> PathBuf {
    workspace_root().join("target/ros-cache")
}

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Prints a progress line (with seconds since the first one) on stderr.
pub fn progress(what: &str) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "ros-image [{t:6.1}s] {what}");
}

/// Builds an image. An initramfs whose inputs did not change is kept as it is.
pub fn build(opts: &BuildOptions) -> Result<Manifest> {
    let arch = opts.arch;
    progress(&format!(
        "building the {arch} image into {}",
        opts.out.display()
    ));
    let kernel = kernel::fetch(arch, &cache_dir(), opts.refresh_kernel)?;
    progress(&format!(
        "kernel {} ({})",
        kernel.release, kernel.package_version
    ));

    let (package, bin) = match opts.init {
        InitKind::Ros => ("ros-init", "init"),
        InitKind::Null => ("ros-null-init", "null-init"),
    };
    progress(&format!("building {bin} for {}", arch.musl_target()));
    let init_path = cargo_build(arch, package, bin, opts.quiet)?;
    let init =
        std::fs::read(&init_path).with_context(|| format!("reading {}", init_path.display()))?;

    let mut base = Archive::default();
    base_tree(&mut base, init.clone());
    let mut full = base.clone();
    let images_bytes = match opts.init {
        InitKind::Ros => add_images(&mut full, arch, &opts.out, opts.layer_store, opts.quiet)?,
        InitKind::Null => 0,
    };
    if opts.init == InitKind::Ros {
        // The program the init runs to pull an image (crates/ros-registry): HTTP, TLS and
        // decompression stay out of PID 1.
        progress(&format!("building ros-pull for {}", arch.musl_target()));
        let pull = cargo_build(arch, "ros-registry", "ros-pull", opts.quiet)?;
        let bytes = std::fs::read(&pull).with_context(|| format!("reading {}", pull.display()))?;
        full.dir(&format!("{IMAGES_DIR}/bin"), 0o755);
        full.file(
            &format!("{IMAGES_DIR}/bin/ros-pull.gz"),
            0o644,
            compress(&bytes)?,
        );
    }
    if let (InitKind::Ros, Some(p)) = (opts.init, &opts.user_data) {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        // The checks the boot makes (the whole config: the services it makes, their
        // dependencies and images), so a baked config never fails at boot.
        let source = ros_config::Source::new(
            &p.display().to_string(),
            ros_config::Input::Bytes(bytes.clone()),
        );
        let ctx = ros_config::Context::shipped(ros_config::system::Facts::default());
        let errors = ros_config::load(&[source], "", &ctx).errors;
        if !errors.is_empty() {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            bail!("the user-data to bake is not valid:\n{}", list.join("\n"));
        }
        full.file(&format!("{IMAGES_DIR}/user-data.toml"), 0o644, bytes);
    }
    let (modules, module_bytes, missing) = match opts.init {
        InitKind::Ros => {
            let sel =
                modules::select(&kernel.modules_dir, &kernel.release, modules::IMAGE_MODULES)?;
            let bytes = sel.add_to(&mut full)?;
            (sel.index.modules.len(), bytes, sel.missing)
        }
        InitKind::Null => (0, 0, Vec::new()),
    };
    if !missing.is_empty() {
        progress(&format!(
            "this kernel has no {}; left out",
            missing.join(", ")
        ));
    }
    let cpio = full.to_newc();
    let inputs_sha256 = hex(&Sha256::digest(&cpio));

    std::fs::create_dir_all(&opts.out)?;
    let vmlinuz = opts.out.join("vmlinuz");
    copy_if_changed(&kernel.vmlinuz, &vmlinuz)?;
    let (initramfs_name, manifest_name) = match opts.init {
        InitKind::Ros => ("initramfs.img", "manifest.json"),
        InitKind::Null => ("initramfs-null.img", "manifest-null.json"),
    };
    let initramfs = opts.out.join(initramfs_name);
    let manifest_path = opts.out.join(manifest_name);
    let current = std::fs::read(&manifest_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
        .filter(|m| {
            m.inputs_sha256 == inputs_sha256
                && std::fs::read(&initramfs)
                    .is_ok_and(|i| hex(&Sha256::digest(&i)) == m.initramfs_sha256)
        });
    if let Some(m) = current {
        progress("the initramfs is up to date");
        return Ok(m);
    }
    progress(&format!("compressing the initramfs ({modules} modules)"));
    let image = compress(&cpio)?;
    let without_modules = compress(&base.to_newc())?;
    write_if_changed(&initramfs, &image)?;
    let manifest = Manifest {
        arch,
        kernel_release: kernel.release,
        kernel_package_version: kernel.package_version,
        vmlinuz,
        initramfs,
        init_bytes: init.len() as u64,
        modules,
        module_bytes,
        missing_modules: missing,
        initramfs_bytes: image.len() as u64,
        initramfs_without_modules_bytes: without_modules.len() as u64,
        images_bytes,
        layer_store: format!("{:?}", opts.layer_store).to_lowercase(),
        initramfs_sha256: hex(&Sha256::digest(&image)),
        inputs_sha256,
    };
    let json = serde_json::to_string_pretty(&manifest)?;
    write_if_changed(&manifest_path, json.as_bytes())?;
    progress(&format!(
        "done: initramfs {} KiB ({} KiB without modules and service images), init {} KiB",
        manifest.initramfs_bytes / 1024,
        manifest.initramfs_without_modules_bytes / 1024,
        manifest.init_bytes / 1024
    ));
    Ok(manifest)
}

/// Adds the system-service images and service definitions; returns the images' bytes.
fn add_images(
    a: &mut Archive,
    arch: Arch,
    out: &Path,
    store: images::LayerStore,
    quiet: bool,
) -> Result<u64> {
    let repo = workspace_root();
    let built = images::build(arch, &cache_dir(), &repo, out, store, quiet)?;
    let mut bytes = 0u64;
    for l in &built.layers {
        match store {
            images::LayerStore::Erofs => {
                let file = l
                    .erofs
                    .as_ref()
                    .context("an erofs store without erofs images")?;
                let data = std::fs::read(file)?;
                bytes += data.len() as u64;
                a.file(
                    &format!("{IMAGES_DIR}/layers/{}.erofs", l.hex()),
                    0o644,
                    data,
                );
            }
            images::LayerStore::Tree => {
                let prefix = format!("{IMAGES_DIR}/layers/{}", l.hex());
                a.dir(&prefix, 0o755);
                a.add_tree(&prefix, &l.staged)?;
                bytes += dir_bytes(&l.staged);
            }
        }
    }
    for f in ["oci-layout", "index.json"] {
        let data = std::fs::read(built.oci.join(f))?;
        bytes += data.len() as u64;
        a.file(&format!("{IMAGES_DIR}/oci/{f}"), 0o644, data);
    }
    for blob in &built.metadata_blobs {
        let data = std::fs::read(blob)?;
        bytes += data.len() as u64;
        let name = blob
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        a.file(
            &format!("{IMAGES_DIR}/oci/blobs/sha256/{name}"),
            0o644,
            data,
        );
    }
    progress(&format!(
        "images: {} ({} layers, {} KiB)",
        built.images.join(", "),
        built.layers.len(),
        bytes / 1024
    ));
    Ok(bytes)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| match std::fs::symlink_metadata(e.path()) {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) if m.is_file() => m.len(),
                    _ => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The part of the initramfs that is not modules.
fn base_tree(a: &mut Archive, init: Vec<u8>) {
    a.file("init", 0o755, init);
    a.char_dev("dev/console", 0o600, 5, 1);
    for d in ["proc", "sys", "run", "tmp", "etc", "root", "var"] {
        a.dir(d, if d == "tmp" { 0o1777 } else { 0o755 });
    }
    let version = env!("CARGO_PKG_VERSION");
    a.file(
        "etc/os-release",
        0o644,
        format!("NAME=ros\nID=ros\nVERSION_ID={version}\nPRETTY_NAME=\"ros {version}\"\nHOME_URL=\"https://example.invalid/ros\"\n")
            .into_bytes(),
    );
}

/// gzip, at the best ratio, with a zero header time (reproducible).
pub fn compress(data: &[u8]) -> Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    enc.write_all(data)?;
    Ok(enc.finish()?)
}

fn write_if_changed(path: &Path, data: &[u8]) -> Result<()> {
    if std::fs::read(path).ok().as_deref() == Some(data) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn copy_if_changed(from: &Path, to: &Path) -> Result<()> {
    let data = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write_if_changed(to, &data)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds a static binary of a workspace package for the image's target; returns its path.
pub fn cargo_build(arch: Arch, package: &str, bin: &str, quiet: bool) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = workspace_root();
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root).args([
        "build",
        "--profile",
        "image",
        "-p",
        package,
        "--bin",
        bin,
        "--target",
        arch.musl_target(),
    ]);
    if quiet {
        cmd.arg("--quiet");
    }
    // A RUSTFLAGS meant for the host must not leak into the image's build.
    cmd.env_remove("RUSTFLAGS");
    let status = cmd.status().context("cannot run cargo")?;
    if !status.success() {
        bail!(
            "building {package} for {} failed ({status}); is the target installed? rustup target add {}",
            arch.musl_target(),
            arch.musl_target()
        );
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target_dir.join(arch.musl_target()).join("image").join(bin))
}
