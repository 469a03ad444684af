//! A terminal in the foreground, for the programs that start a process on a new terminal of a
//! container's and show it on their own: `ros service exec -t` and `ros-runtime run`/`exec -t`
//! without `--console-socket`. The terminal's master arrives over a socket (SCM_RIGHTS, as runc's
//! console socket sends it); [`Proxy`] copies this process's standard input to it and its output
//! to standard output, with this terminal in raw mode (so keys such as Ctrl-C reach the
//! container's terminal, whose line discipline makes them signals there), its size given to the
//! master at the start and on SIGWINCH.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};

/// Receives one descriptor (a terminal's master) over `sock`; closed without one is an error.
pub fn recv_master(sock: BorrowedFd<'_>) -> Result<OwnedFd, String> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
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

/// Standard input in raw mode until dropped (nothing when it is not a terminal).
#[derive(Debug)]
struct Raw {
    saved: Option<Termios>,
}

impl Raw {
    fn new() -> Raw {
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).ok();
        if let Some(s) = &saved {
            let mut raw = s.clone();
            cfmakeraw(&mut raw);
            let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        }
        Raw { saved }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        if let Some(s) = &self.saved {
            let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, s);
        }
    }
}

/// Gives `master` the size of this process's terminal (80x24 when it has none).
pub fn copy_size(master: BorrowedFd<'_>) {
    let mut size = libc::winsize {
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
}

/// Sets `master`'s size (a client's resize message).
pub fn set_size(master: BorrowedFd<'_>, cols: u16, rows: u16) {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize through a valid pointer.
    unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &raw const size);
    }
}

/// What a turn of the copy found besides data: used by the caller to decide when to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Nothing else happened (the poll's 50 ms passed, or data was copied).
    Tick,
    /// A descriptor the caller watches (see [`Proxy::run`]) is readable.
    Ready,
}

/// Copies between this process's terminal and a container terminal's master.
#[derive(Debug)]
pub struct Proxy {
    master: std::fs::File,
    /// This terminal's mode, restored when the proxy is dropped.
    _raw: Raw,
    stdin_open: bool,
}

impl Proxy {
    /// Takes `master`, gives it this terminal's size and puts this terminal in raw mode.
    pub fn new(master: OwnedFd) -> Proxy {
        copy_size(master.as_fd());
        Proxy {
            master: std::fs::File::from(master),
            _raw: Raw::new(),
            stdin_open: true,
        }
    }

    /// Copies until `stop` says so; `stop` is asked after every turn (at least every 50 ms),
    /// with whether `watch` (e.g. a signalfd) became readable, and the proxy (to
    /// [`resize`](Proxy::resize) it). The master's hang-up (every
    /// process of the terminal gone) does not stop the copy by itself: the caller knows when
    /// the command has ended.
    pub fn run(
        &mut self,
        watch: Option<BorrowedFd<'_>>,
        mut stop: impl FnMut(Event, &Proxy) -> bool,
    ) {
        let mut buf = [0u8; 8192];
        loop {
            let stdin = std::io::stdin();
            let mut fds = vec![PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
            if let Some(w) = watch {
                fds.push(PollFd::new(w, PollFlags::POLLIN));
            }
            if self.stdin_open {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
            let _ = poll(&mut fds, PollTimeout::from(50u16));
            let revents = |i: usize| {
                fds.get(i)
                    .and_then(PollFd::revents)
                    .unwrap_or(PollFlags::empty())
            };
            let from_master = revents(0);
            let (watched, from_stdin) = match watch {
                Some(_) => (revents(1), revents(2)),
                None => (PollFlags::empty(), revents(1)),
            };
            drop(fds);
            let mut hung_up = false;
            if from_master.intersects(PollFlags::POLLIN) {
                match self.master.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        let mut out = std::io::stdout();
                        let _ = out.write_all(&buf[..n]);
                        let _ = out.flush();
                    }
                    _ => hung_up = true,
                }
            } else if from_master.intersects(PollFlags::POLLHUP) {
                hung_up = true;
            }
            if from_stdin.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
                match std::io::stdin().read(&mut buf) {
                    Ok(n) if n > 0 => {
                        let _ = self.master.write_all(&buf[..n]);
                    }
                    _ => self.stdin_open = false,
                }
            }
            let event = if watched.intersects(PollFlags::POLLIN) {
                Event::Ready
            } else {
                Event::Tick
            };
            if stop(event, self) {
                break;
            }
            if hung_up {
                // Nothing more can come from the master; wait for the caller's news without
                // spinning on a hung-up descriptor.
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        self.drain();
    }

    /// After the command: what it wrote last, still in the terminal.
    fn drain(&mut self) {
        let _ = nix::fcntl::fcntl(
            self.master.as_fd(),
            nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
        );
        let mut buf = [0u8; 8192];
        while let Ok(n) = self.master.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = std::io::stdout().write_all(&buf[..n]);
        }
        let _ = std::io::stdout().flush();
    }

    /// Gives the master this terminal's size again (after SIGWINCH).
    pub fn resize(&self) {
        copy_size(self.master.as_fd());
    }
}
