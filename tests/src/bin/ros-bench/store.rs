//! `store [--writers W] [--writes N] [--runs R]`: the cluster's embedded store (ros-revlog)
//! against etcd 3.4 (Debian's `etcd-server`, started here on the loopback with its data in the
//! same folder's filesystem), in one run, at the same durability (both fsync before they
//! answer a write; etcd batches its WAL writes as ros-revlog batches its commits):
//! - writes per second: W threads each putting N new keys at once;
//! - watch latency: one writer putting keys one after another while a watch on their prefix
//!   is open; the time from just before a put to its event at the watcher.
//!
//! ros-revlog is called in-process, as the API server will call it; etcd through its JSON
//! gateway (`/v3/kv/put`, `/v3/watch`) over HTTP on the loopback, as no gRPC client is in the
//! tree: etcd's figures include that transport, and the report says so.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;

use crate::median;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

struct Etcd {
    child: Child,
    url: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn etcd(dir: &Path) -> Result<Etcd> {
    let (client, peer) = (ros_tests::free_port()?, ros_tests::free_port()?);
    let url = format!("http://127.0.0.1:{client}");
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-cluster",
            &format!("default=http://127.0.0.1:{peer}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting etcd (Debian's etcd-server)")?;
    let e = Etcd { child, url };
    let agent = ureq::Agent::new_with_defaults();
    let t = Instant::now();
    while agent.get(format!("{}/health", e.url)).call().is_err() {
        if t.elapsed() > Duration::from_secs(20) {
            bail!("etcd did not answer on {} within 20 s", e.url);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(e)
}

fn etcd_put(agent: &ureq::Agent, url: &str, key: &str) -> Result<()> {
    agent
        .post(format!("{url}/v3/kv/put"))
        .send(serde_json::json!({"key": b64(key), "value": b64("v")}).to_string())
        .with_context(|| format!("etcd put {key}"))?;
    Ok(())
}

/// Writes per second with `writers` threads of `writes` puts each; `put(thread, i)`.
fn rate(
    writers: usize,
    writes: usize,
    put: &(dyn Fn(usize, usize) -> Result<()> + Sync),
) -> Result<f64> {
    let t = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = (0..writers)
            .map(|w| s.spawn(move || (0..writes).try_for_each(|i| put(w, i))))
            .collect();
        for h in hs {
            h.join()
                .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
        }
        Ok(())
    })?;
    Ok((writers * writes) as f64 / t.elapsed().as_secs_f64())
}

/// Milliseconds from before each of `n` puts to its event, given a put and a stream of events
/// (the key of each event, as it arrives).
fn latency(
    n: usize,
    put: &dyn Fn(usize) -> Result<()>,
    events: &mpsc::Receiver<String>,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("/lat/{i:06}");
        let t = Instant::now();
        put(i)?;
        loop {
            let k = events
                .recv_timeout(Duration::from_secs(10))
                .context("no watch event within 10 s")?;
            if k == key {
                break;
            }
        }
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

pub fn bench(writers: usize, writes: usize, runs: usize) -> Result<()> {
    let t = tempfile::tempdir_in(std::env::temp_dir())?;
    let (mut ros_rate, mut etcd_rate, mut ros_lat, mut etcd_lat) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        // ros-revlog, in a fresh file.
        let store = ros_revlog::Store::open(&t.path().join(format!("revlog{run}")))?;
        let create = |key: String| -> Result<()> {
            store
                .apply(ros_revlog::Op::Create {
                    key,
                    value: b"v".to_vec(),
                })
                .map(drop)
                .map_err(Into::into)
        };
        ros_rate.push(rate(writers, writes, &|w, i| {
            create(format!("/bench/{w}/{i}"))
        })?);
        let mut watch = store.watch("/lat/", store.revision())?;
        let (tx, rx) = mpsc::channel();
        let relay = std::thread::spawn(move || {
            while let Some(e) = watch.blocking_recv() {
                if tx.send(e.key).is_err() {
                    break;
                }
            }
        });
        ros_lat.extend(latency(200, &|i| create(format!("/lat/{i:06}")), &rx)?);
        drop(store);
        drop(rx);
        let _ = relay.join();

        // etcd, in a fresh data folder beside it.
        let e = etcd(&t.path().join(format!("etcd{run}")))?;
        let agent = ureq::Agent::new_with_defaults();
        etcd_rate.push(rate(writers, writes, &|w, i| {
            etcd_put(&agent, &e.url, &format!("/bench/{w}/{i}"))
        })?);
        let (tx, rx) = mpsc::channel();
        let url = e.url.clone();
        let body =
            serde_json::json!({"create_request": {"key": b64("/lat/"), "range_end": b64("/lat0")}})
                .to_string();
        let watcher = std::thread::spawn(move || -> Result<()> {
            let resp = ureq::Agent::new_with_defaults()
                .post(format!("{url}/v3/watch"))
                .send(body)?;
            let reader = std::io::BufReader::new(resp.into_body().into_reader());
            for line in reader.lines() {
                let v: serde_json::Value = serde_json::from_str(&line?)?;
                for ev in v["result"]["events"].as_array().into_iter().flatten() {
                    let k = ev["kv"]["key"].as_str().unwrap_or_default();
                    let k = base64::engine::general_purpose::STANDARD.decode(k)?;
                    if tx.send(String::from_utf8_lossy(&k).into_owned()).is_err() {
                        return Ok(());
                    }
                }
            }
            Ok(())
        });
        // The watch is created once its first answer (the creation) has come; give it that.
        std::thread::sleep(Duration::from_millis(300));
        etcd_lat.extend(latency(
            200,
            &|i| etcd_put(&agent, &e.url, &format!("/lat/{i:06}")),
            &rx,
        )?);
        drop(e);
        drop(rx);
        let _ = watcher.join();
        eprintln!(
            "run {}/{runs}: writes/s ros-revlog {:.0}, etcd {:.0}",
            run + 1,
            ros_rate[run],
            etcd_rate[run]
        );
    }
    let pct = |v: &[f64], p: f64| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s[((s.len() as f64 - 1.0) * p).round() as usize]
    };
    println!(
        "store: {writers} writers x {writes} new keys, {runs} runs (medians); watch latency over {} puts one after another:",
        ros_lat.len()
    );
    println!(
        "  writes/s     ros-revlog (in-process) {:.0}, etcd 3.4 (JSON gateway, loopback) {:.0}: {:.2}x (goal: at least 1x)",
        median(&ros_rate),
        median(&etcd_rate),
        median(&ros_rate) / median(&etcd_rate)
    );
    println!(
        "  watch, put to event: ros-revlog median {:.2} ms (p99 {:.2}), etcd median {:.2} ms (p99 {:.2})",
        median(&ros_lat),
        pct(&ros_lat, 0.99),
        median(&etcd_lat),
        pct(&etcd_lat, 0.99)
    );
    Ok(())
}
