//! The supervisor: runs the services as containers and keeps them running. Its decisions are
//! the pure [`machine`]; this executor carries out its commands with the container runtime,
//! feeds back what happened (started, failed to start, exited, health check results), and keeps
//! each service's output ([`logs`]).

pub mod logs;
pub mod machine;
pub mod spec;

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use ros_config::service::HealthCheck;
use ros_config::{ConfigError, Service};
use ros_runtime::config::Device;
use ros_runtime::{Container, Rootfs, SpawnOptions, Stdio};
use serde::Serialize;

use crate::images::ImageStore;
use machine::{Cmd, Exit, HealthStatus, Machine, State};
use spec::{Paths, Spec};

/// What the ready line and `ros service` show of a service.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceReport {
    pub name: String,
    pub image: String,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub restarts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<Exit>,
    pub oom_kills: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug)]
pub struct Supervisor {
    machine: Machine,
    specs: BTreeMap<String, Spec>,
    images: ImageStore,
    containers: BTreeMap<String, Container>,
    logs: BTreeMap<String, logs::Shared>,
    oom_kills: BTreeMap<String, u64>,
    opts: SpawnOptions,
    paths: Paths,
    /// The definitions and environment last applied, to see what a live change changes.
    defs: BTreeMap<String, Service>,
    env: Vec<String>,
    /// Problems in the service definitions, for the ready line.
    pub errors: Vec<ConfigError>,
}

/// What the enabled services of `services` need: their specs, the machine's policies (a
/// service kept from starting gets a blocked policy), and the definitions' problems.
fn prepare(
    services: &BTreeMap<String, Service>,
    images: &ImageStore,
    paths: &Paths,
    env: &[String],
) -> (
    BTreeMap<String, Spec>,
    Vec<machine::Policy>,
    Vec<ConfigError>,
) {
    let (mut errors, blocked) = ros_config::service::check(services, &images.names());
    let mut specs = BTreeMap::new();
    let mut policies = Vec::new();
    for (name, s) in services.iter().filter(|(_, s)| s.is_enabled()) {
        let mut why = blocked
            .contains(name)
            .then(|| "its definition has errors (see config_errors)".to_string());
        let image = s.image.as_ref().and_then(|i| images.get(&i.value));
        match image.map(|img| spec::resolve(name, s, img, paths, env, why.clone())) {
            Some(Ok(spec)) => {
                policies.push(spec.policy.clone());
                specs.insert(name.clone(), spec);
                continue;
            }
            Some(Err(e)) => {
                errors.push(ConfigError::new(
                    "services",
                    ros_config::Pos::default(),
                    &format!("services.{name}"),
                    e.clone(),
                ));
                why = Some(e);
            }
            None => {}
        }
        policies.push(machine::Policy {
            name: name.clone(),
            depends_on: s.depends().map(str::to_string).collect(),
            restart: ros_config::service::Restart::No,
            oneshot: false,
            backoff_initial_ms: 1,
            backoff_max_ms: 1,
            health: None,
            stop_signal: libc::SIGTERM,
            stop_timeout_ms: 1,
            blocked: Some(why.unwrap_or_else(|| "its image is missing".into())),
        });
    }
    (specs, policies, errors)
}

fn exit_of(s: WaitStatus) -> Option<(i32, Exit)> {
    match s {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), Exit::Code(code))),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), Exit::Signal(sig as i32))),
        _ => None,
    }
}

impl Supervisor {
    /// Prepares the enabled services of `services` (layered definitions). Definition problems
    /// become errors and keep only the services concerned from starting.
    pub fn new(
        services: &BTreeMap<String, Service>,
        images: ImageStore,
        paths: Paths,
        env: &[String],
        opts: SpawnOptions,
    ) -> Supervisor {
        let (specs, policies, errors) = prepare(services, &images, &paths, env);
        Supervisor {
            machine: Machine::new(policies),
            specs,
            images,
            containers: BTreeMap::new(),
            logs: BTreeMap::new(),
            oom_kills: BTreeMap::new(),
            opts,
            paths,
            defs: services.clone(),
            env: env.to_vec(),
            errors,
        }
    }

