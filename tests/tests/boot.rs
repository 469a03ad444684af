//! Boots real ros images in QEMU (TCG) on x86_64 and aarch64 and checks what the init reports
//! and does: the ready JSON for a full user-data, a broken user-data, the kernel command line,
//! an interface without a DHCP server, DHCPv6 from dnsmasq on a host tap device, and every way to
//! end the machine cleanly.

use std::time::Duration;

use anyhow::{Context, Result};
use ros_qemu::{Guest, Nic, NicNet};
use ros_tests::{Arch, READY_TIMEOUT, boot_ready, config, interface, strings};
use serde_json::Value;

const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

fn user_data(text: &str) -> Result<tempfile_path::TempPath> {
    tempfile_path::write(text)
}

/// A temp file that lives as long as the test needs it.
mod tempfile_path {
    use std::path::PathBuf;

    #[derive(Debug)]
    pub struct TempPath(pub PathBuf);

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    pub fn write(text: &str) -> anyhow::Result<TempPath> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "ros-test-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, text)?;
        Ok(TempPath(path))
    }
}

fn route<'a>(ready: &'a Value, to: &str, dev: &str) -> Option<&'a Value> {
    ready["routes"]
        .as_array()?
        .iter()
        .find(|r| r["to"] == to && r["dev"] == dev)
}

const FULL: &str = r#"
version = 1
hostname = "qemu-test"
modules = ["bonding"]

[sysctl]
"net.ipv4.ip_forward" = 1

[network.interfaces.eth0]
dhcp4 = true
dhcp6 = true

[network.interfaces.lan]
mac = "52:54:00:12:34:57"
addresses = ["192.168.77.10/24", "fd00:77::10/64"]
gateway6 = "fd00:77::1"
mtu = 1400

[[network.interfaces.lan.routes]]
to = "10.99.0.0/16"
via = "192.168.77.1"
metric = 50
"#;

