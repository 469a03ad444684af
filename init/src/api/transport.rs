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
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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

/// Reads the request line: whole, within the time and the size allowed.
async fn read_request(r: tokio::net::unix::OwnedReadHalf) -> Result<String, Reply> {
    let mut reader = BufReader::new(r).take(ros_api::MAX_REQUEST as u64 + 1);
    let mut buf = Vec::new();
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut buf)).await {
        Err(_) => Err(Reply::error(
            ErrorCode::BadRequest,
            format!(
                "the request did not arrive within {} s",
                REQUEST_TIMEOUT.as_secs()
            ),
        )),
        Ok(Err(e)) => Err(Reply::error(ErrorCode::BadRequest, e.to_string())),
        Ok(Ok(_)) if buf.len() > ros_api::MAX_REQUEST => Err(Reply::error(
            ErrorCode::BadRequest,
            format!(
                "the request is larger than {} KiB",
                ros_api::MAX_REQUEST / 1024
            ),
        )),
        Ok(Ok(_)) if !buf.ends_with(b"\n") => Err(Reply::error(
            ErrorCode::BadRequest,
            "the request ended before its line did",
        )),
        Ok(Ok(_)) => String::from_utf8(buf)
            .map_err(|_| Reply::error(ErrorCode::BadRequest, "the request is not UTF-8")),
    }
}

async fn connection(stream: UnixStream, ctx: Arc<Ctx>) {
    let (r, w) = stream.into_split();
    let mut w = Writer(w);
    let req = match read_request(r)
        .await
        .and_then(|line| ros_api::parse_request(line.trim_end()))
    {
        Ok(req) => req,
        Err(reply) => {
            let _ = w.send(&reply).await;
            return;
        }
    };
    log::debug!("api: {req:?}");
    super::route::route(&ctx, req, &mut w).await;
}
