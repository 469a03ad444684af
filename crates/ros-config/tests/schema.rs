//! The schema against whole files: the documented example, and a broken file whose errors are
//! checked as a golden list.

use std::net::{IpAddr, Ipv4Addr};

use ros_config::{from_cmdline, from_toml, layer};

const EXAMPLE: &str = include_str!("../../../docs/examples/user-data.toml");

#[test]
fn the_documented_example_reads_without_errors() {
    let r = from_toml("example", EXAMPLE);
    assert!(r.errors.is_empty(), "{:#?}", r.errors);
    let d = r.data;
    assert_eq!(d.hostname.as_ref().map(|h| h.as_str()), Some("node1"));
    assert_eq!(d.modules.as_ref().map(Vec::len), Some(2));
    assert_eq!(d.sysctl.len(), 2);
    assert_eq!(d.bootcmd.as_ref().map(Vec::len), Some(1));
    assert_eq!(d.runcmd.as_ref().map(Vec::len), Some(1));
    assert_eq!(d.environment.get("TZ").map(String::as_str), Some("UTC"));
    assert_eq!(
        d.write_files.as_ref().map(|f| f[0].path.as_str()),
        Some("/var/lib/ros/web/index.html")
    );
    let lan = d
        .network
        .interfaces
        .get(&"lan".parse().expect("name"))
        .expect("lan");
    assert_eq!(
        lan.mac.as_ref().map(|m| m.to_string()).as_deref(),
        Some("52:54:00:12:34:57")
    );
    assert!(!lan.dhcp4_enabled());
    assert_eq!(lan.mtu, Some(1400));
    let routes = lan.routes.as_ref().expect("routes");
    assert_eq!(routes[0].to.to_string(), "10.99.0.0/16");
    assert_eq!(
        routes[0].via,
        Some(IpAddr::V4(Ipv4Addr::new(192, 168, 77, 1)))
    );
    let eth0 = d
        .network
        .interfaces
        .get(&"eth0".parse().expect("name"))
        .expect("eth0");
    assert!(eth0.dhcp4_enabled());
    assert_eq!(d.network.online_timeout().as_secs(), 15);
    assert_eq!(d.ssh_authorized_keys.as_ref().map(Vec::len), Some(1));
    assert_eq!(d.ntp.servers.as_ref().map(Vec::len), Some(2));
    let web = d.services.get("web").expect("web");
    assert_eq!(
        web.image.as_ref().map(|i| i.value.as_str()),
        Some("busybox")
    );
    assert_eq!(web.volumes.as_ref().map(Vec::len), Some(1));
    assert!(web.health.is_some());
}

const BROKEN: &str = r#"version = 1
hostnme = "node1"
modules = "bonding"
[sysctl]
"net.ipv4.ip_forward" = [1]
[network.interfaces.eth0]
dhcp4 = "yes"
addresses = ["10.0.0.300/24", "10.0.0.2", "fd00::1/129", "10.0.0.5/24"]
mtu = 10
gateway4 = "fd00::1"
[network.interfaces.eth1]
adresses = ["10.1.0.2/24"]
mtu = 9000
[[network.interfaces.eth1.routes]]
via = "10.1.0.1"
[network.dns]
nameservers = ["1.1.1.1", "one.one"]
users = []
"#;

#[test]
fn a_broken_file_reports_every_error_with_position_and_key() {
    let r = from_toml("fw_cfg:opt/ros/user-data", BROKEN);
    let got: Vec<String> = r.errors.iter().map(ToString::to_string).collect();
    let want = [
        "fw_cfg:opt/ros/user-data:2:1: hostnme: unknown key `hostnme`; did you mean `hostname`?",
        "fw_cfg:opt/ros/user-data:3:11: modules: expected an array, found a string",
        "fw_cfg:opt/ros/user-data:5:25: sysctl.\"net.ipv4.ip_forward\": expected a string, integer or boolean, found an array",
        "fw_cfg:opt/ros/user-data:7:9: network.interfaces.eth0.dhcp4: expected a boolean (true or false), found a string",
        "fw_cfg:opt/ros/user-data:8:14: network.interfaces.eth0.addresses[0]: `10.0.0.300/24` is not an address with a prefix length (like 10.0.0.2/24 or fd00::2/64): `10.0.0.300` is not an IP address",
        "fw_cfg:opt/ros/user-data:8:31: network.interfaces.eth0.addresses[1]: `10.0.0.2` is not an address with a prefix length (like 10.0.0.2/24 or fd00::2/64): the /prefix is missing",
        "fw_cfg:opt/ros/user-data:8:43: network.interfaces.eth0.addresses[2]: `fd00::1/129` is not an address with a prefix length (like 10.0.0.2/24 or fd00::2/64): the prefix must be 0 to 128",
        "fw_cfg:opt/ros/user-data:9:7: network.interfaces.eth0.mtu: 10 is out of range; expected 68 to 65535",
        "fw_cfg:opt/ros/user-data:10:12: network.interfaces.eth0.gateway4: expected an IPv4 address, found `fd00::1`; use gateway6",
        "fw_cfg:opt/ros/user-data:12:1: network.interfaces.eth1.adresses: unknown key `adresses`; did you mean `addresses`?",
        "fw_cfg:opt/ros/user-data:14:1: network.interfaces.eth1.routes[0]: a route needs `to` (a destination like 10.1.0.0/16, or \"default\")",
        "fw_cfg:opt/ros/user-data:17:27: network.dns.nameservers[1]: expected an IP address, found `one.one`",
        "fw_cfg:opt/ros/user-data:18:1: network.dns.users: unknown key `users`; expected one of: nameservers, search",
    ];
    assert_eq!(got, want, "\n{}", got.join("\n"));
    // What was right is kept; eth1's mtu survives its neighbours' errors.
    let eth1 = r
        .data
        .network
        .interfaces
        .get(&"eth1".parse().expect("name"))
        .expect("eth1");
    assert_eq!(eth1.mtu, Some(9000));
    assert_eq!(eth1.routes, None);
    let eth0 = r
        .data
        .network
        .interfaces
        .get(&"eth0".parse().expect("name"))
        .expect("eth0");
    assert_eq!(eth0.addresses, None);
    assert_eq!(eth0.dhcp4, None);
    assert!(
        eth0.dhcp4_enabled(),
        "a failed dhcp4 and addresses fall back to DHCP"
    );
    assert_eq!(r.data.hostname, None);
}

