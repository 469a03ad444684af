//! The `ros` CLI, driven over SSH in the console container of a booted image (both arches),
//! with a state disk: every verb, its exit codes, a caller that is not root refused by the
//! API, network changes applied live, and a config change that survives QEMU killed without a
//! shutdown.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use ros_qemu::Guest;
use ros_tests::{Arch, READY_TIMEOUT, SshKey, config, free_port};

const SSH: Duration = Duration::from_secs(90);

const USER_DATA: &str = r#"
[services.web]
image = "busybox"
command = ["sh", "-c", "echo web says hello; exec httpd -f -p 8080 -h /tmp"]
"#;

/// Runs `ros ARGS` in the console: its exit code and its output (stdout and stderr).
fn ros(key: &SshKey, port: u16, args: &str) -> Result<(i32, String)> {
    key.ros(port, args, SSH)
}

/// `ros ARGS` that must succeed; its output.
fn ok(key: &SshKey, port: u16, args: &str) -> Result<String> {
    let (code, out) = ros(key, port, args)?;
    ensure!(code == 0, "`ros {args}` exited {code}: {out}");
    Ok(out)
}

fn state_of(key: &SshKey, port: u16, service: &str) -> Result<String> {
    let out = ok(key, port, "service list -o json")?;
    let list: serde_json::Value = serde_json::from_str(out.trim()).context(out.clone())?;
    Ok(list
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == service))
        .map(|s| s["state"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default())
}

