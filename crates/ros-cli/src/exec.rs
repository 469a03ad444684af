//! `ros service exec NAME [-t] -- CMD...`: the command runs in the service's container on this
//! process's own standard streams, sent to the init with the request (no copying through the
//! init). With `-t` it gets a terminal of its container's (so `tty` names it there): one end of
//! a socket pair goes with the request, the command's side sends the terminal's master back
//! over it, and this process copies between its own terminal (put in raw mode) and that master
//! until the init answers that the command ended. Exits with the command's status.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use ros_api::{Reply, Request, Response};

use super::Cli;

pub fn run(cli: &Cli, name: &str, tty: bool, command: &[String]) -> Result<(), u8> {
    let req = Request::ServiceExec {
        name: name.to_string(),
        args: command.to_vec(),
        tty,
    };
    let reply = if tty {
        with_terminal(cli, req)?
    } else {
        let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
        super::call(cli, req, &[i.as_fd(), o.as_fd(), e.as_fd()], |_| {})?
    };
    match reply {
        Reply::Ok {
            result: Response::Exited { code },
            ..
        } => match u8::try_from(code) {
            Ok(0) => Ok(()),
            Ok(c) => Err(c),
            Err(_) => Err(1),
        },
        Reply::Error { message, code, .. } => {
            eprintln!("ros: {message}");
            Err(code.exit_code())
        }
        other => {
            eprintln!("ros: unexpected answer: {other:?}");
            Err(1)
        }
    }
}

fn fail(what: &str) -> impl FnOnce(nix::errno::Errno) -> u8 + '_ {
    move |e| {
        eprintln!("ros: {what}: {e}");
        1
    }
}

/// Puts a terminal in raw mode until dropped.
struct Raw {
    fd: std::io::Stdin,
    saved: nix::sys::termios::Termios,
}

impl Raw {
    fn new() -> Option<Raw> {
        let fd = std::io::stdin();
        let saved = nix::sys::termios::tcgetattr(fd.as_fd()).ok()?;
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        nix::sys::termios::tcsetattr(fd.as_fd(), nix::sys::termios::SetArg::TCSANOW, &raw).ok()?;
        Some(Raw { fd, saved })
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            self.fd.as_fd(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

/// Receives a terminal's master over `sock` (SCM_RIGHTS).
fn recv_master(sock: &OwnedFd) -> Result<OwnedFd, String> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::FromRawFd;
    let mut data = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut data)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| e.to_string())?;
    for c in msg.cmsgs().map_err(|e| e.to_string())? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(fd) = fds.first()
        {
            // SAFETY: the kernel just gave this process the descriptor; nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }
    Err("no terminal came back".into())
}

fn with_terminal(cli: &Cli, req: Request) -> Result<Reply, u8> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(fail("socketpair"))?;
    // The request (which answers when the command ends) waits on a thread; this one copies.
    let (tx, rx) = std::sync::mpsc::channel();
    let socket = cli.socket.clone();
    let waiter = std::thread::spawn(move || {
        let r = ros_api::call_with_fds(&socket, req, &[theirs.as_fd()], |_| {});
        drop(theirs);
        let _ = tx.send(r);
    });
    // The master comes, or the socket closes (the command could not start: the answer says why).
    let master = match recv_master(&ours) {
        Ok(m) => m,
        Err(e) => {
            let _ = waiter.join();
            return match rx.recv() {
                Ok(Ok(Reply::Ok { .. })) | Err(_) => {
                    eprintln!("ros: the terminal did not come back: {e}");
                    Err(1)
                }
                Ok(r) => r.map_err(|e| {
                    eprintln!("ros: {e}");
                    super::EXIT_UNREACHABLE
                }),
            };
        }
    };
    drop(ours);
    // The command's terminal has this one's size.
    let mut size = nix::pty::Winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ and TIOCSWINSZ read and write a winsize through a valid pointer.
    unsafe {
        libc::ioctl(0, libc::TIOCGWINSZ, &raw mut size);
        libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &raw const size);
    }
    let raw = Raw::new();
    let mut master = std::fs::File::from(master);
    let mut stdin_open = true;
    let mut buf = [0u8; 8192];
    let reply = loop {
        if let Ok(r) = rx.try_recv() {
            break r;
        }
        let stdin = std::io::stdin();
        let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        let _ = poll(&mut fds, PollTimeout::from(50u16));
        let (from_master, from_stdin) = (
            fds[0].revents().unwrap_or(PollFlags::empty()),
            fds.get(1)
                .and_then(PollFd::revents)
                .unwrap_or(PollFlags::empty()),
        );
        drop(fds);
        if from_master.intersects(PollFlags::POLLIN) {
            match master.read(&mut buf) {
                Ok(n) if n > 0 => {
                    let mut out = std::io::stdout();
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                }
                _ => {}
            }
        }
        if from_stdin.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
            match std::io::stdin().read(&mut buf) {
                Ok(n) if n > 0 => {
                    let _ = master.write_all(&buf[..n]);
                }
                _ => stdin_open = false,
            }
        }
    };
    let _ = waiter.join();
    // What the command wrote last, still in the terminal.
    let _ = nix::fcntl::fcntl(
        master.as_fd(),
        nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
    );
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        let _ = std::io::stdout().write_all(&buf[..n]);
    }
    let _ = std::io::stdout().flush();
    drop(raw);
    reply.map_err(|e| {
        eprintln!("ros: {e}");
        super::EXIT_UNREACHABLE
    })
}
