//! The agent's own HTTPS endpoint (the kubelet's port, 10250), which the API server calls for
//! `kubectl logs`: `GET /containerLogs/NAMESPACE/POD/CONTAINER?follow&tailLines&previous&
//! timestamps`. Only a client certificate of the cluster's CA in `system:masters` (the API
//! server's) is served.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::api::{Body, Query, full};

/// One line of a container's log as the agent keeps it: `TIME STREAM F TEXT`.
fn parse(line: &str) -> Option<(&str, &str)> {
    let (time, rest) = line.split_once(' ')?;
    let (_stream, rest) = rest.split_once(' ')?;
    let (_tag, text) = rest.split_once(' ').unwrap_or((rest, ""));
    Some((time, text))
}

fn render(line: &str, timestamps: bool) -> Option<String> {
    let (time, text) = parse(line)?;
    Some(if timestamps {
        format!("{time} {text}\n")
    } else {
        format!("{text}\n")
    })
}

/// The container's log files, by restart number.
fn logs(pods: &Path, ns: &str, pod: &str, container: &str) -> Vec<(u32, PathBuf)> {
    let prefix = format!("{ns}_{pod}_");
    let mut out = vec![];
    for e in std::fs::read_dir(pods).into_iter().flatten().flatten() {
        if !e.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        for f in std::fs::read_dir(e.path().join("containers").join(container))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = f.file_name().to_string_lossy().into_owned();
            if let Some(n) = super::logs::run_of(&name, true) {
                out.push((n, f.path()));
            }
        }
    }
    out.sort();
    out
}

fn text(code: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(full(msg.to_string()));
    *r.status_mut() = code;
    r
}

async fn container_logs(pods: PathBuf, path: &str, q: &Query) -> Response<Body> {
    let parts: Vec<&str> = path
        .trim_start_matches("/containerLogs/")
        .split('/')
        .collect();
    let [ns, pod, container] = parts.as_slice() else {
        return text(
            StatusCode::NOT_FOUND,
            "expected /containerLogs/NAMESPACE/POD/CONTAINER",
        );
    };
    let files = logs(&pods, ns, pod, container);
    let previous = matches!(q.get("previous"), Some("true" | "1"));
    let pick = if previous {
        files.len().checked_sub(2).and_then(|i| files.get(i))
    } else {
        files.last()
    };
    let Some((restart, file)) = pick.cloned() else {
        let msg = if previous {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!("container \"{container}\" in pod \"{pod}\" has no log yet")
        };
        return text(StatusCode::BAD_REQUEST, &msg);
    };
    let timestamps = matches!(q.get("timestamps"), Some("true" | "1"));
    let follow = !previous && matches!(q.get("follow"), Some("true" | "1"));
    let tail = q.get("tailLines").and_then(|t| t.parse::<usize>().ok());
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
    tokio::spawn(async move {
        let Ok(mut f) = tokio::fs::File::open(&file).await else {
            return;
        };
        let ino = f.metadata().await.ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.ino()
        });
        let mut content = String::new();
        if f.read_to_string(&mut content).await.is_err() {
            return;
        }
        let lines: Vec<&str> = content.lines().collect();
        let skip = tail.map_or(0, |t| lines.len().saturating_sub(t));
        for l in &lines[skip..] {
            if let Some(out) = render(l, timestamps)
                && tx.send(Bytes::from(out)).await.is_err()
            {
                return;
            }
        }
        if !follow {
            return;
        }
        // Follow: new lines as they land (across the log's rotations), until the container
        // restarts (a newer file) or its pod goes, or the client leaves.
        let mut follower = super::logs::Follower::at(file.clone(), ino, content.len() as u64);
        let mut partial = String::new();
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            partial.push_str(&follower.more().await);
            while let Some(nl) = partial.find('\n') {
                let line: String = partial.drain(..=nl).collect();
                if let Some(out) = render(line.trim_end_matches('\n'), timestamps)
                    && tx.send(Bytes::from(out)).await.is_err()
                {
                    return;
                }
            }
            let now = logs(&pods, &ns, &pod, &container);
            if now.is_empty() || now.last().is_some_and(|(n, _)| *n > restart) {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    r
}

/// What the endpoint reads and runs: the pods' folders, the runtime and its state folder.
#[derive(Debug, Clone)]
pub struct Paths {
    pub pods: PathBuf,
    pub runtime: PathBuf,
    pub runtime_root: PathBuf,
}

/// The container id of a running pod's container (`<pod uid>-<name>`), from its folder.
fn container_id(pods: &Path, ns: &str, pod: &str, container: &str) -> Option<String> {
    let prefix = format!("{ns}_{pod}_");
    std::fs::read_dir(pods).ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.strip_prefix(&prefix)
            .map(|uid| format!("{uid}-{container}"))
    })
}

/// Serves the endpoint on `listener` with the node's serving certificate; clients must show a
/// certificate of the CA in `system:masters`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    paths: Paths,
) -> Result<(), String> {
    let provider = Arc::new(rustls_graviola::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, paths) = (acceptor.clone(), paths.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let admin = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| crate::auth::from_cert(c))
                .is_some_and(|u| u.is_admin());
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let paths = paths.clone();
                async move {
                    let path = req.uri().path().to_string();
                    let q = Query::parse(req.uri().query());
                    let r = if !admin {
                        text(StatusCode::FORBIDDEN, "only the API server is served here")
                    } else if let Some(rest) = path.strip_prefix("/exec/") {
                        match rest.split('/').collect::<Vec<_>>().as_slice() {
                            [ns, pod, c] => match container_id(&paths.pods, ns, pod, c) {
                                Some(id) => super::exec::handle(
                                    req,
                                    paths.runtime.clone(),
                                    paths.runtime_root.clone(),
                                    id,
                                ),
                                None => text(
                                    StatusCode::NOT_FOUND,
                                    &format!("pod {pod} does not run here"),
                                ),
                            },
                            _ => text(
                                StatusCode::NOT_FOUND,
                                "expected /exec/NAMESPACE/POD/CONTAINER",
                            ),
                        }
                    } else if path.starts_with("/containerLogs/") {
                        container_logs(paths.pods, &path, &q).await
                    } else if path == "/healthz" {
                        text(StatusCode::OK, "ok")
                    } else {
                        text(StatusCode::NOT_FOUND, "not found")
                    };
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .with_upgrades()
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_render_with_and_without_times() {
        let l = "2026-12-05T08:00:00.000001Z stdout F hello world";
        assert_eq!(render(l, false).as_deref(), Some("hello world\n"));
        assert_eq!(
            render(l, true).as_deref(),
            Some("2026-12-05T08:00:00.000001Z hello world\n")
        );
        assert_eq!(render("2026 stderr F ", false).as_deref(), Some("\n"));
    }
}
