//! DHCPv4 from the wire: a frame unwrapped (IP/UDP), the message decoded, re-encoded and decoded
//! again to the same message, then fed to a client in each state it can reach (its transaction
//! id put in, as a server's answer would carry it). Nothing may panic.
#![no_main]
#![allow(clippy::expect_used, clippy::panic)] // a failed assertion is a finding

use libfuzzer_sys::fuzz_target;
use ros_net::dhcp::msg::Message;
use ros_net::dhcp::{Action, Client, ClientConfig};

fuzz_target!(|data: &[u8]| {
    let _ = ros_net::dhcp::wire::unframe(data);
    // The input is one or more messages, each prefixed by a 2-byte length.
    let mut msgs = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        if let Some(m) = Message::decode(&rest[2..2 + n]) {
            let again = Message::decode(&m.encode()).expect("an encoded message decodes");
            assert_eq!(again, m, "decode(encode(m)) differs");
            msgs.push(m);
        }
        rest = &rest[2 + n..];
    }
    let mut c = Client::new(ClientConfig {
        mac: [2, 0, 0, 0, 0, 1],
        hostname: Some("fuzz".into()),
        seed: 7,
    });
    let mut now = 0u64;
    let _ = c.start(now);
    for mut m in msgs {
        m.xid = c.xid();
        for a in c.on_message(now, &m) {
            if let Action::Bind(lease) = a {
                let _ = (
                    lease.t1_at(),
                    lease.t2_at(),
                    lease.expires_at(),
                    lease.net(),
                );
            }
        }
        now = now.saturating_add(1000);
        if let Some(d) = c.deadline() {
            now = now.max(d);
            let _ = c.on_timer(now);
        }
    }
    let _ = c.release(now);
});
