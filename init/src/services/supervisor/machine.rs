//! The supervisor as a state machine: events in (start everything, a container started or
//! failed to, a process exited, the clock, stop everything), commands out (start this, signal
//! that, run a health check, clean up). Pure: time is milliseconds passed in, so ordering,
//! restarts, backoff, health checks and the shutdown order are unit-tested without containers.
//!
//! Rules. A service starts once each of its dependencies runs (a one-shot dependency: once it
//! has exited 0); independent services start together. When a service's process ends, its
//! restart policy decides: `always` restarts it, `on-failure` when it failed (non-zero, or a
//! signal), `no` never; a one-shot that exits 0 is complete. Restarts wait a backoff that doubles
//! from `initial` up to `max`, and starts again from `initial` once a run lasted
//! [`STABLE_MS`]. A health check runs every interval; `retries` failures in a row make the
//! service unhealthy, and it is restarted (unless its policy is `no`). Stopping goes in reverse
//! dependency order: a service gets its stop signal once nothing that depends on it still runs,
//! and SIGKILL (to its whole cgroup) after its stop timeout.
//!
//! Time arithmetic saturates: durations come from the config (each within its documented
//! range) and the clock, and neither may make the machine panic (a property test feeds it
//! arbitrary durations and clock values).

use std::collections::BTreeMap;

pub use ros_api::report::{Exit, Health as HealthStatus};
use ros_config::service::Restart;
use serde::Serialize;

/// A run this long resets the backoff.
pub const STABLE_MS: u64 = 10_000;
/// After SIGKILL, how long to wait for the exit before counting the service stopped anyway.
pub const KILL_GRACE_MS: u64 = 5_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthPolicy {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
}

/// What the machine needs to know of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub depends_on: Vec<String>,
    pub restart: Restart,
    pub oneshot: bool,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub health: Option<HealthPolicy>,
    pub stop_signal: i32,
    pub stop_timeout_ms: u64,
    /// Why it must not start (a config error), if so.
    pub blocked: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// For its dependencies.
    Waiting,
    Starting,
    Running,
    /// Restarting at `until_ms`.
    Backoff {
        until_ms: u64,
    },
    /// A one-shot that exited 0.
    Completed,
    /// Ended, and its policy does not restart it.
    Exited,
    /// Cannot run: a config error, or its container could not start and is not retried.
    Failed {
        reason: String,
    },
    Stopping {
        deadline_ms: u64,
        killed: bool,
    },
    Stopped,
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::Starting => "starting",
            State::Running => "running",
            State::Backoff { .. } => "backoff",
            State::Completed => "completed",
            State::Exited => "exited",
            State::Failed { .. } => "failed",
            State::Stopping { .. } => "stopping",
            State::Stopped => "stopped",
        }
    }

    /// Nothing runs and nothing will without a new start.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            State::Completed | State::Exited | State::Failed { .. } | State::Stopped
        )
    }

    fn runs(&self) -> bool {
        matches!(
            self,
            State::Starting | State::Running | State::Stopping { .. }
        )
    }
}

#[derive(Debug, Clone)]
struct Health {
    status: HealthStatus,
    failures: u32,
    next_ms: Option<u64>,
    check: Option<(i32, u64)>,
}

/// One service as the machine sees it.
#[derive(Debug, Clone)]
pub struct Svc {
    pub policy: Policy,
    pub state: State,
    pub pid: Option<i32>,
    pub restarts: u32,
    pub started_ms: u64,
    pub last_exit: Option<Exit>,
    health: Health,
    backoff_ms: u64,
    /// Start again once a requested stop is done (`ros service restart`).
    restart_after_stop: bool,
}

impl Svc {
    fn new(p: Policy) -> Svc {
        Svc {
            backoff_ms: p.backoff_initial_ms,
            restart_after_stop: false,
            state: match &p.blocked {
                Some(r) => State::Failed { reason: r.clone() },
                None => State::Waiting,
            },
            policy: p,
            pid: None,
            restarts: 0,
            started_ms: 0,
            last_exit: None,
            health: Health {
                status: HealthStatus::Unknown,
                failures: 0,
                next_ms: None,
                check: None,
            },
        }
    }

    /// Whether services depending on this one may start: it runs, or, for a one-shot, it has
    /// completed.
    pub fn ready(&self) -> bool {
        match self.state {
            State::Completed => true,
            State::Running => !self.policy.oneshot,
            _ => false,
        }
    }

    pub fn health(&self) -> Option<HealthStatus> {
        self.policy.health.as_ref().map(|_| self.health.status)
    }

    /// The process of the health check running now, if one is.
    pub fn health_check_pid(&self) -> Option<i32> {
        self.health.check.map(|(pid, _)| pid)
    }
}

/// A command to the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    /// Start the service's container; answer with [`Machine::started`] or
    /// [`Machine::start_failed`].
    Start(String),
    Signal {
        name: String,
        pid: i32,
        signal: i32,
    },
    /// SIGKILL to everything in the service's cgroup.
    Kill(String),
    /// Its container is gone: release what it held.
    Cleanup(String),
    /// Run a health check; answer with [`Machine::health_started`].
    Check(String),
    /// Kill a health check that ran out of time.
    KillCheck {
        name: String,
        pid: i32,
    },
    /// A line for the log.
    Note(String),
}

#[derive(Debug, Default)]
pub struct Machine {
    svcs: BTreeMap<String, Svc>,
    stopping: bool,
}

impl Machine {
    pub fn new(policies: Vec<Policy>) -> Machine {
        let svcs = policies
            .into_iter()
            .map(|p| (p.name.clone(), Svc::new(p)))
            .collect();
        Machine {
            svcs,
            stopping: false,
        }
    }

