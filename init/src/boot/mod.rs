//! The boot, in order: the mount table, modules for the hardware, the state disk, the config
//! (read and checked), then the config applied in phases (the host's settings, the network, the
//! datasource when one is named, the services), the ready line, and the main loop, which owns
//! what runs from then on ([`main_loop`]). Each phase is timed on the uptime clock for the
//! timeline. Nothing here returns or panics out: a failed step is logged and reported in the
//! ready line, and the boot goes on.

pub mod main_loop;
pub mod ready;

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;

use futures::FutureExt;
use ros_api::report::{self, Phase, Ready};
use ros_config::{ConfigError, Context, Loaded};

use crate::api;
use crate::config::{self, Current, apply, sources};
use crate::platform::clock::uptime_ms;
use crate::platform::kmod::Loader;
use crate::platform::power::{self, Action};
use crate::platform::sys::RealSys;
use crate::platform::{logger, mounts, shutdown, state, uevent};
use main_loop::{MainLoop, ToMain};

/// How long the boot waits for its containers' setups before the ready line.
const SERVICES_SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

/// The boot timeline.
#[derive(Debug, Default)]
pub struct Timeline {
    pub phases: Vec<Phase>,
}

impl Timeline {
    pub fn phase<T>(&mut self, phase: &str, f: impl FnOnce() -> T) -> T {
        let start_ms = uptime_ms();
        let out = f();
        self.push(phase, start_ms);
        out
    }

    pub async fn phase_async<T>(&mut self, phase: &str, f: impl Future<Output = T>) -> T {
        let start_ms = uptime_ms();
        let out = f.await;
        self.push(phase, start_ms);
        out
    }

