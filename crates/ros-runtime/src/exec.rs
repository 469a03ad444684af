//! Running something inside a running container (health checks, later `ros` commands): a helper
//! process joins the container's cgroup and namespaces, then forks once more, so that the PID
//! namespace applies, and the command runs with the container's own ids, capabilities,
//! no_new_privs and seccomp filter. The helper ends with the command's status, so the caller's
//! reaper sees the result. Forks hold [`crate::forksafe::fork_guard`], as [`crate::spawn`] does.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};

use crate::cgroup::Cgroup;
use crate::config::Config;
use crate::error::{Error, Result};

/// The namespaces of `pid` that differ from the caller's, opened, mount namespace last.
fn namespaces(pid: i32) -> Result<Vec<(OwnedFd, CloneFlags)>> {
    let mut out = Vec::new();
    for (name, flag) in [
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let theirs = format!("/proc/{pid}/ns/{name}");
        let same = std::fs::read_link(&theirs).ok()
            == std::fs::read_link(format!("/proc/self/ns/{name}")).ok();
        if same {
            continue;
        }
        let f = std::fs::File::open(&theirs)
            .map_err(|e| Error::Spawn(format!("opening {theirs}: {e}")))?;
        out.push((OwnedFd::from(f), flag));
    }
    Ok(out)
}

/// Writes to fd 2 with one system call: a forked child must not take std's stderr lock, which
/// another thread of the parent may have held at the fork.
fn to_stderr(text: &str) {
    // SAFETY: fd 2 is borrowed for the call only.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(2) };
    let _ = nix::unistd::write(fd, text.as_bytes());
}

/// `fork` with no other thread inside the allocator (see [`crate::forksafe`]).
fn guarded_fork() -> nix::Result<ForkResult> {
    let guard = crate::forksafe::fork_guard();
    // SAFETY: no other thread holds the allocator (the guard) and the child only makes system
    // calls, forks again or execs, and ends with _exit.
    let r = unsafe { fork() };
    drop(guard);
    r
}

fn exit_code(s: nix::Result<WaitStatus>) -> i32 {
    match s {
        Ok(WaitStatus::Exited(_, c)) => c,
        Ok(WaitStatus::Signaled(_, sig, _)) => 128 + sig as i32,
        _ => 127,
    }
}

/// Starts `args` in the container whose first process is `pid`, with `cfg`'s process settings.
/// Returns the helper's pid; its exit status is the command's.
pub fn spawn_in(pid: i32, cgroup: &Cgroup, cfg: &Config, args: Vec<String>) -> Result<i32> {
    if args.is_empty() {
        return Err(Error::Config("nothing to run".into()));
    }
    let mut run = cfg.clone();
    run.process.args = args;
    spawn_process_in(pid, cgroup, &run, &InOptions::default())
}

/// How [`spawn_process_in`] starts its process.
#[derive(Debug, Default)]
pub struct InOptions<'a> {
    /// A connected unix socket that receives the process's new terminal (with
    /// `process.terminal`).
    pub console: Option<&'a OwnedFd>,
    /// Where the helper writes the process's pid (decimal, as the caller's PID namespace sees
    /// it) before ending at once, instead of waiting for it: the process is then reparented to
    /// the caller's nearest subreaper (the caller itself, if it set PR_SET_CHILD_SUBREAPER),
    /// as `runc exec` leaves it to conmon.
    pub report_pid: Option<OwnedFd>,
    /// The process's standard streams (stdin, stdout, stderr); none: the helper's.
    pub stdio: Option<[&'a OwnedFd; 3]>,
    /// Make the process a session leader whose controlling terminal is its stdin (a
    /// terminal's subordinate side given in `stdio`).
    pub controlling_tty: bool,
}

/// The group an exec'd process joins: the container's own, or, when the container handed
/// controllers to groups below it (a container that runs containers), a leaf `exec` below it,
/// since cgroup v2 puts no process in a group that gives its children controllers.
fn exec_cgroup(path: &std::path::Path) -> Result<std::path::PathBuf> {
    let delegated = std::fs::read_to_string(path.join("cgroup.subtree_control"))
        .is_ok_and(|c| !c.trim().is_empty());
    if !delegated {
        return Ok(path.to_path_buf());
    }
    let leaf = path.join("exec");
    match std::fs::create_dir(&leaf) {
        Ok(()) => Ok(leaf),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(leaf),
        Err(e) => Err(Error::Spawn(format!("making {}: {e}", leaf.display()))),
    }
}