    /// A service's definition changed while the machine runs (or it is new): it takes `p`, and a
    /// running one is stopped and started again, the new way; one that is not running starts
    /// (once its dependencies are ready). A definition with errors stops it and keeps it failed.
    pub fn redefine(&mut self, p: Policy, now: u64) -> Vec<Cmd> {
        if self.stopping {
            return Vec::new();
        }
        let name = p.name.clone();
        let mut out = Vec::new();
        match self.svcs.get_mut(&name) {
            None => {
                self.svcs.insert(name, Svc::new(p));
            }
            Some(s) => {
                s.backoff_ms = p.backoff_initial_ms;
                let blocked = p.blocked.clone();
                s.policy = p;
                match blocked {
                    Some(reason) => {
                        s.restart_after_stop = false;
                        out.extend(Self::stop_one(s, now));
                        if !s.state.runs() {
                            s.state = State::Failed { reason };
                        }
                    }
                    None if s.state.runs() => {
                        out.extend(Self::stop_one(s, now));
                        s.restart_after_stop = true;
                    }
                    None => s.state = State::Waiting,
                }
            }
        }
        out.extend(self.schedule(now));
        out
    }

    /// A once-per-boot service's definition changed through what it depends on: it takes `p`
    /// but keeps its state, so one that ran never runs again; one still waiting waits for its
    /// new dependencies.
    pub fn update_policy(&mut self, p: Policy, now: u64) -> Vec<Cmd> {
        match self.svcs.get_mut(&p.name) {
            Some(s) => s.policy = p,
            None => {
                self.svcs.insert(p.name.clone(), Svc::new(p));
            }
        }
        self.schedule(now)
    }

    pub fn services(&self) -> impl Iterator<Item = &Svc> {
        self.svcs.values()
    }

    pub fn get(&self, name: &str) -> Option<&Svc> {
        self.svcs.get(name)
    }

    /// Starts what can start.
    pub fn start(&mut self, now: u64) -> Vec<Cmd> {
        self.schedule(now)
    }

    /// A dependency is ready when it runs, or, for a one-shot, when it has completed.
    fn deps_ready(&self, s: &Svc) -> bool {
        s.policy
            .depends_on
            .iter()
            .all(|d| self.svcs.get(d).is_some_and(Svc::ready))
    }

    /// A health check of `name` could not even start: a failed check.
    pub fn check_failed(&mut self, name: &str, now: u64) -> Vec<Cmd> {
        self.check_done(name, false, now)
    }

    fn schedule(&mut self, _now: u64) -> Vec<Cmd> {
        if self.stopping {
            return Vec::new();
        }
        let ready: Vec<String> = self
            .svcs
            .values()
            .filter(|s| s.state == State::Waiting && self.deps_ready(s))
            .map(|s| s.policy.name.clone())
            .collect();
        let mut out = Vec::new();
        for name in ready {
            if let Some(s) = self.svcs.get_mut(&name) {
                s.state = State::Starting;
                out.push(Cmd::Start(name));
            }
        }
        out
    }

    /// The container of `name` exists as `pid` and is setting up (the start's outcome comes
    /// later, as [`Machine::started`] or [`Machine::start_failed`]). A stop meanwhile signals
    /// it.
    pub fn spawned(&mut self, name: &str, pid: i32) {
        if let Some(s) = self.svcs.get_mut(name)
            && s.state == State::Starting
        {
            s.pid = Some(pid);
        }
    }

    /// The container of `name` runs its program as `pid`.
    pub fn started(&mut self, name: &str, pid: i32, now: u64) -> Vec<Cmd> {
        let Some(s) = self.svcs.get_mut(name) else {
            return Vec::new();
        };
        match s.state {
            State::Starting => {}
            State::Stopping { .. } => {
                // Stopped while it was setting up: it has been signalled; its exit ends it.
                s.pid = Some(pid);
                s.started_ms = now;
                return vec![Cmd::Note(format!(
                    "service {name} started (pid {pid}) while stopping"
                ))];
            }
            _ => {
                // Given up on while it set up (it outlived SIGKILL's grace): it must not run.
                s.pid = Some(pid);
                return vec![
                    Cmd::Note(format!(
                        "service {name} started (pid {pid}) after it was counted stopped; killing it"
                    )),
                    Cmd::Kill(name.to_string()),
                ];
            }
        }
        s.state = State::Running;
        s.pid = Some(pid);
        s.started_ms = now;
        s.health.failures = 0;
        s.health.status = HealthStatus::Unknown;
        s.health.check = None;
        s.health.next_ms = s
            .policy
            .health
            .as_ref()
            .map(|h| now.saturating_add(h.interval_ms));
        let mut out = vec![Cmd::Note(format!("service {name} started (pid {pid})"))];
        if self.stopping {
            // Started while the machine was stopping: stop it at once.
            out.extend(self.stop_ready(now));
        } else {
            out.extend(self.schedule(now));
        }
        out
    }

