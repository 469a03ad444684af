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
        // The containers a test left running end with it, killed through the runtime (its
        // state folder has one entry per container).
        let root = self.dir.path().join("data/agent/runtime");
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let _ = Command::new(runtime())
                .arg("--root")
                .arg(&root)
                .args(["kill", "--all"])
                .arg(e.file_name())
                .arg("KILL")
                .output();
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

fn runtime() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/ros-runtime")
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
    let runtime = runtime();
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
            labels: [("example.com/rack".to_string(), "r1".to_string())].into(),
            taints: vec![
                serde_json::json!({"key": "example.com/slow", "effect": "PreferNoSchedule"}),
            ],
            // Small, so that a test's pod rotates its log.
            log_max_size: 64 << 10,
            log_max_files: 5,
            // Loopback only: these tests run on the CI host, whose network they leave alone.
            pod_network: None,
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
    assert_eq!(node["metadata"]["labels"]["example.com/rack"], "r1");
    assert_eq!(node["spec"]["taints"][0]["key"], "example.com/slow");
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
    let left = Command::new(runtime())
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

/// Probes as the kubelet runs them: a TCP readiness probe and an HTTP liveness probe on a named
/// port of a real HTTP server (busybox httpd) in the pod's network, an exec readiness probe in a
/// second container. The pod is Ready only once the exec probe passes; the HTTP server turned
/// unhealthy is restarted, with Unhealthy and Killing events saying why.
#[test]
fn probes_gate_readiness_and_restart_the_unhealthy() {
    let n = start();
    wait_for("node-a Ready", 30, || {
        n.kubectl(&["get", "node", "node-a"], None)
            .1
            .contains(" Ready ")
    });
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: probed}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: {image}
    command: ["/bin/sh", "-c", "mkdir -p /www; echo ok > /www/healthz; exec /bin/busybox httpd -f -p 8080 -h /www"]
    ports: [{{name: http, containerPort: 8080}}]
    livenessProbe: {{httpGet: {{path: /healthz, port: http}}, periodSeconds: 1, failureThreshold: 2}}
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
  - name: gate
    image: {image}
    command: ["/bin/sh", "-c", "exec sleep 3600"]
    readinessProbe: {{exec: {{command: ["cat", "/tmp/ready"]}}, periodSeconds: 1}}
"#,
        image = n.image
    );
    n.ok(&["apply", "-f", "-"], Some(&pod));
    let ready = |c: &str| -> Option<bool> {
        let p = n.json(&["get", "pod", "probed"]);
        p["status"]["containerStatuses"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == c)?["ready"]
            .as_bool()
    };
    wait_for("web ready by its TCP probe", 60, || {
        ready("web") == Some(true)
    });
    // The exec probe keeps the pod out of Ready until its file exists.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ready("gate"), Some(false));
    let (ok, _, err) = n.kubectl(
        &[
            "wait",
            "--for=condition=Ready",
            "pod/probed",
            "--timeout=1s",
        ],
        None,
    );
    assert!(!ok, "not Ready before the exec probe passes: {err}");
    n.ok(
        &["exec", "probed", "-c", "gate", "--", "touch", "/tmp/ready"],
        None,
    );
    n.ok(
        &[
            "wait",
            "--for=condition=Ready",
            "pod/probed",
            "--timeout=30s",
        ],
        None,
    );
    // The HTTP server loses its health: restarted, and the events say why.
    n.ok(
        &["exec", "probed", "-c", "web", "--", "rm", "/www/healthz"],
        None,
    );
    let restarts = || -> u64 {
        let p = n.json(&["get", "pod", "probed"]);
        p["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == "web")
            .and_then(|s| s["restartCount"].as_u64())
            .unwrap_or(0)
    };
    wait_for("web restarted by its liveness probe", 60, || {
        restarts() >= 1
    });
    wait_for("web ready again", 60, || ready("web") == Some(true));
    let events = n.ok(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=probed",
            "-o",
            "custom-columns=REASON:.reason,MESSAGE:.message",
        ],
        None,
    );
    assert!(
        events.contains("Liveness probe failed: HTTP probe failed with statuscode: 404"),
        "{events}"
    );
    assert!(
        events.contains("Container web failed liveness probe, will be restarted"),
        "{events}"
    );
    assert!(events.contains("Readiness probe failed"), "{events}");
    let described = n.ok(&["describe", "pod", "probed"], None);
    assert!(described.contains("Unhealthy"), "{described}");
    n.ok(&["delete", "pod", "probed", "--wait=true"], None);
}

/// `kubectl exec -it` typed through a real terminal (a tmux pane): the shell in the container
/// has a terminal of its own sized as the pane, runs what is typed, and its exit code is
/// kubectl's.
#[test]
fn exec_it_gives_a_terminal_typed_through_tmux() {
    let n = start();
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: shell}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {}\n    command: [\"/bin/sh\", \"-c\", \"exec sleep 3600\"]\n",
        n.image
    );
    n.ok(&["apply", "-f", "-"], Some(&pod));
    n.ok(
        &[
            "wait",
            "--for=condition=Ready",
            "pod/shell",
            "--timeout=90s",
        ],
        None,
    );
    ros_tests::tmux::exec_it_session(
        &Path::new(common::SDK_BIN)
            .join("kubectl.1.32")
            .display()
            .to_string(),
        &format!(
            "HOME={} KUBECONFIG={}",
            n.dir.path().display(),
            n.kubeconfig.display()
        ),
        "shell",
    )
    .unwrap();
}

