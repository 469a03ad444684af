//! The system-service images: built from `system-services/images.toml` for one architecture
//! into an OCI image layout (`<out>/oci`: uncompressed tar layers, configs, manifests, an index
//! naming each image), and a layer store for the boot: each layer as a plain folder (the
//! default; an overlay's lower layer as it is) or as an erofs image
//! (`<out>/layers/<digest>.erofs`, loop-mounted read-only at boot), see [`LayerStore`].
//!
//! Layers are staged as folders and packed with fixed times and owners, so the same inputs give
//! the same digests; an erofs image already made for a digest is reused.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use oci_spec::image::{
    ConfigBuilder, DescriptorBuilder, Digest, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, RootFsBuilder,
};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::Arch;
use crate::apt::Apt;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Recipes {
    layers: BTreeMap<String, LayerRecipe>,
    images: BTreeMap<String, ImageRecipe>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerRecipe {
    #[serde(default)]
    debian: Vec<String>,
    #[serde(default)]
    copy: Vec<String>,
    #[serde(default)]
    binaries: Vec<String>,
    busybox_links: Option<String>,
    dir: Option<String>,
    #[serde(default)]
    dirs: Vec<String>,
    #[serde(default)]
    rust: Vec<String>,
    /// The C library and its dynamic loader (from `libc6`), for layers above to share.
    #[serde(default)]
    libc: bool,
    /// Packages whose files the binaries' closure leaves out, because a lower layer has them.
    #[serde(default)]
    skip: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageRecipe {
    layers: Vec<String>,
    #[serde(default)]
    entrypoint: Vec<String>,
    #[serde(default)]
    cmd: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    working_dir: Option<String>,
}

/// How layers are kept in the initramfs. Folders are the default: measured against erofs
/// images (BENCHMARKS.md, "Image storage") they make a smaller initramfs (gzip compresses the
/// files better than it compresses lz4 images), a shorter services phase (no loop devices, no
/// `loop` and `erofs` modules to load) and cost the same memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LayerStore {
    /// An erofs image per layer, loop-mounted read-only at boot.
    Erofs,
    /// A plain folder per layer, used as it is.
    Tree,
}

/// A built layer.
#[derive(Debug, Clone)]
pub struct Layer {
    pub name: String,
    /// `sha256:<hex>` of its tar (the OCI diff_id and, uncompressed, its blob digest).
    pub digest: String,
    pub staged: PathBuf,
    pub tar_bytes: u64,
    /// Its erofs image, when the store keeps them.
    pub erofs: Option<PathBuf>,
}

impl Layer {
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
}

/// What an image build produced.
#[derive(Debug)]
pub struct Built {
    pub layers: Vec<Layer>,
    pub images: Vec<String>,
    pub oci: PathBuf,
    /// Blobs of the OCI layout that the init reads (configs and manifests), with the index.
    pub metadata_blobs: Vec<PathBuf>,
}

fn triplet(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "x86_64-linux-gnu",
        Arch::Aarch64 => "aarch64-linux-gnu",
    }
}

/// The C library, its loader, and the loader's path as programs name it (`PT_INTERP`).
fn libc_files(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::X86_64 => &[
            "lib/x86_64-linux-gnu/libc.so.6",
            "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            "lib64/ld-linux-x86-64.so.2",
        ],
        Arch::Aarch64 => &[
            "lib/aarch64-linux-gnu/libc.so.6",
            "lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
            "lib/ld-linux-aarch64.so.1",
        ],
    }
}

fn copy_into(src_root: &Path, rel: &Path, dest_root: &Path) -> Result<()> {
    let src = src_root.join(rel);
    let dst = dest_root.join(rel);
    if let Some(p) = dst.parent() {
        std::fs::create_dir_all(p)?;
    }
    let meta =
        std::fs::symlink_metadata(&src).with_context(|| format!("{} is missing", src.display()))?;
    if dst.symlink_metadata().is_ok() {
        return Ok(());
    }
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
    } else {
        std::fs::copy(&src, &dst)?;
        std::fs::set_permissions(
            &dst,
            std::fs::Permissions::from_mode(meta.permissions().mode() & 0o7777),
        )?;
    }
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let e = e?;
        let meta = std::fs::symlink_metadata(e.path())?;
        let to = dst.join(e.file_name());
        if meta.is_dir() {
            copy_tree(&e.path(), &to)?;
            std::fs::set_permissions(
                &to,
                std::fs::Permissions::from_mode(meta.permissions().mode() & 0o7777),
            )?;
        } else {
            copy_into(src, Path::new(&e.file_name()), dst)?;
        }
    }
    Ok(())
}