    /// The container of `name` could not start.
    pub fn start_failed(&mut self, name: &str, error: &str, now: u64) -> Vec<Cmd> {
        let mut out = vec![Cmd::Note(format!(
            "service {name} failed to start: {error}"
        ))];
        if let Some(s) = self.svcs.get_mut(name) {
            s.pid = None;
            if !matches!(s.state, State::Starting | State::Stopping { .. }) {
                // Counted stopped already (it outlived SIGKILL's grace): stays so.
                out.push(Cmd::Cleanup(name.to_string()));
                return out;
            }
            if matches!(s.state, State::Stopping { .. }) {
                // Stopped while it was setting up, and the setup failed: stopped.
                s.state = State::Stopped;
                out.push(Cmd::Cleanup(name.to_string()));
                if std::mem::take(&mut s.restart_after_stop) && !self.stopping {
                    s.state = State::Waiting;
                    s.backoff_ms = s.policy.backoff_initial_ms;
                    out.extend(self.schedule(now));
                } else {
                    out.extend(self.stop_ready(now));
                }
                return out;
            }
        }
        let restart = match self.svcs.get(name) {
            Some(s) => s.policy.restart != Restart::No && !self.stopping,
            None => return Vec::new(),
        };
        if restart {
            out.extend(self.backoff(name, now, error));
        } else if let Some(s) = self.svcs.get_mut(name) {
            s.state = State::Failed {
                reason: error.to_string(),
            };
        }
        out.push(Cmd::Cleanup(name.to_string()));
        out
    }

    fn backoff(&mut self, name: &str, now: u64, why: &str) -> Vec<Cmd> {
        let Some(s) = self.svcs.get_mut(name) else {
            return Vec::new();
        };
        if s.started_ms > 0 && now.saturating_sub(s.started_ms) >= STABLE_MS {
            s.backoff_ms = s.policy.backoff_initial_ms;
        }
        let delay = s.backoff_ms;
        s.backoff_ms = (s.backoff_ms.saturating_mul(2))
            .min(s.policy.backoff_max_ms)
            .max(1);
        s.state = State::Backoff {
            until_ms: now.saturating_add(delay),
        };
        s.restarts = s.restarts.saturating_add(1);
        vec![Cmd::Note(format!(
            "service {name} {why}; restart {} in {} ms",
            s.restarts, delay
        ))]
    }

    /// A child process ended: a service's, or a health check's.
    pub fn exited(&mut self, pid: i32, exit: Exit, now: u64) -> Vec<Cmd> {
        if let Some(name) = self
            .svcs
            .values()
            .find(|s| s.health.check.is_some_and(|(p, _)| p == pid))
            .map(|s| s.policy.name.clone())
        {
            return self.check_done(&name, exit.success(), now);
        }
        let Some(name) = self
            .svcs
            .values()
            .find(|s| s.pid == Some(pid))
            .map(|s| s.policy.name.clone())
        else {
            return Vec::new();
        };
        let mut out = vec![Cmd::Cleanup(name.clone())];
        let Some(s) = self.svcs.get_mut(&name) else {
            return out;
        };
        s.pid = None;
        s.last_exit = Some(exit);
        s.health.check = None;
        if s.state == State::Stopped {
            // Counted stopped when it outlived SIGKILL's grace; this is its late exit.
            out.push(Cmd::Note(format!("service {name} ended at last ({exit})")));
            return out;
        }
        if self.stopping || matches!(s.state, State::Stopping { .. }) {
            s.state = State::Stopped;
            out.push(Cmd::Note(format!("service {name} stopped ({exit})")));
            if std::mem::take(&mut s.restart_after_stop) && !self.stopping {
                s.state = State::Waiting;
                s.backoff_ms = s.policy.backoff_initial_ms;
                out.extend(self.schedule(now));
                return out;
            }
            out.extend(self.stop_ready(now));
            return out;
        }
        if s.policy.oneshot && exit.success() {
            s.state = State::Completed;
            out.push(Cmd::Note(format!("service {name} completed")));
            out.extend(self.schedule(now));
            return out;
        }
        let restart = match s.policy.restart {
            Restart::Always => true,
            Restart::OnFailure => !exit.success(),
            Restart::No => false,
        };
        if restart {
            out.extend(self.backoff(&name, now, &exit.to_string()));
        } else {
            s.state = State::Exited;
            out.push(Cmd::Note(format!("service {name} {exit}")));
        }
        out
    }

    /// Whether `pid` is a service's process or one of its health checks.
    pub fn owns(&self, pid: i32) -> bool {
        self.svcs
            .values()
            .any(|s| s.pid == Some(pid) || s.health.check.is_some_and(|(p, _)| p == pid))
    }

    /// A health check of `name` runs as `pid`.
    pub fn health_started(&mut self, name: &str, pid: i32, now: u64) {
        if let Some(s) = self.svcs.get_mut(name)
            && let Some(h) = &s.policy.health
        {
            s.health.check = Some((pid, now.saturating_add(h.timeout_ms)));
        }
    }

    fn check_done(&mut self, name: &str, ok: bool, now: u64) -> Vec<Cmd> {
        let Some(s) = self.svcs.get_mut(name) else {
            return Vec::new();
        };
        let Some(h) = s.policy.health.clone() else {
            return Vec::new();
        };
        s.health.check = None;
        s.health.next_ms = Some(now.saturating_add(h.interval_ms));
        if ok {
            let was = s.health.status;
            s.health.failures = 0;
            s.health.status = HealthStatus::Healthy;
            if was != HealthStatus::Healthy {
                return vec![Cmd::Note(format!("service {name} is healthy"))];
            }
            return Vec::new();
        }
        s.health.failures = s.health.failures.saturating_add(1);
        if s.health.failures < h.retries {
            return Vec::new();
        }
        s.health.status = HealthStatus::Unhealthy;
        let mut out = vec![Cmd::Note(format!(
            "service {name} is unhealthy ({} failed checks)",
            s.health.failures
        ))];
        if s.policy.restart != Restart::No && s.state == State::Running {
            out.push(Cmd::Kill(name.to_string()));
        }
        out
    }

