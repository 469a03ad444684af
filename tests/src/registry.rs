//! Registry fixtures: Debian's `docker-registry` (distribution 2.8) started on the loopback by
//! the test, optionally with TLS from a test CA and htpasswd auth, and OCI image layouts built
//! here and pushed into it with `skopeo copy`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sha2::Digest as _;

/// A running registry; killed when dropped.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// The CA's PEM when it serves TLS.
    pub ca: Option<String>,
    pub creds: Option<(String, String)>,
    /// The token service in front of it (`RegistryOptions::token`).
    pub token: Option<TokenService>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Default, Clone)]
pub struct RegistryOptions {
    pub tls: bool,
    pub creds: Option<(String, String)>,
    /// Listen on this port (e.g. to bring a stopped registry back on the same address).
    pub port: Option<u16>,
    /// Serve this storage folder (e.g. a registry's `dir/data` from before).
    pub data: Option<PathBuf>,
    /// With `creds`: the registry's token auth (the `WWW-Authenticate: Bearer realm=...` flow)
    /// with a [`TokenService`] in front of it, instead of htpasswd.
    pub token: bool,
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A CA and a server certificate for 127.0.0.1 and 10.0.2.2 (the guest's view of the host),
/// made with openssl in `dir`; returns (ca.pem, server.pem, server.key).
pub fn test_ca(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let p = |n: &str| dir.join(n);
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=ros test CA",
        ])
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem")))?;
    std::fs::write(
        p("san.cnf"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,IP:10.0.2.2,DNS:localhost\n",
    )?;
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=registry",
        ])
        .arg("-keyout")
        .arg(p("server.key"))
        .arg("-out")
        .arg(p("server.csr")))?;
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(p("server.csr"))
        .arg("-CA")
        .arg(p("ca.pem"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-extfile")
        .arg(p("san.cnf"))
        .arg("-out")
        .arg(p("server.pem")))?;
    Ok((p("ca.pem"), p("server.pem"), p("server.key")))
}

