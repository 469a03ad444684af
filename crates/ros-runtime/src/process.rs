//! The last steps in a container before its program runs: working folder, rlimits, signals
//! back to their defaults, ids and capabilities, no_new_privs, seccomp, then `execve`; with
//! [`Config::init`], a minimal init first (see [`crate::shim`]).

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::RawFd;

use caps::{CapSet, Capability};
use seccompiler::BpfProgram;

use crate::config::Config;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn e(what: &str) -> impl FnOnce(nix::errno::Errno) -> String + '_ {
    move |err| format!("{what}: {err}")
}

/// The program to run: `args[0]` as is when it holds a `/`, else found in the container's PATH.
pub fn resolve(program: &str, env: &[String]) -> Option<String> {
    if program.contains('/') {
        return Some(program.to_string());
    }
    let path = env
        .iter()
        .find_map(|v| v.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| format!("{}/{program}", d.trim_end_matches('/')))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
}

fn set_of(list: &[Capability]) -> HashSet<Capability> {
    list.iter().copied().collect()
}

/// Does the steps and execs; returns only on failure, with what failed. `shim`: the binary the
/// shim execs (see [`crate::shim`]).
pub fn exec(cfg: &Config, seccomp: &[BpfProgram], shim: Option<RawFd>) -> String {
    match run(cfg, seccomp, shim) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

/// This thread's nice value.
fn current_nice() -> i32 {
    // SAFETY: getpriority takes no pointers. -1 is also a valid value: errno tells them apart,
    // and for this process (who 0) it cannot fail.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

fn set_nice(n: i32) -> Result<(), String> {
    // SAFETY: setpriority takes no pointers.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) } != 0 {
        return Err(format!(
            "setting nice {n}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn run(cfg: &Config, seccomp: &[BpfProgram], shim: Option<RawFd>) -> Result<Never, String> {
    let p = &cfg.process;
    // A working folder missing from the image is made, as crun and runc do.
    if let Err(nix::errno::Errno::ENOENT) = nix::unistd::chdir(p.cwd.as_str()) {
        std::fs::create_dir_all(&p.cwd).map_err(|err| format!("creating cwd {}: {err}", p.cwd))?;
    }
    nix::unistd::chdir(p.cwd.as_str()).map_err(|err| format!("chdir {}: {err}", p.cwd))?;
    if let Some(adj) = p.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|err| format!("setting oom_score_adj {adj}: {err}"))?;
    }
    if let Some(l) = &p.lsm {
        crate::lsm::apply(l)?;
    }
    if let Some(m) = p.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m));
    }
    for (res, soft, hard) in &p.rlimits {
        let lim = libc::rlimit {
            rlim_cur: *soft,
            rlim_max: *hard,
        };
        // SAFETY: lim is a valid rlimit for the call.
        #[allow(clippy::useless_conversion)]
        if unsafe { libc::setrlimit((*res).try_into().unwrap_or_default(), &lim) } != 0 {
            return Err(format!(
                "setrlimit {res}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    // Whatever the runtime's own process ignored or blocked, the program starts with defaults.
    // By number, not nix's Signal: that enum has no real-time signals (32-64).
    for sig in 1..=64 {
        // SAFETY: resetting a disposition to SIG_DFL; invalid signal numbers just fail.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    nix::sys::signal::SigSet::empty()
        .thread_set_mask()
        .map_err(e("unblocking signals"))?;

    // Without no_new_privs a filter can only be loaded while CAP_SYS_ADMIN is still held.
    if !p.no_new_privileges {
        crate::seccomp::apply(seccomp).map_err(|err| err.to_string())?;
    }
    // The nice value: as late as can be, so that everything up to the exec runs at the caller's
    // priority (the init's, above the services'), for the shim and the program each just
    // before its exec. A value below the current one needs CAP_SYS_NICE: that is set now,
    // while the capabilities are still there.
    let late_nice = match p.nice {
        Some(n) if n < current_nice() => {
            set_nice(n)?;
            None
        }
        other => other,
    };
    if let Some(c) = &p.capabilities {
        let keep = set_of(&c.bounding);
        for cap in caps::all() {
            if !keep.contains(&cap) {
                // A capability this kernel does not know is not in the set anyway.
                let _ = caps::drop(None, CapSet::Bounding, cap);
            }
        }
    }
    ids::setgroups(&p.additional_gids).map_err(e("setgroups"))?;
    ids::setresgid(p.gid).map_err(e("setresgid"))?;
    let keep_caps = p.uid != 0 && p.capabilities.is_some();
    if keep_caps {
        nix::sys::prctl::set_keepcaps(true).map_err(e("keeping capabilities"))?;
    }
    ids::setresuid(p.uid).map_err(e("setresuid"))?;
    if let Some(c) = &p.capabilities {
        let cs = |set, list: &[Capability], name: &str| {
            caps::set(None, set, &set_of(list))
                .map_err(|err| format!("setting the {name} capabilities: {err}"))
        };
        // Each capset must leave effective within permitted: narrow effective first.
        cs(CapSet::Effective, &c.effective, "effective")?;
        cs(CapSet::Permitted, &c.permitted, "permitted")?;
        cs(CapSet::Inheritable, &c.inheritable, "inheritable")?;
        caps::clear(None, CapSet::Ambient)
            .map_err(|err| format!("clearing ambient capabilities: {err}"))?;
        for cap in &c.ambient {
            caps::raise(None, CapSet::Ambient, *cap)
                .map_err(|err| format!("raising ambient {cap}: {err}"))?;
        }
    }
    if p.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().map_err(e("no_new_privs"))?;
        crate::seccomp::apply(seccomp).map_err(|err| err.to_string())?;
    }
    if cfg.init {
        // SAFETY: single-threaded here; the child goes on to exec, the parent never returns.
        match unsafe { nix::unistd::fork() }.map_err(e("fork"))? {
            nix::unistd::ForkResult::Parent { child } => {
                if let Some(n) = late_nice {
                    // The shim is this process from here: with the program's priority.
                    let _ = set_nice(n);
                }
                crate::shim::start(shim, child)
            }
            nix::unistd::ForkResult::Child => {}
        }
    }
    // Nothing of the runtime's survives the exec but the three standard streams (and the
    // descriptors the caller asked to pass on).
    cloexec_from(3 + cfg.preserve_fds);

    let program = p.args.first().ok_or("no program")?;
    let path = resolve(program, &p.env)
        .ok_or_else(|| format!("{program}: not found in the container's PATH"))?;
    let cstr = |s: &str| CString::new(s).map_err(|_| format!("`{s}` holds a NUL byte"));
    let args = p
        .args
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let home =
        (!p.env.iter().any(|v| v.starts_with("HOME="))).then(|| format!("HOME={}", home_of(p.uid)));
    let env = p
        .env
        .iter()
        .chain(home.as_ref())
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let path_c = cstr(&path)?;
    if let Some(n) = late_nice {
        set_nice(n)?;
    }
    let err = nix::unistd::execve(&path_c, &args, &env).err();
    Err(format!(
        "exec {path}: {}",
        err.map_or_else(|| "returned".into(), |e| e.to_string())
    ))
}

/// The home folder of `uid` in the container's `/etc/passwd`, `/` when it has none (runc's
/// and crun's rule for a process without HOME).
fn home_of(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| home_in(&text, uid))
        .unwrap_or_else(|| "/".into())
}

fn home_in(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7 && f[2].parse::<u32>().ok() == Some(uid) && !f[5].is_empty())
            .then(|| f[5].to_string())
    })
}

