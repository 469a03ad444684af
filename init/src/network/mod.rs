//! The network: loopback up, then the config's plan applied (at boot from nothing, later as a
//! live change: only interfaces whose setup changed are touched), a DHCPv4 and/or DHCPv6 driver
//! per DHCP interface, and a bounded wait for leases. Afterwards the main loop feeds lease
//! events back here, which keeps `/etc/resolv.conf` current; at shutdown the leases are
//! released.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ros_config::Network;
use ros_net::dhcp::driver::{self, DhcpLink, Event, StopRequest};
use ros_net::dhcp::{ClientConfig, Lease};
use ros_net::{IfacePlan, LinkInfo, Net, Plan};
use tokio::sync::{mpsc, oneshot};

/// The state of networking while the machine runs.
#[derive(Debug)]
pub struct NetState {
    pub net: Option<Net>,
    pub plan: Plan,
    pub links: Vec<LinkInfo>,
    pub leases: BTreeMap<u32, Lease>,
    /// What DHCPv6 gave (or that the router asks for SLAAC alone), by interface index.
    pub leases6: BTreeMap<u32, ros_net::dhcp6::Lease>,
    /// Why DHCP on an interface could not run, by interface index.
    pub dhcp_errors: BTreeMap<u32, String>,
    pub errors: Vec<String>,
    events: mpsc::UnboundedReceiver<Event>,
    /// The drivers' side of `events`, for drivers started later.
    tx: mpsc::UnboundedSender<Event>,
    /// How to stop each driver: interface index, a name for the log, the channel.
    stops: Vec<(u32, String, mpsc::Sender<StopRequest>)>,
    cfg_dns: (Option<Vec<IpAddr>>, Option<Vec<String>>),
    resolv_conf: PathBuf,
}

impl NetState {
    /// Interfaces that run DHCPv4 (`v6` false) or DHCPv6 (`v6` true).
    fn dhcp_indexes(&self, v6: bool) -> Vec<u32> {
        self.plan
            .interfaces
            .iter()
            .filter(|i| if v6 { i.dhcp6 } else { i.dhcp4 })
            .map(|i| i.index)
            .collect()
    }

    /// Whether every DHCP interface has its leases.
    fn online(&self) -> bool {
        self.dhcp_indexes(false)
            .iter()
            .all(|i| self.leases.contains_key(i))
            && self
                .dhcp_indexes(true)
                .iter()
                .all(|i| self.leases6.contains_key(i))
    }

    /// The next lease event (pending forever when there are no drivers).
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    pub fn handle(&mut self, ev: Event) {
        match ev {
            Event::Bound { index, lease } => {
                self.dhcp_errors.remove(&index);
                self.leases.insert(index, lease);
            }
            Event::Unbound { index, .. } => {
                self.leases.remove(&index);
            }
            Event::Bound6 { index, lease } => {
                self.dhcp_errors.remove(&index);
                self.leases6.insert(index, lease);
            }
            Event::Unbound6 { index } => {
                self.leases6.remove(&index);
            }
            Event::Failed { index, error } => {
                self.dhcp_errors.insert(index, error);
                return;
            }
        }
        self.write_resolv_conf();
    }

    /// The DNS in effect: the config's, else what leases gave.
    pub fn dns(&self) -> (Vec<IpAddr>, Vec<String>) {
        let v4 = self
            .leases
            .values()
            .flat_map(|l| l.dns.iter().map(|a| IpAddr::V4(*a)));
        let v6 = self
            .leases6
            .values()
            .flat_map(|l| l.dns.iter().map(|a| IpAddr::V6(*a)));
        let lease_ns: Vec<IpAddr> = v4.chain(v6).collect();
        let lease_search: Vec<String> = self
            .leases
            .values()
            .flat_map(|l| l.search.iter().cloned())
            .chain(self.leases6.values().flat_map(|l| l.search.iter().cloned()))
            .collect();
        ros_net::resolv::choose(
            self.cfg_dns.0.as_deref(),
            self.cfg_dns.1.as_deref(),
            &lease_ns,
            &lease_search,
        )
    }

