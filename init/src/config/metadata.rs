//! The HTTP metadata service (EC2-style): `ros.datasource=http://host[:port][/prefix]` on the
//! kernel command line names it; once the network is up, ros fetches
//! `<prefix>/latest/user-data` (ros's TOML, gzip allowed) and
//! `<prefix>/latest/meta-data/local-hostname`, retrying with a growing delay until a deadline
//! (`ros.datasource.timeout`, 10 s by default), so it never holds the boot for long.
//!
//! A plain HTTP/1.0 GET is all a metadata service needs (they are link-local and unencrypted);
//! an HTTP client crate (hyper, reqwest) would add hundreds of KiB to PID 1 for that, so this is
//! the small client of our own.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The command line options.
pub const URL_OPTION: &str = "datasource";
pub const TIMEOUT_OPTION: &str = "datasource.timeout";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// A larger answer is refused.
const MAX_BODY: usize = 1 << 20;

/// A parsed `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// The path prefix, without a trailing `/`.
    pub prefix: String,
}

pub fn parse_url(s: &str) -> Result<Url, String> {
    let rest = s.strip_prefix("http://").ok_or_else(|| {
        format!("`{s}`: the metadata service must be an http:// URL (https is not supported)")
    })?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => (
            h.trim_matches(|c| c == '[' || c == ']'),
            p.parse::<u16>()
                .map_err(|_| format!("`{s}`: bad port `{p}`"))?,
        ),
        _ => (hostport.trim_matches(|c| c == '[' || c == ']'), 80),
    };
    if host.is_empty() {
        return Err(format!("`{s}`: no host"));
    }
    Ok(Url {
        host: host.to_string(),
        port,
        prefix: path.trim_end_matches('/').to_string(),
    })
}

/// The status and body of an HTTP response.
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of the HTTP header")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let proto = parts.next().unwrap_or_default();
    if !proto.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP response: `{status_line}`"));
    }
    let code = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in `{status_line}`"))?;
    Ok((code, raw[end + 4..].to_vec()))
}

async fn get_once(url: &Url, path: &str) -> Result<(u16, Vec<u8>), String> {
    let mut s = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("connecting to {}:{}: {e}", url.host, url.port))?;
    let req = format!(
        "GET {}{path} HTTP/1.0\r\nHost: {}\r\nUser-Agent: ros/{}\r\n\r\n",
        url.prefix,
        url.host,
        env!("CARGO_PKG_VERSION")
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("sending: {e}"))?;
    let mut raw = Vec::new();
    (&mut s)
        .take((MAX_BODY + 16 * 1024) as u64)
        .read_to_end(&mut raw)
        .await
        .map_err(|e| format!("reading: {e}"))?;
    parse_response(&raw)
}

/// GETs `path`, retrying failures and 5xx answers until `deadline`. `Ok(None)` for a 404.
pub async fn get(
    url: &Url,
    path: &str,
    deadline: tokio::time::Instant,
) -> Result<Option<Vec<u8>>, String> {
    let mut delay = Duration::from_millis(250);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt = match tokio::time::timeout(left, get_once(url, path)).await {
            Ok(r) => r,
            Err(_) => Err("timed out".to_string()),
        };
        let err = match attempt {
            Ok((200, body)) => return Ok(Some(body)),
            Ok((404, _)) => return Ok(None),
            Ok((code, _)) if code < 500 => {
                return Err(format!("GET {}{path}: HTTP {code}", url.prefix));
            }
            Ok((code, _)) => format!("HTTP {code}"),
            Err(e) => e,
        };
        if tokio::time::Instant::now() + delay >= deadline {
            return Err(format!(
                "http://{}:{}{}{path}: {err} (gave up at the deadline)",
                url.host, url.port, url.prefix
            ));
        }
        log::debug!("metadata: {err}; retrying in {delay:?}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// What the service gave.
#[derive(Debug, Default)]
pub struct Fetched {
    pub user_data: Option<Vec<u8>>,
    pub local_hostname: Option<String>,
}

/// Fetches the user-data and the local hostname within `timeout`.
pub async fn fetch(url: &Url, timeout: Duration) -> Result<Fetched, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let user_data = get(url, "/latest/user-data", deadline).await?;
    let local_hostname = get(url, "/latest/meta-data/local-hostname", deadline)
        .await
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .filter(|h| !h.is_empty());
    Ok(Fetched {
        user_data,
        local_hostname,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://169.254.169.254/").expect("url"),
            Url {
                host: "169.254.169.254".into(),
                port: 80,
                prefix: String::new()
            }
        );
        assert_eq!(
            parse_url("http://10.0.2.2:8080/v1/").expect("url"),
            Url {
                host: "10.0.2.2".into(),
                port: 8080,
                prefix: "/v1".into()
            }
        );
        assert!(
            parse_url("https://x/")
                .expect_err("https")
                .contains("https")
        );
        assert!(parse_url("http://x:port/").is_err());
        assert!(parse_url("http:///").is_err());
    }

    #[test]
    fn responses() {
        let (code, body) =
            parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi").expect("ok");
        assert_eq!((code, body.as_slice()), (200, b"hi".as_slice()));
        assert_eq!(
            parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n")
                .expect("404")
                .0,
            404
        );
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.0 200 OK\r\n").is_err());
    }

    #[test]
    fn retries_until_the_service_answers_and_gives_up_at_the_deadline() {
        use std::io::{Read, Write};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            for (i, s) in l.incoming().take(3).enumerate() {
                let mut s = s.expect("conn");
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let answer: &[u8] = if i < 2 {
                    b"HTTP/1.0 503 Busy\r\n\r\n"
                } else {
                    b"HTTP/1.0 200 OK\r\n\r\nhostname = \"md\"\n"
                };
                s.write_all(answer).expect("write");
            }
        });
        let url = parse_url(&format!("http://127.0.0.1:{port}")).expect("url");
        let body = rt
            .block_on(get(
                &url,
                "/latest/user-data",
                tokio::time::Instant::now() + Duration::from_secs(10),
            ))
            .expect("get");
        server.join().expect("server");
        assert_eq!(body.as_deref(), Some(b"hostname = \"md\"\n".as_slice()));
        // Nobody listens: an error once the deadline passes, not a hang.
        let dead = parse_url(&format!("http://127.0.0.1:{port}")).expect("url");
        let t = std::time::Instant::now();
        let e = rt
            .block_on(get(
                &dead,
                "/x",
                tokio::time::Instant::now() + Duration::from_millis(800),
            ))
            .expect_err("nobody");
        assert!(e.contains("deadline"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3));
    }
}
