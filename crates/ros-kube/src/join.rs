//! Joining a machine to the cluster, as k3s does it. The join token,
//! `K10<sha256 of the CA PEM>::<user>:<password>`, carries what the agent needs to trust the
//! server before it has any certificate: it fetches `/cacerts` without checking the server,
//! hashes what it got and goes on only if that is the token's hash; from then on its TLS is
//! pinned to that CA. It then asks `/v1-ros/join` (Basic auth with the token's credentials) for
//! its node's client certificate (`system:node:NAME`, group `system:nodes`) and its endpoint's
//! serving certificate, sending the node's password: a random secret the agent made on its
//! first start and keeps. The server keeps the password's hash per node name (a Secret
//! `kube-system/NAME.node-password.ros`, as k3s's `NAME.node-password.k3s`), so a second machine
//! cannot take a name a first one holds.
//!
//! Here the server makes the node's key pairs and sends them over the pinned TLS (k3s sends its
//! kubelet keys the same way); no key leaves the server unasked-for, and a node's certificate is
//! issued again at each start.

use std::net::SocketAddr;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{Value, json};
use sha2::Digest;

use crate::api::{Api, Body, error_response, json_response};
use crate::client::{Client, ClientError};
use crate::objects::{ApiError, FieldValidation};
use crate::pki::{Pair, Pki, hex};
use crate::resources::Resource;

/// Where a joining agent asks for its certificates.
pub const PATH: &str = "/v1-ros/join";

/// The user part of the tokens this server makes.
pub const TOKEN_USER: &str = "server";

/// A join token, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// sha256 of the CA's PEM, hex.
    pub ca_hash: String,
    pub user: String,
    pub password: String,
}

impl std::str::FromStr for Token {
    type Err = String;

    fn from_str(s: &str) -> Result<Token, String> {
        let bad = || {
            "a join token looks like K10<64 hex digits>::<user>:<password> (`ros cluster token` \
             on the server prints it)"
                .to_string()
        };
        let (hash, cred) = s
            .trim()
            .strip_prefix("K10")
            .and_then(|r| r.split_once("::"))
            .ok_or_else(bad)?;
        let (user, password) = cred.split_once(':').ok_or_else(bad)?;
        if hash.len() != 64
            || !hash.chars().all(|c| c.is_ascii_hexdigit())
            || user.is_empty()
            || password.is_empty()
        {
            return Err(bad());
        }
        Ok(Token {
            ca_hash: hash.to_ascii_lowercase(),
            user: user.to_string(),
            password: password.to_string(),
        })
    }
}

/// What the server needs to answer joins: its CA and the token's password.
#[derive(Debug)]
pub struct Authority {
    pub pki: Pki,
    pub password: String,
}

/// What a joining agent sends.
#[derive(Debug, serde::Deserialize)]
struct Ask {
    node: String,
    password: String,
    #[serde(default)]
    addresses: Vec<String>,
}

/// Equal in time whatever the contents (the token's password is compared with it).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn password_hash(password: &str) -> String {
    hex(&sha2::Sha256::digest(password.as_bytes()))
}

fn secret_name(node: &str) -> String {
    format!("{node}.node-password.ros")
}

