//! The agent: the kubelet's job on one node. It registers the Node (capacity, addresses,
//! nodeInfo, Ready) and renews its Lease, watches the pods bound to it, and runs each pod's
//! containers with ros-runtime as an OCI runtime (`ros-runtime run`, one process per container,
//! as containerd runs runc through a shim): a network namespace per pod shared by its
//! containers, an overlay of the image's layers per container, the image pulled with the
//! registry client, logs kept per container and restart, restarts by the pod's restartPolicy
//! with a doubling back-off (CrashLoopBackOff meanwhile), graceful termination, and the pod's
//! status written back.
//!
//! Running containers through the runtime's command line rather than its library keeps forks
//! out of this threaded process (`ros_runtime::forksafe`'s caveats), and makes the runtime the
//! standard OCI one the conformance suite checks.

pub mod exec;
pub mod kubelet;
pub mod logs;
pub mod netns;
pub mod pod;
pub mod podnet;
pub mod probe;
pub mod rtnl;
pub mod spec;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::client::Client;
use crate::objects::now_rfc3339;

#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    /// Pods' folders, images, logs.
    pub data_dir: PathBuf,
    /// The OCI runtime's binary (`ros-runtime`).
    pub runtime: PathBuf,
    pub registries: ros_registry::Registries,
    /// A crashed container waits this long before its first restart, doubling to the max.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub labels: BTreeMap<String, String>,
    /// The Node's taints (`{"key", "value", "effect"}`).
    pub taints: Vec<Value>,
    /// A container's log file is rotated when it would pass this many bytes...
    pub log_max_size: u64,
    /// ...and this many files (the current one included) are kept per run.
    pub log_max_files: u32,
    /// The pods' network (a bridge, an address each, outbound NAT loaded with this `nft`);
    /// none: each pod has its loopback only.
    pub pod_network: Option<PathBuf>,
    /// The node's address as the cluster reaches it (the InternalIP).
    pub address: Option<String>,
    /// The agent's own endpoint (logs for the API server): where it listens, with the CA and
    /// the node's serving certificate and key (PEM).
    pub kubelet: Option<Kubelet>,
}

#[derive(Debug, Clone)]
pub struct Kubelet {
    pub listen: std::net::SocketAddr,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// What every pod worker shares.
#[derive(Debug)]
pub struct Node {
    pub cfg: Config,
    pub client: Client,
    pub template: Value,
    pub images: Arc<ros_registry::Store>,
    pub registry: Arc<ros_registry::Client>,
    /// Set once the Node has its pod range (before any pod starts).
    pub podnet: std::sync::OnceLock<podnet::PodNet>,
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn mem_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn kernel() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

/// The Node's status as the agent reports it.
pub fn node_status(cfg: &Config, now: &str, kubelet_port: u16) -> Value {
    let mem = mem_kib();
    let capacity = json!({"cpu": cpus().to_string(), "memory": format!("{mem}Ki"), "pods": "110"});
    let mut addresses = vec![json!({"type": "Hostname", "address": cfg.node_name})];
    if let Some(a) = &cfg.address {
        addresses.insert(0, json!({"type": "InternalIP", "address": a}));
    }
    json!({
        "capacity": capacity, "allocatable": capacity, "addresses": addresses,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": {"kubeletVersion": format!("{}+ros", crate::api::KUBE_VERSION), "kubeProxyVersion": "",
                     "kernelVersion": kernel(), "osImage": "ros", "operatingSystem": "linux",
                     "architecture": arch(), "containerRuntimeVersion": format!("ros-runtime://{}", env!("CARGO_PKG_VERSION")),
                     "machineID": "", "systemUUID": "", "bootID": ""},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "ros-kube agent is posting ready status",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}],
    })
}

async fn register(node: &Node, kubelet_port: u16) -> Result<(), String> {
    let cfg = &node.cfg;
    let mut labels = json!({"kubernetes.io/hostname": cfg.node_name, "kubernetes.io/os": "linux", "kubernetes.io/arch": arch()});
    for (k, v) in &cfg.labels {
        labels[k] = json!(v);
    }
    let obj = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": cfg.node_name, "labels": labels},
        "spec": {"taints": cfg.taints}});
    match node.client.create("/api/v1/nodes", &obj).await {
        Ok(_) => {}
        Err(e) if e.code() == Some(409) => {
            // The configured taints replace the ones a previous start set (a merge patch
            // replaces the list).
            node.client
                .merge_patch(
                    &format!("/api/v1/nodes/{}", cfg.node_name),
                    &json!({"metadata": {"labels": labels}, "spec": {"taints": cfg.taints}}),
                )
                .await
                .map_err(|e| e.to_string())?;
        }
        Err(e) => return Err(format!("registering node {}: {e}", cfg.node_name)),
    }
    node.client
        .merge_patch(
            &format!("/api/v1/nodes/{}/status", cfg.node_name),
            &json!({"status": node_status(cfg, &now_rfc3339(), kubelet_port)}),
        )
        .await
        .map_err(|e| format!("node status: {e}"))?;
    Ok(())
}

