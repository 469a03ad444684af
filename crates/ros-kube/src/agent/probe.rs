//! Liveness and readiness probes, as the kubelet runs them: `exec` (a command in the
//! container, healthy on exit 0), `httpGet` (a status from 200 to 399) and `tcpSocket` (a
//! connection), each with its initial delay, period, timeout and thresholds. What a probe is
//! and how its results add up are pure ([`Probe::from_spec`], [`Tracker`]); running one is the
//! thin part ([`check`]).
//!
//! HTTP and TCP probes connect from inside the pod's network namespace (a thread of their own
//! joins it), to `host` when the probe names one and to the pod's loopback otherwise: the pod
//! answers there whatever its network, and no route from the node to the pod is needed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    Exec(Vec<String>),
    Http {
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub handler: Handler,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

fn secs(p: &Value, key: &str, default: u64, min: u64) -> Result<Duration, String> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(Duration::from_secs(default)),
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= min)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{key}: expected an integer of at least {min}, found {v}")),
    }
}

fn count(p: &Value, key: &str, default: u32) -> Result<u32, String> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 1)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("{key}: expected an integer of at least 1, found {v}")),
    }
}

/// A probe's port: a number, or the name of one of the container's ports.
fn port(v: Option<&Value>, container: &Value) -> Result<u16, String> {
    match v {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("port {n} is not 1-65535")),
        Some(Value::String(name)) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            container
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
                .and_then(|p| p.get("containerPort").and_then(Value::as_u64))
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| format!("port {name:?}: the container has no port of that name"))
        }
        _ => Err("a port is required".into()),
    }
}

impl Probe {
    /// The probe `p` of `container` (its spec, for named ports); `liveness` probes must have
    /// a success threshold of 1, as the API server requires.
    pub fn from_spec(p: &Value, container: &Value, liveness: bool) -> Result<Probe, String> {
        let host = |h: &Value| {
            h.get("host")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let handler = if let Some(e) = p.get("exec") {
            let cmd: Vec<String> = e
                .get("command")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|w| w.as_str().map(str::to_string))
                .collect();
            if cmd.is_empty() {
                return Err("exec: a command is required".into());
            }
            Handler::Exec(cmd)
        } else if let Some(h) = p.get("httpGet") {
            if h.get("scheme")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.eq_ignore_ascii_case("http"))
            {
                return Err("httpGet: only the HTTP scheme is supported, not HTTPS".into());
            }
            let path = h.get("path").and_then(Value::as_str).unwrap_or("/");
            let headers = h
                .get("httpHeaders")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|x| {
                    let n = x.get("name").and_then(Value::as_str).unwrap_or("");
                    let v = x.get("value").and_then(Value::as_str).unwrap_or("");
                    if n.is_empty() || n.contains([':', '\r', '\n']) || v.contains(['\r', '\n']) {
                        Err(format!("httpGet: header {n:?} is not a valid header"))
                    } else {
                        Ok((n.to_string(), v.to_string()))
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            if path.contains(['\r', '\n', ' ']) {
                return Err(format!("httpGet: path {path:?} is not a valid path"));
            }
            Handler::Http {
                host: host(h),
                port: port(h.get("port"), container).map_err(|e| format!("httpGet: {e}"))?,
                path: if path.starts_with('/') {
                    path.to_string()
                } else {
                    format!("/{path}")
                },
                headers,
            }
        } else if let Some(t) = p.get("tcpSocket") {
            Handler::Tcp {
                host: host(t),
                port: port(t.get("port"), container).map_err(|e| format!("tcpSocket: {e}"))?,
            }
        } else if p.get("grpc").is_some() {
            return Err("grpc probes are not supported".into());
        } else {
            return Err("a probe needs exec, httpGet or tcpSocket".into());
        };
        let success_threshold = count(p, "successThreshold", 1)?;
        if liveness && success_threshold != 1 {
            return Err("successThreshold: must be 1 for a liveness probe".into());
        }
        Ok(Probe {
            handler,
            initial_delay: secs(p, "initialDelaySeconds", 0, 0)?,
            period: secs(p, "periodSeconds", 10, 1)?,
            timeout: secs(p, "timeoutSeconds", 1, 1)?,
            success_threshold,
            failure_threshold: count(p, "failureThreshold", 3)?,
        })
    }
}

/// One probe of one running container: when it is due, and what its results add up to.
#[derive(Debug, Clone)]
pub struct Tracker {
    pub probe: Probe,
    /// The verdict so far: none until the thresholds give one.
    pub healthy: Option<bool>,
    oks: u32,
    fails: u32,
    pub next: Instant,
    /// A check is running (its result not in yet): none is started meanwhile.
    pub busy: bool,
}

impl Tracker {
    /// For a container started at `started`: the first check after the initial delay.
    pub fn new(probe: Probe, started: Instant) -> Tracker {
        Tracker {
            next: started + probe.initial_delay,
            probe,
            healthy: None,
            oks: 0,
            fails: 0,
            busy: false,
        }
    }

