//! ros-ntp: keeps the clock with SNTP. Asks the servers in turn every interval (each address a
//! name resolves to, until one answers); an offset over 128 ms steps the clock
//! (`clock_settime`), a smaller one is slewed (`adjtime`).
//!
//! The exchange and the reply's checks are sntpc's (RFC 5905 §A.5.1.1: our origin timestamp
//! echoed, server mode, no kiss-o'-death, a synchronised server of stratum 1-15, a transmit
//! time, a root distance under 16 s, a reference time not after the transmit time; and the
//! reply must come from the address asked).
//!
//! Usage: `ros-ntp [--interval SECONDS] [--once] [--dry-run] SERVER...`, each server `host`,
//! `host:port`, an IPv6 address, or `[IPv6]:port` (port 123 by default); with no servers given,
//! the comma-separated `ROS_NTP_SERVERS`. `--dry-run` reports the offset and leaves the clock.
//! Needs CAP_SYS_TIME to set the clock.

// A service reports on its standard output, which the supervisor keeps in its log.
#![allow(clippy::print_stdout)]

use std::cell::RefCell;
use std::io::ErrorKind;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use nix::sys::signal::{SigHandler, Signal, signal};
use nix::sys::time::{TimeSpec, TimeVal, TimeValLike};
use nix::time::{ClockId, clock_gettime, clock_settime};
use sntpc::{NtpContext, NtpUdpSocket, StdTimestampGen};

const NTP_PORT: u16 = 123;
/// Offsets larger than this step the clock; smaller ones are slewed (ntpd's and chrony's
/// default step threshold).
const STEP_THRESHOLD_US: i64 = 128_000;
const TIMEOUT: Duration = Duration::from_secs(2);

/// A blocking UDP socket for sntpc's synchronous API; the read timeout bounds each exchange.
/// sntpc reports every socket error as `Error::Network`, so the system's error is kept here.
struct Socket {
    sock: UdpSocket,
    error: RefCell<Option<std::io::Error>>,
}

impl Socket {
    fn keep(&self, e: std::io::Error) -> sntpc::Error {
        *self.error.borrow_mut() = Some(e);
        sntpc::Error::Network
    }
}

impl NtpUdpSocket for Socket {
    async fn send_to(&self, buf: &[u8], addr: SocketAddr) -> sntpc::Result<usize> {
        self.sock.send_to(buf, addr).map_err(|e| self.keep(e))
    }

    async fn recv_from(&self, buf: &mut [u8]) -> sntpc::Result<(usize, SocketAddr)> {
        self.sock.recv_from(buf).map_err(|e| self.keep(e))
    }
}

/// One server's answer: the clock's offset from it and the round trip, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    from: SocketAddr,
    offset_us: i64,
    roundtrip_us: u64,
    stratum: u8,
}

/// The addresses `server` names, in the resolver's order.
fn addresses(server: &str) -> Result<Vec<SocketAddr>, String> {
    let (host, port) = ros_config::types::parse_host_port(server, NTP_PORT)?;
    let found: Vec<SocketAddr> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {host}: {e}"))?
        .collect();
    if found.is_empty() {
        return Err(format!("{host} resolves to nothing"));
    }
    Ok(found)
}

fn describe(e: &sntpc::Error, io: Option<std::io::Error>) -> String {
    match e {
        sntpc::Error::Network => match io {
            Some(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                format!("no answer within {}s", TIMEOUT.as_secs())
            }
            Some(e) => e.to_string(),
            None => "network error".into(),
        },
        sntpc::Error::KissOfDeath(code) => format!("kiss-o'-death ({})", code.as_str()),
        sntpc::Error::UnsynchronizedClock => "the server is not synchronised".into(),
        sntpc::Error::IncorrectOriginTimestamp => "the reply does not answer our request".into(),
        sntpc::Error::ResponseAddressMismatch => "a reply from another address".into(),
        other => format!("bad reply ({other:?})"),
    }
}

/// One exchange with one address.
fn ask(to: SocketAddr) -> Result<Sample, String> {
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse()
    } else {
        "[::]:0".parse()
    }
    .map_err(|e| format!("{e}"))?;
    let sock = UdpSocket::bind(bind).map_err(|e| format!("a socket for {to}: {e}"))?;
    sock.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let context = NtpContext::new(StdTimestampGen::default());
    let sock = Socket {
        sock,
        error: RefCell::new(None),
    };
    let r =
        sntpc::sync::get_time(to, &sock, context).map_err(|e| describe(&e, sock.error.take()))?;
    Ok(Sample {
        from: to,
        offset_us: r.offset(),
        roundtrip_us: r.roundtrip(),
        stratum: r.stratum(),
    })
}

