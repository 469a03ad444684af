//! The user-data schema (version 1): typed, every field optional so that sources can be layered.
//! `docs/user-data.md` is the reference for every key; keep the two in step.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use crate::node::{Node, Value};
use crate::service::Service;
use crate::types::{Dur, Hostname, IfName, MacAddr, ModuleName, SysctlKey};
use crate::walk::{Walker, join};

/// The schema version this build reads.
pub const SCHEMA_VERSION: i64 = 1;

/// How long the ready line waits for configured interfaces to get their addresses, by default.
pub const DEFAULT_ONLINE_TIMEOUT: Duration = Duration::from_secs(10);

/// Top-level keys this build reads.
const TOP_KEYS: &[&str] = &[
    "version",
    "hostname",
    "modules",
    "sysctl",
    "network",
    "services",
    "ssh_authorized_keys",
    "ntp",
    "write_files",
    "bootcmd",
    "runcmd",
    "environment",
    "users",
    "console",
];

/// Top-level keys of the designed schema that later ros versions fill in; they are recognised so
/// that the error says "not supported yet" instead of "unknown".
const PLANNED_TOP_KEYS: &[&str] = &[];
const NTP_KEYS: &[&str] = &["servers"];

const NETWORK_KEYS: &[&str] = &["online_timeout", "dns", "interfaces"];
const PLANNED_NETWORK_KEYS: &[&str] = &["bonds", "vlans"];
const DNS_KEYS: &[&str] = &["nameservers", "search"];
const INTERFACE_KEYS: &[&str] = &[
    "mac",
    "dhcp4",
    "dhcp6",
    "addresses",
    "gateway4",
    "gateway6",
    "mtu",
    "routes",
];
const PLANNED_INTERFACE_KEYS: &[&str] = &[];
const ROUTE_KEYS: &[&str] = &["to", "via", "metric"];

/// A whole user-data, as read from one source or merged from several.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UserData {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Hostname>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modules: Option<Vec<ModuleName>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctl: BTreeMap<SysctlKey, String>,
    pub network: Network,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, Service>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_authorized_keys: Option<Vec<String>>,
    pub ntp: Ntp,
    /// Files written on the host before the services start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_files: Option<Vec<crate::host::WriteFile>>,
    /// Commands run before every other service (see `docs/user-data.md`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootcmd: Option<Vec<crate::host::Command>>,
    /// Commands run once the system services run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runcmd: Option<Vec<crate::host::Command>>,
    /// Environment for every service (each service's own `env` wins).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    pub console: Console,
    /// Login users of the console.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<crate::host::User>>,
}

/// The console service's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Console {
    /// The SSH server's port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    /// Keep the console's writable layer (installed files, homes) on the state disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,
}

