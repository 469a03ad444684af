//! ros-syslog: collects syslog datagrams (the `/dev/log` socket other services write to) and
//! the kernel's log (`/dev/kmsg`, from the first message of the boot) into the log store:
//! `syslog.log` and `kernel.log`, timestamped and rotated.
//!
//! Usage: `ros-syslog SOCKET KMSG DIR` (in its container: `/run/syslog/log /dev/kmsg /var/log/ros`).

// A service reports on its standard output, which the supervisor keeps in its log.
#![allow(clippy::print_stdout)]

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use ros_logstore::LogFile;

const MAX_BYTES: u64 = 1 << 20;
const KEEP: u32 = 4;

const FACILITIES: &[&str] = &[
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];
const SEVERITIES: &[&str] = &[
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// A syslog datagram (`<PRI>...`) as `facility.severity rest`.
pub fn format_syslog(msg: &[u8]) -> String {
    let text = String::from_utf8_lossy(msg);
    let text = text.trim_end_matches(['\n', '\0']);
    let Some(rest) = text.strip_prefix('<') else {
        return format!("user.notice {text}");
    };
    let Some((pri, rest)) = rest.split_once('>') else {
        return format!("user.notice {text}");
    };
    let Ok(pri) = pri.parse::<usize>() else {
        return format!("user.notice {text}");
    };
    let facility = FACILITIES.get(pri / 8).copied().unwrap_or("unknown");
    let severity = SEVERITIES.get(pri % 8).copied().unwrap_or("unknown");
    // Drop the sender's own RFC 3164 timestamp ("Nov 22 03:04:05 "): the store stamps lines.
    let rest = strip_bsd_time(rest);
    format!("{facility}.{severity} {rest}")
}

fn strip_bsd_time(s: &str) -> &str {
    let b = s.as_bytes();
    let looks = b.len() > 16
        && b[3] == b' '
        && b[6] == b' '
        && b[9] == b':'
        && b[12] == b':'
        && b[15] == b' '
        && b[..3].iter().all(u8::is_ascii_alphabetic);
    if looks { &s[16..] } else { s }
}

/// A `/dev/kmsg` record (`level,seq,usec,flags;text`) as `[seconds.micro] level: text`.
pub fn format_kmsg(rec: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(rec);
    let (head, msg) = text.split_once(';')?;
    let mut f = head.split(',');
    let pri: usize = f.next()?.parse().ok()?;
    let _seq = f.next()?;
    let usec: u64 = f.next()?.parse().ok()?;
    // Continuation lines (" KEY=value") are metadata: keep the message line only.
    let msg = msg.lines().next().unwrap_or("");
    let level = SEVERITIES.get(pri % 8).copied().unwrap_or("info");
    Some(format!(
        "[{:5}.{:06}] {level}: {msg}",
        usec / 1_000_000,
        usec % 1_000_000
    ))
}

fn run(socket: PathBuf, kmsg: PathBuf, dir: PathBuf) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&socket);
    let sock = UnixDatagram::bind(&socket)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;
    }
    let mut syslog = LogFile::open(dir.join("syslog.log"), MAX_BYTES, KEEP)?;
    let kernel_dir = dir.clone();
    let kernel = std::thread::spawn(move || -> std::io::Result<()> {
        let mut log = LogFile::open(kernel_dir.join("kernel.log"), MAX_BYTES, KEEP)?;
        let mut f = std::fs::File::open(&kmsg)?;
        let mut buf = vec![0u8; 8192];
        loop {
            match f.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    if let Some(line) = format_kmsg(&buf[..n]) {
                        log.line(&line)?;
                    }
                }
                // Records were overwritten before we read them: go on with the next.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
                Err(e) => return Err(e),
            }
        }
    });
    println!(
        "ros-syslog: listening on {}, kernel log to {}",
        socket.display(),
        dir.join("kernel.log").display()
    );
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if kernel.is_finished() {
            return match kernel.join() {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::other("the kernel log reader failed")),
            };
        }
        let n = sock.recv(&mut buf)?;
        syslog.line(&format_syslog(&buf[..n]))?;
    }
}

extern "C" fn on_term(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe (nix has no wrapper for it); nothing is buffered
    // (log lines are written at once).
    unsafe { libc::_exit(0) }
}

/// As PID 1 of its container, the service gets only the signals it handles: without this, its
/// stop signal would be ignored and the supervisor would have to kill it.
fn handle_stop_signals() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: on_term only calls _exit, which is async-signal-safe.
        if let Err(e) = unsafe { signal(sig, SigHandler::Handler(on_term)) } {
            eprintln!("ros-syslog: cannot handle {sig}: {e}");
        }
    }
}

fn main() -> std::process::ExitCode {
    handle_stop_signals();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, kmsg, dir] = args.as_slice() else {
        eprintln!("usage: ros-syslog SOCKET KMSG DIR");
        return std::process::ExitCode::from(2);
    };
    match run(socket.into(), kmsg.into(), dir.into()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ros-syslog: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_datagrams() {
        assert_eq!(
            format_syslog(b"<13>Nov 22 03:04:05 myapp[7]: hello\n"),
            "user.notice myapp[7]: hello"
        );
        assert_eq!(
            format_syslog(b"<86>sshd: accepted"),
            "authpriv.info sshd: accepted"
        );
        assert_eq!(format_syslog(b"no priority"), "user.notice no priority");
    }

    #[test]
    fn kmsg_records() {
        assert_eq!(
            format_kmsg(
                b"6,339,5140900,-;NET: Registered PF_INET6 protocol family\n SUBSYSTEM=net\n"
            )
            .as_deref(),
            Some("[    5.140900] info: NET: Registered PF_INET6 protocol family")
        );
        assert_eq!(format_kmsg(b"garbage"), None);
    }
}
