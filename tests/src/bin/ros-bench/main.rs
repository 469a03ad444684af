//! `ros-bench`: the benchmarks (`runtime`, `boot`, `peer`, `services`, `storage`, `config`, `flood`, `pull`;
//! see BENCHMARKS.md).
//! `boot --arch A [--runs N]`: the boot benchmark. Boots the same kernel, on the same
//! QEMU machine, with ros's init and with a null init that powers off at once, interleaved, and
//! prints the medians: what ros's init costs from its start to the ready line (absolute, and as a
//! share of the boot to ready), what it costs against the null init in all (its bigger initramfs
//! included), the init's memory when ready, and the initramfs sizes.

// A benchmark prints its figures.
#![allow(clippy::print_stdout)]

mod config;
mod flood;
mod kube;
mod peer;
mod pull;
mod runtime;
mod services;
mod store;

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use ros_image::Arch;
use ros_qemu::{BootConfig, Guest};

#[derive(Parser)]
#[command(name = "ros-bench", about = "ros benchmarks")]
enum Cli {
    /// Start latency of a container running /bin/true with ros's runtime, crun and runc, on
    /// the same bundle (needs root).
    Runtime {
        #[arg(long, default_value_t = 50)]
        runs: usize,
    },
    /// Boot time and memory of ros's init against a null init.
    Boot {
        #[arg(long, value_enum)]
        arch: Arch,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// vCPUs of the guests.
        #[arg(long, default_value_t = 1)]
        cpus: u32,
    },
    /// ros's boot against a busybox shell doing the same job as PID 1, phase by phase.
    Peer {
        #[arg(long, value_enum)]
        arch: Arch,
        #[arg(long, default_value_t = 7)]
        runs: usize,
    },
    /// Many containers started by the supervisor in QEMU: time until all run, and memory per
    /// container, against a boot with only the default services.
    Services {
        #[arg(long, value_enum)]
        arch: Arch,
        #[arg(long, default_value_t = 200)]
        count: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Guest memory (MiB), the same for both boots.
        #[arg(long, default_value_t = 1024)]
        memory: u32,
    },
    /// The cluster's embedded store (ros-revlog) against etcd 3.4 on the loopback: writes per
    /// second from concurrent writers, and watch latency.
    Store {
        #[arg(long, default_value_t = 16)]
        writers: usize,
        #[arg(long, default_value_t = 200)]
        writes: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// The cluster's server program on the host: binary sizes, resident memory idle and with
    /// pods and objects, create rate.
    Kube {
        #[arg(long, default_value_t = 100)]
        pods: usize,
        #[arg(long, default_value_t = 1000)]
        objects: usize,
    },
    /// In a QEMU guest serving the cluster: `kubectl apply` of a deployment to all its
    /// replicas Running, and the cluster process's memory with them.
    KubeApply {
        #[arg(long, value_enum)]
        arch: Arch,
        #[arg(long, default_value_t = 30)]
        replicas: u32,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Two QEMU guests, a server and a joined agent: the agent process's memory without pods
    /// and with `--pods` pods, the server's process beside it.
    KubeAgent {
        #[arg(long, value_enum)]
        arch: Arch,
        #[arg(long, default_value_t = 10)]
        pods: u32,
    },
    /// Validating worst-case user-data (up to the 1 MiB cap) on the host, against parsing the
    /// same text with toml_edit alone.
    Config {
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// The service images' layers as erofs images against plain folders (the default) in the
    /// initramfs: size, boot time, services phase, free memory.
    Storage {
        #[arg(long, value_enum)]
        arch: Arch,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Root's `ros status` in a guest alone and through a flood of non-root connections and a
    /// slow sender, with PID 1's reaping delay, memory and longest main-loop turn.
    Flood {
        #[arg(long, value_enum)]
        arch: Arch,
        #[arg(long, default_value_t = 1)]
        runs: usize,
        #[arg(long, default_value_t = 12)]
        seconds: u64,
    },
    /// Pulling a multi-layer image from docker-registry on the loopback: ros-pull against
    /// skopeo on the host, peak memory, and (with --arch) the pull inside a guest.
    Pull {
        #[arg(long, value_enum)]
        arch: Option<Arch>,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value_t = 72)]
        mib: usize,
    },
}

#[derive(Debug, Default)]
struct Samples {
    null_init_start: Vec<f64>,
    null_wall_exit: Vec<f64>,
    ros_init_start: Vec<f64>,
    ros_ready: Vec<f64>,
    ros_span: Vec<f64>,
    ros_wall_ready: Vec<f64>,
    rss_kib: Vec<f64>,
    /// Per run: (ready - init start) / ready.
    ratio: Vec<f64>,
    /// Per phase of the init's timeline: durations.
    phases: Vec<(String, Vec<f64>)>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn null_run(cfg: &BootConfig, s: &mut Samples) -> Result<()> {
    let mut g = Guest::spawn(cfg)?;
    let line = g.wait_for("null-init: started uptime_ms=", Duration::from_secs(120))?;
    let ms: f64 = line
        .rsplit('=')
        .next()
        .and_then(|v| v.trim().parse().ok())
        .context("no uptime in the null init's line")?;
    g.wait_exit(Duration::from_secs(60))?;
    s.null_init_start.push(ms);
    s.null_wall_exit
        .push(g.started().elapsed().as_secs_f64() * 1000.0);
    Ok(())
}

fn ros_run(cfg: &BootConfig, s: &mut Samples) -> Result<()> {
    let g = Guest::spawn(cfg)?;
    let started: Instant = g.started();
    let ready = g.wait_ready(Duration::from_secs(120))?;
    let wall = started.elapsed().as_secs_f64() * 1000.0;
    let init_start = ready["timeline"][0]["start_ms"]
        .as_f64()
        .context("no timeline")?;
    let up = ready["uptime_ms"].as_f64().context("no uptime")?;
    s.ros_init_start.push(init_start);
    s.ros_ready.push(up);
    s.ros_span.push(up - init_start);
    s.ratio.push((up - init_start) / up);
    s.ros_wall_ready.push(wall);
    s.rss_kib
        .push(ready["init"]["rss_kib"].as_f64().unwrap_or(f64::NAN));
    for p in ready["timeline"].as_array().into_iter().flatten() {
        let name = p["phase"].as_str().unwrap_or("?").to_string();
        let d = p["end_ms"].as_f64().unwrap_or(0.0) - p["start_ms"].as_f64().unwrap_or(0.0);
        match s.phases.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(d),
            None => s.phases.push((name, vec![d])),
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let (arch, runs, cpus) = match Cli::parse() {
        Cli::Runtime { runs } => return runtime::bench(runs),
        Cli::Boot { arch, runs, cpus } => (arch, runs, cpus),
        Cli::Services {
            arch,
            count,
            runs,
            memory,
        } => return services::many(arch, count, runs, memory),
        Cli::Peer { arch, runs } => return peer::bench(arch, runs),
        Cli::Storage { arch, runs } => return services::storage(arch, runs),
        Cli::Config { runs } => return config::bench(runs),
        Cli::Flood {
            arch,
            runs,
            seconds,
        } => return flood::bench(arch, runs, seconds),
        Cli::Pull { arch, runs, mib } => return pull::bench(arch, runs, mib),
        Cli::Store {
            writers,
            writes,
            runs,
        } => return store::bench(writers, writes, runs),
        Cli::Kube { pods, objects } => return kube::bench(pods, objects),
        Cli::KubeApply {
            arch,
            replicas,
            runs,
        } => return kube::apply(arch, replicas, runs),
        Cli::KubeAgent { arch, pods } => return kube::agent(arch, pods),
    };
    let image = ros_tests::image(arch)?;
    ros_tests::null_image(arch)?;
    let manifest: ros_image::Manifest =
        serde_json::from_slice(&std::fs::read(image.join("manifest.json"))?)
            .context("reading manifest.json")?;
    let ros_cfg = BootConfig {
        image: image.clone(),
        cpus,
        ..BootConfig::new(arch)
    };
    let null_cfg = BootConfig {
        initramfs: Some(image.join("initramfs-null.img")),
        ..ros_cfg.clone()
    };
    let mut s = Samples::default();
    let mut err = std::io::stderr().lock();
    for i in 0..runs {
        null_run(&null_cfg, &mut s)?;
        ros_run(&ros_cfg, &mut s)?;
        let _ = writeln!(
            err,
            "run {}/{runs}: null init at {:.0} ms; ros init at {:.0} ms, ready at {:.0} ms",
            i + 1,
            s.null_init_start[i],
            s.ros_init_start[i],
            s.ros_ready[i]
        );
    }
    if s.ros_ready.len() != runs {
        bail!("some runs failed");
    }
    let (k0, k1, ready, span) = (
        median(&s.null_init_start),
        median(&s.ros_init_start),
        median(&s.ros_ready),
        median(&s.ros_span),
    );
    let added = ready - k0;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "boot benchmark: {arch}, QEMU TCG, {cpus} vCPU, {runs} runs each, medians (guest uptime, ms)"
    )?;
    writeln!(
        out,
        "  baseline: null init starts at        {k0:8.0} ms   (QEMU exits after {:.0} ms wall)",
        median(&s.null_wall_exit)
    )?;
    writeln!(out, "  ros init starts at                   {k1:8.0} ms")?;
    writeln!(
        out,
        "  ros ready at                         {ready:8.0} ms   ({:.0} ms wall from QEMU start)",
        median(&s.ros_wall_ready)
    )?;
    writeln!(
        out,
        "  ros init, start to ready             {span:8.0} ms   = {:.1}% of the boot to ready (goal <= 10%; median of per-run ratios)",
        100.0 * median(&s.ratio)
    )?;
    writeln!(
        out,
        "    best run                           {:8.0} ms   = {:.1}%",
        min(&s.ros_span),
        100.0 * min(&s.ratio)
    )?;
    let wall_ratio: Vec<f64> = s
        .ros_span
        .iter()
        .zip(&s.ros_wall_ready)
        .map(|(a, b)| a / b)
        .collect();
    writeln!(
        out,
        "    as a share of the wall time from QEMU start to ready: {:.1}%",
        100.0 * median(&wall_ratio)
    )?;
    writeln!(
        out,
        "  ros ready - null init start          {added:8.0} ms   = {:.1}% (includes unpacking the bigger initramfs)",
        100.0 * added / ready
    )?;
    let phases: Vec<String> = s
        .phases
        .iter()
        .map(|(n, v)| format!("{n} {:.0}", median(v)))
        .collect();
    writeln!(out, "  phases (ms): {}", phases.join(", "))?;
    writeln!(
        out,
        "  init RSS when ready                  {:8.0} KiB  (goal < 4096)",
        median(&s.rss_kib)
    )?;
    writeln!(
        out,
        "  initramfs {} KiB, without modules and service images {} KiB (goal < 4096), init binary {} KiB, {} modules",
        manifest.initramfs_bytes / 1024,
        manifest.initramfs_without_modules_bytes / 1024,
        manifest.init_bytes / 1024,
        manifest.modules
    )?;
    Ok(())
}
