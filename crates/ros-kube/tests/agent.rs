//! The agent on the host (as root): a server with an agent for its own node, pods from an
//! image in a docker-registry on the loopback, run by ros-runtime as an OCI runtime, driven
//! with kubectl 1.32: a deployment rolls out and its pods log; env from a configMap and a
//! configMap volume reach the program; a crashing container backs off (CrashLoopBackOff) with
//! its exit code kept; deleting stops the containers and removes the pods.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

struct Node {
    dir: tempfile::TempDir,
    rt: Option<tokio::runtime::Runtime>,
    kubeconfig: PathBuf,
    image: String,
    _registry: ros_tests::registry::Registry,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn host_arch() -> ros_tests::Arch {
    if cfg!(target_arch = "aarch64") {
        ros_tests::Arch::Aarch64
    } else {
        ros_tests::Arch::X86_64
    }
}

fn start() -> Node {
    // The busybox image ros builds for its own services, pushed to a registry on the loopback.
    let image_dir = ros_tests::image(host_arch()).unwrap();
    let registry = ros_tests::registry::Registry::start(&Default::default()).unwrap();
    registry
        .push(&image_dir.join("oci"), "busybox", "busybox")
        .unwrap();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let runtime = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/ros-runtime");
    assert!(
        runtime.exists(),
        "{} is missing (cargo build -p ros-runtime)",
        runtime.display()
    );
    let mut registries = ros_registry::Registries::default();
    registries.mirrors.insert(
        host.clone(),
        serde_json::from_value(serde_json::json!({"endpoints": [format!("http://{host}")]}))
            .unwrap(),
    );
    let cfg = ros_kube::server::Config {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".parse().unwrap(),
        sans: vec![],
        controllers: ros_kube::controllers::Settings::default(),
        publish: None,
        datastore: None,
        agent: Some(ros_kube::agent::Config {
            node_name: "node-a".into(),
            data_dir: dir.path().join("data/agent"),
            runtime,
            registries,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(4),
            labels: Default::default(),
            address: Some("127.0.0.1".into()),
            kubelet: Some(ros_kube::agent::Kubelet {
                listen: "127.0.0.1:0".parse().unwrap(),
                ca_pem: String::new(),
                cert_pem: String::new(),
                key_pem: String::new(),
            }),
        }),
    };
    let (rt, _, kubeconfig) = common::server(&cfg, dir.path());
    Node {
        dir,
        rt: Some(rt),
        kubeconfig,
        image: format!("{host}/busybox:busybox"),
        _registry: registry,
    }
}

impl Node {
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let o = common::kubectl("1.32", &self.kubeconfig, self.dir.path(), args, stdin);
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, out, err) = self.kubectl(args, stdin);
        assert!(ok, "kubectl {}: {out}{err}", args.join(" "));
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a, None)).unwrap()
    }

    /// The lines a container logged, from the agent's log files.
    fn logged(&self, pod_prefix: &str, container: &str) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(self.dir.path().join("data/agent/pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&format!("default_{pod_prefix}")) {
                continue;
            }
            for f in std::fs::read_dir(e.path().join("containers").join(container))
                .into_iter()
                .flatten()
                .flatten()
            {
                if f.file_name().to_string_lossy().ends_with(".log") {
                    out.push_str(&std::fs::read_to_string(f.path()).unwrap_or_default());
                }
            }
        }
        out
    }
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn pods_run_log_restart_and_stop() {
    let n = start();
    wait_for("node-a Ready", 30, || {
        n.kubectl(&["get", "node", "node-a"], None)
            .1
            .contains(" Ready ")
    });
    let node = n.json(&["get", "node", "node-a"]);
    assert_eq!(node["status"]["nodeInfo"]["osImage"], "ros");
    assert!(node["status"]["capacity"]["cpu"].is_string());
    n.ok(
        &[
            "create",
            "configmap",
            "settings",
            "--from-literal=greeting=hello-from-configmap",
        ],
        None,
    );
    let dep = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: web
        image: {image}
        command: ["/bin/sh", "-c", "echo started $GREETING on $NODE; cat /config/greeting; echo; exec sleep 3600"]
        env:
        - {{name: GREETING, valueFrom: {{configMapKeyRef: {{name: settings, key: greeting}}}}}}
        - {{name: NODE, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}
        volumeMounts:
        - {{name: config, mountPath: /config}}
      volumes:
      - {{name: config, configMap: {{name: settings}}}}
"#,
        image = n.image
    );
    n.ok(&["apply", "-f", "-"], Some(&dep));
    n.ok(
        &["rollout", "status", "deployment/web", "--timeout=120s"],
        None,
    );
    let pods = n.ok(&["get", "pods", "-l", "app=web", "-o", "wide"], None);
    assert_eq!(pods.matches("Running").count(), 2, "{pods}");
    assert!(pods.contains("node-a"), "{pods}");
    wait_for("the pods' output", 30, || {
        let l = n.logged("web-", "web");
        l.matches("started hello-from-configmap on node-a").count() == 2
            && l.matches("stdout F hello-from-configmap").count() == 2
    });

    // kubectl logs, through the server to the node's agent.
    let web_pod = n.json(&["get", "pods", "-l", "app=web"])["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let logs = n.ok(&["logs", &web_pod], None);
    assert_eq!(
        logs, "started hello-from-configmap on node-a\nhello-from-configmap\n",
        "{logs}"
    );
    assert_eq!(
        n.ok(&["logs", &web_pod, "--tail=1"], None),
        "hello-from-configmap\n"
    );
    assert!(
        n.ok(&["logs", &web_pod, "--timestamps"], None)
            .starts_with("20")
    );
    // kubectl exec over WebSocket (v5.channel.k8s.io), through the server to the agent.
    let o = common::kubectl(
        "1.32",
        &n.kubeconfig,
        n.dir.path(),
        &[
            "exec",
            &web_pod,
            "--",
            "/bin/sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        None,
    );
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("err\n"));
    let o = common::kubectl(
        "1.32",
        &n.kubeconfig,
        n.dir.path(),
        &[
            "exec",
            "-i",
            &web_pod,
            "--",
            "/bin/sh",
            "-c",
            "read line; echo got $line; cat /config/greeting",
        ],
        Some("typed\n"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "got typed\nhello-from-configmap"
    );
    let ticker = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: ticker}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: t\n    image: {}\n    command: [\"/bin/sh\", \"-c\", \"i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done\"]\n",
        n.image
    );
    n.ok(&["apply", "-f", "-"], Some(&ticker));
    wait_for("ticker running", 60, || {
        n.kubectl(&["get", "pod", "ticker"], None)
            .1
            .contains("Running")
    });
    let mut follow = Command::new(format!("{}/kubectl.1.32", common::SDK_BIN))
        .arg("--kubeconfig")
        .arg(&n.kubeconfig)
        .args(["logs", "-f", "ticker"])
        .env("HOME", n.dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    {
        use std::io::BufRead;
        let mut out = std::io::BufReader::new(follow.stdout.take().unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        // Lines written after kubectl started reading arrive while it follows.
        while !seen.contains("tick 15\n") && Instant::now() < deadline {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            seen.push_str(&line);
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        seen.contains("tick 0\n") && seen.contains("tick 15\n"),
        "{seen}"
    );
    n.ok(&["delete", "pod", "ticker"], None);

    // A container that exits 3 each time: restarted with a back-off, shown as CrashLoopBackOff.
    let crash = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: crash}}\nspec:\n  containers:\n  - name: c\n    image: {}\n    command: [\"/bin/sh\", \"-c\", \"echo boom; exit 3\"]\n",
        n.image
    );
    n.ok(&["apply", "-f", "-"], Some(&crash));
    wait_for("CrashLoopBackOff with restarts", 60, || {
        let p = n.json(&["get", "pod", "crash"]);
        let cs = &p["status"]["containerStatuses"][0];
        cs["restartCount"].as_u64().unwrap_or(0) >= 2
            && cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
            && cs["lastState"]["terminated"]["exitCode"] == 3
    });
    let table = n.ok(&["get", "pod", "crash"], None);
    assert!(table.contains("CrashLoopBackOff"), "{table}");
    assert!(n.logged("crash", "c").contains("stdout F boom"));
    assert_eq!(n.ok(&["logs", "crash", "--previous"], None), "boom\n");

    // Deleting stops the containers (SIGTERM, then the grace period) and removes the pods.
    n.ok(&["delete", "pod", "crash", "--timeout=60s"], None);
    n.ok(&["delete", "deployment", "web"], None);
    wait_for("the pods removed", 60, || {
        n.json(&["get", "pods"])["items"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    let left =
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/ros-runtime"))
            .arg("--root")
            .arg(n.dir.path().join("data/agent/runtime"))
            .arg("list")
            .output()
            .unwrap();
    let listed = String::from_utf8_lossy(&left.stdout);
    assert!(
        listed.lines().skip(1).all(|l| l.trim().is_empty()),
        "containers left: {listed}"
    );
}
