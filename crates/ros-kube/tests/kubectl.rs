//! The API server on the host, driven by the real clients: kubectl (1.32, and 1.27 to 1.33 for
//! the version skew) and the official Python client. Each test starts its own server on a free
//! loopback port with its own data folder.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::SDK_BIN;

/// Debian's etcd 3.4, one member on free loopback ports with its own data folder.
struct Etcd {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn etcd() -> Etcd {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir.path().join("etcd"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("default={peer_url}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("etcd (Debian's etcd-server; scripts/setup.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
        assert!(Instant::now() < deadline, "etcd did not listen in 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Etcd {
        child,
        url: format!("etcd://127.0.0.1:{client}"),
        _dir: dir,
    }
}

/// Where a test's server keeps its objects: every API test runs against both.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Store {
    Embedded,
    Etcd,
}

struct Cluster {
    dir: tempfile::TempDir,
    rt: Option<tokio::runtime::Runtime>,
    addr: std::net::SocketAddr,
    kubeconfig: PathBuf,
    _etcd: Option<Etcd>,
}

impl Cluster {
    fn start() -> Cluster {
        Self::start_with(Store::Embedded)
    }

    fn start_with(store: Store) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let etcd = (store == Store::Etcd).then(etcd);
        let mut c = Self::start_on(dir, etcd.as_ref().map(|e| e.url.clone()));
        c._etcd = etcd;
        c
    }

    fn start_in(dir: tempfile::TempDir) -> Cluster {
        Self::start_on(dir, None)
    }

    fn start_on(dir: tempfile::TempDir, datastore: Option<String>) -> Cluster {
        Self::start_full(dir, datastore, ros_kube::controllers::Settings::default())
    }

    fn start_full(
        dir: tempfile::TempDir,
        datastore: Option<String>,
        controllers: ros_kube::controllers::Settings,
    ) -> Cluster {
        let cfg = ros_kube::server::Config {
            data_dir: dir.path().join("data"),
            listen: "127.0.0.1:0".parse().unwrap(),
            sans: vec![],
            controllers,
            publish: Some(dir.path().join("publish")),
            datastore,
            agent: None,
        };
        let (rt, addr, kubeconfig) = common::server(&cfg, dir.path());
        Cluster {
            dir,
            rt: Some(rt),
            addr,
            kubeconfig,
            _etcd: None,
        }
    }

    /// Stops the server (its runtime and every task on it) and keeps the data folder.
    fn stop(mut self) -> tempfile::TempDir {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
        // The store's writer thread ends when its last handle goes; give it a moment.
        std::thread::sleep(Duration::from_millis(200));
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    fn kubectl_v(&self, version: &str, args: &[&str], stdin: Option<&str>) -> Output {
        common::kubectl(version, &self.kubeconfig, self.dir.path(), args, stdin)
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_v("1.32", args, None)
    }

    /// kubectl that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(
            o.status.success(),
            "kubectl {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs one of tests/python/ with the official client (the venv scripts/setup.sh makes):
    /// the kubeconfig first, then `args`; it must succeed; its stdout.
    fn python(&self, script: &str, args: &[&str]) -> String {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let py = dir.join("../../target/venv-kube/bin/python");
        assert!(
            py.exists(),
            "{} is missing (scripts/setup.sh makes it)",
            py.display()
        );
        let o = Command::new(py)
            .arg(dir.join("tests/python").join(script))
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{script}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn apply(&self, yaml: &str) -> Output {
        self.kubectl_v("1.32", &["apply", "-f", "-"], Some(yaml))
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn deployment(replicas: u32, image: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {{app: web}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: web
        image: {image}
        {extra}
        ports:
        - containerPort: 8080
        resources:
          limits: {{memory: 64Mi}}
"#
    )
}

#[test]
fn discovery_namespaces_and_service_accounts() {
    discovery_namespaces_and_service_accounts_on(Store::Embedded);
}

#[test]
fn discovery_namespaces_and_service_accounts_on_etcd() {
    discovery_namespaces_and_service_accounts_on(Store::Etcd);
}

fn discovery_namespaces_and_service_accounts_on(store: Store) {
    let c = Cluster::start_with(store);
    let out = c.ok(&["get", "namespaces"]);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(out.contains(ns), "{out}");
    }
    assert!(out.starts_with("NAME"), "a Table's columns: {out}");
    assert!(out.contains("Active"), "{out}");
    let res = c.ok(&["api-resources"]);
    for r in [
        "deployments",
        "replicasets",
        "pods",
        "configmaps",
        "leases",
        "events",
    ] {
        assert!(res.contains(r), "{res}");
    }
    // The namespace controller gives each namespace a default service account.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = c.kubectl(&["get", "serviceaccount", "default", "-n", "kube-system"]);
        if o.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "no default service account");
        std::thread::sleep(Duration::from_millis(200));
    }
    let v = c.ok(&["version"]);
    assert!(v.contains("Server Version: v1.33"), "{v}");
    // What the machine's CLI reads: the kubeconfig, the join token (pinning the CA), status.
    let publish = c.dir.path().join("publish");
    let kc = std::fs::read_to_string(publish.join("kubeconfig")).unwrap();
    assert!(kc.contains("current-context: default") && kc.contains("server: https://127.0.0.1:"));
    let token = std::fs::read_to_string(publish.join("token")).unwrap();
    let pki = ros_kube::pki::Pki::open(&c.dir.path().join("data/pki")).unwrap();
    assert!(
        token.starts_with(&format!("K10{}::server:", pki.ca_hash())),
        "{token}"
    );
    let st: Value =
        serde_json::from_str(&std::fs::read_to_string(publish.join("status.json")).unwrap())
            .unwrap();
    assert_eq!(st["role"], "server");
}

#[test]
fn apply_validate_patch_scale_and_delete() {
    apply_validate_patch_scale_and_delete_on(Store::Embedded);
}

#[test]
fn apply_validate_patch_scale_and_delete_on_etcd() {
    apply_validate_patch_scale_and_delete_on(Store::Etcd);
}

fn apply_validate_patch_scale_and_delete_on(store: Store) {
    let c = Cluster::start_with(store);
    let o = c.apply(&deployment(3, "busybox:1", ""));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Applied again with a change: the strategic merge keeps the container's ports.
    let o = c.apply(&deployment(4, "busybox:2", ""));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d = c.json(&["get", "deployment", "web"]);
    assert_eq!(d["spec"]["replicas"], 4);
    assert_eq!(d["metadata"]["generation"], 2);
    let ctr = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(ctr["image"], "busybox:2");
    assert_eq!(ctr["ports"][0]["containerPort"], 8080);
    // An unknown field is refused, named, and nothing changes.
    let o = c.apply(&deployment(5, "busybox:3", "imagePolicy: Always"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("unknown field \"spec.template.spec.containers[0].imagePolicy\""),
        "{err}"
    );
    assert_eq!(c.json(&["get", "deployment", "web"])["spec"]["replicas"], 4);
    // Scale 1 -> 5 -> 2 through the scale subresource.
    for n in ["1", "5", "2"] {
        c.ok(&["scale", "deployment", "web", &format!("--replicas={n}")]);
        let d = c.json(&["get", "deployment", "web"]);
        assert_eq!(d["spec"]["replicas"].to_string(), n);
    }
    // The columns a real cluster prints.
    let wide = c.ok(&["get", "deployment", "-o", "wide"]);
    let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ]
    );
    assert!(
        wide.contains("busybox:2") && wide.contains("app=web"),
        "{wide}"
    );
    // Labels select; a field selector by name.
    assert!(c.ok(&["get", "deploy", "-l", "app=web"]).contains("web"));
    assert!(
        c.ok(&["get", "deploy", "-l", "app!=web"]).is_empty(),
        "a selector that matches nothing prints nothing on stdout"
    );
    assert!(
        c.ok(&["get", "deploy", "--field-selector", "metadata.name=web"])
            .contains("web")
    );
    c.ok(&["delete", "deployment", "web"]);
    let o = c.kubectl(&["get", "deployment", "web"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("NotFound"));
}

#[test]
fn stale_writes_conflict_and_watches_see_changes() {
    stale_writes_conflict_and_watches_see_changes_on(Store::Embedded);
}

#[test]
fn stale_writes_conflict_and_watches_see_changes_on_etcd() {
    stale_writes_conflict_and_watches_see_changes_on(Store::Etcd);
}

fn stale_writes_conflict_and_watches_see_changes_on(store: Store) {
    let c = Cluster::start_with(store);
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: '1'}\n";
    assert!(c.apply(cm).status.success());
    let old = c.ok(&["get", "cm", "c", "-o", "json"]);
    c.ok(&["patch", "cm", "c", "-p", r#"{"data":{"a":"2"}}"#]);
    // Replacing with the object as it was read before the patch: 409.
    let o = c.kubectl_v("1.32", &["replace", "-f", "-"], Some(&old));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("the object has been modified"), "{err}");
    // A JSON patch and a merge patch.
    c.ok(&[
        "patch",
        "cm",
        "c",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/b","value":"x"}]"#,
    ]);
    c.ok(&[
        "patch",
        "cm",
        "c",
        "--type=merge",
        "-p",
        r#"{"data":{"a":null}}"#,
    ]);
    let d = c.json(&["get", "cm", "c"]);
    assert_eq!(d["data"], serde_json::json!({"b": "x"}));
    // A watch from now: the changes as events, in order.
    let kc = c.kubeconfig.clone();
    let watcher = std::thread::spawn(move || {
        Command::new(Path::new(SDK_BIN).join("kubectl.1.32"))
            .args([
                "get",
                "cm",
                "--watch-only",
                "--output-watch-events",
                "-o",
                "custom-columns=E:.type,N:.object.metadata.name",
                "--request-timeout=6s",
            ])
            .env("KUBECONFIG", kc)
            .output()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(1500));
    let w = c.kubectl_v(
        "1.32",
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: d}\n"),
    );
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    c.ok(&["label", "cm", "d", "x=y"]);
    c.ok(&["delete", "cm", "d"]);
    let out = watcher.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let events: Vec<String> = lines
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert!(
        events.ends_with(&[
            "ADDED d".to_string(),
            "MODIFIED d".to_string(),
            "DELETED d".to_string()
        ]),
        "{text}"
    );
}

#[test]
fn clients_without_credentials_or_rights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(
        dir.path().join("data/tokens"),
        "# token user groups\nt0k3n-ops ops system:masters\n",
    )
    .unwrap();
    let c = Cluster::start_in(dir);
    let pki = ros_kube::pki::Pki::open(&c.dir.path().join("data/pki")).unwrap();
    let ca = c.dir.path().join("ca.crt");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    // A bearer token from the tokens file works; a wrong one gets 401.
    let with_token = |token: &str| {
        let k = c.dir.path().join("token-kubeconfig");
        std::fs::write(
            &k,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: 'https://{}', certificate-authority: '{}'}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user: {{token: {token}}}\n",
                c.addr,
                ca.display()
            ),
        )
        .unwrap();
        Command::new(Path::new(SDK_BIN).join("kubectl.1.32"))
            .args(["get", "namespaces", "--kubeconfig"])
            .arg(&k)
            .env("HOME", c.dir.path())
            .output()
            .unwrap()
    };
    let o = with_token("t0k3n-ops");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("kube-system"));
    let o = with_token("wrong");
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Unauthorized"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A node's certificate: it may write its own Node, not another's, and no configmaps.
    let node = pki.client("system:node:n1", &["system:nodes"]).unwrap();
    let (crt, key) = (c.dir.path().join("n1.crt"), c.dir.path().join("n1.key"));
    std::fs::write(&crt, &node.cert_pem).unwrap();
    std::fs::write(&key, &node.key_pem).unwrap();
    let nk = c.dir.path().join("node-kubeconfig");
    std::fs::write(
        &nk,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: 'https://{}', certificate-authority: '{}'}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user: {{client-certificate: '{}', client-key: '{}'}}\n",
            c.addr,
            ca.display(),
            crt.display(),
            key.display()
        ),
    )
    .unwrap();
    let as_node = |yaml: &str| {
        let mut child = Command::new(Path::new(SDK_BIN).join("kubectl.1.32"))
            .args(["apply", "-f", "-", "--kubeconfig"])
            .arg(&nk)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .env("HOME", c.dir.path())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let o = as_node("apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = as_node("apiVersion: v1\nkind: Node\nmetadata: {name: n2}\n");
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Forbidden"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = as_node("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: default}\n");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("forbidden")
            || String::from_utf8_lossy(&o.stderr).contains("Forbidden")
    );
}

