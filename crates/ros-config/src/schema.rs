//! The user-data schema (version 1): typed, every field optional so that sources can be layered.
//! `docs/user-data.md` is the reference for every key; keep the two in step. Each table's keys
//! are declared once, in its [`table!`](crate::table) (struct, reader, layering).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use crate::layered::Layer;
use crate::node::{Node, Value};
use crate::service::{Located, Service, located};
use crate::types::{Dur, Hostname, IfName, MacAddr, ModuleName, SysctlKey, ranges};
use crate::walk::{Walker, join};

/// The schema version this build reads.
pub const SCHEMA_VERSION: i64 = 1;

/// How long the ready line waits for configured interfaces to get their addresses, by default.
pub const DEFAULT_ONLINE_TIMEOUT: Duration = Duration::from_secs(10);

crate::table! {
    /// A whole user-data, as read from one source or merged from several.
    #[derive(Debug, Clone, Default, PartialEq, Serialize)]
    pub struct UserData {
        planned: [],
        #[serde(skip)]
        version: Option<i64> = "version" => read_version,
        #[serde(skip_serializing_if = "Option::is_none")]
        hostname: Option<Hostname> = "hostname" => |w, p, n| w.parsed(p, n, "a hostname string"),
        #[serde(skip_serializing_if = "Option::is_none")]
        modules: Option<Vec<ModuleName>> = "modules" => |w, p, n| {
            w.list(p, n, |w, p, n| w.parsed(p, n, "a module name"))
        },
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        sysctl: BTreeMap<SysctlKey, String> = "sysctl" => read_sysctl,
        network: Network = "network" => Network::read,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        services: BTreeMap<String, Service> = "services" => crate::service::read_services,
        #[serde(skip_serializing_if = "Option::is_none")]
        ssh_authorized_keys: Option<Vec<String>> = "ssh_authorized_keys" => |w, p, n| {
            w.list(p, n, ssh_key)
        },
        ntp: Ntp = "ntp" => Ntp::read,
        /// Files written on the host before the services start.
        #[serde(skip_serializing_if = "Option::is_none")]
        write_files: Option<Vec<crate::host::WriteFile>> = "write_files" => crate::host::read_write_files,
        /// Commands run before every other service (see `docs/user-data.md`).
        #[serde(skip_serializing_if = "Option::is_none")]
        bootcmd: Option<Vec<crate::host::Command>> = "bootcmd" => crate::host::read_commands,
        /// Commands run once the system services run.
        #[serde(skip_serializing_if = "Option::is_none")]
        runcmd: Option<Vec<crate::host::Command>> = "runcmd" => crate::host::read_commands,
        /// Environment for every service (each service's own `env` wins).
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        environment: BTreeMap<String, String> = "environment" => crate::host::read_environment,
        console: Console = "console" => Console::read,
        /// Login users of the console.
        #[serde(skip_serializing_if = "Option::is_none")]
        users: Option<Vec<crate::host::User>> = "users" => crate::host::read_users,
        /// Mirrors, credentials and CAs for pulling images.
        registries: crate::registries::Registries = "registries" => crate::registries::Registries::read,
        /// The k3s-like cluster this machine serves or joins.
        cluster: Cluster = "cluster" => Cluster::read,
    }
}