    /// The clock reached `now`.
    pub fn timer(&mut self, now: u64) -> Vec<Cmd> {
        let mut out = Vec::new();
        let names: Vec<String> = self.svcs.keys().cloned().collect();
        for name in names {
            let Some(s) = self.svcs.get_mut(&name) else {
                continue;
            };
            match s.state.clone() {
                State::Backoff { until_ms } if until_ms <= now && !self.stopping => {
                    s.state = State::Waiting;
                }
                State::Stopping {
                    deadline_ms,
                    killed,
                } if deadline_ms <= now => {
                    if killed {
                        // SIGKILL did not end it in time: count it stopped.
                        s.state = State::Stopped;
                        out.push(Cmd::Note(format!(
                            "service {name} did not exit after SIGKILL"
                        )));
                        out.push(Cmd::Cleanup(name.clone()));
                    } else {
                        s.state = State::Stopping {
                            deadline_ms: now.saturating_add(KILL_GRACE_MS),
                            killed: true,
                        };
                        out.push(Cmd::Note(format!(
                            "service {name} did not stop within {} ms; killing it",
                            s.policy.stop_timeout_ms
                        )));
                        out.push(Cmd::Kill(name.clone()));
                    }
                }
                State::Running => {
                    if let Some((pid, deadline)) = s.health.check {
                        if deadline <= now {
                            out.push(Cmd::KillCheck {
                                name: name.clone(),
                                pid,
                            });
                            // Counted as a failure when its exit comes in.
                        }
                    } else if s.health.next_ms.is_some_and(|t| t <= now) {
                        s.health.next_ms = None;
                        out.push(Cmd::Check(name.clone()));
                    }
                }
                _ => {}
            }
        }
        out.extend(self.schedule(now));
        out
    }

    /// When [`Machine::timer`] must be called next.
    pub fn next_deadline(&self) -> Option<u64> {
        self.svcs
            .values()
            .filter_map(|s| match &s.state {
                State::Backoff { until_ms } => Some(*until_ms),
                State::Stopping { deadline_ms, .. } => Some(*deadline_ms),
                State::Running => match s.health.check {
                    Some((_, deadline)) => Some(deadline),
                    None => s.health.next_ms,
                },
                _ => None,
            })
            .min()
    }

    /// Stops every service, dependents before their dependencies.
    pub fn stop_all(&mut self, now: u64) -> Vec<Cmd> {
        self.stopping = true;
        let mut out = Vec::new();
        for s in self.svcs.values_mut() {
            if !s.state.runs() && !s.state.is_final() {
                s.state = State::Stopped;
            }
            if let Some((pid, _)) = s.health.check.take() {
                out.push(Cmd::KillCheck {
                    name: s.policy.name.clone(),
                    pid,
                });
            }
        }
        out.extend(self.stop_ready(now));
        out
    }

    /// Sends the stop signal to each running service that no running service depends on.
    fn stop_ready(&mut self, now: u64) -> Vec<Cmd> {
        if !self.stopping {
            return Vec::new();
        }
        let running_dependents = |name: &str, svcs: &BTreeMap<String, Svc>| {
            svcs.values()
                .any(|o| o.state.runs() && o.policy.depends_on.iter().any(|d| d == name))
        };
        let ready: Vec<String> = self
            .svcs
            .values()
            .filter(|s| {
                matches!(s.state, State::Running | State::Starting)
                    && !running_dependents(&s.policy.name, &self.svcs)
            })
            .map(|s| s.policy.name.clone())
            .collect();
        let mut out = Vec::new();
        for name in ready {
            let Some(s) = self.svcs.get_mut(&name) else {
                continue;
            };
            s.state = State::Stopping {
                deadline_ms: now.saturating_add(s.policy.stop_timeout_ms),
                killed: false,
            };
            if let Some(pid) = s.pid {
                out.push(Cmd::Note(format!("stopping service {name}")));
                out.push(Cmd::Signal {
                    name: name.clone(),
                    pid,
                    signal: s.policy.stop_signal,
                });
            }
        }
        out
    }

    /// An operator's stop (`ros service stop`): the stop signal, SIGKILL after the stop
    /// timeout, and the service stays stopped, whatever its restart policy, until started.
    pub fn stop(&mut self, name: &str, now: u64) -> Result<Vec<Cmd>, String> {
        let s = self
            .svcs
            .get_mut(name)
            .ok_or_else(|| format!("no service `{name}`"))?;
        s.restart_after_stop = false;
        Ok(Self::stop_one(s, now))
    }

    fn stop_one(s: &mut Svc, now: u64) -> Vec<Cmd> {
        let name = s.policy.name.clone();
        let mut out = Vec::new();
        if let Some((pid, _)) = s.health.check.take() {
            out.push(Cmd::KillCheck {
                name: name.clone(),
                pid,
            });
        }
        match (&s.state, s.pid) {
            (State::Running | State::Starting, Some(pid)) => {
                s.state = State::Stopping {
                    deadline_ms: now.saturating_add(s.policy.stop_timeout_ms),
                    killed: false,
                };
                out.push(Cmd::Note(format!("stopping service {name}")));
                out.push(Cmd::Signal {
                    name,
                    pid,
                    signal: s.policy.stop_signal,
                });
            }
            (State::Stopping { .. }, _) => {}
            (State::Failed { .. } | State::Completed | State::Exited | State::Stopped, _) => {}
            _ => {
                s.state = State::Stopped;
                out.push(Cmd::Note(format!("service {name} stopped")));
            }
        }
        out
    }

