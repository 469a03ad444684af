//! `kube [--pods P] [--objects N]`: the cluster's server program (`ros-kube`, the release build)
//! on the host, as a process of its own with a fresh data folder:
//! - its static binary's size per arch (the image profile, as it goes into the `kube` image);
//! - resident memory idle (3 s after it serves), then after P pods and N - P configmaps are
//!   created through the API (HTTPS, a bearer token, one client), with the peak (VmHWM): the
//!   pods have no node, so the scheduler reports each as unschedulable (a condition and an
//!   event), the controllers' work a workload makes;
//! - the rate of those creates (a client's sequential requests over one kept-alive connection).
//!
//! There is no k3s here to measure in the same run; BENCHMARKS.md sets these beside k3s's
//! published figures.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn build(args: &[&str]) -> Result<()> {
    let st = Command::new("cargo")
        .args(["build", "-q", "-p", "ros-kube", "--bin", "ros-kube"])
        .args(args)
        .current_dir(root())
        .status()?;
    if !st.success() {
        bail!("cargo build {args:?} failed");
    }
    Ok(())
}

fn kib(pid: u32, field: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} for pid {pid}"))
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn bench(pods: usize, objects: usize) -> Result<()> {
    let mut sizes = vec![];
    for t in ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"] {
        build(&["--profile", "image", "--target", t])?;
        let p = root().join("target").join(t).join("image/ros-kube");
        sizes.push((t, std::fs::metadata(&p)?.len()));
    }
    build(&["--release"])?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("tokens"), "bench-token bench system:masters\n")?;
    let port = ros_tests::free_port()?;
    let server = Server(
        Command::new(root().join("target/release/ros-kube"))
            .args(["server", "--data-dir"])
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let pid = server.0.id();
    let ca_path = data.join("pki/ca.crt");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ca_path.exists() {
        if Instant::now() > deadline {
            bail!("the server made no CA in 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let ca = std::fs::read(&ca_path)?;
    let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&ca)
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls_graviola::default_provider()))
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .build()
        .into();
    let base = format!("https://127.0.0.1:{port}");
    let post = |path: &str, body: serde_json::Value| -> Result<()> {
        let r = agent
            .post(format!("{base}{path}"))
            .header("Authorization", "Bearer bench-token")
            .header("Content-Type", "application/json")
            .send(serde_json::to_vec(&body)?.as_slice())?;
        if r.status() != 201 {
            bail!("POST {path}: {}", r.status());
        }
        Ok(())
    };
    // Serving: the namespaces exist.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = agent
            .get(format!("{base}/api/v1/namespaces/default"))
            .header("Authorization", "Bearer bench-token")
            .call();
        if matches!(&r, Ok(r) if r.status() == 200) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the server does not answer");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    let idle = kib(pid, "VmRSS:")?;
    let t = Instant::now();
    for i in 0..pods {
        post(
            "/api/v1/namespaces/default/pods",
            serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("p-{i}"), "labels": {"app": "bench"}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1",
                    "resources": {"requests": {"memory": "16Mi", "cpu": "10m"}}}]}}),
        )?;
    }
    for i in 0..objects.saturating_sub(pods) {
        post(
            "/api/v1/namespaces/default/configmaps",
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("cm-{i}")},
                "data": {"key": format!("value {i} {}", "x".repeat(200))}}),
        )?;
    }
    let create_s = t.elapsed().as_secs_f64();
    // Let the scheduler and its events settle.
    std::thread::sleep(Duration::from_secs(5));
    let loaded = kib(pid, "VmRSS:")?;
    let peak = kib(pid, "VmHWM:")?;
    println!("ros-kube server (release build; store fsync per commit, on this machine's disk)");
    for (t, size) in &sizes {
        println!(
            "  binary {t}: {size} bytes ({:.2} MiB)",
            *size as f64 / 1_048_576.0
        );
    }
    println!("  RSS idle: {idle} KiB ({:.1} MiB)", idle as f64 / 1024.0);
    println!(
        "  RSS with {pods} pods and {} objects created: {loaded} KiB ({:.1} MiB); peak {peak} KiB ({:.1} MiB)",
        objects,
        loaded as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    println!(
        "  creates: {objects} in {create_s:.2} s ({:.0}/s, one client, sequential)",
        objects as f64 / create_s
    );
    drop(server);
    Ok(())
}

/// `kube-apply --arch A --replicas N --runs R`: in a QEMU guest serving the cluster
/// (`[cluster] role = "server"`, the agent on the same node), the time from `kubectl apply` of
/// a deployment of N replicas (ros's busybox image, from a docker-registry on the host, pulled
/// once before the runs) to `kubectl rollout status` reporting it complete, all N Running; the
/// deployment is deleted and its pods gone between runs. Then the cluster process's memory
/// with the pods running (server and agent are one process: VmRSS and VmHWM).
const KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.32";

