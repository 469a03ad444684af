//! The DHCPv6 client's state machine, driven by hand-made server messages and a clock that the
//! test moves.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv6Addr;

use super::client::{Action, Client, ClientConfig, Mode, State};
use super::msg::{self, IaAddr, Message, code, kind, status};

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const SERVER: &[u8] = &[0, 1, 0, 1, 9, 9, 9, 9];
const ADDR: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x150);

fn client(mode: Mode) -> Client {
    Client::new(ClientConfig {
        mac: MAC,
        seed: 7,
        mode,
    })
}

fn sent(actions: &[Action]) -> &Message {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Send(m) => Some(m.as_ref()),
            _ => None,
        })
        .expect("a message is sent")
}

fn bound(actions: &[Action]) -> &super::Lease {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Bind(l) => Some(l),
            _ => None,
        })
        .expect("a lease is bound")
}

/// A server's answer of `k` to the client's current exchange.
fn answer(c: &Client, k: u8, ia: Option<Vec<u8>>) -> Message {
    let mut m = Message::new(k, c.xid())
        .with(code::CLIENTID, c.duid().to_vec())
        .with(code::SERVERID, SERVER.to_vec())
        .with(
            code::DNS_SERVERS,
            Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x53)
                .octets()
                .to_vec(),
        )
        .with(
            code::DOMAIN_LIST,
            msg::encode_names(&["test.internal", "example.org"]),
        );
    if let Some(ia) = ia {
        m = m.with(code::IA_NA, ia);
    }
    m
}

fn offer_ia(c: &Client, t1: u32, t2: u32, preferred: u32, valid: u32) -> Vec<u8> {
    msg::ia_na_reply(
        c.iaid(),
        t1,
        t2,
        &[IaAddr {
            addr: ADDR,
            preferred,
            valid,
        }],
        None,
    )
}

/// Solicit, Advertise, Request, Reply at `t0`: returns the bound client.
fn bind(t0: u64, t1: u32, t2: u32) -> Client {
    let mut c = client(Mode::Stateful);
    let a = c.start(t0);
    let solicit = sent(&a);
    assert_eq!(solicit.kind, kind::SOLICIT);
    let ia = offer_ia(&c, t1, t2, 300, 600);
    let a = c.on_message(t0 + 5, &answer(&c, kind::ADVERTISE, Some(ia.clone())));
    let req = sent(&a);
    assert_eq!(req.kind, kind::REQUEST);
    assert_eq!(req.option(code::SERVERID), Some(SERVER));
    assert_eq!(
        msg::Message::decode(&req.encode())
            .unwrap()
            .ia_na(c.iaid())
            .unwrap()
            .addresses[0]
            .addr,
        ADDR
    );
    let a = c.on_message(t0 + 10, &answer(&c, kind::REPLY, Some(ia)));
    let l = bound(&a);
    assert_eq!(l.addrs(), [ADDR]);
    assert_eq!(c.state(), State::Bound);
    c
}

#[test]
fn messages_round_trip_and_bad_lengths_are_refused() {
    let m = Message::new(kind::SOLICIT, 0xabcdef)
        .with(code::CLIENTID, msg::duid_ll(MAC))
        .with(code::IA_NA, msg::ia_na(1, &[ADDR]));
    let bytes = m.encode();
    assert_eq!(&bytes[..4], &[1, 0xab, 0xcd, 0xef]);
    assert_eq!(Message::decode(&bytes), Some(m));
    let mut cut = bytes.clone();
    cut.pop();
    assert_eq!(
        Message::decode(&cut),
        None,
        "an option overrunning the message"
    );
    assert_eq!(Message::decode(&[1, 2]), None);
}

#[test]
fn the_solicit_names_the_client_and_asks_for_dns() {
    let mut c = client(Mode::Stateful);
    let m = sent(&c.start(0)).clone();
    assert_eq!(
        m.option(code::CLIENTID),
        Some(&[0, 3, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56][..])
    );
    assert_eq!(m.option(code::ELAPSED_TIME), Some(&[0, 0][..]));
    let oro = m.option(code::ORO).unwrap();
    assert!(oro.chunks(2).any(|c| c == code::DNS_SERVERS.to_be_bytes()));
    let ia = m
        .ia_na(0x0012_3456)
        .expect("IA_NA with the MAC's last four bytes as IAID");
    assert!(ia.addresses.is_empty());
    assert!(m.xid <= 0x00ff_ffff);
}

