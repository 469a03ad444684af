//! `kubectl exec` at the agent: a WebSocket in Kubernetes' channel protocol
//! (`v5.channel.k8s.io`, or `v4`): binary messages whose first byte is the stream (0 stdin,
//! 1 stdout, 2 stderr, 3 the error/status channel, 4 resize; v5's `[255, n]` closes stream n).
//! The command runs in the container with `ros-runtime exec`; its exit code comes back on
//! channel 3 as a `Status` (`NonZeroExitCode` with the code as a cause, which kubectl exits
//! with).

use std::path::PathBuf;
use std::process::Stdio;

use futures::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::api::{Body, Query, full};

const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

fn text(code: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(full(msg.to_string()));
    *r.status_mut() = code;
    r
}

fn normal_close() -> Message {
    Message::Close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }))
}

/// The channel-3 status for an exit code.
pub fn status(command: &[String], code: i32) -> String {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"}).to_string();
    }
    json!({"metadata": {}, "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
    .to_string()
}

/// `/exec/NAMESPACE/POD/CONTAINER?command=...&stdin=&stdout=&stderr=`, upgraded to a WebSocket.
pub fn handle(
    mut req: Request<Incoming>,
    runtime: PathBuf,
    runtime_root: PathBuf,
    container_id: String,
) -> Response<Body> {
    let q = Query::parse(req.uri().query());
    let command: Vec<String> = q.all("command").into_iter().map(str::to_string).collect();
    if command.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least one command for the container",
        );
    }
    let flag = |k: &str| matches!(q.get(k), Some("true" | "1"));
    let (want_in, want_out, want_err) = (flag("stdin"), flag("stdout"), flag("stderr"));
    let tty = flag("tty");
    let headers = req.headers();
    let key = headers
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let offered: Vec<String> = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .collect();
    let Some(key) = key else {
        return text(StatusCode::BAD_REQUEST, "exec needs a WebSocket upgrade");
    };
    let Some(proto) = PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p)) else {
        return text(
            StatusCode::BAD_REQUEST,
            &format!(
                "none of the offered protocols {offered:?} is supported (v5.channel.k8s.io, v4.channel.k8s.io)"
            ),
        );
    };
    let v5 = *proto == "v5.channel.k8s.io";
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(up) = upgrade.await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(up),
            Role::Server,
            None,
        )
        .await;
        let (mut sink, mut source) = ws.split();
        if tty {
            let code = match terminal(
                &runtime,
                &runtime_root,
                &container_id,
                &command,
                want_in,
                &mut sink,
                &mut source,
            )
            .await
            {
                Ok(code) => code,
                Err(e) => {
                    let mut m = vec![3u8];
                    m.extend(
                        json!({"metadata": {}, "status": "Failure", "message": e})
                            .to_string()
                            .bytes(),
                    );
                    let _ = sink.send(Message::Binary(m.into())).await;
                    let _ = sink.send(normal_close()).await;
                    let _ = sink.close().await;
                    return;
                }
            };
            let mut m = vec![3u8];
            m.extend(status(&command, code).into_bytes());
            let _ = sink.send(Message::Binary(m.into())).await;
            let _ = sink.send(normal_close()).await;
            let _ = sink.close().await;
            return;
        }
        let child = tokio::process::Command::new(&runtime)
            .arg("--root")
            .arg(&runtime_root)
            .arg("exec")
            .arg(&container_id)
            .args(&command)
            .stdin(if want_in {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(if want_out {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(if want_err {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                let mut m = vec![3u8];
                m.extend(json!({"metadata": {}, "status": "Failure", "message": format!("running the command: {e}")}).to_string().bytes());
                let _ = sink.send(Message::Binary(m.into())).await;
                let _ = sink.send(normal_close()).await;
                let _ = sink.close().await;
                return;
            }
        };
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
        for (chan, pipe) in [
            (
                1u8,
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            ),
            (
                2u8,
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            ),
        ] {
            let Some(mut pipe) = pipe else { continue };
            let tx = out_tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match pipe.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let mut m = vec![chan];
                            m.extend_from_slice(&buf[..n]);
                            if tx.send(m).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
        drop(out_tx);
        let mut stdin = child.stdin.take();
        let waiter = tokio::spawn(async move {
            child
                .wait()
                .await
                .ok()
                .and_then(|s| s.code())
                .unwrap_or(255)
        });
        // Output until both pipes close; input as it comes.
        let mut outputs_open = true;
        while outputs_open {
            tokio::select! {
                m = out_rx.recv() => match m {
                    Some(m) => { if sink.send(Message::Binary(m.into())).await.is_err() { return; } }
                    None => outputs_open = false,
                },
                msg = source.next() => match msg {
                    Some(Ok(Message::Binary(b))) if !b.is_empty() => match b[0] {
                        0 => if let Some(i) = stdin.as_mut() { let _ = i.write_all(&b[1..]).await; },
                        255 if v5 && b.get(1) == Some(&0) => { stdin = None; }
                        _ => {}
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => { stdin = None; }
                    _ => {}
                },
            }
        }
        drop(stdin);
        let code = waiter.await.unwrap_or(255);
        let mut m = vec![3u8];
        m.extend(status(&command, code).into_bytes());
        let _ = sink.send(Message::Binary(m.into())).await;
        // A normal close (1000): kubectl reads a close without a code as an error.
        let _ = sink.send(normal_close()).await;
        let _ = sink.close().await;
    });
    let mut r = Response::new(full(""));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        hyper::header::UPGRADE,
        hyper::header::HeaderValue::from_static("websocket"),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert("sec-websocket-accept", v);
    }
    h.insert(
        "sec-websocket-protocol",
        hyper::header::HeaderValue::from_static(proto),
    );
    r
}

/// The command on a new terminal of the container's: `ros-runtime exec --tty` sends the
/// terminal's master over a console socket (as runc's does), which is then copied to channel 1
/// and fed from channel 0, resized by channel 4's `{"Width", "Height"}`. Ends when the process
/// does; its exit code.
async fn terminal<S, R, E>(
    runtime: &std::path::Path,
    runtime_root: &std::path::Path,
    container_id: &str,
    command: &[String],
    want_in: bool,
    sink: &mut S,
    source: &mut R,
) -> Result<i32, String>
where
    S: futures::Sink<Message> + Unpin,
    R: futures::Stream<Item = Result<Message, E>> + Unpin,
{
    use std::os::fd::AsFd;
    let sock_path = runtime_root.join(format!(
        ".exec-{}.sock",
        crate::pki::random_hex(8).map_err(|e| e.to_string())?
    ));
    let listener = tokio::net::UnixListener::bind(&sock_path)
        .map_err(|e| format!("the console socket {}: {e}", sock_path.display()))?;
    let child = tokio::process::Command::new(runtime)
        .arg("--root")
        .arg(runtime_root)
        .args(["exec", "--tty", "--console-socket"])
        .arg(&sock_path)
        .arg(container_id)
        .args(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&sock_path);
            return Err(format!("running the command: {e}"));
        }
    };
    let accepted =
        tokio::time::timeout(std::time::Duration::from_secs(30), listener.accept()).await;
    let _ = std::fs::remove_file(&sock_path);
    let conn = match accepted {
        Ok(Ok((c, _))) => c,
        _ => {
            let _ = child.kill().await;
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err).await;
            }
            return Err(format!("the terminal did not come: {}", err.trim()));
        }
    };
    let conn = conn.into_std().map_err(|e| e.to_string())?;
    let master = tokio::task::spawn_blocking(move || {
        let _ = conn.set_nonblocking(false);
        ros_tty::recv_master(conn.as_fd())
    })
    .await
    .map_err(|e| e.to_string())??;
    let resize_fd = master.try_clone().map_err(|e| e.to_string())?;
    let mut reader = tokio::fs::File::from_std(std::fs::File::from(
        master.try_clone().map_err(|e| e.to_string())?,
    ));
    let mut writer = tokio::fs::File::from_std(std::fs::File::from(master));
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // EIO once the terminal's last process has closed it.
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let mut m = vec![1u8];
                    m.extend_from_slice(&buf[..n]);
                    if out_tx.send(m).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut input_open = want_in;
    let mut output_open = true;
    let mut client_open = true;
    let code = loop {
        tokio::select! {
            m = out_rx.recv(), if output_open => match m {
                Some(m) => { if sink.send(Message::Binary(m.into())).await.is_err() { break None; } }
                None => output_open = false,
            },
            st = child.wait(), if !output_open => break st.ok().and_then(|s| s.code()),
            msg = source.next(), if client_open => match msg {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => match b[0] {
                    0 if input_open => { let _ = writer.write_all(&b[1..]).await; let _ = writer.flush().await; }
                    4 => if let Ok(size) = serde_json::from_slice::<serde_json::Value>(&b[1..]) {
                        let dim = |k: &str| size.get(k).and_then(serde_json::Value::as_u64).and_then(|v| u16::try_from(v).ok());
                        if let (Some(w), Some(h)) = (dim("Width"), dim("Height")) {
                            ros_tty::set_size(resize_fd.as_fd(), w, h);
                        }
                    },
                    255 if b.get(1) == Some(&0) => input_open = false,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    // The client went away: the session ends with it, as a terminal's
                    // hang-up (the runtime passes SIGHUP on to the process).
                    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGHUP,
                        );
                    }
                    input_open = false;
                    client_open = false;
                }
                _ => {}
            },
        }
    };
    Ok(code.unwrap_or(255))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_become_statuses() {
        assert!(status(&[], 0).contains("Success"));
        let s: serde_json::Value =
            serde_json::from_str(&status(&["sh".into()], 3)).unwrap_or_default();
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
    }
}