#[test]
fn every_kubectl_from_1_27_to_1_33_gets_applies_and_deletes() {
    let c = Cluster::start();
    for minor in 27..=33 {
        let v = format!("1.{minor}");
        let name = format!("skew-{minor}");
        let yaml = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{k: v}}\n"
        );
        let o = c.kubectl_v(&v, &["apply", "-f", "-"], Some(&yaml));
        assert!(
            o.status.success(),
            "kubectl {v} apply: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let o = c.kubectl_v(&v, &["get", "configmap", &name], None);
        assert!(
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(&name),
            "kubectl {v} get: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let o = c.kubectl_v(&v, &["delete", "configmap", &name], None);
        assert!(
            o.status.success(),
            "kubectl {v} delete: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn python_client_watches_300_configmaps_in_order() {
    python_client_watches_300_configmaps_in_order_on(Store::Embedded);
}

#[test]
fn python_client_watches_300_configmaps_in_order_on_etcd() {
    python_client_watches_300_configmaps_in_order_on(Store::Etcd);
}

fn python_client_watches_300_configmaps_in_order_on(store: Store) {
    let c = Cluster::start_with(store);
    let out = c.python("configmaps.py", &["py"]);
    eprintln!("python: {out}");
}

#[test]
fn objects_and_certificates_survive_a_restart() {
    let c = Cluster::start();
    assert!(
        c.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kept}\ndata: {a: b}\n")
            .status
            .success()
    );
    let before = c.json(&["get", "cm", "kept"]);
    let ca = std::fs::read_to_string(c.dir.path().join("data/pki/ca.crt")).unwrap();
    let dir = c.stop();
    let c = Cluster::start_in(dir);
    let after = c.json(&["get", "cm", "kept"]);
    assert_eq!(before["metadata"]["uid"], after["metadata"]["uid"]);
    assert_eq!(
        before["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"]
    );
    assert_eq!(
        ca,
        std::fs::read_to_string(c.dir.path().join("data/pki/ca.crt")).unwrap()
    );
}

/// A kubeconfig for a node's identity (`system:node:<name>` in `system:nodes`).
fn node_kubeconfig(c: &Cluster, node: &str) -> PathBuf {
    let pki = ros_kube::pki::Pki::open(&c.dir.path().join("data/pki")).unwrap();
    let pair = pki
        .client(&format!("system:node:{node}"), &["system:nodes"])
        .unwrap();
    let (crt, key, ca) = (
        c.dir.path().join(format!("{node}.crt")),
        c.dir.path().join(format!("{node}.key")),
        c.dir.path().join("ca.crt"),
    );
    std::fs::write(&crt, &pair.cert_pem).unwrap();
    std::fs::write(&key, &pair.key_pem).unwrap();
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let k = c.dir.path().join(format!("{node}.kubeconfig"));
    std::fs::write(
        &k,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: 'https://{}', certificate-authority: '{}'}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user: {{client-certificate: '{}', client-key: '{}'}}\n",
            c.addr,
            ca.display(),
            crt.display(),
            key.display()
        ),
    )
    .unwrap();
    k
}

