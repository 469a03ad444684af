//! The cluster's embedded store: a revision log with kine's meaning, on redb (pure Rust, no C).
//!
//! Every write is a new revision (the objects' `resourceVersion`): a create, an update or a
//! delete appends a row to the log, keyed by its revision; `current` maps each live key to the
//! revision of its newest row. An update or delete may name the revision it expects (409 when
//! another write came first). A watch from a revision replays the log after it, then follows
//! the writes as they commit (no polling); revisions older than the compaction point are gone
//! (the API server answers 410 for them, and clients list again).
//!
//! Durability: writes go through one writer thread that takes whatever writes are waiting,
//! applies them in order in one redb transaction, commits it with one fsync, and only then
//! acknowledges each (group commit, as etcd batches its raft entries): no write is acknowledged
//! before it is on the disk, and no caller waits on a lock ("database is locked" is SQLite's
//! answer to two writers; here the second write joins the next commit). Compaction runs on the
//! same thread and keeps the newest [`KEEP`] revisions and every key's newest row, so the file
//! stops growing with the history (SQLite's WAL under kine grows until a checkpoint).
//!
//! Why redb rather than a log file of our own: its copy-on-write B-trees give crash-safe commits,
//! ordered ranges for lists by prefix and cheap deletes for compaction, without C.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

/// revision -> the row written at it.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// key -> the revision of its newest row (live keys only).
const CURRENT: TableDefinition<&str, u64> = TableDefinition::new("current");
/// "revision": the newest revision; "compacted": revisions up to it may be gone.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// How many revisions compaction keeps (kine keeps about 1,000).
pub const KEEP: u64 = 1000;
/// Compaction runs once this many revisions have gathered beyond [`KEEP`].
const COMPACT_EVERY: u64 = 500;
/// The most writes one commit takes.
const BATCH: usize = 256;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("{key} already exists")]
    Exists { key: String },
    #[error("{key} not found")]
    NotFound { key: String },
    /// The write named a revision that is no longer the key's newest.
    #[error(
        "{key}: the object has been modified (expected revision {expected}, it is at {current})"
    )]
    Conflict {
        key: String,
        expected: u64,
        current: u64,
    },
    /// The revision asked for is older than what compaction kept.
    #[error("revision {asked} is compacted (the oldest kept is {oldest})")]
    Compacted { asked: u64, oldest: u64 },
    #[error("the store: {0}")]
    Storage(String),
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

/// A write.
#[derive(Debug, Clone)]
pub enum Op {
    Create {
        key: String,
        value: Vec<u8>,
    },
    /// Replaces the key's value; with `expect`, only if its newest revision is that one.
    Update {
        key: String,
        value: Vec<u8>,
        expect: Option<u64>,
    },
    Delete {
        key: String,
        expect: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Put,
    Delete,
}

/// A row of the log: what a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub revision: u64,
    pub kind: Kind,
    pub key: String,
    /// The new value; for a delete, the value deleted.
    pub value: Vec<u8>,
    /// The revision the key was created at.
    pub create_revision: u64,
    /// The key's previous revision (0 for a create).
    pub prev_revision: u64,
}

/// A live key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
}

// A row: kind (1 byte), create and previous revisions (8 bytes each, little-endian), the key's
// length (4 bytes), the key, the value. Written by hand: five fields, read on every list.
fn encode(e: &Event) -> Vec<u8> {
    let mut b = Vec::with_capacity(21 + e.key.len() + e.value.len());
    b.push(match e.kind {
        Kind::Put => 0,
        Kind::Delete => 1,
    });
    b.extend_from_slice(&e.create_revision.to_le_bytes());
    b.extend_from_slice(&e.prev_revision.to_le_bytes());
    b.extend_from_slice(&(e.key.len() as u32).to_le_bytes());
    b.extend_from_slice(e.key.as_bytes());
    b.extend_from_slice(&e.value);
    b
}

