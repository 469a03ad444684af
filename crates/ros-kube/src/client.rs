//! A client of the API server for the agent: HTTPS with a client certificate (a node's
//! identity), JSON in and out, watches as a stream of events. One connection per request:
//! the agent's requests are few (a heartbeat, a status change), a watch holds its own.

use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

#[derive(Clone)]
pub struct Client {
    /// `host:port`
    addr: String,
    host: String,
    tls: TlsConnector,
    /// An `Authorization` header for every request (a joining agent's Basic credentials).
    auth: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({})", self.addr)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Transport(String),
    #[error("{code}: {message}")]
    Status { code: u16, message: String },
}

impl ClientError {
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            ClientError::Transport(_) => None,
        }
    }
}

fn t(e: impl std::fmt::Display) -> ClientError {
    ClientError::Transport(e.to_string())
}

impl Client {
    /// `server`: `https://HOST:PORT`; the CA, certificate and key as PEM.
    pub fn new(
        server: &str,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Client, ClientError> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(t)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(t)?;
        let cfg = builder()?
            .with_root_certificates(roots(ca_pem)?)
            .with_client_auth_cert(chain, key)
            .map_err(t)?;
        Ok(Client::with(server, cfg))
    }

    /// A client that trusts `ca_pem` and shows no certificate of its own (a joining agent,
    /// before it has one).
    pub fn anonymous(server: &str, ca_pem: &str) -> Result<Client, ClientError> {
        let cfg = builder()?
            .with_root_certificates(roots(ca_pem)?)
            .with_no_client_auth();
        Ok(Client::with(server, cfg))
    }

    /// A client that accepts any server certificate: only for fetching `/cacerts`, which
    /// the caller then checks against the hash its join token carries (k3s's way), and never
    /// for anything that sends a secret.
    pub fn unverified(server: &str) -> Result<Client, ClientError> {
        let provider = Arc::new(rustls_graviola::default_provider());
        let cfg = builder()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
            .with_no_client_auth();
        Ok(Client::with(server, cfg))
    }

    /// The same client sending Basic credentials with each request.
    pub fn with_basic_auth(mut self, user: &str, password: &str) -> Client {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.auth = Some(format!("Basic {b}"));
        self
    }

