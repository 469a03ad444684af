//! The cluster's server as a system service in a QEMU guest (`[cluster] role = "server"`),
//! driven from the host through the forwarded API port by kubectl (1.32; 1.27 to 1.33 for get,
//! apply, delete) and the Python client (300 configmaps under a watch): the kubeconfig and
//! token from `ros cluster`, an apply with validation on, an unknown field refused, every
//! acknowledged write kept when the server's container is killed mid-writes
//! and when the machine is powered off hard mid-writes (x86_64); a smoke run on aarch64.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ros_qemu::Guest;
use ros_tests::{Arch, READY_TIMEOUT, SshKey};
use serde_json::Value;

const KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.32";

struct Node {
    guest: Guest,
    key: Arc<SshKey>,
    ssh: u16,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

fn boot(arch: Arch, disk: Option<&Path>, dir: tempfile::TempDir, key: Arc<SshKey>) -> Result<Node> {
    boot_with(arch, disk, dir, key, "", "")
}

/// A server guest: `more` user-data before its `[cluster]` table, `cluster` keys in it.
fn boot_with(
    arch: Arch,
    disk: Option<&Path>,
    dir: tempfile::TempDir,
    key: Arc<SshKey>,
    more: &str,
    cluster: &str,
) -> Result<Node> {
    let (guest, ssh, api) = spawn(
        arch,
        disk,
        dir.path(),
        &key,
        &format!("{more}\n[cluster]\nrole = \"server\"\n{cluster}"),
        vec![],
    )?;
    guest.wait_ready(READY_TIMEOUT)?;
    server_node(guest, dir, key, ssh, api)
}

/// Starts a guest with this user-data (after the key) and extra NICs, SSH and the API port
/// forwarded; the guest, the SSH port, the API port.
fn spawn(
    arch: Arch,
    disk: Option<&Path>,
    dir: &Path,
    key: &SshKey,
    user_data: &str,
    nics: Vec<ros_qemu::Nic>,
) -> Result<(Guest, u16, u16)> {
    let ssh = ros_tests::free_port()?;
    let api = ros_tests::free_port()?;
    let ud = dir.join("user-data.toml");
    std::fs::write(
        &ud,
        format!("ssh_authorized_keys = [\"{}\"]\n{user_data}", key.public),
    )?;
    let mut cfg = ros_tests::config(arch)?;
    cfg.user_data = Some(ud);
    cfg.forwards = vec![(ssh, 22), (api, 6443)];
    cfg.memory_mib = 1024;
    cfg.disks = disk.map(|d| vec![d.to_path_buf()]).unwrap_or_default();
    cfg.extra_nics = nics;
    Ok((Guest::spawn(&cfg)?, ssh, api))
}

/// A booted server guest as a [`Node`], once `ros cluster kubeconfig` gives its kubeconfig.
fn server_node(
    guest: Guest,
    dir: tempfile::TempDir,
    key: Arc<SshKey>,
    ssh: u16,
    api: u16,
) -> Result<Node> {
    // The server publishes its kubeconfig once it serves.
    let deadline = Instant::now() + Duration::from_secs(120);
    let kc = loop {
        let (code, out) = key.ros(
            ssh,
            &format!("cluster kubeconfig --server 127.0.0.1:{api}"),
            Duration::from_secs(30),
        )?;
        if code == 0 && out.contains("current-context: default") {
            break out;
        }
        ensure!(
            Instant::now() < deadline,
            "no kubeconfig from `ros cluster kubeconfig`: {out}"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, kc)?;
    Ok(Node {
        guest,
        key,
        ssh,
        kubeconfig,
        _dir: dir,
    })
}

impl Node {
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<(bool, String, String)> {
        self.kubectl_bin(KUBECTL, args, stdin)
    }

    /// `kubectl` of another version (its binary).
    fn kubectl_bin(
        &self,
        bin: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<(bool, String, String)> {
        use std::io::Write;
        let mut child = Command::new(bin)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self._dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("running {bin}"))?;
        if let Some(s) = stdin
            && let Some(mut i) = child.stdin.take()
        {
            i.write_all(s.as_bytes())?;
        }
        drop(child.stdin.take());
        let o = child.wait_with_output()?;
        Ok((
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ))
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let (ok, out, err) = self.kubectl(args, stdin)?;
        ensure!(ok, "kubectl {}: {out}{err}", args.join(" "));
        Ok(out)
    }

    fn names(&self, ns: &str) -> Result<std::collections::BTreeSet<String>> {
        let out = self.ok(&["get", "configmaps", "-n", ns, "-o", "name"], None)?;
        Ok(out
            .lines()
            .filter_map(|l| l.strip_prefix("configmap/"))
            .map(str::to_string)
            .collect())
    }
}

fn python() -> Result<PathBuf> {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/venv-kube/bin/python");
    ensure!(
        py.exists(),
        "{} is missing (scripts/setup.sh makes it)",
        py.display()
    );
    Ok(py)
}

/// Starts the Python writer (`count` configmaps in namespace `w`, for at most `seconds`,
/// acknowledged names into `acked`) and waits until `first` of them are acknowledged.
fn start_writer(
    n: &Node,
    count: u32,
    acked: &Path,
    seconds: u32,
    first: usize,
    wait_secs: u64,
) -> Result<std::process::Child> {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/ros-kube/tests/python/writer.py");
    let child = Command::new(python()?)
        .arg(script)
        .arg(&n.kubeconfig)
        .args(["w", &count.to_string()])
        .arg(acked)
        .arg(seconds.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(wait_secs);
    while std::fs::read_to_string(acked)
        .unwrap_or_default()
        .lines()
        .count()
        < first
    {
        ensure!(
            Instant::now() < deadline,
            "the writer acknowledged fewer than {first} writes in {wait_secs} s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

fn wait(what: &str, secs: u64, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f()? {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// The node's agent runs pods from images in a registry on the host: a deployment rolls out
/// (validation on), scales 1 -> 5 -> 2, an image change rolls out, a crashing container shows
/// CrashLoopBackOff, a container over its memory limit OOMKilled, deleting the deployment
/// removes its replicasets and pods.
#[test]
fn agent_in_a_guest_runs_workloads_from_the_host_registry() -> Result<()> {
    let registry = ros_tests::registry::Registry::start(&Default::default())?;
    let image_dir = ros_tests::image(Arch::X86_64)?;
    for tag in ["1", "2"] {
        let tagged = tempfile::tempdir()?;
        // The same busybox image under two tags: a new tag is a new pod template.
        let st = Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("oci:{}:busybox", image_dir.join("oci").display()))
            .arg(format!("oci:{}:{tag}", tagged.path().display()))
            .status()?;
        ensure!(st.success(), "skopeo copy");
        registry.push(tagged.path(), tag, "busybox")?;
    }
    let host = format!("10.0.2.2:{}", registry.port);
    let more = format!("\n[registries.mirrors.\"{host}\"]\nendpoints = [\"http://{host}\"]\n");
    let n = boot_with(
        Arch::X86_64,
        None,
        tempfile::tempdir()?,
        Arc::new(SshKey::new()?),
        &more,
        "",
    )?;
    wait("the node Ready", 120, || {
        Ok(n.kubectl(&["get", "nodes"], None)?.1.contains(" Ready "))
    })?;
    let dep = |image: &str, replicas: u32| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      terminationGracePeriodSeconds: 5\n      containers:\n      - name: web\n        image: {host}/busybox:{image}\n        command: [\"/bin/sh\", \"-c\", \"echo up; exec sleep 3600\"]\n"
        )
    };
    n.ok(&["apply", "-f", "-"], Some(&dep("1", 2)))?;
    n.ok(
        &["rollout", "status", "deployment/web", "--timeout=180s"],
        None,
    )?;
    let pods = |n: &Node| -> Result<Vec<Value>> {
        let v: Value =
            serde_json::from_str(&n.ok(&["get", "pods", "-l", "app=web", "-o", "json"], None)?)?;
        Ok(v["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| !p["metadata"]["deletionTimestamp"].is_string())
            .collect())
    };
    for r in ["1", "5", "2"] {
        n.ok(
            &["scale", "deployment", "web", &format!("--replicas={r}")],
            None,
        )?;
        n.ok(
            &["rollout", "status", "deployment/web", "--timeout=180s"],
            None,
        )?;
        let want: usize = r.parse()?;
        wait(&format!("{r} pods"), 60, || Ok(pods(&n)?.len() == want))?;
    }
    let running = n.ok(&["get", "pods", "-l", "app=web", "-o", "wide"], None)?;
    ensure!(running.matches("Running").count() == 2, "{running}");
    // Each pod has an address of the node's range on its bridge, and reaches the other's.
    let cidr = n.ok(
        &["get", "node", "-o", "jsonpath={.items[0].spec.podCIDR}"],
        None,
    )?;
    ensure!(cidr == "10.42.0.0/24", "the node's pod range: {cidr}");
    let p = pods(&n)?;
    let (a, b) = (&p[0], &p[1]);
    let (name_a, name_b) = (
        a["metadata"]["name"].as_str().unwrap_or(""),
        b["metadata"]["name"].as_str().unwrap_or(""),
    );
    let (ip_a, ip_b) = (
        a["status"]["podIP"].as_str().unwrap_or(""),
        b["status"]["podIP"].as_str().unwrap_or(""),
    );
    ensure!(
        ip_a.starts_with("10.42.0.") && ip_b.starts_with("10.42.0.") && ip_a != ip_b,
        "pod addresses {ip_a} {ip_b}"
    );
    n.ok(
        &[
            "exec",
            name_a,
            "--",
            "/bin/busybox",
            "httpd",
            "-p",
            "8080",
            "-h",
            "/etc",
        ],
        None,
    )?;
    // What pod B fetches from a URL.
    let fetch = |url: &str| n.ok(&["exec", name_b, "--", "wget", "-q", "-O-", url], None);
    let got = fetch(&format!("http://{ip_a}:8080/hostname"))?;
    ensure!(
        got.trim() == name_a,
        "pod {name_b} reached {got:?} at {ip_a}"
    );
    // Out of the node through its NAT: the host's registry.
    let got = fetch(&format!("http://{host}/v2/"))?;
    ensure!(got.trim() == "{}", "the registry from a pod: {got:?}");
    // Its output, through the server from the node's agent.
    let first = pods(&n)?[0]["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    wait("the pod's log", 30, || {
        Ok(n.ok(&["logs", &first], None)? == "up\n")
    })?;
    // `exec -it` typed through a terminal.
    ros_tests::tmux::exec_it_session(
        KUBECTL,
        &format!(
            "HOME={} KUBECONFIG={}",
            n._dir.path().display(),
            n.kubeconfig.display()
        ),
        &first,
    )?;
    // The cluster service restarted (as after a crash): its pods run again, started anew.
    let started = |p: &Value| {
        p["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let before: Vec<String> = pods(&n)?.iter().map(started).collect();
    let (code, out) = n
        .key
        .ros(n.ssh, "service restart cluster", Duration::from_secs(60))?;
    ensure!(code == 0, "restarting the cluster service: {out}");
    wait("the pods Running again after the restart", 180, || {
        // The API is away while its server restarts.
        let Ok(p) = pods(&n) else { return Ok(false) };
        Ok(p.len() == 2
            && p.iter().all(|p| {
                let s = started(p);
                !s.is_empty() && !before.contains(&s) && p["status"]["podIP"].is_string()
            }))
    })?;
    wait("the pod's log after the restart", 60, || {
        Ok(n.kubectl(&["logs", &first], None)?.1 == "up\n")
    })?;
    // exec over WebSocket v5 with the program's exit code.
    let (ok, out, err) = n.kubectl(
        &["exec", &first, "--", "/bin/sh", "-c", "echo in-pod; exit 3"],
        None,
    )?;
    ensure!(
        !ok && out == "in-pod\n" && err.contains("exit code 3"),
        "{out}{err}"
    );
    n.ok(
        &[
            "set",
            "image",
            "deployment/web",
            &format!("web={host}/busybox:2"),
        ],
        None,
    )?;
    n.ok(
        &["rollout", "status", "deployment/web", "--timeout=180s"],
        None,
    )?;
    wait("the new image on every pod", 60, || {
        let p = pods(&n)?;
        Ok(p.len() == 2
            && p.iter().all(|p| {
                p["spec"]["containers"][0]["image"]
                    .as_str()
                    .is_some_and(|i| i.ends_with(":2"))
            }))
    })?;
    let crash = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: crash}}\nspec:\n  containers:\n  - name: c\n    image: {host}/busybox:1\n    command: [\"/bin/sh\", \"-c\", \"exit 3\"]\n"
    );
    let hog = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: hog}}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: hog\n    image: {host}/busybox:1\n    command: [\"/bin/sh\", \"-c\", \"head -c 67108864 /dev/zero | tail > /dev/null\"]\n    resources:\n      limits: {{memory: 16Mi}}\n"
    );
    n.ok(&["apply", "-f", "-"], Some(&format!("{crash}---\n{hog}")))?;
    wait("CrashLoopBackOff and OOMKilled", 90, || {
        let t = n.ok(&["get", "pods", "crash", "hog"], None)?;
        Ok(t.contains("CrashLoopBackOff") && t.contains("OOMKilled"))
    })?;
    n.ok(&["delete", "deployment", "web"], None)?;
    wait("the replicasets and pods gone", 90, || {
        Ok(pods(&n)?.is_empty()
            && n.ok(&["get", "replicasets", "-o", "name"], None)?
                .trim()
                .is_empty())
    })?;
    Ok(())
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: 10.0.2.2:5000/busybox:1
";

#[test]
fn server_in_a_guest_keeps_acknowledged_writes_when_its_container_is_killed() -> Result<()> {
    let n = boot(
        Arch::X86_64,
        None,
        tempfile::tempdir()?,
        Arc::new(SshKey::new()?),
    )?;
    let (code, status) = n
        .key
        .ros(n.ssh, "cluster status", Duration::from_secs(30))?;
    ensure!(code == 0 && status.contains("role: server"), "{status}");
    let (code, token) = n.key.ros(n.ssh, "cluster token", Duration::from_secs(30))?;
    ensure!(code == 0 && token.starts_with("K10"), "{token}");
    let ns = n.ok(&["get", "namespaces"], None)?;
    ensure!(ns.contains("kube-system") && ns.contains("Active"), "{ns}");
    n.ok(&["apply", "-f", "-"], Some(DEPLOYMENT))?;
    let (ok, _, err) = n.kubectl(
        &["apply", "-f", "-"],
        Some(&DEPLOYMENT.replace("image:", "imagee:")),
    )?;
    ensure!(
        !ok && err.contains("unknown field \"spec.template.spec.containers[0].imagee\""),
        "{err}"
    );
    let rs = n.ok(&["get", "replicasets", "-l", "app=web", "-o", "name"], None)?;
    ensure!(
        rs.starts_with("replicaset.apps/web-"),
        "the controllers made no replicaset: {rs}"
    );

    // The official Python client: 300 configmaps while a watch from the list's
    // resourceVersion sees every event in order, a stale write refused with 409, all deleted.
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/ros-kube/tests/python/configmaps.py");
    let o = Command::new(python()?)
        .arg(script)
        .arg(&n.kubeconfig)
        .arg("py")
        .output()?;
    ensure!(
        o.status.success(),
        "configmaps.py against the guest: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!(
        "python client: {}",
        String::from_utf8_lossy(&o.stdout).trim()
    );
    // kubectl 1.27 to 1.33: each gets, applies and deletes.
    for minor in 27..=33 {
        let bin = format!("/usr/lib/google-cloud-sdk/bin/kubectl.1.{minor}");
        let name = format!("skew-{minor}");
        let run = |args: &[&str], stdin: Option<&str>| -> Result<String> {
            let (ok, out, err) = n.kubectl_bin(&bin, args, stdin)?;
            ensure!(ok, "kubectl 1.{minor} {}: {err}", args.join(" "));
            Ok(out)
        };
        run(
            &["apply", "-f", "-"],
            Some(&format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{k: v}}\n"
            )),
        )?;
        ensure!(run(&["get", "configmap", &name], None)?.contains(&name));
        run(&["delete", "configmap", &name], None)?;
    }
    // Writes from the Python client while the server's process is killed with SIGKILL.
    n.ok(&["create", "namespace", "w"], None)?;
    let acked_file = n._dir.path().join("acked");
    let writer = start_writer(&n, 400, &acked_file, 150, 50, 60)?;
    // The shell that kills it is in the same container and may die with it (137): the
    // service's own status below is what says the kill happened.
    let (code, out) = n.key.ros(
        n.ssh,
        "service exec cluster -- /bin/sh -c 'kill -9 $(pidof ros-kube)'",
        Duration::from_secs(30),
    )?;
    ensure!(code == 0 || code == 137, "the kill: {code} {out}");
    let out = writer.wait_with_output()?;
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "the writer failed: {summary}");
    let (code, st) = n
        .key
        .ros(n.ssh, "service status cluster", Duration::from_secs(30))?;
    ensure!(
        code == 0 && st.contains("restarts: 1") && st.contains("code\":137"),
        "{st}"
    );
    let acked: Vec<String> = std::fs::read_to_string(&acked_file)?
        .lines()
        .map(str::to_string)
        .collect();
    let present = n.names("w")?;
    let lost: Vec<&String> = acked.iter().filter(|a| !present.contains(*a)).collect();
    ensure!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    ensure!(
        summary.split_whitespace().next() == Some("400"),
        "the writer did not finish: {summary}"
    );
    eprintln!(
        "writer (written, failed attempts): {summary}; {} acknowledged, all present",
        acked.len()
    );
    Ok(())
}

#[test]
fn server_keeps_acknowledged_writes_through_a_hard_power_off() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("state.img");
    std::fs::File::create(&disk)?.set_len(512 << 20)?;
    let key = Arc::new(SshKey::new()?);
    let mut n = boot(Arch::X86_64, Some(&disk), tempfile::tempdir()?, key.clone())?;
    n.ok(&["create", "namespace", "w"], None)?;
    let acked_file = dir.path().join("acked");
    let mut writer = start_writer(&n, 1000, &acked_file, 300, 100, 90)?;
    // Power off: QEMU killed while writes are in flight.
    n.guest.kill();
    let _ = writer.kill();
    let _ = writer.wait();
    let acked: Vec<String> = std::fs::read_to_string(&acked_file)?
        .lines()
        .map(str::to_string)
        .collect();
    ensure!(
        acked.len() >= 100,
        "only {} writes acknowledged",
        acked.len()
    );
    drop(n);
    let n = boot(Arch::X86_64, Some(&disk), tempfile::tempdir()?, key)?;
    let present = n.names("w")?;
    let lost: Vec<&String> = acked.iter().filter(|a| !present.contains(*a)).collect();
    ensure!(
        lost.is_empty(),
        "acknowledged writes lost after the power-off: {lost:?}"
    );
    eprintln!(
        "{} acknowledged before the power-off, all there after the reboot ({} present)",
        acked.len(),
        present.len()
    );
    Ok(())
}

/// The server and its agent on aarch64: the API, and a pod from the host registry (arm64
/// busybox) running with an address of the node's range and its log through the server.
#[test]
fn server_smoke_on_aarch64() -> Result<()> {
    let registry = ros_tests::registry::Registry::start(&Default::default())?;
    let image_dir = ros_tests::image(Arch::Aarch64)?;
    registry.push(&image_dir.join("oci"), "busybox", "busybox")?;
    let reg = format!("10.0.2.2:{}", registry.port);
    let n = boot_with(
        Arch::Aarch64,
        None,
        tempfile::tempdir()?,
        Arc::new(SshKey::new()?),
        &format!("\n[registries.mirrors.\"{reg}\"]\nendpoints = [\"http://{reg}\"]\n"),
        "cluster_cidr = \"10.60.0.0/16\"\n",
    )?;
    n.ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: arm}}\nspec:\n  containers:\n  - name: c\n    image: {reg}/busybox:busybox\n    command: [\"/bin/sh\", \"-c\", \"uname -m; exec sleep 3600\"]\n"
        )),
    )?;
    n.ok(
        &["wait", "--for=condition=Ready", "pod/arm", "--timeout=180s"],
        None,
    )?;
    let ip = n.ok(
        &["get", "pod", "arm", "-o", "jsonpath={.status.podIP}"],
        None,
    )?;
    ensure!(ip.starts_with("10.60.0."), "podIP {ip}, from cluster_cidr");
    wait("the pod's log", 30, || {
        Ok(n.ok(&["logs", "arm"], None)? == "aarch64\n")
    })?;
    let ns = n.ok(&["get", "namespaces"], None)?;
    ensure!(ns.contains("kube-node-lease"), "{ns}");
    n.ok(
        &["create", "configmap", "smoke", "--from-literal=arch=arm64"],
        None,
    )?;
    let v = n.ok(
        &["get", "configmap", "smoke", "-o", "jsonpath={.data.arch}"],
        None,
    )?;
    if v != "arm64" {
        bail!("read back {v:?}");
    }
    Ok(())
}

