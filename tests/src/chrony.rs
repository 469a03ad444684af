//! A real NTP server for the time tests: Debian's chronyd, started by the test on the loopback
//! (127.0.0.1 and ::1, a free port), serving its own clock as a local reference at stratum 8,
//! never touching the host's clock (`-x`), stopped when dropped.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

#[derive(Debug)]
pub struct Chrony {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

/// chronyd is installed by `scripts/setup.sh`; it lives in /usr/sbin.
fn chronyd() -> Result<PathBuf> {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
    {
        let p = PathBuf::from(dir).join("chronyd");
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("chronyd is not installed (scripts/setup.sh installs Debian's chrony)")
}

impl Chrony {
    pub fn start() -> Result<Chrony> {
        let dir = tempfile::tempdir()?;
        // A UDP port free on both loopbacks when asked.
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = dir.path().join("chrony.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbindaddress 127.0.0.1\nbindaddress ::1\nlocal stratum 8\n\
                 allow 127.0.0.1\nallow ::1\ncmdport 0\npidfile {pid}\n",
                pid = dir.path().join("chronyd.pid").display()
            ),
        )?;
        let child = Command::new(chronyd()?)
            .args(["-x", "-d", "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting chronyd")?;
        let mut c = Chrony {
            port,
            child,
            _dir: dir,
        };
        c.wait_listening()?;
        Ok(c)
    }

    /// Until chronyd answers on its port (a client request, any reply).
    fn wait_listening(&mut self) -> Result<()> {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut req = [0u8; 48];
        req[0] = 0b00_100_011;
        req[40] = 1;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(status) = self.child.try_wait()? {
                let mut err = String::new();
                if let Some(e) = self.child.stderr.as_mut() {
                    e.read_to_string(&mut err)?;
                }
                bail!("chronyd exited ({status}): {err}");
            }
            sock.send_to(&req, ("127.0.0.1", self.port))?;
            let mut buf = [0u8; 128];
            if sock.recv_from(&mut buf).is_ok() {
                return Ok(());
            }
        }
        bail!("chronyd does not answer on 127.0.0.1:{}", self.port)
    }
}

impl Drop for Chrony {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
