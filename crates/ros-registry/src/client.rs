//! The distribution API over HTTP(S): endpoints (mirrors in order, then the registry itself,
//! with k3s's `registries.yaml` meaning), credentials (basic, and the bearer-token flow a
//! `WWW-Authenticate` challenge asks for), TLS with built-in roots or a registry's own CA.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::reference::Reference;

/// The registry settings (the user-data's `[registries]`, with CA files already read).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Registries {
    /// Registry name (`docker.io`, `10.0.2.2:5000`, or `*` for every registry) -> endpoints.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    /// Endpoint host (`host:port`, as in an endpoint's URL or the registry's name) -> settings.
    #[serde(default)]
    pub configs: BTreeMap<String, HostConfig>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    pub endpoints: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// `base64(username:password)`, as Docker's config.json has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// PEM: the CA(s) this host's certificate must chain to (instead of the built-in roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

impl HostConfig {
    fn credentials(&self) -> Option<(String, String)> {
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            return Some((u.clone(), p.clone()));
        }
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(self.auth.as_ref()?.trim())
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (u, p) = text.split_once(':')?;
        Some((u.to_string(), p.to_string()))
    }
}

/// Where a registry's API is asked: `scheme://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub base: String,
    pub host: String,
    pub mirror: bool,
}

impl Endpoint {
    pub fn parse(s: &str, mirror: bool) -> Result<Endpoint, String> {
        let (scheme, rest) = match s.split_once("://") {
            Some((sc @ ("http" | "https"), rest)) => (sc, rest),
            Some((sc, _)) => {
                return Err(format!(
                    "endpoint `{s}`: scheme `{sc}` is not http or https"
                ));
            }
            None => ("https", s),
        };
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') || host.contains('@') || host.contains('?') {
            return Err(format!("endpoint `{s}` is not scheme://host[:port]"));
        }
        Ok(Endpoint {
            base: format!("{scheme}://{host}"),
            host: host.to_string(),
            mirror,
        })
    }

    pub fn is_https(&self) -> bool {
        self.base.starts_with("https://")
    }
}

/// What went wrong, by what can be done about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PullError {
    /// Unreachable, timed out, or the server failed (5xx, 429).
    #[error("{0}")]
    Unavailable(String),
    /// Refused credentials, or none where they are needed.
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    NotFound(String),
    /// Content that is not what it claims (digest, size, format).
    #[error("{0}")]
    Invalid(String),
    /// Something this machine cannot do (HTTPS on a CPU without the crypto's instructions).
    #[error("{0}")]
    Unsupported(String),
    /// The local store (disk full, permissions).
    #[error("{0}")]
    Store(String),
}

impl PullError {
    /// Worth trying again later: the registry unreachable or failing, or the image not there
    /// (yet: a service may name an image before it is pushed, as a pod may). Refused
    /// credentials, bad content and what this machine cannot do are not.
    pub fn retryable(&self) -> bool {
        matches!(self, PullError::Unavailable(_) | PullError::NotFound(_))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            PullError::Unavailable(_) => "unavailable",
            PullError::Auth(_) => "auth",
            PullError::NotFound(_) => "not_found",
            PullError::Invalid(_) => "invalid",
            PullError::Unsupported(_) => "unsupported",
            PullError::Store(_) => "store",
        }
    }

    fn with_message(&self, m: String) -> PullError {
        match self {
            PullError::Unavailable(_) => PullError::Unavailable(m),
            PullError::Auth(_) => PullError::Auth(m),
            PullError::NotFound(_) => PullError::NotFound(m),
            PullError::Invalid(_) => PullError::Invalid(m),
            PullError::Unsupported(_) => PullError::Unsupported(m),
            PullError::Store(_) => PullError::Store(m),
        }
    }
}

/// A `WWW-Authenticate` challenge: scheme and parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

/// Parses one challenge (`Bearer realm="...",service="...",scope="..."`, `Basic realm="..."`).
pub fn parse_challenge(h: &str) -> Option<Challenge> {
    let h = h.trim();
    let (scheme, mut rest) = match h.split_once(' ') {
        Some((s, r)) => (s, r.trim_start()),
        None => (h, ""),
    };
    let mut params = BTreeMap::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => v.push(c),
                }
            }
            (v, &q[end?..])
        } else {
            let stop = after.find(',').unwrap_or(after.len());
            (after[..stop].trim().to_string(), &after[stop..])
        };
        params.insert(key, value);
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

