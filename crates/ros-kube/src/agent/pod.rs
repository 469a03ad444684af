//! One pod on this node, from its binding to its deletion: the network namespace and files,
//! the images, each container run by `ros-runtime run` (restarted by the restartPolicy with a
//! doubling back-off), the logs, the status written back, and the graceful stop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, watch};

use super::Node;
use super::probe::{self, Probe, Tracker};
use super::spec::{self, ImageConfig};
use crate::objects::now_rfc3339;

#[derive(Debug, Clone, PartialEq)]
enum State {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started: String,
    },
    Terminated {
        code: i32,
        reason: String,
        started: String,
        finished: String,
    },
}

impl State {
    fn json(&self) -> Value {
        match self {
            State::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if !message.is_empty() {
                    w["message"] = json!(message);
                }
                json!({"waiting": w})
            }
            State::Running { started } => json!({"running": {"startedAt": started}}),
            State::Terminated {
                code,
                reason,
                started,
                finished,
            } => json!({"terminated": {
                "exitCode": code, "reason": reason, "startedAt": started, "finishedAt": finished}}),
        }
    }
}

#[derive(Debug)]
struct Ctr {
    name: String,
    spec: Value,
    image: Option<(ImageConfig, Vec<PathBuf>, String)>,
    state: State,
    last: Option<State>,
    restarts: u32,
    pid: Option<u32>,
    next_start: Option<Instant>,
    backoff: Duration,
    oom_before: u64,
    liveness: Option<Tracker>,
    readiness: Option<Tracker>,
}

impl Ctr {
    /// Running, and ready by its readiness probe if it has one.
    fn ready(&self) -> bool {
        matches!(self.state, State::Running { .. })
            && self
                .readiness
                .as_ref()
                .is_none_or(|r| r.healthy == Some(true))
    }
}

/// Which probe a result is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Liveness,
    Readiness,
}

/// A probe's result: container, probe, its restart count when it ran, the outcome.
type ProbeResult = (String, Kind, u32, Result<(), String>);

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn pod_dir(node: &Node, pod: &Value) -> PathBuf {
    node.cfg.data_dir.join("pods").join(format!(
        "{}_{}_{}",
        s(pod, "/metadata/namespace"),
        s(pod, "/metadata/name"),
        s(pod, "/metadata/uid")
    ))
}

fn container_id(pod: &Value, name: &str) -> String {
    format!("{}-{name}", s(pod, "/metadata/uid"))
}

/// Records an Event about the pod (what `kubectl describe pod` shows), from the kubelet of
/// this node; sent in the background, as the kubelet's event recorder does.
fn event(
    node: &Node,
    pod: &Value,
    container: Option<&str>,
    type_: &str,
    reason: &str,
    message: String,
) {
    let ns = s(pod, "/metadata/namespace").to_string();
    let now = now_rfc3339();
    let mut involved = json!({"kind": "Pod", "apiVersion": "v1", "namespace": ns,
        "name": s(pod, "/metadata/name"), "uid": s(pod, "/metadata/uid")});
    if let Some(c) = container {
        involved["fieldPath"] = json!(format!("spec.containers{{{c}}}"));
    }
    let ev = json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{}.{}", s(pod, "/metadata/name"), crate::pki::random_hex(8).unwrap_or_default())},
        "involvedObject": involved, "reason": reason, "message": message, "type": type_,
        "source": {"component": "kubelet", "host": node.cfg.node_name},
        "reportingComponent": "kubelet", "reportingInstance": node.cfg.node_name,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1});
    let client = node.client.clone();
    tokio::spawn(async move {
        let _ = client
            .create(&format!("/api/v1/namespaces/{ns}/events"), &ev)
            .await;
    });
}

fn cgroup_root() -> PathBuf {
    PathBuf::from("/sys/fs/cgroup")
}

fn pod_cgroup(pod: &Value) -> String {
    format!("kubepods/pod{}", s(pod, "/metadata/uid"))
}

