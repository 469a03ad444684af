//! `ros-bench services`: many containers started by the supervisor, and `ros-bench storage`:
//! the service images' layers kept as erofs images against plain folders in the initramfs.
//! Both boot real images in QEMU, alternating the measured boot with its baseline.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use ros_image::{Arch, BuildOptions, InitKind, images::LayerStore};
use ros_qemu::BootConfig;
use serde_json::Value;

use crate::median;

const READY: Duration = Duration::from_secs(600);

/// What one boot's ready line says that these benchmarks use.
#[derive(Debug, Default)]
struct Boot {
    init_start: Vec<f64>,
    ready: Vec<f64>,
    services_phase: Vec<f64>,
    rss_kib: Vec<f64>,
    available_kib: Vec<f64>,
    running: Vec<f64>,
}

impl Boot {
    fn add(&mut self, r: &Value) -> Result<()> {
        let phase = |name: &str| -> Option<f64> {
            r["timeline"]
                .as_array()?
                .iter()
                .find(|p| p["phase"] == name)
                .and_then(|p| Some(p["end_ms"].as_f64()? - p["start_ms"].as_f64()?))
        };
        self.init_start.push(
            r["timeline"][0]["start_ms"]
                .as_f64()
                .context("no timeline")?,
        );
        self.ready
            .push(r["uptime_ms"].as_f64().context("no uptime")?);
        self.services_phase
            .push(phase("services").context("no services phase")?);
        self.rss_kib
            .push(r["init"]["rss_kib"].as_f64().context("no init rss")?);
        self.available_kib.push(
            r["memory"]["available_kib"]
                .as_f64()
                .context("no available memory")?,
        );
        let running = r["services"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|s| s["state"] == "running").count());
        self.running.push(running as f64);
        Ok(())
    }
}

fn boot_once(cfg: &BootConfig) -> Result<Value> {
    let mut g = ros_qemu::Guest::spawn(cfg)?;
    let ready = g.wait_ready(READY)?;
    // The report is taken at the ready line; a clean poweroff is not part of the measure.
    g.kill();
    Ok(ready)
}

/// User-data defining `n` services that each run `sleep` in their own container (all
/// namespaces new, the busybox image as a read-only overlay lower layer).
fn many_services(n: usize) -> Result<tempfile::NamedTempFile> {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile()?;
    for i in 0..n {
        writeln!(
            f,
            "[services.s{i:03}]\nimage = \"busybox\"\ncommand = [\"sleep\", \"86400\"]\n"
        )?;
    }
    f.flush()?;
    Ok(f)
}

pub fn many(arch: Arch, count: usize, runs: usize, memory_mib: u32) -> Result<()> {
    let image = ros_tests::image(arch)?;
    let ud = many_services(count)?;
    let base_cfg = BootConfig {
        image,
        memory_mib,
        ..BootConfig::new(arch)
    };
    let many_cfg = BootConfig {
        user_data: Some(ud.path().to_path_buf()),
        ..base_cfg.clone()
    };
    let (mut base, mut many) = (Boot::default(), Boot::default());
    let mut err = std::io::stderr().lock();
    for i in 0..runs {
        base.add(&boot_once(&base_cfg)?)?;
        let r = boot_once(&many_cfg)?;
        many.add(&r)?;
        let _ = writeln!(
            err,
            "run {}/{runs}: baseline services phase {:.0} ms; with {count} more: {:.0} ms, {} running",
            i + 1,
            base.services_phase[i],
            many.services_phase[i],
            many.running[i]
        );
    }
    let (b_run, m_run) = (median(&base.running), median(&many.running));
    ensure!(
        (m_run - b_run) as usize == count,
        "only {} of the {count} services were running at the ready line",
        m_run - b_run
    );
    let (bp, mp) = (median(&base.services_phase), median(&many.services_phase));
    let (br, mr) = (median(&base.rss_kib), median(&many.rss_kib));
    let (ba, ma) = (median(&base.available_kib), median(&many.available_kib));
    let n = count as f64;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "services benchmark: {arch}, QEMU TCG, 1 vCPU, {memory_mib} MiB, {runs} runs each, medians"
    )?;
    writeln!(
        out,
        "  baseline (the {b_run:.0} default services): services phase {bp:6.0} ms, init RSS {br:6.0} KiB, MemAvailable {:6.0} MiB",
        ba / 1024.0
    )?;
    writeln!(
        out,
        "  with {count} more containers:          services phase {mp:6.0} ms, init RSS {mr:6.0} KiB, MemAvailable {:6.0} MiB",
        ma / 1024.0
    )?;
    writeln!(
        out,
        "  all {count} running {:.2} s after the phase began; {:.1} ms per container (phase difference / {count})",
        mp / 1000.0,
        (mp - bp) / n
    )?;
    writeln!(
        out,
        "  init memory per supervised container: {:.1} KiB (RSS difference / {count})",
        (mr - br) / n
    )?;
    writeln!(
        out,
        "  whole machine per container (kernel objects, shim, sleep): {:.0} KiB (MemAvailable difference / {count})",
        (ba - ma) / n
    )?;
    Ok(())
}

pub fn storage(arch: Arch, runs: usize) -> Result<()> {
    let tree_dir = ros_tests::image(arch)?;
    let erofs_dir = tree_dir.with_file_name(format!("{}-erofs", arch.name()));
    let erofs = ros_image::build(&BuildOptions {
        arch,
        out: erofs_dir.clone(),
        refresh_kernel: false,
        init: InitKind::Ros,
        quiet: true,
        layer_store: LayerStore::Erofs,
        user_data: None,
    })?;
    let tree: ros_image::Manifest =
        serde_json::from_slice(&std::fs::read(tree_dir.join("manifest.json"))?)
            .context("reading manifest.json")?;
    if erofs.layer_store != "erofs" || tree.layer_store != "tree" {
        bail!(
            "unexpected layer stores: {} and {}",
            erofs.layer_store,
            tree.layer_store
        );
    }
    let cfg = |image| BootConfig {
        image,
        ..BootConfig::new(arch)
    };
    let (e_cfg, t_cfg) = (cfg(erofs_dir), cfg(tree_dir));
    let (mut e, mut t) = (Boot::default(), Boot::default());
    let mut err = std::io::stderr().lock();
    for i in 0..runs {
        e.add(&boot_once(&e_cfg)?)?;
        t.add(&boot_once(&t_cfg)?)?;
        let _ = writeln!(
            err,
            "run {}/{runs}: erofs init at {:.0} ms, services {:.0} ms; tree init at {:.0} ms, services {:.0} ms",
            i + 1,
            e.init_start[i],
            e.services_phase[i],
            t.init_start[i],
            t.services_phase[i]
        );
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "image storage benchmark: {arch}, QEMU TCG, 1 vCPU, 512 MiB, {runs} runs each, medians"
    )?;
    writeln!(
        out,
        "  {:<6} {:>14} {:>12} {:>14} {:>16} {:>10} {:>16}",
        "store",
        "initramfs KiB",
        "images KiB",
        "init start ms",
        "services ms",
        "ready ms",
        "MemAvailable MiB"
    )?;
    for (name, m, b) in [("erofs", &erofs, &e), ("tree", &tree, &t)] {
        writeln!(
            out,
            "  {:<6} {:>14} {:>12} {:>14.0} {:>16.0} {:>10.0} {:>16.1}",
            name,
            m.initramfs_bytes / 1024,
            m.images_bytes / 1024,
            median(&b.init_start),
            median(&b.services_phase),
            median(&b.ready),
            median(&b.available_kib) / 1024.0
        )?;
    }
    Ok(())
}