impl Registry {
    pub fn start(o: &RegistryOptions) -> Result<Registry> {
        let dir = tempfile::tempdir()?;
        let port = match o.port {
            Some(p) => p,
            None => crate::free_port()?,
        };
        let data = o.data.clone().unwrap_or_else(|| dir.path().join("data"));
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            data.display()
        );
        let mut ca = None;
        if o.tls {
            let (ca_pem, cert, key) = test_ca(dir.path())?;
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
            ca = Some(std::fs::read_to_string(ca_pem)?);
        }
        let mut token = None;
        if let (true, Some(creds)) = (o.token, &o.creds) {
            let t = TokenService::start(creds.clone())?;
            cfg.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {TOKEN_AUDIENCE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                t.realm(),
                t.cert.display()
            ));
            token = Some(t);
        } else if let Some((u, pw)) = &o.creds {
            let file = dir.path().join("htpasswd");
            run(Command::new("htpasswd")
                .args(["-Bbc"])
                .arg(&file)
                .args([u, pw]))?;
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: ros-test\n    path: {}\n",
                file.display()
            ));
        }
        let conf = dir.path().join("config.yml");
        std::fs::write(&conf, cfg)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry (Debian's docker-registry package)")?;
        let r = Registry {
            child,
            port,
            dir,
            ca,
            creds: o.creds.clone(),
            token,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "docker-registry did not listen on {port}:\n{}",
                    std::fs::read_to_string(r.dir.path().join("registry.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(r)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes the layout's `tag` (an image or an index, `--all`) as `name:tag`.
    pub fn push(&self, layout: &Path, tag: &str, name: &str) -> Result<()> {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--all", "--preserve-digests"]);
        if let Some(ca) = &self.ca {
            let certs = self.dir.path().join("certs.d");
            std::fs::create_dir_all(&certs)?;
            std::fs::write(certs.join("ca.crt"), ca)?;
            cmd.arg("--dest-cert-dir").arg(&certs);
        } else {
            cmd.arg("--dest-tls-verify=false");
        }
        if let Some((u, p)) = &self.creds {
            cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{name}:{tag}", self.host()));
        run(&mut cmd).map(drop)
    }

    /// The file holding a blob in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

const TOKEN_ISSUER: &str = "ros-test-issuer";
const TOKEN_AUDIENCE: &str = "ros-test-registry";

/// A token service as distribution's token auth expects one: `GET /token?scope=...&service=...`
/// with HTTP basic credentials answers `{"token": JWT}`, the JWT signed RS256 by a key whose
/// certificate the registry trusts (`rootcertbundle`), carried in the `x5c` header. Right
/// credentials get the actions the scopes ask for; no credentials get a token granting nothing;
/// wrong ones get 401. Every request is counted. Stopped when dropped.
#[derive(Debug)]
pub struct TokenService {
    pub port: u16,
    _dir: tempfile::TempDir,
    cert: PathBuf,
    pub requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for TokenService {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl TokenService {
    pub fn start(creds: (String, String)) -> Result<TokenService> {
        use base64::Engine as _;
        let dir = tempfile::tempdir()?;
        let (key, cert) = (dir.path().join("token.key"), dir.path().join("token.pem"));
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=ros test token issuer", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert))?;
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()?;
        ensure!(der.status.success(), "openssl x509 -outform DER failed");
        let x5c = base64::engine::general_purpose::STANDARD.encode(&der.stdout);
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        l.set_nonblocking(true)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, n) = (stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let _ = c.set_nonblocking(false);
                        let _ = Self::answer(c, &creds, &key, &x5c);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(TokenService {
            port,
            _dir: dir,
            cert,
            requests,
            stop,
            thread: Some(thread),
        })
    }

    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    fn answer(
        mut c: std::net::TcpStream,
        creds: &(String, String),
        key: &Path,
        x5c: &str,
    ) -> Result<()> {
        use base64::Engine as _;
        use std::io::{BufRead, BufReader};
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut r = BufReader::new(c.try_clone()?);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let target = line.split(' ').nth(1).unwrap_or("").to_string();
        let mut auth = None;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("authorization")
            {
                auth = Some(v.trim().to_string());
            }
        }
        let mut reply = |status: &str, body: &str| {
            write!(
                c,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        let user = match auth.as_deref().and_then(|a| a.strip_prefix("Basic ")) {
            None => None,
            Some(b) => {
                let given = base64::engine::general_purpose::STANDARD.decode(b.trim())?;
                if given != format!("{}:{}", creds.0, creds.1).as_bytes() {
                    reply("401 Unauthorized", r#"{"details":"wrong credentials"}"#)?;
                    return Ok(());
                }
                Some(creds.0.clone())
            }
        };
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let mut access = Vec::new();
        for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            let v = percent_decode(v);
            if k != "scope" || user.is_none() {
                continue;
            }
            // repository:NAME:ACTION[,ACTION]; NAME may hold a colon-free path.
            let parts: Vec<&str> = v.splitn(3, ':').collect();
            if let [kind, name, actions] = parts[..] {
                access.push(serde_json::json!({
                    "type": kind, "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }));
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER, "aud": TOKEN_AUDIENCE, "sub": user.unwrap_or_default(),
            "iat": now, "nbf": now - 10, "exp": now + 300, "jti": format!("{now}-{}", std::process::id()),
            "access": access,
        });
        let signing = format!(
            "{}.{}",
            b64(&serde_json::to_vec(&header)?),
            b64(&serde_json::to_vec(&claims)?)
        );
        let mut sign = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        sign.stdin
            .take()
            .context("openssl's stdin")?
            .write_all(signing.as_bytes())?;
        let sig = sign.wait_with_output()?;
        ensure!(sig.status.success(), "openssl dgst -sign failed");
        let token = format!("{signing}.{}", b64(&sig.stdout));
        reply(
            "200 OK",
            &serde_json::json!({"token": token, "expires_in": 300}).to_string(),
        )?;
        Ok(())
    }
}

fn percent_decode(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&c, tail)) = rest.split_first() {
        let hex = tail
            .get(..2)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (c, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                rest = &tail[2..];
            }
            _ => {
                out.push(c);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How a layer is compressed in a built layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comp {
    Gzip,
    /// With Debian's `zstd`.
    Zstd,
    None,
}

/// An OCI image layout being built: blobs, then images and indexes named in index.json.
#[derive(Debug)]
pub struct Layout {
    pub dir: PathBuf,
    refs: Vec<serde_json::Value>,
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex(&sha2::Sha256::digest(b)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a built image is.
#[derive(Debug, Clone)]
pub struct Built {
    pub manifest: String,
    pub manifest_size: usize,
    pub config: String,
    /// Compressed digests, bottom first.
    pub layers: Vec<String>,
    pub diff_ids: Vec<String>,
}

impl Layout {
    pub fn new(dir: &Path) -> Result<Layout> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))?;
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(Layout {
            dir: dir.to_path_buf(),
            refs: Vec::new(),
        })
    }

    pub fn blob(&self, bytes: &[u8]) -> Result<String> {
        let d = sha(bytes);
        std::fs::write(self.dir.join("blobs/sha256").join(&d[7..]), bytes)?;
        Ok(d)
    }

    /// A tar of `files` (path, mode, content; a path ending in `/` is a folder, content
    /// `->target` a symlink).
    pub fn tar(files: &[(&str, u32, &[u8])]) -> Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, mode, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(*mode);
            h.set_mtime(1_700_000_000);
            h.set_uid(0);
            h.set_gid(0);
            if path.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, path, &[][..])?;
            } else if let Some(target) = data.strip_prefix(b"->") {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, path, std::str::from_utf8(target)?)?;
            } else {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, *data)?;
            }
        }
        Ok(b.into_inner()?)
    }

    /// An image of these layers (tars) for `arch`; returns what it is.
    pub fn image(&mut self, arch: &str, layers: &[(Vec<u8>, Comp)]) -> Result<Built> {
        let mut descs = Vec::new();
        let (mut digests, mut diff_ids) = (Vec::new(), Vec::new());
        for (tar, comp) in layers {
            diff_ids.push(sha(tar));
            let (bytes, mt) = match comp {
                Comp::Gzip => {
                    let mut e =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    e.write_all(tar)?;
                    (e.finish()?, "application/vnd.oci.image.layer.v1.tar+gzip")
                }
                Comp::Zstd => {
                    let mut z = Command::new("zstd")
                        .args(["-q", "-3", "-c"])
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .spawn()
                        .context("running zstd (Debian's zstd package)")?;
                    let mut stdin = z.stdin.take().context("zstd's stdin")?;
                    let input = tar.clone();
                    let feed = std::thread::spawn(move || stdin.write_all(&input));
                    let out = z.wait_with_output()?;
                    feed.join().map_err(|_| anyhow::anyhow!("feeding zstd"))??;
                    ensure!(out.status.success(), "zstd failed");
                    (out.stdout, "application/vnd.oci.image.layer.v1.tar+zstd")
                }
                Comp::None => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
            };
            let d = self.blob(&bytes)?;
            digests.push(d.clone());
            descs.push(serde_json::json!({"mediaType": mt, "digest": d, "size": bytes.len()}));
        }
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": {"Entrypoint": ["/bin/sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let cb = serde_json::to_vec(&config)?;
        let cd = self.blob(&cb)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cb.len()},
            "layers": descs,
        });
        let mb = serde_json::to_vec(&manifest)?;
        let md = self.blob(&mb)?;
        Ok(Built {
            manifest: md,
            manifest_size: mb.len(),
            config: cd,
            layers: digests,
            diff_ids,
        })
    }

    /// Names `image` as `tag` in index.json.
    pub fn tag_image(&mut self, tag: &str, b: &Built, arch: &str) -> Result<()> {
        self.refs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": b.manifest, "size": b.manifest_size,
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
        self.write_index()
    }

    /// Names an index of `images` (arch, built) as `tag`; returns the index's digest.
    pub fn tag_index(&mut self, tag: &str, images: &[(&str, &Built)]) -> Result<String> {
        let manifests: Vec<serde_json::Value> = images
            .iter()
            .map(|(arch, b)| {
                let mut p = serde_json::json!({"architecture": arch, "os": "linux"});
                if *arch == "arm64" {
                    p["variant"] = "v8".into();
                }
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": b.manifest, "size": b.manifest_size, "platform": p,
                })
            })
            .collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        let ib = serde_json::to_vec(&index)?;
        let id = self.blob(&ib)?;
        self.refs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": id, "size": ib.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
        self.write_index()?;
        Ok(id)
    }

    fn write_index(&self) -> Result<()> {
        let index = serde_json::json!({"schemaVersion": 2, "manifests": self.refs});
        std::fs::write(self.dir.join("index.json"), serde_json::to_vec(&index)?)?;
        Ok(())
    }
}