    pub fn due(&self, now: Instant) -> bool {
        !self.busy && now >= self.next
    }

    /// A check is started at `now`: the next one is a period later.
    pub fn started(&mut self, now: Instant) {
        self.busy = true;
        self.next = now + self.probe.period;
    }

    /// A result: the verdict when it changes (successThreshold successes in a row make the
    /// container healthy, failureThreshold failures in a row unhealthy).
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        self.busy = false;
        if ok {
            self.oks += 1;
            self.fails = 0;
        } else {
            self.fails += 1;
            self.oks = 0;
        }
        let verdict = if self.oks >= self.probe.success_threshold {
            Some(true)
        } else if self.fails >= self.probe.failure_threshold {
            Some(false)
        } else {
            None
        };
        match verdict {
            Some(v) if self.healthy != Some(v) => {
                self.healthy = Some(v);
                // A liveness failure restarts the container: the count starts again.
                if !v {
                    self.fails = 0;
                }
                Some(v)
            }
            _ => None,
        }
    }
}

/// Where a check runs: the pod's network namespace, the runtime and the container.
#[derive(Debug, Clone)]
pub struct Target {
    pub netns: PathBuf,
    pub runtime: PathBuf,
    pub runtime_root: PathBuf,
    pub container_id: String,
}

/// Runs one check: `Ok` healthy, `Err` why not (the Unhealthy event's message).
pub async fn check(h: &Handler, t: &Target, timeout: Duration) -> Result<(), String> {
    match h {
        Handler::Exec(cmd) => {
            let child = tokio::process::Command::new(&t.runtime)
                .arg("--root")
                .arg(&t.runtime_root)
                .arg("exec")
                .arg(&t.container_id)
                .args(cmd)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("running {}: {e}", t.runtime.display()))?;
            match tokio::time::timeout(timeout, child.wait_with_output()).await {
                Err(_) => Err(format!("command timed out after {}s", timeout.as_secs())),
                Ok(Err(e)) => Err(e.to_string()),
                Ok(Ok(o)) if o.status.success() => Ok(()),
                Ok(Ok(o)) => {
                    let mut out = String::from_utf8_lossy(&o.stdout).into_owned();
                    out.push_str(&String::from_utf8_lossy(&o.stderr));
                    let out: String = out.trim().chars().take(200).collect();
                    Err(format!(
                        "command {cmd:?} exited with {}{}",
                        o.status.code().unwrap_or(-1),
                        if out.is_empty() {
                            String::new()
                        } else {
                            format!(": {out}")
                        }
                    ))
                }
            }
        }
        Handler::Http { .. } | Handler::Tcp { .. } => {
            let (h, netns) = (h.clone(), t.netns.clone());
            let (tx, rx) = tokio::sync::oneshot::channel();
            // A thread of its own: it joins the pod's network namespace and ends after.
            std::thread::Builder::new()
                .name("probe".into())
                .spawn(move || {
                    let _ = tx.send(in_netns(&netns, &h, timeout));
                })
                .map_err(|e| format!("a probe thread: {e}"))?;
            rx.await
                .map_err(|_| "the probe's thread ended early".to_string())?
        }
    }
}

