//! The client's state machine against scripted server replies.

use std::net::Ipv4Addr;

use super::client::{Action, Client, ClientConfig, Dest, Lease, State};
use super::msg::{BOOT_REPLY, Message, MessageType, code};

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

fn client() -> Client {
    Client::new(ClientConfig {
        mac: MAC,
        hostname: None,
        seed: 42,
    })
}

fn reply(c: &Client, kind: MessageType, yiaddr: Ipv4Addr, lease: Option<u32>) -> Message {
    let mut m = Message::request(kind, c.xid(), &MAC);
    m.op = BOOT_REPLY;
    m.yiaddr = yiaddr;
    m.set(code::SERVER_ID, SERVER.octets().to_vec());
    m.set(code::SUBNET_MASK, vec![255, 255, 255, 0]);
    m.set(code::ROUTER, SERVER.octets().to_vec());
    m.set(code::DNS, vec![10, 0, 2, 3]);
    if let Some(l) = lease {
        m.set(code::LEASE_TIME, l.to_be_bytes().to_vec());
    }
    m
}

fn sent(actions: &[Action]) -> Vec<(Dest, MessageType)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(d, m) => Some((d.clone(), m.msg_type()?)),
            _ => None,
        })
        .collect()
}

fn bound(actions: &[Action]) -> Option<&Lease> {
    actions.iter().find_map(|a| match a {
        Action::Bind(l) => Some(l),
        _ => None,
    })
}

/// Runs discover/offer/request/ack at t=0 with a lease of `secs`.
fn bind(c: &mut Client, secs: u32) -> Lease {
    let a = c.start(0);
    assert_eq!(sent(&a), [(Dest::Broadcast, MessageType::Discover)]);
    let offer = reply(c, MessageType::Offer, ADDR, Some(secs));
    let a = c.on_message(5, &offer);
    assert_eq!(sent(&a), [(Dest::Broadcast, MessageType::Request)]);
    assert_eq!(c.state(), State::Requesting);
    let ack = reply(c, MessageType::Ack, ADDR, Some(secs));
    let a = c.on_message(10, &ack);
    let lease = bound(&a).expect("bind").clone();
    assert_eq!(c.state(), State::Bound);
    lease
}

#[test]
fn a_full_exchange_binds_a_lease_with_its_options() {
    let mut c = client();
    let l = bind(&mut c, 3600);
    assert_eq!((l.address, l.prefix, l.server), (ADDR, 24, SERVER));
    assert_eq!(l.routers, [SERVER]);
    assert_eq!(l.dns, [Ipv4Addr::new(10, 0, 2, 3)]);
    assert_eq!((l.lease_secs, l.t1_secs, l.t2_secs), (3600, 1800, 3150));
    assert_eq!(c.deadline(), Some(10 + 1_800_000));
}

#[test]
fn discover_is_resent_with_growing_delays() {
    let mut c = client();
    c.start(0);
    let mut delays = Vec::new();
    let mut now = 0;
    for _ in 0..9 {
        let d = c.deadline().expect("deadline");
        delays.push(d - now);
        now = d;
        let a = c.on_timer(now);
        assert_eq!(sent(&a), [(Dest::Broadcast, MessageType::Discover)]);
    }
    // 1 s, 2 s, 4 s ... capped at 64 s, each within ±1/8.
    let bases = [
        1_000u64, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 64_000, 64_000,
    ];
    for (d, b) in delays.iter().zip(bases) {
        assert!(*d >= b - b / 8 && *d <= b + b / 8, "{delays:?}");
    }
}

#[test]
fn early_timers_do_nothing() {
    let mut c = client();
    c.start(0);
    assert!(c.on_timer(1).is_empty());
}

#[test]
fn replies_for_other_transactions_or_machines_are_ignored() {
    let mut c = client();
    c.start(0);
    let mut other_xid = reply(&c, MessageType::Offer, ADDR, None);
    other_xid.xid = c.xid().wrapping_add(1);
    assert!(c.on_message(1, &other_xid).is_empty());
    let mut other_mac = reply(&c, MessageType::Offer, ADDR, None);
    other_mac.chaddr[0] = 2;
    assert!(c.on_message(1, &other_mac).is_empty());
    // An ACK while selecting is not an answer to anything asked.
    assert!(
        c.on_message(1, &reply(&c, MessageType::Ack, ADDR, None))
            .is_empty()
    );
    assert_eq!(c.state(), State::Selecting);
}