/// A loopback port held for a test: every connection is closed at once, as by a host with
/// nothing listening, while no other test's `free_port()` can get it. Dropped (or
/// [`Refuser::release`]d), the port is free again.
#[derive(Debug)]
pub struct Refuser {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Refuser {
    pub fn start() -> Result<Refuser> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        l.set_nonblocking(true)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => drop(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Refuser {
            port,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops refusing and frees the port (for a server to take it).
    pub fn release(mut self) -> u16 {
        self.stop_now();
        self.port
    }

    fn stop_now(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Refuser {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// A TCP relay on the loopback in front of a server, counting the bytes it passes back and
/// holding them to `rate` bytes a second (0: no limit; changed at any time): a pull through it
/// is slow enough to be cut at a known point. Stopped when dropped (open relays end with their
/// connections).
#[derive(Debug)]
pub struct Relay {
    pub port: u16,
    /// Bytes passed from the server to its clients so far.
    pub bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub rate: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    pub fn start(to_port: u16, rate: u64) -> Result<Relay> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        l.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let limit = Arc::new(AtomicU64::new(rate));
        let (s, b, r) = (stop.clone(), bytes.clone(), limit.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((client, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", to_port)) else {
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let (b, r) = (b.clone(), r.clone());
                let (Ok(mut c_in), Ok(mut s_out)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_in, &mut s_out);
                    let _ = s_out.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let (mut server, mut client) = (server, client);
                    let mut buf = vec![0u8; 16 << 10];
                    let start = Instant::now();
                    let mut sent = 0u64;
                    while let Ok(n) = std::io::Read::read(&mut server, &mut buf) {
                        if n == 0 || client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        b.fetch_add(n as u64, Ordering::Relaxed);
                        sent += n as u64;
                        let rate = r.load(Ordering::Relaxed);
                        if rate > 0 {
                            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                            if let Some(wait) = due.checked_sub(start.elapsed()) {
                                std::thread::sleep(wait);
                            }
                        }
                    }
                    let _ = client.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Ok(Relay {
            port,
            bytes,
            rate: limit,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
