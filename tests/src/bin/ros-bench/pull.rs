//! `pull [--arch A] [--runs N] [--mib M]`: pulling a multi-layer image (M MiB of layer
//! content, default 72: about 54 MiB compressed) from Debian's docker-registry on the
//! loopback, each tool into a fresh destination, alternating: `ros-pull fetch` (host build,
//! release: the blobs checked and stored, what a pull does before it unpacks) against `skopeo
//! copy` of the same image into an OCI layout; `ros-pull pull` (fetched, then unpacked)
//! against `podman pull`, with `ros-pull`'s peak memory (its own VmHWM, which it reports);
//! then, with `--arch`, the same pull by a guest's service (from the init's "pulling" to its
//! "pulled" log lines).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use ros_image::Arch;
use ros_tests::registry::{Comp, Layout, Registry, RegistryOptions};

use crate::median;

/// Layers: three of incompressible bytes (a quarter of the size each) and one of text files.
fn image(dir: &Path, mib: usize, oci_arch: &str) -> Result<Layout> {
    let mut l = Layout::new(dir)?;
    let mut layers = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let quarter = mib * (1 << 20) / 4;
    for i in 0..3 {
        let mut data = vec![0u8; quarter];
        for chunk in data.chunks_mut(8) {
            // xorshift: bytes gzip cannot shrink.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let b = seed.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        let name = format!("data/blob{i}");
        layers.push((
            Layout::tar(&[("data/", 0o755, b""), (&name, 0o644, &data)])?,
            Comp::Gzip,
        ));
    }
    let text: Vec<(String, Vec<u8>)> = (0..SMALL_FILES)
        .map(|i| {
            (
                format!("etc/file{i}.conf"),
                format!("# file {i}\nkey{i} = value {i}\n")
                    .repeat(quarter / SMALL_FILES / 30 + 1)
                    .into_bytes(),
            )
        })
        .collect();
    let mut entries: Vec<(&str, u32, &[u8])> = vec![("etc/", 0o755, b"")];
    entries.extend(text.iter().map(|(n, d)| (n.as_str(), 0o644, d.as_slice())));
    layers.push((Layout::tar(&entries)?, Comp::Gzip));
    let built = l.image(oci_arch, &layers)?;
    l.tag_image("1", &built, oci_arch)?;
    Ok(l)
}

fn ros_pull() -> Result<std::path::PathBuf> {
    let root = ros_image::workspace_root();
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args([
            "build",
            "-q",
            "--release",
            "-p",
            "ros-registry",
            "--bin",
            "ros-pull",
        ])
        .status()?;
    ensure!(st.success(), "building ros-pull");
    Ok(root.join("target/release/ros-pull"))
}

/// Each run's figures, in seconds (`rss` in KiB).
#[derive(Default)]
struct Figures {
    fetch: Vec<f64>,
    fetch_mem: Vec<f64>,
    skopeo: Vec<f64>,
    skopeo_mem: Vec<f64>,
    pull: Vec<f64>,
    pull_mem: Vec<f64>,
    unpack: Vec<f64>,
    rss: Vec<f64>,
    podman: Vec<f64>,
}

/// How many small files the image's text layer has.
const SMALL_FILES: usize = 2000;

/// Seconds to create that many empty files in a new folder under `dir`.
fn create_files(dir: &Path) -> Result<f64> {
    let d = dir.join("create-test");
    std::fs::create_dir(&d)?;
    nix::unistd::sync();
    let t = Instant::now();
    for i in 0..SMALL_FILES {
        std::fs::File::create(d.join(format!("file{i}")))?;
    }
    let secs = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&d)?;
    Ok(secs)
}

/// Runs `cmd`; (seconds, its stdout). (Not the child's ru_maxrss for memory: a child of a
/// big process starts with the parent's high-water mark; `ros-pull` reports its own VmHWM.)
/// Every tool starts with nothing dirty in the page cache (`sync` first, untimed): a tool
/// that syncs must not pay for what the one before it left unwritten.
fn timed(cmd: &mut Command) -> Result<(f64, String)> {
    nix::unistd::sync();
    let t = Instant::now();
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    let secs = t.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((secs, String::from_utf8_lossy(&out.stdout).into_owned()))
}

