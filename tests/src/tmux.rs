//! A program run in a tmux pane of a given size, typed into and read back as a person at a
//! terminal would (`kubectl exec -it`): the session is killed when this is dropped.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

#[derive(Debug)]
pub struct Tmux {
    session: String,
}

fn tmux(args: &[&str]) -> Result<String> {
    let o = Command::new("tmux")
        .args(args)
        .output()
        .context("running tmux (scripts/setup.sh installs it)")?;
    ensure!(
        o.status.success(),
        "tmux {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

impl Tmux {
    /// Runs `command` (a shell command line) in a new detached session `cols` x `rows`.
    pub fn start(command: &str, cols: u16, rows: u16) -> Result<Tmux> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let session = format!(
            "ros-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        // Not through `tmux()`: the server this may start would hold captured pipes open (and
        // an `output()` waiting on them) for as long as it runs.
        let st = Command::new("tmux")
            .args(["new-session", "-d", "-s", &session, "-x"])
            .arg(cols.to_string())
            .arg("-y")
            .arg(rows.to_string())
            .arg(command)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .context("running tmux (scripts/setup.sh installs it)")?;
        ensure!(st.success(), "tmux new-session: {st}");
        Ok(Tmux { session })
    }

    /// What the pane shows now (tmux drops trailing spaces).
    pub fn screen(&self) -> Result<String> {
        tmux(&["capture-pane", "-p", "-t", &self.session])
    }

    /// Types `keys` and Enter.
    pub fn line(&self, keys: &str) -> Result<()> {
        tmux(&["send-keys", "-t", &self.session, keys, "Enter"]).map(|_| ())
    }

    /// Waits until the screen satisfies `f`; the screen then.
    pub fn wait(&self, what: &str, secs: u64, f: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.screen()?;
            if f(&s) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("no {what} on the screen after {secs} s:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .status();
    }
}

/// `kubectl exec -it POD -- /bin/sh` in a 100x30 pane, typed into: a prompt, a line whose
/// answers show the terminal (its name and size), then `exit 5`, which must be kubectl's exit
/// code. `kubectl` is the program's path, `env` what it runs with (KUBECONFIG, HOME).
pub fn exec_it_session(kubectl: &str, env: &str, pod: &str) -> Result<()> {
    let t = Tmux::start(
        &format!("{env} {kubectl} exec -it {pod} -- /bin/sh; echo \"EXIT=$?\"; sleep 60"),
        100,
        30,
    )?;
    t.wait("prompt", 60, |s| s.contains("/ #"))?;
    t.line("echo answer=$((6*7)); tty; stty size")?;
    t.wait("answers (42, a pts, 30 rows 100 columns)", 30, |s| {
        s.contains("answer=42") && s.contains("/dev/pts/") && s.contains("30 100")
    })?;
    t.line("exit 5")?;
    t.wait("kubectl's exit code 5", 30, |s| s.contains("EXIT=5"))?;
    Ok(())
}
