//! The pods' network on this node, as the bridge and host-local CNI plugins make it: a bridge
//! `cni0` holding the first address of the node's pod range (its Node's `spec.podCIDR`, given
//! by the server), a veth pair per pod whose inner end is the pod's `eth0` with an address from
//! the range and a default route through the bridge, and outbound NAT (nftables masquerade) for
//! pod traffic that leaves the node. Pod traffic between nodes comes with the next piece of work.
//!
//! Addresses are handed out host-local's way: a file per address in the agent's `ipam` folder
//! holding the pod's uid, made with O_EXCL so two pods never get one address. The netlink
//! requests are `rtnl`'s, blocking: on the runtime's blocking threads for the node's side, and
//! inside a pod's namespace on a thread of its own that joins it (no runtime thread ever
//! changes namespace). The veth's pod end is made in the pod's namespace, named `eth0` there.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use super::rtnl::{Rtnl, index_of};

pub const BRIDGE: &str = "cni0";

/// The nftables table the agent owns (replaced whole at each start).
const TABLE: &str = "ros-kube";

#[derive(Debug, Clone)]
pub struct PodNet {
    pub cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    ipam: PathBuf,
}

/// The lowest address of `cidr` after the gateway (its first) that `used` lacks.
pub fn pick(cidr: Ipv4Net, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    cidr.hosts().skip(1).find(|a| !used.contains(a))
}

/// The nftables ruleset: pod traffic leaving the node other than through the bridge is
/// masqueraded behind the node's address.
pub fn ruleset(cidr: Ipv4Net) -> String {
    // Declaring the table first makes the delete valid on a first run; the three lines are one
    // transaction, so the old rules are replaced at once.
    format!(
        "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {cidr} oifname != \"{BRIDGE}\" masquerade\n  }}\n}}\n"
    )
}

/// The host side's name for a pod's veth (at most 15 bytes, from the pod's uid).
pub fn host_veth(uid: &str) -> String {
    let h: String = uid
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(11)
        .collect();
    format!("veth{h}")
}

impl PodNet {
    /// The bridge with the range's first address, forwarding on, the NAT rules loaded (with
    /// `nft`), and the address files of an earlier run cleared: that run's pods went with it.
    pub async fn setup(cidr: Ipv4Net, data_dir: &Path, nft: &Path) -> Result<PodNet, String> {
        let gateway = cidr
            .hosts()
            .next()
            .ok_or_else(|| format!("the pod range {cidr} has no addresses"))?;
        let prefix = cidr.prefix_len();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let mut r = Rtnl::open()?;
            let br = r.ensure_bridge(BRIDGE)?;
            r.add_address(br, gateway, prefix)
        })
        .await
        .map_err(|e| e.to_string())??;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| format!("turning on IPv4 forwarding: {e}"))?;
        let mut child = tokio::process::Command::new(nft)
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("running {}: {e}", nft.display()))?;
        if let Some(mut i) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            i.write_all(ruleset(cidr).as_bytes())
                .await
                .map_err(|e| format!("writing to nft: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| format!("nft: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "loading the pods' NAT rules: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let ipam = data_dir.join("ipam");
        let _ = std::fs::remove_dir_all(&ipam);
        std::fs::create_dir_all(&ipam).map_err(|e| format!("{}: {e}", ipam.display()))?;
        Ok(PodNet {
            cidr,
            gateway,
            ipam,
        })
    }

    /// An address for pod `uid` (the one it holds already, if any).
    pub fn allocate(&self, uid: &str) -> Result<Ipv4Addr, String> {
        let mut used = BTreeSet::new();
        for e in std::fs::read_dir(&self.ipam)
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(a) = e.file_name().to_string_lossy().parse::<Ipv4Addr>() else {
                continue;
            };
            if std::fs::read_to_string(e.path()).is_ok_and(|u| u == uid) {
                return Ok(a);
            }
            used.insert(a);
        }
        loop {
            let a = pick(self.cidr, &used)
                .ok_or_else(|| format!("no address left in the pod range {}", self.cidr))?;
            let file = self.ipam.join(a.to_string());
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&file)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(uid.as_bytes())
                        .map_err(|e| format!("{}: {e}", file.display()))?;
                    return Ok(a);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    used.insert(a);
                }
                Err(e) => return Err(format!("{}: {e}", file.display())),
            }
        }
    }

    /// Gives pod `uid`'s address back.
    pub fn release(&self, uid: &str) {
        for e in std::fs::read_dir(&self.ipam)
            .into_iter()
            .flatten()
            .flatten()
        {
            if std::fs::read_to_string(e.path()).is_ok_and(|u| u == uid) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Connects the namespace at `netns` to the bridge: a veth pair whose pod end is the
    /// pod's `eth0` with `ip` and a default route through the gateway.
    pub async fn attach(&self, netns: &Path, uid: &str, ip: Ipv4Addr) -> Result<(), String> {
        let host = host_veth(uid);
        let ns = std::fs::File::open(netns).map_err(|e| format!("{}: {e}", netns.display()))?;
        let ns2 = ns.try_clone().map_err(|e| e.to_string())?;
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            use std::os::fd::AsFd;
            let mut r = Rtnl::open()?;
            // A pair left by an earlier try goes first.
            if let Some(i) = index_of(&host) {
                let _ = r.del_link(i);
            }
            let br = index_of(BRIDGE).ok_or_else(|| format!("no bridge {BRIDGE}"))?;
            let h = r.add_veth(&host, "eth0", ns2.as_fd())?;
            r.set(h, Some(br), None, true)
        })
        .await
        .map_err(|e| e.to_string())??;
        let (gw, prefix) = (self.gateway, self.cidr.prefix_len());
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("podnet".into())
            .spawn(move || {
                let r = (|| -> Result<(), String> {
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| format!("joining the pod's network: {e}"))?;
                    let mut r = Rtnl::open()?;
                    let i = index_of("eth0")
                        .ok_or("the veth's end did not arrive in the pod's namespace")?;
                    r.add_address(i, ip, prefix)?;
                    r.set(i, None, None, true)?;
                    r.default_route(gw, i)
                })();
                let _ = tx.send(r);
            })
            .map_err(|e| format!("a thread for the pod's network: {e}"))?;
        rx.await
            .map_err(|_| "the pod network's thread ended early".to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_names_and_rules() {
        let cidr: Ipv4Net = "10.42.1.0/24".parse().unwrap_or_default();
        let mut used = BTreeSet::new();
        assert_eq!(pick(cidr, &used), Some(Ipv4Addr::new(10, 42, 1, 2)));
        used.insert(Ipv4Addr::new(10, 42, 1, 2));
        used.insert(Ipv4Addr::new(10, 42, 1, 4));
        assert_eq!(pick(cidr, &used), Some(Ipv4Addr::new(10, 42, 1, 3)));
        let small: Ipv4Net = "10.0.0.0/30".parse().unwrap_or_default();
        let full: BTreeSet<Ipv4Addr> = [Ipv4Addr::new(10, 0, 0, 2)].into();
        assert_eq!(pick(small, &full), None, ".1 is the gateway, .3 broadcast");
        let v = host_veth("6f1c2a90-1b2c-4d5e-8f90-123456789abc");
        assert_eq!(v, "veth6f1c2a901b2");
        assert!(v.len() <= 15);
        let r = ruleset(cidr);
        assert!(r.contains("ip saddr 10.42.1.0/24 oifname != \"cni0\" masquerade"));
        assert!(r.starts_with("table ip ros-kube\ndelete table ip ros-kube\n"));
    }
}