pub fn bench(arch: Option<Arch>, runs: usize, mib: usize) -> Result<()> {
    let reg = Registry::start(&RegistryOptions::default())?;
    let t = tempfile::tempdir()?;
    // The image is for the guest's platform (the host's without --arch); the host's ros-pull
    // is told that platform.
    let oci_arch = match arch {
        Some(a) => a.debian(),
        None if cfg!(target_arch = "aarch64") => "arm64",
        None => "amd64",
    };
    let layout = image(&t.path().join("oci"), mib, oci_arch)?;
    reg.push(&layout.dir, "1", "big")?;
    let size: u64 = std::fs::read_dir(layout.dir.join("blobs/sha256"))?
        .flatten()
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let puller = ros_pull()?;
    let regs = t.path().join("registries.json");
    std::fs::write(
        &regs,
        serde_json::json!({"mirrors": {reg.host(): {"endpoints": [format!("http://{}", reg.host())]}}}).to_string(),
    )?;
    let reference = format!("{}/big:1", reg.host());
    // The same clients into a tmpfs too (where a guest without a state disk keeps its
    // images): what the client itself costs, without the disk's.
    let shm = tempfile::tempdir_in("/dev/shm")?;
    let mut m = Figures::default();
    // ros-pull WHAT (fetch or pull) into a store: (seconds, its output); the store removed.
    let ros_pull_into = |what: &str, store: &Path| -> Result<(f64, String)> {
        let r = timed(
            Command::new(&puller)
                .arg("--store")
                .arg(store)
                .arg("--registries")
                .arg(&regs)
                .args(["--platform", &format!("linux/{oci_arch}")])
                .args(["--json", what, &reference]),
        )?;
        std::fs::remove_dir_all(store)?;
        Ok(r)
    };
    let skopeo_into = |dest: &Path| -> Result<f64> {
        let (s, _) = timed(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--src-tls-verify=false"])
                .arg(format!("docker://{reference}"))
                .arg(format!("oci:{}:1", dest.display())),
        )?;
        std::fs::remove_dir_all(dest)?;
        Ok(s)
    };
    // A figure from ros-pull's last JSON line.
    let said = |out: &str, key: &str| -> Result<f64> {
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| v[key].as_f64())
            .with_context(|| format!("ros-pull did not say its {key}"))
    };
    for i in 0..runs {
        let (disk, mem) = (t.path(), shm.path());
        m.fetch_mem
            .push(ros_pull_into("fetch", &mem.join(format!("store{i}")))?.0);
        m.skopeo_mem
            .push(skopeo_into(&mem.join(format!("oci{i}")))?);
        m.fetch
            .push(ros_pull_into("fetch", &disk.join(format!("store{i}")))?.0);
        m.skopeo.push(skopeo_into(&disk.join(format!("oci{i}")))?);
        m.pull_mem
            .push(ros_pull_into("pull", &mem.join(format!("store{i}")))?.0);
        let (s, out) = ros_pull_into("pull", &disk.join(format!("store{i}")))?;
        m.pull.push(s);
        m.unpack.push(said(&out, "unpack_seconds")?);
        m.rss.push(said(&out, "peak_rss_kib")?);
        // An engine's pull, which unpacks too: podman into a storage of its own.
        let root = disk.join(format!("podman{i}"));
        let podman = |args: &[&str]| {
            let mut c = Command::new("podman");
            c.arg("--root")
                .arg(root.join("root"))
                .arg("--runroot")
                .arg(root.join("run"))
                .args(["--storage-driver", "overlay"])
                .args(args);
            c
        };
        let platform = format!("linux/{oci_arch}");
        let (s, _) = timed(&mut podman(&[
            "pull",
            "--quiet",
            "--tls-verify=false",
            "--platform",
            &platform,
            &reference,
        ]))?;
        m.podman.push(s);
        let _ = podman(&["system", "reset", "--force"]).output();
        let _ = std::fs::remove_dir_all(&root);
        eprintln!(
            "run {}/{runs}: fetch: ros-pull {:.2} s, skopeo {:.2} s; pull: ros-pull {:.2} s ({:.2} s unpacking, {:.0} KiB peak), podman {:.2} s",
            i + 1,
            m.fetch[i],
            m.skopeo[i],
            m.pull[i],
            m.unpack[i],
            m.rss[i],
            m.podman[i]
        );
    }
    println!(
        "pull of a {:.1} MiB image (4 layers, gzip; one of {SMALL_FILES} files) from docker-registry on the loopback, {runs} runs each, medians:",
        size as f64 / f64::from(1 << 20)
    );
    let ratio = |a: &[f64], b: &[f64]| median(a) / median(b);
    println!("  fetching (every blob checked against its digest and stored; no unpacking):");
    println!(
        "    to the disk:  ros-pull fetch {:.2} s (each blob synced), skopeo copy to an OCI layout {:.2} s: {:.2}x (goal: no slower)",
        median(&m.fetch),
        median(&m.skopeo),
        ratio(&m.fetch, &m.skopeo)
    );
    println!(
        "    to a tmpfs:   ros-pull fetch {:.2} s, skopeo copy {:.2} s: {:.2}x",
        median(&m.fetch_mem),
        median(&m.skopeo_mem),
        ratio(&m.fetch_mem, &m.skopeo_mem)
    );
    println!("  pulling (fetched, then unpacked for overlayfs):");
    println!(
        "    to the disk:  ros-pull pull {:.2} s ({:.2} s of it unpacking), podman pull {:.2} s: {:.2}x; peak RSS {:.1} MiB (goal: under 16)",
        median(&m.pull),
        median(&m.unpack),
        median(&m.podman),
        ratio(&m.pull, &m.podman),
        median(&m.rss) / 1024.0
    );
    println!(
        "    to a tmpfs:   ros-pull pull {:.2} s",
        median(&m.pull_mem)
    );
    println!(
        "  creating {SMALL_FILES} empty files here: {:.2} s on the disk, {:.2} s in a tmpfs (what any unpacking pays)",
        create_files(t.path())?,
        create_files(shm.path())?
    );

    let Some(arch) = arch else {
        return Ok(());
    };
    // In a guest: a service names the image; the init's log lines time the pull.
    let guest_host = format!("10.0.2.2:{}", reg.port);
    let mut ud = tempfile::Builder::new().suffix(".toml").tempfile()?;
    use std::io::Write;
    write!(
        ud,
        "[registries.mirrors.\"{guest_host}\"]\nendpoints = [\"http://{guest_host}\"]\n[services.big]\nimage = \"{guest_host}/big:1\"\ncommand = [\"/data/none\"]\nrestart = \"no\"\n"
    )?;
    let mut cfg = ros_tests::config(arch)?;
    cfg.user_data = Some(ud.path().to_path_buf());
    cfg.memory_mib = 1024;
    let g = ros_qemu::Guest::spawn(&cfg)?;
    g.wait_ready(ros_tests::READY_TIMEOUT)?;
    let image = format!("{guest_host}/big:1");
    let start = g.wait_for(&format!("image {image}: pulling"), Duration::from_secs(60))?;
    let end = g.wait_for(&format!("image {image}: pulled"), Duration::from_secs(900))?;
    let stamp =
        |l: &str| -> Option<f64> { l.split_once('[')?.1.split_once(']')?.0.trim().parse().ok() };
    let (a, b) = (
        stamp(&start).context("no time")?,
        stamp(&end).context("no time")?,
    );
    println!(
        "  in a {arch} guest (QEMU TCG, 1 vCPU), one run: {:.2} s from the init's \"pulling\" to \"pulled\"",
        b - a
    );
    Ok(())
}
