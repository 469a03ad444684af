//! Pulls of the images services name from registries. Each runs `ros-pull` (crates/ros-registry)
//! as a child process on a thread of tokio's blocking pool, which relays its JSON lines to the
//! main loop: HTTP, TLS and decompression never run in PID 1, and a pull never holds the loop.
//! The program ships gzipped in the initramfs (unpacking 3 MB more at every boot cost ~100 ms
//! under TCG, measured; the gzipped file costs nothing measurable) and is unpacked into /run
//! the first time a pull needs it.

use std::collections::BTreeSet;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

pub const PULLER_GZ: &str = "/usr/lib/ros/bin/ros-pull.gz";
pub const PULLER: &str = "/run/ros/bin/ros-pull";
/// The user-data's `[registries]`, as `ros-pull --registries` reads it (CA files inlined).
pub const REGISTRIES: &str = "/run/ros/registries.json";

/// Retries of a pull that failed for a reason worth retrying: 2 s doubling up to 60 s.
const RETRY_FIRST_MS: u64 = 2_000;
const RETRY_MAX_MS: u64 = 60_000;

/// One image being pulled (or waiting to be pulled again), for the services that name it.
#[derive(Debug, Clone)]
pub struct Job {
    pub services: BTreeSet<String>,
    pub policy: String,
    pub running: bool,
    pub attempts: u32,
    pub retry_at: Option<u64>,
    /// What `ros service status` shows: progress, or the last error.
    pub status: String,
    /// The last line's verdict: `Some(Ok)` done, `Some(Err((retry, message)))` failed.
    pub outcome: Option<Result<(), (bool, String)>>,
}

impl Job {
    pub fn new(policy: &str) -> Job {
        Job {
            services: BTreeSet::new(),
            policy: policy.to_string(),
            running: false,
            attempts: 0,
            retry_at: None,
            status: "waiting to pull".into(),
            outcome: None,
        }
    }

    /// Takes in one line of `ros-pull --json`.
    pub fn line(&mut self, line: &str) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            return;
        };
        match v["event"].as_str() {
            Some("resolved") => {
                self.status = format!(
                    "pulling: {} layers ({} to fetch), {} bytes",
                    v["layers"], v["missing"], v["size"]
                );
            }
            Some("layer") => {
                self.status = format!(
                    "pulling: layer {} {}/{} bytes",
                    v["digest"].as_str().unwrap_or("?"),
                    v["done"],
                    v["total"]
                );
            }
            Some("unpacking") => {
                self.status = format!("pulling: unpacking {} layers", v["layers"]);
            }
            Some("done") => {
                self.status = "pulled".into();
                self.outcome = Some(Ok(()));
            }
            Some("error") => {
                let msg = v["message"].as_str().unwrap_or("failed").to_string();
                self.outcome = Some(Err((v["retry"].as_bool().unwrap_or(false), msg)));
            }
            _ => {}
        }
    }

    /// The pull ended: its outcome (a program that ended without one failed, worth a retry).
    /// Schedules the next try when there is one to make.
    pub fn ended(&mut self, now: u64) -> Result<(), (bool, String)> {
        self.running = false;
        let out = self.outcome.take().unwrap_or_else(|| {
            Err((
                true,
                "ros-pull ended without saying how the pull went".into(),
            ))
        });
        self.retry_at = None;
        if let Err((true, msg)) = &out {
            let wait = RETRY_FIRST_MS
                .saturating_mul(1 << self.attempts.min(16))
                .min(RETRY_MAX_MS);
            self.attempts += 1;
            self.retry_at = Some(now.saturating_add(wait));
            self.status = format!("retrying in {} s: {msg}", wait / 1000);
        }
        out
    }
}

/// A line from a pull, or its end (`None`).
#[derive(Debug)]
pub struct Msg {
    pub image: String,
    pub line: Option<String>,
}

/// Unpacks the puller into /run once.
pub fn puller() -> Result<PathBuf, String> {
    let out = Path::new(PULLER);
    if out.is_file() {
        return Ok(out.to_path_buf());
    }
    let gz = std::fs::File::open(PULLER_GZ).map_err(|e| format!("{PULLER_GZ}: {e}"))?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("unpacking {PULLER_GZ}: {e}"))?;
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let tmp = out.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o755)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        std::fs::rename(&tmp, out)
    };
    write().map_err(|e| format!("writing {}: {e}", out.display()))?;
    Ok(out.to_path_buf())
}