/// kubectl 1.32 with this kubeconfig and HOME; its output, or its error.
fn kubectl(kubeconfig: &Path, home: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut c = Command::new(KUBECTL)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env("HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(s), Some(mut i)) = (stdin, c.stdin.take()) {
        i.write_all(s.as_bytes())?;
    }
    let o = c.wait_with_output()?;
    if !o.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// A guest (1 GiB) with this user-data after the SSH key, SSH and the API forwarded, these
/// extra NICs; the guest, the SSH port, the API port.
fn guest(
    arch: ros_image::Arch,
    key: &ros_tests::SshKey,
    file: &Path,
    user_data: &str,
    nics: Vec<ros_qemu::Nic>,
) -> Result<(ros_qemu::Guest, u16, u16)> {
    let (ssh, api) = (ros_tests::free_port()?, ros_tests::free_port()?);
    std::fs::write(
        file,
        format!("ssh_authorized_keys = [\"{}\"]\n{user_data}", key.public),
    )?;
    let mut cfg = ros_tests::config(arch)?;
    cfg.user_data = Some(file.to_path_buf());
    cfg.forwards = vec![(ssh, 22), (api, 6443)];
    cfg.memory_mib = 1024;
    cfg.extra_nics = nics;
    Ok((ros_qemu::Guest::spawn(&cfg)?, ssh, api))
}

/// The cluster service's process memory in a guest (VmRSS, VmHWM in KiB).
fn service_rss(key: &ros_tests::SshKey, ssh: u16) -> Result<(u64, u64)> {
    let mem = key.run(
        ssh,
        "ros service exec cluster -- /bin/sh -c 'grep -E \"VmRSS|VmHWM\" /proc/$(pidof ros-kube)/status'",
        Duration::from_secs(60),
    )?;
    let field = |name: &str| {
        mem.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

pub fn apply(arch: ros_image::Arch, replicas: u32, runs: usize) -> Result<()> {
    let registry = ros_tests::registry::Registry::start(&Default::default())?;
    let image_dir = ros_tests::image(arch)?;
    registry.push(&image_dir.join("oci"), "busybox", "busybox")?;
    let host = format!("10.0.2.2:{}", registry.port);
    let key = ros_tests::SshKey::new()?;
    let dir = tempfile::tempdir()?;
    let (_guest, ssh, api) = guest(
        arch,
        &key,
        &dir.path().join("user-data.toml"),
        &format!(
            "[registries.mirrors.\"{host}\"]\nendpoints = [\"http://{host}\"]\n\n[cluster]\nrole = \"server\"\n"
        ),
        vec![],
    )?;
    let deadline = Instant::now() + Duration::from_secs(180);
    let kc = loop {
        if let Ok((0, out)) = key.ros(
            ssh,
            &format!("cluster kubeconfig --server 127.0.0.1:{api}"),
            Duration::from_secs(60),
        ) && out.contains("current-context")
        {
            break out;
        }
        if Instant::now() > deadline {
            bail!("the guest's cluster did not come up");
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, kc)?;
    let k = |args: &[&str], stdin: Option<&str>| kubectl(&kubeconfig, dir.path(), args, stdin);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !k(&["get", "nodes"], None)
        .unwrap_or_default()
        .contains(" Ready ")
    {
        if Instant::now() > deadline {
            bail!("the node did not become Ready");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let dep = |n: u32| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: bench}}\nspec:\n  replicas: {n}\n  selector: {{matchLabels: {{app: bench}}}}\n  template:\n    metadata: {{labels: {{app: bench}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: c\n        image: {host}/busybox:busybox\n        command: [\"/bin/sleep\", \"3600\"]\n"
        )
    };
    // The image pulled once, so the runs time the apply, not the pull.
    k(&["apply", "-f", "-"], Some(&dep(1)))?;
    k(
        &["rollout", "status", "deployment/bench", "--timeout=300s"],
        None,
    )?;
    k(&["delete", "deployment", "bench", "--wait=true"], None)?;
    let mut times = vec![];
    let mut rss = (0, 0);
    for run in 0..runs {
        let t = Instant::now();
        k(&["apply", "-f", "-"], Some(&dep(replicas)))?;
        k(
            &["rollout", "status", "deployment/bench", "--timeout=600s"],
            None,
        )?;
        let s = t.elapsed().as_secs_f64();
        let running = k(&["get", "pods", "-l", "app=bench", "--no-headers"], None)?
            .lines()
            .filter(|l| l.contains("Running"))
            .count();
        eprintln!(
            "run {}/{runs}: {replicas} replicas Running ({running}) in {s:.2} s",
            run + 1
        );
        times.push(s);
        rss = service_rss(&key, ssh)?;
        k(&["delete", "deployment", "bench", "--wait=true"], None)?;
        let deadline = Instant::now() + Duration::from_secs(300);
        while !k(&["get", "pods", "-l", "app=bench", "--no-headers"], None)?
            .trim()
            .is_empty()
        {
            if Instant::now() > deadline {
                bail!("the pods were not removed");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "kubectl apply of {replicas} replicas to all Running, {arch:?} guest (TCG, 1 vCPU, 1 GiB), {runs} runs"
    );
    println!(
        "  median {:.2} s (min {:.2}, max {:.2})",
        crate::median(&times),
        times[0],
        times[times.len() - 1]
    );
    println!(
        "  cluster process (server + agent) with the {replicas} pods: VmRSS {} KiB ({:.1} MiB), VmHWM {} KiB ({:.1} MiB)",
        rss.0,
        rss.0 as f64 / 1024.0,
        rss.1,
        rss.1 as f64 / 1024.0
    );
    Ok(())
}

/// Two guests on one L2 segment: a server (with its own agent) and a machine joined as an
/// agent. The agent process's memory with no pods of its own, then with `pods` pods on it;
/// the server's process (server and its node's agent) read the same way, in the same run.
pub fn agent(arch: ros_image::Arch, pods: u32) -> Result<()> {
    let registry = ros_tests::registry::Registry::start(&Default::default())?;
    let image_dir = ros_tests::image(arch)?;
    registry.push(&image_dir.join("oci"), "busybox", "busybox")?;
    let reg = format!("10.0.2.2:{}", registry.port);
    let key = ros_tests::SshKey::new()?;
    let segment = format!("230.0.0.1:{}", ros_tests::free_port()?);
    let dir = tempfile::tempdir()?;
    let spawn = |name: &str, mac: &str, ip: &str, cluster: &str| {
        let (g, ssh, api) = guest(
            arch,
            &key,
            &dir.path().join(format!("{name}.toml")),
            &format!(
                "hostname = \"{name}\"\n\n[network.interfaces.eth0]\ndhcp4 = true\n\n[network.interfaces.lan]\nmac = \"{mac}\"\naddresses = [\"{ip}/24\"]\n\n[registries.mirrors.\"{reg}\"]\nendpoints = [\"http://{reg}\"]\n\n[cluster]\n{cluster}"
            ),
            vec![ros_qemu::Nic {
                mac: mac.into(),
                net: ros_qemu::NicNet::Mcast(segment.clone()),
            }],
        )?;
        g.wait_ready(ros_tests::READY_TIMEOUT)?;
        Ok::<_, anyhow::Error>((g, ssh, api))
    };
    let (_a, ssh_a, api_a) = spawn(
        "node-a",
        "52:54:00:12:34:71",
        "192.168.77.1",
        "role = \"server\"\nnode_ip = \"192.168.77.1\"\n",
    )?;
    let deadline = Instant::now() + Duration::from_secs(180);
    let (kc, token) = loop {
        if let (Ok((0, kc)), Ok((0, token))) = (
            key.ros(
                ssh_a,
                &format!("cluster kubeconfig --server 127.0.0.1:{api_a}"),
                Duration::from_secs(60),
            ),
            key.ros(ssh_a, "cluster token", Duration::from_secs(60)),
        ) && kc.contains("current-context")
        {
            break (kc, token.trim().to_string());
        }
        if Instant::now() > deadline {
            bail!("the server's cluster did not come up");
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, kc)?;
    let k = |args: &[&str], stdin: Option<&str>| kubectl(&kubeconfig, dir.path(), args, stdin);
    let (_b, ssh_b, _) = spawn(
        "node-b",
        "52:54:00:12:34:72",
        "192.168.77.2",
        &format!("role = \"agent\"\nserver = \"https://192.168.77.1:6443\"\ntoken = \"{token}\"\n"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(180);
    while !k(&["get", "nodes"], None)?
        .lines()
        .any(|l| l.starts_with("node-b ") && l.contains(" Ready "))
    {
        if Instant::now() > deadline {
            bail!("node-b did not join");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Settled: a few heartbeats after joining.
    std::thread::sleep(Duration::from_secs(15));
    let idle_agent = service_rss(&key, ssh_b)?;
    let idle_server = service_rss(&key, ssh_a)?;
    let dep = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: bench}}\nspec:\n  replicas: {pods}\n  selector: {{matchLabels: {{app: bench}}}}\n  template:\n    metadata: {{labels: {{app: bench}}}}\n    spec:\n      nodeSelector: {{kubernetes.io/hostname: node-b}}\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: c\n        image: {reg}/busybox:busybox\n        command: [\"/bin/sleep\", \"3600\"]\n"
    );
    k(&["apply", "-f", "-"], Some(&dep))?;
    k(
        &["rollout", "status", "deployment/bench", "--timeout=600s"],
        None,
    )?;
    std::thread::sleep(Duration::from_secs(5));
    let busy_agent = service_rss(&key, ssh_b)?;
    let mib = |k: u64| k as f64 / 1024.0;
    println!("a joined agent ({arch:?} guests, TCG, 1 vCPU, 1 GiB each, one L2 segment)");
    println!(
        "  agent process, no pods: VmRSS {:.1} MiB (VmHWM {:.1} MiB)",
        mib(idle_agent.0),
        mib(idle_agent.1)
    );
    println!(
        "  agent process, {pods} pods Running on it: VmRSS {:.1} MiB (VmHWM {:.1} MiB)",
        mib(busy_agent.0),
        mib(busy_agent.1)
    );
    println!(
        "  baseline, same run: the server's process (server and its own node's agent, no pods): VmRSS {:.1} MiB (VmHWM {:.1} MiB)",
        mib(idle_server.0),
        mib(idle_server.1)
    );
    Ok(())
}
