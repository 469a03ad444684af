//! The DHCP clients against a real server: dnsmasq in one network namespace, the client in
//! another, a veth pair between them. DHCPv4: the whole exchange, the lease's options, a renewal
//! (dnsmasq sends T1 = 4 s), and the RELEASE when the driver stops (dnsmasq drops the lease).
//! DHCPv6: dnsmasq's router advertisements pick the mode (M flag: an address; O flag: DNS only;
//! neither: SLAAC alone), then the exchange, the address on the link, and the Release.
//! Needs root (namespaces), `ip` and `dnsmasq`: each test fails when not run as root.

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
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = std::process::id() * 10 + N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
            "addr",
            "add",
            "fd77::1/64",
            "dev",
            &lab.server_if,
            "nodad",
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

    fn start_dnsmasq(&mut self, args: &[&str]) {
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
            .args(args)
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
    require_root();
    let mut lab = Lab::new();
    lab.start_dnsmasq(&[
        "--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,2m",
        "--dhcp-option=option:router,10.77.0.1",
        "--dhcp-option=option:dns-server,10.77.0.53",
        "--dhcp-option=option:domain-search,test.internal",
        "--dhcp-option=option:T1,4",
        "--dhcp-option=option:T2,7",
    ]);
    // The client runs in a thread that has joined the client's namespace.
    let address = in_client(&lab, |net, link| async move {
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
    });
    // dnsmasq saw the whole story.
    let log = wait_log(&lab, "DHCPRELEASE");
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
    // dnsmasq logs the release before it rewrites its lease file.
    let gone = wait_until(Duration::from_secs(5), || {
        !std::fs::read_to_string(lab.leases())
            .unwrap_or_default()
            .contains(&address.to_string())
    });
    assert!(
        gone,
        "dnsmasq still holds the lease: {}",
        std::fs::read_to_string(lab.leases()).unwrap_or_default()
    );
}

/// Runs `f` on a current-thread runtime in a thread that joined the lab's client namespace,
/// with loopback up and the client's link (not yet up) found.
fn in_client<F, Fut, T>(lab: &Lab, f: F) -> T
where
    F: FnOnce(Net, ros_net::LinkInfo) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let client_ns = format!("/run/netns/{}", lab.client_ns);
    let client_if = lab.client_if.clone();
    std::thread::spawn(move || {
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
            f(net, link).await
        })
    })
    .join()
    .expect("client thread")
}

/// What one DHCPv6 run saw: the first lease, the link's addresses then, and after the stop.
struct V6Run {
    lease: ros_net::dhcp6::Lease,
    bound_addrs: Vec<ros_net::AddrInfo>,
    routes: Vec<ros_net::RouteInfo>,
    after_stop: Vec<ros_net::AddrInfo>,
}

/// dnsmasq with `args` (and router advertisements), then the DHCPv6 driver until its first
/// lease, then a stop.
fn dhcp6_against_dnsmasq(lab: &mut Lab, args: &[&str]) -> V6Run {
    let mut all = vec![
        "--enable-ra",
        "--dhcp-option=option6:dns-server,[fd77::53]",
        "--dhcp-option=option6:domain-search,test.internal",
    ];
    all.extend_from_slice(args);
    lab.start_dnsmasq(&all);
    // dnsmasq answers router solicitations once it runs; bring the client up after that.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lab.log_text().contains("started") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let client_if = lab.client_if.clone();
    in_client(lab, move |net, link| async move {
        let errors = ros_net::apply::ipv6_for_dhcp6(&client_if);
        assert!(errors.is_empty(), "{errors:?}");
        net.set_up(link.index).await.expect("link up");
        let mac = link.mac.expect("mac").0;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = mpsc::channel(1);
        let dl = ros_net::dhcp6::driver::Dhcp6Link {
            index: link.index,
            name: link.name.clone(),
            mac,
        };
        let task = tokio::spawn(ros_net::dhcp6::driver::run(
            net.clone(),
            dl,
            42,
            now_ms,
            tx,
            stop_rx,
            ros_net::dhcp6::driver::RA_WAIT,
        ));
        let within = Duration::from_secs(20);
        let lease = loop {
            match tokio::time::timeout(within, rx.recv()).await {
                Ok(Some(Event::Bound6 { lease, .. })) => break lease,
                Ok(Some(other)) => eprintln!("event: {other:?}"),
                Ok(None) => panic!("the driver ended"),
                Err(_) => panic!("no DHCPv6 lease within {within:?}"),
            }
        };
        let mine = |v: Vec<ros_net::AddrInfo>| -> Vec<ros_net::AddrInfo> {
            v.into_iter().filter(|a| a.index == link.index).collect()
        };
        let bound_addrs = mine(net.addresses().await.expect("addrs"));
        // The default route comes from the router advertisement (the kernel's part).
        let mut routes = Vec::new();
        for _ in 0..50 {
            routes = net.routes().await.expect("routes");
            if routes
                .iter()
                .any(|r| r.to.prefix_len() == 0 && r.to.addr().is_ipv6())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (ack_tx, ack_rx) = oneshot::channel();
        stop_tx.send(ack_tx).await.expect("stop");
        tokio::time::timeout(Duration::from_secs(5), ack_rx)
            .await
            .expect("stopped")
            .expect("ack");
        task.await.expect("driver task");
        let after_stop = mine(net.addresses().await.expect("addrs"));
        V6Run {
            lease,
            bound_addrs,
            routes,
            after_stop,
        }
    })
}

fn wait_log(lab: &Lab, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = lab.log_text();
        if log.contains(what) || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Fails the test unless it runs as root (network namespaces).
fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root for network namespaces (run the suite with scripts/test as root)"
    );
}