fn full_user_data(arch: Arch) -> Result<()> {
    let ud = user_data(FULL)?;
    let mut cfg = config(arch)?;
    cfg.user_data = Some(ud.0.clone());
    cfg.extra_nics.push(Nic {
        mac: "52:54:00:12:34:57".into(),
        net: NicNet::User(Some("192.168.77.0/24".into())),
    });
    let (g, r) = boot_ready(&cfg)?;
    let ctx = || format!("ready: {r:#}\nconsole:\n{}", g.tail(40));
    assert_eq!(r["config_errors"], serde_json::json!([]), "{}", ctx());
    assert_eq!(r["errors"], serde_json::json!([]), "{}", ctx());
    assert_eq!(r["hostname"], "qemu-test");
    assert_eq!(r["arch"], arch.name());
    let sources: Vec<(&str, &str)> = r["config_sources"]
        .as_array()
        .context("config_sources")?
        .iter()
        .map(|s| {
            (
                s["source"].as_str().unwrap_or_default(),
                s["status"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    // No baked config, no state disk, no NoCloud drive in this boot; fw_cfg and the command
    // line read.
    assert_eq!(
        sources,
        [
            ("image:/usr/lib/ros/user-data.toml", "absent"),
            ("state:/var/lib/ros/config/user-data.toml", "absent"),
            ("nocloud:meta-data", "absent"),
            ("nocloud:user-data", "absent"),
            ("fw_cfg:opt/ros/user-data", "read"),
            ("metadata:meta-data", "absent"),
            ("metadata:user-data", "absent"),
            ("cmdline", "read")
        ]
    );

    let eth0 = interface(&r, "eth0").with_context(ctx)?;
    assert_eq!(eth0["state"], "dhcp", "{}", ctx());
    assert_eq!(eth0["config"], "eth0");
    assert!(
        strings(&eth0["addresses"]).contains(&"10.0.2.15/24".to_string()),
        "{}",
        ctx()
    );
    assert_eq!(eth0["dhcp"]["server"], "10.0.2.2");
    // QEMU's user network advertises fec0::/64 with neither M nor O: SLAAC alone.
    assert_eq!(eth0["dhcp6"]["mode"], "slaac", "{}", ctx());
    assert!(
        strings(&eth0["addresses"]).contains(&"fec0::5054:ff:fe12:3456/64".to_string()),
        "{}",
        ctx()
    );

    let lan = interface(&r, "eth1").with_context(ctx)?;
    assert_eq!(lan["config"], "lan", "matched by MAC: {}", ctx());
    assert_eq!(lan["state"], "static");
    assert_eq!(lan["mtu"], 1400);
    let addrs = strings(&lan["addresses"]);
    assert!(addrs.contains(&"192.168.77.10/24".to_string()), "{}", ctx());
    assert!(addrs.contains(&"fd00:77::10/64".to_string()), "{}", ctx());

    let default4 = route(&r, "0.0.0.0/0", "eth0").with_context(ctx)?;
    assert_eq!(default4["via"], "10.0.2.2");
    let static4 = route(&r, "10.99.0.0/16", "eth1").with_context(ctx)?;
    assert_eq!(
        (static4["via"].as_str(), static4["metric"].as_u64()),
        (Some("192.168.77.1"), Some(50))
    );
    let default6 = route(&r, "::/0", "eth1").with_context(ctx)?;
    assert_eq!(default6["via"], "fd00:77::1");

    assert_eq!(strings(&r["dns"]["nameservers"]), ["10.0.2.3"]);
    assert_eq!(r["sysctl"]["net.ipv4.ip_forward"], "1", "{}", ctx());
    assert!(
        strings(&r["modules"]["loaded"]).contains(&"bonding".to_string()),
        "{}",
        ctx()
    );
    let lo = interface(&r, "lo").with_context(ctx)?;
    assert_eq!(
        (lo["state"].as_str(), lo["up"].as_bool()),
        (Some("loopback"), Some(true))
    );
    // The timeline is in boot order and ends at the ready line.
    let phases: Vec<String> = r["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["phase"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        phases,
        [
            "start", "mounts", "modules", "state", "config", "system", "network", "services",
            "ready"
        ]
    );
    Ok(())
}

const BROKEN: &str = r#"version = 1
hostname = "still-boots"
hostnme = "typo"
modules = "bonding"
this line is not toml
[network.interfaces.eth0]
addresses = ["10.0.0.300/24"]
dhcp4 = "yes"
"#;

fn broken_user_data(arch: Arch) -> Result<()> {
    let ud = user_data(BROKEN)?;
    let mut cfg = config(arch)?;
    cfg.user_data = Some(ud.0.clone());
    let (g, r) = boot_ready(&cfg)?;
    let ctx = || format!("ready: {r:#}\nconsole:\n{}", g.tail(40));
    let errors = r["config_errors"].as_array().with_context(ctx)?;
    let found = |line: u64, key: &str, text: &str| {
        errors.iter().any(|e| {
            e["source"] == "fw_cfg:opt/ros/user-data"
                && e["line"] == line
                && e["key"] == key
                && e["message"].as_str().is_some_and(|m| m.contains(text))
        })
    };
    assert!(found(3, "hostnme", "did you mean `hostname`"), "{}", ctx());
    assert!(found(4, "modules", "expected an array"), "{}", ctx());
    assert!(found(5, "this", "invalid TOML"), "{}", ctx());
    assert!(
        found(
            7,
            "network.interfaces.eth0.addresses[0]",
            "not an IP address"
        ),
        "{}",
        ctx()
    );
    assert!(
        found(8, "network.interfaces.eth0.dhcp4", "expected a boolean"),
        "{}",
        ctx()
    );
    assert!(
        errors
            .iter()
            .all(|e| e["column"].as_u64().is_some_and(|c| c >= 1))
    );
    // What was valid is applied; what failed falls back: eth0 gets DHCP.
    assert_eq!(r["hostname"], "still-boots");
    let eth0 = interface(&r, "eth0").with_context(ctx)?;
    assert_eq!(eth0["state"], "dhcp", "{}", ctx());
    // And the console says so, with the position, before the ready line.
    let console = g.console();
    assert!(
        console.contains("config: fw_cfg:opt/ros/user-data:3:1: hostnme: unknown key `hostnme`; did you mean `hostname`?"),
        "{}",
        g.tail(40)
    );
    Ok(())
}

fn cmdline_keys(arch: Arch) -> Result<()> {
    let ud = user_data("hostname = \"from-fw-cfg\"\n")?;
    let mut cfg = config(arch)?;
    cfg.user_data = Some(ud.0.clone());
    cfg.append = vec![
        "ros.hostname=from-cmdline".into(),
        "ros.sysctl.vm.swappiness=7".into(),
        "ros.network.dns.nameservers=1.1.1.1,9.9.9.9".into(),
        "ros.netwrk.x=1".into(),
    ];
    let (g, r) = boot_ready(&cfg)?;
    let ctx = || format!("ready: {r:#}\nconsole:\n{}", g.tail(40));
    assert_eq!(
        r["hostname"],
        "from-cmdline",
        "the command line wins: {}",
        ctx()
    );
    assert_eq!(r["sysctl"]["vm.swappiness"], "7", "{}", ctx());
    assert_eq!(
        strings(&r["dns"]["nameservers"]),
        ["1.1.1.1", "9.9.9.9"],
        "{}",
        ctx()
    );
    let errors = r["config_errors"].as_array().with_context(ctx)?;
    assert_eq!(errors.len(), 1, "{}", ctx());
    assert_eq!(errors[0]["source"], "cmdline");
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("did you mean `network`"),
        "{}",
        ctx()
    );
    Ok(())
}

fn no_lease_is_reported_and_boot_goes_on(arch: Arch) -> Result<()> {
    let ud = user_data(
        "[network]\nonline_timeout = \"2s\"\n[network.interfaces.eth0]\n[network.interfaces.eth1]\n",
    )?;
    let mut cfg = config(arch)?;
    cfg.user_data = Some(ud.0.clone());
    cfg.extra_nics.push(Nic {
        mac: "52:54:00:12:34:58".into(),
        net: NicNet::Isolated,
    });
    let (g, r) = boot_ready(&cfg)?;
    let ctx = || format!("ready: {r:#}\nconsole:\n{}", g.tail(40));
    assert_eq!(
        interface(&r, "eth0").with_context(ctx)?["state"],
        "dhcp",
        "{}",
        ctx()
    );
    assert_eq!(
        interface(&r, "eth1").with_context(ctx)?["state"],
        "no_lease",
        "{}",
        ctx()
    );
    assert!(
        g.console().contains("eth1: no DHCPv4 lease after 2000 ms"),
        "{}",
        ctx()
    );
    Ok(())
}

/// A tap device on the host with dnsmasq on it: router advertisements with the M flag and
/// stateful DHCPv6 from fd78::100-1ff, DNS fd78::53. Removed on drop.
struct V6Server {
    tap: String,
    dir: std::path::PathBuf,
    dnsmasq: std::process::Child,
}

fn run(args: &[&str]) -> Result<()> {
    let st = std::process::Command::new(args[0])
        .args(&args[1..])
        .status()
        .with_context(|| format!("running {args:?}"))?;
    anyhow::ensure!(st.success(), "{args:?} failed: {st}");
    Ok(())
}

impl V6Server {
    fn start(arch: Arch) -> Result<V6Server> {
        let tap = format!("r6{}{}", std::process::id() % 100_000, &arch.name()[..1]);
        let dir = std::env::temp_dir().join(format!("ros-{tap}"));
        std::fs::create_dir_all(&dir)?;
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &tap])
            .stderr(std::process::Stdio::null())
            .status();
        run(&["ip", "tuntap", "add", "dev", &tap, "mode", "tap"])?;
        run(&["ip", "link", "set", &tap, "up"])?;
        run(&["ip", "addr", "add", "fd78::1/64", "dev", &tap, "nodad"])?;
        let dnsmasq = std::process::Command::new("dnsmasq")
            .args(["--no-daemon", "--conf-file=/dev/null", "--port=0"])
            .arg(format!("--interface={tap}"))
            .args(["--bind-interfaces", "--enable-ra", "--log-dhcp"])
            .arg("--dhcp-range=fd78::100,fd78::1ff,64,1h")
            .arg("--dhcp-option=option6:dns-server,[fd78::53]")
            .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
            .arg(format!("--log-facility={}", dir.join("log").display()))
            .spawn()
            .context("dnsmasq (apt-get install dnsmasq-base)")?;
        Ok(V6Server { tap, dir, dnsmasq })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for V6Server {
    fn drop(&mut self) {
        let _ = self.dnsmasq.kill();
        let _ = self.dnsmasq.wait();
        let _ = run(&["ip", "link", "del", &self.tap]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// DHCPv6 in the init against dnsmasq: the router's M flag, the exchange, the address (a /128),
/// its DNS server in resolv.conf and the ready line, and the Release at poweroff.
fn dhcp6_stateful_from_dnsmasq(arch: Arch) -> Result<()> {
    anyhow::ensure!(
        nix::unistd::Uid::effective().is_root(),
        "a tap device needs root (run the suite with scripts/test as root)"
    );
    let srv = V6Server::start(arch)?;
    let ud = user_data(
        "[network.interfaces.eth0]\n[network.interfaces.v6]\nmac = \"52:54:00:12:34:59\"\ndhcp4 = false\ndhcp6 = true\n",
    )?;
    let mut cfg = config(arch)?;
    cfg.user_data = Some(ud.0.clone());
    cfg.extra_nics.push(Nic {
        mac: "52:54:00:12:34:59".into(),
        net: NicNet::Tap(srv.tap.clone()),
    });
    let (mut g, r) = boot_ready(&cfg)?;
    let ctx = || {
        format!(
            "ready: {r:#}\nconsole:\n{}\ndnsmasq:\n{}",
            g.tail(40),
            srv.log()
        )
    };
    let eth1 = interface(&r, "eth1").with_context(ctx)?;
    assert_eq!(eth1["config"], "v6", "{}", ctx());
    assert_eq!(eth1["state"], "dhcp", "{}", ctx());
    assert_eq!(eth1["dhcp6"]["mode"], "stateful", "{}", ctx());
    let leased = strings(&eth1["dhcp6"]["addresses"]);
    assert_eq!(leased.len(), 1, "{}", ctx());
    assert!(leased[0].starts_with("fd78::1"), "{}", ctx());
    assert!(
        strings(&eth1["addresses"]).contains(&format!("{}/128", leased[0])),
        "{}",
        ctx()
    );
    assert_eq!(strings(&eth1["dhcp6"]["dns"]), ["fd78::53"], "{}", ctx());
    assert_eq!(
        strings(&r["dns"]["nameservers"]),
        ["10.0.2.3", "fd78::53"],
        "{}",
        ctx()
    );
    g.poweroff()?;
    let console = ends_cleanly(&mut g, "poweroff")?;
    assert!(console.contains("dhcp6: eth1: released"), "{console}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !srv.log().contains("DHCPRELEASE") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = srv.log();
    for step in [
        "DHCPSOLICIT",
        "DHCPADVERTISE",
        "DHCPREQUEST",
        "DHCPREPLY",
        "DHCPRELEASE",
    ] {
        assert!(log.contains(step), "dnsmasq never logged {step}:\n{log}");
    }
    Ok(())
}

fn no_nic_still_gets_ready(arch: Arch) -> Result<()> {
    let mut cfg = config(arch)?;
    cfg.nic = false;
    let (g, r) = boot_ready(&cfg)?;
    let names: Vec<&str> = r["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(names, ["lo"], "{}", g.tail(20));
    Ok(())
}

/// Waits for the shutdown to finish and QEMU to exit with 0; returns the console.
fn ends_cleanly(g: &mut Guest, action: &str) -> Result<String> {
    g.wait_for(&format!("shutdown: {action} now"), SHUTDOWN_TIMEOUT)?;
    let status = g.wait_exit(SHUTDOWN_TIMEOUT)?;
    assert!(
        status.success(),
        "QEMU exited with {status}: {}",
        g.tail(20)
    );
    Ok(g.console())
}

fn poweroff_is_clean(arch: Arch) -> Result<()> {
    let (mut g, r) = boot_ready(&config(arch)?)?;
    assert_eq!(interface(&r, "eth0").context("eth0")?["state"], "dhcp");
    g.poweroff()?;
    let console = ends_cleanly(&mut g, "poweroff")?;
    let after_ready = console.split("ros: ready ").nth(1).unwrap_or_default();
    for step in [
        "shutdown: poweroff requested by `poweroff` on the control port",
        "dhcp: eth0: released 10.0.2.15",
        "shutdown: poweroff now",
    ] {
        assert!(
            after_ready.contains(step),
            "missing `{step}` in:\n{after_ready}"
        );
    }
    assert!(!console.contains("Kernel panic"), "{console}");
    Ok(())
}

fn reboot_request_reboots(arch: Arch) -> Result<()> {
    let (mut g, _) = boot_ready(&config(arch)?)?;
    g.reboot()?;
    // ros-qemu runs QEMU with -no-reboot, so a guest reboot ends QEMU.
    ends_cleanly(&mut g, "reboot")?;
    Ok(())
}

/// x86: the ACPI power button (what `virsh shutdown` and clouds press).
fn acpi_power_button(arch: Arch) -> Result<()> {
    let (mut g, _) = boot_ready(&config(arch)?)?;
    // The button's modules load right after the ready line.
    g.wait_for("power: watching", READY_TIMEOUT)?;
    g.qmp("system_powerdown")?;
    let console = ends_cleanly(&mut g, "poweroff")?;
    assert!(
        console.contains("requested by the power button"),
        "{}",
        g.tail(20)
    );
    Ok(())
}

/// x86: ctrl-alt-del on the keyboard reaches the init as SIGINT and reboots.
fn ctrl_alt_del(arch: Arch) -> Result<()> {
    let (mut g, _) = boot_ready(&config(arch)?)?;
    g.qmp_send_keys(&["ctrl", "alt", "delete"])?;
    let console = ends_cleanly(&mut g, "reboot")?;
    assert!(console.contains("requested by SIGINT"), "{}", g.tail(20));
    Ok(())
}

macro_rules! per_arch {
    ($($name:ident),* $(,)?) => {
        mod x86_64 { $( #[test] fn $name() -> anyhow::Result<()> { super::$name(super::Arch::X86_64) } )* }
        mod aarch64 { $( #[test] fn $name() -> anyhow::Result<()> { super::$name(super::Arch::Aarch64) } )* }
    };
}

per_arch!(
    full_user_data,
    broken_user_data,
    cmdline_keys,
    no_lease_is_reported_and_boot_goes_on,
    dhcp6_stateful_from_dnsmasq,
    no_nic_still_gets_ready,
    poweroff_is_clean,
    reboot_request_reboots,
);

#[test]
fn x86_64_acpi_power_button() -> Result<()> {
    acpi_power_button(Arch::X86_64)
}

#[test]
fn x86_64_ctrl_alt_del() -> Result<()> {
    ctrl_alt_del(Arch::X86_64)
}