    /// An operator's start (`ros service start`): a stopped, exited, completed or failed
    /// service, or one waiting out its backoff, starts now (once its dependencies are ready),
    /// with its backoff reset. A service kept from starting by a config error cannot.
    pub fn start_one(&mut self, name: &str, now: u64) -> Result<Vec<Cmd>, String> {
        if self.stopping {
            return Err("the machine is shutting down".into());
        }
        let s = self
            .svcs
            .get_mut(name)
            .ok_or_else(|| format!("no service `{name}`"))?;
        if let Some(reason) = &s.policy.blocked {
            return Err(format!("service `{name}` cannot start: {reason}"));
        }
        match s.state {
            State::Stopping { .. } => s.restart_after_stop = true,
            State::Running | State::Starting | State::Waiting => {}
            _ => {
                s.state = State::Waiting;
                s.backoff_ms = s.policy.backoff_initial_ms;
            }
        }
        Ok(self.schedule(now))
    }

    /// `ros service restart`: stop, then start once it has exited (or start, when not running).
    pub fn restart(&mut self, name: &str, now: u64) -> Result<Vec<Cmd>, String> {
        let s = self
            .svcs
            .get_mut(name)
            .ok_or_else(|| format!("no service `{name}`"))?;
        if s.policy.blocked.is_none() && s.state.runs() {
            s.restart_after_stop = true;
            return Ok(Self::stop_one(s, now));
        }
        self.start_one(name, now)
    }

    /// Whether everything has stopped (after [`Machine::stop_all`]).
    pub fn all_stopped(&self) -> bool {
        self.svcs.values().all(|s| s.state.is_final())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, deps: &[&str]) -> Policy {
        Policy {
            name: name.into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            restart: Restart::Always,
            oneshot: false,
            backoff_initial_ms: 1000,
            backoff_max_ms: 8000,
            health: None,
            stop_signal: 15,
            stop_timeout_ms: 5000,
            blocked: None,
        }
    }

    fn starts(cmds: &[Cmd]) -> Vec<String> {
        cmds.iter()
            .filter_map(|c| match c {
                Cmd::Start(n) => Some(n.clone()),
                _ => None,
            })
            .collect()
    }

