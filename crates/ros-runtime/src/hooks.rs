//! OCI hooks: programs the runtime runs at points of a container's life, each given the
//! container's state (JSON) on its standard input. Which run where (runtime-spec `config.md`):
//! `prestart` and `createRuntime` in the runtime's namespaces once the container's exist,
//! `createContainer` in the container's mount namespace before `pivot_root`, `startContainer`
//! there before the program runs, `poststart` after it started, `poststop` after deletion.
//! A hook that fails or outlives its timeout fails the step (the first four) or is logged (the
//! last two), as the spec says.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hook {
    pub path: PathBuf,
    /// `args[0]` is the program's name as it sees it.
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hooks {
    pub prestart: Vec<Hook>,
    pub create_runtime: Vec<Hook>,
    pub create_container: Vec<Hook>,
    pub start_container: Vec<Hook>,
    pub poststart: Vec<Hook>,
    pub poststop: Vec<Hook>,
}

impl Hooks {
    pub fn from_oci(h: &oci_spec::runtime::Hooks) -> Hooks {
        let conv = |list: &Option<Vec<oci_spec::runtime::Hook>>| -> Vec<Hook> {
            list.iter()
                .flatten()
                .map(|x| Hook {
                    path: x.path().clone(),
                    args: x.args().clone().unwrap_or_default(),
                    env: x.env().clone().unwrap_or_default(),
                    // The spec: a timeout must be positive; none means no limit.
                    timeout: x
                        .timeout()
                        .and_then(|t| u64::try_from(t).ok())
                        .filter(|t| *t > 0)
                        .map(Duration::from_secs),
                })
                .collect()
        };
        Hooks {
            prestart: conv(h.prestart()),
            create_runtime: conv(h.create_runtime()),
            create_container: conv(h.create_container()),
            start_container: conv(h.start_container()),
            poststart: conv(h.poststart()),
            poststop: conv(h.poststop()),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Hooks::default()
    }
}

/// Runs `hooks` in order, each with `state` on its standard input; stops at the first that
/// fails, with what failed.
pub fn run(kind: &str, hooks: &[Hook], state: &[u8]) -> Result<(), String> {
    for h in hooks {
        run_one(h, state).map_err(|e| format!("{kind} hook {}: {e}", h.path.display()))?;
    }
    Ok(())
}

/// Runs every hook of `hooks`, a failure a logged warning (poststart, poststop).
pub fn run_warning(kind: &str, hooks: &[Hook], state: &[u8]) {
    for h in hooks {
        if let Err(e) = run_one(h, state) {
            log::warn!("{kind} hook {}: {e}", h.path.display());
        }
    }
}

fn run_one(h: &Hook, state: &[u8]) -> Result<(), String> {
    let mut cmd = Command::new(&h.path);
    if let Some((arg0, rest)) = h.args.split_first() {
        use std::os::unix::process::CommandExt;
        cmd.arg0(arg0).args(rest);
    }
    cmd.env_clear();
    for kv in &h.env {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    // A group of its own, so that a timeout ends what the hook started too.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its input may close it: that is not a failure.
        let _ = stdin.write_all(state);
    }
    let deadline = h.timeout.map(|t| Instant::now() + t);
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) if status.success() => return Ok(()),
            Some(status) => return Err(format!("ended with {status}")),
            None => {}
        }
        if let Some(d) = deadline
            && Instant::now() >= d
        {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait();
            return Err(format!(
                "still running after its timeout of {} s: killed",
                h.timeout.map_or(0, |t| t.as_secs())
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(script: &str, timeout: Option<u64>) -> Hook {
        Hook {
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["X=1".into()],
            timeout: timeout.map(Duration::from_secs),
        }
    }

    #[test]
    fn a_hook_reads_the_state_and_sees_its_env() {
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("out");
        let h = hook(
            &format!("cat > {0}; echo \" $X\" >> {0}", out.display()),
            None,
        );
        run("prestart", &[h], b"{\"id\":\"c\"}").expect("run");
        assert_eq!(
            std::fs::read_to_string(out).expect("read"),
            "{\"id\":\"c\"} 1\n"
        );
    }

    #[test]
    fn a_failing_or_slow_hook_fails_and_stops_the_rest() {
        let dir = tempfile::tempdir().expect("tmp");
        let mark = dir.path().join("mark");
        let after = hook(&format!("touch {}", mark.display()), None);
        let e =
            run("createRuntime", &[hook("exit 3", None), after.clone()], b"").expect_err("fails");
        assert!(
            e.contains("createRuntime hook /bin/sh: ended with exit status: 3"),
            "{e}"
        );
        assert!(!mark.exists(), "the hooks after a failed one do not run");
        let t = Instant::now();
        let e = run("prestart", &[hook("sleep 5", Some(1))], b"").expect_err("times out");
        assert!(e.contains("timeout of 1 s"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3));
    }
}