/// Now, as a MicroTime (a Lease's renewTime).
pub fn micro_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    chrono::DateTime::from_timestamp(d.as_secs() as i64, d.subsec_nanos())
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .unwrap_or_default()
}

/// Renews the Lease every 10 s (40 s duration) and the Ready heartbeat with it.
async fn heartbeat(node: Arc<Node>) {
    let name = node.cfg.node_name.clone();
    let path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    loop {
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name}, "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro_now()}});
        let r = node
            .client
            .merge_patch(
                &format!("{path}/{name}"),
                &json!({"spec": {"renewTime": micro_now(), "holderIdentity": name}}),
            )
            .await;
        if let Err(e) = r {
            if e.code() == Some(404) {
                let _ = node.client.create(path, &lease).await;
            } else {
                eprintln!("ros-kube agent: renewing the lease: {e}");
            }
        }
        let _ = node
            .client
            .strategic_patch(
                &format!("/api/v1/nodes/{name}/status"),
                &json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                    "message": "ros-kube agent is posting ready status", "lastHeartbeatTime": now_rfc3339()}]}}),
            )
            .await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// In a container with a cgroup namespace of its own (the `cluster` service), the agent's
/// processes leave the namespace's root for a child group, so that the root can hand the
/// cpu, memory, io and pids controllers to the pods' groups (cgroup v2 lets a group with
/// processes in it give its children no controllers).
fn delegate_cgroup() -> Result<(), String> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let root = Path::new("/sys/fs/cgroup");
    if own.trim() != "0::/" || !root.join("cgroup.subtree_control").exists() {
        return Ok(());
    }
    let agent = root.join("agent");
    std::fs::create_dir_all(&agent).map_err(|e| format!("{}: {e}", agent.display()))?;
    let procs = std::fs::read_to_string(root.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter(|l| !l.trim().is_empty()) {
        std::fs::write(agent.join("cgroup.procs"), pid)
            .map_err(|e| format!("moving {pid} into {}: {e}", agent.display()))?;
    }
    let available = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let want: Vec<String> = ["cpu", "memory", "io", "pids"]
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    std::fs::write(root.join("cgroup.subtree_control"), want.join(" "))
        .map_err(|e| format!("enabling {} for the pods' cgroups: {e}", want.join(" ")))
}

/// Runs the agent until its process ends: registration, the lease, the pods.
pub async fn run(client: Client, cfg: Config) -> Result<(), String> {
    run_on(client, cfg, None).await
}

