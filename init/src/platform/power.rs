//! Requests to power off or reboot, from outside the signals: the ACPI power button (x86; what
//! `virsh shutdown` and cloud "stop" press), and a virtio-serial control port named
//! `org.ros.control` that takes `poweroff` or `reboot` lines (what `ros-qemu` uses, on both
//! arches: the arm64 cloud kernel has no gpio-keys driver for QEMU's power button).
//! Also the reaper: every exited child is collected, none is left a zombie.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use tokio::io::unix::AsyncFd;

pub const CONTROL_PORT: &str = "org.ros.control";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Poweroff,
    Reboot,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Poweroff => "poweroff",
            Action::Reboot => "reboot",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub action: Action,
    pub reason: String,
}

/// Collects every exited child. Returns what was reaped (pid, status).
pub fn reap() -> Vec<WaitStatus> {
    let mut out = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return out,
            Ok(s) => out.push(s),
        }
    }
}

/// Parses a control-port command.
pub fn parse_command(line: &str) -> Option<Action> {
    match line.trim() {
        "poweroff" | "shutdown" | "halt" => Some(Action::Poweroff),
        "reboot" => Some(Action::Reboot),
        _ => None,
    }
}

/// Whether an `input_event` (as read from /dev/input/event*) is a power key press.
pub fn is_power_press(ev: &[u8]) -> bool {
    const EV_KEY: u16 = 1;
    const KEY_POWER: u16 = 116;
    // struct input_event on 64-bit: struct timeval (16 bytes), u16 type, u16 code, i32 value.
    if ev.len() != 24 {
        return false;
    }
    let ty = u16::from_ne_bytes([ev[16], ev[17]]);
    let code = u16::from_ne_bytes([ev[18], ev[19]]);
    let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
    ty == EV_KEY && code == KEY_POWER && value == 1
}

fn open_nonblocking(path: &Path) -> Option<AsyncFd<OwnedFd>> {
    let fd = open(
        path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    super::async_fd::register(fd)
}

/// The device node of the virtio port named `name`, if the port exists.
pub fn find_port(sysfs: &Path, dev: &Path, name: &str) -> Option<PathBuf> {
    std::fs::read_dir(sysfs.join("class/virtio-ports"))
        .ok()?
        .flatten()
        .find(|e| std::fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim() == name))
        .map(|e| dev.join(e.file_name()))
}

/// What to watch for power requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    ControlPort,
    PowerButton,
}

/// Watches `what`, calling `send` with each request.
pub async fn watch(what: Watch, send: impl Fn(Request) + Clone + Send + 'static) {
    match what {
        Watch::ControlPort => watch_control_port(send).await,
        Watch::PowerButton => watch_power_button(send).await,
    }
}

/// Watches the control port: found when the host announces it, read line by line.
async fn watch_control_port(send: impl Fn(Request)) {
    let mut delay = Duration::from_millis(100);
    let path = loop {
        if let Some(p) = find_port(Path::new("/sys"), Path::new("/dev"), CONTROL_PORT) {
            break p;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    };
    log::debug!("control port at {}", path.display());
    let mut line = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let Some(fd) = open_nonblocking(&path) else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        loop {
            match super::async_fd::read(&fd, &mut buf).await {
                // The host side is not connected: wait for it.
                Ok(0) | Err(_) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
                Ok(n) => {
                    for &b in &buf[..n] {
                        if b != b'\n' {
                            line.push(b);
                            continue;
                        }
                        let text = String::from_utf8_lossy(&line).to_string();
                        line.clear();
                        match parse_command(&text) {
                            Some(action) => send(Request {
                                action,
                                reason: format!("`{}` on the control port", text.trim()),
                            }),
                            None => log::warn!("control port: unknown command `{}`", text.trim()),
                        }
                    }
                }
            }
        }
    }
}

/// Watches every input device for a power key press.
async fn watch_power_button(send: impl Fn(Request) + Clone) {
    let Ok(entries) = std::fs::read_dir("/dev/input") else {
        return;
    };
    let mut tasks = Vec::new();
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with("event") {
            continue;
        }
        let Some(fd) = open_nonblocking(&e.path()) else {
            continue;
        };
        let send = send.clone();
        tasks.push(async move {
            let mut ev = [0u8; 24];
            while let Ok(n) = super::async_fd::read(&fd, &mut ev).await {
                if n == 0 {
                    break;
                }
                if is_power_press(&ev[..n]) {
                    send(Request {
                        action: Action::Poweroff,
                        reason: "the power button".into(),
                    });
                }
            }
        });
    }
    if !tasks.is_empty() {
        log::info!(
            "power: watching {} input devices for the power button",
            tasks.len()
        );
    }
    futures::future::join_all(tasks).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(parse_command("poweroff\r"), Some(Action::Poweroff));
        assert_eq!(parse_command(" reboot"), Some(Action::Reboot));
        assert_eq!(parse_command("rm -rf /"), None);
    }

    #[test]
    fn power_key_press_only() {
        let mut ev = [0u8; 24];
        ev[16..18].copy_from_slice(&1u16.to_ne_bytes());
        ev[18..20].copy_from_slice(&116u16.to_ne_bytes());
        ev[20..24].copy_from_slice(&1i32.to_ne_bytes());
        assert!(is_power_press(&ev));
        ev[20..24].copy_from_slice(&0i32.to_ne_bytes());
        assert!(!is_power_press(&ev), "a release is not a press");
        assert!(!is_power_press(&ev[..16]));
    }

    #[test]
    fn finds_ports_by_name() {
        let tmp = tempfile::tempdir().expect("tmp");
        for (port, name) in [("vport1p1", "other"), ("vport1p2", CONTROL_PORT)] {
            let d = tmp.path().join("class/virtio-ports").join(port);
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("name"), format!("{name}\n")).expect("write");
        }
        assert_eq!(
            find_port(tmp.path(), Path::new("/dev"), CONTROL_PORT),
            Some(PathBuf::from("/dev/vport1p2"))
        );
        assert_eq!(find_port(tmp.path(), Path::new("/dev"), "nope"), None);
    }
}
