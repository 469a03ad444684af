//! `peer --arch A [--runs N]`: ros's boot against a busybox shell doing the same job as PID 1
//! (`tests/shell-peer/init`): the same kernel, the same initramfs (the shell's is ros's with a
//! small archive appended that replaces `/init`, adds `/bin` and busybox's module files), the
//! same QEMU command line. Runs alternate; each phase's median is printed side by side, and
//! start-to-ready as a ratio (the goal: ros at or under 1.0x the shell).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use ros_image::Arch;
use ros_image::cpio::Archive;
use ros_qemu::{BootConfig, Guest};

use crate::median;

const PEER_INIT: &str = include_str!("../../../shell-peer/init");
const PEER_DHCP: &str = include_str!("../../../shell-peer/dhcp");
const READY: &str = "shell-peer: ready ";

/// The modules ros loads only after its ready line (init/src/boot: AFTER_READY); the shell
/// holds them back the same way, with busybox modprobe's blacklist.
const AFTER_READY: &[&str] = &["button", "evdev", "virtio_console"];

/// The phases both report, in boot order (ros's `state`, `config` and `datasource` have no
/// counterpart in the shell, which reads no user-data).
const PHASES: &[&str] = &[
    "start", "mounts", "modules", "state", "config", "system", "network", "services", "ready",
];

/// Builds `initramfs-shell.img` next to ros's image: ros's initramfs with the shell peer's
/// archive appended (the kernel unpacks both; a later entry replaces an earlier one).
fn shell_initramfs(image: &Path, arch: Arch) -> Result<PathBuf> {
    let kernel = ros_image::kernel::fetch(arch, &ros_image::cache_dir(), false)?;
    let sel = ros_image::modules::select(
        &kernel.modules_dir,
        &kernel.release,
        ros_image::modules::IMAGE_MODULES,
    )?;
    let index = &sel.index;
    // busybox modprobe's files: modules.dep (each module's dependencies, the last to load
    // first) and modules.alias.
    let mut dep = String::new();
    for m in index.modules.values() {
        let (order, _) = index.load_order([m.name.as_str()]);
        let deps: Vec<&str> = order
            .iter()
            .rev()
            .filter(|d| d.name != m.name)
            .map(|d| d.path.as_str())
            .collect();
        dep.push_str(&format!("{}: {}\n", m.path, deps.join(" ")));
    }
    let alias: String = index
        .aliases
        .iter()
        .map(|(name, glob)| format!("alias {glob} {name}\n"))
        .collect();
    let blacklist: String = AFTER_READY
        .iter()
        .map(|m| format!("blacklist {m}\n"))
        .collect();

    let mut a = Archive::default();
    a.file("init", 0o755, PEER_INIT.as_bytes().to_vec());
    ros_tests::busybox_bin(image, &mut a)?;
    a.dir("shell-peer", 0o755);
    a.file("shell-peer/dhcp", 0o755, PEER_DHCP.as_bytes().to_vec());
    a.dir("etc", 0o755);
    a.dir("etc/modprobe.d", 0o755);
    a.file("etc/modprobe.d/ros.conf", 0o644, blacklist.into_bytes());
    let base = format!("lib/modules/{}", kernel.release);
    a.file(&format!("{base}/modules.dep"), 0o644, dep.into_bytes());
    a.file(&format!("{base}/modules.alias"), 0o644, alias.into_bytes());

    let out = image.join("initramfs-shell.img");
    ros_tests::append_initramfs(image, &a, &out)?;
    Ok(out)
}

#[derive(Default)]
struct Side {
    /// Per phase, in PHASES order: durations (ms).
    phases: Vec<Vec<f64>>,
    span: Vec<f64>,
    init_start: Vec<f64>,
    ready: Vec<f64>,
}

impl Side {
    fn push(&mut self, phase: &str, ms: f64) {
        if self.phases.len() < PHASES.len() {
            self.phases.resize(PHASES.len(), Vec::new());
        }
        if let Some(i) = PHASES.iter().position(|p| *p == phase) {
            self.phases[i].push(ms);
        }
    }
}