/// Marks every descriptor from `first` on close-on-exec.
fn cloexec_from(first: u32) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on this process's own fds.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
}

/// Marks every descriptor but the standard streams close-on-exec.
pub(crate) fn cloexec_all_but_stdio() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on this process's own fds.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_programs_in_path() {
        assert_eq!(resolve("/bin/x", &[]).as_deref(), Some("/bin/x"));
        let env = vec!["PATH=/nonexistent:/bin".to_string()];
        assert_eq!(resolve("sh", &env).as_deref(), Some("/bin/sh"));
        assert_eq!(resolve("no-such-program-here", &env), None);
    }

    #[test]
    fn home_comes_from_passwd() {
        let pw = "root:x:0:0:root:/root:/bin/sh\nbroken\nsvc:x:100:100::/var/svc:/bin/false\n";
        assert_eq!(home_in(pw, 0).as_deref(), Some("/root"));
        assert_eq!(home_in(pw, 100).as_deref(), Some("/var/svc"));
        assert_eq!(home_in(pw, 5), None);
    }
}

/// The ids of the calling thread, set with the system calls themselves. A container's child is
/// one thread, but it comes from `clone3` of a caller that may have others (the init's config
/// worker): libc's `setresuid` and friends then believe there are threads to bring along (musl
/// signals them and fails with EAGAIN when they do not answer; it was seen in QEMU as
/// "setresgid: EAGAIN" on every start once the worker existed). The raw calls change only this
/// thread, which is the whole process.
pub mod ids {
    use nix::errno::Errno;

    fn check(r: libc::c_long) -> Result<(), Errno> {
        if r == -1 { Err(Errno::last()) } else { Ok(()) }
    }

    pub fn setresuid(uid: u32) -> Result<(), Errno> {
        // SAFETY: a system call with integer arguments.
        check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) })
    }

    pub fn setresgid(gid: u32) -> Result<(), Errno> {
        // SAFETY: a system call with integer arguments.
        check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })
    }

    pub fn setgroups(gids: &[u32]) -> Result<(), Errno> {
        // SAFETY: the pointer and length describe `gids`, which outlives the call.
        check(unsafe { libc::syscall(libc::SYS_setgroups, gids.len(), gids.as_ptr()) })
    }
}