    /// Applies new definitions while the machine runs: a service whose definition changed (or
    /// every one, when the shared environment changed) is restarted the new way, a new or newly
    /// enabled one starts, a disabled or removed one stops. `fixed` services (the once-per-boot
    /// ones) keep their old definitions. Returns a line per service touched, and the new
    /// definitions' problems.
    pub fn redefine(
        &mut self,
        services: &BTreeMap<String, Service>,
        env: &[String],
        fixed: &[&str],
        now: u64,
    ) -> (Vec<String>, Vec<ConfigError>) {
        let mut services = services.clone();
        for name in fixed {
            match self.defs.get(*name) {
                Some(old) => services.insert((*name).to_string(), old.clone()),
                None => services.remove(*name),
            };
        }
        let (specs, policies, errors) = prepare(&services, &self.images, &self.paths, env);
        let env_changed = env != self.env.as_slice();
        let mut notes = Vec::new();
        let mut cmds = Vec::new();
        let enabled: BTreeSet<String> = policies.iter().map(|p| p.name.clone()).collect();
        for p in policies {
            let name = p.name.clone();
            let known = self.machine.get(&name).is_some();
            let was_enabled = self.defs.get(&name).is_some_and(Service::is_enabled);
            if known && was_enabled && !env_changed && self.defs.get(&name) == services.get(&name) {
                continue;
            }
            match specs.get(&name) {
                Some(s) => self.specs.insert(name.clone(), s.clone()),
                None => self.specs.remove(&name),
            };
            let running = self.machine.get(&name).is_some_and(|s| s.pid.is_some());
            notes.push(match (&p.blocked, running) {
                (Some(why), _) => format!("{name}: cannot start: {why}"),
                (None, true) => format!("{name}: restarted with its new definition"),
                (None, false) => format!("{name}: started"),
            });
            cmds.extend(self.machine.redefine(p, now));
        }
        let gone: Vec<String> = self
            .machine
            .services()
            .map(|s| s.policy.name.clone())
            .filter(|n| !enabled.contains(n) && !fixed.contains(&n.as_str()))
            .collect();
        for name in gone {
            if let Ok(c) = self.machine.stop(&name, now) {
                if self.machine.get(&name).is_some_and(|s| s.pid.is_some()) {
                    notes.push(format!("{name}: stopped (disabled or no longer defined)"));
                }
                cmds.extend(c);
            }
        }
        self.defs = services;
        self.env = env.to_vec();
        self.errors.clone_from(&errors);
        self.run(cmds, now);
        (notes, errors)
    }

    pub fn start(&mut self, now: u64) {
        let cmds = self.machine.start(now);
        self.run(cmds, now);
    }

    /// A reaped child: returns whether it was one of the supervisor's.
    pub fn on_exit(&mut self, status: WaitStatus, now: u64) -> bool {
        let Some((pid, exit)) = exit_of(status) else {
            return false;
        };
        let ours = self.machine.owns(pid);
        let cmds = self.machine.exited(pid, exit, now);
        self.run(cmds, now);
        ours
    }

    pub fn on_timer(&mut self, now: u64) {
        let cmds = self.machine.timer(now);
        self.run(cmds, now);
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.machine.next_deadline()
    }

    pub fn stop_all(&mut self, now: u64) {
        let cmds = self.machine.stop_all(now);
        self.run(cmds, now);
    }

    /// `ros service stop`.
    pub fn stop_by_request(&mut self, name: &str, now: u64) -> Result<(), String> {
        let cmds = self.machine.stop(name, now)?;
        self.run(cmds, now);
        Ok(())
    }

    /// `ros service start`.
    pub fn start_by_request(&mut self, name: &str, now: u64) -> Result<(), String> {
        let cmds = self.machine.start_one(name, now)?;
        self.run(cmds, now);
        Ok(())
    }

    /// `ros service restart`.
    pub fn restart_by_request(&mut self, name: &str, now: u64) -> Result<(), String> {
        let cmds = self.machine.restart(name, now)?;
        self.run(cmds, now);
        Ok(())
    }

    pub fn all_stopped(&self) -> bool {
        self.machine.all_stopped()
    }

    /// The last `n` lines of a service's output.
    pub fn log_tail(&self, name: &str, n: usize) -> Option<Vec<String>> {
        self.logs
            .get(name)
            .and_then(|l| l.lock().ok().map(|l| l.tail(n)))
    }

    pub fn report(&self) -> Vec<ServiceReport> {
        self.machine
            .services()
            .map(|s| ServiceReport {
                name: s.policy.name.clone(),
                image: self
                    .specs
                    .get(&s.policy.name)
                    .map(|x| x.image.clone())
                    .unwrap_or_default(),
                state: s.state.name(),
                pid: s.pid,
                restarts: s.restarts,
                health: s.health(),
                last_exit: s.last_exit,
                oom_kills: self.oom_kills.get(&s.policy.name).copied().unwrap_or(0)
                    + self
                        .containers
                        .get(&s.policy.name)
                        .map_or(0, |c| c.cgroup.oom_kills()),
                detail: match &s.state {
                    State::Failed { reason } => Some(reason.clone()),
                    State::Waiting => {
                        let waiting: Vec<&str> = s
                            .policy
                            .depends_on
                            .iter()
                            .filter(|d| self.machine.get(d).is_none_or(|x| !x.ready()))
                            .map(String::as_str)
                            .collect();
                        (!waiting.is_empty()).then(|| format!("waiting for {}", waiting.join(", ")))
                    }
                    _ => None,
                },
            })
            .collect()
    }