crate::table! {
    /// The k3s-like cluster: `role = "server"` runs the Kubernetes API server, its store and
    /// controllers (the `cluster` service); `role = "agent"` joins a server with its token.
    #[derive(Debug, Clone, Default, PartialEq, Serialize)]
    pub struct Cluster {
        planned: [],
        #[serde(skip_serializing_if = "Option::is_none")]
        role: Option<Located<String>> = "role" => |w, p, n| {
            let v = w.string(p, n)?;
            if !matches!(v.as_str(), "server" | "agent") {
                w.err(n.pos, p, format!("expected `server` or `agent`, found `{v}`"));
                return None;
            }
            Some(located(w, n, v))
        },
        /// An agent's server: `https://HOST:PORT`.
        #[serde(skip_serializing_if = "Option::is_none")]
        server: Option<String> = "server" => cluster_server,
        /// An agent's join token, as `ros cluster token` prints it on the server.
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<String> = "token" => join_token,
        /// The API server's port (6443).
        #[serde(skip_serializing_if = "Option::is_none")]
        api_port: Option<u16> = "api_port" => |w, p, n| {
            w.int(p, n, 1, 65535).and_then(|v| u16::try_from(v).ok())
        },
        /// Where the server keeps its objects: `embedded` (the default: a revision log on the
        /// state disk) or `etcd://HOST:PORT` (etcd v3, plain HTTP).
        #[serde(skip_serializing_if = "Option::is_none")]
        datastore: Option<String> = "datastore" => |w, p, n| {
            let v = w.string(p, n)?;
            if v == "embedded" {
                return Some(v);
            }
            match v.strip_prefix("etcd://") {
                Some(hp) if crate::types::parse_host_port(hp.trim_end_matches('/'), 2379).is_ok() && !hp.is_empty() => Some(v),
                _ => {
                    w.err(n.pos, p, format!("expected `embedded` or `etcd://HOST:PORT`, found `{v}`"));
                    None
                }
            }
        },
        /// The pods' addresses (a server's): each node is given a /24 of it.
        #[serde(skip_serializing_if = "Option::is_none")]
        cluster_cidr: Option<ipnet::Ipv4Net> = "cluster_cidr" => |w, p, n| {
            let v = w.string(p, n)?;
            match v.parse::<ipnet::Ipv4Net>() {
                Ok(net) if net.prefix_len() <= 28 && net.network() == net.addr() => Some(net),
                Ok(net) if net.network() != net.addr() => {
                    w.err(n.pos, p, format!("`{v}` is not a network address: did you mean {}?", net.trunc()));
                    None
                }
                Ok(_) => {
                    w.err(n.pos, p, format!("`{v}` is too small for pods: a /28 at most"));
                    None
                }
                Err(_) => {
                    w.err(n.pos, p, format!("expected an IPv4 network such as 10.42.0.0/16, found `{v}`"));
                    None
                }
            }
        },
        /// A server runs an agent for its own node (pods scheduled to it run there) unless
        /// this is false.
        #[serde(skip_serializing_if = "Option::is_none")]
        agent: Option<bool> = "agent" => |w, p, n| w.bool(p, n),
        /// The Node's name [default: the hostname].
        #[serde(skip_serializing_if = "Option::is_none")]
        node_name: Option<String> = "node_name" => |w, p, n| {
            let v = w.string(p, n)?;
            if let Err(e) = crate::cluster::node_name(&v) {
                w.err(n.pos, p, e);
                return None;
            }
            Some(v)
        },
        /// The address the cluster reaches this node at [default: an agent's address on the
        /// route to its server; a server's first address].
        #[serde(skip_serializing_if = "Option::is_none")]
        node_ip: Option<IpAddr> = "node_ip" => |w, p, n| w.parsed(p, n, "an IP address"),
        /// Labels for the Node.
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        node_labels: BTreeMap<String, String> = "node_labels" => read_node_labels,
        /// Taints for the Node, `KEY[=VALUE]:EFFECT`.
        #[serde(skip_serializing_if = "Option::is_none")]
        node_taints: Option<Vec<String>> = "node_taints" => |w, p, n| {
            w.list(p, n, |w, p, n| {
                let v = w.string(p, n)?;
                match crate::cluster::parse_taint(&v) {
                    Ok(_) => Some(v),
                    Err(e) => {
                        w.err(n.pos, p, e);
                        None
                    }
                }
            })
        },
    }
}