/// The user-data of a machine on the two-node segment: its name, DHCP on the first NIC (the
/// host's forwards), a static address on the second (the segment), the host registry.
fn segment_user_data(name: &str, mac: &str, ip: &str, registry: &str) -> String {
    format!(
        "hostname = \"{name}\"\n\n[network.interfaces.eth0]\ndhcp4 = true\n\n[network.interfaces.lan]\nmac = \"{mac}\"\naddresses = [\"{ip}/24\"]\n\n[registries.mirrors.\"{registry}\"]\nendpoints = [\"http://{registry}\"]\n"
    )
}

/// The service's log lines in a guest (`ros service logs cluster`).
fn service_log(key: &SshKey, ssh: u16) -> Result<String> {
    Ok(key
        .ros(ssh, "service logs cluster -n 200", Duration::from_secs(30))?
        .1)
}

/// Two machines on one L2 segment (QEMU's multicast socket network on the loopback): the
/// server, and a second machine that is made an agent live (`ros config set`). A wrong token
/// is refused, saying so in both machines' logs; the right one joins, the new node turns
/// Ready, a pod scheduled onto it runs there (hostIP the agent's address), and its logs and
/// exec reach it through the server.
#[test]
fn a_second_machine_joins_with_the_token_and_runs_pods() -> Result<()> {
    let registry = ros_tests::registry::Registry::start(&Default::default())?;
    let image_dir = ros_tests::image(Arch::X86_64)?;
    registry.push(&image_dir.join("oci"), "busybox", "busybox")?;
    let reg = format!("10.0.2.2:{}", registry.port);
    let segment = format!("230.0.0.1:{}", ros_tests::free_port()?);
    let nic = |mac: &str| ros_qemu::Nic {
        mac: mac.into(),
        net: ros_qemu::NicNet::Mcast(segment.clone()),
    };
    let key = Arc::new(SshKey::new()?);
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (guest_a, ssh_a, api_a) = spawn(
        Arch::X86_64,
        None,
        dir_a.path(),
        &key,
        &format!(
            "{}\n[cluster]\nrole = \"server\"\nnode_ip = \"192.168.76.1\"\n",
            segment_user_data("node-a", "52:54:00:12:34:61", "192.168.76.1", &reg)
        ),
        vec![nic("52:54:00:12:34:61")],
    )?;
    // The second machine boots meanwhile, with no cluster role yet.
    let (guest_b, ssh_b, _) = spawn(
        Arch::X86_64,
        None,
        dir_b.path(),
        &key,
        &segment_user_data("node-b", "52:54:00:12:34:62", "192.168.76.2", &reg),
        vec![nic("52:54:00:12:34:62")],
    )?;
    guest_a.wait_ready(READY_TIMEOUT)?;
    guest_b.wait_ready(READY_TIMEOUT)?;
    let a = server_node(guest_a, dir_a, key.clone(), ssh_a, api_a)?;
    let (code, token) = key.ros(ssh_a, "cluster token", Duration::from_secs(30))?;
    let token = token.trim().to_string();
    ensure!(code == 0 && token.starts_with("K10"), "{token}");
    let (hash_part, _) = token.rsplit_once(':').context("the token's password")?;
    let wrong = format!("{hash_part}:not-the-password");

    let set = |k: &str, v: &str| -> Result<String> {
        let (code, out) = key.ros(
            ssh_b,
            &format!("config set {k} '{v}'"),
            Duration::from_secs(60),
        )?;
        ensure!(code == 0, "ros config set {k}: {out}");
        Ok(out)
    };
    set("cluster.server", "https://192.168.76.1:6443")?;
    set("cluster.token", &wrong)?;
    let out = set("cluster.role", "agent")?;
    ensure!(
        out.contains("cluster"),
        "the cluster service started live: {out}"
    );
    wait("the agent's refusal in its log", 120, || {
        Ok(service_log(&key, ssh_b)?.contains("the join token is wrong"))
    })?;
    wait("the refusal in the server's log", 30, || {
        Ok(service_log(&key, ssh_a)?.contains("join refused: 192.168.76.2"))
    })?;
    let (_, st) = key.ros(ssh_b, "cluster status", Duration::from_secs(30))?;
    ensure!(
        st.contains("role: agent")
            && st.contains("state: refused")
            && st.contains("the join token is wrong"),
        "ros cluster status on the agent: {st}"
    );
    ensure!(
        !a.ok(&["get", "nodes"], None)?.contains("node-b"),
        "no node joined with the wrong token"
    );

    // The right token: the service restarts with it and the node joins.
    set("cluster.token", &token)?;
    wait("node-b Ready", 180, || {
        let t = a.kubectl(&["get", "nodes"], None)?.1;
        Ok(t.lines()
            .any(|l| l.starts_with("node-b ") && l.contains(" Ready ")))
    })?;
    ensure!(
        service_log(&key, ssh_a)?.contains("node node-b joined from 192.168.76.2"),
        "the server logs the join"
    );
    let (_, st) = key.ros(ssh_b, "cluster status", Duration::from_secs(30))?;
    ensure!(
        st.contains("state: joined") && st.contains("server: https://192.168.76.1:6443"),
        "ros cluster status on the agent: {st}"
    );
    let (code, out) = key.ros(ssh_b, "cluster kubeconfig", Duration::from_secs(30))?;
    ensure!(
        code != 0 && out.contains("this machine is an agent of https://192.168.76.1:6443"),
        "{out}"
    );
    let ip: String = a.ok(
        &[
            "get",
            "node",
            "node-b",
            "-o",
            "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
        ],
        None,
    )?;
    ensure!(ip == "192.168.76.2", "node-b's InternalIP: {ip}");

    // A pod for node-b runs there, and the server reaches it for logs and exec.
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: on-b}}\nspec:\n  nodeSelector: {{kubernetes.io/hostname: node-b}}\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: c\n    image: {reg}/busybox:busybox\n    command: [\"/bin/sh\", \"-c\", \"echo hello from b; exec sleep 3600\"]\n"
    );
    a.ok(&["apply", "-f", "-"], Some(&pod))?;
    wait("the pod Running on node-b", 180, || {
        let t = a.ok(&["get", "pod", "on-b", "-o", "wide"], None)?;
        Ok(t.contains("Running") && t.contains("node-b"))
    })?;
    let host_ip = a.ok(
        &["get", "pod", "on-b", "-o", "jsonpath={.status.hostIP}"],
        None,
    )?;
    ensure!(host_ip == "192.168.76.2", "hostIP {host_ip}");
    // Its own pod range, its own bridge, NAT out of its node.
    let (ra, rb) = (
        a.ok(
            &["get", "node", "node-a", "-o", "jsonpath={.spec.podCIDR}"],
            None,
        )?,
        a.ok(
            &["get", "node", "node-b", "-o", "jsonpath={.spec.podCIDR}"],
            None,
        )?,
    );
    ensure!(
        ra == "10.42.0.0/24" && rb == "10.42.1.0/24",
        "pod ranges {ra} {rb}"
    );
    let pod_ip = a.ok(
        &["get", "pod", "on-b", "-o", "jsonpath={.status.podIP}"],
        None,
    )?;
    ensure!(pod_ip.starts_with("10.42.1."), "podIP {pod_ip}");
    let got = a.ok(
        &[
            "exec",
            "on-b",
            "--",
            "wget",
            "-q",
            "-O-",
            &format!("http://{reg}/v2/"),
        ],
        None,
    )?;
    ensure!(
        got.trim() == "{}",
        "the registry from a pod on node-b: {got:?}"
    );
    wait("the pod's log through the server", 60, || {
        Ok(a.kubectl(&["logs", "on-b"], None)?.1 == "hello from b\n")
    })?;
    let (ok, out, err) = a.kubectl(
        &["exec", "on-b", "--", "/bin/sh", "-c", "echo in-b; exit 3"],
        None,
    )?;
    ensure!(
        !ok && out == "in-b\n" && err.contains("exit code 3"),
        "{out}{err}"
    );
    // The container is on the second machine: its agent keeps the pod's folder.
    let uid = a.ok(
        &["get", "pod", "on-b", "-o", "jsonpath={.metadata.uid}"],
        None,
    )?;
    let (code, ls) = key.ros(
        ssh_b,
        "service exec cluster -- ls /var/lib/ros-kube/agent/pods",
        Duration::from_secs(30),
    )?;
    ensure!(code == 0 && ls.contains(&uid), "pod {uid} on node-b: {ls}");
    a.ok(&["delete", "pod", "on-b", "--wait=true"], None)?;
    drop(guest_b);
    Ok(())
}
