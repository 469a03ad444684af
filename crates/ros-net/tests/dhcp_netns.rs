//! The DHCP client against a real server: dnsmasq in one network namespace, the client in
//! another, a veth pair between them. Checks the whole exchange, the lease's options, a renewal
//! (dnsmasq sends T1 = 4 s), and the RELEASE when the driver stops (dnsmasq drops the lease).
//! Needs root (namespaces), `ip` and `dnsmasq`; skips only when not root.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ros_net::Net;
use ros_net::dhcp::ClientConfig;
use ros_net::dhcp::driver::{self, DhcpLink, Event};
use tokio::sync::{mpsc, oneshot};

struct Lab {
    server_ns: String,
    client_ns: String,
    server_if: String,
    client_if: String,
    dir: PathBuf,
    dnsmasq: Option<Child>,
}

fn sh(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("run");
    assert!(status.success(), "{args:?} failed");
}

impl Lab {
    fn new() -> Lab {
        let id = std::process::id();
        let dir = std::env::temp_dir().join(format!("ros-dhcp-{id}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let lab = Lab {
            server_ns: format!("rosd{id}s"),
            client_ns: format!("rosd{id}c"),
            server_if: format!("vs{id}"),
            client_if: format!("vc{id}"),
            dir,
            dnsmasq: None,
        };
        sh(&["ip", "netns", "add", &lab.server_ns]);
        sh(&["ip", "netns", "add", &lab.client_ns]);
        sh(&[
            "ip",
            "link",
            "add",
            &lab.server_if,
            "type",
            "veth",
            "peer",
            "name",
            &lab.client_if,
        ]);
        sh(&["ip", "link", "set", &lab.server_if, "netns", &lab.server_ns]);
        sh(&["ip", "link", "set", &lab.client_if, "netns", &lab.client_ns]);
        sh(&[
            "ip",
            "-n",
            &lab.server_ns,
            "addr",
            "add",
            "10.77.0.1/24",
            "dev",
            &lab.server_if,
        ]);
        sh(&[
            "ip",
            "-n",
            &lab.server_ns,
            "link",
            "set",
            &lab.server_if,
            "up",
        ]);
        lab
    }

    fn start_dnsmasq(&mut self) {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.server_ns,
                "dnsmasq",
                "--no-daemon",
                "--conf-file=/dev/null",
                "--port=0",
            ])
            .arg(format!("--interface={}", self.server_if))
            .args(["--bind-interfaces", "--dhcp-authoritative", "--log-dhcp"])
            .arg("--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,2m")
            .args([
                "--dhcp-option=option:router,10.77.0.1",
                "--dhcp-option=option:dns-server,10.77.0.53",
            ])
            .args([
                "--dhcp-option=option:domain-search,test.internal",
                "--dhcp-option=option:T1,4",
            ])
            .arg("--dhcp-option=option:T2,7")
            .arg(format!("--dhcp-leasefile={}", self.leases().display()))
            .arg(format!("--log-facility={}", self.log().display()))
            .spawn()
            .expect("dnsmasq (apt-get install dnsmasq-base)");
        self.dnsmasq = Some(child);
    }

    fn leases(&self) -> PathBuf {
        self.dir.join("leases")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("log")
    }
    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(c) = &mut self.dnsmasq {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(0)
}

async fn next_bound(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    within: Duration,
) -> ros_net::dhcp::Lease {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Event::Bound { lease, .. })) => return lease,
            Ok(Some(other)) => eprintln!("event: {other:?}"),
            Ok(None) => panic!("the driver ended"),
            Err(_) => panic!("no lease within {within:?}"),
        }
    }
}