/// Binds `node` to `password` on first use; a later use with another password is refused (403).
pub async fn claim_node(api: &Api, node: &str, password: &str) -> Result<(), ApiError> {
    use base64::Engine;
    let r = Resource::find("", "v1", "secrets").ok_or_else(|| ApiError::bad("no secrets"))?;
    let name = secret_name(node);
    let want = password_hash(password);
    let taken = || {
        ApiError::new(
            403,
            "Forbidden",
            format!(
                "node name {node:?} is taken by another machine (its node password differs); \
                 give this machine another name (cluster.node_name), or, if the old machine is \
                 gone, delete the node and the secret kube-system/{name}"
            ),
        )
    };
    let stored = |s: &Value| -> Option<String> {
        let b = s.pointer("/data/hash")?.as_str()?;
        let raw = base64::engine::general_purpose::STANDARD.decode(b).ok()?;
        String::from_utf8(raw).ok()
    };
    for _ in 0..3 {
        match api.objects.get(r, Some("kube-system"), &name).await {
            Ok(s) => {
                return match stored(&s) {
                    Some(h) if same(h.as_bytes(), want.as_bytes()) => Ok(()),
                    _ => Err(taken()),
                };
            }
            Err(e) if e.code == 404 => {
                let obj = json!({"apiVersion": "v1", "kind": "Secret", "type": "ros/node-password",
                    "metadata": {"name": name, "namespace": "kube-system"},
                    "data": {"hash": base64::engine::general_purpose::STANDARD.encode(&want)}});
                match api
                    .objects
                    .create(r, Some("kube-system"), obj, FieldValidation::Strict)
                    .await
                {
                    Ok(_) => return Ok(()),
                    // Another join of the same name got there first: compare with its.
                    Err(e) if e.code == 409 => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(taken())
}

/// The join endpoint: checks the token's credentials and the node's password, and answers
/// with the node's certificates. Every refusal is logged here and explained to the agent.
pub async fn serve(
    api: &Api,
    auth: &Authority,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    match answer(api, auth, req).await {
        Ok((node, v)) => {
            eprintln!("ros-kube: node {node} joined from {}", peer.ip());
            json_response(200, &v)
        }
        Err((node, e)) => {
            eprintln!(
                "ros-kube: join refused: {} asking to join as node {}: {}",
                peer.ip(),
                node.as_deref().unwrap_or("?"),
                e.message
            );
            error_response(&e)
        }
    }
}

type Refusal = (Option<String>, ApiError);

async fn answer(
    api: &Api,
    auth: &Authority,
    req: Request<Incoming>,
) -> Result<(String, Value), Refusal> {
    use base64::Engine;
    if req.method() != hyper::Method::POST {
        return Err((None, ApiError::new(405, "MethodNotAllowed", "POST only")));
    }
    let unauthorized = |m: &str| ApiError::new(401, "Unauthorized", m.to_string());
    let cred = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let Some(cred) = cred else {
        return Err((None, unauthorized("no join token given")));
    };
    let (user, password) = cred.split_once(':').unwrap_or((&cred, ""));
    let ok = user == TOKEN_USER && same(password.as_bytes(), auth.password.as_bytes());
    // The body is read (and bounded) before the answer, so the refusal can name the node.
    let body = http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| (None, ApiError::bad(format!("reading the request: {e}"))))?
        .to_bytes();
    let ask: Ask = serde_json::from_slice(&body).map_err(|e| {
        (
            None,
            ApiError::bad(format!(
                "expected {{\"node\", \"password\", \"addresses\"}}: {e}"
            )),
        )
    })?;
    let node = Some(ask.node.clone());
    if !ok {
        return Err((
            node,
            unauthorized(
                "the join token is wrong: its password is not this server's \
                 (`ros cluster token` on the server prints the right one)",
            ),
        ));
    }
    crate::objects::check_name(&ask.node, false)
        .map_err(|m| (node.clone(), ApiError::bad(format!("node name: {m}"))))?;
    if secret_name(&ask.node).len() > 253 {
        return Err((node, ApiError::bad("the node name is too long")));
    }
    if ask.password.len() < 16 || ask.password.len() > 256 {
        return Err((
            node,
            ApiError::bad("a node password has 16 to 256 characters"),
        ));
    }
    if ask.addresses.len() > 16
        || ask
            .addresses
            .iter()
            .any(|a| a.parse::<std::net::IpAddr>().is_err())
    {
        return Err((node, ApiError::bad("addresses: up to 16 IP addresses")));
    }
    claim_node(api, &ask.node, &ask.password)
        .await
        .map_err(|e| (node.clone(), e))?;
    let issued = (|| -> Result<(Pair, Pair), crate::pki::PkiError> {
        let client = auth
            .pki
            .client(&format!("system:node:{}", ask.node), &["system:nodes"])?;
        let mut names = vec![ask.node.clone()];
        names.extend(ask.addresses.iter().cloned());
        let serving = auth.pki.serving_for(&ask.node, &names)?;
        Ok((client, serving))
    })()
    .map_err(|e| {
        (
            node.clone(),
            ApiError::new(500, "InternalError", e.to_string()),
        )
    })?;
    Ok((
        ask.node,
        json!({"ca": auth.pki.ca_pem,
            "client": {"cert": issued.0.cert_pem, "key": issued.0.key_pem},
            "serving": {"cert": issued.1.cert_pem, "key": issued.1.key_pem}}),
    ))
}

/// What a joined agent holds.
#[derive(Debug, Clone)]
pub struct Joined {
    pub ca_pem: String,
    pub client: Pair,
    pub serving: Pair,
    /// This machine's address toward the server.
    pub address: std::net::IpAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The server could not be reached or answered oddly: worth trying again.
    #[error("{0}")]
    Unreachable(String),
    /// The server is not the token's, or it refused the token or the node: trying again the
    /// same way cannot help.
    #[error("{0}")]
    Refused(String),
}

/// The node's password, made on the first start and kept in `path`.
pub fn node_password(path: &std::path::Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(p) if p.trim().len() >= 16 => Ok(p.trim().to_string()),
        _ => {
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            }
            let p = crate::pki::random_hex(16).map_err(|e| e.to_string())?;
            crate::pki::write_atomic(path, p.as_bytes(), 0o600).map_err(|e| e.to_string())?;
            Ok(p)
        }
    }
}

/// Joins `server` as `node`: the CA checked against the token, then the certificates asked
/// for with the token's credentials and the node's password.
pub async fn join(
    server: &str,
    token: &Token,
    node: &str,
    node_password: &str,
    address: Option<std::net::IpAddr>,
) -> Result<Joined, JoinError> {
    let transport = |e: ClientError| JoinError::Unreachable(format!("{server}: {e}"));
    let ca_pem = Client::unverified(server)
        .map_err(transport)?
        .get_text("/cacerts")
        .await
        .map_err(transport)?;
    let got = hex(&sha2::Sha256::digest(ca_pem.as_bytes()));
    if got != token.ca_hash {
        return Err(JoinError::Refused(format!(
            "the server at {server} is not the one the token is for: its CA's sha256 is {got}, \
             the token pins {} (a token from another cluster, or another machine at that \
             address); nothing was sent to it",
            token.ca_hash
        )));
    }
    let client = Client::anonymous(server, &ca_pem)
        .map_err(transport)?
        .with_basic_auth(&token.user, &token.password);
    let address = match address {
        Some(a) => a,
        None => client.local_addr().await.map_err(transport)?,
    };
    let ask = json!({"node": node, "password": node_password, "addresses": [address.to_string()]});
    let v = match client
        .call(hyper::Method::POST, PATH, "application/json", Some(&ask))
        .await
    {
        Ok(v) => v,
        Err(ClientError::Status {
            code: 400 | 401 | 403,
            message,
        }) => {
            return Err(JoinError::Refused(format!(
                "the server at {server} refused to let node {node} join: {message}"
            )));
        }
        Err(e) => return Err(transport(e)),
    };
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| JoinError::Unreachable(format!("{server}: the join answer lacks {p}")))
    };
    Ok(Joined {
        ca_pem: s("/ca")?,
        client: Pair {
            cert_pem: s("/client/cert")?,
            key_pem: s("/client/key")?,
        },
        serving: Pair {
            cert_pem: s("/serving/cert")?,
            key_pem: s("/serving/key")?,
        },
        address,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_as_k3s_writes_them() {
        let h = "ab".repeat(32);
        let t: Token = format!("K10{h}::server:s3cret").parse().expect("token");
        assert_eq!(
            t,
            Token {
                ca_hash: h.clone(),
                user: "server".into(),
                password: "s3cret".into()
            }
        );
        let upper: Token = format!("K10{}::server:x", h.to_uppercase())
            .parse()
            .expect("token");
        assert_eq!(upper.ca_hash, h, "the hash compares in lower case");
        for bad in [
            "",
            "s3cret",
            &format!("K10{h}"),
            &format!("K10{h}::server"),
            &format!("K10{h}::server:"),
            &format!("K10{h}::"),
            &format!("K10{}::server:x", &h[..63]),
            &format!("K10{}zz::server:x", &h[..62]),
        ] {
            let e = bad.parse::<Token>().expect_err(bad);
            assert!(e.contains("K10<64 hex digits>"), "{e}");
        }
    }

    #[test]
    fn comparison_is_exact() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }
}
