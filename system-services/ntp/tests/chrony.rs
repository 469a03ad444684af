//! ros-ntp against a real server, Debian's chronyd on the loopback, over IPv4 and IPv6, as a
//! user would run it to check a server (`--dry-run`: the host's clock is not touched).

#![allow(clippy::expect_used, clippy::panic)]

use std::process::Command;

use ros_tests::chrony::Chrony;

fn dry_run(server: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ros-ntp"))
        .args(["--once", "--dry-run", server])
        .output()
        .expect("run ros-ntp");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn asks_chrony_over_ipv4_and_ipv6() {
    let c = Chrony::start().expect("chronyd");
    for server in [format!("127.0.0.1:{}", c.port), format!("[::1]:{}", c.port)] {
        let (ok, out) = dry_run(&server);
        assert!(ok, "{server}: {out}");
        // Same clock on both ends: the offset is a few milliseconds at most.
        let offset: f64 = out
            .split("offset ")
            .nth(1)
            .and_then(|r| r.split('s').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no offset: {out}"));
        assert!(offset.abs() < 0.05, "{server}: {out}");
        assert!(
            out.contains("stratum 8") && out.contains("dry run"),
            "{out}"
        );
    }
}

#[test]
fn a_server_that_is_not_there_fails() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("port")
        .port();
    let (ok, out) = dry_run(&format!("127.0.0.1:{port}"));
    assert!(!ok, "{out}");
    // An unconnected UDP socket gets no ICMP errors: the wait runs out.
    assert!(out.contains("no answer within 2s"), "{out}");
}