/// The OOM kills counted under the pod's cgroup (memory.events is hierarchical).
fn oom_kills(pod: &Value) -> u64 {
    std::fs::read_to_string(cgroup_root().join(pod_cgroup(pod)).join("memory.events"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Pulls (or finds) a container's image: its config, its layers topmost first, its id.
fn image(node: &Node, name: &str) -> Result<(ImageConfig, Vec<PathBuf>, String), String> {
    let r = ros_registry::Reference::parse(name)?;
    let canonical = r.to_string();
    let rec = match node.images.get_ref(&canonical) {
        Some(rec) => rec,
        None => {
            let platform = ros_registry::manifest::host_platform();
            ros_registry::pull::pull(&node.registry, &node.images, &r, &platform, &mut |_| {})
                .map_err(|e| e.to_string())?
        }
    };
    let cfg_digest = ros_registry::Digest::parse(&rec.config)?;
    let cfg: Value = serde_json::from_slice(
        &std::fs::read(node.images.blob_path(&cfg_digest))
            .map_err(|e| format!("the image's config: {e}"))?,
    )
    .map_err(|e| format!("the image's config: {e}"))?;
    let img = ImageConfig::from_oci(cfg.get("config").unwrap_or(&Value::Null));
    let mut layers = vec![];
    for l in rec.layers.iter().rev() {
        let d = ros_registry::Digest::parse(l)?;
        layers.push(node.images.layer_path(&d));
    }
    Ok((img, layers, format!("{canonical}@{}", rec.manifest)))
}

/// The pod's /etc/hosts, /etc/hostname, /etc/resolv.conf.
fn write_etc(dir: &Path, pod: &Value) -> Result<PathBuf, String> {
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).map_err(|e| format!("{}: {e}", etc.display()))?;
    let name = s(pod, "/metadata/name");
    let files = [
        (
            "hosts",
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{name}\n"
            ),
        ),
        ("hostname", format!("{name}\n")),
        (
            "resolv.conf",
            std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        ),
    ];
    for (f, text) in files {
        std::fs::write(etc.join(f), text).map_err(|e| format!("{f}: {e}"))?;
    }
    Ok(etc)
}

/// The pod's volumes as host folders: emptyDir, configMap, secret.
async fn volumes(
    node: &Node,
    pod: &Value,
    dir: &Path,
) -> Result<BTreeMap<String, PathBuf>, String> {
    let ns = s(pod, "/metadata/namespace");
    let mut out = BTreeMap::new();
    for v in pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = s(v, "/name").to_string();
        let path = dir.join("volumes").join(&name);
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (kind, obj) = if let Some(cm) = v.get("configMap") {
            ("configmaps", cm)
        } else if let Some(sec) = v.get("secret") {
            ("secrets", sec)
        } else if v.get("emptyDir").is_some() {
            out.insert(name, path);
            continue;
        } else {
            return Err(format!(
                "volume {name}: only emptyDir, configMap and secret volumes are supported"
            ));
        };
        let src = obj
            .get("name")
            .or_else(|| obj.get("secretName"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let o = node
            .client
            .get(&format!("/api/v1/namespaces/{ns}/{kind}/{src}"))
            .await
            .map_err(|e| format!("volume {name}: {kind} {src}: {e}"))?;
        let data = o
            .get("data")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (k, val) in data {
            let text = val.as_str().unwrap_or("");
            let bytes = if kind == "secrets" {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| format!("secret {src} key {k}: {e}"))?
            } else {
                text.as_bytes().to_vec()
            };
            if k.contains('/') || k == ".." {
                return Err(format!("volume {name}: key {k:?} is not a file name"));
            }
            std::fs::write(path.join(&k), bytes).map_err(|e| format!("volume {name}: {k}: {e}"))?;
        }
        out.insert(name, path);
    }
    // fsGroup: the volumes belong to that group and it may write them (setgid folders keep
    // new files in it), as the kubelet makes them.
    if let Some(gid) = pod
        .pointer("/spec/securityContext/fsGroup")
        .and_then(Value::as_u64)
    {
        let gid = u32::try_from(gid).map_err(|_| format!("fsGroup {gid} is out of range"))?;
        for p in out.values() {
            fs_group(p, gid).map_err(|e| format!("fsGroup {gid} on {}: {e}", p.display()))?;
        }
    }
    Ok(out)
}

/// `path` and what is below it given to group `gid`, group-writable, folders setgid.
fn fs_group(path: &Path, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::lchown(path, None, Some(gid))?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        let mode = meta.permissions().mode() | 0o2070;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        for e in std::fs::read_dir(path)? {
            fs_group(&e?.path(), gid)?;
        }
    } else if meta.is_file() {
        let mode = meta.permissions().mode() | 0o060;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// configMapKeyRef and secretKeyRef values of a container's env.
async fn env_refs(node: &Node, pod: &Value, c: &Value) -> Result<BTreeMap<String, String>, String> {
    let ns = s(pod, "/metadata/namespace");
    let mut out = BTreeMap::new();
    for var in c.get("env").and_then(Value::as_array).into_iter().flatten() {
        let Some(src) = var.get("valueFrom") else {
            continue;
        };
        for (field, kind) in [
            ("configMapKeyRef", "configmaps"),
            ("secretKeyRef", "secrets"),
        ] {
            let Some(r) = src.get(field) else { continue };
            let (name, key) = (s(r, "/name"), s(r, "/key"));
            let optional = r.get("optional") == Some(&json!(true));
            let o = match node
                .client
                .get(&format!("/api/v1/namespaces/{ns}/{kind}/{name}"))
                .await
            {
                Ok(o) => o,
                Err(_) if optional => continue,
                Err(e) => return Err(format!("env {}: {kind} {name}: {e}", s(var, "/name"))),
            };
            let v = o.pointer(&format!("/data/{key}")).and_then(Value::as_str);
            let v = match (v, kind) {
                (Some(v), "secrets") => {
                    use base64::Engine;
                    String::from_utf8_lossy(
                        &base64::engine::general_purpose::STANDARD
                            .decode(v)
                            .unwrap_or_default(),
                    )
                    .into_owned()
                }
                (Some(v), _) => v.to_string(),
                (None, _) if optional => continue,
                (None, _) => return Err(format!("{kind} {name} has no key {key}")),
            };
            out.insert(format!("{field}/{name}/{key}"), v);
        }
    }
    Ok(out)
}

/// Starts a container: its root (an overlay of the image's layers over a fresh upper layer),
/// its bundle, and `ros-runtime run` with its output into the log.
async fn start(
    node: &Arc<Node>,
    pod: &Value,
    dir: &Path,
    c: &mut Ctr,
    vols: &BTreeMap<String, PathBuf>,
    etc: &Path,
    exits: &mpsc::Sender<(String, i32)>,
) -> Result<(), String> {
    let Some((img, layers, _)) = c.image.clone() else {
        return Err("no image".into());
    };
    let probe_of = |key: &str, liveness: bool| -> Result<Option<Probe>, String> {
        c.spec
            .get(key)
            .filter(|p| !p.is_null())
            .map(|p| Probe::from_spec(p, &c.spec, liveness).map_err(|e| format!("{key}: {e}")))
            .transpose()
    };
    let (liveness, readiness) = (
        probe_of("livenessProbe", true)?,
        probe_of("readinessProbe", false)?,
    );
    let cdir = dir.join("containers").join(&c.name);
    let rootfs = cdir.join("rootfs");
    let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
    for d in ["upper", "work"] {
        let _ = std::fs::remove_dir_all(cdir.join(d));
    }
    for d in ["upper", "work", "rootfs"] {
        std::fs::create_dir_all(cdir.join(d)).map_err(|e| format!("{}: {e}", cdir.display()))?;
    }
    let lower: Vec<String> = layers.iter().map(|l| l.display().to_string()).collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        cdir.join("upper").display(),
        cdir.join("work").display()
    );
    nix::mount::mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| format!("mounting the container's root: {e}"))?;
    let refs = env_refs(node, pod, &c.spec).await?;
    let env = spec::env(&c.spec, &img, pod, &|src| {
        for f in ["configMapKeyRef", "secretKeyRef"] {
            if let Some(r) = src.get(f) {
                return Ok(refs
                    .get(&format!("{f}/{}/{}", s(r, "/name"), s(r, "/key")))
                    .cloned());
            }
        }
        Err("env: only fieldRef, configMapKeyRef and secretKeyRef are supported".into())
    })?;
    let mut mounts = vec![];
    for m in c
        .spec
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = s(m, "/name");
        let src = vols
            .get(name)
            .ok_or_else(|| format!("volumeMount {name}: no such volume"))?;
        mounts.push((
            src.display().to_string(),
            s(m, "/mountPath").to_string(),
            m.get("readOnly") == Some(&json!(true)),
        ));
    }
    let paths = spec::Paths {
        netns: dir.join("netns").display().to_string(),
        cgroup: format!("{}/{}", pod_cgroup(pod), c.name),
        etc: etc.display().to_string(),
        mounts,
    };
    let cfg = spec::bundle(&node.template, pod, &c.spec, &img, env, &paths)?;
    std::fs::write(
        cdir.join("config.json"),
        serde_json::to_vec_pretty(&cfg).unwrap_or_default(),
    )
    .map_err(|e| format!("config.json: {e}"))?;
    c.oom_before = oom_kills(pod);
    let id = container_id(pod, &c.name);
    let mut child = tokio::process::Command::new(&node.cfg.runtime)
        .arg("--root")
        .arg(node.cfg.data_dir.join("runtime"))
        .args(["run", "--bundle"])
        .arg(&cdir)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| format!("running {}: {e}", node.cfg.runtime.display()))?;
    c.pid = child.id();
    prune_logs(&cdir, c.restarts);
    let log = super::logs::Writer::open(
        cdir.join(format!("{}.log", c.restarts)),
        node.cfg.log_max_size,
        node.cfg.log_max_files,
    )
    .await?;
    let file = Arc::new(tokio::sync::Mutex::new(log));
    for (stream, pipe) in [
        (
            "stdout",
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ),
        (
            "stderr",
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ),
    ] {
        let Some(pipe) = pipe else { continue };
        let file = file.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let entry = format!("{} {stream} F {line}\n", crate::agent::micro_now());
                let _ = file.lock().await.write(entry.as_bytes()).await;
            }
        });
    }
    let name = c.name.clone();
    let exits = exits.clone();
    tokio::spawn(async move {
        let code = match child.wait().await {
            Ok(st) => st.code().unwrap_or(137),
            Err(_) => 255,
        };
        let _ = exits.send((name, code)).await;
    });
    c.state = State::Running {
        started: now_rfc3339(),
    };
    let now = Instant::now();
    c.liveness = liveness.map(|p| Tracker::new(p, now));
    c.readiness = readiness.map(|p| Tracker::new(p, now));
    event(
        node,
        pod,
        Some(&c.name),
        "Normal",
        "Started",
        format!("Started container {}", c.name),
    );
    Ok(())
}