/// Waits until `f` holds (true) or `within` passes (false).
fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Listens for DHCPv6 client messages (UDP 547, ff02::1:2) on the server side of the lab for
/// `within`; the type of each message seen (1 Solicit, 11 Information-request, ...).
fn listen_dhcp6(lab: &Lab, within: Duration) -> std::thread::JoinHandle<Vec<u8>> {
    let server_ns = format!("/run/netns/{}", lab.server_ns);
    let server_if = lab.server_if.clone();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&server_ns).expect("netns");
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let sock = std::net::UdpSocket::bind("[::]:547").expect("bind 547");
        let index = nix::net::if_::if_nametoindex(server_if.as_str()).expect("ifindex");
        sock.join_multicast_v6(&"ff02::1:2".parse().expect("group"), index)
            .expect("join ff02::1:2");
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        let mut buf = [0u8; 1500];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("timeout");
            if let Ok((n, _)) = sock.recv_from(&mut buf)
                && n > 0
            {
                seen.push(buf[0]);
            }
        }
        seen
    })
}

#[test]
fn dhcp6_stateful_address_dns_and_release() {
    require_root();
    let mut lab = Lab::new();
    let run = dhcp6_against_dnsmasq(&mut lab, &["--dhcp-range=fd77::100,fd77::1ff,64,2m"]);
    let l = &run.lease;
    assert_eq!(l.mode, ros_net::dhcp6::Mode::Stateful, "{l:?}");
    assert_eq!(l.addresses.len(), 1, "{l:?}");
    let addr = l.addresses[0].addr;
    let seg = addr.segments();
    assert!(
        seg[..7] == [0xfd77, 0, 0, 0, 0, 0, 0] && (0x100..=0x1ff).contains(&seg[7]),
        "{addr}"
    );
    assert_eq!(l.dns, ["fd77::53".parse::<std::net::Ipv6Addr>().unwrap()]);
    assert_eq!(l.search, ["test.internal"]);
    assert_eq!(l.valid_secs, 120);
    assert!(
        run.bound_addrs
            .iter()
            .any(|a| a.addr.addr() == std::net::IpAddr::V6(addr) && a.addr.prefix_len() == 128),
        "{:?}",
        run.bound_addrs
    );
    assert!(
        run.routes.iter().any(|r| r.to.prefix_len() == 0
            && matches!(r.via, Some(std::net::IpAddr::V6(v)) if v.segments()[0] == 0xfe80)),
        "no default route from the RA: {:?}",
        run.routes
    );
    assert!(
        !run.after_stop
            .iter()
            .any(|a| a.addr.addr() == std::net::IpAddr::V6(addr)),
        "released address still set: {:?}",
        run.after_stop
    );
    let log = wait_log(&lab, "DHCPRELEASE");
    for step in [
        "DHCPSOLICIT",
        "DHCPADVERTISE",
        "DHCPREQUEST",
        "DHCPREPLY",
        "DHCPRELEASE",
    ] {
        assert!(log.contains(step), "dnsmasq never logged {step}:\n{log}");
    }
    let gone = wait_until(Duration::from_secs(5), || {
        !std::fs::read_to_string(lab.leases())
            .unwrap_or_default()
            .contains(&addr.to_string())
    });
    assert!(
        gone,
        "dnsmasq still holds the lease: {}",
        std::fs::read_to_string(lab.leases()).unwrap_or_default()
    );
}