fn decode(revision: u64, b: &[u8]) -> Result<Event, Error> {
    let bad = || Error::Storage(format!("row {revision} is damaged"));
    if b.len() < 21 {
        return Err(bad());
    }
    let u64_at = |i: usize| -> Result<u64, Error> {
        Ok(u64::from_le_bytes(
            b[i..i + 8].try_into().map_err(|_| bad())?,
        ))
    };
    let klen = u32::from_le_bytes(b[17..21].try_into().map_err(|_| bad())?) as usize;
    let key = b.get(21..21 + klen).ok_or_else(bad)?;
    Ok(Event {
        revision,
        kind: if b[0] == 1 { Kind::Delete } else { Kind::Put },
        create_revision: u64_at(1)?,
        prev_revision: u64_at(9)?,
        key: String::from_utf8(key.to_vec()).map_err(|_| bad())?,
        value: b[21 + klen..].to_vec(),
    })
}

/// What watchers are sent. The writer sends under this lock, and a new watch replays the log
/// and registers under it, so a watch misses nothing and sees nothing twice.
struct Watchers {
    /// The newest revision sent.
    revision: u64,
    list: Vec<(String, mpsc::UnboundedSender<Event>)>,
}

struct Shared {
    db: Database,
    watchers: Mutex<Watchers>,
}

type Reply = oneshot::Sender<Result<Event, Error>>;

/// The store. Cheap to clone; the writer thread ends when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    writes: std::sync::mpsc::Sender<(Op, Reply)>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// A stream of events for one prefix, in revision order.
pub type Watch = mpsc::UnboundedReceiver<Event>;

fn meta(t: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<u64, Error> {
    Ok(t.get(name).map_err(storage)?.map_or(0, |v| v.value()))
}

impl Store {
    /// Opens (making it if needed) the store in the file `path`.
    pub fn open(path: &Path) -> Result<Store, Error> {
        let db = Database::create(path).map_err(|e| storage(format!("{}: {e}", path.display())))?;
        let w = db.begin_write().map_err(storage)?;
        {
            w.open_table(LOG).map_err(storage)?;
            w.open_table(CURRENT).map_err(storage)?;
            w.open_table(META).map_err(storage)?;
        }
        w.commit().map_err(storage)?;
        let revision = {
            let r = db.begin_read().map_err(storage)?;
            meta(&r.open_table(META).map_err(storage)?, "revision")?
        };
        let shared = Arc::new(Shared {
            db,
            watchers: Mutex::new(Watchers {
                revision,
                list: Vec::new(),
            }),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let s = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("revlog-writer".into())
            .spawn(move || writer(&s, &rx))
            .map_err(storage)?;
        Ok(Store { shared, writes: tx })
    }

    /// Queues a write; the answer comes once it is committed (on the disk).
    pub fn submit(&self, op: Op) -> oneshot::Receiver<Result<Event, Error>> {
        let (tx, rx) = oneshot::channel();
        // A send fails only when the writer has ended; the dropped reply says so.
        let _ = self.writes.send((op, tx));
        rx
    }

    /// A write, waiting for its commit (not from inside an async runtime: use [`Store::submit`]).
    pub fn apply(&self, op: Op) -> Result<Event, Error> {
        self.submit(op)
            .blocking_recv()
            .map_err(|_| storage("the writer has stopped"))?
    }

    /// The newest revision.
    pub fn revision(&self) -> u64 {
        self.shared.watchers.lock().map_or(0, |w| w.revision)
    }

    /// The oldest revision a watch may start after.
    pub fn compacted(&self) -> Result<u64, Error> {
        let r = self.shared.db.begin_read().map_err(storage)?;
        meta(&r.open_table(META).map_err(storage)?, "compacted")
    }

    pub fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        let r = self.shared.db.begin_read().map_err(storage)?;
        let current = r.open_table(CURRENT).map_err(storage)?;
        let log = r.open_table(LOG).map_err(storage)?;
        let Some(rev) = current.get(key).map_err(storage)?.map(|v| v.value()) else {
            return Ok(None);
        };
        let row = log
            .get(rev)
            .map_err(storage)?
            .ok_or_else(|| storage(format!("{key}: row {rev} is missing")))?;
        let e = decode(rev, row.value())?;
        Ok(Some(KeyValue {
            key: e.key,
            value: e.value,
            create_revision: e.create_revision,
            mod_revision: rev,
        }))
    }

    /// Every live key under `prefix`, in key order, and the revision they are at.
    pub fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), Error> {
        let r = self.shared.db.begin_read().map_err(storage)?;
        let current = r.open_table(CURRENT).map_err(storage)?;
        let log = r.open_table(LOG).map_err(storage)?;
        let revision = meta(&r.open_table(META).map_err(storage)?, "revision")?;
        let mut out = Vec::new();
        for entry in current.range(prefix..).map_err(storage)? {
            let (k, rev) = entry.map_err(storage)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            let rev = rev.value();
            let row = log
                .get(rev)
                .map_err(storage)?
                .ok_or_else(|| storage(format!("{}: row {rev} is missing", k.value())))?;
            let e = decode(rev, row.value())?;
            out.push(KeyValue {
                key: e.key,
                value: e.value,
                create_revision: e.create_revision,
                mod_revision: rev,
            });
        }
        Ok((out, revision))
    }

    /// Events under `prefix` after revision `after`: those in the log first, then each write as
    /// it commits. [`Error::Compacted`] when `after` is older than what is kept.
    pub fn watch(&self, prefix: &str, after: u64) -> Result<Watch, Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut w = self
            .shared
            .watchers
            .lock()
            .map_err(|_| storage("the watchers' lock is poisoned"))?;
        if after < w.revision {
            let r = self.shared.db.begin_read().map_err(storage)?;
            let oldest = meta(&r.open_table(META).map_err(storage)?, "compacted")?;
            if after < oldest {
                return Err(Error::Compacted {
                    asked: after,
                    oldest,
                });
            }
            let log = r.open_table(LOG).map_err(storage)?;
            for entry in log.range(after + 1..=w.revision).map_err(storage)? {
                let (rev, row) = entry.map_err(storage)?;
                let e = decode(rev.value(), row.value())?;
                if e.key.starts_with(prefix) {
                    let _ = tx.send(e);
                }
            }
        }
        w.list.push((prefix.to_string(), tx));
        Ok(rx)
    }
}