#[test]
fn solicit_backs_off_with_jitter_up_to_its_cap_keeping_its_xid() {
    let mut c = client(Mode::Stateful);
    c.start(0);
    let xid = c.xid();
    let first = c.deadline().unwrap();
    assert!(
        (1_001..=1_100).contains(&first),
        "first RT above IRT: {first}"
    );
    let mut now = first;
    let mut last_gap = first;
    for _ in 0..12 {
        let a = c.on_timer(now);
        let m = sent(&a);
        assert_eq!((m.kind, m.xid), (kind::SOLICIT, xid));
        let gap = c.deadline().unwrap() - now;
        assert!(gap <= 64_000 * 11 / 10, "{gap}");
        assert!(gap >= last_gap.min(57_600), "{gap} after {last_gap}");
        last_gap = gap;
        now = c.deadline().unwrap();
    }
    assert!(last_gap >= 57_600, "reaches the cap: {last_gap}");
    let elapsed =
        |m: &Message| u16::from_be_bytes(m.option(code::ELAPSED_TIME).unwrap().try_into().unwrap());
    assert_eq!(
        u64::from(elapsed(sent(&c.on_timer(now)))),
        now / 10,
        "centiseconds"
    );
    for _ in 0..3 {
        now = c.deadline().unwrap();
        c.on_timer(now);
    }
    now = c.deadline().unwrap();
    assert_eq!(
        elapsed(sent(&c.on_timer(now))),
        0xffff,
        "elapsed time saturates"
    );
}

#[test]
fn a_full_exchange_binds_the_address_with_dns_and_timers() {
    let c = bind(1_000, 100, 160);
    let l = c.lease().unwrap();
    assert_eq!(l.mode, Mode::Stateful);
    assert_eq!(l.server, "0001000109090909");
    assert_eq!(l.dns, [Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x53)]);
    assert_eq!(l.search, ["test.internal", "example.org"]);
    assert_eq!((l.t1_secs, l.t2_secs, l.valid_secs), (100, 160, 600));
    assert_eq!(c.deadline(), Some(1_010 + 100_000));
}

#[test]
fn zero_t1_t2_fall_back_to_fractions_of_the_preferred_lifetime() {
    let c = bind(0, 0, 0);
    let l = c.lease().unwrap();
    assert_eq!((l.t1_secs, l.t2_secs), (150, 240));
}

#[test]
fn advertise_for_someone_else_or_without_addresses_is_ignored() {
    let mut c = client(Mode::Stateful);
    c.start(0);
    let ia = offer_ia(&c, 0, 0, 300, 600);
    let mut other = answer(&c, kind::ADVERTISE, Some(ia.clone()));
    other.options[0].1 = msg::duid_ll([1, 2, 3, 4, 5, 6]);
    assert!(c.on_message(1, &other).is_empty(), "another client's DUID");
    let mut stale = answer(&c, kind::ADVERTISE, Some(ia.clone()));
    stale.xid ^= 1;
    assert!(c.on_message(1, &stale).is_empty(), "another transaction");
    let none = msg::ia_na_reply(c.iaid(), 0, 0, &[], Some(status::NO_ADDRS_AVAIL));
    assert!(
        c.on_message(1, &answer(&c, kind::ADVERTISE, Some(none)))
            .is_empty()
    );
    let no_server = Message::new(kind::ADVERTISE, c.xid())
        .with(code::CLIENTID, c.duid().to_vec())
        .with(code::IA_NA, ia);
    assert!(c.on_message(1, &no_server).is_empty(), "no server id");
    assert_eq!(c.state(), State::Soliciting);
}

#[test]
fn request_gives_up_after_ten_tries_and_solicits_again() {
    let mut c = client(Mode::Stateful);
    c.start(0);
    let ia = offer_ia(&c, 0, 0, 300, 600);
    c.on_message(1, &answer(&c, kind::ADVERTISE, Some(ia)));
    let mut kinds = Vec::new();
    for _ in 0..10 {
        let now = c.deadline().unwrap();
        kinds.push(sent(&c.on_timer(now)).kind);
    }
    assert_eq!(kinds[..9], [kind::REQUEST; 9]);
    assert_eq!(kinds[9], kind::SOLICIT);
    assert_eq!(c.state(), State::Soliciting);
}

#[test]
fn renew_at_t1_rebind_at_t2_and_expiry_unbinds() {
    let mut c = bind(0, 100, 160);
    let t1 = c.deadline().unwrap();
    let a = c.on_timer(t1);
    let renew = sent(&a);
    assert_eq!(renew.kind, kind::RENEW);
    assert_eq!(
        renew.option(code::SERVERID),
        Some(SERVER),
        "renew names its server"
    );
    assert_eq!(renew.ia_na(c.iaid()).unwrap().addresses[0].addr, ADDR);
    assert_eq!(c.state(), State::Renewing);
    // No answer: retries every ~10, 20, 40 s but never past T2.
    let mut now = t1;
    while c.state() == State::Renewing {
        now = c.deadline().unwrap();
        assert!(now <= 10 + 160_000);
        let a = c.on_timer(now);
        if c.state() == State::Rebinding {
            let m = sent(&a);
            assert_eq!(m.kind, kind::REBIND);
            assert_eq!(m.option(code::SERVERID), None, "rebind asks any server");
        }
    }
    assert_eq!(now, 10 + 160_000);
    // No answer while rebinding either: the address expires at its valid lifetime.
    let mut unbound = false;
    while !unbound {
        now = c.deadline().unwrap();
        assert!(now <= 10 + 600_000);
        let a = c.on_timer(now);
        unbound = a.iter().any(|x| matches!(x, Action::Unbind(_)));
    }
    assert_eq!(now, 10 + 600_000);
    assert_eq!(c.state(), State::Soliciting);
    assert!(c.lease().is_none());
}