    fn signals(cmds: &[Cmd]) -> Vec<String> {
        cmds.iter()
            .filter_map(|c| match c {
                Cmd::Signal { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    /// syslog <- console, syslog <- ntp, console <- web
    fn machine() -> Machine {
        Machine::new(vec![
            policy("syslog", &[]),
            policy("console", &["syslog"]),
            policy("ntp", &["syslog"]),
            policy("web", &["console"]),
            policy("solo", &[]),
        ])
    }

    #[test]
    fn dependencies_order_the_start_and_independents_start_together() {
        let mut m = machine();
        assert_eq!(starts(&m.start(0)), ["solo", "syslog"]);
        let c = m.started("syslog", 10, 5);
        assert_eq!(starts(&c), ["console", "ntp"], "both once syslog runs");
        assert_eq!(starts(&m.started("ntp", 12, 6)), Vec::<String>::new());
        assert_eq!(starts(&m.started("console", 11, 6)), ["web"]);
    }

    #[test]
    fn a_blocked_service_and_its_dependents_never_start() {
        let mut p = vec![policy("a", &[]), policy("b", &["a"])];
        p[0].blocked = Some("no image `x`".into());
        let mut m = Machine::new(p);
        assert!(starts(&m.start(0)).is_empty());
        assert!(matches!(
            m.get("a").map(|s| &s.state),
            Some(State::Failed { .. })
        ));
        assert_eq!(m.get("b").map(|s| s.state.clone()), Some(State::Waiting));
    }

    #[test]
    fn restarts_back_off_doubling_to_the_cap_and_reset_after_a_stable_run() {
        let mut m = Machine::new(vec![policy("crash", &[])]);
        m.start(0);
        let mut now = 0;
        let mut pid = 100;
        let mut delays = Vec::new();
        for _ in 0..6 {
            m.started("crash", pid, now);
            now += 10;
            m.exited(pid, Exit::Code(1), now);
            let Some(State::Backoff { until_ms }) = m.get("crash").map(|s| s.state.clone()) else {
                panic!("no backoff")
            };
            delays.push(until_ms - now);
            // Nothing happens before the backoff ends.
            assert!(starts(&m.timer(until_ms - 1)).is_empty());
            now = until_ms;
            assert_eq!(starts(&m.timer(now)), ["crash"]);
            pid += 1;
        }
        assert_eq!(delays, [1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(m.get("crash").map(|s| s.restarts), Some(6));
        // A run longer than STABLE_MS starts the backoff over.
        m.started("crash", pid, now);
        now += STABLE_MS;
        m.exited(pid, Exit::Signal(9), now);
        assert_eq!(
            m.get("crash").map(|s| s.state.clone()),
            Some(State::Backoff {
                until_ms: now + 1000
            })
        );
    }

    #[test]
    fn restart_policies() {
        let mut p = vec![
            policy("onf", &[]),
            policy("no", &[]),
            policy("shot", &[]),
            policy("after", &["shot"]),
        ];
        p[0].restart = Restart::OnFailure;
        p[1].restart = Restart::No;
        p[2].oneshot = true;
        p[2].restart = Restart::No;
        let mut m = Machine::new(p);
        assert_eq!(
            starts(&m.start(0)),
            ["no", "onf", "shot"],
            "after waits for the one-shot to complete"
        );
        m.started("onf", 1, 0);
        m.started("no", 2, 0);
        m.started("shot", 3, 0);
        m.exited(1, Exit::Code(0), 5);
        assert_eq!(
            m.get("onf").map(|s| s.state.clone()),
            Some(State::Exited),
            "on-failure: a clean exit stays down"
        );
        m.exited(2, Exit::Code(3), 5);
        assert_eq!(m.get("no").map(|s| s.state.clone()), Some(State::Exited));
        assert_eq!(m.get("no").and_then(|s| s.last_exit), Some(Exit::Code(3)));
        let c = m.exited(3, Exit::Code(0), 6);
        assert_eq!(
            m.get("shot").map(|s| s.state.clone()),
            Some(State::Completed)
        );
        assert_eq!(starts(&c), ["after"]);
    }

    #[test]
    fn a_failing_one_shot_keeps_its_dependents_waiting() {
        let mut p = vec![policy("shot", &[]), policy("after", &["shot"])];
        p[0].oneshot = true;
        p[0].restart = Restart::No;
        let mut m = Machine::new(p);
        m.start(0);
        m.started("shot", 3, 0);
        let c = m.exited(3, Exit::Code(1), 1);
        assert!(starts(&c).is_empty());
        assert_eq!(
            m.get("after").map(|s| s.state.clone()),
            Some(State::Waiting)
        );
    }

    #[test]
    fn start_failures_retry_with_backoff_unless_the_policy_is_no() {
        let mut p = vec![policy("a", &[]), policy("b", &[])];
        p[1].restart = Restart::No;
        let mut m = Machine::new(p);
        m.start(0);
        m.start_failed("a", "no such image", 0);
        m.start_failed("b", "no such image", 0);
        assert_eq!(
            m.get("a").map(|s| s.state.clone()),
            Some(State::Backoff { until_ms: 1000 })
        );
        assert!(matches!(
            m.get("b").map(|s| &s.state),
            Some(State::Failed { .. })
        ));
    }

    #[test]
    fn health_checks_run_each_interval_and_unhealthy_restarts() {
        let mut p = policy("web", &[]);
        p.health = Some(HealthPolicy {
            interval_ms: 1000,
            timeout_ms: 300,
            retries: 2,
        });
        let mut m = Machine::new(vec![p]);
        m.start(0);
        m.started("web", 50, 0);
        assert_eq!(m.next_deadline(), Some(1000));
        assert_eq!(m.timer(1000), [Cmd::Check("web".into())]);
        m.health_started("web", 60, 1000);
        assert_eq!(m.next_deadline(), Some(1300), "the check's timeout");
        m.exited(60, Exit::Code(0), 1100);
        assert_eq!(
            m.get("web").and_then(Svc::health),
            Some(HealthStatus::Healthy)
        );
        // Two failures in a row: one timed out, one failed.
        assert_eq!(m.timer(2100), [Cmd::Check("web".into())]);
        m.health_started("web", 61, 2100);
        assert_eq!(
            m.timer(2400),
            [Cmd::KillCheck {
                name: "web".into(),
                pid: 61
            }]
        );
        assert!(
            m.exited(61, Exit::Signal(9), 2401).is_empty(),
            "one failure is not enough"
        );
        m.timer(3401);
        m.health_started("web", 62, 3401);
        let c = m.exited(62, Exit::Code(1), 3402);
        assert!(c.contains(&Cmd::Kill("web".into())), "{c:?}");
        assert_eq!(
            m.get("web").and_then(Svc::health),
            Some(HealthStatus::Unhealthy)
        );
        // The kill ends the process: restarted by its policy.
        m.exited(50, Exit::Signal(9), 3410);
        assert!(matches!(
            m.get("web").map(|s| &s.state),
            Some(State::Backoff { .. })
        ));
    }

    #[test]
    fn stop_goes_in_reverse_dependency_order_and_kills_after_the_timeout() {
        let mut m = machine();
        m.start(0);
        m.started("syslog", 10, 0);
        m.started("console", 11, 0);
        m.started("ntp", 12, 0);
        m.started("web", 13, 0);
        m.started("solo", 14, 0);
        let c = m.stop_all(100);
        assert_eq!(signals(&c), ["ntp", "solo", "web"], "leaves first");
        let c = m.exited(13, Exit::Code(0), 200);
        assert_eq!(signals(&c), ["console"]);
        m.exited(12, Exit::Code(0), 210);
        m.exited(14, Exit::Code(0), 210);
        let c = m.exited(11, Exit::Signal(15), 220);
        assert_eq!(signals(&c), ["syslog"], "syslog last");
        // syslog ignores its stop signal: SIGKILL after its timeout.
        assert!(m.timer(5219).is_empty());
        let c = m.timer(5220);
        assert!(c.contains(&Cmd::Kill("syslog".into())), "{c:?}");
        assert!(!m.all_stopped());
        m.exited(10, Exit::Signal(9), 5230);
        assert!(m.all_stopped());
        // Nothing restarts while stopping.
        assert!(starts(&m.timer(100_000)).is_empty());
    }

    #[test]
    fn services_in_backoff_or_waiting_are_simply_stopped() {
        let mut m = Machine::new(vec![policy("a", &[]), policy("b", &["a"])]);
        m.start(0);
        m.start_failed("a", "x", 0);
        m.stop_all(1);
        assert!(m.all_stopped());
    }

    #[test]
    fn an_operator_stop_holds_until_a_start_and_restart_comes_back() {
        let mut m = Machine::new(vec![policy("web", &[])]);
        m.start(0);
        m.started("web", 10, 1);
        let c = m.stop("web", 100).expect("stop");
        assert_eq!(signals(&c), ["web"]);
        assert_eq!(m.get("web").map(|s| s.state.name()), Some("stopping"));
        // Its exit does not restart it, whatever the policy says.
        let c = m.exited(10, Exit::Signal(15), 200);
        assert!(starts(&c).is_empty());
        assert_eq!(m.get("web").map(|s| s.state.name()), Some("stopped"));
        assert!(m.timer(100_000).is_empty(), "nothing scheduled");
        // Started again.
        assert_eq!(starts(&m.start_one("web", 300).expect("start")), ["web"]);
        m.started("web", 11, 301);
        // Restart: a stop, then a start once it has exited.
        let c = m.restart("web", 400).expect("restart");
        assert_eq!(signals(&c), ["web"]);
        assert_eq!(starts(&m.exited(11, Exit::Code(0), 450)), ["web"]);
        // A stop that does not finish in time gets SIGKILL.
        m.started("web", 12, 500);
        m.stop("web", 600).expect("stop");
        let c = m.timer(600 + 5000);
        assert!(c.contains(&Cmd::Kill("web".into())), "{c:?}");
        // Unknown names and blocked services are errors.
        assert!(m.stop("nope", 0).is_err());
        let mut p = policy("bad", &[]);
        p.blocked = Some("unknown image".into());
        let mut m = Machine::new(vec![p]);
        assert!(
            m.start_one("bad", 0)
                .expect_err("blocked")
                .contains("unknown image")
        );
    }

    #[test]
    fn a_stop_while_the_container_sets_up() {
        let mut m = Machine::new(vec![policy("web", &[]), policy("api", &["web"])]);
        assert_eq!(starts(&m.start(0)), ["web"]);
        m.spawned("web", 10);
        // Stopped mid-setup: signalled, and its start does not make it run.
        assert_eq!(signals(&m.stop("web", 5).expect("stop")), ["web"]);
        let c = m.started("web", 10, 6);
        assert!(starts(&c).is_empty(), "no dependent starts: {c:?}");
        assert_eq!(m.get("web").map(|s| s.state.name()), Some("stopping"));
        assert!(starts(&m.exited(10, Exit::Signal(15), 7)).is_empty());
        assert_eq!(m.get("web").map(|s| s.state.name()), Some("stopped"));
        // Restarted mid-setup, and the setup fails: it starts again, not in backoff.
        assert_eq!(starts(&m.start_one("web", 10).expect("start")), ["web"]);
        m.spawned("web", 11);
        assert_eq!(signals(&m.restart("web", 11).expect("restart")), ["web"]);
        assert_eq!(starts(&m.start_failed("web", "mount failed", 12)), ["web"]);
        assert_eq!(m.get("web").and_then(|s| s.pid), None);
        // The machine stopping mid-setup: signalled, then stopped by the failed setup.
        m.spawned("web", 12);
        assert_eq!(signals(&m.stop_all(20)), ["web"]);
        m.start_failed("web", "killed", 21);
        assert!(m.all_stopped());
    }

    #[test]
    fn a_service_in_backoff_starts_at_once_when_asked() {
        let mut m = Machine::new(vec![policy("crash", &[])]);
        m.start(0);
        m.started("crash", 10, 1);
        m.exited(10, Exit::Code(1), 2);
        assert_eq!(m.get("crash").map(|s| s.state.name()), Some("backoff"));
        assert_eq!(starts(&m.start_one("crash", 3).expect("start")), ["crash"]);
    }

    #[test]
    fn a_redefined_service_restarts_the_new_way_and_a_new_one_starts() {
        let mut m = Machine::new(vec![policy("web", &[]), policy("db", &[])]);
        m.start(0);
        m.started("web", 10, 1);
        m.stop("db", 2).expect("stop");
        // Running: stopped, then started again once it has exited.
        let mut p = policy("web", &[]);
        p.stop_timeout_ms = 9_000;
        let c = m.redefine(p, 100);
        assert_eq!(signals(&c), ["web"]);
        assert_eq!(m.get("web").map(|s| s.policy.stop_timeout_ms), Some(9_000));
        assert_eq!(starts(&m.exited(10, Exit::Signal(15), 150)), ["web"]);
        // Not running (stopped by an operator): starts.
        assert_eq!(starts(&m.redefine(policy("db", &[]), 200)), ["db"]);
        // New, depending on a running one: starts once that is ready.
        m.started("web", 11, 201);
        assert_eq!(starts(&m.redefine(policy("api", &["web"]), 300)), ["api"]);
        // A definition with errors stops it and it stays down.
        m.started("api", 12, 301);
        let mut bad = policy("api", &["web"]);
        bad.blocked = Some("unknown image".into());
        assert_eq!(signals(&m.redefine(bad, 400)), ["api"]);
        assert!(starts(&m.exited(12, Exit::Signal(15), 450)).is_empty());
        assert!(m.start_one("api", 500).is_err());
        // Nothing while the machine stops.
        m.stop_all(600);
        assert!(m.redefine(policy("late", &[]), 700).is_empty());
    }

    mod properties {
        //! The machine under arbitrary durations (up to `u64::MAX` ms) and a clock that jumps
        //! anywhere, forwards or back: it never panics, and what it says stays consistent.

        use proptest::prelude::*;

        use super::super::*;

        #[derive(Debug, Clone)]
        enum Ev {
            Timer(u64),
            /// Answer the oldest pending start: with a pid, or a failure.
            Answer(bool),
            /// The process of the n-th running service exits with this code.
            Exit(usize, i32),
            HealthExit(usize, bool),
            Stop(usize),
            Start(usize),
            Restart(usize),
            Redefine(usize, u64),
            StopAll,
        }

        fn durations() -> impl Strategy<Value = u64> {
            prop_oneof![
                Just(0u64),
                Just(1),
                1u64..100_000,
                Just(u64::MAX),
                any::<u64>()
            ]
        }

        fn policy_of(name: &str, deps: &[&str], d: [u64; 5], restart: u8) -> Policy {
            Policy {
                name: name.into(),
                depends_on: deps.iter().map(|s| s.to_string()).collect(),
                restart: match restart % 3 {
                    0 => Restart::Always,
                    1 => Restart::OnFailure,
                    _ => Restart::No,
                },
                oneshot: restart.is_multiple_of(5),
                backoff_initial_ms: d[0].max(1),
                backoff_max_ms: d[1].max(1),
                health: d[2].is_multiple_of(2).then_some(HealthPolicy {
                    interval_ms: d[2],
                    timeout_ms: d[3],
                    retries: 2,
                }),
                stop_signal: 15,
                stop_timeout_ms: d[4],
                blocked: None,
            }
        }

        fn event() -> impl Strategy<Value = Ev> {
            prop_oneof![
                any::<u64>().prop_map(Ev::Timer),
                (0u64..1_000_000).prop_map(Ev::Timer),
                any::<bool>().prop_map(Ev::Answer),
                (0usize..4, -1i32..3).prop_map(|(i, c)| Ev::Exit(i, c)),
                (0usize..4, any::<bool>()).prop_map(|(i, ok)| Ev::HealthExit(i, ok)),
                (0usize..4).prop_map(Ev::Stop),
                (0usize..4).prop_map(Ev::Start),
                (0usize..4).prop_map(Ev::Restart),
                (0usize..4, durations()).prop_map(|(i, d)| Ev::Redefine(i, d)),
                Just(Ev::StopAll),
            ]
        }

        const NAMES: [&str; 4] = ["a", "b", "c", "d"];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            #[test]
            fn arbitrary_durations_and_clock_jumps(
                d in proptest::array::uniform5(durations()),
                d2 in proptest::array::uniform5(durations()),
                restarts in proptest::array::uniform4(any::<u8>()),
                events in proptest::collection::vec(event(), 1..120),
            ) {
                let policies = vec![
                    policy_of("a", &[], d, restarts[0]),
                    policy_of("b", &["a"], d2, restarts[1]),
                    policy_of("c", &["a", "b"], d, restarts[2]),
                    policy_of("d", &[], d2, restarts[3]),
                ];
                let mut m = Machine::new(policies.clone());
                let mut pending: std::collections::VecDeque<(String, i32)> = Default::default();
                let mut next_pid = 100;
                let mut now = 0u64;
                let mut out = m.start(now);
                for ev in events {
                    for c in out.drain(..) {
                        match c {
                            Cmd::Start(n) => {
                                prop_assert_eq!(m.get(&n).map(|s| s.state.name()), Some("starting"));
                                // The container exists at once; its setup's outcome comes later.
                                next_pid += 1;
                                m.spawned(&n, next_pid);
                                pending.push_back((n, next_pid));
                            }
                            Cmd::Check(n) => {
                                next_pid += 1;
                                m.health_started(&n, next_pid, now);
                            }
                            _ => {}
                        }
                    }
                    out = match ev {
                        Ev::Timer(t) => {
                            now = t;
                            m.timer(now)
                        }
                        Ev::Answer(ok) => match pending.pop_front() {
                            // The executor removes a container the service has moved on from
                            // (given up on, then started anew) without asking the machine.
                            Some((n, pid)) if m.get(&n).and_then(|s| s.pid) != Some(pid) => {
                                Vec::new()
                            }
                            Some((n, pid)) if ok => {
                                let before = m.get(&n).map(|s| s.state.name());
                                let out = m.started(&n, pid, now);
                                // Any other state: given up on while it set up (counted
                                // stopped after SIGKILL's grace, maybe started again since,
                                // waiting for its dependencies, or redefined): it must not run.
                                if !matches!(before, Some("starting" | "stopping")) {
                                    prop_assert!(
                                        out.iter().any(|c| matches!(c, Cmd::Kill(k) if *k == n)),
                                        "{n} answered in state {before:?}: {out:?}"
                                    );
                                }
                                out
                            }
                            Some((n, _)) => m.start_failed(&n, "no", now),
                            None => Vec::new(),
                        },
                        Ev::Exit(i, code) => {
                            // The executor holds back the exit of a container still setting up
                            // until its start's outcome is known.
                            let pid = m
                                .get(NAMES[i])
                                .filter(|_| !pending.iter().any(|(n, _)| n == NAMES[i]))
                                .and_then(|s| s.pid);
                            match pid {
                                Some(p) if code < 0 => m.exited(p, Exit::Signal(9), now),
                                Some(p) => m.exited(p, Exit::Code(code), now),
                                None => Vec::new(),
                            }
                        }
                        Ev::HealthExit(i, ok) => {
                            let pid = m.get(NAMES[i]).and_then(|s| s.health.check.map(|c| c.0));
                            match pid {
                                Some(p) => m.exited(p, Exit::Code(if ok { 0 } else { 1 }), now),
                                None => Vec::new(),
                            }
                        }
                        Ev::Stop(i) => m.stop(NAMES[i], now).unwrap_or_default(),
                        Ev::Start(i) => m.start_one(NAMES[i], now).unwrap_or_default(),
                        Ev::Restart(i) => m.restart(NAMES[i], now).unwrap_or_default(),
                        Ev::Redefine(i, dur) => {
                            let mut p = policies[i].clone();
                            p.stop_timeout_ms = dur;
                            p.backoff_initial_ms = dur.max(1);
                            m.redefine(p, now)
                        }
                        Ev::StopAll => m.stop_all(now),
                    };
                    // A service in backoff or stopping has its deadline in next_deadline.
                    let deadline = m.next_deadline();
                    for s in m.services() {
                        match s.state {
                            State::Backoff { until_ms } | State::Stopping { deadline_ms: until_ms, .. } => {
                                prop_assert!(deadline.is_some_and(|d| d <= until_ms), "{s:?} {deadline:?}");
                            }
                            _ => {}
                        }
                        if let Some(pid) = s.pid {
                            prop_assert!(m.owns(pid));
                        }
                    }
                }
            }
        }
    }
}
