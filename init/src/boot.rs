//! The boot, in order: (stage 1) move the root into a tmpfs and re-exec; (stage 2) the mount
//! table, modules for the hardware, the config, config modules + hostname + sysctls, networking,
//! the ready line; then the main loop (reaping, power requests, lease events) until shutdown.
//! Each phase is timed on the uptime clock for the timeline. Nothing here returns or panics out:
//! a failed step is logged and reported in the ready line, and the boot goes on.

use std::panic::AssertUnwindSafe;
use std::path::Path;

use futures::FutureExt;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use crate::clock::uptime_ms;
use crate::kmod::{Loader, Report};
use crate::network::NetState;
use crate::power::{self, Action};
use crate::ready::{self, Phase, Ready};
use crate::sys::RealSys;
use crate::{logger, mounts, network, shutdown, sources, state, system};

/// The boot timeline.
#[derive(Debug, Default)]
pub struct Timeline {
    pub phases: Vec<Phase>,
}

impl Timeline {
    pub fn phase<T>(&mut self, phase: &'static str, f: impl FnOnce() -> T) -> T {
        let start_ms = uptime_ms();
        let out = f();
        self.phases.push(Phase {
            phase,
            start_ms,
            end_ms: uptime_ms(),
        });
        log::debug!("phase {phase} took {} ms", uptime_ms() - start_ms);
        out
    }

    pub async fn phase_async<T>(&mut self, phase: &'static str, f: impl Future<Output = T>) -> T {
        let start_ms = uptime_ms();
        let out = f.await;
        self.phases.push(Phase {
            phase,
            start_ms,
            end_ms: uptime_ms(),
        });
        out
    }
}