#[test]
fn request_is_tried_four_times_then_discovery_starts_over() {
    let mut c = client();
    c.start(0);
    c.on_message(1, &reply(&c, MessageType::Offer, ADDR, None));
    let first_xid = c.xid();
    let mut kinds = Vec::new();
    for _ in 0..4 {
        let d = c.deadline().expect("deadline");
        kinds.extend(sent(&c.on_timer(d)).into_iter().map(|(_, k)| k));
    }
    assert_eq!(
        kinds,
        [
            MessageType::Request,
            MessageType::Request,
            MessageType::Request,
            MessageType::Discover
        ]
    );
    assert_eq!(c.state(), State::Selecting);
    assert_ne!(c.xid(), first_xid);
}

#[test]
fn renews_unicast_at_t1_then_rebinds_broadcast_at_t2_then_expires() {
    let mut c = client();
    let lease = bind(&mut c, 120);
    let t1 = lease.t1_at().expect("t1");
    let t2 = lease.t2_at().expect("t2");
    let end = lease.expires_at().expect("end");
    assert_eq!((t1, t2, end), (10 + 60_000, 10 + 105_000, 10 + 120_000));

    let a = c.on_timer(t1);
    assert_eq!(sent(&a), [(Dest::Server(SERVER), MessageType::Request)]);
    assert_eq!(c.state(), State::Renewing);
    // Resent after half the time to T2 (22.5 s), never past T2.
    let mut now = t1;
    while let Some(d) = c.deadline().filter(|d| *d < t2) {
        assert!(d - now >= 10_000 || d == t2);
        now = d;
        assert_eq!(
            sent(&c.on_timer(now)),
            [(Dest::Server(SERVER), MessageType::Request)]
        );
    }
    assert_eq!(c.deadline(), Some(t2));
    let a = c.on_timer(t2);
    assert_eq!(sent(&a), [(Dest::Broadcast, MessageType::Request)]);
    assert_eq!(c.state(), State::Rebinding);
    // No answer until the lease ends: unbind and start over.
    let mut guard = 0;
    while c.deadline().is_some_and(|d| d < end) && guard < 10 {
        let d = c.deadline().expect("deadline");
        c.on_timer(d);
        guard += 1;
    }
    assert_eq!(c.deadline(), Some(end));
    let a = c.on_timer(end);
    assert!(matches!(a.first(), Some(Action::Unbind(l)) if l.address == ADDR));
    assert_eq!(sent(&a), [(Dest::Broadcast, MessageType::Discover)]);
    assert_eq!(c.state(), State::Selecting);
    assert!(c.lease().is_none());
}

#[test]
fn an_ack_while_renewing_extends_the_lease() {
    let mut c = client();
    let lease = bind(&mut c, 120);
    let t1 = lease.t1_at().expect("t1");
    c.on_timer(t1);
    let a = c.on_message(t1 + 20, &reply(&c, MessageType::Ack, ADDR, Some(120)));
    let renewed = bound(&a).expect("renewed");
    assert_eq!(renewed.acquired_ms, t1 + 20);
    assert!(
        !a.iter().any(|x| matches!(x, Action::Unbind(_))),
        "same address: no unbind"
    );
    assert_eq!(c.state(), State::Bound);
    assert_eq!(c.deadline(), Some(t1 + 20 + 60_000));
}

#[test]
fn a_new_address_on_renewal_replaces_the_old() {
    let mut c = client();
    let lease = bind(&mut c, 120);
    c.on_timer(lease.t1_at().expect("t1"));
    let other = Ipv4Addr::new(10, 0, 2, 16);
    let a = c.on_message(70_000, &reply(&c, MessageType::Ack, other, Some(120)));
    assert!(matches!(&a[0], Action::Unbind(l) if l.address == ADDR));
    assert!(matches!(&a[1], Action::Bind(l) if l.address == other));
}

#[test]
fn a_nak_while_renewing_drops_the_lease_and_rediscovers() {
    let mut c = client();
    let lease = bind(&mut c, 120);
    c.on_timer(lease.t1_at().expect("t1"));
    let a = c.on_message(
        70_000,
        &reply(&c, MessageType::Nak, Ipv4Addr::UNSPECIFIED, None),
    );
    assert!(matches!(&a[0], Action::Unbind(_)));
    assert_eq!(sent(&a), [(Dest::Broadcast, MessageType::Discover)]);
}

#[test]
fn release_sends_to_the_server_and_unbinds() {
    let mut c = client();
    bind(&mut c, 3600);
    let a = c.release(100);
    assert_eq!(sent(&a), [(Dest::Server(SERVER), MessageType::Release)]);
    assert!(matches!(a.last(), Some(Action::Unbind(_))));
    assert_eq!(c.state(), State::Released);
    assert_eq!(c.deadline(), None);
    // Releasing without a lease sends nothing.
    let mut idle = client();
    assert!(idle.release(0).is_empty());
}

#[test]
fn an_infinite_lease_sets_no_timer() {
    let mut c = client();
    bind(&mut c, u32::MAX);
    assert_eq!(c.deadline(), None);
}