    fn write_resolv_conf(&mut self) {
        let (ns, search) = self.dns();
        let text = ros_net::resolv::render(&ns, &search);
        let tmp = self.resolv_conf.with_extension("tmp");
        if let Err(e) =
            std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.resolv_conf))
        {
            self.errors
                .push(format!("writing {}: {e}", self.resolv_conf.display()));
        }
    }

    /// Waits until every DHCP interface is bound, or `timeout`.
    pub async fn wait_online(&mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.online() {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) => self.handle(ev),
                Ok(None) | Err(_) => break,
            }
        }
        let missing = self
            .dhcp_indexes(false)
            .into_iter()
            .filter(|i| !self.leases.contains_key(i))
            .map(|i| (i, "DHCPv4"))
            .chain(
                self.dhcp_indexes(true)
                    .into_iter()
                    .filter(|i| !self.leases6.contains_key(i))
                    .map(|i| (i, "DHCPv6")),
            );
        for (i, what) in missing.collect::<Vec<_>>() {
            let name = self.name_of(i);
            let why = self
                .dhcp_errors
                .get(&i)
                .cloned()
                .unwrap_or_else(|| format!("no {what} answer yet"));
            log::warn!(
                "network: {name}: no {what} lease after {} ms ({why}); still trying",
                timeout.as_millis()
            );
        }
    }

    pub fn name_of(&self, index: u32) -> String {
        self.links
            .iter()
            .find(|l| l.index == index)
            .map_or_else(|| index.to_string(), |l| l.name.clone())
    }

    /// Re-reads the links (for the ready report).
    pub async fn refresh_links(&mut self) {
        if let Some(net) = &self.net
            && let Ok(l) = net.links().await
        {
            self.links = l;
        }
    }

    /// Releases every lease (DHCP RELEASE to the server) and stops the drivers, within `timeout`.
    pub async fn release_all(&mut self, timeout: Duration) {
        self.stop_drivers(None, timeout).await;
    }

    /// Stops the drivers of interface `index` (all when `None`), each releasing its lease, and
    /// takes in what they report.
    async fn stop_drivers(&mut self, index: Option<u32>, timeout: Duration) {
        let (stop, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.stops)
            .into_iter()
            .partition(|(i, _, _)| index.is_none_or(|x| x == *i));
        self.stops = keep;
        let mut acks = Vec::new();
        for (_, name, stop) in stop {
            let (tx, rx) = oneshot::channel();
            if stop.send(tx).await.is_ok() {
                acks.push((name, rx));
            }
        }
        for (name, rx) in acks {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(())) => log::info!("network: {name}: DHCP stopped"),
                _ => log::warn!("network: {name}: DHCP did not stop in time"),
            }
        }
        while let Ok(ev) = self.events.try_recv() {
            self.handle(ev);
        }
    }

    /// Starts the DHCPv4 and DHCPv6 drivers an interface's plan asks for.
    fn spawn_drivers(&mut self, net: &Net, i: &IfacePlan, hostname: &str) {
        if !i.dhcp4 && !i.dhcp6 {
            return;
        }
        let Some(mac) = self
            .links
            .iter()
            .find(|l| l.index == i.index)
            .and_then(|l| l.mac)
        else {
            self.dhcp_errors.insert(i.index, "no MAC address".into());
            return;
        };
        // Transaction ids an attacker on the link cannot guess.
        let seed = crate::platform::random::u64();
        if i.dhcp6 {
            let (stop_tx, stop_rx) = mpsc::channel(1);
            self.stops
                .push((i.index, format!("{} (DHCPv6)", i.name), stop_tx));
            let link = ros_net::dhcp6::driver::Dhcp6Link {
                index: i.index,
                name: i.name.clone(),
                mac: mac.0,
            };
            tokio::spawn(ros_net::dhcp6::driver::run(
                net.clone(),
                link,
                seed.rotate_left(17),
                crate::platform::clock::uptime_ms,
                self.tx.clone(),
                stop_rx,
                ros_net::dhcp6::driver::RA_WAIT,
            ));
        }
        if i.dhcp4 {
            let link = DhcpLink {
                index: i.index,
                name: i.name.clone(),
                mac: mac.0,
                mtu_fixed: i.mtu.is_some(),
            };
            let cfg = ClientConfig {
                mac: mac.0,
                hostname: Some(hostname.to_string()),
                seed,
            };
            let (stop_tx, stop_rx) = mpsc::channel(1);
            self.stops.push((i.index, i.name.clone(), stop_tx));
            tokio::spawn(driver::run(
                net.clone(),
                link,
                cfg,
                crate::platform::clock::uptime_ms,
                self.tx.clone(),
                stop_rx,
            ));
        }
    }

    /// The plan's missing interfaces and fallback, as errors.
    fn note_plan(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for m in &self.plan.missing {
            let msg = format!("network: interface `{}`: {}", m.label, m.reason);
            log::warn!("{msg}");
            errors.push(msg);
        }
        if let Some(f) = &self.plan.fallback {
            log::warn!("network: {f}");
            errors.push(format!("network: {f}"));
        }
        if self.plan.interfaces.is_empty() {
            log::warn!("network: no Ethernet interface found");
        }
        errors
    }

    /// Sets up interfaces as their plans say: static part over netlink, then the DHCP drivers.
    async fn bring_up(&mut self, net: &Net, ifaces: Vec<IfacePlan>, hostname: &str) -> Vec<String> {
        let part = Plan {
            interfaces: ifaces,
            ..Plan::default()
        };
        let mut errors = Vec::new();
        for (label, e) in ros_net::apply::apply_static(net, &part).await {
            let msg = format!("network: `{label}`: {e}");
            log::warn!("{msg}");
            errors.push(msg);
        }
        for i in &part.interfaces {
            if !i.addresses.is_empty() {
                let a: Vec<String> = i.addresses.iter().map(ToString::to_string).collect();
                log::info!("network: {}: static {}", i.name, a.join(" "));
            }
            self.spawn_drivers(net, i, hostname);
        }
        errors
    }

    /// Applies a new network config while the machine runs. Interfaces set up as before keep
    /// their leases; one whose setup changed, or that the config no longer names, is taken down
    /// (its DHCP released, the old plan's addresses and routes removed), then the new plan's
    /// interfaces are set up (DHCPv4 sending the hostname the machine has now). Returns a line
    /// per interface touched, and the errors.
    pub async fn reconfigure(&mut self, cfg: &Network) -> (Vec<String>, Vec<String>) {
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.cfg_dns = cfg_dns(cfg);
        let Some(net) = self.net.clone() else {
            return (
                Vec::new(),
                vec!["network: there is no netlink connection; reboot to apply".into()],
            );
        };
        self.refresh_links().await;
        let new = ros_net::plan(cfg, &self.links);
        let change = ros_net::plan::change(&self.plan, &new);
        let mut notes = Vec::new();
        for old in &change.down {
            self.stop_drivers(Some(old.index), Duration::from_secs(3))
                .await;
            for a in &old.addresses {
                if let Err(e) = net.del_address(old.index, *a).await {
                    log::warn!("network: {e}");
                }
            }
            for r in &old.routes {
                if let Err(e) = net.del_route(r).await {
                    log::warn!("network: {e}");
                }
            }
            self.leases.remove(&old.index);
            self.leases6.remove(&old.index);
            self.dhcp_errors.remove(&old.index);
        }
        let up_names: Vec<String> = change.up.iter().map(|i| i.name.clone()).collect();
        for old in &change.down {
            if !up_names.contains(&old.name) {
                notes.push(format!("{}: no longer configured", old.name));
            }
        }
        for i in &change.up {
            let mut what = Vec::new();
            if !i.addresses.is_empty() {
                let a: Vec<String> = i.addresses.iter().map(ToString::to_string).collect();
                what.push(a.join(" "));
            }
            if i.dhcp4 {
                what.push("DHCPv4".into());
            }
            if i.dhcp6 {
                what.push("DHCPv6".into());
            }
            if what.is_empty() {
                what.push("up, no address".into());
            }
            notes.push(format!("{}: {}", i.name, what.join(", ")));
        }
        self.plan = new;
        let mut errors = self.note_plan();
        errors.extend(self.bring_up(&net, change.up, &hostname).await);
        self.write_resolv_conf();
        if !notes.is_empty() {
            log::info!("network: {}", notes.join("; "));
        }
        (notes, errors)
    }
}