/// The applets of a busybox binary, from `busybox --list` run on this host: an x86_64 host
/// cannot run an arm64 busybox, so the list of the same Debian package for amd64 serves both
/// (Debian builds busybox-static with one configuration for every architecture).
fn busybox_applets(cache: &Path) -> Result<Vec<String>> {
    let apt = Apt::new(cache, Arch::X86_64)?;
    let tree = apt.unpacked("busybox-static")?;
    let out = Command::new(tree.join("bin/busybox"))
        .arg("--list")
        .output()?;
    if !out.status.success() {
        bail!("busybox --list failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
        .map(str::to_string)
        .collect())
}

fn stage_layer(
    arch: Arch,
    cache: &Path,
    repo: &Path,
    name: &str,
    r: &LayerRecipe,
    dir: &Path,
    quiet: bool,
) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let apt = Apt::new(cache, arch)?;
    let trees: Vec<PathBuf> = r
        .debian
        .iter()
        .map(|p| apt.unpacked(p))
        .collect::<Result<_>>()?;
    for c in &r.copy {
        let tree = trees
            .iter()
            .find(|t| t.join(c).symlink_metadata().is_ok())
            .with_context(|| format!("layer {name}: no package has {c}"))?;
        copy_into(tree, Path::new(c), dir)?;
    }
    if !r.binaries.is_empty() {
        let bins: Vec<PathBuf> = r
            .binaries
            .iter()
            .map(|b| {
                trees
                    .iter()
                    .map(|t| t.join(b))
                    .find(|p| p.exists())
                    .with_context(|| format!("layer {name}: no package has {b}"))
            })
            .collect::<Result<_>>()?;
        for b in &r.binaries {
            let tree = trees
                .iter()
                .find(|t| t.join(b).exists())
                .context("binary")?;
            copy_into(tree, Path::new(b), dir)?;
        }
        let skipped: Vec<PathBuf> = r
            .skip
            .iter()
            .map(|p| apt.unpacked(p))
            .collect::<Result<_>>()?;
        for rel in crate::elf::closure(&bins, &trees, triplet(arch))? {
            if skipped
                .iter()
                .any(|t| t.join(&rel).symlink_metadata().is_ok())
            {
                continue;
            }
            let tree = trees
                .iter()
                .find(|t| t.join(&rel).symlink_metadata().is_ok())
                .with_context(|| format!("layer {name}: {} is in no package", rel.display()))?;
            copy_into(tree, &rel, dir)?;
        }
    }
    if r.libc {
        let tree = apt.unpacked("libc6")?;
        for rel in libc_files(arch) {
            copy_into(&tree, Path::new(rel), dir)
                .with_context(|| format!("layer {name}: {rel}"))?;
        }
    }
    if let Some(bb) = &r.busybox_links {
        let bin = Path::new(bb)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let target = Path::new(bb).file_name().context("busybox path")?;
        for applet in busybox_applets(cache)? {
            let link = dir.join(&bin).join(&applet);
            if link.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(target, link)?;
            }
        }
    }
    for d in &r.dirs {
        let (path, mode) = match d.split_once(':') {
            Some((p, m)) => (
                p,
                u32::from_str_radix(m, 8).with_context(|| format!("layer {name}: mode of {d}"))?,
            ),
            None => (d.as_str(), 0o755),
        };
        let full = dir.join(path);
        std::fs::create_dir_all(&full)?;
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode))?;
    }
    if let Some(d) = &r.dir {
        copy_tree(&repo.join("system-services").join(d), dir)?;
    }
    for entry in &r.rust {
        // `package` or `package:binary`.
        let (pkg, bin) = entry.split_once(':').unwrap_or((entry, entry));
        let built = crate::cargo_build(arch, pkg, bin, quiet)?;
        let to = dir.join("usr/bin").join(bin);
        std::fs::create_dir_all(to.parent().context("usr/bin")?)?;
        std::fs::copy(&built, &to)?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Every path under `dir`, sorted, relative.
fn walk(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir.join(rel))?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let r = rel.join(e.file_name());
        out.push(r.clone());
        if std::fs::symlink_metadata(e.path())?.is_dir() {
            walk(dir, &r, out)?;
        }
    }
    Ok(())
}

