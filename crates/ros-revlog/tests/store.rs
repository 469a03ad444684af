//! The revision log against its promises: compare-and-set by revision, lists by prefix, watches
//! that miss nothing and repeat nothing, compaction, group commit under many writers, and no
//! acknowledged write lost when the process is killed.

// The child writer below is a plain function the test runs as itself.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use ros_revlog::{Error, Kind, Op, Store};

fn put(key: &str, v: &str) -> Op {
    Op::Create {
        key: key.into(),
        value: v.as_bytes().to_vec(),
    }
}

fn update(key: &str, v: &str, expect: Option<u64>) -> Op {
    Op::Update {
        key: key.into(),
        value: v.as_bytes().to_vec(),
        expect,
    }
}

#[test]
fn writes_compare_revisions_and_lists_take_a_prefix() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(&t.path().join("db")).unwrap();
    let a = s.apply(put("/registry/configmaps/default/a", "1")).unwrap();
    assert_eq!((a.revision, a.create_revision, a.prev_revision), (1, 1, 0));
    s.apply(put("/registry/configmaps/kube-system/b", "2"))
        .unwrap();
    s.apply(put("/registry/pods/default/c", "3")).unwrap();
    assert_eq!(
        s.apply(put("/registry/configmaps/default/a", "again")),
        Err(Error::Exists {
            key: "/registry/configmaps/default/a".into()
        })
    );
    let u = s
        .apply(update("/registry/configmaps/default/a", "4", Some(1)))
        .unwrap();
    assert_eq!((u.revision, u.create_revision, u.prev_revision), (4, 1, 1));
    // A write naming a revision that is no longer the newest is refused, and takes none.
    assert_eq!(
        s.apply(update("/registry/configmaps/default/a", "5", Some(1))),
        Err(Error::Conflict {
            key: "/registry/configmaps/default/a".into(),
            expected: 1,
            current: 4
        })
    );
    assert_eq!(s.revision(), 4);
    assert!(matches!(
        s.apply(update("/registry/configmaps/default/zz", "x", None)),
        Err(Error::NotFound { .. })
    ));
    let (items, rev) = s.list("/registry/configmaps/").unwrap();
    assert_eq!(rev, 4);
    let keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "/registry/configmaps/default/a",
            "/registry/configmaps/kube-system/b"
        ]
    );
    assert_eq!(items[0].value, b"4");
    assert_eq!(items[0].mod_revision, 4);
    let d = s
        .apply(Op::Delete {
            key: "/registry/configmaps/default/a".into(),
            expect: Some(4),
        })
        .unwrap();
    assert_eq!((d.kind, d.value.as_slice()), (Kind::Delete, &b"4"[..]));
    assert!(s.get("/registry/configmaps/default/a").unwrap().is_none());
    // Created again, it starts a new life.
    let again = s.apply(put("/registry/configmaps/default/a", "6")).unwrap();
    assert_eq!(again.create_revision, again.revision);
}

#[test]
fn a_watch_from_a_lists_revision_sees_every_later_write_once_in_order() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(&t.path().join("db")).unwrap();
    for i in 0..10 {
        s.apply(put(&format!("/registry/configmaps/default/c{i}"), "x"))
            .unwrap();
    }
    let (_, rev) = s.list("/registry/configmaps/").unwrap();
    // Writers race the watch's start: some of their writes land before it registers, some after.
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || {
            for i in 10..300 {
                s.apply(put(&format!("/registry/configmaps/default/c{i}"), "y"))
                    .unwrap();
                s.apply(put(&format!("/registry/pods/default/p{i}"), "z"))
                    .unwrap();
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(5));
    let mut w = s.watch("/registry/configmaps/", rev).unwrap();
    writer.join().unwrap();
    let mut seen = Vec::new();
    while let Ok(e) = w.try_recv() {
        seen.push(e);
    }
    let names: Vec<String> = seen
        .iter()
        .map(|e| e.key.rsplit('/').next().unwrap_or("").to_string())
        .collect();
    let want: Vec<String> = (10..300).map(|i| format!("c{i}")).collect();
    assert_eq!(
        names, want,
        "every configmap write after {rev}, once, in order"
    );
    assert!(seen.windows(2).all(|p| p[0].revision < p[1].revision));
}

#[test]
fn compaction_bounds_the_log_and_old_revisions_are_gone() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(&t.path().join("db")).unwrap();
    let first = s.apply(put("/registry/leases/n", "0")).unwrap();
    s.apply(put("/registry/keep/me", "old but live")).unwrap();
    let mut expect = first.revision;
    for i in 0..3000 {
        expect = s
            .apply(update("/registry/leases/n", &i.to_string(), Some(expect)))
            .unwrap()
            .revision;
    }
    let compacted = s.compacted().unwrap();
    assert!(
        compacted >= s.revision() - ros_revlog::KEEP - 500,
        "compacted at {compacted}, the store at {}",
        s.revision()
    );
    assert!(matches!(
        s.watch("/registry/", 1),
        Err(Error::Compacted { asked: 1, .. })
    ));
    // What is kept replays; a live key's old row survives compaction.
    let mut w = s.watch("/registry/leases/", s.revision() - 5).unwrap();
    let mut n = 0;
    while w.try_recv().is_ok() {
        n += 1;
    }
    assert_eq!(n, 5);
    assert_eq!(
        s.get("/registry/keep/me").unwrap().unwrap().value,
        b"old but live"
    );
}

#[test]
fn many_writers_at_once_are_all_acknowledged_with_distinct_revisions() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(&t.path().join("db")).unwrap();
    let threads: Vec<_> = (0..16)
        .map(|w| {
            let s = s.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| s.apply(put(&format!("/k/{w}/{i}"), "v")).unwrap().revision)
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut revs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    revs.sort_unstable();
    revs.dedup();
    assert_eq!(revs.len(), 800);
    assert_eq!(s.list("/k/").unwrap().0.len(), 800);
}

/// The child of the test below: writes until killed, printing each acknowledged revision.
fn write_until_killed(dir: &str) -> ! {
    use std::io::Write;
    let s = Store::open(&std::path::Path::new(dir).join("db")).unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0.. {
        let e = s.apply(put(&format!("/registry/k/{i:06}"), "v")).unwrap();
        writeln!(out, "acked {} {}", e.revision, e.key).unwrap();
        out.flush().unwrap();
    }
    unreachable!()
}

#[test]
fn no_acknowledged_write_is_lost_when_the_writer_is_killed() {
    // The test runs itself as the writer it kills.
    if let Ok(dir) = std::env::var("ROS_REVLOG_CHILD") {
        write_until_killed(&dir);
    }
    let t = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "no_acknowledged_write_is_lost_when_the_writer_is_killed",
            "--exact",
            "--nocapture",
        ])
        .env("ROS_REVLOG_CHILD", t.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    child.kill().unwrap();
    child.wait().unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
    let acked: Vec<(u64, String)> = text
        .lines()
        .filter_map(|l| {
            let mut p = l.strip_prefix("acked ")?.split(' ');
            Some((p.next()?.parse().ok()?, p.next()?.to_string()))
        })
        .collect();
    assert!(acked.len() > 10, "the child wrote: {text}");
    let s = Store::open(&t.path().join("db")).unwrap();
    for (rev, key) in &acked {
        let kv = s.get(key).unwrap();
        assert_eq!(kv.map(|k| k.mod_revision), Some(*rev), "{key}");
    }
    assert!(s.revision() >= acked.last().unwrap().0);
}
