//! The main loop and the one owner of what runs: the network, the supervisor, the kernel
//! modules, the sysctls ros wrote, the config in force. Every request from the rest of the init
//! (the API, the power watchers) is a [`ToMain`] message handled here, one at a time; the boot's
//! phases and every live config change reach the machine through this owner as a
//! [`Target`](crate::config::apply::Target). Each turn of the loop is timed, and the longest is
//! reported (`ros status`: `init.max_stall_ms`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ros_api::ServiceReport;
use ros_api::report::NetworkView;
use ros_config::diff::{Diff, Logins, ServicesDiff, Sysctls};
use ros_config::host::WriteFile;
use ros_config::{Hostname, Loaded, MacAddr, ModuleName, Network};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, oneshot};

use crate::config::apply::{Notes, Target};
use crate::config::{Current, system};
use crate::network::NetState;
use crate::platform::clock::uptime_ms;
use crate::platform::kmod::Loader;
use crate::platform::power::{self, Action};
use crate::platform::shutdown;
use crate::platform::sys::RealSys;
use crate::services::supervisor::{Event as SupEvent, Supervisor};

/// What the rest of the init asks of the main loop.
#[derive(Debug)]
pub enum ToMain {
    /// The services' reports.
    Services(oneshot::Sender<Vec<ServiceReport>>),
    /// An operator's start, stop or restart of one service.
    Service {
        name: String,
        action: ServiceAction,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// A config change, checked and persisted: apply it, and make it the config in force.
    Apply {
        diff: Box<Diff>,
        after: Arc<Loaded>,
        reply: oneshot::Sender<Notes>,
    },
    /// A process in a running service's container on the caller's streams: `reply` gets a
    /// receiver of its exit status, or why it could not start.
    Exec {
        name: String,
        args: Vec<String>,
        io: crate::services::supervisor::ExecIo,
        reply: oneshot::Sender<Result<oneshot::Receiver<i32>, String>>,
    },
    /// The network as it is now.
    Network(oneshot::Sender<NetworkView>),
    /// Power off or reboot (the API, the control port, the power button).
    Power(power::Request),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceAction {
    Start,
    Stop,
    Restart,
}

/// The longest turn of the main loop so far (ms), shared with the API.
#[derive(Debug, Default)]
pub struct Stall(AtomicU64);

impl Stall {
    pub fn max_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn record(&self, ms: u64, what: &str) {
        if ms > self.0.fetch_max(ms, Ordering::Relaxed) && ms > 100 {
            log::warn!("init: the main loop was busy {ms} ms ({what})");
        }
    }
}

/// The owner.
#[derive(Debug)]
pub struct MainLoop {
    pub sys: RealSys,
    pub loader: Option<Loader>,
    /// None until the network phase.
    pub net: Option<NetState>,
    /// None until the services phase (or when containers cannot run).
    pub sup: Option<Supervisor>,
    pub sysctls: system::SysctlState,
    pub current: Current,
    /// The first NIC's MAC, for the default hostname.
    pub first_mac: Option<MacAddr>,
    pub stall: Arc<Stall>,
    pub tx: mpsc::UnboundedSender<ToMain>,
    rx: mpsc::UnboundedReceiver<ToMain>,
    signals: Signals,
}

/// The signals PID 1 acts on, watched from the start of the boot: a signal PID 1 has no
/// handler for is dropped by the kernel, so a ctrl-alt-del (SIGINT) during the boot would be
/// lost if these were set up only when the loop starts.
#[derive(Debug)]
pub struct Signals {
    chld: Option<Signal>,
    term: Option<Signal>,
    int: Option<Signal>,
    pwr: Option<Signal>,
}

impl Signals {
    pub fn watch() -> Signals {
        Signals {
            chld: watch(SignalKind::child(), "SIGCHLD"),
            term: watch(SignalKind::terminate(), "SIGTERM"),
            int: watch(SignalKind::interrupt(), "SIGINT"),
            pwr: watch(SignalKind::from_raw(libc::SIGPWR), "SIGPWR"),
        }
    }
}

fn watch(kind: SignalKind, name: &str) -> Option<Signal> {
    signal(kind)
        .map_err(|e| log::error!("init: cannot watch {name}: {e}"))
        .ok()
}

async fn recv(s: &mut Option<Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Sleeps until uptime `at` (ms); forever when there is none.
async fn until(at: Option<u64>) {
    match at {
        Some(at) => {
            tokio::time::sleep(std::time::Duration::from_millis(
                at.saturating_sub(uptime_ms()),
            ))
            .await
        }
        None => std::future::pending().await,
    }
}

async fn next_net_event(net: &mut Option<NetState>) -> Option<ros_net::dhcp::driver::Event> {
    match net {
        Some(n) => n.next_event().await,
        None => std::future::pending().await,
    }
}

/// The next container setup report, once there is a supervisor.
async fn next_spawned(sup: &mut Option<Supervisor>) -> SupEvent {
    match sup {
        Some(s) => s.next_spawned().await,
        None => std::future::pending().await,
    }
}

impl MainLoop {
    pub fn new(
        signals: Signals,
        loader: Option<Loader>,
        current: Current,
        first_mac: Option<MacAddr>,
    ) -> MainLoop {
        let (tx, rx) = mpsc::unbounded_channel();
        MainLoop {
            sys: RealSys,
            loader,
            net: None,
            sup: None,
            sysctls: system::SysctlState::default(),
            current,
            first_mac,
            stall: Arc::new(Stall::default()),
            tx,
            rx,
            signals,
        }
    }

    /// Runs until the machine powers off or reboots.
    pub async fn run(mut self) -> ! {
        let Signals {
            chld: mut sigchld,
            term: mut sigterm,
            int: mut sigint,
            pwr: mut sigpwr,
        } = std::mem::replace(
            &mut self.signals,
            Signals {
                chld: None,
                term: None,
                int: None,
                pwr: None,
            },
        );
        // A child that ended before the loop ran (the boot's) is reaped at once.
        self.reap();
        loop {
            let deadline = self.sup.as_ref().and_then(Supervisor::next_deadline);
            tokio::select! {
                () = recv(&mut sigchld) => self.timed("reaping", |m| { m.reap(); }),
                () = until(deadline) => self.timed("the supervisor's timers", |m| {
                    if let Some(s) = m.sup.as_mut() {
                        s.on_timer(uptime_ms());
                    }
                }),
                () = recv(&mut sigterm) => self.shutdown(Action::Poweroff, "SIGTERM").await,
                () = recv(&mut sigint) => self.shutdown(Action::Reboot, "SIGINT (ctrl-alt-del)").await,
                () = recv(&mut sigpwr) => self.shutdown(Action::Poweroff, "SIGPWR").await,
                s = next_spawned(&mut self.sup) => self.timed("a container's setup report", |m| {
                    if let Some(sup) = m.sup.as_mut() {
                        sup.on_event(s, uptime_ms());
                    }
                }),
                Some(ev) = next_net_event(&mut self.net) => self.timed("a lease event", |m| {
                    if let Some(n) = m.net.as_mut() {
                        n.handle(ev);
                    }
                }),
                Some(msg) = self.rx.recv() => {
                    let start = uptime_ms();
                    let what = msg.what();
                    self.handle(msg).await;
                    self.stall.record(uptime_ms().saturating_sub(start), what);
                }
            }
        }
    }

    fn timed(&mut self, what: &str, f: impl FnOnce(&mut Self)) {
        let start = uptime_ms();
        f(self);
        self.stall.record(uptime_ms().saturating_sub(start), what);
    }

    /// Collects every exited child and hands the supervisor's to it.
    fn reap(&mut self) {
        for s in power::reap() {
            let ours = self
                .sup
                .as_mut()
                .is_some_and(|sup| sup.on_exit(s, uptime_ms()));
            if !ours {
                log::debug!("reaped {s:?}");
            }
        }
    }

    async fn handle(&mut self, msg: ToMain) {
        match msg {
            ToMain::Services(reply) => {
                let _ = reply.send(
                    self.sup
                        .as_ref()
                        .map(Supervisor::report)
                        .unwrap_or_default(),
                );
            }
            ToMain::Service {
                name,
                action,
                reply,
            } => {
                let now = uptime_ms();
                let r = match self.sup.as_mut() {
                    None => Err("the supervisor is not running".to_string()),
                    Some(s) => match action {
                        ServiceAction::Start => s.start_by_request(&name, now),
                        ServiceAction::Stop => s.stop_by_request(&name, now),
                        ServiceAction::Restart => s.restart_by_request(&name, now),
                    },
                };
                if r.is_ok() {
                    log::info!("service {name}: {action:?} asked through the API");
                }
                let _ = reply.send(r);
            }
            ToMain::Exec {
                name,
                args,
                io,
                reply,
            } => {
                let r = match self.sup.as_mut() {
                    None => Err("the supervisor is not running".to_string()),
                    Some(s) => s.exec(&name, args, &io),
                };
                let _ = reply.send(r);
            }
            ToMain::Apply { diff, after, reply } => {
                let notes = crate::config::apply::apply(&diff, self).await;
                self.current.set(after);
                let _ = reply.send(notes);
            }
            ToMain::Network(reply) => {
                let view = match self.net.as_mut() {
                    Some(n) => super::ready::network(n).await,
                    None => NetworkView::default(),
                };
                let _ = reply.send(view);
            }
            ToMain::Power(r) => self.shutdown(r.action, &r.reason).await,
        }
    }

    async fn shutdown(&mut self, action: Action, reason: &str) -> ! {
        shutdown::shutdown(action, reason, self.net.as_mut(), self.sup.as_mut()).await
    }
}

impl ToMain {
    fn what(&self) -> &'static str {
        match self {
            ToMain::Services(_) => "the service list",
            ToMain::Service { .. } => "a service action",
            ToMain::Exec { .. } => "starting a process in a service",
            ToMain::Apply { .. } => "applying a config change",
            ToMain::Network(_) => "the network view",
            ToMain::Power(_) => "a power request",
        }
    }
}

impl Target for MainLoop {
    fn modules(&mut self, names: &[ModuleName]) -> (Vec<String>, Vec<String>) {
        let Some(l) = self.loader.as_mut() else {
            return (Vec::new(), vec!["modules: no module index".into()]);
        };
        let before = l.report.failed.len();
        let names: Vec<String> = names.iter().map(|m| m.as_str().to_string()).collect();
        l.load(&self.sys, &names);
        let errors = l.report.failed[before..]
            .iter()
            .map(|f| format!("module {}: {}", f.name, f.error))
            .collect();
        (
            vec![format!("modules loaded: {}", names.join(", "))],
            errors,
        )
    }

    fn hostname(&mut self, name: Option<&Hostname>) -> (Vec<String>, Vec<String>) {
        let h = system::choose_hostname(name, self.first_mac);
        let errors = system::set_hostname(&self.sys, Path::new("/etc"), &h);
        log::info!("hostname {h}");
        (vec![format!("hostname is now {h}")], errors)
    }

    fn sysctls(&mut self, s: &Sysctls) -> (Vec<String>, Vec<String>) {
        self.sysctls.apply(&self.sys, Path::new("/proc/sys"), s)
    }

    fn write_files(&mut self, files: &[WriteFile]) -> (Vec<String>, Vec<String>) {
        let errors = system::write_files(Path::new("/"), files);
        (vec![format!("{} file(s) written", files.len())], errors)
    }

    async fn network(&mut self, n: &Network) -> (Vec<String>, Vec<String>) {
        match self.net.as_mut() {
            Some(net) => net.reconfigure(n).await,
            None => (
                Vec::new(),
                vec!["network: not up yet; applied at the network phase".into()],
            ),
        }
    }

    fn logins(&mut self, l: &Logins) -> (Vec<String>, Vec<String>) {
        crate::services::logins::write_all(Path::new(ros_api::paths::LOGINS), l)
    }

    fn services(&mut self, s: &ServicesDiff) -> (Vec<String>, Vec<String>) {
        match self.sup.as_mut() {
            Some(sup) => sup.apply(s, uptime_ms()),
            None => (
                Vec::new(),
                vec!["services: there is no supervisor (see the boot's errors)".into()],
            ),
        }
    }
}