/// Starts the checks that are due; their results come back on `results`.
fn run_probes(
    node: &Node,
    pod: &Value,
    dir: &Path,
    ctrs: &mut [Ctr],
    results: &mpsc::Sender<ProbeResult>,
) {
    let now = Instant::now();
    for c in ctrs.iter_mut() {
        if !matches!(c.state, State::Running { .. }) {
            continue;
        }
        let restarts = c.restarts;
        for (kind, t) in [
            (Kind::Liveness, c.liveness.as_mut()),
            (Kind::Readiness, c.readiness.as_mut()),
        ] {
            let Some(t) = t else { continue };
            if !t.due(now) {
                continue;
            }
            t.started(now);
            let target = probe::Target {
                netns: dir.join("netns"),
                runtime: node.cfg.runtime.clone(),
                runtime_root: node.cfg.data_dir.join("runtime"),
                container_id: container_id(pod, &c.name),
            };
            let (handler, timeout, name, results) = (
                t.probe.handler.clone(),
                t.probe.timeout,
                c.name.clone(),
                results.clone(),
            );
            tokio::spawn(async move {
                let r = probe::check(&handler, &target, timeout).await;
                let _ = results.send((name, kind, restarts, r)).await;
            });
        }
    }
}

/// When the next probe is due, if any runs.
fn next_probe(ctrs: &[Ctr]) -> Option<Instant> {
    ctrs.iter()
        .filter(|c| matches!(c.state, State::Running { .. }))
        .flat_map(|c| [c.liveness.as_ref(), c.readiness.as_ref()])
        .flatten()
        .filter(|t| !t.busy)
        .map(|t| t.next)
        .min()
}