/// Starts `ros-pull` for `image`; its lines and its end come on `tx`.
pub fn start(image: String, policy: String, store: PathBuf, tx: mpsc::UnboundedSender<Msg>) {
    let mut lines = run(
        store,
        vec!["--policy".into(), policy, "pull".into(), image.clone()],
    );
    tokio::spawn(async move {
        while let Some(l) = lines.recv().await {
            let _ = tx.send(Msg {
                image: image.clone(),
                line: Some(l),
            });
        }
        let _ = tx.send(Msg { image, line: None });
    });
}

/// Runs `ros-pull --confine --store STORE --registries FILE --json ARGS...` on a blocking thread; each
/// line of its output comes on the receiver, which closes when it ends. A failure to run it
/// comes as an `error` event like its own.
pub fn run(store: PathBuf, args: Vec<String>) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::task::spawn_blocking(move || {
        let go = || -> Result<(), String> {
            let program = puller()?;
            // Confined: what a registry sends is parsed where only the store can be written
            // (ros_registry::confine).
            let mut child = std::process::Command::new(&program)
                .arg("--confine")
                .arg("--store")
                .arg(&store)
                .arg("--registries")
                .arg(REGISTRIES)
                .arg("--json")
                .args(&args)
                .env_clear()
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| format!("running {}: {e}", program.display()))?;
            let out = child.stdout.take().ok_or("no stdout")?;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
            Ok(())
        };
        if let Err(e) = go() {
            let _ = tx.send(
                serde_json::json!({"event": "error", "retry": true, "message": e}).to_string(),
            );
        }
    });
    rx
}

/// Writes the registry settings for `ros-pull` (0600: they may hold passwords), with each
/// `ca_file` read into `ca`. Returns the problems (a CA file that cannot be read).
pub fn write_registries(r: &ros_config::registries::Registries) -> Vec<String> {
    let mut problems = Vec::new();
    let mut out = serde_json::json!({"mirrors": {}, "configs": {}});
    for (name, m) in &r.mirrors {
        out["mirrors"][name] =
            serde_json::json!({"endpoints": m.endpoints.clone().unwrap_or_default()});
    }
    for (host, c) in &r.configs {
        let mut ca = c.ca.clone();
        if let Some(f) = &c.ca_file {
            match std::fs::read_to_string(f) {
                Ok(pem) => ca = Some(pem),
                Err(e) => problems.push(format!("registries.configs.\"{host}\".ca_file {f}: {e}")),
            }
        }
        let mut v =
            serde_json::json!({"insecure_skip_verify": c.insecure_skip_verify.unwrap_or(false)});
        for (k, val) in [
            ("username", &c.username),
            ("password", &c.password),
            ("auth", &c.auth),
            ("ca", &ca),
        ] {
            if let Some(x) = val {
                v[k] = x.clone().into();
            }
        }
        out["configs"][host] = v;
    }
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let p = Path::new(REGISTRIES);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        let tmp = p.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(out.to_string().as_bytes())?;
        std::fs::rename(&tmp, p)
    };
    if let Err(e) = write() {
        problems.push(format!("writing {REGISTRIES}: {e}"));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_reports_progress_then_its_outcome_and_retries_with_backoff() {
        let mut j = Job::new("if-not-present");
        j.running = true;
        j.line(r#"{"event":"resolved","manifest":"sha256:x","layers":2,"size":10,"missing":1}"#);
        assert!(j.status.contains("2 layers (1 to fetch)"), "{}", j.status);
        j.line(r#"{"event":"unpacking","layers":1}"#);
        assert_eq!(j.status, "pulling: unpacking 1 layers");
        j.line(
            r#"{"event":"error","kind":"unavailable","retry":true,"message":"connection refused"}"#,
        );
        assert_eq!(j.ended(1000), Err((true, "connection refused".into())));
        assert_eq!(j.retry_at, Some(3000));
        j.running = true;
        assert!(j.ended(5000).is_err(), "no verdict: failed");
        assert_eq!(j.retry_at, Some(9000), "the wait doubles");
        j.line(r#"{"event":"error","retry":false,"message":"401"}"#);
        assert_eq!(j.ended(10_000), Err((false, "401".into())));
        j.line(r#"{"event":"done","pulled":true}"#);
        assert_eq!(j.ended(11_000), Ok(()));
    }
}