    fn with(server: &str, cfg: rustls::ClientConfig) -> Client {
        let hostport = server
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_string();
        let host = match hostport.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => h.trim_matches(['[', ']']).to_string(),
            _ => hostport.trim_matches(['[', ']']).to_string(),
        };
        let addr = if hostport
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            hostport
        } else {
            format!("{hostport}:6443")
        };
        Client {
            addr,
            host,
            tls: TlsConnector::from(Arc::new(cfg)),
            auth: None,
        }
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// This machine's address on the route to the server: the address the server reaches
    /// it at when no NAT is between them (a UDP socket's connect sends nothing).
    pub async fn local_addr(&self) -> Result<std::net::IpAddr, ClientError> {
        let target = tokio::net::lookup_host(&self.addr)
            .await
            .map_err(|e| ClientError::Transport(format!("resolving {}: {e}", self.addr)))?
            .next()
            .ok_or_else(|| ClientError::Transport(format!("{} resolves to nothing", self.addr)))?;
        let bind: std::net::SocketAddr = if target.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = tokio::net::UdpSocket::bind(bind).await.map_err(t)?;
        sock.connect(target)
            .await
            .map_err(|e| ClientError::Transport(format!("no route to {}: {e}", self.addr)))?;
        Ok(sock.local_addr().map_err(t)?.ip())
    }

    /// A GET whose answer is text (`/cacerts`).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let (status, data) = self
            .fetch(hyper::Method::GET, path, "application/json", vec![])
            .await?;
        let text = String::from_utf8_lossy(&data).into_owned();
        if !status.is_success() {
            return Err(ClientError::Status {
                code: status.as_u16(),
                message: text,
            });
        }
        Ok(text)
    }

    /// A TLS connection to the server.
    async fn tls_stream(
        &self,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ClientError> {
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| ClientError::Transport(format!("connecting to {}: {e}", self.addr)))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(self.host.clone()).map_err(t)?;
        self.tls
            .connect(name, tcp)
            .await
            .map_err(|e| ClientError::Transport(format!("TLS with {}: {e}", self.addr)))
    }

    async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let tls = self.tls_stream().await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(t)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.addr)
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::CONTENT_TYPE, content_type);
        let req = match &self.auth {
            Some(a) => req.header(hyper::header::AUTHORIZATION, a),
            None => req,
        }
        .body(Full::new(Bytes::from(body)))
        .map_err(t)?;
        send.send_request(req).await.map_err(t)
    }

    /// A request and its whole answer.
    async fn fetch(
        &self,
        method: hyper::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(hyper::StatusCode, Bytes), ClientError> {
        let resp = self.send(method, path, content_type, body).await?;
        let status = resp.status();
        Ok((
            status,
            resp.into_body().collect().await.map_err(t)?.to_bytes(),
        ))
    }

    /// A request with a JSON answer; a failure status as [`ClientError::Status`].
    pub async fn call(
        &self,
        method: hyper::Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let (status, data) = self.fetch(method, path, content_type, bytes).await?;
        let v: Value = serde_json::from_slice(&data).unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(ClientError::Status {
                code: status.as_u16(),
                message: v
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| String::from_utf8_lossy(&data).into_owned()),
            });
        }
        Ok(v)
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(hyper::Method::GET, path, "application/json", None)
            .await
    }

    pub async fn create(&self, path: &str, obj: &Value) -> Result<Value, ClientError> {
        self.call(hyper::Method::POST, path, "application/json", Some(obj))
            .await
    }

    pub async fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value, ClientError> {
        self.call(
            hyper::Method::PATCH,
            path,
            "application/merge-patch+json",
            Some(patch),
        )
        .await
    }

    pub async fn strategic_patch(&self, path: &str, patch: &Value) -> Result<Value, ClientError> {
        self.call(
            hyper::Method::PATCH,
            path,
            "application/strategic-merge-patch+json",
            Some(patch),
        )
        .await
    }

    pub async fn delete(&self, path: &str, opts: &Value) -> Result<Value, ClientError> {
        self.call(hyper::Method::DELETE, path, "application/json", Some(opts))
            .await
    }

    /// A GET asking to upgrade the connection (`headers`: the WebSocket handshake's); the
    /// answer, whose connection `hyper::upgrade::on` then takes over.
    pub async fn get_upgrade(
        &self,
        path: &str,
        headers: &[(&str, String)],
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let tls = self.tls_stream().await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(t)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let mut req = hyper::Request::builder()
            .method(hyper::Method::GET)
            .uri(path)
            .header(hyper::header::HOST, &self.addr);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req.body(Full::new(Bytes::new())).map_err(t)?;
        send.send_request(req).await.map_err(t)
    }

    /// A GET whose body is streamed to the caller (logs).
    pub async fn get_stream(
        &self,
        path: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        self.send(hyper::Method::GET, path, "application/json", vec![])
            .await
    }

    /// The events of a watch (`path` with `watch=true`), one JSON object each, until the
    /// server ends the stream.
    pub async fn watch(&self, path: &str) -> Result<mpsc::Receiver<Value>, ClientError> {
        let resp = self
            .send(hyper::Method::GET, path, "application/json", vec![])
            .await?;
        if !resp.status().is_success() {
            return Err(ClientError::Status {
                code: resp.status().as_u16(),
                message: format!("watch {path}"),
            });
        }
        let (tx, rx) = mpsc::channel(256);
        let mut body = resp.into_body();
        tokio::spawn(async move {
            let mut buf: Vec<u8> = vec![];
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&line)
                        && tx.send(v).await.is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

fn builder()
-> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, ClientError> {
    let provider = Arc::new(rustls_graviola::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(t)
}

fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.map_err(t)?).map_err(t)?;
    }
    if roots.is_empty() {
        return Err(ClientError::Transport("no CA certificate given".into()));
    }
    Ok(roots)
}

/// Accepts any certificate the server shows, still checking that the server holds its key
/// (the handshake's signatures): what `Client::unverified` needs and nothing more.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
