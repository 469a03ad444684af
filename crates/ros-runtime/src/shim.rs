//! The shim: a minimal init as a container's PID 1 (with [`Config::init`](crate::Config)). A
//! PID namespace's init gets only the signals it handles, so a program that handles none (many
//! do not) would ignore its stop signal there. The shim passes every catchable signal on to the
//! program, reaps what is orphaned in the container, and exits with the program's status (128 +
//! the signal when it was killed).
//!
//! The shim starts as a fork of the runtime's child, which is a fork of the caller (the init). A
//! process that only forked keeps a copy-on-write image of its parent's memory, and every page
//! the parent writes afterwards becomes one more private copy in the shim: measured in QEMU,
//! ~170 KiB per shim soon after boot, growing with the init's later work. So the shim execs a
//! fresh program image ([`SpawnOptions::shim`](crate::SpawnOptions)): the caller's own binary,
//! which must call [`run_if_shim`] first thing in `main`. Without one, or if the exec fails, the
//! forked copy runs the same loop.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::ffi::CString;
use std::os::fd::RawFd;

/// The name the shim is started under (`argv[0]`); `argv[1]` is the program's pid.
pub const ARG0: &str = "ros-shim";

/// In a binary that serves as the shim: when started as the shim, runs it and never returns;
/// otherwise returns at once.
pub fn run_if_shim() {
    let mut args = std::env::args_os();
    if args.next().as_deref() != Some(std::ffi::OsStr::new(ARG0)) {
        return;
    }
    match args
        .next()
        .and_then(|a| a.to_str().and_then(|s| s.parse::<i32>().ok()))
    {
        Some(pid) if pid > 0 => run(Pid::from_raw(pid)),
        // SAFETY: _exit ends the process without unwinding.
        _ => unsafe { libc::_exit(125) },
    }
}

/// Becomes the shim for `child`: execs `shim` (an `O_PATH` descriptor of a binary that calls
/// [`run_if_shim`]) when given, else (or when that fails) runs the loop in this process. The
/// exec happens inside the container, so the binary must be static (the init is; a dynamically
/// linked `ros-runtime` on a host finds no loader there and keeps the forked shim).
pub(crate) fn start(shim: Option<RawFd>, child: Pid) -> ! {
    // Signals stay blocked across the exec, and those already pending stay pending, so none is
    // lost before the new image handles them.
    let _ = SigSet::all().thread_block();
    // Nothing of the runtime's may reach the shim (above all the setup's error pipe, whose end
    // the runtime waits on): everything but the standard streams closes at exec.
    crate::process::cloexec_all_but_stdio();
    if let Some(fd) = shim
        && let (Ok(arg0), Ok(pid)) = (CString::new(ARG0), CString::new(child.as_raw().to_string()))
    {
        // SAFETY: fd is a valid descriptor borrowed for the call; on success nothing returns.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let empty: [CString; 0] = [];
        let _ = nix::unistd::fexecve(fd, &[arg0, pid], &empty);
    }
    // The exec did not happen: the shim stays this process and closes what the exec would have.
    // SAFETY: close_range takes no pointers.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    run(child)
}

/// The shim's loop.
fn run(child: Pid) -> ! {
    extern "C" fn noop(_: libc::c_int) {}
    let all = SigSet::all();
    let _ = all.thread_block();
    // A namespace's init drops a signal whose disposition is the default when it is sent, even
    // while blocked; with a handler (never run: they stay blocked) it stays pending for sigwait.
    // By number, not nix's Signal: that enum has no real-time signals (32-64).
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: noop is an extern "C" handler doing nothing.
            unsafe { libc::signal(sig, noop as *const () as libc::sighandler_t) };
        }
    }
    let _ = nix::sys::prctl::set_name(c"ros-shim");
    loop {
        // Reap first: the program may have ended before the handlers above were in place (its
        // SIGCHLD then was dropped).
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                    // SAFETY: _exit ends the shim without unwinding.
                    unsafe { libc::_exit(code) }
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                    // SAFETY: as above.
                    unsafe { libc::_exit(128 + sig as i32) }
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        match all.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(sig) => {
                let _ = nix::sys::signal::kill(child, sig);
            }
        }
    }
}