/// The first answer from `server`'s addresses, or why there was none.
fn query(server: &str) -> Result<Sample, String> {
    let mut why = Vec::new();
    for to in addresses(server)? {
        match ask(to) {
            Ok(s) => return Ok(s),
            Err(e) => why.push(format!("{to}: {e}")),
        }
    }
    Err(why.join("; "))
}

fn apply(offset_us: i64) -> Result<&'static str, String> {
    if offset_us.abs() > STEP_THRESHOLD_US {
        let now = clock_gettime(ClockId::CLOCK_REALTIME)
            .map_err(|e| format!("reading the clock: {e}"))?;
        let t = now + TimeSpec::microseconds(offset_us);
        clock_settime(ClockId::CLOCK_REALTIME, t)
            .map_err(|e| format!("stepping the clock: {e}"))?;
        Ok("stepped")
    } else {
        // nix has no adjtime; its TimeVal keeps the libc struct's field types right on every
        // target (time_t and suseconds_t differ between musl versions).
        let tv = TimeVal::microseconds(offset_us);
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
    // SAFETY: _exit is async-signal-safe (nix has no wrapper for it); nothing is buffered (log
    // lines are written at once).
    unsafe { libc::_exit(0) }
}

/// As PID 1 of its container, the service gets only the signals it handles: without this, its
/// stop signal would be ignored and the supervisor would have to kill it.
fn handle_stop_signals() {
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: on_term only calls _exit, which is async-signal-safe.
        if let Err(e) = unsafe { signal(sig, SigHandler::Handler(on_term)) } {
            println!("ros-ntp: cannot handle {sig}: {e}");
        }
    }
}

#[derive(Debug, PartialEq)]
struct Args {
    interval: u64,
    once: bool,
    dry_run: bool,
    servers: Vec<String>,
}

fn parse_args(args: impl IntoIterator<Item = String>, env: Option<String>) -> Result<Args, String> {
    let mut a = Args {
        interval: 64,
        once: false,
        dry_run: false,
        servers: Vec::new(),
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--interval" => {
                a.interval = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|v| (1..=86_400).contains(v))
                    .ok_or("--interval takes seconds, 1 to 86400")?;
            }
            "--once" => a.once = true,
            "--dry-run" => a.dry_run = true,
            _ => a.servers.push(arg),
        }
    }
    if a.servers.is_empty()
        && let Some(env) = env
    {
        a.servers = env
            .split([',', ' '])
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
    }
    if a.servers.is_empty() {
        return Err("no servers".into());
    }
    for s in &a.servers {
        ros_config::types::parse_host_port(s, NTP_PORT)?;
    }
    Ok(a)
}