/// A probe's result: readiness changes the status; a liveness verdict of unhealthy stops the
/// container (SIGTERM, SIGKILL after the grace period) for its restartPolicy to restart.
fn probe_result(node: &Node, pod: &Value, ctrs: &mut [Ctr], r: ProbeResult) {
    let (name, kind, restarts, result) = r;
    let Some(c) = ctrs.iter_mut().find(|c| c.name == name) else {
        return;
    };
    // A result from before a restart, or for a container no longer running, is stale.
    if c.restarts != restarts || !matches!(c.state, State::Running { .. }) {
        return;
    }
    let what = match kind {
        Kind::Liveness => "Liveness",
        Kind::Readiness => "Readiness",
    };
    if let Err(e) = &result {
        event(
            node,
            pod,
            Some(&c.name),
            "Warning",
            "Unhealthy",
            format!("{what} probe failed: {e}"),
        );
    }
    let tracker = match kind {
        Kind::Liveness => c.liveness.as_mut(),
        Kind::Readiness => c.readiness.as_mut(),
    };
    let Some(t) = tracker else { return };
    if t.record(result.is_ok()) == Some(false) && kind == Kind::Liveness {
        event(
            node,
            pod,
            Some(&c.name),
            "Normal",
            "Killing",
            format!(
                "Container {} failed liveness probe, will be restarted",
                c.name
            ),
        );
        let Some(pid) = c.pid else { return };
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let grace = pod
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(30);
        let (runtime, root, id) = (
            node.cfg.runtime.clone(),
            node.cfg.data_dir.join("runtime"),
            container_id(pod, &c.name),
        );
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(grace)).await;
            // Still the same `ros-runtime run` after the grace period: SIGKILL to the container.
            if nix::sys::signal::kill(pid, None).is_ok() {
                let _ = tokio::process::Command::new(&runtime)
                    .arg("--root")
                    .arg(&root)
                    .args(["kill", "--all", &id, "KILL"])
                    .output()
                    .await;
            }
        });
    }
}

