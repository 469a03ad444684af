//! Fixtures for the tests that boot ros in QEMU: images built once per change (under a lock, so
//! parallel test processes share one build), guests configured for a test, and typed access to
//! the ready line.

pub mod chrony;
pub mod flood;
pub mod registry;
pub mod tmux;
pub mod worst;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
pub use ros_image::Arch;
use ros_image::{BuildOptions, InitKind};
use ros_qemu::{BootConfig, Guest};

/// How long a boot may take to the ready line under TCG on a busy 2-core machine.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Builds (or finds up to date) the image for `arch` and returns its folder. Parallel callers
/// wait on one lock file, so one build serves them all.
pub fn image(arch: Arch) -> Result<PathBuf> {
    build(arch, InitKind::Ros)
}

/// The same kernel with the null init (`initramfs-null.img` in the image folder).
pub fn null_image(arch: Arch) -> Result<PathBuf> {
    build(arch, InitKind::Null)
}

fn build(arch: Arch, init: InitKind) -> Result<PathBuf> {
    let out = ros_image::default_out(arch);
    std::fs::create_dir_all(&out)?;
    let lock_path = out.join(".build.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", lock_path.display()))?;
    ros_image::build(&BuildOptions {
        arch,
        out: out.clone(),
        refresh_kernel: false,
        init,
        quiet: true,
        layer_store: ros_image::images::LayerStore::Tree,
        user_data: None,
    })?;
    Ok(out)
}

/// A boot of the image for `arch` with QEMU's defaults for the tests.
pub fn config(arch: Arch) -> Result<BootConfig> {
    Ok(BootConfig {
        image: image(arch)?,
        ..BootConfig::new(arch)
    })
}

/// Boots and waits for the ready line.
pub fn boot_ready(cfg: &BootConfig) -> Result<(Guest, serde_json::Value)> {
    let g = Guest::spawn(cfg)?;
    let ready = g.wait_ready(READY_TIMEOUT)?;
    Ok((g, ready))
}

/// The architectures the tests run on: both, or the one named by `ROS_TEST_ARCH`.
pub fn arches() -> Vec<Arch> {
    match std::env::var("ROS_TEST_ARCH") {
        Ok(a) => a
            .parse()
            .map(|a| vec![a])
            .unwrap_or_else(|_| Arch::ALL.to_vec()),
        Err(_) => Arch::ALL.to_vec(),
    }
}

/// A ready line's interface by name.
pub fn interface<'a>(ready: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    ready["interfaces"]
        .as_array()?
        .iter()
        .find(|i| i["name"] == name)
}

/// The strings of a JSON array.
pub fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A free TCP port on 127.0.0.1 (free when asked; QEMU binds it right after).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// An ed25519 key pair made with ssh-keygen, in its own folder.
#[derive(Debug)]
pub struct SshKey {
    _dir: tempfile::TempDir,
    pub private: PathBuf,
    pub public: String,
}