fn kubectl_as(kubeconfig: &Path, home: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    common::kubectl("1.32", kubeconfig, home, args, stdin)
}

/// The controllers alone, without running containers (tests/agent.rs and the QEMU tests run
/// the real agent): the test writes what a node's agent writes, with a node's own
/// credentials: its Node (Ready, allocatable), and each pod bound to it reported Running and
/// Ready; pods being deleted are removed.
fn stand_in_agent(
    c: &Cluster,
    node: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let k = node_kubeconfig(c, node);
    let home = c.dir.path().to_path_buf();
    let node = node.to_string();
    let o = kubectl_as(
        &k,
        &home,
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {node}, labels: {{kubernetes.io/hostname: {node}}}}}\n"
        )),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let status = r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady"}],"allocatable":{"cpu":"4","memory":"4Gi","pods":"110"},"capacity":{"cpu":"4","memory":"4Gi","pods":"110"}}}"#;
    let o = kubectl_as(
        &k,
        &home,
        &[
            "patch",
            "node",
            &node,
            "--subresource=status",
            "--type=merge",
            "-p",
            status,
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::thread::spawn(move || {
        let mut renewed = Instant::now() - Duration::from_secs(60);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            // The node's Lease, renewed every second as an agent renews it.
            if renewed.elapsed() >= Duration::from_secs(1) {
                let now = ros_kube::agent::micro_now();
                let o = kubectl_as(
                    &k,
                    &home,
                    &["apply", "-f", "-"],
                    Some(&format!(
                        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: {node}, namespace: kube-node-lease}}\nspec: {{holderIdentity: {node}, leaseDurationSeconds: 40, renewTime: '{now}'}}\n"
                    )),
                );
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                renewed = Instant::now();
            }
            let o = kubectl_as(
                &k,
                &home,
                &[
                    "get",
                    "pods",
                    "-A",
                    "--field-selector",
                    &format!("spec.nodeName={node}"),
                    "-o",
                    "json",
                ],
                None,
            );
            let list: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            for p in list["items"].as_array().into_iter().flatten() {
                let (ns, name) = (
                    p["metadata"]["namespace"].as_str().unwrap(),
                    p["metadata"]["name"].as_str().unwrap(),
                );
                if p["metadata"]["deletionTimestamp"].is_string() {
                    kubectl_as(
                        &k,
                        &home,
                        &[
                            "delete",
                            "pod",
                            "-n",
                            ns,
                            name,
                            "--grace-period=0",
                            "--force",
                        ],
                        None,
                    );
                } else if p["status"]["phase"] != "Running" {
                    let st = r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}],"containerStatuses":[{"name":"web","ready":true,"restartCount":0,"state":{"running":{}}}]}}"#;
                    let o = kubectl_as(
                        &k,
                        &home,
                        &[
                            "patch",
                            "pod",
                            "-n",
                            ns,
                            name,
                            "--subresource=status",
                            "--type=strategic",
                            "-p",
                            st,
                        ],
                        None,
                    );
                    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn controllers_roll_out_scale_undo_and_collect() {
    controllers_roll_out_scale_undo_and_collect_on(Store::Embedded);
}