/// A container's log is rotated on the state disk at the agent's size (64 KiB here) and count
/// (5 files): `kubectl logs -f` started before the output follows it across the rotations with
/// no line lost or repeated, the files on disk stay within the count, and `logs` gives the
/// newest lines.
#[test]
fn logs_rotate_and_are_followed_across_rotations() {
    use std::io::BufRead;
    let n = start();
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: logger}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {}\n    command: [\"/bin/sh\", \"-c\", \"sleep 3; i=0; while [ $i -lt 5000 ]; do echo \\\"line $i ....................\\\"; i=$((i+1)); [ $((i % 250)) = 0 ] && sleep 0.2; done; exec sleep 3600\"]\n",
        n.image
    );
    n.ok(&["apply", "-f", "-"], Some(&pod));
    n.ok(
        &[
            "wait",
            "--for=condition=Ready",
            "pod/logger",
            "--timeout=90s",
        ],
        None,
    );
    let mut follow = Command::new(Path::new(common::SDK_BIN).join("kubectl.1.32"))
        .arg("--kubeconfig")
        .arg(&n.kubeconfig)
        .args(["logs", "-f", "logger"])
        .env("HOME", n.dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = follow.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = vec![];
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let last = line.starts_with("line 4999 ");
            got.push(line);
            if last {
                break;
            }
        }
        got
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    while !reader.is_finished() {
        assert!(Instant::now() < deadline, "logs -f did not reach line 4999");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let got = reader.join().unwrap();
    let want: Vec<String> = (0..5000)
        .map(|i| format!("line {i} ...................."))
        .collect();
    assert_eq!(got.len(), want.len(), "every line once");
    assert!(got == want, "in order");
    // On disk: the current file and at most four rotated parts, each within the size.
    let dir = std::fs::read_dir(n.dir.path().join("data/agent/pods"))
        .unwrap()
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("default_logger_")
        })
        .unwrap()
        .path()
        .join("containers/c");
    let mut logs: Vec<(String, u64)> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with("0.log"))
        .map(|f| {
            let len = std::fs::metadata(dir.join(&f)).unwrap().len();
            (f, len)
        })
        .collect();
    logs.sort();
    let names: Vec<&str> = logs.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(names, ["0.log", "0.log.1", "0.log.2", "0.log.3", "0.log.4"]);
    assert!(logs.iter().all(|(_, len)| *len <= 64 << 10), "{logs:?}");
    assert_eq!(
        n.ok(&["logs", "logger", "--tail=1"], None),
        "line 4999 ....................\n"
    );
    n.ok(&["delete", "pod", "logger", "--wait=true"], None);
}

/// securityContext as the container sees it: its user and groups (fsGroup among them, and
/// owning its emptyDir), the capability bounding set it was left, no new privileges, ros's
/// default seccomp filter for RuntimeDefault; runAsNonRoot with a root user refused, saying why.
#[test]
fn security_contexts_reach_the_container() {
    let n = start();
    let pods = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: secured}}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {{runAsUser: 1000, runAsGroup: 1000, fsGroup: 2000, runAsNonRoot: true, seccompProfile: {{type: RuntimeDefault}}}}
  containers:
  - name: c
    image: {image}
    command: ["/bin/sh", "-c", "exec sleep 3600"]
    securityContext: {{allowPrivilegeEscalation: false, capabilities: {{drop: ["ALL"], add: ["NET_BIND_SERVICE"]}}}}
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  volumes: [{{name: scratch, emptyDir: {{}}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: rooted}}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {{runAsNonRoot: true}}
  containers:
  - name: c
    image: {image}
    command: ["/bin/sh", "-c", "exec sleep 3600"]
"#,
        image = n.image
    );
    n.ok(&["apply", "-f", "-"], Some(&pods));
    n.ok(
        &[
            "wait",
            "--for=condition=Ready",
            "pod/secured",
            "--timeout=90s",
        ],
        None,
    );
    let sh = |cmd: &str| n.ok(&["exec", "secured", "--", "/bin/sh", "-c", cmd], None);
    assert_eq!(sh("id -u").trim(), "1000");
    let groups = sh("id -G");
    assert!(groups.split_whitespace().any(|g| g == "2000"), "{groups}");
    assert_eq!(
        sh("echo x > /scratch/f && stat -c %g /scratch/f").trim(),
        "2000",
        "the emptyDir is fsGroup's, setgid"
    );
    let status = sh("grep -E '^(Seccomp|NoNewPrivs|CapBnd):' /proc/self/status");
    assert!(status.contains("Seccomp:\t2"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("CapBnd:\t0000000000000400"), "{status}");
    wait_for("rooted refused", 60, || {
        n.kubectl(
            &[
                "get",
                "pod",
                "rooted",
                "-o",
                "jsonpath={.status.containerStatuses[0].state.waiting.message}",
            ],
            None,
        )
        .1
        .contains("runAsNonRoot is set and the container would run as root")
    });
    n.ok(&["delete", "pod", "secured", "rooted", "--wait=true"], None);
}
