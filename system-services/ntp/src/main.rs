//! ros-ntp: keeps the clock with SNTP (RFC 4330). Asks the servers in turn every interval; an
//! offset over 128 ms steps the clock (`clock_settime`), a smaller one is slewed (`adjtime`).
//!
//! Usage: `ros-ntp [--interval SECONDS] [--once] SERVER[:PORT]...` (port 123 by default); with
//! no servers given, the comma-separated `ROS_NTP_SERVERS`.
//! Needs CAP_SYS_TIME to set the clock.

// A service reports on its standard output, which the supervisor keeps in its log.
#![allow(clippy::print_stdout)]

use std::net::{ToSocketAddrs, UdpSocket};
use std::time::Duration;

use nix::sys::time::{TimeSpec, TimeVal, TimeValLike};
use nix::time::{ClockId, clock_gettime, clock_settime};

/// Seconds from 1900-01-01 (NTP's era 0) to 1970-01-01.
const NTP_UNIX_OFFSET: f64 = 2_208_988_800.0;
const STEP_THRESHOLD: f64 = 0.128;
const TIMEOUT: Duration = Duration::from_secs(2);

/// Unix seconds to an NTP 32.32 timestamp.
pub fn to_ntp(unix: f64) -> u64 {
    let t = unix + NTP_UNIX_OFFSET;
    let secs = t.floor();
    let frac = ((t - secs) * 4_294_967_296.0) as u64;
    ((secs as u64) << 32) | (frac & 0xffff_ffff)
}

/// An NTP timestamp to Unix seconds.
pub fn from_ntp(ts: u64) -> f64 {
    (ts >> 32) as f64 + (ts & 0xffff_ffff) as f64 / 4_294_967_296.0 - NTP_UNIX_OFFSET
}

