//! DHCPv6 from the wire: messages decoded, re-encoded and decoded again to the same message,
//! then fed to a stateful and a stateless client (their transaction ids put in). Nothing may
//! panic.
#![no_main]
#![allow(clippy::expect_used, clippy::panic)] // a failed assertion is a finding

use libfuzzer_sys::fuzz_target;
use ros_net::dhcp6::msg::Message;
use ros_net::dhcp6::{Client, ClientConfig, Mode};

fuzz_target!(|data: &[u8]| {
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
    for mode in [Mode::Stateful, Mode::Stateless] {
        let mut c = Client::new(ClientConfig {
            mac: [2, 0, 0, 0, 0, 1],
            seed: 7,
            mode,
        });
        let mut now = 0u64;
        let _ = c.start(now);
        for m in &msgs {
            let mut m = m.clone();
            m.xid = c.xid();
            let _ = c.on_message(now, &m);
            now = now.saturating_add(1000);
            let _ = c.on_timer(now);
        }
    }
});
