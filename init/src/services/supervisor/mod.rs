//! The supervisor: runs the services as containers and keeps them running. Its decisions are
//! the pure [`machine`]; this executor carries out its commands with the container runtime,
//! feeds back what happened (started, failed to start, exited, health check results), and keeps
//! each service's output ([`logs`]). Services come and go through [`Supervisor::apply`], with a
//! [`ServicesDiff`]: the boot's (every service new) and each live change's.
//!
//! A container start does not hold the main loop through the container's setup (mounts,
//! `pivot_root`, seccomp: about 100 ms of the 130-215 ms a start took under TCG, measured):
//! the runtime returns once the child exists ([`ros_runtime::spawn_starting`]), a task waits for
//! its setup report on the event loop and hands it back as a [`Spawned`], and only then is the
//! service running (or failed to start). An exit reaped meanwhile is held until then.

pub mod logs;
pub mod machine;
pub mod pulls;
pub mod spec;

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use ros_api::ServiceReport;
use ros_config::Service;
use ros_config::diff::ServicesDiff;
use ros_config::service::HealthCheck;
use ros_config::system::ONCE_PER_BOOT;
use ros_runtime::config::{Device, DeviceKind};
use ros_runtime::{Container, Rootfs, SpawnOptions, Starting, Stdio};
use tokio::sync::mpsc;

use crate::services::images::ImageStore;
use machine::{Cmd, Exit, Machine, State};
use spec::{Paths, Spec};

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
    /// Groups of ended containers that still had processes (being killed): removed later, off
    /// the main loop's hot path.
    leftovers: Vec<ros_runtime::Cgroup>,
    /// Containers setting up, by pid: the service, the container, and an exit reaped before
    /// the setup's outcome was known.
    starting: BTreeMap<i32, (String, Starting, Option<WaitStatus>)>,
    spawned_tx: mpsc::UnboundedSender<Spawned>,
    spawned_rx: mpsc::UnboundedReceiver<Spawned>,
    /// Images being pulled, by the name services give them.
    pulls: BTreeMap<String, pulls::Job>,
    /// Services waiting for a pull: their definition and environment.
    pending: BTreeMap<String, (Service, Vec<String>)>,
    pull_tx: mpsc::UnboundedSender<pulls::Msg>,
    pull_rx: mpsc::UnboundedReceiver<pulls::Msg>,
    /// Processes started in services' containers through the API (`ros service exec`), by
    /// helper pid: who waits for the exit status.
    execs: BTreeMap<i32, tokio::sync::oneshot::Sender<i32>>,
    /// Until the boot's ready line: a service's group is marked idle for the CPU once its
    /// program runs (see [`Supervisor::end_boot`]).
    booting: bool,
    /// The services so marked.
    idled: BTreeSet<String>,
}

/// Where a process started with [`Supervisor::exec`] gets its streams.
#[derive(Debug)]
pub enum ExecIo {
    /// The caller's stdin, stdout and stderr.
    Streams([std::os::fd::OwnedFd; 3]),
    /// A connected unix socket: the process makes a terminal in its container, takes it, and
    /// sends its master over this (as to runc's console socket).
    Terminal(std::os::fd::OwnedFd),
}

/// What the supervisor waits for on the event loop.
#[derive(Debug)]
pub enum Event {
    Spawned(Spawned),
    Pull(pulls::Msg),
}

/// A container's setup report: empty when its program runs, else why the setup failed.
#[derive(Debug)]
pub struct Spawned {
    name: String,
    pid: i32,
    report: String,
}

/// The most of a setup report kept (the child writes one error line).
const REPORT_CAP: usize = 64 * 1024;

/// The policy of a service that must not start, and why.
fn blocked_policy(name: &str, s: &Service, why: String) -> machine::Policy {
    machine::Policy {
        name: name.to_string(),
        depends_on: s.depends().map(str::to_string).collect(),
        restart: ros_config::service::Restart::No,
        oneshot: false,
        backoff_initial_ms: 1,
        backoff_max_ms: 1,
        health: None,
        stop_signal: libc::SIGTERM,
        stop_timeout_ms: 1,
        blocked: Some(why),
    }
}