/// Starts `cfg.process` in the container whose first process is `pid` (`cfg` is the
/// container's own config, for the ids, capabilities and seccomp filter the process keeps).
/// Returns the helper's pid; its exit status is the process's, unless
/// [`InOptions::report_pid`] is given.
pub fn spawn_process_in(pid: i32, cgroup: &Cgroup, cfg: &Config, o: &InOptions) -> Result<i32> {
    if cfg.process.args.is_empty() {
        return Err(Error::Config("nothing to run".into()));
    }
    if cfg.process.terminal && o.console.is_none() {
        return Err(Error::Config(
            "a terminal needs a console socket to send it to".into(),
        ));
    }
    let ns = namespaces(pid)?;
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(exec_cgroup(&cgroup.path)?.join("cgroup.procs"))
        .map_err(|e| Error::Spawn(format!("opening the container's cgroup: {e}")))?;
    let programs = cfg
        .seccomp
        .programs(cfg.process.capabilities.as_ref().map(|c| &c.bounding[..]))?;
    let mut run = cfg.clone();
    // The process is not the container's PID 1: no shim of its own.
    run.init = false;
    match guarded_fork() {
        Ok(ForkResult::Parent { child }) => Ok(child.as_raw()),
        Ok(ForkResult::Child) => {
            let code = (|| -> std::result::Result<i32, String> {
                (&procs)
                    .write_all(b"0")
                    .map_err(|e| format!("joining the cgroup: {e}"))?;
                for (fd, kind) in &ns {
                    nix::sched::setns(fd, *kind).map_err(|e| format!("joining {kind:?}: {e}"))?;
                }
                // SAFETY: as above, in the single-threaded helper.
                match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
                    ForkResult::Child => {
                        if let Err(e) = take_stdio(o) {
                            to_stderr(&format!("exec in container: {e}\n"));
                            // SAFETY: _exit ends the process without unwinding.
                            unsafe { libc::_exit(126) }
                        }
                        if let Some(sock) = o.console
                            && run.process.terminal
                            && let Err(e) = crate::console::attach(sock)
                        {
                            to_stderr(&format!("exec in container: {e}\n"));
                            // SAFETY: _exit ends the process without unwinding.
                            unsafe { libc::_exit(126) }
                        }
                        let err = crate::process::exec(&run, &programs, None);
                        to_stderr(&format!("exec in container: {err}\n"));
                        // SAFETY: _exit ends the process without unwinding.
                        unsafe { libc::_exit(127) }
                    }
                    ForkResult::Parent { child } => match &o.report_pid {
                        Some(w) => {
                            nix::unistd::write(w, child.as_raw().to_string().as_bytes())
                                .map_err(|e| format!("reporting the pid: {e}"))?;
                            Ok(0)
                        }
                        None => Ok(exit_code(waitpid(child, None))),
                    },
                }
            })()
            .unwrap_or_else(|e| {
                to_stderr(&format!("{e}\n"));
                126
            });
            // SAFETY: _exit ends the helper without running the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        Err(e) => Err(Error::Spawn(format!("fork: {e}"))),
    }
}

/// The exec'd process's side: its streams, and its terminal.
fn take_stdio(o: &InOptions) -> std::result::Result<(), String> {
    if let Some([i, out, err]) = o.stdio {
        let dup =
            |r: nix::Result<()>, what: &str| r.map_err(|e| format!("redirecting {what}: {e}"));
        dup(nix::unistd::dup2_stdin(i), "stdin")?;
        dup(nix::unistd::dup2_stdout(out), "stdout")?;
        dup(nix::unistd::dup2_stderr(err), "stderr")?;
    }
    if o.controlling_tty {
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
        // SAFETY: TIOCSCTTY takes an integer argument; fd 0 is open (the terminal).
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
            return Err(format!(
                "taking the terminal: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Starts a helper that connects to TCP `port` on the loopback of the network namespace of
/// `pid`; it exits 0 when the connection is made within `timeout`.
pub fn spawn_tcp_probe(pid: i32, port: u16, timeout: Duration) -> Result<i32> {
    let net = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| Error::Spawn(format!("opening /proc/{pid}/ns/net: {e}")))?;
    match guarded_fork() {
        Ok(ForkResult::Parent { child }) => Ok(child.as_raw()),
        Ok(ForkResult::Child) => {
            let ok = nix::sched::setns(&net, CloneFlags::CLONE_NEWNET).is_ok()
                && ["127.0.0.1", "[::1]"].iter().any(|host| {
                    format!("{host}:{port}").parse().is_ok_and(|addr| {
                        std::net::TcpStream::connect_timeout(&addr, timeout).is_ok()
                    })
                });
            // SAFETY: _exit ends the helper without running the parent's exit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        Err(e) => Err(Error::Spawn(format!("fork: {e}"))),
    }
}