/// A client request (version 4, mode 3) carrying our transmit time.
pub fn request(transmit: u64) -> [u8; 48] {
    let mut p = [0u8; 48];
    p[0] = 0b00_100_011;
    p[40..48].copy_from_slice(&transmit.to_be_bytes());
    p
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reply {
    pub leap: u8,
    pub mode: u8,
    pub stratum: u8,
    pub origin: u64,
    pub receive: u64,
    pub transmit: u64,
}

fn ts(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

pub fn parse(b: &[u8]) -> Result<Reply, String> {
    if b.len() < 48 {
        return Err(format!("short reply ({} bytes)", b.len()));
    }
    Ok(Reply {
        leap: b[0] >> 6,
        mode: b[0] & 7,
        stratum: b[1],
        origin: ts(b, 24),
        receive: ts(b, 32),
        transmit: ts(b, 40),
    })
}

/// Checks a reply against the request it answers.
pub fn check(r: &Reply, sent: u64) -> Result<(), String> {
    if r.mode != 4 {
        return Err(format!("not a server reply (mode {})", r.mode));
    }
    if r.stratum == 0 {
        return Err("kiss-o'-death from the server".into());
    }
    if r.stratum > 15 || r.leap == 3 {
        return Err("the server is not synchronised".into());
    }
    if r.origin != sent {
        return Err("the reply does not answer our request".into());
    }
    if r.transmit == 0 {
        return Err("the reply carries no time".into());
    }
    Ok(())
}

/// The clock offset and the round-trip delay, in seconds, from the four timestamps (t1 sent,
/// t2 received by the server, t3 sent by the server, t4 received).
pub fn offset_delay(t1: f64, t2: f64, t3: f64, t4: f64) -> (f64, f64) {
    (((t2 - t1) + (t3 - t4)) / 2.0, (t4 - t1) - (t3 - t2))
}

fn now() -> f64 {
    clock_gettime(ClockId::CLOCK_REALTIME)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or(0.0)
}

fn query(server: &str) -> Result<(f64, f64), String> {
    let addr = if server.contains(':') {
        server.to_string()
    } else {
        format!("{server}:123")
    };
    let to = addr
        .to_socket_addrs()
        .map_err(|e| format!("resolving {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to nothing"))?;
    let sock = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
        .map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let t1 = now();
    let sent = to_ntp(t1);
    sock.send_to(&request(sent), to)
        .map_err(|e| format!("sending to {to}: {e}"))?;
    let mut buf = [0u8; 128];
    let (n, _) = sock
        .recv_from(&mut buf)
        .map_err(|e| format!("no answer from {to}: {e}"))?;
    let t4 = now();
    let r = parse(&buf[..n])?;
    check(&r, sent)?;
    Ok(offset_delay(
        t1,
        from_ntp(r.receive),
        from_ntp(r.transmit),
        t4,
    ))
}

fn apply(offset: f64) -> Result<&'static str, String> {
    if offset.abs() > STEP_THRESHOLD {
        let t = now() + offset;
        clock_settime(
            ClockId::CLOCK_REALTIME,
            TimeSpec::nanoseconds((t * 1e9) as i64),
        )
        .map_err(|e| format!("stepping the clock: {e}"))?;
        Ok("stepped")
    } else {
        // nix has no adjtime; its TimeVal keeps the libc struct's field types right on every
        // target (time_t and suseconds_t differ between musl versions).
        let tv = TimeVal::microseconds((offset * 1e6) as i64);
        // SAFETY: tv is a valid timeval; the old value is not asked for.
        if unsafe { libc::adjtime(tv.as_ref(), std::ptr::null_mut()) } != 0 {
            return Err(format!(
                "slewing the clock: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok("slewing")
    }
}

extern "C" fn on_term(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe; nothing is buffered (log lines are written at once).
    unsafe { libc::_exit(0) }
}

/// As PID 1 of its container, the service gets only the signals it handles: without this, its
/// stop signal would be ignored and the supervisor would have to kill it.
fn handle_stop_signals() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: on_term is an extern "C" handler that only calls _exit.
        unsafe { libc::signal(sig, on_term as *const () as libc::sighandler_t) };
    }
}

fn main() -> std::process::ExitCode {
    handle_stop_signals();
    let mut interval = 64u64;
    let mut once = false;
    let mut servers = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--interval" => {
                interval = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(64)
                    .max(1)
            }
            "--once" => once = true,
            _ => servers.push(a),
        }
    }
    if servers.is_empty()
        && let Ok(env) = std::env::var("ROS_NTP_SERVERS")
    {
        servers = env
            .split([',', ' '])
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
    }
    if servers.is_empty() {
        eprintln!(
            "usage: ros-ntp [--interval SECONDS] [--once] SERVER[:PORT]... (or ROS_NTP_SERVERS)"
        );
        return std::process::ExitCode::from(2);
    }
    println!("ros-ntp: servers {} every {interval}s", servers.join(", "));
    loop {
        let mut synced = false;
        for s in &servers {
            match query(s).and_then(|(offset, delay)| apply(offset).map(|how| (offset, delay, how)))
            {
                Ok((offset, delay, how)) => {
                    println!(
                        "ros-ntp: {s}: offset {offset:+.3}s delay {:.1}ms, {how}",
                        delay * 1000.0
                    );
                    synced = true;
                    break;
                }
                Err(e) => println!("ros-ntp: {s}: {e}"),
            }
        }
        if once {
            return if synced {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            };
        }
        std::thread::sleep(Duration::from_secs(interval));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let t = 1_795_316_645.25;
        assert!((from_ntp(to_ntp(t)) - t).abs() < 1e-6);
        assert_eq!(to_ntp(0.0) >> 32, 2_208_988_800);
    }

    #[test]
    fn requests_and_replies() {
        let sent = to_ntp(100.0);
        let req = request(sent);
        assert_eq!(req[0], 0x23);
        let mut reply = [0u8; 48];
        reply[0] = 0b00_100_100;
        reply[1] = 2;
        reply[24..32].copy_from_slice(&sent.to_be_bytes());
        reply[32..40].copy_from_slice(&to_ntp(1100.0).to_be_bytes());
        reply[40..48].copy_from_slice(&to_ntp(1100.5).to_be_bytes());
        let r = parse(&reply).expect("parse");
        assert_eq!(check(&r, sent), Ok(()));
        assert!(check(&r, sent + 1).is_err(), "a reply to another request");
        let mut kod = r;
        kod.stratum = 0;
        assert!(check(&kod, sent).is_err());
        assert!(parse(&reply[..20]).is_err());
    }

    #[test]
    fn offset_and_delay() {
        // Our clock is 1000 s behind; 0.2 s each way; the server takes 0.1 s.
        let (o, d) = offset_delay(100.0, 1100.2, 1100.3, 100.5);
        assert!((o - 1000.0).abs() < 1e-9, "{o}");
        assert!((d - 0.4).abs() < 1e-9, "{d}");
    }
}
