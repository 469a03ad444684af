//! `ros service exec NAME [-t] -- CMD...`: the command runs in the service's container on this
//! process's own standard streams, sent to the init with the request (no copying through the
//! init). With `-t` it gets a terminal of its container's (so `tty` names it there): one end of
//! a socket pair goes with the request, the command's side sends the terminal's master back
//! over it, and this process copies between its own terminal (put in raw mode) and that master
//! until the init answers that the command ended. Exits with the command's status.

use std::os::fd::AsFd;

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
    let master = match ros_tty::recv_master(ours.as_fd()) {
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
    let mut proxy = ros_tty::Proxy::new(master);
    let mut reply = None;
    proxy.run(None, |_, _| match rx.try_recv() {
        Ok(r) => {
            reply = Some(r);
            true
        }
        Err(std::sync::mpsc::TryRecvError::Empty) => false,
        Err(std::sync::mpsc::TryRecvError::Disconnected) => true,
    });
    drop(proxy);
    let _ = waiter.join();
    match reply {
        Some(r) => r.map_err(|e| {
            eprintln!("ros: {e}");
            super::EXIT_UNREACHABLE
        }),
        None => {
            eprintln!("ros: the request ended without an answer");
            Err(super::EXIT_UNREACHABLE)
        }
    }
}
