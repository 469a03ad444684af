//! The API's socket: who may connect and what a connection may cost. The socket is root's
//! alone (mode 0600), so the kernel refuses every other user at `connect`, and a flood of local
//! users costs the init nothing: it never sees them (measured in QEMU, `tests/api_flood.rs`: a
//! world-connectable socket, refused at accept, let 1,000 users' connections delay root's
//! requests 15-fold, since root's `connect` queued behind theirs). Should another uid reach it
//! anyway (a socket handed over, a mount that maps owners), the caller's uid (`SO_PEERCRED`) is
//! checked at accept, before a byte is read: a one-line refusal written without waiting and
//! the connection closed. Root's connections are bounded ([`MAX_CONNECTIONS`] at
//! once, a "busy" answer past that), the request must arrive whole within [`REQUEST_TIMEOUT`]
//! and [`ros_api::MAX_REQUEST`] bytes (a slow sender is dropped), and each reply line must be
//! taken within [`WRITE_TIMEOUT`] (a reader that stalls a log stream is dropped).

use std::sync::Arc;
use std::time::Duration;

use ros_api::{ErrorCode, Reply};
use std::os::fd::OwnedFd;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::Ctx;

/// Root's connections served at once (log streams included).
pub const MAX_CONNECTIONS: usize = 16;
/// A request must be read whole within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Each reply line must be written within this.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes the socket's folder and binds the socket, root's alone.
pub fn bind() -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(ros_api::SOCKET_DIR)?;
    std::fs::set_permissions(ros_api::SOCKET_DIR, std::fs::Permissions::from_mode(0o755))?;
    let _ = std::fs::remove_file(ros_api::SOCKET);
    let l = UnixListener::bind(ros_api::SOCKET)?;
    std::fs::set_permissions(ros_api::SOCKET, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Writes `r` if the socket takes it at once; never waits.
fn answer_now(stream: &UnixStream, r: &Reply) {
    let _ = stream.try_write(r.line().as_bytes());
}

/// Accepts connections for ever.
pub async fn serve(listener: UnixListener, ctx: Arc<Ctx>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("api: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match stream.peer_cred().map(|c| c.uid()) {
            Ok(0) => {}
            Ok(uid) => {
                answer_now(
                    &stream,
                    &Reply::error(
                        ErrorCode::Denied,
                        format!("the ros API is for root only (you are uid {uid})"),
                    ),
                );
                continue;
            }
            Err(e) => {
                log::warn!("api: SO_PEERCRED: {e}");
                continue;
            }
        }
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            answer_now(
                &stream,
                &Reply::error(
                    ErrorCode::Failed,
                    format!("the API is busy ({MAX_CONNECTIONS} requests at once); try again"),
                ),
            );
            continue;
        };
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            connection(stream, ctx).await;
            drop(slot);
        });
    }
}

/// The reply side of a connection.
#[derive(Debug)]
pub struct Writer(OwnedWriteHalf);

impl Writer {
    /// Sends one reply line; false when the client is gone or too slow to take it.
    pub async fn send(&mut self, r: &Reply) -> bool {
        matches!(
            tokio::time::timeout(WRITE_TIMEOUT, self.0.write_all(r.line().as_bytes())).await,
            Ok(Ok(()))
        )
    }
}

/// The most descriptors a request carries (`service_exec`'s three streams); more are closed.
pub const MAX_FDS: usize = 3;

/// Reads what is there of the request into `buf`, and the descriptors sent with it.
fn recv_some(
    stream: &UnixStream,
    buf: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
) -> std::io::Result<usize> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut chunk = [0u8; 16 * 1024];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; MAX_FDS]);
    let mut iov = [std::io::IoSliceMut::new(&mut chunk)];
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    for c in msg.cmsgs().into_iter().flatten() {
        if let ControlMessageOwned::ScmRights(list) = c {
            for fd in list {
                // SAFETY: the kernel just gave this process these descriptors; nothing else
                // owns them.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if fds.len() < MAX_FDS {
                    fds.push(owned);
                }
            }
        }
    }
    let n = msg.bytes;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Reads the request line (whole, within the time and the size allowed) and the descriptors
/// sent with it.
async fn read_request(stream: &UnixStream) -> Result<(String, Vec<OwnedFd>), Reply> {
    let mut buf = Vec::new();
    let mut fds = Vec::new();
    let read = async {
        loop {
            stream.readable().await?;
            match stream.try_io(tokio::io::Interest::READABLE, || {
                recv_some(stream, &mut buf, &mut fds)
            }) {
                Ok(0) => return Ok::<(), std::io::Error>(()),
                Ok(_) if buf.contains(&b'\n') || buf.len() > ros_api::MAX_REQUEST => {
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Err(_) => Err(Reply::error(
            ErrorCode::BadRequest,
            format!(
                "the request did not arrive within {} s",
                REQUEST_TIMEOUT.as_secs()
            ),
        )),
        Ok(Err(e)) => Err(Reply::error(ErrorCode::BadRequest, e.to_string())),
        Ok(Ok(())) if buf.len() > ros_api::MAX_REQUEST => Err(Reply::error(
            ErrorCode::BadRequest,
            format!(
                "the request is larger than {} KiB",
                ros_api::MAX_REQUEST / 1024
            ),
        )),
        Ok(Ok(())) => match buf.iter().position(|b| *b == b'\n') {
            // One request per connection: anything after its line is ignored.
            Some(end) => String::from_utf8(buf[..end].to_vec())
                .map(|line| (line, fds))
                .map_err(|_| Reply::error(ErrorCode::BadRequest, "the request is not UTF-8")),
            None => Err(Reply::error(
                ErrorCode::BadRequest,
                "the request ended before its line did",
            )),
        },
    }
}

async fn connection(stream: UnixStream, ctx: Arc<Ctx>) {
    let got = read_request(&stream).await;
    let (_, w) = stream.into_split();
    let mut w = Writer(w);
    let (req, fds) = match got
        .and_then(|(line, fds)| ros_api::parse_request(line.trim_end()).map(|r| (r, fds)))
    {
        Ok(x) => x,
        Err(reply) => {
            let _ = w.send(&reply).await;
            return;
        }
    };
    log::debug!("api: {req:?}");
    super::route::route(&ctx, req, fds, &mut w).await;
}