#[test]
fn dhcp6_stateless_when_the_router_sets_only_the_o_flag() {
    require_root();
    let mut lab = Lab::new();
    let run = dhcp6_against_dnsmasq(&mut lab, &["--dhcp-range=fd77::,ra-stateless"]);
    let l = &run.lease;
    assert_eq!(l.mode, ros_net::dhcp6::Mode::Stateless, "{l:?}");
    assert!(l.addresses.is_empty());
    assert_eq!(l.dns, ["fd77::53".parse::<std::net::Ipv6Addr>().unwrap()]);
    assert_eq!(l.search, ["test.internal"]);
    let log = wait_log(&lab, "DHCPINFORMATION-REQUEST");
    // A Solicit may come first when dnsmasq's advertisement is later than RA_WAIT: the
    // driver then switches to stateless, which the lease's mode above shows.
    assert!(log.contains("DHCPINFORMATION-REQUEST"), "{log}");
}

#[test]
fn dhcp6_stays_quiet_when_the_router_says_slaac_only() {
    require_root();
    let mut lab = Lab::new();
    // dnsmasq serves no DHCPv6 in this mode, so its log cannot show a Solicit: a listener of
    // our own on the server side sees every client message instead.
    let listener = listen_dhcp6(&lab, Duration::from_secs(8));
    let run = dhcp6_against_dnsmasq(&mut lab, &["--dhcp-range=fd77::,ra-only"]);
    assert_eq!(
        run.lease.mode,
        ros_net::dhcp6::Mode::Slaac,
        "{:?}",
        run.lease
    );
    let seen = listener.join().expect("listener");
    assert!(
        seen.is_empty(),
        "the client sent DHCPv6 messages (types {seen:?}) on a SLAAC-only link"
    );
}

#[test]
fn the_listener_sees_a_client_that_solicits() {
    require_root();
    // The check above can fail: with no router at all, the client goes stateful after
    // RA_WAIT and solicits, and the same listener sees it.
    let lab = Lab::new();
    let wait = ros_net::dhcp6::driver::RA_WAIT + Duration::from_secs(4);
    let listener = listen_dhcp6(&lab, wait);
    let client_if = lab.client_if.clone();
    in_client(&lab, move |net, link| async move {
        let errors = ros_net::apply::ipv6_for_dhcp6(&client_if);
        assert!(errors.is_empty(), "{errors:?}");
        net.set_up(link.index).await.expect("link up");
        let (tx, _rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = mpsc::channel(1);
        let dl = ros_net::dhcp6::driver::Dhcp6Link {
            index: link.index,
            name: link.name.clone(),
            mac: link.mac.expect("mac").0,
        };
        let task = tokio::spawn(ros_net::dhcp6::driver::run(
            net.clone(),
            dl,
            7,
            now_ms,
            tx,
            stop_rx,
            ros_net::dhcp6::driver::RA_WAIT,
        ));
        tokio::time::sleep(wait).await;
        let (ack_tx, _ack_rx) = oneshot::channel();
        let _ = stop_tx.send(ack_tx).await;
        let _ = task.await;
    });
    let seen = listener.join().expect("listener");
    assert!(seen.contains(&1), "no Solicit seen: {seen:?}");
}

#[test]
fn a_domain_that_is_not_a_dns_name_is_dropped() {
    require_root();
    let mut lab = Lab::new();
    // A domain with a newline: written as it came, it would add a nameserver to resolv.conf.
    lab.start_dnsmasq(&[
        "--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,2m",
        "--dhcp-option=option:domain-name,evil\nnameserver 6.6.6.6",
        "--dhcp-option=option:domain-search,good.example",
    ]);
    let lease = in_client(&lab, |net, link| async move {
        net.set_up(link.index).await.expect("link up");
        let mac = link.mac.expect("mac").0;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = mpsc::channel(1);
        let cfg = ClientConfig {
            mac,
            hostname: None,
            seed: 7,
        };
        let dl = DhcpLink {
            index: link.index,
            name: link.name.clone(),
            mac,
            mtu_fixed: false,
        };
        let task = tokio::spawn(driver::run(net.clone(), dl, cfg, now_ms, tx, stop_rx));
        let lease = next_bound(&mut rx, Duration::from_secs(15)).await;
        let (ack_tx, _ack_rx) = oneshot::channel();
        let _ = stop_tx.send(ack_tx).await;
        let _ = task.await;
        lease
    });
    assert_eq!(lease.domain, None, "{lease:?}");
    assert_eq!(lease.search, ["good.example"]);
    assert!(
        lease.dropped_names.iter().any(|n| n.contains('\n')),
        "the server's name did reach the client with its newline: {lease:?}"
    );
    let text = ros_net::resolv::render(&[], &lease.search);
    assert!(!text.contains("6.6.6.6"), "{text}");
}
