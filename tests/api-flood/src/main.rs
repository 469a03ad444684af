//! ros-api-flood: run as root inside a ros guest (the tests copy it into the console). While a
//! child running as `nobody` keeps trying to open `--connections` connections to the init's API
//! at once, batch after batch (each is turned away: by the kernel at connect, the socket being
//! root's, or by the init at accept), and a root connection
//! sends its request one byte at a time and never ends it, it times root's `ros status` over and
//! over; before the flood it times the same command alone. Prints one JSON line with what it saw.
//!
//! `ros-api-flood [--seconds S] [--connections N]`; `--flooder N S` is the child's part.

#![allow(clippy::print_stdout)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One `ros status`, timed; its exit status must be success.
fn time_status() -> Result<u64, String> {
    let start = Instant::now();
    let out = Command::new("ros")
        .arg("status")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running ros status: {e}"))?;
    let took = ms(start.elapsed());
    if !out.status.success() {
        return Err(format!(
            "ros status failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(took)
}

/// The child: as `nobody`, `n` connections at once, again and again for `secs` seconds.
/// Prints how many were tried, denied at connect, connected, refused by the init, and failed
/// otherwise, and the most open at once.
fn flooder(n: usize, secs: u64) -> std::process::ExitCode {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut attempts, mut denied, mut connections, mut refused, mut errors) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut max_open = 0usize;
    let mut first_error = None;
    while Instant::now() < deadline {
        let mut open = Vec::with_capacity(n);
        for _ in 0..n {
            attempts += 1;
            match UnixStream::connect(ros_api::SOCKET) {
                Ok(s) => {
                    connections += 1;
                    open.push(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => denied += 1,
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        max_open = max_open.max(open.len());
        for mut s in open {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut reply = String::new();
            let _ = s.read_to_string(&mut reply);
            if reply.contains("root only") {
                refused += 1;
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "attempts": attempts,
            "denied": denied,
            "connections": connections,
            "refused": refused,
            "errors": errors,
            "first_error": first_error,
            "max_open": max_open,
        })
    );
    std::process::ExitCode::SUCCESS
}

/// Root's slow sender: one byte of a request every 200 ms, never a whole line. Returns how long
/// the init kept the connection and what it answered.
fn slow_sender() -> (Option<u64>, String) {
    let start = Instant::now();
    let Ok(mut s) = UnixStream::connect(ros_api::SOCKET) else {
        return (None, "cannot connect".into());
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let request = br#"{"version":2,"request":"status"}"#;
    let mut reply = Vec::new();
    for b in request.iter().cycle() {
        if start.elapsed() > Duration::from_secs(30) {
            return (None, "still open after 30 s".into());
        }
        if s.write_all(&[*b]).is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => reply.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    (
        Some(ms(start.elapsed())),
        String::from_utf8_lossy(&reply).trim().to_string(),
    )
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |flag: &str, default: u64| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    if let Some(i) = args.iter().position(|a| a == "--flooder") {
        let n = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(1000);
        let secs = args.get(i + 2).and_then(|v| v.parse().ok()).unwrap_or(10);
        return flooder(n, secs);
    }
    let secs = num("--seconds", 10);
    let n = num("--connections", 1000);

    let mut baseline = Vec::new();
    for _ in 0..5 {
        match time_status() {
            Ok(t) => baseline.push(t),
            Err(e) => {
                println!("{}", serde_json::json!({ "error": e }));
                return std::process::ExitCode::FAILURE;
            }
        }
    }

    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            println!("{}", serde_json::json!({ "error": e.to_string() }));
            return std::process::ExitCode::FAILURE;
        }
    };
    let child = Command::new(exe)
        .args(["--flooder", &n.to_string(), &secs.to_string()])
        .uid(NOBODY)
        .gid(NOBODY) // std drops the supplementary groups too when root sets a uid
        .stdout(Stdio::piped())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            println!(
                "{}",
                serde_json::json!({ "error": format!("starting the flooder: {e}") })
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    let slow = std::thread::spawn(slow_sender);
    // Let the flood get going, then time root's requests through it.
    std::thread::sleep(Duration::from_millis(500));
    let flood_start = Instant::now();
    let mut during = Vec::new();
    let mut failures = Vec::new();
    while flood_start.elapsed() < Duration::from_secs(secs.saturating_sub(1)) {
        match time_status() {
            Ok(t) => during.push(t),
            Err(e) => failures.push(e),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let flood: serde_json::Value = child
        .wait_with_output()
        .ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or(serde_json::Value::Null);
    let (slow_ms, slow_reply) = slow.join().unwrap_or((None, "the thread panicked".into()));
    println!(
        "{}",
        serde_json::json!({
            "baseline_ms": baseline,
            "during_ms": during,
            "status_failures": failures,
            "flood": flood,
            "slow_dropped_after_ms": slow_ms,
            "slow_reply": slow_reply,
        })
    );
    std::process::ExitCode::SUCCESS
}
