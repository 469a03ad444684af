//! The API flood, shared by the test (`tests/api_flood.rs`, which checks it) and the benchmark
//! (`ros-bench flood`, which prints it): a guest booted with a service that exits every second,
//! and `tests/api-flood` run in its console, which times root's `ros status` alone (the
//! baseline) and then through a flood of non-root connections and a slow root sender.

use std::time::Duration;

use anyhow::{Context, Result};
use ros_qemu::Guest;

use crate::{Arch, READY_TIMEOUT, SshKey, config, free_port};

const SSH: Duration = Duration::from_secs(90);

/// What one flood showed.
#[derive(Debug)]
pub struct Flood {
    /// `ros status` alone, ms.
    pub baseline_ms: Vec<u64>,
    /// `ros status` through the flood, ms.
    pub during_ms: Vec<u64>,
    pub status_failures: usize,
    /// Non-root connections tried, turned away at connect (the socket is root's), refused by
    /// the init, failed otherwise.
    pub attempts: u64,
    pub denied: u64,
    pub refused: u64,
    pub other_errors: u64,
    pub slow_dropped_after_ms: Option<u64>,
    pub slow_reply: String,
    /// From each start of the ticker (exits 1 s after it starts) to PID 1's note of its exit.
    pub ticker_ms: Vec<u64>,
    pub init_rss_kib: u64,
    pub max_stall_ms: u64,
    /// PID 1's own "the main loop was busy" lines.
    pub busy: Vec<String>,
    /// The tool's whole report.
    pub raw: serde_json::Value,
}

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

/// Boots `arch`, floods for `seconds` with `connections` at a time, and reports.
pub fn run(arch: Arch, seconds: u64, connections: u32) -> Result<Flood> {
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
        &format!("/tmp/ros-api-flood --seconds {seconds} --connections {connections}"),
        SSH,
    )?;
    let during_console = g.console()[before..].to_string();
    let r: serde_json::Value = serde_json::from_str(out.trim()).context(out.clone())?;
    let status: serde_json::Value =
        serde_json::from_str(key.run(port, "ros status -o json", SSH)?.trim())?;
    let flood = &r["flood"];
    let n = |k: &str| flood[k].as_u64().unwrap_or(0);
    Ok(Flood {
        baseline_ms: nums(&r["baseline_ms"]),
        during_ms: nums(&r["during_ms"]),
        status_failures: r["status_failures"].as_array().map_or(usize::MAX, Vec::len),
        attempts: n("attempts"),
        denied: n("denied"),
        refused: n("refused"),
        other_errors: n("errors"),
        slow_dropped_after_ms: r["slow_dropped_after_ms"].as_u64(),
        slow_reply: r["slow_reply"].as_str().unwrap_or_default().to_string(),
        ticker_ms: ticker_intervals(&during_console),
        init_rss_kib: status["init"]["rss_kib"].as_u64().unwrap_or(u64::MAX),
        max_stall_ms: status["init"]["max_stall_ms"].as_u64().unwrap_or(u64::MAX),
        busy: g
            .console()
            .lines()
            .filter(|l| l.contains("main loop was busy"))
            .map(str::to_string)
            .collect(),
        raw: r,
    })
}