/// How many runs of a container have a log in its folder (the next run's number).
fn runs_logged(cdir: &Path) -> u32 {
    std::fs::read_dir(cdir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| super::logs::run_of(&e.file_name().to_string_lossy(), true))
        .max()
        .map_or(0, |n| n + 1)
}

/// Keeps the logs of the container's current and previous run (`--previous`), as the
/// kubelet does; older runs' logs, rotated parts included, are removed.
fn prune_logs(cdir: &Path, restart: u32) {
    for e in std::fs::read_dir(cdir).into_iter().flatten().flatten() {
        if super::logs::run_of(&e.file_name().to_string_lossy(), false)
            .is_some_and(|n| n + 1 < restart)
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn policy_restarts(pod: &Value, code: i32) -> bool {
    match s(pod, "/spec/restartPolicy") {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    }
}

fn status(
    node: &Node,
    pod: &Value,
    ctrs: &[Ctr],
    started: &str,
    pod_ip: Option<std::net::Ipv4Addr>,
) -> Value {
    let statuses: Vec<Value> = ctrs
        .iter()
        .map(|c| {
            let mut st = json!({"name": c.name, "image": s(&c.spec, "/image"),
                "imageID": c.image.as_ref().map(|i| i.2.clone()).unwrap_or_default(),
                "containerID": format!("ros-runtime://{}", container_id(pod, &c.name)),
                "ready": c.ready(),
                "started": matches!(c.state, State::Running { .. }),
                "restartCount": c.restarts, "state": c.state.json()});
            if let Some(l) = &c.last {
                st["lastState"] = l.json();
            }
            st
        })
        .collect();
    let running = ctrs
        .iter()
        .any(|c| matches!(c.state, State::Running { .. }));
    let all_done = ctrs
        .iter()
        .all(|c| matches!(c.state, State::Terminated { .. }));
    let all_ok = ctrs
        .iter()
        .all(|c| matches!(c.state, State::Terminated { code: 0, .. }));
    let phase = if all_done && all_ok {
        "Succeeded"
    } else if all_done {
        "Failed"
    } else if running || ctrs.iter().any(|c| c.restarts > 0) {
        "Running"
    } else {
        "Pending"
    };
    let ready = ctrs.iter().all(Ctr::ready);
    let t = |b: bool| if b { "True" } else { "False" };
    let old = |ty: &str| {
        pod.pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
                    .cloned()
            })
    };
    let cond = |ty: &str, v: bool| {
        let st = t(v);
        let since = old(ty)
            .filter(|c| c.get("status").and_then(Value::as_str) == Some(st))
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or(json!(now_rfc3339()));
        json!({"type": ty, "status": st, "lastTransitionTime": since})
    };
    let mut st = json!({"phase": phase, "containerStatuses": statuses, "startTime": started,
        "qosClass": pod.pointer("/status/qosClass").cloned().unwrap_or(json!("BestEffort")),
        "conditions": [cond("PodScheduled", true), cond("Initialized", true), cond("ContainersReady", ready), cond("Ready", ready)]});
    if let Some(a) = &node.cfg.address {
        st["hostIP"] = json!(a);
        st["hostIPs"] = json!([{"ip": a}]);
    }
    if let Some(ip) = pod_ip {
        st["podIP"] = json!(ip.to_string());
        st["podIPs"] = json!([{"ip": ip.to_string()}]);
    }
    st
}

