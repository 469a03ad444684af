//! A container's terminal: a new pseudo-terminal made inside the container (its own devpts), the
//! subordinate side becoming the process's controlling terminal and standard streams, the master
//! sent over the console socket (`--console-socket`, SCM_RIGHTS), as runc and crun do, so that
//! the engine (podman's conmon, `ros service exec -t`) holds the other end.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

fn e(what: &str) -> impl FnOnce(nix::errno::Errno) -> String + '_ {
    move |err| format!("{what}: {err}")
}

/// Makes a terminal, sends its master over `sock` and takes the subordinate side as this
/// process's controlling terminal and standard streams.
pub fn attach(sock: &OwnedFd) -> Result<(), String> {
    let (master, name) = open_pty()?;
    send_master(sock, &master, &name)?;
    drop(master);
    take_terminal(&name)
}

/// A new pseudo-terminal (master, subordinate's path) from this mount namespace's `/dev/ptmx`.
pub fn open_pty() -> Result<(nix::pty::PtyMaster, String), String> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(e("opening /dev/ptmx"))?;
    nix::pty::grantpt(&master).map_err(e("grantpt"))?;
    nix::pty::unlockpt(&master).map_err(e("unlockpt"))?;
    let name = nix::pty::ptsname_r(&master).map_err(e("ptsname"))?;
    Ok((master, name))
}

/// Sends a terminal's master over a connected unix socket, its path as the message (what runc
/// sends, and what conmon reads).
pub fn send_master(sock: &OwnedFd, master: &impl AsRawFd, name: &str) -> Result<(), String> {
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(name.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(e("sending the terminal to the console socket"))?;
    Ok(())
}

/// Starts a new session whose controlling terminal is `name`, which becomes fds 0, 1 and 2.
pub fn take_terminal(name: &str) -> Result<(), String> {
    let tty: OwnedFd = nix::fcntl::open(
        name,
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(e("opening the terminal"))?;
    nix::unistd::setsid().map_err(e("setsid"))?;
    // SAFETY: TIOCSCTTY takes an integer argument; tty is a valid open descriptor.
    if unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(format!(
            "making the terminal controlling: {}",
            std::io::Error::last_os_error()
        ));
    }
    for dup in [
        nix::unistd::dup2_stdin::<&OwnedFd>,
        nix::unistd::dup2_stdout::<&OwnedFd>,
        nix::unistd::dup2_stderr::<&OwnedFd>,
    ] {
        dup(&tty).map_err(e("making the terminal the standard streams"))?;
    }
    Ok(())
}