/// How often the groups of ended containers are tried again.
const LEFTOVER_RETRY_MS: u64 = 20;

fn exit_of(s: WaitStatus) -> Option<(i32, Exit)> {
    match s {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), Exit::Code(code))),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), Exit::Signal(sig as i32))),
        _ => None,
    }
}

impl Supervisor {
    /// A supervisor with no services yet.
    pub fn new(images: ImageStore, paths: Paths, opts: SpawnOptions) -> Supervisor {
        let (spawned_tx, spawned_rx) = mpsc::unbounded_channel();
        let (pull_tx, pull_rx) = mpsc::unbounded_channel();
        Supervisor {
            pulls: BTreeMap::new(),
            pending: BTreeMap::new(),
            pull_tx,
            pull_rx,
            starting: BTreeMap::new(),
            spawned_tx,
            spawned_rx,
            execs: BTreeMap::new(),
            booting: true,
            idled: BTreeSet::new(),
            machine: Machine::new(Vec::new()),
            specs: BTreeMap::new(),
            images,
            containers: BTreeMap::new(),
            logs: BTreeMap::new(),
            oom_kills: BTreeMap::new(),
            opts,
            paths,
            leftovers: Vec::new(),
        }
    }

    /// Applies a change of the services: a new one starts once its dependencies run, a changed
    /// one is restarted the new way (or kept from starting, when blocked), a removed or disabled
    /// one stops. Returns a line per service touched, and the problems.
    pub fn apply(&mut self, d: &ServicesDiff, now: u64) -> (Vec<String>, Vec<String>) {
        let (mut done, mut problems) = (Vec::new(), Vec::new());
        if let Some(r) = &d.registries {
            problems.extend(pulls::write_registries(r));
        }
        let mut cmds = Vec::new();
        for (name, def) in &d.changed {
            let Some(def) = def else {
                self.forget_pending(name);
                if let Ok(c) = self.machine.stop(name, now) {
                    if self.machine.get(name).is_some_and(|s| s.pid.is_some()) {
                        done.push(format!("{name}: stopped (disabled or no longer defined)"));
                    }
                    cmds.extend(c);
                }
                continue;
            };
            let policy = if d.blocked.contains(name) {
                self.specs.remove(name);
                self.forget_pending(name);
                blocked_policy(
                    name,
                    def,
                    "its definition has errors (see config_errors)".into(),
                )
            } else {
                self.resolve_policy(name, def, &d.env, true, &mut problems, now)
            };
            if ONCE_PER_BOOT.contains(&name.as_str()) && self.machine.get(name).is_some() {
                cmds.extend(self.machine.update_policy(policy, now));
                continue;
            }
            let running = self.machine.get(name).is_some_and(|s| s.pid.is_some());
            done.push(match (&policy.blocked, running) {
                (Some(why), _) => format!("{name}: cannot start: {why}"),
                (None, true) => format!("{name}: restarted with its new definition"),
                (None, false) => format!("{name}: started"),
            });
            cmds.extend(self.machine.redefine(policy, now));
        }
        log::debug!(
            "services: {} definitions resolved in {} ms",
            d.changed.len(),
            crate::platform::clock::uptime_ms().saturating_sub(now)
        );
        self.run(cmds, now);
        (done, problems)
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
        if let Some(done) = self.execs.remove(&pid) {
            let code = match status {
                WaitStatus::Exited(_, c) => c,
                WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
                _ => 1,
            };
            let _ = done.send(code);
            return true;
        }
        if let Some((_, _, held)) = self.starting.get_mut(&pid) {
            // Still setting up as far as we know: its report decides what this exit means.
            *held = Some(status);
            return true;
        }
        let ours = self.machine.owns(pid);
        let cmds = self.machine.exited(pid, exit, now);
        self.run(cmds, now);
        ours
    }