/// The writer thread: batches of waiting writes, one commit each, then the answers and the
/// watchers' events.
fn writer(s: &Shared, rx: &std::sync::mpsc::Receiver<(Op, Reply)>) {
    let mut batch: VecDeque<(Op, Reply)> = VecDeque::new();
    while let Ok(first) = rx.recv() {
        batch.push_back(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push_back(w),
                Err(_) => break,
            }
        }
        let ops: Vec<Op> = batch.iter().map(|(op, _)| op.clone()).collect();
        match commit(&s.db, &ops) {
            Ok((results, revision)) => {
                let events: Vec<Event> = results.iter().filter_map(|r| r.clone().ok()).collect();
                if let Ok(mut w) = s.watchers.lock() {
                    w.revision = revision;
                    w.list.retain(|(prefix, tx)| {
                        events
                            .iter()
                            .filter(|e| e.key.starts_with(prefix.as_str()))
                            .all(|e| tx.send(e.clone()).is_ok())
                    });
                }
                for ((_, reply), r) in batch.drain(..).zip(results) {
                    let _ = reply.send(r);
                }
                if let Err(e) = compact_if_due(&s.db, revision) {
                    // Compaction only bounds the file's growth; the writes are safe without it.
                    eprintln!("revlog: compaction: {e}");
                }
            }
            Err(e) => {
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Applies `ops` in order in one transaction: each its own revision (a refused op takes none).
fn commit(db: &Database, ops: &[Op]) -> Result<(Vec<Result<Event, Error>>, u64), Error> {
    let mut w = db.begin_write().map_err(storage)?;
    w.set_durability(Durability::Immediate).map_err(storage)?;
    let mut results = Vec::with_capacity(ops.len());
    let revision;
    {
        let mut log = w.open_table(LOG).map_err(storage)?;
        let mut current = w.open_table(CURRENT).map_err(storage)?;
        let mut meta_t = w.open_table(META).map_err(storage)?;
        let mut rev = meta(&meta_t, "revision")?;
        for op in ops {
            let key = match op {
                Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => key,
            };
            let now = current
                .get(key.as_str())
                .map_err(storage)?
                .map(|v| v.value());
            let prev = match now {
                Some(r) => Some(decode(
                    r,
                    log.get(r)
                        .map_err(storage)?
                        .ok_or_else(|| storage(format!("{key}: row {r} is missing")))?
                        .value(),
                )?),
                None => None,
            };
            let expected = match op {
                Op::Update { expect, .. } | Op::Delete { expect, .. } => *expect,
                Op::Create { .. } => None,
            };
            let refused = match (op, &prev) {
                (Op::Create { .. }, Some(_)) => Some(Error::Exists { key: key.clone() }),
                (Op::Update { .. } | Op::Delete { .. }, None) => {
                    Some(Error::NotFound { key: key.clone() })
                }
                (_, Some(p)) if expected.is_some_and(|x| x != p.revision) => {
                    Some(Error::Conflict {
                        key: key.clone(),
                        expected: expected.unwrap_or(0),
                        current: p.revision,
                    })
                }
                _ => None,
            };
            if let Some(e) = refused {
                results.push(Err(e));
                continue;
            }
            rev += 1;
            let e = match op {
                Op::Create { value, .. } | Op::Update { value, .. } => Event {
                    revision: rev,
                    kind: Kind::Put,
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                    prev_revision: prev.as_ref().map_or(0, |p| p.revision),
                },
                Op::Delete { .. } => {
                    let p = prev.ok_or_else(|| storage("unreachable: no previous row"))?;
                    Event {
                        revision: rev,
                        kind: Kind::Delete,
                        key: key.clone(),
                        value: p.value,
                        create_revision: p.create_revision,
                        prev_revision: p.revision,
                    }
                }
            };
            log.insert(rev, encode(&e).as_slice()).map_err(storage)?;
            match e.kind {
                Kind::Put => current.insert(key.as_str(), rev).map_err(storage)?,
                Kind::Delete => current.remove(key.as_str()).map_err(storage)?,
            };
            results.push(Ok(e));
        }
        meta_t.insert("revision", rev).map_err(storage)?;
        revision = rev;
    }
    w.commit().map_err(storage)?;
    Ok((results, revision))
}

/// Drops the rows older than the newest [`KEEP`] revisions that are not a live key's newest,
/// once [`COMPACT_EVERY`] more have gathered.
fn compact_if_due(db: &Database, revision: u64) -> Result<(), Error> {
    let compacted = {
        let r = db.begin_read().map_err(storage)?;
        meta(&r.open_table(META).map_err(storage)?, "compacted")?
    };
    let target = revision.saturating_sub(KEEP);
    if target < compacted + COMPACT_EVERY {
        return Ok(());
    }
    compact(db, target)
}

/// Compacts the log up to revision `upto` (inclusive).
pub(crate) fn compact(db: &Database, upto: u64) -> Result<(), Error> {
    let mut w = db.begin_write().map_err(storage)?;
    w.set_durability(Durability::Immediate).map_err(storage)?;
    {
        let mut log = w.open_table(LOG).map_err(storage)?;
        let current = w.open_table(CURRENT).map_err(storage)?;
        let mut meta_t = w.open_table(META).map_err(storage)?;
        let mut gone = Vec::new();
        for entry in log.range(..=upto).map_err(storage)? {
            let (rev, row) = entry.map_err(storage)?;
            let e = decode(rev.value(), row.value())?;
            let live = current
                .get(e.key.as_str())
                .map_err(storage)?
                .map(|v| v.value());
            if live != Some(e.revision) {
                gone.push(e.revision);
            }
        }
        for rev in gone {
            log.remove(rev).map_err(storage)?;
        }
        meta_t.insert("compacted", upto).map_err(storage)?;
    }
    w.commit().map_err(storage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_back_as_written() {
        let e = Event {
            revision: 7,
            kind: Kind::Delete,
            key: "/registry/pods/default/a".into(),
            value: b"{}".to_vec(),
            create_revision: 3,
            prev_revision: 5,
        };
        assert_eq!(decode(7, &encode(&e)).unwrap(), e);
        assert!(decode(7, &encode(&e)[..10]).is_err());
    }
}