const CONSOLE_KEYS: &[&str] = &["ssh_port", "persistent"];

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Ntp {
    /// `host` or `host:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub servers: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Network {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online_timeout: Option<Dur>,
    pub dns: Dns,
    /// Keyed by the kernel interface name, or by a label when `mac` selects the interface.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub interfaces: BTreeMap<IfName, Interface>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Dns {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nameservers: Option<Vec<IpAddr>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<Vec<Hostname>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Interface {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhcp4: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhcp6: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<IpNet>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway4: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<Route>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub to: IpNet,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

impl Network {
    pub fn online_timeout(&self) -> Duration {
        self.online_timeout.map_or(DEFAULT_ONLINE_TIMEOUT, |d| d.0)
    }
}

impl Interface {
    /// DHCPv4 runs when asked for, and by default when no static address is given.
    pub fn dhcp4_enabled(&self) -> bool {
        self.dhcp4
            .unwrap_or_else(|| self.addresses.as_ref().is_none_or(Vec::is_empty))
    }

    /// DHCPv6 runs only when asked for (the kernel's SLAAC works without it).
    pub fn dhcp6_enabled(&self) -> bool {
        self.dhcp6.unwrap_or(false)
    }
}

impl UserData {
    /// Layers `higher` over `self`: a value set in `higher` wins; tables (sysctl, interfaces, dns)
    /// merge key by key; lists are replaced whole.
    pub fn merge(&mut self, higher: UserData) {
        set(&mut self.hostname, higher.hostname);
        set(&mut self.modules, higher.modules);
        self.sysctl.extend(higher.sysctl);
        set(&mut self.ssh_authorized_keys, higher.ssh_authorized_keys);
        set(&mut self.ntp.servers, higher.ntp.servers);
        set(&mut self.write_files, higher.write_files);
        set(&mut self.bootcmd, higher.bootcmd);
        set(&mut self.runcmd, higher.runcmd);
        self.environment.extend(higher.environment);
        set(&mut self.users, higher.users);
        set(&mut self.console.ssh_port, higher.console.ssh_port);
        set(&mut self.console.persistent, higher.console.persistent);
        for (name, svc) in higher.services {
            self.services.entry(name).or_default().merge(svc);
        }
        let (net, hnet) = (&mut self.network, higher.network);
        set(&mut net.online_timeout, hnet.online_timeout);
        set(&mut net.dns.nameservers, hnet.dns.nameservers);
        set(&mut net.dns.search, hnet.dns.search);
        for (name, h) in hnet.interfaces {
            let i = net.interfaces.entry(name).or_default();
            set(&mut i.mac, h.mac);
            set(&mut i.dhcp4, h.dhcp4);
            set(&mut i.dhcp6, h.dhcp6);
            set(&mut i.addresses, h.addresses);
            set(&mut i.gateway4, h.gateway4);
            set(&mut i.gateway6, h.gateway6);
            set(&mut i.mtu, h.mtu);
            set(&mut i.routes, h.routes);
        }
    }
}

fn set<T>(low: &mut Option<T>, high: Option<T>) {
    if high.is_some() {
        *low = high;
    }
}

/// Reads the tree of one source. Every problem is recorded in `w`; the keys that had one are
/// left unset.
pub fn read(w: &mut Walker<'_>, root: &Node) -> UserData {
    let mut out = UserData::default();
    let Some(entries) = w.map("", root) else {
        return out;
    };
    let mut allowed: Vec<&str> = TOP_KEYS.to_vec();
    allowed.extend_from_slice(PLANNED_TOP_KEYS);
    for e in entries {
        let n = &e.node;
        match e.key.as_str() {
            "version" => {
                if let Some(v) = w.int("version", n, 0, i64::MAX)
                    && v != SCHEMA_VERSION
                {
                    w.err(
                        n.pos,
                        "version",
                        format!("unsupported schema version {v}; this ros reads version {SCHEMA_VERSION}, and reads this file as that"),
                    );
                }
            }
            "hostname" => out.hostname = w.parsed("hostname", n, "a hostname string"),
            "modules" => {
                out.modules = w.list("modules", n, |w, p, n| w.parsed(p, n, "a module name"));
            }
            "sysctl" => out.sysctl = read_sysctl(w, n),
            "network" => out.network = read_network(w, n),
            "services" => out.services = crate::service::read_services(w, n),
            "ssh_authorized_keys" => {
                out.ssh_authorized_keys = w.list("ssh_authorized_keys", n, ssh_key);
            }
            "ntp" => {
                for e in w.table("ntp", n, NTP_KEYS).unwrap_or_default() {
                    out.ntp.servers = w.list("ntp.servers", &e.node, |w, p, n| {
                        let s = w.string(p, n)?;
                        if s.is_empty() || s.chars().any(char::is_whitespace) {
                            w.err(n.pos, p, format!("expected a server like `pool.ntp.org` or `10.0.2.2:123`, found `{s}`"));
                            return None;
                        }
                        Some(s)
                    });
                }
            }
            "write_files" => out.write_files = crate::host::read_write_files(w, n),
            "bootcmd" => out.bootcmd = crate::host::read_commands(w, "bootcmd", n),
            "runcmd" => out.runcmd = crate::host::read_commands(w, "runcmd", n),
            "environment" => out.environment = crate::host::read_environment(w, n),
            "users" => out.users = crate::host::read_users(w, n),
            "console" => {
                for e in w.table("console", n, CONSOLE_KEYS).unwrap_or_default() {
                    let kp = join("console", &e.key);
                    match e.key.as_str() {
                        "ssh_port" => {
                            out.console.ssh_port = w
                                .int(&kp, &e.node, 1, 65535)
                                .and_then(|p| u16::try_from(p).ok());
                        }
                        "persistent" => out.console.persistent = w.bool(&kp, &e.node),
                        _ => {}
                    }
                }
            }
            k if PLANNED_TOP_KEYS.contains(&k) => not_yet(w, e.key_pos, k),
            _ => w.unknown_key("", e, &allowed),
        }
    }
    out
}

/// An SSH public key line: `TYPE BASE64 [COMMENT]`.
pub(crate) fn ssh_key(w: &mut Walker<'_>, path: &str, node: &Node) -> Option<String> {
    let s = w.string(path, node)?;
    let mut parts = s.split_whitespace();
    let (ty, body) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let known = matches!(
        ty,
        "ssh-ed25519"
            | "ssh-rsa"
            | "ssh-dss"
            | "ecdsa-sha2-nistp256"
            | "ecdsa-sha2-nistp384"
            | "ecdsa-sha2-nistp521"
            | "sk-ssh-ed25519@openssh.com"
            | "sk-ecdsa-sha2-nistp256@openssh.com"
    );
    let base64 = body.len() >= 16
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='));
    if known && base64 && !s.contains('\n') {
        Some(s.trim().to_string())
    } else {
        let shown: String = s.chars().take(24).collect();
        w.err(
            node.pos,
            path,
            format!(
                "`{shown}...` is not an SSH public key (expected `ssh-ed25519 AAAA... comment`)"
            ),
        );
        None
    }
}

fn not_yet(w: &mut Walker<'_>, pos: crate::error::Pos, key: &str) {
    w.err(
        pos,
        key,
        format!("`{key}` is in the ros schema but this build does not apply it yet; ignored"),
    );
}

fn read_sysctl(w: &mut Walker<'_>, node: &Node) -> BTreeMap<SysctlKey, String> {
    let mut out = BTreeMap::new();
    for e in w.map("sysctl", node).unwrap_or_default() {
        let path = join("sysctl", &e.key);
        let key = match e.key.parse::<SysctlKey>() {
            Ok(k) => k,
            Err(msg) => {
                w.err(e.key_pos, &path, msg);
                continue;
            }
        };
        if let Some(v) = w.scalar_text(&path, &e.node) {
            if v.contains('\n') {
                w.err(e.node.pos, &path, "a sysctl value is one line");
                continue;
            }
            out.insert(key, v);
        }
    }
    out
}

fn read_network(w: &mut Walker<'_>, node: &Node) -> Network {
    let mut out = Network::default();
    let mut allowed = NETWORK_KEYS.to_vec();
    allowed.extend_from_slice(PLANNED_NETWORK_KEYS);
    for e in w.table("network", node, &allowed).unwrap_or_default() {
        let path = join("network", &e.key);
        match e.key.as_str() {
            "online_timeout" => {
                out.online_timeout = w.parsed(&path, &e.node, "a duration string like \"10s\"");
            }
            "dns" => out.dns = read_dns(w, &path, &e.node),
            "interfaces" => {
                for i in w.map(&path, &e.node).unwrap_or_default() {
                    let ipath = join(&path, &i.key);
                    let name = match i.key.parse::<IfName>() {
                        Ok(n) => n,
                        Err(msg) => {
                            w.err(i.key_pos, &ipath, msg);
                            continue;
                        }
                    };
                    out.interfaces
                        .insert(name, read_interface(w, &ipath, &i.node));
                }
            }
            _ => not_yet(w, e.key_pos, &path),
        }
    }
    out
}

fn read_dns(w: &mut Walker<'_>, path: &str, node: &Node) -> Dns {
    let mut out = Dns::default();
    for e in w.table(path, node, DNS_KEYS).unwrap_or_default() {
        let p = join(path, &e.key);
        match e.key.as_str() {
            "nameservers" => {
                out.nameservers = w.list(&p, &e.node, |w, p, n| ip(w, p, n));
            }
            "search" => {
                out.search = w.list(&p, &e.node, |w, p, n| w.parsed(p, n, "a domain name"));
            }
            _ => {}
        }
    }
    out
}

fn ip(w: &mut Walker<'_>, path: &str, node: &Node) -> Option<IpAddr> {
    let s = w.string(path, node)?;
    match s.parse::<IpAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            w.err(
                node.pos,
                path,
                format!("expected an IP address, found `{s}`"),
            );
            None
        }
    }
}