/// The layer as a tar with fixed times and owners; same tree, same bytes.
pub fn tar_layer(dir: &Path) -> Result<Vec<u8>> {
    let mut paths = Vec::new();
    walk(dir, Path::new(""), &mut paths)?;
    let mut b = tar::Builder::new(Vec::new());
    for rel in paths {
        let full = dir.join(&rel);
        let meta = std::fs::symlink_metadata(&full)?;
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mode(meta.permissions().mode() & 0o7777);
        if meta.file_type().is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, &rel, std::fs::read_link(&full)?)?;
        } else if meta.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, &rel, std::io::empty())?;
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            let data = std::fs::read(&full)?;
            h.set_size(data.len() as u64);
            b.append_data(&mut h, &rel, data.as_slice())?;
        }
    }
    Ok(b.into_inner()?)
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn write_blob(oci: &Path, data: &[u8]) -> Result<(String, u64)> {
    let hex = sha256_hex(data);
    let path = oci.join("blobs/sha256").join(&hex);
    if std::fs::read(&path).ok().as_deref() != Some(data) {
        std::fs::create_dir_all(oci.join("blobs/sha256"))?;
        std::fs::write(&path, data)?;
    }
    Ok((format!("sha256:{hex}"), data.len() as u64))
}

/// The erofs image of a staged layer, reproducible (fixed times, owners and UUID).
fn mkfs_erofs(staged: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        return Ok(());
    }
    let tmp = out.with_extension("tmp");
    let status = Command::new("mkfs.erofs")
        .args([
            "-zlz4hc",
            "-T0",
            "--all-root",
            "-U",
            "00000000-0000-0000-0000-000000000000",
            "--quiet",
        ])
        .arg(&tmp)
        .arg(staged)
        .status()
        .context("cannot run mkfs.erofs (apt-get install erofs-utils)")?;
    if !status.success() {
        bail!("mkfs.erofs {} failed", staged.display());
    }
    std::fs::rename(&tmp, out)?;
    Ok(())
}

fn oci_arch(arch: Arch) -> oci_spec::image::Arch {
    match arch {
        Arch::X86_64 => oci_spec::image::Arch::Amd64,
        Arch::Aarch64 => oci_spec::image::Arch::ARM64,
    }
}