async fn write_status(node: &Node, pod: &Value, st: &Value) {
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}/status",
        s(pod, "/metadata/namespace"),
        s(pod, "/metadata/name")
    );
    if let Err(e) = node.client.merge_patch(&path, &json!({"status": st})).await
        && e.code() != Some(404)
    {
        eprintln!(
            "ros-kube agent: status of pod {}: {e}",
            s(pod, "/metadata/name")
        );
    }
}

/// Stops every running container: SIGTERM to each (passed on by `ros-runtime run`), then after
/// the grace period SIGKILL through the runtime.
async fn stop_all(
    node: &Node,
    pod: &Value,
    ctrs: &mut [Ctr],
    exits: &mut mpsc::Receiver<(String, i32)>,
    grace: Duration,
) {
    for c in ctrs.iter() {
        if let (Some(pid), State::Running { .. }) = (c.pid, &c.state) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    let deadline = tokio::time::Instant::now() + grace;
    let mut killed = false;
    while ctrs
        .iter()
        .any(|c| matches!(c.state, State::Running { .. }))
    {
        tokio::select! {
            Some((name, code)) = exits.recv() => {
                if let Some(c) = ctrs.iter_mut().find(|c| c.name == name) {
                    let started = match &c.state { State::Running { started } => started.clone(), _ => String::new() };
                    c.state = State::Terminated { code, reason: "Completed".into(), started, finished: now_rfc3339() };
                    c.pid = None;
                }
            }
            _ = tokio::time::sleep_until(deadline), if !killed => {
                killed = true;
                for c in ctrs.iter().filter(|c| matches!(c.state, State::Running { .. })) {
                    let _ = tokio::process::Command::new(&node.cfg.runtime)
                        .arg("--root").arg(node.cfg.data_dir.join("runtime"))
                        .args(["kill", "--all", &container_id(pod, &c.name), "KILL"])
                        .output().await;
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(30)), if killed => break,
        }
    }
}

fn cleanup(node: &Node, pod: &Value, dir: &Path, ctrs: &[Ctr]) {
    if let Some(net) = node.podnet.get() {
        net.release(s(pod, "/metadata/uid"));
    }
    for c in ctrs {
        let _ = nix::mount::umount2(
            &dir.join("containers").join(&c.name).join("rootfs"),
            nix::mount::MntFlags::MNT_DETACH,
        );
    }
    super::netns::remove(&dir.join("netns"));
}

pub async fn worker(node: Arc<Node>, mut rx: watch::Receiver<Option<Value>>) {
    let Some(mut pod) = rx.borrow().clone() else {
        return;
    };
    let dir = pod_dir(&node, &pod);
    let started = now_rfc3339();
    let mut ctrs: Vec<Ctr> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| Ctr {
            name: s(c, "/name").to_string(),
            spec: c.clone(),
            image: None,
            state: State::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            last: None,
            restarts: 0,
            pid: None,
            next_start: Some(Instant::now()),
            backoff: node.cfg.backoff_initial,
            oom_before: 0,
            liveness: None,
            readiness: None,
        })
        .collect();
    // A pod this node ran before the agent restarted (its containers ended with the agent's
    // service): its containers' runs go on counting, so that their logs stay apart and the
    // restart shows.
    for c in ctrs.iter_mut() {
        c.restarts = runs_logged(&dir.join("containers").join(&c.name));
    }
    let (exit_tx, mut exits) = mpsc::channel::<(String, i32)>(16);
    let (probe_tx, mut probe_results) = mpsc::channel::<ProbeResult>(16);
    let setup = async {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let ns = dir.join("netns");
        tokio::task::spawn_blocking(move || super::netns::create(&ns))
            .await
            .map_err(|e| e.to_string())??;
        let etc = write_etc(&dir, &pod)?;
        let vols = volumes(&node, &pod, &dir).await?;
        Ok::<_, String>((etc, vols))
    };
    // The pod's address on the node's bridge, when pods have a network.
    let mut pod_ip: Option<std::net::Ipv4Addr> = None;
    let setup = async {
        let r = setup.await?;
        if let Some(net) = node.podnet.get() {
            let uid = s(&pod, "/metadata/uid");
            let ip = net.allocate(uid)?;
            pod_ip = Some(ip);
            net.attach(&dir.join("netns"), uid, ip).await?;
        }
        Ok::<_, String>(r)
    };
    let (etc, vols) = match setup.await {
        Ok(x) => x,
        Err(e) => {
            for c in ctrs.iter_mut() {
                c.state = State::Waiting {
                    reason: "CreateContainerConfigError".into(),
                    message: e.clone(),
                };
            }
            write_status(&node, &pod, &status(&node, &pod, &ctrs, &started, pod_ip)).await;
            // Wait for the pod to go, then clean up what was made.
            while rx.changed().await.is_ok() {
                if rx
                    .borrow()
                    .as_ref()
                    .is_none_or(|p| p.pointer("/metadata/deletionTimestamp").is_some())
                {
                    break;
                }
            }
            cleanup(&node, &pod, &dir, &ctrs);
            finish(&node, &pod).await;
            return;
        }
    };
    let mut last_status = Value::Null;
    let mut closed = false;
    loop {
        let gone = closed
            || rx
                .borrow()
                .as_ref()
                .is_none_or(|p| p.pointer("/metadata/deletionTimestamp").is_some());
        if let Some(p) = rx.borrow().clone() {
            pod = p;
            // Known here before the API has it: for env's fieldRef status.podIP.
            if let Some(ip) = pod_ip {
                pod["status"]["podIP"] = json!(ip.to_string());
            }
        }
        if gone {
            let grace = pod
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .or_else(|| {
                    pod.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(30)
                .max(0) as u64;
            stop_all(
                &node,
                &pod,
                &mut ctrs,
                &mut exits,
                Duration::from_secs(grace),
            )
            .await;
            cleanup(&node, &pod, &dir, &ctrs);
            finish(&node, &pod).await;
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        // Images first, then the containers whose time has come.
        let now = Instant::now();
        for c in ctrs.iter_mut() {
            if c.next_start.is_none_or(|t| t > now) || matches!(c.state, State::Running { .. }) {
                continue;
            }
            if c.image.is_none() {
                let n = node.clone();
                let name = s(&c.spec, "/image").to_string();
                event(
                    &node,
                    &pod,
                    Some(&c.name),
                    "Normal",
                    "Pulling",
                    format!("Pulling image \"{name}\""),
                );
                let pulled = Instant::now();
                let name2 = name.clone();
                match tokio::task::spawn_blocking(move || image(&n, &name2)).await {
                    Ok(Ok(img)) => {
                        event(
                            &node,
                            &pod,
                            Some(&c.name),
                            "Normal",
                            "Pulled",
                            format!(
                                "Successfully pulled image \"{name}\" in {:.3}s",
                                pulled.elapsed().as_secs_f64()
                            ),
                        );
                        c.image = Some(img)
                    }
                    Ok(Err(e)) => {
                        event(
                            &node,
                            &pod,
                            Some(&c.name),
                            "Warning",
                            "Failed",
                            format!("Failed to pull image \"{name}\": {e}"),
                        );
                        let reason = if c.backoff > node.cfg.backoff_initial {
                            "ImagePullBackOff"
                        } else {
                            "ErrImagePull"
                        };
                        c.state = State::Waiting {
                            reason: reason.into(),
                            message: e,
                        };
                        c.next_start = Some(Instant::now() + c.backoff);
                        c.backoff = (c.backoff * 2).min(node.cfg.backoff_max);
                        continue;
                    }
                    Err(e) => {
                        c.state = State::Waiting {
                            reason: "ErrImagePull".into(),
                            message: e.to_string(),
                        };
                        continue;
                    }
                }
            }
            if let Err(e) = start(&node, &pod, &dir, c, &vols, &etc, &exit_tx).await {
                event(
                    &node,
                    &pod,
                    Some(&c.name),
                    "Warning",
                    "Failed",
                    format!("Error: {e}"),
                );
                c.state = State::Waiting {
                    reason: "CreateContainerError".into(),
                    message: e,
                };
                c.next_start = Some(Instant::now() + c.backoff);
                c.backoff = (c.backoff * 2).min(node.cfg.backoff_max);
            } else {
                c.next_start = None;
            }
        }
        run_probes(&node, &pod, &dir, &mut ctrs, &probe_tx);
        let st = status(&node, &pod, &ctrs, &started, pod_ip);
        if st != last_status {
            write_status(&node, &pod, &st).await;
            last_status = st;
        }
        let wake = ctrs
            .iter()
            .filter_map(|c| c.next_start)
            .chain(next_probe(&ctrs))
            .min()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            r = rx.changed() => { if r.is_err() { closed = true; } }
            Some(r) = probe_results.recv() => probe_result(&node, &pod, &mut ctrs, r),
            Some((name, code)) = exits.recv() => {
                let ooms = oom_kills(&pod);
                if let Some(c) = ctrs.iter_mut().find(|c| c.name == name) {
                    let started = match &c.state { State::Running { started } => started.clone(), _ => String::new() };
                    let reason = if ooms > c.oom_before { "OOMKilled" } else if code == 0 { "Completed" } else { "Error" };
                    let done = State::Terminated { code, reason: reason.into(), started, finished: now_rfc3339() };
                    c.pid = None;
                    c.liveness = None;
                    c.readiness = None;
                    if policy_restarts(&pod, code) {
                        event(&node, &pod, Some(&c.name), "Warning", "BackOff",
                            format!("Back-off restarting failed container {} in pod {}", c.name, s(&pod, "/metadata/name")));
                        c.last = Some(done);
                        c.restarts += 1;
                        c.state = State::Waiting { reason: "CrashLoopBackOff".into(),
                            message: format!("back-off {}s restarting failed container={} pod={}", c.backoff.as_secs(), c.name, s(&pod, "/metadata/name")) };
                        c.next_start = Some(Instant::now() + c.backoff);
                        c.backoff = (c.backoff * 2).min(node.cfg.backoff_max);
                    } else {
                        c.state = done;
                    }
                }
            }
            _ = tokio::time::sleep(wake) => {}
        }
    }
}

/// The pod is stopped here: removed from the API (the node's last word on it).
async fn finish(node: &Node, pod: &Value) {
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}",
        s(pod, "/metadata/namespace"),
        s(pod, "/metadata/name")
    );
    let uid = s(pod, "/metadata/uid");
    let _ = node
        .client
        .delete(
            &path,
            &json!({"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}),
        )
        .await;
}
