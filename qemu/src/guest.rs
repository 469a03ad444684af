//! A running QEMU guest: its console collected in the background, waits on what it prints, a
//! clean poweroff through the control port, QMP for the rest. QEMU is always killed when the
//! handle is dropped, so a failing test never leaves one behind.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::cmdline::{self, BootConfig, Sockets};

/// The console text so far, and whether QEMU's output has ended.
#[derive(Debug, Default)]
struct Console {
    text: String,
    closed: bool,
}

#[derive(Debug)]
pub struct Guest {
    child: Child,
    /// The serial console's input.
    serial_in: Option<std::process::ChildStdin>,
    console: Arc<(Mutex<Console>, Condvar)>,
    control: Option<UnixStream>,
    sockets: Sockets,
    _dir: tempfile::TempDir,
    started: Instant,
}

impl Guest {
    /// Starts QEMU for `cfg` with its console captured.
    pub fn spawn(cfg: &BootConfig) -> Result<Guest> {
        check_image(cfg)?;
        let dir = tempfile::Builder::new().prefix("ros-qemu").tempdir()?;
        let sockets = Sockets {
            control: dir.path().join("control.sock"),
            qmp: dir.path().join("qmp.sock"),
        };
        let mut child = Command::new(cmdline::binary(cfg.arch))
            .args(cmdline::args(cfg, &sockets, "stdio"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {}; is QEMU installed?",
                    cmdline::binary(cfg.arch)
                )
            })?;
        let console = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let console = Arc::clone(&console);
            std::thread::spawn(move || pump(out, &console));
        }
        let serial_in = child.stdin.take();
        let mut g = Guest {
            child,
            serial_in,
            console,
            control: None,
            sockets,
            _dir: dir,
            started: Instant::now(),
        };
        // Connect to the control port at once: the guest sees the host side connected.
        g.control = g
            .connect(&g.sockets.control.clone(), Duration::from_secs(10))
            .ok();
        Ok(g)
    }

    /// When QEMU was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    fn connect(&mut self, path: &std::path::Path, timeout: Duration) -> Result<UnixStream> {
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(path) {
                Ok(s) => return Ok(s),
                Err(e) if Instant::now() >= deadline => {
                    return Err(anyhow!("connecting to {}: {e}", path.display()));
                }
                Err(_) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        bail!(
                            "QEMU exited ({status}) before its sockets were up:\n{}",
                            self.tail(20)
                        );
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// Everything the console printed so far.
    pub fn console(&self) -> String {
        self.console
            .0
            .lock()
            .map(|c| c.text.clone())
            .unwrap_or_default()
    }

    /// The last `n` lines of the console.
    pub fn tail(&self, n: usize) -> String {
        let text = self.console();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits for a console line containing `needle`, and returns it. Fails on timeout or when
    /// QEMU's output ends first, with the console's tail in the error.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_from(needle, 0, timeout).map(|(line, _)| line)
    }

    /// Like [`Guest::wait_for`], looking only at console bytes from `from` on; also returns the
    /// byte offset after the line found.
    pub fn wait_for_from(
        &self,
        needle: &str,
        from: usize,
        timeout: Duration,
    ) -> Result<(String, usize)> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.console;
        let mut c = lock.lock().map_err(|_| anyhow!("console lock poisoned"))?;
        loop {
            if let Some(rest) = c.text.get(from..)
                && let Some(i) = rest.find(needle)
            {
                let start = rest[..i].rfind('\n').map_or(0, |j| j + 1);
                if let Some(end) = rest[i..].find('\n') {
                    let line = rest[start..i + end].trim_end_matches('\r').to_string();
                    return Ok((line, from + i + end + 1));
                }
            }
            if c.closed {
                drop(c);
                bail!(
                    "QEMU's output ended before `{needle}`; console tail:\n{}",
                    self.tail(30)
                );
            }
            let now = Instant::now();
            if now >= deadline {
                drop(c);
                bail!(
                    "timed out after {:?} waiting for `{needle}`; console tail:\n{}",
                    timeout,
                    self.tail(30)
                );
            }
            c = cvar
                .wait_timeout(c, deadline - now)
                .map_err(|_| anyhow!("console lock poisoned"))?
                .0;
        }
    }

    /// Waits for `needle` anywhere in the console from byte `from` on, even without a line end
    /// after it (a prompt); returns the offset just after it.
    pub fn wait_for_text(&self, needle: &str, from: usize, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.console;
        let mut c = lock.lock().map_err(|_| anyhow!("console lock poisoned"))?;
        loop {
            if let Some(i) = c.text.get(from..).and_then(|rest| rest.find(needle)) {
                return Ok(from + i + needle.len());
            }
            let now = Instant::now();
            if c.closed || now >= deadline {
                let why = if c.closed {
                    "QEMU's output ended"
                } else {
                    "timed out"
                };
                drop(c);
                bail!(
                    "{why} waiting for `{needle}`; console tail:\n{}",
                    self.tail(30)
                );
            }
            c = cvar
                .wait_timeout(c, deadline - now)
                .map_err(|_| anyhow!("console lock poisoned"))?
                .0;
        }
    }

    /// Waits for the `ros: ready ` line and returns its JSON.
    pub fn wait_ready(&self, timeout: Duration) -> Result<serde_json::Value> {
        let line = self.wait_for(crate::READY_PREFIX, timeout)?;
        let json = line
            .split_once(crate::READY_PREFIX)
            .map(|(_, j)| j)
            .unwrap_or_default();
        serde_json::from_str(json).with_context(|| format!("the ready line is not JSON: {line}"))
    }

    /// Types `text` on the serial console, as a user at its keyboard would.
    pub fn type_text(&mut self, text: &str) -> Result<()> {
        let input = self
            .serial_in
            .as_mut()
            .ok_or_else(|| anyhow!("the serial console's input is closed"))?;
        input
            .write_all(text.as_bytes())
            .and_then(|()| input.flush())
            .context("typing on the serial console")
    }

    /// Asks the guest to power off cleanly (through the control port).
    pub fn poweroff(&mut self) -> Result<()> {
        self.control_command("poweroff")
    }

    /// Asks the guest to reboot (through the control port).
    pub fn reboot(&mut self) -> Result<()> {
        self.control_command("reboot")
    }

    fn control_command(&mut self, cmd: &str) -> Result<()> {
        if self.control.is_none() {
            let path = self.sockets.control.clone();
            self.control = Some(self.connect(&path, Duration::from_secs(5))?);
        }
        let s = self
            .control
            .as_mut()
            .ok_or_else(|| anyhow!("no control port"))?;
        s.write_all(format!("{cmd}\n").as_bytes())
            .context("writing to the control port")
    }

    /// Runs one QMP command (e.g. `system_powerdown`) and returns its reply.
    pub fn qmp(&mut self, command: &str) -> Result<serde_json::Value> {
        self.qmp_with(serde_json::json!({"execute": command}))
    }

    /// Presses keys together (QMP `send-key`), e.g. `["ctrl", "alt", "delete"]`.
    pub fn qmp_send_keys(&mut self, keys: &[&str]) -> Result<serde_json::Value> {
        let keys: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| serde_json::json!({"type": "qcode", "data": k}))
            .collect();
        self.qmp_with(serde_json::json!({"execute": "send-key", "arguments": {"keys": keys}}))
    }

    fn qmp_with(&mut self, command: serde_json::Value) -> Result<serde_json::Value> {
        let path = self.sockets.qmp.clone();
        let stream = self.connect(&path, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut w = stream;
        let mut line = String::new();
        reader.read_line(&mut line)?; // greeting
        let mut send = |v: serde_json::Value| -> Result<serde_json::Value> {
            w.write_all(format!("{v}\n").as_bytes())?;
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 {
                    bail!("QMP closed");
                }
                let reply: serde_json::Value = serde_json::from_str(&line)?;
                if reply.get("event").is_none() {
                    return Ok(reply);
                }
            }
        };
        send(serde_json::json!({"execute": "qmp_capabilities"}))?;
        send(command)
    }

    /// Waits for QEMU to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "QEMU still running after {timeout:?}; console tail:\n{}",
                    self.tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops QEMU at once (no guest shutdown).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

fn pump(mut out: Box<dyn Read + Send>, console: &(Mutex<Console>, Condvar)) {
    let mut buf = [0u8; 4096];
    loop {
        let n = out.read(&mut buf).unwrap_or(0);
        let Ok(mut c) = console.0.lock() else {
            return;
        };
        if n == 0 {
            c.closed = true;
            console.1.notify_all();
            return;
        }
        c.text.push_str(&String::from_utf8_lossy(&buf[..n]));
        console.1.notify_all();
    }
}

/// Fails early, with the command to run, when the image is not built.
pub fn check_image(cfg: &BootConfig) -> Result<()> {
    let initramfs = cfg
        .initramfs
        .clone()
        .unwrap_or_else(|| cfg.image.join("initramfs.img"));
    for f in [cfg.image.join("vmlinuz"), initramfs] {
        if !f.exists() {
            bail!(
                "{} is missing; build the image first: cargo run -p ros-image -- build --arch {}",
                f.display(),
                cfg.arch
            );
        }
    }
    Ok(())
}