fn main() -> std::process::ExitCode {
    handle_stop_signals();
    let a = match parse_args(
        std::env::args().skip(1),
        std::env::var("ROS_NTP_SERVERS").ok(),
    ) {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "ros-ntp: {e}\nusage: ros-ntp [--interval SECONDS] [--once] [--dry-run] SERVER... (or ROS_NTP_SERVERS)"
            );
            return std::process::ExitCode::from(2);
        }
    };
    println!(
        "ros-ntp: servers {} every {}s",
        a.servers.join(", "),
        a.interval
    );
    loop {
        let mut synced = false;
        for s in &a.servers {
            let done = query(s).and_then(|x| {
                let how = if a.dry_run {
                    "left alone (dry run)"
                } else {
                    apply(x.offset_us)?
                };
                Ok((x, how))
            });
            match done {
                Ok((x, how)) => {
                    println!(
                        "ros-ntp: {s} ({}, stratum {}): offset {:+.3}s delay {:.1}ms, {how}",
                        x.from,
                        x.stratum,
                        x.offset_us as f64 / 1e6,
                        x.roundtrip_us as f64 / 1e3
                    );
                    synced = true;
                    break;
                }
                Err(e) => println!("ros-ntp: {s}: {e}"),
            }
        }
        if a.once {
            return if synced {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            };
        }
        std::thread::sleep(Duration::from_secs(a.interval));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn servers_with_and_without_ports_and_ipv6() {
        for (s, want) in [
            ("127.0.0.1", "127.0.0.1:123"),
            ("127.0.0.1:1123", "127.0.0.1:1123"),
            ("::1", "[::1]:123"),
            ("[::1]:1123", "[::1]:1123"),
            ("2001:db8::1", "[2001:db8::1]:123"),
        ] {
            let got = addresses(s).expect(s);
            assert_eq!(got, vec![want.parse::<SocketAddr>().expect(want)], "{s}");
        }
        assert!(addresses("[::1]x").is_err());
        assert!(addresses("host:0").is_err());
    }

    #[test]
    fn arguments() {
        let a =
            parse_args(args(&["--once", "--interval", "10", "a", "[::1]:5"]), None).expect("ok");
        assert_eq!(
            a,
            Args {
                interval: 10,
                once: true,
                dry_run: false,
                servers: args(&["a", "[::1]:5"])
            }
        );
        let a = parse_args(args(&[]), Some("x, y:124".into())).expect("env");
        assert_eq!(a.servers, args(&["x", "y:124"]));
        assert!(parse_args(args(&[]), None).is_err());
        assert!(parse_args(args(&["--interval", "0", "a"]), None).is_err());
        assert!(parse_args(args(&["[::1"]), None).is_err());
    }

    /// A server that answers nothing: the exchange gives up after the timeout.
    #[test]
    fn silence_times_out() {
        let quiet = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = quiet.local_addr().expect("addr");
        let e = ask(to).expect_err("no answer");
        assert!(e.contains("no answer"), "{e}");
    }

    /// Replies that must be refused, from a server on the loopback that answers each request
    /// with `reply(request)`.
    fn answered_with(reply: impl Fn(&[u8]) -> Vec<u8> + Send + 'static) -> Result<Sample, String> {
        let server = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = server.local_addr().expect("addr");
        std::thread::spawn(move || {
            let mut buf = [0u8; 128];
            if let Ok((n, from)) = server.recv_from(&mut buf) {
                let _ = server.send_to(&reply(&buf[..n]), from);
            }
        });
        ask(to)
    }

    fn ntp_now() -> u64 {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970");
        ((d.as_secs() + 2_208_988_800) << 32)
            | ((u64::from(d.subsec_nanos()) << 32) / 1_000_000_000)
    }

    /// A good reply (version 4, server, stratum 2) to `req`, `ahead` seconds ahead.
    fn good(req: &[u8], ahead: u64) -> Vec<u8> {
        let mut r = vec![0u8; 48];
        r[0] = 0b00_100_100;
        r[1] = 2;
        r[24..32].copy_from_slice(&req[40..48]);
        let t = ntp_now() + (ahead << 32);
        r[16..24].copy_from_slice(&(t - (1 << 32)).to_be_bytes());
        r[32..40].copy_from_slice(&t.to_be_bytes());
        r[40..48].copy_from_slice(&t.to_be_bytes());
        r
    }

    #[test]
    fn a_good_reply_gives_the_offset() {
        let s = answered_with(|req| good(req, 1000)).expect("good");
        assert!((s.offset_us - 1_000_000_000).abs() < 500_000, "{s:?}");
        assert_eq!(s.stratum, 2);
    }

    #[test]
    fn bad_replies_are_refused() {
        type Reply = fn(&[u8]) -> Vec<u8>;
        let cases: [(&str, Reply); 5] = [
            ("another request's", |q| {
                let mut r = good(q, 5);
                r[31] ^= 1;
                r
            }),
            ("kiss-o'-death", |q| {
                let mut r = good(q, 5);
                r[1] = 0;
                r[12..16].copy_from_slice(b"RATE");
                r
            }),
            ("unsynchronised", |q| {
                let mut r = good(q, 5);
                r[0] |= 0b1100_0000;
                r
            }),
            ("a client's, not a server's", |q| {
                let mut r = good(q, 5);
                r[0] = 0b00_100_011;
                r
            }),
            ("short", |q| good(q, 5)[..40].to_vec()),
        ];
        for (what, reply) in cases {
            let got = answered_with(reply);
            assert!(got.is_err(), "{what} reply accepted: {got:?}");
        }
    }
}
