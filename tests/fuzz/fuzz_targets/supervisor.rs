//! The supervisor's state machine driven by any sequence of events, with any durations and
//! clock jumps: starts answered late or failing, exits (of services still setting up, held as
//! the executor holds them), health results, operator stops, starts and restarts, redefinitions
//! and the machine stopping. Nothing may panic, and every service in backoff or stopping has a
//! deadline.
#![no_main]
#![allow(clippy::expect_used, clippy::panic)] // a failed assertion is a finding

use std::collections::VecDeque;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ros_config::service::Restart;
use ros_init::services::supervisor::machine::{Cmd, Exit, HealthPolicy, Machine, Policy, State};

#[derive(Debug, Arbitrary)]
enum Ev {
    Timer(u64),
    Advance(u16),
    Answer(bool),
    Exit(u8, i8),
    HealthExit(u8, bool),
    Stop(u8),
    Start(u8),
    Restart(u8),
    Redefine(u8, u64, u64),
    StopAll,
}

#[derive(Debug, Arbitrary)]
struct Input {
    durations: [u64; 5],
    restarts: [u8; 4],
    events: Vec<Ev>,
}

const NAMES: [&str; 4] = ["a", "b", "c", "d"];

fn policy(name: &str, deps: &[&str], d: [u64; 5], restart: u8) -> Policy {
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

fuzz_target!(|input: Input| {
    let d = input.durations;
    let policies = vec![
        policy("a", &[], d, input.restarts[0]),
        policy("b", &["a"], d, input.restarts[1]),
        policy("c", &["a", "b"], d, input.restarts[2]),
        policy("d", &["c"], d, input.restarts[3]),
    ];
    let mut m = Machine::new(policies.clone());
    let mut pending: VecDeque<(String, i32)> = VecDeque::new();
    let mut next_pid = 100;
    let mut now = 0u64;
    let mut out = m.start(now);
    for ev in input.events.into_iter().take(500) {
        for c in out.drain(..) {
            match c {
                Cmd::Start(n) => {
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
            Ev::Advance(ms) => {
                now = now.saturating_add(u64::from(ms));
                m.timer(now)
            }
            Ev::Answer(ok) => match pending.pop_front() {
                // The executor removes a container the service has moved on from.
                Some((n, pid)) if m.get(&n).and_then(|s| s.pid) != Some(pid) => Vec::new(),
                Some((n, pid)) if ok => m.started(&n, pid, now),
                Some((n, _)) => m.start_failed(&n, "setup failed", now),
                None => Vec::new(),
            },
            Ev::Exit(i, code) => {
                let name = NAMES[usize::from(i) % 4];
                // Held by the executor while the container sets up.
                if pending.iter().any(|(n, _)| n == name) {
                    Vec::new()
                } else {
                    match m.get(name).and_then(|s| s.pid) {
                        Some(p) if code < 0 => m.exited(p, Exit::Signal(9), now),
                        Some(p) => m.exited(p, Exit::Code(i32::from(code)), now),
                        None => Vec::new(),
                    }
                }
            }
            Ev::HealthExit(i, ok) => {
                let name = NAMES[usize::from(i) % 4];
                match m.get(name).and_then(|s| s.health_check_pid()) {
                    Some(p) => m.exited(p, Exit::Code(if ok { 0 } else { 1 }), now),
                    None => Vec::new(),
                }
            }
            Ev::Stop(i) => m.stop(NAMES[usize::from(i) % 4], now).unwrap_or_default(),
            Ev::Start(i) => m
                .start_one(NAMES[usize::from(i) % 4], now)
                .unwrap_or_default(),
            Ev::Restart(i) => m
                .restart(NAMES[usize::from(i) % 4], now)
                .unwrap_or_default(),
            Ev::Redefine(i, stop, backoff) => {
                let mut p = policies[usize::from(i) % 4].clone();
                p.stop_timeout_ms = stop;
                p.backoff_initial_ms = backoff.max(1);
                m.redefine(p, now)
            }
            Ev::StopAll => m.stop_all(now),
        };
        let deadline = m.next_deadline();
        for s in m.services() {
            if let State::Backoff { until_ms }
            | State::Stopping {
                deadline_ms: until_ms,
                ..
            } = s.state
            {
                assert!(
                    deadline.is_some_and(|x| x <= until_ms),
                    "{} waits for {until_ms} but the next deadline is {deadline:?}",
                    s.policy.name
                );
            }
        }
    }
});