fn cfg_dns(cfg: &Network) -> (Option<Vec<IpAddr>>, Option<Vec<String>>) {
    (
        cfg.dns.nameservers.clone(),
        cfg.dns
            .search
            .as_ref()
            .map(|s| s.iter().map(ToString::to_string).collect()),
    )
}

/// Connects to the kernel's netlink, lists the links and brings the loopback up; the config's
/// interfaces come with [`NetState::reconfigure`]. Never fails: problems are kept in the
/// state's errors.
pub async fn start(resolv_conf: PathBuf) -> NetState {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut st = NetState {
        net: None,
        plan: Plan::default(),
        links: Vec::new(),
        leases: BTreeMap::new(),
        leases6: BTreeMap::new(),
        dhcp_errors: BTreeMap::new(),
        errors: Vec::new(),
        events: rx,
        tx,
        stops: Vec::new(),
        cfg_dns: (None, None),
        resolv_conf,
    };
    let net = match Net::connect() {
        Ok(n) => n,
        Err(e) => {
            st.errors.push(format!("network: {e}"));
            return st;
        }
    };
    st.links = match net.links().await {
        Ok(l) => l,
        Err(e) => {
            st.errors.push(format!("network: {e}"));
            Vec::new()
        }
    };
    if let Err(e) = ros_net::apply::loopback(&net, &st.links).await {
        st.errors.push(format!("network: loopback: {e}"));
    }
    st.net = Some(net);
    st
}