/// Builds every image of `repo/system-services/images.toml` for `arch` under `out`.
pub fn build(
    arch: Arch,
    cache: &Path,
    repo: &Path,
    out: &Path,
    layer_store: LayerStore,
    quiet: bool,
) -> Result<Built> {
    let text = std::fs::read_to_string(repo.join("system-services/images.toml"))?;
    let recipes: Recipes = toml::from_str(&text).context("system-services/images.toml")?;
    let oci = out.join("oci");
    let store = out.join("layers");
    std::fs::create_dir_all(&store)?;
    let mut layers: BTreeMap<String, Layer> = BTreeMap::new();
    for (name, recipe) in &recipes.layers {
        crate::progress(&format!("layer {name}"));
        let staged = out.join("staging").join(name);
        stage_layer(arch, cache, repo, name, recipe, &staged, quiet)?;
        let tar = tar_layer(&staged)?;
        let (digest, size) = write_blob(&oci, &tar)?;
        let hex = digest.trim_start_matches("sha256:").to_string();
        let erofs = match layer_store {
            LayerStore::Erofs => {
                let file = store.join(format!("{hex}.erofs"));
                mkfs_erofs(&staged, &file)?;
                Some(file)
            }
            LayerStore::Tree => None,
        };
        layers.insert(
            name.clone(),
            Layer {
                name: name.clone(),
                digest,
                staged,
                tar_bytes: size,
                erofs,
            },
        );
    }
    let mut descriptors = Vec::new();
    let mut metadata_blobs = Vec::new();
    for (name, img) in &recipes.images {
        let ls: Vec<&Layer> = img
            .layers
            .iter()
            .map(|l| {
                layers
                    .get(l)
                    .with_context(|| format!("image {name}: no layer `{l}`"))
            })
            .collect::<Result<_>>()?;
        let mut cfg = ConfigBuilder::default();
        if !img.entrypoint.is_empty() {
            cfg = cfg.entrypoint(img.entrypoint.clone());
        }
        if !img.cmd.is_empty() {
            cfg = cfg.cmd(img.cmd.clone());
        }
        let env = if img.env.is_empty() {
            vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()]
        } else {
            img.env.clone()
        };
        cfg = cfg
            .env(env)
            .working_dir(img.working_dir.clone().unwrap_or_else(|| "/".into()));
        let config = ImageConfigurationBuilder::default()
            .architecture(oci_arch(arch))
            .os(oci_spec::image::Os::Linux)
            .config(cfg.build()?)
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(ls.iter().map(|l| l.digest.clone()).collect::<Vec<_>>())
                    .build()?,
            )
            .build()?;
        let (cdigest, csize) = write_blob(&oci, &serde_json::to_vec(&config)?)?;
        let layer_descs = ls
            .iter()
            .map(|l| {
                DescriptorBuilder::default()
                    .media_type(MediaType::ImageLayer)
                    .digest(Digest::try_from(l.digest.as_str())?)
                    .size(l.tar_bytes)
                    .build()
                    .map_err(anyhow::Error::from)
            })
            .collect::<Result<Vec<_>>>()?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(
                DescriptorBuilder::default()
                    .media_type(MediaType::ImageConfig)
                    .digest(Digest::try_from(cdigest.as_str())?)
                    .size(csize)
                    .build()?,
            )
            .layers(layer_descs)
            .build()?;
        let (mdigest, msize) = write_blob(&oci, &serde_json::to_vec(&manifest)?)?;
        for d in [&cdigest, &mdigest] {
            metadata_blobs.push(
                oci.join("blobs/sha256")
                    .join(d.trim_start_matches("sha256:")),
            );
        }
        descriptors.push(
            DescriptorBuilder::default()
                .media_type(MediaType::ImageManifest)
                .digest(Digest::try_from(mdigest.as_str())?)
                .size(msize)
                .annotations(
                    [(
                        "org.opencontainers.image.ref.name".to_string(),
                        name.clone(),
                    )]
                    .into_iter()
                    .collect::<std::collections::HashMap<_, _>>(),
                )
                .build()?,
        );
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(descriptors)
        .build()?;
    std::fs::write(oci.join("index.json"), serde_json::to_vec(&index)?)?;
    let mut f = std::fs::File::create(oci.join("oci-layout"))?;
    f.write_all(br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(Built {
        layers: layers.into_values().collect(),
        images: recipes.images.keys().cloned().collect(),
        oci,
        metadata_blobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_layers_are_reproducible() {
        let a = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(a.path().join("usr/bin")).expect("mkdir");
        std::fs::write(a.path().join("usr/bin/x"), b"x").expect("w");
        std::os::unix::fs::symlink("x", a.path().join("usr/bin/y")).expect("ln");
        let t1 = tar_layer(a.path()).expect("tar");
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(a.path().join("usr/bin/x"), b"x").expect("rewrite changes the mtime");
        let t2 = tar_layer(a.path()).expect("tar");
        assert_eq!(t1, t2);
        let mut ar = tar::Archive::new(t1.as_slice());
        let names: Vec<String> = ar
            .entries()
            .expect("entries")
            .map(|e| e.expect("e").path().expect("p").display().to_string())
            .collect();
        assert_eq!(names, ["usr", "usr/bin", "usr/bin/x", "usr/bin/y"]);
    }
}