/// The init's entry.
pub fn main() -> ! {
    std::panic::set_hook(Box::new(|info| {
        logger::console_write(&format!("ros: init: internal error: {info}\n"));
    }));
    if std::process::id() != 1 {
        logger::console_write("init: this is ros's PID 1 and runs only as process 1\n");
        std::process::exit(2);
    }
    logger::init(false, true);
    let started = uptime_ms();
    log::info!(
        "ros {} init starting at {started} ms",
        env!("CARGO_PKG_VERSION")
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match rt {
        Ok(rt) => {
            let run = AssertUnwindSafe(boot(started)).catch_unwind();
            if rt.block_on(run).is_err() {
                log::error!(
                    "init: the boot task failed; serving only reaping and power signals now"
                );
            }
        }
        Err(e) => log::error!("init: cannot start the async runtime: {e}"),
    }
    fallback_loop()
}

/// The last resort if the async main loop is gone: reap, and honour TERM/INT.
fn fallback_loop() -> ! {
    use nix::sys::signal::{SigSet, Signal as S};
    let mut set = SigSet::empty();
    for s in [S::SIGCHLD, S::SIGTERM, S::SIGINT, S::SIGPWR] {
        set.add(s);
    }
    let _ = set.thread_block();
    loop {
        match set.wait() {
            Ok(S::SIGTERM | S::SIGPWR) => last_resort_shutdown(Action::Poweroff),
            Ok(S::SIGINT) => last_resort_shutdown(Action::Reboot),
            _ => {
                power::reap();
            }
        }
    }
}

fn last_resort_shutdown(action: Action) -> ! {
    use nix::sys::signal::{Signal as S, kill};
    let all = nix::unistd::Pid::from_raw(-1);
    let _ = kill(all, S::SIGTERM);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let _ = kill(all, S::SIGKILL);
    power::reap();
    nix::unistd::sync();
    shutdown::finish(action)
}

fn signal_or_log(kind: SignalKind, name: &str) -> Option<Signal> {
    signal(kind)
        .map_err(|e| log::error!("init: cannot watch {name}: {e}"))
        .ok()
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

async fn recv(s: &mut Option<Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// The MAC of the first physical Ethernet NIC, read from sysfs (before netlink is up).
fn first_nic_mac(sysfs: &Path) -> Option<ros_config::MacAddr> {
    let read = |p: std::path::PathBuf| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    std::fs::read_dir(sysfs.join("class/net"))
        .ok()?
        .flatten()
        .filter(|e| {
            e.path().join("device").exists() && read(e.path().join("type")).as_deref() == Some("1")
        })
        .filter_map(|e| {
            let index: u32 = read(e.path().join("ifindex"))?.parse().ok()?;
            let mac = read(e.path().join("address"))?.parse().ok()?;
            Some((index, mac))
        })
        .min_by_key(|(i, _)| *i)
        .map(|(_, m)| m)
}

/// Modules that devices ask for but that nothing before the ready line needs (the power
/// button's, the control port's); loaded right after it.
const AFTER_READY: &[&str] = &["button", "evdev", "virtio_console"];

async fn boot(started: u64) -> ! {
    let mut errors = Vec::new();
    let mut tl = Timeline::default();
    tl.phases.push(Phase {
        phase: "start",
        start_ms: started,
        end_ms: uptime_ms(),
    });
    // Ctrl-alt-del becomes SIGINT to the init instead of an immediate reboot.
    let _ = nix::sys::reboot::set_cad_enabled(false);
    let mut sigchld = signal_or_log(SignalKind::child(), "SIGCHLD");
    let mut sigterm = signal_or_log(SignalKind::terminate(), "SIGTERM");
    let mut sigint = signal_or_log(SignalKind::interrupt(), "SIGINT");
    let mut sigpwr = signal_or_log(SignalKind::from_raw(libc::SIGPWR), "SIGPWR");

    let sys = RealSys;
    for e in tl.phase("mounts", || mounts::mount_all(&sys, Path::new("/"))) {
        log::error!("mounts: {e}");
        errors.push(format!("mounts: {e}"));
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let params = ros_config::cmdline::split(&cmdline);
    logger::set_debug(params.iter().any(|p| p.key == "ros.debug"));

    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    // Subscribed before the first scan, so no device added meanwhile is missed.
    let uevents = crate::uevent::Uevents::open();
    if let Err(e) = &uevents {
        log::warn!("modules: no uevents ({e}); only the first scan's devices get drivers");
    }
    let mut new_devices = || {
        uevents
            .as_ref()
            .map(|u| u.drain_modaliases())
            .unwrap_or_default()
    };
    let mut loader = tl.phase("modules", || {
        match Loader::open(Path::new("/lib/modules"), &kernel) {
            Ok(mut l) => {
                l.hold(AFTER_READY);
                l.load_for_devices(&sys, Path::new("/sys"), &mut new_devices);
                Some(l)
            }
            Err(e) => {
                log::error!("modules: {e}");
                errors.push(format!("modules: {e}"));
                None
            }
        }
    });

    let state = tl.phase("state", || {
        let autoformat = ros_config::cmdline::option(&params, state::AUTOFORMAT_OPTION);
        state::setup(&sys, autoformat, || {
            crate::images::ImageStore::open(
                Path::new(crate::images::STORE),
                Path::new(crate::images::MOUNTS),
            )?
            .lower_dirs(state::MKFS_IMAGE)
        })
    });
    match (&state.device, &state.detail) {
        (Some(d), None) => log::info!(
            "state: {d} mounted on {}{}",
            state::MOUNT,
            if state.formatted {
                " (formatted now)"
            } else {
                ""
            }
        ),
        (_, Some(e)) => {
            log::warn!("state: {e}");
            if state.device.is_some() {
                errors.push(format!("state: {e}"));
            }
        }
        (None, None) => {}
    }

    let gathered = tl.phase("config", || {
        match crate::nocloud::read(&sys, loader.as_mut()) {
            Ok(Some(drive)) => {
                log::info!("config: NoCloud drive {}", drive.device);
                if let Err(e) = sources::keep_nocloud(&drive) {
                    errors.push(format!("config: keeping the NoCloud data: {e}"));
                }
            }
            Ok(None) => {}
            Err(e) => {
                log::error!("config: NoCloud drive: {e}");
                errors.push(format!("config: NoCloud drive: {e}"));
            }
        }
        sources::gather(&sources::system_files(), &cmdline)
    });
    for e in &gathered.read.errors {
        log::error!("config: {e}");
    }
    let cfg = &gathered.read.data;

    let hostname = tl.phase("system", || {
        if let (Some(l), Some(m)) = (loader.as_mut(), &cfg.modules) {
            let names: Vec<String> = m.iter().map(|m| m.as_str().to_string()).collect();
            l.load(&sys, &names);
        }
        let hostname =
            system::choose_hostname(cfg.hostname.as_ref(), first_nic_mac(Path::new("/sys")));
        errors.extend(system::set_hostname(&sys, Path::new("/etc"), &hostname));
        errors.extend(system::set_sysctls(
            &sys,
            Path::new("/proc/sys"),
            &cfg.sysctl,
        ));
        if let Some(files) = &cfg.write_files {
            errors.extend(system::write_files(Path::new("/"), files));
        }
        log::info!("hostname {hostname}");
        hostname
    });

    let mut net: NetState = tl
        .phase_async("network", async {
            let mut st = network::start(&cfg.network, &hostname, "/etc/resolv.conf".into()).await;
            st.wait_online(cfg.network.online_timeout()).await;
            st
        })
        .await;
    errors.append(&mut net.errors);

    // The metadata service, once the network is up: its config layers in, and hostname,
    // sysctls, modules and the network are applied again with it.
    let gathered = match ros_config::cmdline::option(&params, crate::metadata::URL_OPTION) {
        Some(url) => {
            let timeout = ros_config::cmdline::option(&params, crate::metadata::TIMEOUT_OPTION);
            let old_network = gathered.read.data.network.clone();
            tl.phase_async("datasource", async {
                let g = datasource(
                    url,
                    timeout,
                    gathered,
                    &cmdline,
                    &sys,
                    loader.as_mut(),
                    &mut errors,
                )
                .await;
                let new = &g.read.data.network;
                if *new != old_network {
                    // Only interfaces whose setup changes are touched, so the one the service
                    // was read through keeps its lease unless the service changes that one.
                    let notes = net.reconfigure(new).await;
                    log::info!("metadata: network applied: {}", notes.join("; "));
                    net.wait_online(new.online_timeout()).await;
                    errors.append(&mut net.errors);
                }
                g
            })
            .await
        }
        None => gathered,
    };
    let cfg = &gathered.read.data;
    let hostname = system::choose_hostname(cfg.hostname.as_ref(), first_nic_mac(Path::new("/sys")));

    // The API's socket exists before the services start (the console mounts its folder);
    // requests that need the supervisor wait for the main loop.
    let (api_tx, mut api_rx) = mpsc::unbounded_channel();
    let api_ctx = std::sync::Arc::new(crate::api::Ctx {
        cmdline: cmdline.clone(),
        persistent: state.persistent,
        ready: std::sync::Mutex::new(serde_json::Value::Null),
        tx: api_tx,
    });
    match crate::api::bind() {
        Ok(l) => {
            tokio::spawn(crate::api::serve(l, api_ctx.clone()));
        }
        Err(e) => {
            log::error!("api: cannot listen on {}: {e}", ros_api::SOCKET);
            errors.push(format!("api: cannot listen on {}: {e}", ros_api::SOCKET));
        }
    }

    let mut config_errors = gathered.read.errors.clone();
    let mut supervisor = tl.phase("services", || {
        crate::services::start(
            &sys,
            loader.as_mut(),
            cfg,
            state::mounts(&state),
            uptime_ms(),
            &mut errors,
            &mut config_errors,
        )
    });
    for e in &config_errors[gathered.read.errors.len()..] {
        log::error!("config: {e}");
    }

    let modules = loader
        .as_ref()
        .map(|l| l.report.clone())
        .unwrap_or_else(Report::default);
    let services = supervisor.as_ref().map(|s| s.report()).unwrap_or_default();
    let ready_json = report_ready(
        &mut tl,
        &mut net,
        &hostname,
        kernel,
        modules,
        state,
        gathered,
        config_errors,
        services,
        errors,
    )
    .await;
    if let Ok(mut r) = api_ctx.ready.lock() {
        *r = ready_json;
    }

    // After the ready line: what only later work needs.
    if let Some(l) = loader.as_mut() {
        l.load_held(&sys, Path::new("/sys"), &mut new_devices);
    }
    // No more rounds: close the socket rather than let unread events fill its buffer.
    drop(uevents);
    let (power_tx, mut power_rx) = mpsc::unbounded_channel();
    tokio::spawn(power::watch_control_port(power_tx.clone()));
    tokio::spawn(power::watch_power_button(power_tx));

    loop {
        tokio::select! {
            () = recv(&mut sigchld) => {
                for s in power::reap() {
                    let ours = supervisor.as_mut().is_some_and(|sup| sup.on_exit(s, uptime_ms()));
                    if !ours {
                        log::debug!("reaped {s:?}");
                    }
                }
            }
            () = until(supervisor.as_ref().and_then(|s| s.next_deadline())) => {
                if let Some(sup) = supervisor.as_mut() {
                    sup.on_timer(uptime_ms());
                }
            }
            () = recv(&mut sigterm) => shutdown::shutdown(Action::Poweroff, "SIGTERM", &mut net, supervisor.as_mut()).await,
            () = recv(&mut sigint) => shutdown::shutdown(Action::Reboot, "SIGINT (ctrl-alt-del)", &mut net, supervisor.as_mut()).await,
            () = recv(&mut sigpwr) => shutdown::shutdown(Action::Poweroff, "SIGPWR", &mut net, supervisor.as_mut()).await,
            Some(req) = power_rx.recv() => shutdown::shutdown(req.action, &req.reason, &mut net, supervisor.as_mut()).await,
            Some(ev) = net.next_event() => net.handle(ev),
            Some(req) = api_rx.recv() => match req {
                crate::api::ToMain::Power(a) => {
                    let action = match a {
                        ros_api::PowerAction::Reboot => Action::Reboot,
                        ros_api::PowerAction::Poweroff => Action::Poweroff,
                    };
                    shutdown::shutdown(action, "asked through the API", &mut net, supervisor.as_mut()).await
                }
                crate::api::ToMain::Network { cfg, reply } => {
                    let notes = match cfg {
                        Some(c) => net.reconfigure(&c).await,
                        None => Vec::new(),
                    };
                    let view = ready::network_json(&mut net).await;
                    let _ = reply.send(crate::api::NetworkReply { notes, view });
                }
                other => crate::api::on_main(other, supervisor.as_mut(), uptime_ms()),
            },
        }
    }
}

/// Reads the metadata service at `url` and layers it in; returns the new gathering (or the old
/// one, with the failure noted, when the service gave nothing).
async fn datasource(
    url: &str,
    timeout: Option<&str>,
    before: sources::Gathered,
    cmdline: &str,
    sys: &RealSys,
    loader: Option<&mut Loader>,
    errors: &mut Vec<String>,
) -> sources::Gathered {
    let fail = |mut g: sources::Gathered, e: String| {
        log::error!("metadata: {e}");
        g.read.errors.push(ros_config::ConfigError::new(
            sources::METADATA_USER_SOURCE,
            ros_config::Pos::default(),
            "",
            e,
        ));
        for s in &mut g.sources {
            if s.source.starts_with("metadata:") {
                s.status = "failed";
            }
        }
        g
    };
    let url = match crate::metadata::parse_url(url) {
        Ok(u) => u,
        Err(e) => return fail(before, e),
    };
    let timeout = match timeout.map(str::parse::<ros_config::Dur>) {
        None => crate::metadata::DEFAULT_TIMEOUT,
        Some(Ok(d)) => d.0,
        Some(Err(e)) => {
            errors.push(format!("ros.datasource.timeout: {e}; using 10s"));
            crate::metadata::DEFAULT_TIMEOUT
        }
    };
    let fetched = match crate::metadata::fetch(&url, timeout).await {
        Ok(f) => f,
        Err(e) => return fail(before, e),
    };
    if let Err(e) = sources::keep_metadata(&fetched) {
        return fail(before, format!("keeping what it gave: {e}"));
    }
    let after = sources::gather(&sources::system_files(), cmdline);
    let (old, new) = (&before.read.data, &after.read.data);
    if new.hostname != old.hostname
        && let Some(h) = &new.hostname
    {
        errors.extend(system::set_hostname(sys, Path::new("/etc"), &h.to_string()));
        log::info!("hostname {h} (from the metadata service)");
    }
    if new.sysctl != old.sysctl {
        errors.extend(system::set_sysctls(
            sys,
            Path::new("/proc/sys"),
            &new.sysctl,
        ));
    }
    if new.modules != old.modules
        && let (Some(l), Some(m)) = (loader, &new.modules)
    {
        let names: Vec<String> = m.iter().map(|m| m.as_str().to_string()).collect();
        l.load(sys, &names);
    }
    for e in after
        .read
        .errors
        .iter()
        .filter(|e| e.source.starts_with("metadata:"))
    {
        log::error!("config: {e}");
    }
    after
}

#[allow(clippy::too_many_arguments)]
async fn report_ready(
    tl: &mut Timeline,
    net: &mut NetState,
    hostname: &str,
    kernel: String,
    modules: Report,
    state: state::Report,
    gathered: sources::Gathered,
    config_errors: Vec<ros_config::ConfigError>,
    services: Vec<crate::supervisor::ServiceReport>,
    errors: Vec<String>,
) -> serde_json::Value {
    let ready_start = uptime_ms();
    let (interfaces, routes) = ready::network_view(net).await;
    let (ns, search) = net.dns();
    tl.phases.push(Phase {
        phase: "ready",
        start_ms: ready_start,
        end_ms: uptime_ms(),
    });
    let r = Ready {
        version: ready::FORMAT_VERSION,
        ros_version: env!("CARGO_PKG_VERSION"),
        arch: std::env::consts::ARCH,
        kernel,
        hostname: hostname.to_string(),
        uptime_ms: uptime_ms(),
        timeline: std::mem::take(&mut tl.phases),
        interfaces,
        missing_interfaces: net.plan.missing.clone(),
        routes,
        dns: ready::Dns {
            nameservers: ns.iter().map(ToString::to_string).collect(),
            search,
        },
        sysctl: system::read_back(Path::new("/proc/sys"), &gathered.read.data.sysctl),
        modules,
        state,
        config_sources: gathered.sources,
        config_errors,
        services,
        errors,
        init: ready::InitInfo {
            pid: i32::try_from(std::process::id()).unwrap_or(0),
            rss_kib: ready::rss_kib(),
        },
        memory: ready::memory(),
    };
    logger::console_write(&ready::line(&r));
    serde_json::to_value(&r).unwrap_or_default()
}