fn read_node_labels(w: &mut Walker<'_>, path: &str, node: &Node) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in w.map(path, node).unwrap_or_default() {
        let p = join(path, &e.key);
        let Some(v) = w.string(&p, &e.node) else {
            continue;
        };
        match crate::cluster::parse_label(&format!("{}={v}", e.key)) {
            Ok(_) if !e.key.contains('=') => {
                out.insert(e.key.clone(), v);
            }
            Ok(_) => w.err(e.key_pos, &p, "a label key holds no `=`"),
            Err(m) => w.err(e.key_pos, &p, m),
        }
    }
    out
}

/// `https://HOST:PORT` (or without the port: 6443).
fn cluster_server(w: &mut Walker<'_>, p: &str, n: &Node) -> Option<String> {
    let s = w.string(p, n)?;
    let Some(rest) = s.strip_prefix("https://") else {
        w.err(
            n.pos,
            p,
            format!("expected an https:// URL such as https://10.0.0.1:6443, found `{s}`"),
        );
        return None;
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') || crate::types::parse_host_port(host, 6443).is_err() {
        w.err(
            n.pos,
            p,
            format!("expected https://HOST or https://HOST:PORT, found `{s}`"),
        );
        return None;
    }
    Some(s)
}

/// `K10<64 hex digits>::<user>:<password>`, as the server writes it.
fn join_token(w: &mut Walker<'_>, p: &str, n: &Node) -> Option<String> {
    let s = w.string(p, n)?;
    let ok = s
        .strip_prefix("K10")
        .and_then(|r| r.split_once("::"))
        .is_some_and(|(hash, cred)| {
            hash.len() == 64
                && hash.chars().all(|c| c.is_ascii_hexdigit())
                && cred
                    .split_once(':')
                    .is_some_and(|(u, pw)| !u.is_empty() && !pw.is_empty())
        });
    if !ok {
        w.err(n.pos, p, "expected a join token `K10<CA hash>::<user>:<password>` (run `ros cluster token` on the server)");
        return None;
    }
    Some(s)
}

crate::table! {
    /// The console service's settings.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
    pub struct Console {
        planned: [],
        /// The SSH server's port.
        #[serde(skip_serializing_if = "Option::is_none")]
        ssh_port: Option<u16> = "ssh_port" => |w, p, n| {
            w.int(p, n, 1, 65535).and_then(|v| u16::try_from(v).ok())
        },
        /// Keep the console's writable layer (installed files, homes) on the state disk.
        #[serde(skip_serializing_if = "Option::is_none")]
        persistent: Option<bool> = "persistent" => |w, p, n| w.bool(p, n),
        /// A root shell on the serial console, without a login.
        #[serde(skip_serializing_if = "Option::is_none")]
        autologin: Option<bool> = "autologin" => |w, p, n| w.bool(p, n),
        /// root's password for the serial console (SHA-512 crypt), never for SSH.
        #[serde(skip_serializing_if = "Option::is_none")]
        root_password_hash: Option<String> = "root_password_hash" => password_hash,
    }
}

crate::table! {
    #[derive(Debug, Clone, Default, PartialEq, Serialize)]
    pub struct Ntp {
        planned: [],
        /// `host`, `host:port`, an IPv6 address, or `[v6]:port`.
        #[serde(skip_serializing_if = "Option::is_none")]
        servers: Option<Vec<String>> = "servers" => |w, p, n| w.list(p, n, ntp_server),
    }
}

crate::table! {
    #[derive(Debug, Clone, Default, PartialEq, Serialize)]
    pub struct Network {
        planned: ["bonds", "vlans"],
        #[serde(skip_serializing_if = "Option::is_none")]
        online_timeout: Option<Dur> = "online_timeout" => |w, p, n| {
            w.duration(p, n, ranges::ONLINE_TIMEOUT)
        },
        dns: Dns = "dns" => Dns::read,
        /// Keyed by the kernel interface name, or by a label when `mac` selects the interface.
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        interfaces: BTreeMap<IfName, Interface> = "interfaces" => read_interfaces,
    }
}