#[test]
fn controllers_roll_out_scale_undo_and_collect_on_etcd() {
    controllers_roll_out_scale_undo_and_collect_on(Store::Etcd);
}

fn controllers_roll_out_scale_undo_and_collect_on(store: Store) {
    let c = Cluster::start_with(store);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let agent = stand_in_agent(&c, "n1", stop.clone());
    assert!(c.apply(&deployment(3, "busybox:1", "")).status.success());
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let pods = |c: &Cluster| {
        c.json(&["get", "pods", "-l", "app=web"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| !p["metadata"]["deletionTimestamp"].is_string())
            .count()
    };
    assert_eq!(pods(&c), 3);
    let wide = c.ok(&["get", "pods", "-o", "wide"]);
    assert!(wide.contains("Running") && wide.contains("n1"), "{wide}");
    for n in [5usize, 2] {
        c.ok(&["scale", "deployment", "web", &format!("--replicas={n}")]);
        c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
        wait_for(&format!("{n} pods"), 30, || pods(&c) == n);
    }
    // An image change rolls out; the history shows both revisions; undo goes back.
    c.ok(&["set", "image", "deployment/web", "web=busybox:2"]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let rs = c.json(&["get", "rs", "-l", "app=web"]);
    assert_eq!(rs["items"].as_array().unwrap().len(), 2);
    let hist = c.ok(&["rollout", "history", "deployment/web"]);
    assert!(hist.contains("\n1 ") && hist.contains("\n2 "), "{hist}");
    c.ok(&["rollout", "undo", "deployment/web"]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let d = c.json(&["get", "deployment", "web"]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:1"
    );
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    // Events of what the controllers did, as describe shows them.
    let desc = c.ok(&["describe", "deployment", "web"]);
    assert!(desc.contains("ScalingReplicaSet"), "{desc}");
    // A pod that fits nowhere says why.
    assert!(c.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: picky}\nspec:\n  nodeSelector: {disk: ssd}\n  containers: [{name: c, image: busybox:1}]\n").status.success());
    wait_for("FailedScheduling", 20, || {
        c.ok(&["describe", "pod", "picky"]).contains(
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.",
        )
    });
    // Deleting the deployment removes its replicasets and pods (background), and foreground
    // deletion waits for them.
    c.ok(&["delete", "deployment", "web"]);
    wait_for("replicasets and pods collected", 30, || {
        c.json(&["get", "rs"])["items"]
            .as_array()
            .unwrap()
            .is_empty()
            && pods(&c) == 0
    });
    assert!(c.apply(&deployment(2, "busybox:1", "")).status.success());
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    c.ok(&[
        "delete",
        "deployment",
        "web",
        "--cascade=foreground",
        "--timeout=60s",
    ]);
    assert!(
        c.json(&["get", "rs"])["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    agent.join().unwrap();
}

#[test]
fn kubectl_create_sends_protobuf_and_is_understood() {
    kubectl_create_sends_protobuf_and_is_understood_on(Store::Embedded);
}

#[test]
fn kubectl_create_sends_protobuf_and_is_understood_on_etcd() {
    kubectl_create_sends_protobuf_and_is_understood_on(Store::Etcd);
}

fn kubectl_create_sends_protobuf_and_is_understood_on(store: Store) {
    let c = Cluster::start_with(store);
    c.ok(&["create", "namespace", "team"]);
    c.ok(&[
        "create",
        "configmap",
        "cm",
        "-n",
        "team",
        "--from-literal=a=b",
    ]);
    c.ok(&[
        "create",
        "secret",
        "generic",
        "s",
        "-n",
        "team",
        "--from-literal=k=v",
    ]);
    c.ok(&["create", "serviceaccount", "robot", "-n", "team"]);
    c.ok(&[
        "create",
        "deployment",
        "d",
        "-n",
        "team",
        "--image=busybox:1",
        "--replicas=0",
        "--port=80",
        "--",
        "sleep",
        "9",
    ]);
    c.ok(&[
        "expose",
        "deployment",
        "d",
        "-n",
        "team",
        "--port=80",
        "--target-port=8080",
    ]);
    assert_eq!(c.json(&["get", "cm", "cm", "-n", "team"])["data"]["a"], "b");
    assert_eq!(
        c.json(&["get", "secret", "s", "-n", "team"])["data"]["k"],
        "dg=="
    );
    let d = c.json(&["get", "deployment", "d", "-n", "team"]);
    assert_eq!(d["spec"]["replicas"], 0, "a pointer field's zero is kept");
    let ctr = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(ctr["command"], serde_json::json!(["sleep", "9"]));
    assert_eq!(ctr["ports"][0]["containerPort"], 80);
    assert!(
        d["metadata"].get("generateName").is_none(),
        "Go's zero values are not kept: {d}"
    );
    let s = c.json(&["get", "service", "d", "-n", "team"]);
    assert_eq!(s["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(s["spec"]["selector"]["app"], "d");
}

fn watch_edges_on(store: Store) {
    let c = Cluster::start_with(store);
    // The embedded store compacts every 500 revisions past the newest 1,000 it keeps.
    let (etcd, writes) = match &c._etcd {
        Some(e) => (e.url.clone(), "20"),
        None => ("-".to_string(), "1600"),
    };
    c.python("watch_edges.py", &["edges", &etcd, writes]);
}

#[test]
fn watches_get_410_for_compacted_revisions_and_bookmarks() {
    watch_edges_on(Store::Embedded);
}

#[test]
fn watches_get_410_for_compacted_revisions_and_bookmarks_on_etcd() {
    watch_edges_on(Store::Etcd);
}

/// Joining: the agent's side (`ros_kube::join::join` and the `ros-kube agent` program) against
/// a running server. The right token gives a node identity that writes its own Node; a wrong
/// password, a token of another cluster (its CA hash) and a second machine taking a joined
/// node's name are each refused with a reason, on both sides.
#[test]
fn agents_join_with_the_token_and_nothing_else_does() {
    use ros_kube::join::{JoinError, Token, join};
    let c = Cluster::start();
    let data = c.dir.path().join("data");
    let pki = ros_kube::pki::Pki::open(&data.join("pki")).unwrap();
    let token_text = ros_kube::server::join_token(&data, &pki).unwrap();
    assert_eq!(
        std::fs::read_to_string(c.dir.path().join("publish/token")).unwrap(),
        format!("{token_text}\n"),
        "the published token is the one the server checks"
    );
    let token: Token = token_text.parse().unwrap();
    let server = format!("https://{}", c.addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pw_a = "a".repeat(32);
    let pw_b = "b".repeat(32);
    let joined = rt
        .block_on(join(&server, &token, "n1", &pw_a, None))
        .unwrap();
    assert_eq!(joined.ca_pem, pki.ca_pem);
    assert_eq!(
        joined.address,
        std::net::IpAddr::from([127, 0, 0, 1]),
        "the address on the route to the server"
    );
    // The node identity it was given writes its own Node, and no other.
    let client = ros_kube::client::Client::new(
        &server,
        &joined.ca_pem,
        &joined.client.cert_pem,
        &joined.client.key_pem,
    )
    .unwrap();
    rt.block_on(client.create(
        "/api/v1/nodes",
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}),
    ))
    .unwrap();
    let e = rt
        .block_on(client.create(
            "/api/v1/nodes",
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"}}),
        ))
        .unwrap_err();
    assert_eq!(e.code(), Some(403), "{e}");
    // The serving certificate names the node and its address.
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(joined.serving.cert_pem.as_bytes())
        .unwrap();
    let text = String::from_utf8_lossy(&der);
    assert!(
        text.contains("system:node:n1"),
        "the serving cert's subject"
    );
    // The same machine again (a restart): welcome.
    rt.block_on(join(&server, &token, "n1", &pw_a, None))
        .unwrap();
    // Another machine under the same name: refused, saying why.
    let refused = |r: Result<ros_kube::join::Joined, JoinError>| match r {
        Err(JoinError::Refused(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let m = refused(rt.block_on(join(&server, &token, "n1", &pw_b, None)));
    assert!(m.contains("taken by another machine"), "{m}");
    assert!(m.contains("kube-system/n1.node-password.ros"), "{m}");
    // A wrong password in the token.
    let wrong_pw = Token {
        password: "not-it".into(),
        ..token.clone()
    };
    let m = refused(rt.block_on(join(&server, &wrong_pw, "n3", &pw_a, None)));
    assert!(m.contains("the join token is wrong"), "{m}");
    // A token of another cluster: stopped before anything is sent.
    let other_ca = Token {
        ca_hash: "0".repeat(64),
        ..token.clone()
    };
    let m = refused(rt.block_on(join(&server, &other_ca, "n3", &pw_a, None)));
    assert!(m.contains("is not the one the token is for"), "{m}");
    assert!(m.contains(&token.ca_hash), "names the CA it found: {m}");
    // Nobody listening: worth trying again, not a refusal.
    let closed = format!("https://127.0.0.1:{}", free_port());
    assert!(matches!(
        rt.block_on(join(&closed, &token, "n3", &pw_a, None)),
        Err(JoinError::Unreachable(_))
    ));
    // The program: a wrong token ends it with the reason (its supervisor starts it again).
    let agent_dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ros-kube"))
        .args([
            "agent",
            "--server",
            &server,
            "--node-name",
            "n4",
            "--data-dir",
        ])
        .arg(agent_dir.path())
        .env(
            "ROS_KUBE_TOKEN",
            format!("K10{}::server:not-it", token.ca_hash),
        )
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("the join token is wrong"), "{err}");
    let o = Command::new(env!("CARGO_BIN_EXE_ros-kube"))
        .args(["agent", "--server", &server, "--token", "K10xyz"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("K10<64 hex digits>"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The node's password is kept as a hash only.
    let s = c.json(&["get", "secret", "-n", "kube-system", "n1.node-password.ros"]);
    let stored = s["data"]["hash"].as_str().unwrap();
    assert!(!stored.contains(&pw_a), "the password itself is not kept");
}

/// A node whose Lease lapses (its agent gone) turns NotReady after the lease timeout, gets the
/// unreachable taint, and after the eviction grace its pods are deleted and replaced on the
/// node still alive (short settings here: 3 s and 3 s; 40 s and 5 min by default).
#[test]
fn a_lost_nodes_pods_are_replaced_on_a_live_one() {
    let c = Cluster::start_full(
        tempfile::tempdir().unwrap(),
        None,
        ros_kube::controllers::Settings {
            node_lease_timeout: Duration::from_secs(3),
            pod_eviction_grace: Duration::from_secs(3),
            ..Default::default()
        },
    );
    let stop1 = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let a1 = stand_in_agent(&c, "n1", stop1.clone());
    let a2 = stand_in_agent(&c, "n2", stop2.clone());
    assert!(c.apply(&deployment(2, "busybox:1", "")).status.success());
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let on = |c: &Cluster| -> Vec<String> {
        c.json(&["get", "pods", "-l", "app=web"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| !p["metadata"]["deletionTimestamp"].is_string())
            .map(|p| p["spec"]["nodeName"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let mut nodes = on(&c);
    nodes.sort();
    assert_eq!(nodes, ["n1", "n2"], "spread over both nodes");
    // n2's agent stops.
    stop2.store(true, std::sync::atomic::Ordering::Relaxed);
    a2.join().unwrap();
    wait_for("n2 NotReady", 30, || {
        c.ok(&["get", "node", "n2"]).contains("NotReady")
    });
    let taints = c.json(&["get", "node", "n2"])["spec"]["taints"].to_string();
    assert!(
        taints.contains("node.kubernetes.io/unreachable"),
        "{taints}"
    );
    assert!(c.ok(&["get", "node", "n1"]).contains(" Ready "));
    wait_for("both pods on n1", 60, || {
        let n = on(&c);
        n.len() == 2 && n.iter().all(|x| x == "n1")
    });
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let events = c.ok(&["get", "events", "-A"]);
    assert!(events.contains("NodeNotReady"), "{events}");
    assert!(events.contains("NodeLost"), "{events}");
    stop1.store(true, std::sync::atomic::Ordering::Relaxed);
    a1.join().unwrap();
}