#[test]
fn exchange_renewal_and_release_against_dnsmasq() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let mut lab = Lab::new();
    lab.start_dnsmasq();
    let client_ns = format!("/run/netns/{}", lab.client_ns);
    let client_if = lab.client_if.clone();
    // The client runs in a thread that has joined the client's namespace.
    let handle = std::thread::spawn(move || {
        let ns = std::fs::File::open(&client_ns).expect("netns");
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async move {
            let net = Net::connect().expect("netlink");
            let links = net.links().await.expect("links");
            let link = links
                .iter()
                .find(|l| l.name == client_if)
                .expect("client link")
                .clone();
            let lo = links.iter().find(|l| l.loopback).expect("lo");
            net.set_up(lo.index).await.expect("lo up");
            net.set_up(link.index).await.expect("link up");
            let mac = link.mac.expect("mac").0;
            let (tx, mut rx) = mpsc::unbounded_channel();
            let (stop_tx, stop_rx) = mpsc::channel(1);
            let cfg = ClientConfig {
                mac,
                hostname: Some("ros-test".into()),
                seed: 42,
            };
            let dl = DhcpLink {
                index: link.index,
                name: link.name.clone(),
                mac,
                mtu_fixed: false,
            };
            let task = tokio::spawn(driver::run(net.clone(), dl, cfg, now_ms, tx, stop_rx));

            let first = next_bound(&mut rx, Duration::from_secs(15)).await;
            let octets = first.address.octets();
            assert!(
                octets[..3] == [10, 77, 0] && (50..=60).contains(&octets[3]),
                "{first:?}"
            );
            assert_eq!(first.prefix, 24);
            assert_eq!(first.server, Ipv4Addr::new(10, 77, 0, 1));
            assert_eq!(first.routers, [Ipv4Addr::new(10, 77, 0, 1)]);
            assert_eq!(first.dns, [Ipv4Addr::new(10, 77, 0, 53)]);
            assert_eq!(first.search, ["test.internal"]);
            assert_eq!(
                (first.lease_secs, first.t1_secs, first.t2_secs),
                (120, 4, 7)
            );
            let addrs = net.addresses().await.expect("addrs");
            assert!(
                addrs
                    .iter()
                    .any(|a| a.index == link.index && a.addr.addr() == first.address),
                "{addrs:?}"
            );
            let routes = net.routes().await.expect("routes");
            assert!(
                routes
                    .iter()
                    .any(|r| r.to.prefix_len() == 0 && r.via.is_some()),
                "{routes:?}"
            );

            // T1 is 4 s: a unicast renewal extends the same lease.
            let renewed = next_bound(&mut rx, Duration::from_secs(15)).await;
            assert_eq!(renewed.address, first.address);
            assert!(
                renewed.acquired_ms >= first.acquired_ms + 3_500,
                "{first:?} {renewed:?}"
            );

            let (ack_tx, ack_rx) = oneshot::channel();
            stop_tx.send(ack_tx).await.expect("stop");
            tokio::time::timeout(Duration::from_secs(5), ack_rx)
                .await
                .expect("stopped")
                .expect("ack");
            task.await.expect("driver task");
            let addrs = net.addresses().await.expect("addrs");
            assert!(
                !addrs.iter().any(|a| a.addr.addr() == first.address),
                "released address still set: {addrs:?}"
            );
            first.address
        })
    });
    let address = handle.join().expect("client thread");
    // dnsmasq saw the whole story.
    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = lab.log_text();
        if log.contains("DHCPRELEASE") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for step in [
        "DHCPDISCOVER",
        "DHCPOFFER",
        "DHCPREQUEST",
        "DHCPACK",
        "DHCPRELEASE",
    ] {
        assert!(log.contains(step), "dnsmasq never logged {step}:\n{log}");
    }
    assert!(
        log.matches("DHCPACK").count() >= 2,
        "no renewal ACK:\n{log}"
    );
    assert!(
        log.contains("ros-test"),
        "the hostname was not sent:\n{log}"
    );
    let leases = std::fs::read_to_string(lab.leases()).unwrap_or_default();
    assert!(
        !leases.contains(&address.to_string()),
        "dnsmasq still holds the lease: {leases}"
    );
}