/// One boot of the shell; returns the modules it loaded before its ready line.
fn shell_run(cfg: &BootConfig, s: &mut Side) -> Result<Vec<String>> {
    let g = Guest::spawn(cfg)?;
    let line = g
        .wait_for(READY, Duration::from_secs(120))
        .with_context(|| format!("the shell peer did not get ready:\n{}", g.tail(30)))?;
    let (_, json) = line.split_once(READY).unwrap_or_default();
    let r: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("the shell's line: {line}"))?;
    let alive = r["alive"].as_array().map_or(0, Vec::len);
    ensure!(
        alive == 3,
        "the shell's services did not all run: {line}\n{}",
        g.tail(30)
    );
    ensure!(
        r["address"].as_str().is_some_and(|a| !a.is_empty()),
        "the shell got no address: {line}"
    );
    let marks: Vec<(String, f64)> = r["marks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["phase"].as_str()?.to_string(), m["ms"].as_f64()?)))
        .collect();
    ensure!(marks.len() == 7, "the shell's marks: {line}");
    // The shell's start: from PID 1's start (clock ticks) to the first mark (devtmpfs mounted).
    let start = r["init_start_ms"].as_f64().context("no init start")?;
    let mut prev = start;
    for (phase, at) in &marks {
        s.push(phase, at - prev);
        prev = *at;
    }
    for p in ["state", "config"] {
        s.push(p, 0.0);
    }
    s.init_start.push(start);
    s.ready.push(prev);
    s.span.push(prev - start);
    Ok(r["modules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str().map(str::to_string))
        .collect())
}

/// One boot of ros; returns the modules it loaded before its ready line.
fn ros_run(cfg: &BootConfig, s: &mut Side) -> Result<Vec<String>> {
    let g = Guest::spawn(cfg)?;
    let ready = g.wait_ready(Duration::from_secs(120))?;
    let timeline = ready["timeline"].as_array().context("no timeline")?;
    for p in timeline {
        let d = p["end_ms"].as_f64().unwrap_or(0.0) - p["start_ms"].as_f64().unwrap_or(0.0);
        s.push(p["phase"].as_str().unwrap_or("?"), d);
    }
    let start = timeline[0]["start_ms"].as_f64().context("no start")?;
    let up = ready["uptime_ms"].as_f64().context("no uptime")?;
    let running = ready["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["state"] == "running")
        .count();
    ensure!(running == 3, "ros's services did not all run: {ready}");
    s.init_start.push(start);
    s.ready.push(up);
    s.span.push(up - start);
    Ok(ready["modules"]["loaded"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str().map(str::to_string))
        .collect())
}

pub fn bench(arch: Arch, runs: usize) -> Result<()> {
    let image = ros_tests::image(arch)?;
    let shell_img = shell_initramfs(&image, arch)?;
    let ros_cfg = BootConfig {
        image: image.clone(),
        ..BootConfig::new(arch)
    };
    let shell_cfg = BootConfig {
        initramfs: Some(shell_img),
        ..ros_cfg.clone()
    };
    let (mut ros, mut shell) = (Side::default(), Side::default());
    let mut ratios = Vec::new();
    let mut err = std::io::stderr().lock();
    for i in 0..runs {
        let mut shell_mods = shell_run(&shell_cfg, &mut shell)?;
        let mut ros_mods = ros_run(&ros_cfg, &mut ros)?;
        // The same job: the same modules loaded before the ready line.
        shell_mods.sort();
        ros_mods.sort();
        if shell_mods != ros_mods {
            bail!("the shell loaded {shell_mods:?}, ros {ros_mods:?}");
        }
        ratios.push(ros.span[i] / shell.span[i]);
        let _ = writeln!(
            err,
            "run {}/{runs}: shell start to ready {:.0} ms, ros {:.0} ms ({:.2}x)",
            i + 1,
            shell.span[i],
            ros.span[i],
            ratios[i]
        );
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "shell peer: {arch}, QEMU TCG, {runs} runs each, alternating; medians (ms)"
    )?;
    writeln!(out, "  {:<22} {:>8} {:>8}", "", "shell", "ros")?;
    for (i, p) in PHASES.iter().enumerate() {
        let m = |s: &Side| s.phases.get(i).map_or(f64::NAN, |v| median(v));
        writeln!(out, "  {p:<22} {:>8.0} {:>8.0}", m(&shell), m(&ros))?;
    }
    writeln!(
        out,
        "  {:<22} {:>8.0} {:>8.0}",
        "init starts at",
        median(&shell.init_start),
        median(&ros.init_start)
    )?;
    writeln!(
        out,
        "  {:<22} {:>8.0} {:>8.0}",
        "ready at",
        median(&shell.ready),
        median(&ros.ready)
    )?;
    writeln!(
        out,
        "  {:<22} {:>8.0} {:>8.0}",
        "start to ready",
        median(&shell.span),
        median(&ros.span)
    )?;
    writeln!(
        out,
        "  ros / shell, start to ready: {:.2}x (median of per-pair ratios; goal <= 1.0), best pair {:.2}x",
        median(&ratios),
        ratios.iter().copied().fold(f64::INFINITY, f64::min)
    )?;
    Ok(())
}