/// The crypto provider needs these CPU features (graviola's requirements).
pub fn tls_cpu_check() -> Result<(), String> {
    #[cfg(target_arch = "x86_64")]
    {
        let have = [
            ("aes", std::arch::is_x86_feature_detected!("aes")),
            ("ssse3", std::arch::is_x86_feature_detected!("ssse3")),
            (
                "pclmulqdq",
                std::arch::is_x86_feature_detected!("pclmulqdq"),
            ),
            ("avx", std::arch::is_x86_feature_detected!("avx")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("bmi1", std::arch::is_x86_feature_detected!("bmi1")),
            ("bmi2", std::arch::is_x86_feature_detected!("bmi2")),
            ("adx", std::arch::is_x86_feature_detected!("adx")),
        ];
        let missing: Vec<&str> = have.iter().filter(|(_, h)| !h).map(|(n, _)| *n).collect();
        if !missing.is_empty() {
            return Err(format!(
                "HTTPS needs a CPU with {}; this one lacks {} (plain-HTTP registries still work)",
                have.map(|(n, _)| n).join(", "),
                missing.join(", ")
            ));
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        let have = [
            ("aes", std::arch::is_aarch64_feature_detected!("aes")),
            ("sha2", std::arch::is_aarch64_feature_detected!("sha2")),
            ("pmull", std::arch::is_aarch64_feature_detected!("pmull")),
            ("neon", std::arch::is_aarch64_feature_detected!("neon")),
        ];
        let missing: Vec<&str> = have.iter().filter(|(_, h)| !h).map(|(n, _)| *n).collect();
        if !missing.is_empty() {
            return Err(format!(
                "HTTPS needs a CPU with aes, sha2, pmull and neon; this one lacks {} (plain-HTTP registries still work)",
                missing.join(", ")
            ));
        }
    }
    Ok(())
}

#[derive(Debug)]
pub struct Client {
    cfg: Registries,
    agents: Mutex<BTreeMap<String, ureq::Agent>>,
    /// (endpoint host, repository) -> Authorization header value.
    auth: Mutex<BTreeMap<(String, String), String>>,
    user_agent: String,
}

impl Client {
    pub fn new(cfg: Registries) -> Client {
        Client {
            cfg,
            agents: Mutex::new(BTreeMap::new()),
            auth: Mutex::new(BTreeMap::new()),
            user_agent: format!("ros/{}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// Where `r` is asked, in order: its mirrors (or `*`'s), then the registry itself unless a
    /// mirror is already that host.
    pub fn endpoints(&self, r: &Reference) -> Result<Vec<Endpoint>, PullError> {
        let mirrors = self
            .cfg
            .mirrors
            .get(&r.registry)
            .or_else(|| self.cfg.mirrors.get("*"));
        let mut out = Vec::new();
        for e in mirrors.map(|m| &m.endpoints[..]).unwrap_or_default() {
            out.push(Endpoint::parse(e, true).map_err(PullError::Invalid)?);
        }
        let own = Endpoint::parse(r.api_host(), false).map_err(PullError::Invalid)?;
        if !out.iter().any(|e| e.host == own.host) {
            out.push(own);
        }
        Ok(out)
    }

    fn host_config(&self, host: &str) -> HostConfig {
        self.cfg.configs.get(host).cloned().unwrap_or_default()
    }

    fn agent(&self, ep: &Endpoint) -> Result<ureq::Agent, PullError> {
        let mut agents = self
            .agents
            .lock()
            .map_err(|_| PullError::Store("lock".into()))?;
        if let Some(a) = agents.get(&ep.base) {
            return Ok(a.clone());
        }
        let mut b = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(5)
            .user_agent(self.user_agent.as_str())
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(60)));
        if ep.is_https() {
            tls_cpu_check().map_err(|e| PullError::Unsupported(format!("{}: {e}", ep.base)))?;
            let hc = self.host_config(&ep.host);
            let roots = match &hc.ca {
                Some(pem) => {
                    let certs: Vec<ureq::tls::Certificate<'static>> =
                        ureq::tls::parse_pem(pem.as_bytes())
                            .filter_map(|i| match i {
                                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                                _ => None,
                            })
                            .collect();
                    if certs.is_empty() {
                        return Err(PullError::Invalid(format!(
                            "registries.configs.\"{}\": its CA holds no PEM certificate",
                            ep.host
                        )));
                    }
                    ureq::tls::RootCerts::Specific(Arc::new(certs))
                }
                None => ureq::tls::RootCerts::WebPki,
            };
            let tls = ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .unversioned_rustls_crypto_provider(Arc::new(rustls_graviola::default_provider()))
                .root_certs(roots)
                .disable_verification(hc.insecure_skip_verify)
                .build();
            b = b.tls_config(tls);
        }
        let a: ureq::Agent = b.build().into();
        agents.insert(ep.base.clone(), a.clone());
        Ok(a)
    }

    fn transport(ep: &Endpoint, url: &str, e: ureq::Error) -> PullError {
        let text = e.to_string();
        let tls = matches!(e, ureq::Error::Tls(_) | ureq::Error::Rustls(_))
            || text.contains("certificate")
            || text.contains("TLS");
        let what = if ep.is_https() && tls {
            format!("TLS with {}: {e}", ep.host)
        } else {
            format!("{url}: {e}")
        };
        PullError::Unavailable(what)
    }

    /// GET `path` (after `/v2/`) on `ep`, answering an auth challenge once.
    fn get(
        &self,
        ep: &Endpoint,
        repo: &str,
        path: &str,
        accept: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>, PullError> {
        let agent = self.agent(ep)?;
        let url = format!("{}/v2/{repo}/{path}", ep.base);
        let key = (ep.host.clone(), repo.to_string());
        let send = |auth: Option<&str>| {
            let mut req = agent.get(&url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            req.call().map_err(|e| Self::transport(ep, &url, e))
        };
        let cached = self.auth.lock().ok().and_then(|m| m.get(&key).cloned());
        let mut resp = send(cached.as_deref())?;
        if resp.status().as_u16() == 401 {
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge)
                .ok_or_else(|| {
                    PullError::Auth(format!("{url}: 401 without a usable WWW-Authenticate"))
                })?;
            let header = self.answer(ep, repo, &challenge)?;
            resp = send(Some(&header))?;
            if resp.status().as_u16() == 401 {
                let what = if self.host_config(&ep.host).credentials().is_some() {
                    "the credentials were refused (401); check"
                } else {
                    "an anonymous pull was refused (401); set a username and password in"
                };
                return Err(PullError::Auth(format!(
                    "{}: {what} registries.configs.\"{}\"",
                    ep.host, ep.host
                )));
            }
            if let Ok(mut m) = self.auth.lock() {
                m.insert(key, header);
            }
        }
        let status = resp.status().as_u16();
        match status {
            200..=299 => Ok(resp),
            401 | 403 => Err(PullError::Auth(format!("{url}: {status}, access denied"))),
            404 => Err(PullError::NotFound(format!("{url}: not found (404)"))),
            408 | 429 | 500..=599 => Err(PullError::Unavailable(format!("{url}: {status}"))),
            _ => Err(PullError::Invalid(format!(
                "{url}: unexpected status {status}"
            ))),
        }
    }

    /// The Authorization header for a challenge.
    fn answer(&self, ep: &Endpoint, repo: &str, c: &Challenge) -> Result<String, PullError> {
        use base64::Engine as _;
        let creds = self.host_config(&ep.host).credentials();
        let basic = |(u, p): &(String, String)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        };
        match c.scheme.as_str() {
            "basic" => creds.as_ref().map(basic).ok_or_else(|| {
                PullError::Auth(format!(
                    "{} asks for a username and password: set registries.configs.\"{}\"",
                    ep.host, ep.host
                ))
            }),
            "bearer" => {
                let realm = c.params.get("realm").ok_or_else(|| {
                    PullError::Auth(format!("{}: a bearer challenge without a realm", ep.host))
                })?;
                let scope = c
                    .params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{repo}:pull"));
                let mut url = format!("{realm}?scope={}", encode(&scope));
                if let Some(s) = c.params.get("service") {
                    url.push_str(&format!("&service={}", encode(s)));
                }
                let realm_ep = Endpoint::parse(
                    realm
                        .split_once("://")
                        .map_or(realm.as_str(), |(_, r)| r.split('/').next().unwrap_or(r)),
                    false,
                )
                .map(|mut e| {
                    if realm.starts_with("http://") {
                        e.base = e.base.replacen("https://", "http://", 1);
                    }
                    e
                })
                .map_err(PullError::Auth)?;
                let agent = self.agent(&realm_ep)?;
                let mut req = agent.get(&url);
                if let Some(c) = &creds {
                    req = req.header("Authorization", basic(c));
                }
                let mut resp = req
                    .call()
                    .map_err(|e| Self::transport(&realm_ep, &url, e))?;
                match resp.status().as_u16() {
                    200 => {}
                    401 | 403 => {
                        return Err(PullError::Auth(format!(
                            "the token service {realm} refused {} ({}); check registries.configs.\"{}\"",
                            if creds.is_some() {
                                "the credentials"
                            } else {
                                "an anonymous pull"
                            },
                            resp.status().as_u16(),
                            ep.host
                        )));
                    }
                    s => {
                        return Err(PullError::Unavailable(format!(
                            "token service {realm}: {s}"
                        )));
                    }
                }
                #[derive(Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let t: Token =
                    serde_json::from_reader(resp.body_mut().with_config().limit(1 << 20).reader())
                        .map_err(|e| PullError::Auth(format!("token service {realm}: {e}")))?;
                let token = t
                    .token
                    .or(t.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        PullError::Auth(format!("token service {realm} gave no token"))
                    })?;
                Ok(format!("Bearer {token}"))
            }
            other => Err(PullError::Auth(format!(
                "{}: auth scheme `{other}` is not basic or bearer",
                ep.host
            ))),
        }
    }

    /// Tries each endpoint in order; returns the first success, or every failure joined
    /// (classed as the registry's own, the last one, was).
    fn each<T>(
        &self,
        eps: &[Endpoint],
        mut f: impl FnMut(&Endpoint) -> Result<T, PullError>,
    ) -> Result<T, PullError> {
        let mut errors: Vec<(String, PullError)> = Vec::new();
        for ep in eps {
            match f(ep) {
                Ok(v) => return Ok(v),
                // Content that is wrong is wrong wherever it came from: no fallback.
                Err(e @ (PullError::Invalid(_) | PullError::Store(_))) => return Err(e),
                Err(e) => errors.push((ep.base.clone(), e)),
            }
        }
        let Some((_, last)) = errors.last() else {
            return Err(PullError::Invalid("no endpoint to ask".into()));
        };
        if errors.len() == 1 {
            return Err(last.clone());
        }
        let all: Vec<String> = errors.iter().map(|(b, e)| format!("{b}: {e}")).collect();
        Err(last.with_message(all.join("; ")))
    }

    /// The manifest named `target` (tag or digest), at most [`crate::manifest::MAX_MANIFEST`]
    /// bytes, from the first endpoint that has it.
    pub fn manifest(
        &self,
        eps: &[Endpoint],
        repo: &str,
        target: &str,
    ) -> Result<(Vec<u8>, Option<String>, Endpoint), PullError> {
        self.each(eps, |ep| {
            let resp = self.get(
                ep,
                repo,
                &format!("manifests/{target}"),
                Some(crate::manifest::ACCEPT),
            )?;
            let ct = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let mut body = Vec::new();
            resp.into_body()
                .into_with_config()
                .limit(crate::manifest::MAX_MANIFEST)
                .reader()
                .read_to_end(&mut body)
                .map_err(|e| {
                    PullError::Unavailable(format!("{}: reading the manifest: {e}", ep.base))
                })?;
            Ok((body, ct, ep.clone()))
        })
    }

    /// A blob's body as a stream (checked by the caller as it reads).
    pub fn blob(
        &self,
        eps: &[Endpoint],
        repo: &str,
        digest: &str,
    ) -> Result<Box<dyn Read + Send>, PullError> {
        self.each(eps, |ep| {
            let resp = self.get(ep, repo, &format!("blobs/{digest}"), None)?;
            let body: Box<dyn Read + Send> =
                Box::new(resp.into_body().into_with_config().limit(u64::MAX).reader());
            Ok(body)
        })
    }
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_parsed() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["scope"], "repository:library/nginx:pull");
        let c = parse_challenge(r#"Basic realm="Registry \"x\" Realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], r#"Registry "x" Realm"#);
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
    }

    #[test]
    fn mirrors_come_first_then_the_registry() {
        let cfg: Registries = serde_json::from_str(
            r#"{"mirrors":{"docker.io":{"endpoints":["http://10.0.2.2:5001","https://m.example:5000/"]}}}"#,
        )
        .unwrap();
        let c = Client::new(cfg);
        let eps = c.endpoints(&Reference::parse("nginx").unwrap()).unwrap();
        let bases: Vec<&str> = eps.iter().map(|e| e.base.as_str()).collect();
        assert_eq!(
            bases,
            [
                "http://10.0.2.2:5001",
                "https://m.example:5000",
                "https://registry-1.docker.io"
            ]
        );
        let eps = c
            .endpoints(&Reference::parse("10.0.2.2:5000/x").unwrap())
            .unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!(
            eps[0].base, "https://10.0.2.2:5000",
            "HTTP only where the config says"
        );
        assert!(Endpoint::parse("ftp://x", true).is_err());
        assert!(Endpoint::parse("https://x/v2/path", true).is_err());
    }

    #[test]
    fn credentials_from_auth_or_fields() {
        use base64::Engine as _;
        let h = HostConfig {
            auth: Some(base64::engine::general_purpose::STANDARD.encode("u:p:q")),
            ..Default::default()
        };
        assert_eq!(h.credentials(), Some(("u".into(), "p:q".into())));
        let h = HostConfig {
            username: Some("a".into()),
            password: Some("b".into()),
            ..Default::default()
        };
        assert_eq!(h.credentials(), Some(("a".into(), "b".into())));
    }
}