/// An address with its prefix length, e.g. `10.0.0.2/24` or `fd00::2/64`.
fn cidr(w: &mut Walker<'_>, path: &str, node: &Node) -> Option<IpNet> {
    let s = w.string(path, node)?;
    let bad = |why: &str| {
        format!(
            "`{s}` is not an address with a prefix length (like 10.0.0.2/24 or fd00::2/64): {why}"
        )
    };
    let Some((addr, prefix)) = s.split_once('/') else {
        w.err(node.pos, path, bad("the /prefix is missing"));
        return None;
    };
    let Ok(addr) = addr.parse::<IpAddr>() else {
        w.err(
            node.pos,
            path,
            bad(&format!("`{addr}` is not an IP address")),
        );
        return None;
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix.parse::<u8>() {
        Ok(p) if p <= max => p,
        _ => {
            w.err(
                node.pos,
                path,
                bad(&format!("the prefix must be 0 to {max}")),
            );
            return None;
        }
    };
    IpNet::new(addr, prefix).ok()
}

fn read_interface(w: &mut Walker<'_>, path: &str, node: &Node) -> Interface {
    let mut out = Interface::default();
    let mut allowed = INTERFACE_KEYS.to_vec();
    allowed.extend_from_slice(PLANNED_INTERFACE_KEYS);
    for e in w.table(path, node, &allowed).unwrap_or_default() {
        let p = join(path, &e.key);
        let n = &e.node;
        match e.key.as_str() {
            "mac" => out.mac = w.parsed(&p, n, "a MAC address string"),
            "dhcp4" => out.dhcp4 = w.bool(&p, n),
            "dhcp6" => out.dhcp6 = w.bool(&p, n),
            "addresses" => out.addresses = w.list(&p, n, cidr),
            "gateway4" => {
                out.gateway4 = match ip(w, &p, n) {
                    Some(IpAddr::V4(a)) => Some(a),
                    Some(IpAddr::V6(a)) => {
                        w.err(
                            n.pos,
                            &p,
                            format!("expected an IPv4 address, found `{a}`; use gateway6"),
                        );
                        None
                    }
                    None => None,
                }
            }
            "gateway6" => {
                out.gateway6 = match ip(w, &p, n) {
                    Some(IpAddr::V6(a)) => Some(a),
                    Some(IpAddr::V4(a)) => {
                        w.err(
                            n.pos,
                            &p,
                            format!("expected an IPv6 address, found `{a}`; use gateway4"),
                        );
                        None
                    }
                    None => None,
                }
            }
            "mtu" => out.mtu = w.int(&p, n, 68, 65535).and_then(|v| u32::try_from(v).ok()),
            "routes" => out.routes = w.list(&p, n, read_route),
            k => not_yet(w, e.key_pos, &join(path, k)),
        }
    }
    out
}

fn read_route(w: &mut Walker<'_>, path: &str, node: &Node) -> Option<Route> {
    let entries = w.table(path, node, ROUTE_KEYS)?;
    let before = w.errors.len();
    let (mut to, mut default, mut via, mut metric) = (None, false, None, None);
    for e in entries {
        let p = join(path, &e.key);
        match e.key.as_str() {
            "to" => match &e.node.value {
                Value::String(s) | Value::Text(s) if s == "default" => default = true,
                _ => to = cidr(w, &p, &e.node).map(|n| n.trunc()),
            },
            "via" => via = ip(w, &p, &e.node),
            "metric" => {
                metric = w
                    .int(&p, &e.node, 0, i64::from(u32::MAX))
                    .and_then(|v| u32::try_from(v).ok());
            }
            _ => {}
        }
    }
    if w.errors.len() != before {
        return None;
    }
    if default {
        // `default` is 0.0.0.0/0, or ::/0 when the gateway is IPv6.
        to = Some(match via {
            Some(IpAddr::V6(_)) => IpNet::V6(ipnet::Ipv6Net::default()),
            _ => IpNet::V4(ipnet::Ipv4Net::default()),
        });
    }
    let Some(to) = to else {
        w.err(
            node.pos,
            path,
            "a route needs `to` (a destination like 10.1.0.0/16, or \"default\")",
        );
        return None;
    };
    if let Some(via) = via
        && via.is_ipv4() != to.addr().is_ipv4()
    {
        w.err(
            node.pos,
            path,
            format!("route to {to} is via {via}, an address of the other IP family"),
        );
        return None;
    }
    Some(Route { to, via, metric })
}