fn wait_state(key: &SshKey, port: u16, service: &str, want: &str) -> Result<()> {
    for _ in 0..60 {
        if state_of(key, port, service)? == want {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, status) = ros(key, port, &format!("service status {service}"))?;
    let (_, logs) = ros(key, port, "logs -n 40")?;
    anyhow::bail!("{service} never became {want}:\n{status}\n{logs}")
}

/// The last lines of a service's log, once they contain `want` (30 s at most).
fn log_with(key: &SshKey, port: u16, service: &str, want: &str) -> Result<String> {
    let mut out = String::new();
    for _ in 0..60 {
        out = ok(key, port, &format!("service logs {service} -n 20"))?;
        if out.contains(want) {
            return Ok(out);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    anyhow::bail!("`{want}` never in the log of {service}: {out}")
}

/// `ros service exec`: a command in another service's container, on the caller's streams (or
/// a terminal), with its exit status; an unknown or stopped service is a clear error.
fn service_exec(key: &SshKey, port: u16) -> Result<()> {
    let (code, out) = ros(
        key,
        port,
        "service exec web -- sh -c 'echo in $(hostname); pidof httpd >/dev/null && echo sees httpd; exit 3'",
    )?;
    ensure!(code == 3, "the command's status comes back: {code} {out}");
    ensure!(
        out.contains("in web"),
        "the web container's UTS namespace: {out}"
    );
    ensure!(
        out.contains("sees httpd"),
        "the web container's PID namespace: {out}"
    );
    let piped = key.run(
        port,
        "echo through stdin | ros service exec web -- cat",
        SSH,
    )?;
    ensure!(piped.trim() == "through stdin", "{piped}");
    let (code, out) = ros(key, port, "service exec -t web -- sh -c 'tty; exit 4'")?;
    ensure!(
        code == 4 && out.contains("/dev/pts/"),
        "a terminal of its own: {code} {out}"
    );
    // Typed input reaches the command through its terminal.
    let typed = key.run(
        port,
        "printf 'typed line\\n' | ros service exec -t web -- sh -c 'read x; echo got \"$x\"'",
        SSH,
    )?;
    ensure!(typed.contains("got typed line"), "{typed}");
    let (code, out) = ros(key, port, "service exec nope -- true")?;
    ensure!(
        code == 3 && out.contains("no service `nope`"),
        "{code} {out}"
    );
    Ok(())
}

/// Service definitions changed through the config apply live: a new one starts, a changed one
/// restarts the new way, a removed one stops.
fn services_live(key: &SshKey, port: u16) -> Result<()> {
    key.run(
        port,
        "printf '[services.hello]\\nimage = \"busybox\"\\ncommand = [\"sh\", \"-c\", \"echo hello one; exec sleep 1000\"]\\n' > /tmp/hello.toml",
        SSH,
    )?;
    let (code, out) = ros(key, port, "config merge /tmp/hello.toml")?;
    ensure!(
        code == 0 && out.contains("applied live: hello: started"),
        "{out}"
    );
    wait_state(key, port, "hello", "running")?;
    log_with(key, port, "hello", "hello one")?;
    let (code, out) = ros(
        key,
        port,
        r#"config set services.hello.command '["sh", "-c", "echo hello two; exec sleep 1000"]'"#,
    )?;
    ensure!(
        code == 0 && out.contains("applied live: hello: restarted with its new definition"),
        "{out}"
    );
    ensure!(!out.contains("next boot"), "{out}");
    log_with(key, port, "hello", "hello two")?;
    wait_state(key, port, "hello", "running")?;
    let (code, out) = ros(key, port, "config unset services.hello")?;
    ensure!(
        code == 0 && out.contains("hello: stopped (disabled or no longer defined)"),
        "{out}"
    );
    wait_state(key, port, "hello", "stopped")?;
    ensure!(
        state_of(key, port, "web")? == "running",
        "web was left alone"
    );
    Ok(())
}

/// An interface of `ros status -o json` (the network as it is now).
fn live_interface(key: &SshKey, port: u16, name: &str) -> Result<serde_json::Value> {
    let out = ok(key, port, "status -o json")?;
    let st: serde_json::Value = serde_json::from_str(out.trim()).context(out.clone())?;
    st["interfaces"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == name))
        .cloned()
        .with_context(|| format!("no {name} in {st:#}"))
}

fn addresses(i: &serde_json::Value) -> Vec<String> {
    i["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect()
}

/// Network changes apply live: eth0 named but set up as before keeps its lease; a static address
/// on eth1 comes and goes; a gateway on eth1 adds its route.
fn network_live(key: &SshKey, port: u16) -> Result<()> {
    let eth0 = live_interface(key, port, "eth0")?;
    let acquired = eth0["dhcp"]["acquired_ms"].clone();
    ensure!(acquired.is_u64(), "{eth0:#}");
    let (code, out) = ros(key, port, "config set network.interfaces.eth0.dhcp4 true")?;
    ensure!(
        code == 0 && out.contains("applied live: nothing running changes"),
        "{out}"
    );
    let (code, out) = ros(
        key,
        port,
        "config set network.interfaces.eth1.addresses 192.168.79.10/24",
    )?;
    ensure!(
        code == 0 && out.contains("applied live: eth1: 192.168.79.10/24"),
        "{out}"
    );
    ensure!(!out.contains("next boot"), "{out}");
    let eth1 = live_interface(key, port, "eth1")?;
    ensure!(
        addresses(&eth1).contains(&"192.168.79.10/24".to_string()) && eth1["state"] == "static",
        "{eth1:#}"
    );
    let eth0 = live_interface(key, port, "eth0")?;
    ensure!(
        eth0["dhcp"]["acquired_ms"] == acquired && eth0["config"] == "eth0",
        "eth0 was not left alone: {eth0:#}"
    );
    // A new address and a route on eth1: taken down and set up again.
    let (code, out) = ros(
        key,
        port,
        "config set network.interfaces.eth1.addresses 192.168.79.11/24",
    )?;
    ensure!(code == 0, "{out}");
    key.run(
        port,
        "printf '[[network.interfaces.eth1.routes]]\\nto = \"10.98.0.0/16\"\\nvia = \"192.168.79.1\"\\n' > /tmp/route.toml",
        SSH,
    )?;
    let (code, out) = ros(key, port, "config merge /tmp/route.toml")?;
    ensure!(code == 0 && out.contains("applied live: eth1"), "{out}");
    let eth1 = live_interface(key, port, "eth1")?;
    let a = addresses(&eth1);
    ensure!(
        a.contains(&"192.168.79.11/24".to_string()) && !a.contains(&"192.168.79.10/24".to_string()),
        "{eth1:#}"
    );
    let st: serde_json::Value = serde_json::from_str(ok(key, port, "status -o json")?.trim())?;
    ensure!(
        st["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["to"] == "10.98.0.0/16" && r["via"] == "192.168.79.1"),
        "{:#}",
        st["routes"]
    );
    // Dropped from the config: its address and route go.
    let (code, out) = ros(key, port, "config unset network.interfaces.eth1")?;
    ensure!(
        code == 0 && out.contains("eth1: no longer configured"),
        "{out}"
    );
    let eth1 = live_interface(key, port, "eth1")?;
    ensure!(
        addresses(&eth1)
            .iter()
            .all(|a| !a.starts_with("192.168.79.")),
        "{eth1:#}"
    );
    let st: serde_json::Value = serde_json::from_str(ok(key, port, "status -o json")?.trim())?;
    ensure!(
        !st["routes"].to_string().contains("10.98.0.0/16"),
        "{:#}",
        st["routes"]
    );
    ok(key, port, "config unset network")?;
    Ok(())
}

fn cli(arch: Arch) -> Result<()> {
    let key = SshKey::new()?;
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("state.img");
    ros_qemu::blank_disk(&disk, 256 << 20)?;
    let mut ud = tempfile::Builder::new().suffix(".toml").tempfile()?;
    writeln!(ud, "ssh_authorized_keys = [\"{}\"]", key.public)?;
    writeln!(
        ud,
        "[[users]]\nname = \"alice\"\ngroups = [\"wheel\"]\nssh_authorized_keys = [\"{}\"]",
        key.public
    )?;
    ud.write_all(USER_DATA.as_bytes())?;
    let port = free_port()?;
    let mut cfg = config(arch)?;
    cfg.user_data = Some(ud.path().to_path_buf());
    cfg.forwards = vec![(port, 22)];
    cfg.disks = vec![disk.clone()];
    cfg.memory_mib = 768;
    cfg.extra_nics.push(ros_qemu::Nic {
        mac: "52:54:00:12:34:58".into(),
        net: ros_qemu::NicNet::Isolated,
    });
    let mut g = Guest::spawn(&cfg)?;
    g.wait_ready(READY_TIMEOUT)?;

    // os, status, logs
    let v = ok(&key, port, "os version")?;
    ensure!(
        v.trim() == format!("ros {}", env!("CARGO_PKG_VERSION")),
        "{v}"
    );
    let info: serde_json::Value = serde_json::from_str(ok(&key, port, "os info -o json")?.trim())?;
    ensure!(
        info["arch"] == arch.name() && info["api_version"] == 2,
        "{info}"
    );
    let st = ok(&key, port, "status")?;
    ensure!(
        st.contains("state disk: /dev/vda") && st.contains("boot:") && st.contains("services"),
        "{st}"
    );
    let logs = ok(&key, port, "logs -n 200")?;
    ensure!(logs.contains("service console started"), "{logs}");

    // services
    let list = ok(&key, port, "service list")?;
    for name in ["console", "ntp", "syslog", "web"] {
        ensure!(
            list.lines()
                .any(|l| l.starts_with(name) && l.contains("running")),
            "{list}"
        );
    }
    let (code, out) = ros(&key, port, "service status consle")?;
    ensure!(
        code == 3 && out.contains("did you mean `console`"),
        "{code} {out}"
    );
    let status = ok(&key, port, "service status web")?;
    ensure!(status.contains("state: running"), "{status}");
    service_exec(&key, port)?;
    let wlogs = ok(&key, port, "service logs web -n 5")?;
    ensure!(wlogs.contains("web says hello"), "{wlogs}");
    ok(&key, port, "service stop web")?;
    wait_state(&key, port, "web", "stopped")?;
    ok(&key, port, "service start web")?;
    wait_state(&key, port, "web", "running")?;
    ok(&key, port, "service restart web")?;
    wait_state(&key, port, "web", "running")?;
    let again = ok(&key, port, "service logs web")?;
    ensure!(
        again.matches("web says hello").count() >= 3,
        "three starts: {again}"
    );
    // Following: new lines arrive while the command runs (the restart makes them).
    let follow = key.run(
        port,
        "(sleep 2; ros service restart web >/dev/null) & timeout 8 ros service logs web -f -n 0; true",
        SSH,
    )?;
    ensure!(
        follow.contains("web says hello"),
        "service logs -f: {follow}"
    );
    let follow = key.run(
        port,
        "(sleep 2; ros service restart web >/dev/null) & timeout 8 ros logs -f -n 0; true",
        SSH,
    )?;
    ensure!(follow.contains("service web"), "logs -f: {follow}");
    wait_state(&key, port, "web", "running")?;
    ok(&key, port, "service disable web")?;
    wait_state(&key, port, "web", "stopped")?;
    let enabled = ok(&key, port, "config get services.web.enabled")?;
    ensure!(enabled.trim() == "false", "{enabled}");
    ok(&key, port, "service enable web")?;
    wait_state(&key, port, "web", "running")?;
    services_live(&key, port)?;

    // config
    let (code, out) = ros(&key, port, "config set hostname cli-node")?;
    ensure!(code == 0, "{out}");
    ensure!(
        key.run(port, "hostname", SSH)?.trim() == "cli-node",
        "live hostname"
    );
    ensure!(ok(&key, port, "config get hostname")?.trim() == "cli-node");
    let (code, out) = ros(&key, port, "config set network.interfaces.eth0.mtu huge")?;
    ensure!(
        code == 4 && out.contains("network.interfaces.eth0.mtu"),
        "{code} {out}"
    );
    let (code, out) = ros(&key, port, "config set hostnme x")?;
    ensure!(
        code == 4 && out.contains("did you mean `hostname`"),
        "{out}"
    );
    network_live(&key, port)?;
    let (code, out) = ros(&key, port, "config set ntp.servers 10.0.2.2")?;
    ensure!(
        code == 0 && out.contains("applied live: ntp: restarted with its new definition"),
        "{out}"
    );
    let sources = ok(&key, port, "config sources")?;
    ensure!(
        sources.lines().any(|l| l.starts_with("hostname")
            && l.contains("cli-node")
            && l.contains("state:/var/lib/ros/config/user-data.toml")),
        "{sources}"
    );
    ensure!(
        sources
            .lines()
            .any(|l| l.starts_with("ssh_authorized_keys") && l.contains("fw_cfg")),
        "{sources}"
    );
    let export = ok(&key, port, "config export")?;
    ensure!(
        export.contains("hostname = \"cli-node\"") && export.contains("[ntp]"),
        "{export}"
    );
    let full = ok(&key, port, "config export --full")?;
    ensure!(full.contains("[services.web]"), "{full}");
    ok(&key, port, "config unset ntp.servers")?;
    ensure!(!ok(&key, port, "config export")?.contains("ntp"));
    key.run(
        port,
        "printf 'modules = [\"bonding\"]\\n' > /tmp/m.toml && printf 'hostnme = 1\\n' > /tmp/bad.toml",
        SSH,
    )?;
    let merged = ok(&key, port, "config merge /tmp/m.toml")?;
    // A module the config names is loaded at once (the same path as the boot's).
    ensure!(
        merged.contains("modules loaded: bonding"),
        "modules load live: {merged}"
    );
    key.run(port, "test -d /sys/module/bonding", SSH)
        .context("bonding is not loaded")?;
    ensure!(ok(&key, port, "config get modules")?.contains("bonding"));
    let (code, out) = ros(&key, port, "config merge /tmp/bad.toml")?;
    ensure!(code == 4 && out.contains("hostnme"), "{out}");
    ok(&key, port, "config validate")?;
    let (code, out) = ros(&key, port, "config validate /tmp/bad.toml")?;
    ensure!(
        code == 4 && out.contains("/tmp/bad.toml:1:1: hostnme"),
        "{out}"
    );
    let comp = ok(&key, port, "completions bash")?;
    ensure!(comp.contains("_ros()"), "completions");

    // A user of the user-data logs in with its key, in its groups; the API refuses it.
    let id = key.run_as("alice", port, "id; pwd", SSH)?;
    ensure!(
        id.contains("uid=1000(alice)") && id.contains("wheel") && id.contains("/home/alice"),
        "{id}"
    );
    let out = key.run_as("alice", port, "ros os version 2>&1; echo \"exit=$?\"", SSH)?;
    ensure!(out.contains("root only") && out.contains("exit=5"), "{out}");

    // Only root may use the API.
    let (_, out) = ros(
        &key,
        port,
        "os version; su -s /bin/sh nobody -c 'ros os version'",
    )?;
    ensure!(
        out.contains("root only") && out.trim_end().ends_with("uid 65534)"),
        "{out}"
    );
    let code = key.run(
        port,
        "su -s /bin/sh nobody -c 'ros os version' >/dev/null 2>&1; echo $?",
        SSH,
    )?;
    ensure!(code.trim() == "5", "non-root exit code {code}");

    // A config change survives a hard power-off.
    g.kill();
    drop(g);
    let mut g = Guest::spawn(&cfg)?;
    let r = g.wait_ready(READY_TIMEOUT)?;
    ensure!(
        r["hostname"] == "cli-node",
        "after a hard power-off: {}",
        r["hostname"]
    );
    // `ros poweroff` ends the machine cleanly.
    let _ = ros(&key, port, "poweroff");
    let status = g.wait_exit(Duration::from_secs(60))?;
    ensure!(status.success(), "{status}");
    Ok(())
}

mod x86_64 {
    #[test]
    fn cli() -> anyhow::Result<()> {
        super::cli(super::Arch::X86_64)
    }
}

mod aarch64 {
    #[test]
    fn cli() -> anyhow::Result<()> {
        super::cli(super::Arch::Aarch64)
    }
}
