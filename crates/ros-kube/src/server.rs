//! The API server: TLS on the port (client certificates asked for, not required), each
//! connection's user found once, hyper's HTTP/1.1 for the requests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::api::Api;
use crate::auth::{Tokens, User};
use crate::objects::{FieldValidation, Objects};
use crate::pki::Pki;
use crate::resources::Resource;
use crate::store::Backend;

#[derive(Debug, Clone)]
pub struct Config {
    /// Certificates, tokens and the store live here (on the state disk).
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Names and addresses for the serving certificate besides 127.0.0.1 and localhost.
    pub sans: Vec<String>,
    pub controllers: crate::controllers::Settings,
    /// An agent for this node in the same process (a server that runs pods too).
    pub agent: Option<crate::agent::Config>,
    /// `etcd://HOST:PORT` for an etcd datastore; none: the embedded store in `data_dir`.
    pub datastore: Option<String>,
    /// Where the admin kubeconfig, the join token and a status file are written for the
    /// machine's CLI (`ros cluster ...`); none: not written.
    pub publish: Option<PathBuf>,
}

/// The machine's own names and addresses (hostname, every non-loopback address), for the
/// serving certificate: clients reach the server by any of them.
pub fn own_names() -> Vec<String> {
    let mut out = vec![];
    if let Ok(h) = nix::unistd::gethostname()
        && let Some(h) = h.to_str()
        && !h.is_empty()
    {
        out.push(h.to_string());
    }
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(addr) = a.address else { continue };
            let ip: Option<std::net::IpAddr> = if let Some(v4) = addr.as_sockaddr_in() {
                Some(v4.ip().into())
            } else {
                addr.as_sockaddr_in6().map(|v6| v6.ip().into())
            };
            if let Some(ip) = ip
                && !ip.is_loopback()
                && !matches!(ip, std::net::IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
            {
                let s = ip.to_string();
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
    }
    out
}

/// The join token, k3s's form: `K10<sha256 of the CA PEM>::server:<password>`; the password
/// is made on the first start and kept (`crate::join` checks it).
pub fn join_token(data_dir: &Path, pki: &Pki) -> Result<String, ServerError> {
    Ok(format!(
        "K10{}::{}:{}",
        pki.ca_hash(),
        crate::join::TOKEN_USER,
        join_password(data_dir)?
    ))
}

fn join_password(data_dir: &Path) -> Result<String, ServerError> {
    let path = data_dir.join("token-password");
    let password = match std::fs::read_to_string(&path) {
        Ok(p) if !p.trim().is_empty() => p.trim().to_string(),
        _ => {
            let p = crate::pki::random_hex(16)?;
            crate::pki::write_atomic(&path, p.as_bytes(), 0o600)?;
            p
        }
    };
    Ok(password)
}

/// Writes the kubeconfig and the token once, and a status file every few seconds.
fn publish(
    dir: &Path,
    pki: &Pki,
    token: &str,
    port: u16,
    api: Arc<Api>,
) -> Result<(), ServerError> {
    std::fs::create_dir_all(dir).map_err(|e| ServerError::Io(format!("{}: {e}", dir.display())))?;
    let kc = pki.kubeconfig(&format!("https://127.0.0.1:{port}"))?;
    crate::pki::write_atomic(&dir.join("kubeconfig"), kc.as_bytes(), 0o600)?;
    crate::pki::write_atomic(&dir.join("token"), format!("{token}\n").as_bytes(), 0o600)?;
    let dir = dir.to_path_buf();
    let started = crate::objects::now_rfc3339();
    tokio::spawn(async move {
        loop {
            let nodes = match Resource::find("", "v1", "nodes") {
                Some(r) => api
                    .objects
                    .list(r, None)
                    .await
                    .map(|(n, _)| n)
                    .unwrap_or_default(),
                None => vec![],
            };
            let ready = nodes
                .iter()
                .filter(|n| {
                    n.pointer("/status/conditions")
                        .and_then(serde_json::Value::as_array)
                        .is_some_and(|cs| {
                            cs.iter().any(|c| {
                                c.get("type").and_then(serde_json::Value::as_str) == Some("Ready")
                                    && c.get("status").and_then(serde_json::Value::as_str)
                                        == Some("True")
                            })
                        })
                })
                .count();
            let st = json!({"role": "server", "api": format!("https://127.0.0.1:{port}"),
                "version": crate::api::KUBE_VERSION, "started": started, "updated": crate::objects::now_rfc3339(),
                "nodes": nodes.len(), "nodes_ready": ready, "revision": api.objects.store.revision()});
            let _ = crate::pki::write_atomic(
                &dir.join("status.json"),
                st.to_string().as_bytes(),
                0o644,
            );
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        }
    });
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the store at {path}: {source}")]
    Store {
        path: PathBuf,
        source: crate::store::Error,
    },
    #[error("{0}")]
    Io(String),
}

/// What a started server holds: its API (for in-process callers) and the bound address.
#[derive(Debug)]
pub struct Running {
    pub api: Arc<Api>,
    pub addr: SocketAddr,
}

fn tls_config(pki: &Pki, sans: &[String]) -> Result<rustls::ServerConfig, ServerError> {
    ros_registry::client::tls_cpu_check().map_err(ServerError::Tls)?;
    let provider = Arc::new(rustls_graviola::default_provider());
    let pair = pki.serving(sans)?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| ServerError::Tls(format!("the serving certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes())
        .map_err(|e| ServerError::Tls(format!("the serving key: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(pki.ca_der()?)
        .map_err(|e| ServerError::Tls(format!("the CA: {e}")))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The names every serving certificate carries, then the configured ones.
pub fn serving_names(extra: &[String]) -> Vec<String> {
    let mut out: Vec<String> = [
        "127.0.0.1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for s in extra {
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    out
}

/// The namespaces every cluster has.
pub async fn bootstrap(objects: &Objects) -> Result<(), ServerError> {
    let nsr = Resource::find("", "v1", "namespaces")
        .ok_or_else(|| ServerError::Io("no namespaces resource".into()))?;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        match objects
            .create(nsr, None, obj, FieldValidation::Strict)
            .await
        {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => {
                return Err(ServerError::Io(format!(
                    "creating namespace {ns}: {}",
                    e.message
                )));
            }
        }
    }
    Ok(())
}

pub fn open_store(data_dir: &Path) -> Result<Backend, ServerError> {
    let path = data_dir.join("state.redb");
    Backend::open_revlog(&path).map_err(|source| ServerError::Store { path, source })
}

/// Starts the server; the accept loop runs on the current tokio runtime until it ends.
pub async fn start(cfg: &Config) -> Result<Running, ServerError> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| ServerError::Io(format!("{}: {e}", cfg.data_dir.display())))?;
    let pki = Pki::open(&cfg.data_dir.join("pki"))?;
    pki.admin()?;
    let mut names = cfg.sans.clone();
    names.extend(own_names());
    let tls = tls_config(&pki, &serving_names(&names))?;
    let token = join_token(&cfg.data_dir, &pki)?;
    let tokens = Tokens::load(&cfg.data_dir.join("tokens")).map_err(ServerError::Io)?;
    let store = match cfg.datastore.as_deref() {
        None | Some("embedded") => open_store(&cfg.data_dir)?,
        Some(url) => Backend::open_etcd(url)
            .await
            .map_err(|source| ServerError::Store {
                path: PathBuf::from(url),
                source,
            })?,
    };
    let objects = Objects::new(store);
    bootstrap(&objects).await?;
    let api = Api::new(objects, pki.ca_pem.clone());
    // How the server reaches agents' endpoints (kubectl logs): a client of its own CA.
    let kc = pki.client("ros-apiserver-kubelet-client", &["system:masters"])?;
    let _ = api
        .kubelet_client
        .set((pki.ca_pem.clone(), kc.cert_pem, kc.key_pem));
    crate::controllers::start(api.clone(), cfg.controllers.clone());
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| ServerError::Io(format!("listening on {}: {e}", cfg.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::Io(e.to_string()))?;
    if let Some(dir) = &cfg.publish {
        publish(dir, &pki, &token, addr.port(), api.clone())?;
    }
    let authority = Arc::new(crate::join::Authority {
        pki: Pki::open(&cfg.data_dir.join("pki"))?,
        password: join_password(&cfg.data_dir)?,
    });
    // The node's name is claimed as a joining agent's is, so that no other machine can join
    // under it. Should another machine hold it already, the server serves without its agent.
    let agent = match &cfg.agent {
        Some(acfg) => {
            let password = crate::join::node_password(&acfg.data_dir.join("node-password"))
                .map_err(ServerError::Io)?;
            match crate::join::claim_node(&api, &acfg.node_name, &password).await {
                Ok(()) => Some(acfg),
                Err(e) => {
                    eprintln!("ros-kube: not running this node's agent: {}", e.message);
                    None
                }
            }
        }
        None => None,
    };
    if let Some(acfg) = agent {
        // The node's identity, issued by the CA here (a joining agent gets its own by token).
        let pair = pki.client(
            &format!("system:node:{}", acfg.node_name),
            &["system:nodes"],
        )?;
        let mut acfg = acfg.clone();
        if let Some(k) = acfg.kubelet.as_mut() {
            let mut names = vec![acfg.node_name.clone(), "127.0.0.1".to_string()];
            names.extend(acfg.address.iter().cloned());
            let serving = pki.serving_for(&acfg.node_name, &names)?;
            k.ca_pem = pki.ca_pem.clone();
            k.cert_pem = serving.cert_pem;
            k.key_pem = serving.key_pem;
        }
        let client = crate::client::Client::new(
            &format!("https://127.0.0.1:{}", addr.port()),
            &pki.ca_pem,
            &pair.cert_pem,
            &pair.key_pem,
        )
        .map_err(|e| ServerError::Tls(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = crate::agent::run(client, acfg).await {
                eprintln!("ros-kube agent: {e}");
            }
        });
    }
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let tokens = Arc::new(tokens);
    let serving = api.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, api, tokens, authority) = (
                acceptor.clone(),
                serving.clone(),
                tokens.clone(),
                authority.clone(),
            );
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let cert_user = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| crate::auth::from_cert(c));
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let user: Option<User> = cert_user.clone().or_else(|| {
                        req.headers()
                            .get(hyper::header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("Bearer "))
                            .and_then(|t| tokens.user(t.trim()).cloned())
                    });
                    let (api, authority) = (api.clone(), authority.clone());
                    async move {
                        if req.uri().path() == crate::join::PATH {
                            return Ok(crate::join::serve(&api, &authority, req, peer).await);
                        }
                        Ok::<_, std::convert::Infallible>(api.handle(req, user).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(tls), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Ok(Running { api, addr })
}