    /// Carries out commands, and those their results lead to.
    fn run(&mut self, cmds: Vec<Cmd>, now: u64) {
        let mut queue: std::collections::VecDeque<Cmd> = cmds.into();
        while let Some(cmd) = queue.pop_front() {
            match cmd {
                Cmd::Note(text) => log::info!("{text}"),
                Cmd::Start(name) => {
                    let more = match self.start_service(&name) {
                        Ok(pid) => self.machine.started(&name, pid, now),
                        Err(e) => self.machine.start_failed(&name, &e, now),
                    };
                    queue.extend(more);
                }
                Cmd::Signal { name, pid, signal } => {
                    if let Ok(sig) = Signal::try_from(signal)
                        && let Err(e) = kill(Pid::from_raw(pid), sig)
                    {
                        log::warn!("signalling service {name}: {e}");
                    }
                }
                Cmd::Kill(name) => {
                    if let Some(c) = self.containers.get(&name) {
                        let _ = std::fs::write(c.cgroup.path.join("cgroup.kill"), "1");
                        if c.pid > 0 {
                            let _ = kill(Pid::from_raw(c.pid), Signal::SIGKILL);
                        }
                    }
                }
                Cmd::Cleanup(name) => {
                    if let Some(c) = self.containers.remove(&name) {
                        let oom = c.cgroup.oom_kills();
                        if oom > 0 {
                            log::warn!(
                                "service {name}: the OOM killer struck {oom} time(s) (its memory limit)"
                            );
                        }
                        *self.oom_kills.entry(name.clone()).or_default() += oom;
                        if let Err(e) = c.destroy(Duration::from_millis(500)) {
                            log::warn!("cleaning up service {name}: {e}");
                        }
                    }
                }
                Cmd::Check(name) => match self.start_check(&name) {
                    Ok(pid) => self.machine.health_started(&name, pid, now),
                    Err(e) => {
                        log::warn!("health check of {name}: {e}");
                        queue.extend(self.machine.check_failed(&name, now));
                    }
                },
                Cmd::KillCheck { pid, .. } => {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }

    fn start_check(&self, name: &str) -> Result<i32, String> {
        let spec = self.specs.get(name).ok_or("unknown service")?;
        let c = self.containers.get(name).ok_or("not running")?;
        let timeout =
            Duration::from_millis(spec.policy.health.as_ref().map_or(3000, |h| h.timeout_ms));
        match &spec.health {
            Some(HealthCheck::Tcp(port)) => {
                ros_runtime::exec::spawn_tcp_probe(c.pid, *port, timeout).map_err(|e| e.to_string())
            }
            Some(HealthCheck::Exec(args)) => {
                let cfg = self.running_config(name).ok_or("not running")?;
                ros_runtime::exec::spawn_in(c.pid, &c.cgroup, &cfg, args.clone())
                    .map_err(|e| e.to_string())
            }
            None => Err("no health check".into()),
        }
    }

    fn running_config(&self, name: &str) -> Option<ros_runtime::Config> {
        self.specs.get(name).map(|s| s.config.clone())
    }

    fn start_service(&mut self, name: &str) -> Result<i32, String> {
        let spec = self.specs.get(name).ok_or("unknown service")?.clone();
        let t = crate::clock::uptime_ms();
        let lower = self.images.lower_dirs(&spec.image)?;
        log::debug!(
            "service {name}: layers ready in {} ms",
            crate::clock::uptime_ms() - t
        );
        let mut cfg = spec.config.clone();
        if let Rootfs::Overlay { upper, .. } = &cfg.rootfs {
            cfg.rootfs = Rootfs::Overlay {
                lower,
                upper: upper.clone(),
            };
        }
        for d in &spec.dirs {
            std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        for dev in &spec.devices {
            use std::os::unix::fs::{FileTypeExt, MetadataExt};
            let m = std::fs::metadata(dev).map_err(|e| format!("device {dev}: {e}"))?;
            if !m.file_type().is_char_device() {
                return Err(format!("{dev} is not a character device"));
            }
            cfg.devices.push(Device {
                path: dev.clone(),
                major: nix::sys::stat::major(m.rdev()),
                minor: nix::sys::stat::minor(m.rdev()),
                mode: m.mode() & 0o777,
            });
        }
        let log = self
            .logs
            .entry(name.to_string())
            .or_insert_with(|| {
                logs::ServiceLog::open(
                    &self.paths.logs.join("services").join(format!("{name}.log")),
                )
            })
            .clone();
        let pipe =
            || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let null: OwnedFd = std::fs::File::open("/dev/null")
            .map_err(|e| format!("/dev/null: {e}"))?
            .into();
        let stdio = Stdio {
            stdin: Some(null),
            stdout: Some(out_w),
            stderr: Some(err_w),
        };
        let t = crate::clock::uptime_ms();
        let container = ros_runtime::spawn(&cfg, stdio, &self.opts).map_err(|e| e.to_string())?;
        log::debug!(
            "service {name}: container started in {} ms",
            crate::clock::uptime_ms() - t
        );
        logs::capture(out_r, "out", log.clone());
        logs::capture(err_r, "err", log);
        let pid = container.pid;
        self.containers.insert(name.to_string(), container);
        Ok(pid)
    }

    /// Names of the services that are defined.
    pub fn names(&self) -> BTreeSet<String> {
        self.machine
            .services()
            .map(|s| s.policy.name.clone())
            .collect()
    }
}