/// As root, in network namespaces of its own (the host's is left alone): the node's side in
/// one, a pod's in another, joined as the agent joins them.
#[cfg(test)]
mod root_tests {
    use super::*;

    #[test]
    fn a_pod_namespace_is_attached_to_the_bridge() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pod_ns = dir.path().join("netns");
        crate::agent::netns::create(&pod_ns).unwrap_or_else(|e| panic!("{e}"));
        let p = pod_ns.clone();
        let node = std::thread::spawn(move || -> Result<String, String> {
            // This thread's namespace stands for the node's.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
            let mut r = Rtnl::open()?;
            let br = r.ensure_bridge(BRIDGE)?;
            assert_eq!(r.ensure_bridge(BRIDGE)?, br, "made once");
            r.add_address(br, Ipv4Addr::new(10, 42, 7, 1), 24)?;
            let ns = std::fs::File::open(&p).map_err(|e| e.to_string())?;
            use std::os::fd::AsFd;
            let h = r.add_veth("vethtest", "eth0", ns.as_fd())?;
            r.set(h, Some(br), None, true)?;
            let pod = std::thread::spawn(move || -> Result<String, String> {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| e.to_string())?;
                let mut r = Rtnl::open()?;
                let i = index_of("eth0").ok_or("no eth0 in the pod")?;
                r.add_address(i, Ipv4Addr::new(10, 42, 7, 2), 24)?;
                r.set(i, None, None, true)?;
                r.default_route(Ipv4Addr::new(10, 42, 7, 1), i)?;
                Ok(std::fs::read_to_string("/proc/thread-self/net/route").unwrap_or_default())
            })
            .join()
            .map_err(|_| "the pod's thread panicked".to_string())??;
            Ok(pod)
        })
        .join()
        .unwrap_or_else(|_| panic!("the node's thread panicked"));
        let route = node.unwrap_or_else(|e| panic!("{e}"));
        // The default route (destination 0) through 10.42.7.1, in /proc's little-endian hex.
        assert!(
            route
                .lines()
                .any(|l| l.starts_with("eth0\t00000000\t01072A0A")),
            "{route}"
        );
        crate::agent::netns::remove(&pod_ns);
    }
}