impl SshKey {
    pub fn new() -> Result<SshKey> {
        let dir = tempfile::tempdir()?;
        let private = dir.path().join("id_ed25519");
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "ros-test", "-f"])
            .arg(&private)
            .output()
            .context("running ssh-keygen (apt-get install openssh-client)")?;
        anyhow::ensure!(
            out.status.success(),
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let public = std::fs::read_to_string(private.with_extension("pub"))?
            .trim()
            .to_string();
        Ok(SshKey {
            _dir: dir,
            private,
            public,
        })
    }

    /// Runs `cmd` as root over SSH on 127.0.0.1:`port`, retrying the connection until
    /// `timeout` (the server may still be starting). Returns stdout; fails on a non-zero exit.
    pub fn run(&self, port: u16, cmd: &str, timeout: Duration) -> Result<String> {
        self.run_as("root", port, cmd, timeout)
    }

    /// Runs `ros ARGS` in the console as root: its exit code and its output (stdout and
    /// stderr together).
    pub fn ros(&self, port: u16, args: &str, timeout: Duration) -> Result<(i32, String)> {
        let out = self.run(port, &format!("ros {args} 2>&1; echo \"exit=$?\""), timeout)?;
        let (body, last) = out
            .trim_end()
            .rsplit_once('\n')
            .unwrap_or(("", out.trim_end()));
        let code = last
            .strip_prefix("exit=")
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("no exit code in {out}"))?;
        Ok((code, body.to_string()))
    }

    /// Copies the local file `from` to `to` in the console (as root, mode 755), over SSH.
    pub fn copy_to(&self, port: u16, from: &std::path::Path, to: &str) -> Result<()> {
        let out = self
            .ssh(port, "root")
            .arg(format!("cat > {to} && chmod 755 {to}"))
            .stdin(std::fs::File::open(from)?)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "copying {} to {to}: {}",
            from.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// `ssh` to `user` on the forwarded `port` with this key, no host key checks, no prompts;
    /// the remote command is the caller's to add.
    fn ssh(&self, port: u16, user: &str) -> std::process::Command {
        let mut c = std::process::Command::new("ssh");
        c.args(["-p", &port.to_string(), "-i"])
            .arg(&self.private)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "BatchMode=yes",
                &format!("{user}@127.0.0.1"),
            ]);
        c
    }

    /// As [`SshKey::run`], logged in as `user`.
    pub fn run_as(&self, user: &str, port: u16, cmd: &str, timeout: Duration) -> Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let out = self.ssh(port, user).arg(cmd).output()?;
            // 255: ssh itself failed (no connection yet); anything else is the command's.
            if out.status.code() != Some(255) {
                anyhow::ensure!(
                    out.status.success(),
                    "`{cmd}` failed ({}): {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            if std::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "no SSH connection on port {port}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// `GET /` over HTTP/1.0 on 127.0.0.1:`port`; the body.
pub fn http_get(port: u16, timeout: Duration) -> Result<String> {
    http_get_path(port, "/", timeout)
}

/// `GET path` over HTTP/1.0 on 127.0.0.1:`port`, retried until a 200 or `timeout`; the body.
pub fn http_get_path(port: u16, path: &str, timeout: Duration) -> Result<String> {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let attempt = (|| -> Result<String> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: ros\r\n\r\n")?;
            let mut r = String::new();
            s.read_to_string(&mut r)?;
            let (head, body) = r.split_once("\r\n\r\n").context("no HTTP header")?;
            anyhow::ensure!(
                head.starts_with("HTTP/1.") && head.contains(" 200 "),
                "{path}: {head}"
            );
            Ok(body.to_string())
        })();
        match attempt {
            Ok(b) => return Ok(b),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// The position of `needle` in `text`, for order checks.
pub fn at(text: &str, needle: &str) -> Result<usize> {
    text.find(needle)
        .with_context(|| format!("`{needle}` is not in the console"))
}

/// The digest (hex) of the top layer of one of the image's OCI images.
pub fn top_layer(image: &std::path::Path, name: &str) -> Result<String> {
    let oci = image.join("oci");
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(oci.join("index.json"))?)?;
    let digest = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == name)
        .and_then(|m| m["digest"].as_str())
        .with_context(|| format!("no image {name} in {}", oci.display()))?;
    let blob = |d: &str| {
        oci.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(digest))?)?;
    let top = manifest["layers"]
        .as_array()
        .and_then(|l| l.last())
        .and_then(|l| l["digest"].as_str())
        .with_context(|| format!("image {name} has no layers"))?;
    Ok(top.trim_start_matches("sha256:").to_string())
}

/// An initramfs of ros's image with `archive` appended (the kernel unpacks both; a later entry
/// replaces an earlier one), written to `out`: how the shell peer and the runtime guest put a
/// shell script in place of ros's init. The archive's `/bin` is usually linked to the busybox
/// image's top layer ([`busybox_bin`]).
pub fn append_initramfs(
    image: &std::path::Path,
    archive: &ros_image::cpio::Archive,
    out: &std::path::Path,
) -> Result<()> {
    let mut img = std::fs::read(image.join("initramfs.img"))?;
    img.extend(ros_image::compress(&archive.to_newc())?);
    std::fs::write(out, img).with_context(|| format!("writing {}", out.display()))
}

/// Links `bin` in `archive` to the busybox image's `/bin` in ros's layer store (busybox and
/// a link per applet).
pub fn busybox_bin(image: &std::path::Path, archive: &mut ros_image::cpio::Archive) -> Result<()> {
    let layer = top_layer(image, "busybox")?;
    archive.symlink("bin", &format!("usr/lib/ros/layers/{layer}/bin"));
    Ok(())
}