    fn push(&mut self, phase: &str, start_ms: u64) {
        let end_ms = uptime_ms();
        log::debug!("phase {phase} took {} ms", end_ms - start_ms);
        self.phases.push(Phase {
            phase: phase.to_string(),
            start_ms,
            end_ms,
        });
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
    // The init runs above the default priority: until the ready line its work is the boot's
    // critical path, and the services it has started (their own start-up, shell scripts and
    // all) should not delay it; after, the supervisor's loop and the API stay quick while a
    // service spins. Set before any thread exists (threads inherit it); containers' setups
    // inherit it too, and each service's program is put back at nice 0 just before its exec
    // (ros_runtime::Process::nice).
    // SAFETY: setpriority takes no pointers.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, INIT_NICE) } != 0 {
        log::warn!(
            "cannot raise the init's priority: {}",
            std::io::Error::last_os_error()
        );
    }
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

/// The serial console's device, from the kernel's list of active consoles (the last is
/// `/dev/console`'s).
fn serial_console(sysfs: &Path) -> Option<String> {
    let active = std::fs::read_to_string(sysfs.join("class/tty/console/active")).ok()?;
    let name = active
        .split_whitespace()
        .rev()
        .find(|n| n.starts_with("ttyS") || n.starts_with("ttyAMA") || n.starts_with("hvc"))?;
    Some(format!("/dev/{name}"))
}

/// The init's nice value (the services run at 0).
const INIT_NICE: i32 = -10;

/// Modules that devices ask for but that nothing before the ready line needs (the power
/// button's, the control port's); loaded right after it.
const AFTER_READY: &[&str] = &["button", "evdev", "virtio_console"];

/// At most this many config errors are written to the console log one by one.
const LOGGED_ERRORS: usize = 50;

/// Logs config errors, the first [`LOGGED_ERRORS`] of them one per line.
fn log_config_errors(errors: &[ConfigError]) {
    for e in errors.iter().take(LOGGED_ERRORS) {
        log::error!("config: {e}");
    }
    if errors.len() > LOGGED_ERRORS {
        log::error!(
            "config: {} more errors (`ros config validate` lists them all)",
            errors.len() - LOGGED_ERRORS
        );
    }
}

async fn boot(started: u64) -> ! {
    let mut errors = Vec::new();
    let mut tl = Timeline::default();
    tl.phases.push(Phase {
        phase: "start".into(),
        start_ms: started,
        end_ms: uptime_ms(),
    });
    // Ctrl-alt-del becomes SIGINT to the init instead of an immediate reboot; the signals are
    // watched from now on.
    let _ = nix::sys::reboot::set_cad_enabled(false);
    let signals = main_loop::Signals::watch();

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
    let uevents = uevent::Uevents::open();
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
            crate::services::images::ImageStore::open(
                Path::new(crate::services::images::STORE),
                Path::new(crate::services::images::MOUNTS),
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

    let t = uptime_ms();
    let ctx = Context::shipped(ros_config::system::Facts {
        serial_console: serial_console(Path::new("/sys")),
    });
    log::debug!("shipped definitions read in {} ms", uptime_ms() - t);
    let loaded = tl.phase("config", || {
        match config::nocloud::read(&sys, loader.as_mut()) {
            Ok(Some(drive)) => {
                log::info!("config: NoCloud drive {}", drive.device);
                for e in &drive.errors {
                    log::error!("config: NoCloud drive: {e}");
                    errors.push(format!("config: NoCloud drive: {e}"));
                }
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
        ros_config::load(&sources::read_all(), &cmdline, &ctx)
    });
    log_config_errors(&loaded.errors);

    // The owner of what runs, from the first change the config makes.
    let mut m = MainLoop::new(
        signals,
        loader.take(),
        Current::new(Loaded::default(), ctx),
        first_nic_mac(Path::new("/sys")),
    );
    let boot_diff = ros_config::diff::diff(None, &loaded, &m.current.ctx);
    let notes = tl.phase("system", || apply::system(&boot_diff, &mut m));
    errors.extend(notes.errors);

    tl.phase_async("network", async {
        m.net = Some(crate::network::start("/etc/resolv.conf".into()).await);
        let notes = apply::network(&boot_diff, &mut m).await;
        errors.extend(notes.errors);
        if let Some(n) = m.net.as_mut() {
            n.wait_online(loaded.data.network.online_timeout()).await;
            errors.append(&mut n.errors);
        }
    })
    .await;

    // The metadata service, once the network is up: its config layers in, and what it changes
    // of the host and the network is applied (the services start after, with all of it).
    let loaded = match ros_config::cmdline::option(&params, config::metadata::URL_OPTION) {
        Some(url) => {
            let timeout = ros_config::cmdline::option(&params, config::metadata::TIMEOUT_OPTION);
            tl.phase_async(
                "datasource",
                datasource(url, timeout, loaded, &cmdline, &mut m, &mut errors),
            )
            .await
        }
        None => loaded,
    };
    let loaded = Arc::new(loaded);
    m.current.set(Arc::clone(&loaded));

    // The API's socket exists before the services start (the console mounts its folder);
    // requests that need the main loop wait for it.
    let api_ctx = Arc::new(api::Ctx::new(
        cmdline.clone(),
        state.persistent,
        m.tx.clone(),
        m.current.clone(),
        Arc::clone(&m.stall),
    ));
    match api::transport::bind() {
        Ok(l) => {
            tokio::spawn(api::transport::serve(l, api_ctx.clone()));
        }
        Err(e) => {
            log::error!("api: cannot listen on {}: {e}", ros_api::SOCKET);
            errors.push(format!("api: cannot listen on {}: {e}", ros_api::SOCKET));
        }
    }

    let boot_diff = ros_config::diff::diff(None, &loaded, &m.current.ctx);
    tl.phase_async("services", async {
        let t = uptime_ms();
        m.sup =
            crate::services::prepare(&sys, m.loader.as_mut(), state::mounts(&state), &mut errors);
        if m.sup.is_some() && !state.persistent {
            match crate::services::images::memory_store(&sys) {
                Ok(bytes) => log::info!(
                    "images: no state disk; pulled images are kept in memory (at most {} MiB)",
                    bytes >> 20
                ),
                Err(e) => {
                    log::error!("images: {e}");
                    errors.push(format!("images: {e}"));
                }
            }
        }
        log::debug!(
            "services: modules, root switch and image store in {} ms",
            uptime_ms() - t
        );
        let notes = apply::services(&boot_diff, &mut m);
        errors.extend(notes.errors);
        // The ready line shows the services as their setups ended (the main loop would handle
        // the reports just the same; this keeps the line meaningful).
        if let Some(s) = m.sup.as_mut() {
            s.settle(SERVICES_SETTLE).await;
        }
    })
    .await;

    let ready_start = uptime_ms();
    let net = match m.net.as_mut() {
        Some(n) => ready::network(n).await,
        None => report::NetworkView::default(),
    };
    tl.phases.push(Phase {
        phase: "ready".into(),
        start_ms: ready_start,
        end_ms: uptime_ms(),
    });
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let listed = loaded.errors.len().min(report::MAX_LISTED_ERRORS);
    let r = Ready {
        version: report::FORMAT_VERSION,
        ros_version: env!("CARGO_PKG_VERSION").into(),
        arch: std::env::consts::ARCH.into(),
        kernel,
        hostname,
        uptime_ms: uptime_ms(),
        timeline: std::mem::take(&mut tl.phases),
        interfaces: net.interfaces,
        missing_interfaces: net.missing_interfaces,
        routes: net.routes,
        dns: net.dns,
        sysctl: config::system::read_back(Path::new("/proc/sys"), &loaded.data.sysctl),
        modules: m
            .loader
            .as_ref()
            .map(|l| l.report.clone())
            .unwrap_or_default(),
        state,
        config_sources: loaded.sources.clone(),
        config_errors: loaded.errors[..listed].to_vec(),
        config_errors_omitted: loaded.errors.len() - listed,
        services: m.sup.as_ref().map(|s| s.report()).unwrap_or_default(),
        errors,
        init: report::InitInfo {
            pid: i32::try_from(std::process::id()).unwrap_or(0),
            rss_kib: ready::rss_kib(),
            max_stall_ms: m.stall.max_ms(),
        },
        memory: ready::memory(),
    };
    // How much of the boot so far the CPU waited (for devices, the network), for the debug log
    // (read only when that is on).
    if log::log_enabled!(log::Level::Debug)
        && let Some(idle) = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|u| u.split_whitespace().nth(1)?.parse::<f64>().ok())
    {
        log::debug!("the CPUs were idle {:.0} ms until now", idle * 1000.0);
    }
    logger::console_write(&report::line(&r));
    api_ctx.set_ready(r);
    if let Some(s) = m.sup.as_mut() {
        s.end_boot();
    }

    // After the ready line: what only later work needs.
    if let Some(l) = m.loader.as_mut() {
        l.load_held(&sys, Path::new("/sys"), &mut new_devices);
    }
    // No more rounds: close the socket rather than let unread events fill its buffer.
    drop(uevents);
    for watch in [power::Watch::ControlPort, power::Watch::PowerButton] {
        let tx = m.tx.clone();
        tokio::spawn(power::watch(watch, move |r| {
            let _ = tx.send(ToMain::Power(r));
        }));
    }
    m.run().await
}

/// Reads the metadata service at `url` and layers it in: what it changes of the host and the
/// network is applied now. Returns the new config (or the old one, with the failure noted, when
/// the service gave nothing).
async fn datasource(
    url: &str,
    timeout: Option<&str>,
    before: Loaded,
    cmdline: &str,
    m: &mut MainLoop,
    errors: &mut Vec<String>,
) -> Loaded {
    let fail = |mut l: Loaded, e: String| {
        log::error!("metadata: {e}");
        l.errors.push(ConfigError::new(
            sources::METADATA_USER_SOURCE,
            ros_config::Pos::default(),
            "",
            e,
        ));
        for s in &mut l.sources {
            if s.source.starts_with("metadata:") {
                s.status = ros_config::load::Status::Failed;
            }
        }
        l
    };
    let url = match config::metadata::parse_url(url) {
        Ok(u) => u,
        Err(e) => return fail(before, e),
    };
    let timeout = match timeout.map(|t| {
        let n = ros_config::node::Node {
            pos: ros_config::Pos::START,
            value: ros_config::node::Value::Text(t.to_string()),
        };
        let mut w = ros_config::walk::Walker::new("cmdline");
        w.duration(
            "ros.datasource.timeout",
            &n,
            ros_config::types::ranges::ONLINE_TIMEOUT,
        )
        .ok_or_else(|| w.errors.iter().map(ToString::to_string).collect::<Vec<_>>())
    }) {
        None => config::metadata::DEFAULT_TIMEOUT,
        Some(Ok(d)) => d.0,
        Some(Err(e)) => {
            errors.push(format!("{}; using 10s", e.join("; ")));
            config::metadata::DEFAULT_TIMEOUT
        }
    };
    let fetched = match config::metadata::fetch(&url, timeout).await {
        Ok(f) => f,
        Err(e) => return fail(before, e),
    };
    if let Err(e) = sources::keep_metadata(&fetched) {
        return fail(before, format!("keeping what it gave: {e}"));
    }
    let ctx = Arc::clone(&m.current.ctx);
    let cmdline = cmdline.to_string();
    let after =
        match config::worker::run(move || ros_config::load(&sources::read_all(), &cmdline, &ctx))
            .await
        {
            Ok(a) => a,
            Err(e) => return fail(before, e),
        };
    let fresh: Vec<ConfigError> = after
        .errors
        .iter()
        .filter(|e| e.source.starts_with("metadata:"))
        .cloned()
        .collect();
    log_config_errors(&fresh);
    let d = ros_config::diff::diff(Some(&before), &after, &m.current.ctx);
    let mut notes = apply::system(&d, m);
    notes.extend(apply::network(&d, m).await);
    if d.network.is_some()
        && let Some(n) = m.net.as_mut()
    {
        // Only interfaces whose setup changes are touched, so the one the service was read
        // through keeps its lease unless the service changes that one.
        log::info!("metadata: network applied: {}", notes.done.join("; "));
        n.wait_online(after.data.network.online_timeout()).await;
        errors.append(&mut n.errors);
    }
    errors.extend(notes.errors);
    after
}