fn in_netns(netns: &Path, h: &Handler, timeout: Duration) -> Result<(), String> {
    let f = std::fs::File::open(netns).map_err(|e| format!("{}: {e}", netns.display()))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("joining the pod's network: {e}"))?;
    let (host, port) = match h {
        Handler::Http { host, port, .. } | Handler::Tcp { host, port } => (host.clone(), *port),
        Handler::Exec(_) => return Err("not a network probe".into()),
    };
    let host = host.unwrap_or_else(|| "127.0.0.1".into());
    let addr: SocketAddr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("dial tcp {addr}: {e}"))?;
    let Handler::Http { path, headers, .. } = h else {
        return Ok(());
    };
    // The request and the status line by hand: one GET whose answer's first line is all a
    // probe reads, on a blocking socket in a thread that must stay in the pod's namespace (an
    // async client would run it on the runtime's threads).
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: kube-probe/{}\r\nAccept: */*\r\nConnection: close\r\n",
        if addr.is_ipv6() {
            format!("[{}]:{port}", addr.ip())
        } else {
            format!("{}:{port}", addr.ip())
        },
        crate::api::KUBE_VERSION.trim_start_matches('v')
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("Get \"http://{addr}{path}\": {e}"))?;
    let mut buf = [0u8; 256];
    let mut got = Vec::new();
    while !got.contains(&b'\n') && got.len() < 256 {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("Get \"http://{addr}{path}\": {e}")),
        }
    }
    http_status(&got)
        .map_err(|e| format!("Get \"http://{addr}{path}\": {e}"))
        .and_then(|code| {
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        })
}

/// The status code of an HTTP/1.x answer's first line.
fn http_status(head: &[u8]) -> Result<u16, String> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    match (
        words.next(),
        words.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => Ok(code),
        _ => Err(format!("not an HTTP answer: {:?}", line.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn probes_are_read_with_the_kubelets_defaults_and_named_ports() {
        let c = json!({"name": "web", "ports": [{"name": "http", "containerPort": 8080}]});
        let p = Probe::from_spec(
            &json!({"httpGet": {"path": "healthz", "port": "http"}}),
            &c,
            true,
        )
        .expect("probe");
        assert_eq!(
            p,
            Probe {
                handler: Handler::Http {
                    host: None,
                    port: 8080,
                    path: "/healthz".into(),
                    headers: vec![]
                },
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            }
        );
        let p = Probe::from_spec(
            &json!({"tcpSocket": {"port": 53}, "periodSeconds": 2, "failureThreshold": 1, "successThreshold": 2}),
            &c,
            false,
        )
        .expect("probe");
        assert_eq!(
            p.handler,
            Handler::Tcp {
                host: None,
                port: 53
            }
        );
        assert_eq!(
            (p.period, p.failure_threshold, p.success_threshold),
            (Duration::from_secs(2), 1, 2)
        );
        for (bad, why) in [
            (json!({}), "needs exec, httpGet or tcpSocket"),
            (json!({"exec": {"command": []}}), "a command is required"),
            (
                json!({"tcpSocket": {"port": "nope"}}),
                "no port of that name",
            ),
            (json!({"tcpSocket": {"port": 0}}), "not 1-65535"),
            (
                json!({"httpGet": {"port": 80, "scheme": "HTTPS"}}),
                "not HTTPS",
            ),
            (
                json!({"exec": {"command": ["true"]}, "periodSeconds": 0}),
                "periodSeconds",
            ),
            (
                json!({"exec": {"command": ["true"]}, "successThreshold": 2}),
                "must be 1",
            ),
            (json!({"grpc": {"port": 9}}), "grpc"),
        ] {
            let e = Probe::from_spec(&bad, &c, true).expect_err(why);
            assert!(e.contains(why), "{e} (wanted {why})");
        }
    }

    #[test]
    fn thresholds_turn_results_into_verdicts() {
        let probe = Probe {
            handler: Handler::Exec(vec!["true".into()]),
            initial_delay: Duration::from_secs(5),
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: 2,
            failure_threshold: 3,
        };
        let t0 = Instant::now();
        let mut t = Tracker::new(probe, t0);
        assert!(!t.due(t0), "not before the initial delay");
        assert!(t.due(t0 + Duration::from_secs(5)));
        t.started(t0 + Duration::from_secs(5));
        assert!(!t.due(t0 + Duration::from_secs(9)), "one check at a time");
        assert_eq!(t.record(true), None, "one success of two");
        assert_eq!(t.record(true), Some(true));
        assert_eq!(t.record(true), None, "no change, no verdict");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "a success breaks the run of failures");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
        assert_eq!(t.healthy, Some(false));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(true));
    }

    #[test]
    fn status_lines_are_read() {
        assert_eq!(http_status(b"HTTP/1.1 204 No Content\r\n"), Ok(204));
        assert_eq!(http_status(b"HTTP/1.0 404 Not Found\r\nx"), Ok(404));
        assert!(http_status(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(http_status(b"").is_err());
    }
}