crate::table! {
    #[derive(Debug, Clone, Default, PartialEq, Serialize)]
    pub struct Dns {
        planned: [],
        #[serde(skip_serializing_if = "Option::is_none")]
        nameservers: Option<Vec<IpAddr>> = "nameservers" => |w, p, n| w.list(p, n, ip),
        #[serde(skip_serializing_if = "Option::is_none")]
        search: Option<Vec<Hostname>> = "search" => |w, p, n| {
            w.list(p, n, |w, p, n| w.parsed(p, n, "a domain name"))
        },
    }
}

crate::table! {
    #[derive(Debug, Clone, Default, PartialEq, Serialize)]
    pub struct Interface {
        planned: [],
        #[serde(skip_serializing_if = "Option::is_none")]
        mac: Option<Located<MacAddr>> = "mac" => |w, p, n| {
            w.parsed(p, n, "a MAC address string").map(|m| located(w, n, m))
        },
        #[serde(skip_serializing_if = "Option::is_none")]
        dhcp4: Option<bool> = "dhcp4" => |w, p, n| w.bool(p, n),
        #[serde(skip_serializing_if = "Option::is_none")]
        dhcp6: Option<bool> = "dhcp6" => |w, p, n| w.bool(p, n),
        #[serde(skip_serializing_if = "Option::is_none")]
        addresses: Option<Vec<IpNet>> = "addresses" => |w, p, n| w.list(p, n, cidr),
        #[serde(skip_serializing_if = "Option::is_none")]
        gateway4: Option<Ipv4Addr> = "gateway4" => |w, p, n| match ip(w, p, n)? {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(a) => {
                w.err(n.pos, p, format!("expected an IPv4 address, found `{a}`; use gateway6"));
                None
            }
        },
        #[serde(skip_serializing_if = "Option::is_none")]
        gateway6: Option<Ipv6Addr> = "gateway6" => |w, p, n| match ip(w, p, n)? {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(a) => {
                w.err(n.pos, p, format!("expected an IPv6 address, found `{a}`; use gateway4"));
                None
            }
        },
        #[serde(skip_serializing_if = "Option::is_none")]
        mtu: Option<u32> = "mtu" => |w, p, n| {
            w.int(p, n, 68, 65535).and_then(|v| u32::try_from(v).ok())
        },
        #[serde(skip_serializing_if = "Option::is_none")]
        routes: Option<Vec<Route>> = "routes" => |w, p, n| w.list(p, n, read_route),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub to: IpNet,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

const ROUTE_KEYS: &[&str] = &["to", "via", "metric"];

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

/// What a cluster node's pods need of the kernel: the bridge and veths of their network, and
/// nf_tables with the NAT chain and masquerade of their outbound NAT (ros has no modprobe, so
/// the kernel cannot load an nftables expression itself when a rule names it).
pub const CLUSTER_MODULES: &[&str] = &["bridge", "veth", "nf_tables", "nft_chain_nat", "nft_masq"];

impl UserData {
    /// Layers `higher` over `self`: a value set in `higher` wins; tables (sysctl, interfaces, dns,
    /// services) merge key by key; lists are replaced whole.
    pub fn merge(&mut self, higher: UserData) {
        self.layer(higher);
    }

    /// The modules to load: the `modules` key's, then those the config's features need (a
    /// cluster role's [`CLUSTER_MODULES`]).
    pub fn wanted_modules(&self) -> Vec<ModuleName> {
        let mut out: Vec<ModuleName> = self.modules.clone().unwrap_or_default();
        if self.cluster.role.is_some() {
            for m in CLUSTER_MODULES {
                if let Ok(m) = m.parse::<ModuleName>()
                    && !out.contains(&m)
                {
                    out.push(m);
                }
            }
        }
        out
    }
}

/// Reads the tree of one source. Every problem is recorded in `w`; the keys that had one are
/// left unset.
pub fn read(w: &mut Walker<'_>, root: &Node) -> UserData {
    UserData::read(w, "", root)
}

fn read_version(w: &mut Walker<'_>, p: &str, n: &Node) -> Option<i64> {
    let v = w.int(p, n, 0, i64::MAX)?;
    if v != SCHEMA_VERSION {
        w.err(
            n.pos,
            p,
            format!("unsupported schema version {v}; this ros reads version {SCHEMA_VERSION}, and reads this file as that"),
        );
    }
    Some(v)
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
    if known && base64 && !s.contains(['\n', '\r']) {
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

/// A SHA-512 crypt hash, as `mkpasswd -m sha-512` makes: `$6$[rounds=N$]SALT$HASH`.
fn password_hash(w: &mut Walker<'_>, path: &str, node: &Node) -> Option<String> {
    let s = w.string(path, node)?;
    let crypt_chars = |t: &str| {
        t.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '/')
    };
    let ok = s.strip_prefix("$6$").is_some_and(|rest| {
        let parts: Vec<&str> = rest.split('$').collect();
        let (salt, hash) = match parts.as_slice() {
            [rounds, salt, hash] if rounds.starts_with("rounds=") => (*salt, *hash),
            [salt, hash] => (*salt, *hash),
            _ => return false,
        };
        (1..=16).contains(&salt.len()) && crypt_chars(salt) && hash.len() == 86 && crypt_chars(hash)
    });
    if ok {
        Some(s)
    } else {
        w.err(
            node.pos,
            path,
            "expected a SHA-512 crypt hash like `$6$salt$...` (make one with `mkpasswd -m sha-512`)",
        );
        None
    }
}

/// An NTP server: `host`, `host:port`, an IPv6 address, or `[v6]:port`.
fn ntp_server(w: &mut Walker<'_>, p: &str, n: &Node) -> Option<String> {
    let s = w.string(p, n)?;
    match crate::types::parse_host_port(&s, 123) {
        Ok(_) => Some(s),
        Err(e) => {
            w.err(n.pos, p, e);
            None
        }
    }
}

fn read_sysctl(w: &mut Walker<'_>, path: &str, node: &Node) -> BTreeMap<SysctlKey, String> {
    let mut out = BTreeMap::new();
    for e in w.map(path, node).unwrap_or_default() {
        let p = join(path, &e.key);
        let key = match e.key.parse::<SysctlKey>() {
            Ok(k) => k,
            Err(msg) => {
                w.err(e.key_pos, &p, msg);
                continue;
            }
        };
        if let Some(v) = w.scalar_text(&p, &e.node) {
            if v.contains(['\n', '\r']) {
                w.err(e.node.pos, &p, "a sysctl value is one line");
                continue;
            }
            out.insert(key, v);
        }
    }
    out
}

/// The interfaces, keyed by name or label; two that select the same MAC address are an error
/// (which one would get the NIC?).
fn read_interfaces(w: &mut Walker<'_>, path: &str, node: &Node) -> BTreeMap<IfName, Interface> {
    let mut out: BTreeMap<IfName, Interface> = BTreeMap::new();
    let mut macs: BTreeMap<MacAddr, String> = BTreeMap::new();
    for i in w.map(path, node).unwrap_or_default() {
        let ipath = join(path, &i.key);
        let name = match i.key.parse::<IfName>() {
            Ok(n) => n,
            Err(msg) => {
                w.err(i.key_pos, &ipath, msg);
                continue;
            }
        };
        let mut iface = Interface::read(w, &ipath, &i.node);
        if let Some(mac) = &iface.mac {
            if let Some(first) = macs.get(&mac.value) {
                w.err(
                    mac.pos,
                    &join(&ipath, "mac"),
                    format!("interface `{first}` selects {} already", mac.value),
                );
                iface.mac = None;
            } else {
                macs.insert(mac.value, i.key.clone());
            }
        }
        out.insert(name, iface);
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