/// [`run`], its endpoint on `listener` when given (bound early by a joining agent, so that the
/// service's health check finds the port while it joins) instead of `Kubelet::listen`.
pub async fn run_on(
    client: Client,
    cfg: Config,
    listener: Option<tokio::net::TcpListener>,
) -> Result<(), String> {
    std::fs::create_dir_all(cfg.data_dir.join("pods"))
        .map_err(|e| format!("{}: {e}", cfg.data_dir.display()))?;
    // The containers of an earlier run of this agent ended with it: their cgroups are below
    // the service's, which its supervisor kills whole when it stops. Their state in the
    // runtime's folder would only make the same ids refuse to start again; the pods' folders
    // stay (their logs are `--previous`'s).
    let _ = std::fs::remove_dir_all(cfg.data_dir.join("runtime"));
    delegate_cgroup()?;
    let template = runtime_template(&cfg).await?;
    let images = ros_registry::Store::open(&cfg.data_dir.join("images"))?;
    let registry = ros_registry::Client::new(cfg.registries.clone());
    let node = Arc::new(Node {
        cfg,
        client,
        template,
        images: Arc::new(images),
        registry: Arc::new(registry),
        podnet: std::sync::OnceLock::new(),
    });
    let mut kubelet_port = 0;
    if let Some(k) = node.cfg.kubelet.clone() {
        let listener = match listener {
            Some(l) => l,
            None => tokio::net::TcpListener::bind(k.listen)
                .await
                .map_err(|e| format!("the agent's endpoint on {}: {e}", k.listen))?,
        };
        kubelet_port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let paths = kubelet::Paths {
            pods: node.cfg.data_dir.join("pods"),
            runtime: node.cfg.runtime.clone(),
            runtime_root: node.cfg.data_dir.join("runtime"),
        };
        tokio::spawn(async move {
            if let Err(e) =
                kubelet::serve(listener, &k.ca_pem, &k.cert_pem, &k.key_pem, paths).await
            {
                eprintln!("ros-kube agent: its endpoint: {e}");
            }
        });
    }
    let mut delay = Duration::from_millis(200);
    while let Err(e) = register(&node, kubelet_port).await {
        eprintln!("ros-kube agent: {e}; retrying in {delay:?}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    tokio::spawn(heartbeat(node.clone()));
    if let Some(nft) = node.cfg.pod_network.clone() {
        let cidr = pod_cidr(&node).await;
        let net = podnet::PodNet::setup(cidr, &node.cfg.data_dir, &nft).await?;
        eprintln!(
            "ros-kube agent: pods' network {cidr} on {} (gateway {})",
            podnet::BRIDGE,
            net.gateway
        );
        let _ = node.podnet.set(net);
    }
    pods(node).await;
    Ok(())
}

/// The pod range the server gave this node (waiting for it).
async fn pod_cidr(node: &Node) -> ipnet::Ipv4Net {
    let mut said = false;
    loop {
        if let Ok(n) = node
            .client
            .get(&format!("/api/v1/nodes/{}", node.cfg.node_name))
            .await
            && let Some(c) = n.pointer("/spec/podCIDR").and_then(Value::as_str)
        {
            match c.parse() {
                Ok(c) => return c,
                Err(e) => eprintln!("ros-kube agent: the node's podCIDR {c:?}: {e}"),
            }
        }
        if !said {
            eprintln!("ros-kube agent: waiting for the server to give this node a pod range");
            said = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The runtime's default spec, the template of every container's config.json.
async fn runtime_template(cfg: &Config) -> Result<Value, String> {
    let dir = cfg.data_dir.join("spec-template");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let out = tokio::process::Command::new(&cfg.runtime)
        .args(["spec", "--bundle"])
        .arg(&dir)
        .output()
        .await
        .map_err(|e| format!("running {} spec: {e}", cfg.runtime.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} spec: {}",
            cfg.runtime.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text =
        std::fs::read(dir.join("config.json")).map_err(|e| format!("the runtime's spec: {e}"))?;
    serde_json::from_slice(&text).map_err(|e| format!("the runtime's spec: {e}"))
}

/// Follows the pods bound to this node; one worker per pod, told of each change.
async fn pods(node: Arc<Node>) {
    let mut workers: HashMap<String, watch::Sender<Option<Value>>> = HashMap::new();
    let sel = format!("spec.nodeName%3D{}", node.cfg.node_name);
    loop {
        let mut events = match node
            .client
            .watch(&format!(
                "/api/v1/pods?watch=true&fieldSelector={sel}&timeoutSeconds=600"
            ))
            .await
        {
            Ok(rx) => rx,
            Err(e) => {
                eprintln!("ros-kube agent: watching pods: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut seen = std::collections::HashSet::new();
        while let Some(ev) = events.recv().await {
            let ty = ev.get("type").and_then(Value::as_str).unwrap_or("");
            let pod = ev.get("object").cloned().unwrap_or_default();
            let uid = pod
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if uid.is_empty() {
                continue;
            }
            seen.insert(uid.clone());
            workers.retain(|_, tx| !tx.is_closed());
            match ty {
                "DELETED" => {
                    if let Some(tx) = workers.get(&uid) {
                        let _ = tx.send(None);
                    }
                }
                "ADDED" | "MODIFIED" => match workers.get(&uid) {
                    Some(tx) => {
                        let _ = tx.send(Some(pod));
                    }
                    None => {
                        let (tx, rx) = watch::channel(Some(pod));
                        workers.insert(uid, tx);
                        tokio::spawn(pod::worker(node.clone(), rx));
                    }
                },
                _ => {}
            }
        }
        // The watch ended (timeout, server restart): the next one starts with a list, and a
        // worker whose pod is gone by then is told so.
        let _ = seen;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let live: std::collections::HashSet<String> = match node
            .client
            .get(&format!("/api/v1/pods?fieldSelector={sel}"))
            .await
        {
            Ok(list) => list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    p.pointer("/metadata/uid")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .collect(),
            Err(_) => continue,
        };
        for (uid, tx) in &workers {
            if !live.contains(uid) {
                let _ = tx.send(None);
            }
        }
    }
}