#[test]
fn a_renew_reply_extends_the_lease_and_a_new_address_replaces_the_old() {
    let mut c = bind(0, 100, 160);
    let t1 = c.deadline().unwrap();
    c.on_timer(t1);
    let a = c.on_message(
        t1 + 3,
        &answer(&c, kind::REPLY, Some(offer_ia(&c, 100, 160, 300, 600))),
    );
    assert!(
        !a.iter().any(|x| matches!(x, Action::Unbind(_))),
        "same address"
    );
    assert_eq!(bound(&a).acquired_ms, t1 + 3);
    assert_eq!(c.state(), State::Bound);

    let t1 = c.deadline().unwrap();
    c.on_timer(t1);
    let other = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x151);
    let ia = msg::ia_na_reply(
        c.iaid(),
        100,
        160,
        &[IaAddr {
            addr: other,
            preferred: 300,
            valid: 600,
        }],
        None,
    );
    let a = c.on_message(t1 + 3, &answer(&c, kind::REPLY, Some(ia)));
    assert!(matches!(&a[0], Action::Unbind(l) if l.addrs() == [ADDR]));
    assert_eq!(bound(&a).addrs(), [other]);
}

#[test]
fn no_binding_on_renew_drops_the_address_and_solicits() {
    let mut c = bind(0, 100, 160);
    let t1 = c.deadline().unwrap();
    c.on_timer(t1);
    let ia = msg::ia_na_reply(c.iaid(), 0, 0, &[], Some(status::NO_BINDING));
    let a = c.on_message(t1 + 1, &answer(&c, kind::REPLY, Some(ia)));
    assert!(matches!(&a[0], Action::Unbind(_)));
    assert_eq!(sent(&a).kind, kind::SOLICIT);
}

#[test]
fn release_names_server_and_address_then_unbinds() {
    let mut c = bind(0, 100, 160);
    let a = c.release();
    let m = sent(&a);
    assert_eq!(m.kind, kind::RELEASE);
    assert_eq!(m.option(code::SERVERID), Some(SERVER));
    assert_eq!(m.ia_na(c.iaid()).unwrap().addresses[0].addr, ADDR);
    assert!(matches!(a[1], Action::Unbind(_)));
    assert_eq!(c.state(), State::Released);
    assert_eq!(c.deadline(), None);
}

#[test]
fn stateless_asks_for_information_and_refreshes_it() {
    let mut c = client(Mode::Stateless);
    let a = c.start(0);
    let m = sent(&a);
    assert_eq!(m.kind, kind::INFORMATION_REQUEST);
    assert!(m.option(code::IA_NA).is_none(), "no address asked for");
    let reply = answer(&c, kind::REPLY, None).with(
        code::INFORMATION_REFRESH_TIME,
        900u32.to_be_bytes().to_vec(),
    );
    let a = c.on_message(20, &reply);
    let l = bound(&a);
    assert_eq!(l.mode, Mode::Stateless);
    assert!(l.addresses.is_empty());
    assert_eq!(l.dns.len(), 1);
    assert_eq!(c.state(), State::Informed);
    assert_eq!(c.deadline(), Some(20 + 900_000));
    assert_eq!(
        sent(&c.on_timer(20 + 900_000)).kind,
        kind::INFORMATION_REQUEST
    );
    assert!(
        c.lease().is_some(),
        "the old information stays until the new arrives"
    );
    assert!(
        matches!(c.release()[..], [Action::Unbind(_)]),
        "nothing to give back to a server"
    );
}

#[test]
fn slaac_mode_sends_nothing() {
    let mut c = client(Mode::Slaac);
    assert!(c.start(0).is_empty());
    assert_eq!(c.deadline(), None);
}

#[test]
fn domain_names_stop_at_compression_pointers() {
    let mut d = msg::encode_names(&["a.example"]);
    d.extend_from_slice(&[0xc0, 0x00]);
    let m = Message::new(kind::REPLY, 1).with(code::DOMAIN_LIST, d);
    assert_eq!(m.domain_list(), ["a.example"]);
}