    /// The next container setup report (never comes while none is pending).
    pub async fn next_spawned(&mut self) -> Event {
        // Both senders are held here, so neither channel closes; were both ever closed, this
        // waits forever rather than panic.
        tokio::select! {
            Some(s) = self.spawned_rx.recv() => Event::Spawned(s),
            Some(m) = self.pull_rx.recv() => Event::Pull(m),
            else => std::future::pending().await,
        }
    }

    /// A container's setup report, or a pull's news.
    pub fn on_event(&mut self, e: Event, now: u64) {
        match e {
            Event::Spawned(s) => self.on_spawned(s, now),
            Event::Pull(m) => self.on_pull(m, now),
        }
    }

    /// A container's setup report: the service runs, or failed to start.
    pub fn on_spawned(&mut self, s: Spawned, now: u64) {
        let pid = s.pid;
        let Some((name, starting, held)) = self.starting.remove(&pid) else {
            return;
        };
        if self.machine.get(&name).and_then(|x| x.pid) != Some(pid) {
            // The service moved on while this one set up (given up as stopped, then started
            // anew): this container must not run.
            log::info!("service {name}: an abandoned container (pid {pid}) is removed");
            if let Ok(c) = starting.conclude(&s.report, held.is_some()) {
                if held.is_none() {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                if let Some(cg) = c.release() {
                    self.leftovers.push(cg);
                }
            }
            return;
        }
        let s = Spawned { name, ..s };
        let cmds = match starting.conclude(&s.report, held.is_some()) {
            Ok(container) => {
                if self.booting {
                    // Its program's own start-up waits until the boot's critical path (the
                    // other containers' setups, which run in their own groups: the init's
                    // priority does not reach across groups) is done.
                    match container.cgroup.set_idle(true) {
                        Ok(()) => {
                            self.idled.insert(s.name.clone());
                        }
                        Err(e) => log::debug!("service {}: {e}", s.name),
                    }
                }
                self.containers.insert(s.name.clone(), container);
                let mut cmds = self.machine.started(&s.name, pid, now);
                if let Some((_, exit)) = held.and_then(exit_of) {
                    cmds.extend(self.machine.exited(pid, exit, now));
                }
                cmds
            }
            Err(e) => self.machine.start_failed(&s.name, &e.to_string(), now),
        };
        self.run(cmds, now);
    }

    /// After the boot's ready line: the services' groups get the CPU as configured again.
    pub fn end_boot(&mut self) {
        self.booting = false;
        for name in std::mem::take(&mut self.idled) {
            let Some(c) = self.containers.get(&name) else {
                continue;
            };
            let configured = self.specs.get(&name).is_some_and(|s| {
                s.config
                    .resources
                    .unified
                    .iter()
                    .any(|(f, v)| f == "cpu.idle" && v == "1")
            });
            if let Err(e) = c.cgroup.set_idle(configured) {
                log::warn!("service {name}: {e}");
            }
        }
    }

    /// The reports already in, without waiting (the shutdown's polling loop).
    pub fn poll_spawned(&mut self, now: u64) {
        while let Ok(s) = self.spawned_rx.try_recv() {
            self.on_spawned(s, now);
        }
    }

    /// Until no container is setting up (each one's report handled, which may start
    /// dependents), or `timeout`: the boot's services phase ends with its containers running.
    pub async fn settle(&mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.starting.is_empty() {
            match tokio::time::timeout_at(deadline, self.spawned_rx.recv()).await {
                Ok(Some(s)) => self.on_spawned(s, crate::platform::clock::uptime_ms()),
                Ok(None) | Err(_) => {
                    let names: Vec<&String> = self.starting.values().map(|(n, _, _)| n).collect();
                    log::warn!(
                        "services still setting up after {} s: {names:?}",
                        timeout.as_secs()
                    );
                    return;
                }
            }
        }
    }

    pub fn on_timer(&mut self, now: u64) {
        self.remove_leftovers();
        let due: Vec<String> = self
            .pulls
            .iter()
            .filter(|(_, j)| !j.running && j.retry_at.is_some_and(|t| t <= now))
            .map(|(i, _)| i.clone())
            .collect();
        for image in due {
            self.start_pull(&image, now);
        }
        let cmds = self.machine.timer(now);
        self.run(cmds, now);
    }

    /// When [`Supervisor::on_timer`] must be called next.
    pub fn next_deadline(&self) -> Option<u64> {
        let leftovers = (!self.leftovers.is_empty())
            .then(|| crate::platform::clock::uptime_ms().saturating_add(LEFTOVER_RETRY_MS));
        let retry = self.pulls.values().filter_map(|j| j.retry_at).min();
        [self.machine.next_deadline(), leftovers, retry]
            .into_iter()
            .flatten()
            .min()
    }

    /// Removes the groups of ended containers that have emptied since.
    fn remove_leftovers(&mut self) {
        self.leftovers.retain(|cg| match cg.try_remove() {
            Ok(true) => false,
            Ok(false) => true,
            Err(e) => {
                log::warn!("removing {}: {e}", cg.path.display());
                false
            }
        });
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
                state: if self.pending.contains_key(&s.policy.name) {
                    "pulling".to_string()
                } else {
                    s.state.name().to_string()
                },
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
                    _ if self.pending.contains_key(&s.policy.name) => self
                        .pulls
                        .values()
                        .find(|j| j.services.contains(&s.policy.name))
                        .map(|j| j.status.clone()),
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

    /// The policy of a service to start: its spec resolved against its image, baked or pulled;
    /// an image still to pull starts (or joins) a pull and keeps the service waiting for it.
    fn resolve_policy(
        &mut self,
        name: &str,
        def: &Service,
        env: &[String],
        may_pull: bool,
        problems: &mut Vec<String>,
        now: u64,
    ) -> machine::Policy {
        self.forget_pending(name);
        let Some(image) = def.image.as_ref().map(|i| i.value.clone()) else {
            self.specs.remove(name);
            return blocked_policy(name, def, "no image given".into());
        };
        let policy = def.pull.as_deref().unwrap_or("if-not-present");
        let baked = self.images.is_baked(&image);
        if !baked && may_pull && (policy == "always" || self.images.find(&image).is_none()) {
            if policy == "never" {
                self.specs.remove(name);
                return blocked_policy(
                    name,
                    def,
                    format!("image `{image}` is not in the store, and pull = \"never\""),
                );
            }
            self.specs.remove(name);
            self.pending
                .insert(name.to_string(), (def.clone(), env.to_vec()));
            let job = self
                .pulls
                .entry(image.clone())
                .or_insert_with(|| pulls::Job::new(policy));
            job.services.insert(name.to_string());
            if !job.running && job.retry_at.is_none() {
                self.start_pull(&image, now);
            }
            return blocked_policy(
                name,
                def,
                format!("waiting for image `{image}` to be pulled"),
            );
        }
        let resolved = self
            .images
            .find(&image)
            .map(|img| spec::resolve(name, def, img, &self.paths, env, None));
        match resolved {
            Some(Ok(spec)) => {
                let p = spec.policy.clone();
                self.specs.insert(name.to_string(), spec);
                p
            }
            Some(Err(e)) => {
                problems.push(format!("service {name}: {e}"));
                self.specs.remove(name);
                blocked_policy(name, def, e)
            }
            None => {
                self.specs.remove(name);
                blocked_policy(
                    name,
                    def,
                    format!("image `{image}` is not in this machine's image store"),
                )
            }
        }
    }

    /// `name` no longer waits for a pull (redefined, disabled or removed); a pull that no
    /// service waits for is not tried again.
    fn forget_pending(&mut self, name: &str) {
        self.pending.remove(name);
        for job in self.pulls.values_mut() {
            job.services.remove(name);
        }
        self.pulls
            .retain(|_, j| j.running || !j.services.is_empty());
    }

    fn start_pull(&mut self, image: &str, now: u64) {
        let Some(job) = self.pulls.get_mut(image) else {
            return;
        };
        job.running = true;
        job.retry_at = None;
        job.status = "pulling".into();
        let _ = now;
        log::info!("image {image}: pulling");
        pulls::start(
            image.to_string(),
            job.policy.clone(),
            self.images.pulled_root().to_path_buf(),
            self.pull_tx.clone(),
        );
    }

    /// A line from a pull, or its end.
    fn on_pull(&mut self, m: pulls::Msg, now: u64) {
        let Some(job) = self.pulls.get_mut(&m.image) else {
            return;
        };
        if let Some(line) = m.line {
            job.line(&line);
            return;
        }
        let outcome = job.ended(now);
        let image = m.image;
        let mut cmds = Vec::new();
        match outcome {
            Ok(()) => {
                log::info!("image {image}: pulled");
                self.images.forget_pulled(&image);
                let job = self.pulls.remove(&image);
                for svc in job.map(|j| j.services).unwrap_or_default() {
                    if let Some((def, env)) = self.pending.remove(&svc) {
                        let mut problems = Vec::new();
                        let policy =
                            self.resolve_policy(&svc, &def, &env, false, &mut problems, now);
                        for p in problems {
                            log::warn!("{p}");
                        }
                        cmds.extend(self.machine.redefine(policy, now));
                    }
                }
            }
            Err((true, msg)) => {
                log::warn!("image {image}: {msg} (retrying)");
                if self
                    .pulls
                    .get(&image)
                    .is_some_and(|j| j.services.is_empty())
                {
                    self.pulls.remove(&image);
                }
            }
            Err((false, msg)) => {
                log::error!("image {image}: {msg}");
                let job = self.pulls.remove(&image);
                for svc in job.map(|j| j.services).unwrap_or_default() {
                    if let Some((def, _)) = self.pending.remove(&svc) {
                        let policy =
                            blocked_policy(&svc, &def, format!("pulling `{image}`: {msg}"));
                        cmds.extend(self.machine.redefine(policy, now));
                    }
                }
            }
        }
        self.run(cmds, now);
    }

    /// Carries out commands, and those their results lead to.
    fn run(&mut self, cmds: Vec<Cmd>, now: u64) {
        let mut queue: std::collections::VecDeque<Cmd> = cmds.into();
        while let Some(cmd) = queue.pop_front() {
            match cmd {
                Cmd::Note(text) => log::info!("{text}"),
                Cmd::Start(name) => match self.start_service(&name) {
                    Ok(pid) => self.machine.spawned(&name, pid),
                    Err(e) => queue.extend(self.machine.start_failed(&name, &e, now)),
                },
                Cmd::Signal { name, pid, signal } => {
                    if let Ok(sig) = Signal::try_from(signal)
                        && let Err(e) = kill(Pid::from_raw(pid), sig)
                    {
                        log::warn!("signalling service {name}: {e}");
                    }
                }
                Cmd::Kill(name) => {
                    let c = self.containers.get(&name).or_else(|| {
                        self.starting
                            .values()
                            .find(|(n, _, _)| *n == name)
                            .map(|(_, s, _)| s.container())
                    });
                    if let Some(c) = c {
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
                        // One try now; a group still emptying is killed and removed by the
                        // timer (see `leftover_deadline`), never waited for here.
                        if let Some(cg) = c.release() {
                            self.leftovers.push(cg);
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

    /// Starts `args` in the running service `name` (its namespaces, cgroup, ids, capabilities
    /// and seccomp filter) on the caller's streams or a terminal of the container's (see
    /// [`ExecIo`]). The receiver gets its exit status once reaped.
    pub fn exec(
        &mut self,
        name: &str,
        args: Vec<String>,
        io: &ExecIo,
    ) -> Result<tokio::sync::oneshot::Receiver<i32>, String> {
        if args.is_empty() {
            return Err("nothing to run: give a command".into());
        }
        let c = self
            .containers
            .get(name)
            .ok_or_else(|| format!("service {name} is not running"))?;
        let mut cfg = self.running_config(name).ok_or("unknown service")?;
        cfg.process.args = args;
        let opts = match io {
            ExecIo::Streams([i, o, e]) => ros_runtime::exec::InOptions {
                stdio: Some([i, o, e]),
                ..Default::default()
            },
            ExecIo::Terminal(sock) => {
                cfg.process.terminal = true;
                ros_runtime::exec::InOptions {
                    console: Some(sock),
                    ..Default::default()
                }
            }
        };
        let pid = ros_runtime::exec::spawn_process_in(c.pid, &c.cgroup, &cfg, &opts)
            .map_err(|e| e.to_string())?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.execs.insert(pid, tx);
        log::info!("service {name}: exec {:?} (pid {pid})", cfg.process.args);
        Ok(rx)
    }

    fn running_config(&self, name: &str) -> Option<ros_runtime::Config> {
        self.specs.get(name).map(|s| s.config.clone())
    }

    fn start_service(&mut self, name: &str) -> Result<i32, String> {
        let spec = self.specs.get(name).ok_or("unknown service")?.clone();
        let t = crate::platform::clock::uptime_ms();
        let lower = self.images.lower_dirs(&spec.image)?;
        log::debug!(
            "service {name}: layers ready in {} ms",
            crate::platform::clock::uptime_ms() - t
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
            cfg.devices.push(host_device(dev)?);
        }
        if cfg.device_rules.is_some() {
            cfg.device_rules = Some(ros_runtime::config::default_device_rules(&cfg.devices));
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
        let t = crate::platform::clock::uptime_ms();
        let starting =
            ros_runtime::spawn_starting(&cfg, stdio, &self.opts).map_err(|e| e.to_string())?;
        log::debug!(
            "service {name}: container cloned in {} ms",
            crate::platform::clock::uptime_ms() - t
        );
        logs::capture(out_r, "out", log.clone());
        logs::capture(err_r, "err", log);
        let pid = starting.pid();
        let report = match starting.report_fd() {
            Ok(fd) => fd,
            Err(e) => {
                // Cannot watch it: wait here, as a plain spawn does.
                log::warn!("service {name}: waiting for its setup on the main loop: {e}");
                let c = starting.finish().map_err(|e| e.to_string())?;
                let pid = c.pid;
                self.containers.insert(name.to_string(), c);
                let cmds = self
                    .machine
                    .started(name, pid, crate::platform::clock::uptime_ms());
                self.run(cmds, crate::platform::clock::uptime_ms());
                return Ok(pid);
            }
        };
        self.starting
            .insert(pid, (name.to_string(), starting, None));
        let tx = self.spawned_tx.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let report = crate::platform::async_fd::read_to_end(report, REPORT_CAP).await;
            let _ = tx.send(Spawned { name, pid, report });
        });
        Ok(pid)
    }
}

/// A host device a service is given, as the runtime makes it in the container.
fn host_device(d: &ros_config::service::DeviceSpec) -> Result<Device, String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(&d.host).map_err(|e| format!("device {}: {e}", d.host))?;
    let kind = if m.file_type().is_char_device() {
        DeviceKind::Char
    } else if m.file_type().is_block_device() {
        DeviceKind::Block
    } else {
        return Err(format!("{} is not a device", d.host));
    };
    Ok(Device {
        path: d.container.clone(),
        kind,
        major: nix::sys::stat::major(m.rdev()),
        minor: nix::sys::stat::minor(m.rdev()),
        mode: m.mode() & 0o777,
        access: ros_runtime::config::Access {
            read: d.read,
            write: d.write,
            mknod: d.mknod,
        },
        uid: None,
        gid: None,
    })
}
