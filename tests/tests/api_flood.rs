//! The init's API under a flood, booted in QEMU on both arches: inside the console, a process
//! running as `nobody` tries 1,000 connections to the API at once, batch after batch, and a
//! root connection sends its request a byte at a time without ever ending it
//! (`tests/api-flood`). Meanwhile root's `ros status` must answer within 1 s of its time before
//! the flood, the slow sender must be dropped after the API's 5 s, and PID 1 must keep reaping:
//! a service that exits every second is seen to exit (by PID 1's log line) on time throughout.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use ros_qemu::Guest;
use ros_tests::{Arch, READY_TIMEOUT, SshKey, config, free_port};

const SSH: Duration = Duration::from_secs(90);
const FLOOD_SECONDS: u64 = 12;

/// The time from each `service ticker started` to the next line about it (its exit), in ms,
/// from PID 1's console lines (`[  12.345] INFO  service ticker ...`).
fn ticker_intervals(console: &str) -> Vec<u64> {
    let uptime_ms = |line: &str| -> Option<u64> {
        let t = line.split(']').next()?.trim_start_matches('[').trim();
        t.parse::<f64>().ok().map(|s| (s * 1000.0) as u64)
    };
    let mut out = Vec::new();
    let mut started = None;
    for line in console.lines().filter(|l| l.contains("service ticker ")) {
        if line.contains("service ticker started") {
            started = uptime_ms(line);
        } else if let (Some(s), Some(t)) = (started.take(), uptime_ms(line)) {
            out.push(t.saturating_sub(s));
        }
    }
    out
}

fn nums(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
        .unwrap_or_default()
}

fn api_flood(arch: Arch) -> Result<()> {
    let tool = ros_image::cargo_build(arch, "ros-api-flood", "ros-api-flood", true)?;
    let key = SshKey::new()?;
    let mut ud = tempfile::Builder::new().suffix(".toml").tempfile()?;
    std::io::Write::write_all(
        &mut ud,
        format!(
            "ssh_authorized_keys = [\"{}\"]\n\n[services.ticker]\nimage = \"busybox\"\n\
             command = [\"sh\", \"-c\", \"sleep 1; exit 3\"]\n\
             backoff = {{ initial = \"10ms\", max = \"10ms\" }}\n",
            key.public
        )
        .as_bytes(),
    )?;
    let port = free_port()?;
    let mut cfg = config(arch)?;
    cfg.user_data = Some(ud.path().to_path_buf());
    cfg.forwards = vec![(port, 22)];
    let g = Guest::spawn(&cfg)?;
    g.wait_ready(READY_TIMEOUT)?;
    key.run(port, "true", SSH)?; // the SSH server is up
    key.copy_to(port, &tool, "/tmp/ros-api-flood")?;
    let before = g.console().len();
    let out = key.run(
        port,
        &format!("/tmp/ros-api-flood --seconds {FLOOD_SECONDS} --connections 1000"),
        SSH,
    )?;
    let during_console = g.console()[before..].to_string();
    let r: serde_json::Value = serde_json::from_str(out.trim()).context(out.clone())?;

    // Root's requests: as fast through the flood as before it (within 1 s).
    let baseline = nums(&r["baseline_ms"]);
    let during = nums(&r["during_ms"]);
    ensure!(baseline.len() == 5, "baseline: {r}");
    ensure!(
        during.len() >= 5 && r["status_failures"].as_array().is_some_and(Vec::is_empty),
        "ros status during the flood: {r}"
    );
    let base_max = baseline.iter().copied().max().unwrap_or(0);
    let during_max = during.iter().copied().max().unwrap_or(0);
    ensure!(
        during_max <= base_max + 1000,
        "ros status took {during_max} ms during the flood, {base_max} ms before: {r}"
    );

    // The flood happened, and every attempt was turned away: by the kernel (the socket is
    // root's) or, had one connected, by the init.
    let flood = &r["flood"];
    let n = |k: &str| flood[k].as_u64().unwrap_or(0);
    let attempts = n("attempts");
    ensure!(attempts >= 10_000, "only {attempts} attempts: {r}");
    ensure!(
        n("errors") == 0 && n("denied") + n("refused") == attempts,
        "a non-root connection was not turned away: {r}"
    );
    let connections = attempts;

    // The slow sender: dropped after the API's 5 s, with the reason.
    let slow = r["slow_dropped_after_ms"].as_u64().unwrap_or(0);
    ensure!(
        (4500..=7000).contains(&slow),
        "slow sender kept {slow} ms: {r}"
    );
    ensure!(
        r["slow_reply"]
            .as_str()
            .is_some_and(|s| s.contains("did not arrive within 5 s")),
        "slow sender's answer: {r}"
    );

    // Reaping on time: the ticker exits 1 s after it starts; PID 1 notices within 1 s more.
    let ticks = ticker_intervals(&during_console);
    ensure!(
        ticks.len() >= 4,
        "the ticker ran {} times during the flood:\n{during_console}",
        ticks.len()
    );
    let worst = ticks.iter().copied().max().unwrap_or(0);
    ensure!(
        worst < 2000,
        "an exit was noticed {worst} ms after the start ({ticks:?})"
    );

    // What the flood cost PID 1.
    let status: serde_json::Value =
        serde_json::from_str(key.run(port, "ros status -o json", SSH)?.trim())?;
    let rss = status["init"]["rss_kib"].as_u64().unwrap_or(u64::MAX);
    ensure!(rss < 64 * 1024, "PID 1 holds {rss} KiB after the flood");
    let busy: Vec<String> = g
        .console()
        .lines()
        .filter(|l| l.contains("main loop was busy"))
        .map(str::to_string)
        .collect();
    eprintln!(
        "{arch:?}: ros status {base_max} ms before, {during_max} ms at most during \
         ({} requests); {connections} non-root connections turned away; slow sender dropped after {slow} ms; \
         ticker intervals {ticks:?}; init RSS {rss} KiB, longest main-loop turn {} ms {busy:?}",
        during.len(),
        status["init"]["max_stall_ms"]
    );
    Ok(())
}

mod x86_64 {
    #[test]
    fn api_flood() -> anyhow::Result<()> {
        super::api_flood(super::Arch::X86_64)
    }
}

mod aarch64 {
    #[test]
    fn api_flood() -> anyhow::Result<()> {
        super::api_flood(super::Arch::Aarch64)
    }
}