#[test]
fn planned_keys_are_named_as_not_yet_applied() {
    let r = from_toml("t", "[network.vlans.v100]\nlink = \"eth0\"\n");
    assert_eq!(r.errors.len(), 1);
    assert!(
        r.errors[0].message.contains("does not apply it yet"),
        "{}",
        r.errors[0]
    );
}

#[test]
fn dhcp6_is_off_unless_asked_for() {
    let r = from_toml(
        "t",
        "[network.interfaces.eth0]\ndhcp6 = true\n[network.interfaces.eth1]\naddresses = [\"fd00::1/64\"]\n[network.interfaces.eth2]\ndhcp6 = \"on\"\n",
    );
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert_eq!(
        (r.errors[0].line, r.errors[0].key.as_str()),
        (6, "network.interfaces.eth2.dhcp6")
    );
    let ifs = &r.data.network.interfaces;
    let get = |n: &str| ifs.iter().find(|(k, _)| k.as_str() == n).map(|(_, v)| v);
    assert!(get("eth0").is_some_and(|i| i.dhcp6_enabled() && i.dhcp4_enabled()));
    assert!(get("eth1").is_some_and(|i| !i.dhcp6_enabled() && !i.dhcp4_enabled()));
}

#[test]
fn ssh_keys_and_ntp_servers() {
    let r = from_toml(
        "t",
        "ssh_authorized_keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx admin@host\", \"not a key\"]\n[ntp]\nservers = [\"10.0.2.2:1230\"]\n",
    );
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert_eq!(
        (r.errors[0].line, r.errors[0].key.as_str()),
        (1, "ssh_authorized_keys[1]")
    );
    assert!(r.errors[0].message.contains("not an SSH public key"));
    assert_eq!(
        r.data.ssh_authorized_keys, None,
        "a list with a bad key is dropped whole"
    );
    assert_eq!(
        r.data.ntp.servers.as_deref(),
        Some(&["10.0.2.2:1230".to_string()][..])
    );
}

#[test]
fn an_unsupported_version_is_reported_and_read_as_v1() {
    let r = from_toml("t", "version = 2\nhostname = \"a\"\n");
    assert_eq!(r.errors.len(), 1);
    assert!(r.errors[0].message.contains("unsupported schema version 2"));
    assert!(r.data.hostname.is_some());
}

#[test]
fn the_command_line_overrides_files_key_by_key() {
    let file = from_toml(
        "fw_cfg",
        "hostname = \"from-file\"\n[network.interfaces.eth0]\naddresses = [\"10.0.0.2/24\"]\nmtu = 1500\n",
    );
    let cmd = from_cmdline(
        "console=ttyS0 ros.hostname=from-cmdline ros.network.interfaces.eth0.mtu=1400 ros.modules=bonding,8021q",
    );
    assert!(cmd.errors.is_empty(), "{:?}", cmd.errors);
    let all = layer([file, cmd]);
    assert!(all.errors.is_empty(), "{:?}", all.errors);
    let d = all.data;
    assert_eq!(
        d.hostname.map(|h| h.to_string()).as_deref(),
        Some("from-cmdline")
    );
    let eth0 = d
        .network
        .interfaces
        .get(&"eth0".parse().expect("name"))
        .expect("eth0");
    assert_eq!(eth0.mtu, Some(1400));
    assert_eq!(
        eth0.addresses.as_ref().map(Vec::len),
        Some(1),
        "file's addresses kept"
    );
    assert_eq!(d.modules.map(|m| m.len()), Some(2));
}

#[test]
fn command_line_errors_name_the_column() {
    let cmd = from_cmdline("quiet ros.hostnme=x ros.network.interfaces.eth0.mtu=big");
    let got: Vec<String> = cmd.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [
            "cmdline:1:7: hostnme: unknown key `hostnme`; did you mean `hostname`?",
            "cmdline:1:53: network.interfaces.eth0.mtu: expected an integer, found `big`",
        ]
    );
}

#[test]
fn a_bad_file_and_a_good_one_layer_to_the_good_values() {
    let low = from_toml("image", "hostname = \"base\"\n");
    let high = from_toml("fw_cfg", "hostname = \"bad_name\"\n");
    let all = layer([low, high]);
    assert_eq!(all.errors.len(), 1);
    assert_eq!(
        all.data.hostname.map(|h| h.to_string()).as_deref(),
        Some("base")
    );
}
