//! The etcd backend (`[cluster] datastore = "etcd://HOST:PORT"`), for those who outgrow one
//! server's embedded store: the same operations as the revision log, over etcd v3's JSON
//! gateway (`/v3/kv/range`, `/v3/kv/txn`, `/v3/watch`) in plain HTTP. etcd's revisions are the
//! objects' resourceVersions, as they are for the real API server; compare-and-set is a
//! transaction comparing the key's mod_revision (or create_revision 0 for a create).
//!
//! Written here over hyper rather than with the etcd-client crate: that crate needs protoc and
//! tonic's gRPC stack at build time and in the binary; the gateway is a few JSON requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::store::{Error, Event, KeyValue, Kind};

#[derive(Debug)]
pub struct Etcd {
    /// `host:port`
    addr: String,
    /// The newest revision seen in any answer.
    revision: AtomicU64,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(v: Option<&Value>) -> Vec<u8> {
    v.and_then(Value::as_str)
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .unwrap_or_default()
}

/// etcd writes int64s as strings in JSON.
fn num(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

/// The key after every key that starts with `prefix` (etcd's range_end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("etcd: {e}"))
}

fn kv_of(kv: &Value) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(&unb64(kv.get("key"))).into_owned(),
        value: unb64(kv.get("value")),
        create_revision: num(kv.get("create_revision")),
        mod_revision: num(kv.get("mod_revision")),
    }
}

impl Etcd {
    /// `etcd://HOST:PORT` or `HOST:PORT`.
    pub fn new(url: &str) -> Etcd {
        let addr = url
            .trim_start_matches("etcd://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        Etcd {
            addr,
            revision: AtomicU64::new(0),
        }
    }

    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, Error> {
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| storage(format!("connecting to {}: {e}", self.addr)))?;
        let _ = tcp.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(storage)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }

    fn request(&self, path: &str, body: &Value) -> Result<hyper::Request<Full<Bytes>>, Error> {
        hyper::Request::post(format!("http://{}{path}", self.addr))
            .header(hyper::header::HOST, &self.addr)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(storage)
    }

    async fn call(&self, path: &str, body: Value) -> Result<Value, Error> {
        let mut send = self.connect().await?;
        let resp = send
            .send_request(self.request(path, &body)?)
            .await
            .map_err(storage)?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(storage)?
            .to_bytes();
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|e| storage(format!("{path}: {e}")))?;
        if !status.is_success() {
            return Err(storage(format!(
                "{path}: {status}: {}",
                v.get("message").or_else(|| v.get("error")).unwrap_or(&v)
            )));
        }
        self.seen(num(v.pointer("/header/revision")));
        Ok(v)
    }

    fn seen(&self, rev: u64) {
        self.revision.fetch_max(rev, Ordering::Relaxed);
    }

    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Relaxed)
    }

    pub async fn refresh_revision(&self) -> Result<u64, Error> {
        self.call(
            "/v3/kv/range",
            json!({"key": b64(b"\0"), "count_only": true}),
        )
        .await?;
        Ok(self.revision())
    }

    /// Drops the history older than the newest `keep` revisions.
    pub async fn compact(&self, keep: u64) -> Result<(), Error> {
        let rev = self.refresh_revision().await?;
        if rev > keep {
            self.call(
                "/v3/kv/compaction",
                json!({"revision": (rev - keep).to_string()}),
            )
            .await?;
        }
        Ok(())
    }

    /// The oldest revision etcd still has (its compaction point), found by a range that
    /// asks for revision 1.
    async fn oldest(&self) -> Option<u64> {
        match self
            .call(
                "/v3/kv/range",
                json!({"key": b64(b"\0"), "count_only": true, "revision": "1"}),
            )
            .await
        {
            Ok(_) => Some(1),
            Err(Error::Storage(m)) => m
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|d| d.parse().ok())
                .next_back(),
            Err(_) => None,
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        let v = self
            .call("/v3/kv/range", json!({"key": b64(key.as_bytes())}))
            .await?;
        Ok(v.get("kvs")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .map(kv_of))
    }

    pub async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), Error> {
        let v = self
            .call(
                "/v3/kv/range",
                json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix.as_bytes()))}),
            )
            .await?;
        let kvs = v
            .get("kvs")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(kv_of).collect())
            .unwrap_or_default();
        Ok((kvs, num(v.pointer("/header/revision"))))
    }

    /// A transaction: if `compare` holds, `success`; else the key's current state is read to
    /// say why not.
    async fn txn(
        &self,
        key: &str,
        compare: Value,
        success: Value,
    ) -> Result<Result<Value, Option<KeyValue>>, Error> {
        let v = self
            .call(
                "/v3/kv/txn",
                json!({"compare": [compare], "success": [success],
                       "failure": [{"request_range": {"key": b64(key.as_bytes())}}]}),
            )
            .await?;
        if v.get("succeeded") == Some(&Value::Bool(true)) {
            return Ok(Ok(v));
        }
        let current = v.pointer("/responses/0/response_range/kvs/0").map(kv_of);
        Ok(Err(current))
    }

    pub async fn create(&self, key: &str, value: Vec<u8>) -> Result<Event, Error> {
        let k = b64(key.as_bytes());
        match self
            .txn(
                key,
                json!({"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}),
                json!({"request_put": {"key": k, "value": b64(&value)}}),
            )
            .await?
        {
            Ok(v) => {
                let rev = num(v.pointer("/header/revision"));
                Ok(Event {
                    revision: rev,
                    kind: Kind::Put,
                    key: key.to_string(),
                    value,
                    create_revision: rev,
                    prev_revision: 0,
                })
            }
            Err(_) => Err(Error::Exists {
                key: key.to_string(),
            }),
        }
    }

    fn refused(key: &str, expect: Option<u64>, current: Option<KeyValue>) -> Error {
        match (current, expect) {
            (None, _) => Error::NotFound {
                key: key.to_string(),
            },
            (Some(kv), Some(e)) => Error::Conflict {
                key: key.to_string(),
                expected: e,
                current: kv.mod_revision,
            },
            (Some(_), None) => Error::Storage(format!("etcd: the write to {key} was refused")),
        }
    }

    fn compare(k: &str, expect: Option<u64>) -> Value {
        match expect {
            Some(e) => {
                json!({"key": k, "target": "MOD", "result": "EQUAL", "mod_revision": e.to_string()})
            }
            None => {
                json!({"key": k, "target": "CREATE", "result": "GREATER", "create_revision": "0"})
            }
        }
    }

    pub async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expect: Option<u64>,
    ) -> Result<Event, Error> {
        let k = b64(key.as_bytes());
        match self
            .txn(
                key,
                Self::compare(&k, expect),
                json!({"request_put": {"key": k, "value": b64(&value), "prev_kv": true}}),
            )
            .await?
        {
            Ok(v) => {
                let prev = v.pointer("/responses/0/response_put/prev_kv").map(kv_of);
                Ok(Event {
                    revision: num(v.pointer("/header/revision")),
                    kind: Kind::Put,
                    key: key.to_string(),
                    value,
                    create_revision: prev.as_ref().map_or(0, |p| p.create_revision),
                    prev_revision: prev.as_ref().map_or(0, |p| p.mod_revision),
                })
            }
            Err(current) => Err(Self::refused(key, expect, current)),
        }
    }

    pub async fn delete(&self, key: &str, expect: Option<u64>) -> Result<Event, Error> {
        let k = b64(key.as_bytes());
        match self
            .txn(
                key,
                Self::compare(&k, expect),
                json!({"request_delete_range": {"key": k, "prev_kv": true}}),
            )
            .await?
        {
            Ok(v) => {
                let prev = v
                    .pointer("/responses/0/response_delete_range/prev_kvs/0")
                    .map(kv_of);
                Ok(Event {
                    revision: num(v.pointer("/header/revision")),
                    kind: Kind::Delete,
                    key: key.to_string(),
                    value: prev.as_ref().map(|p| p.value.clone()).unwrap_or_default(),
                    create_revision: prev.as_ref().map_or(0, |p| p.create_revision),
                    prev_revision: prev.as_ref().map_or(0, |p| p.mod_revision),
                })
            }
            Err(current) => Err(Self::refused(key, expect, current)),
        }
    }

    /// Events under `prefix` after `after`, from etcd's watch stream; `Compacted` when etcd no
    /// longer has that revision.
    pub async fn watch(
        self: &Arc<Self>,
        prefix: &str,
        after: u64,
    ) -> Result<mpsc::UnboundedReceiver<Event>, Error> {
        // etcd says a watch's start is compacted only after creating it; a read at that
        // revision says so at once.
        if after < self.refresh_revision().await? {
            let r = self
                .call(
                    "/v3/kv/range",
                    json!({"key": b64(prefix.as_bytes()), "count_only": true, "revision": (after + 1).to_string()}),
                )
                .await;
            if let Err(Error::Storage(m)) = &r
                && m.contains("compacted")
            {
                let oldest = self.oldest().await.unwrap_or(after + 1);
                return Err(Error::Compacted {
                    asked: after,
                    oldest,
                });
            }
            r?;
        }
        let mut send = self.connect().await?;
        let body = json!({"create_request": {"key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix.as_bytes())),
            "start_revision": (after + 1).to_string(), "prev_kv": true}});
        let resp = send
            .send_request(self.request("/v3/watch", &body)?)
            .await
            .map_err(storage)?;
        if !resp.status().is_success() {
            return Err(storage(format!("/v3/watch: {}", resp.status())));
        }
        let mut body = resp.into_body();
        // The first message says the watch was created, or that the revision is compacted.
        let mut buf: Vec<u8> = vec![];
        let mut first: Option<Value> = None;
        let mut pending: Vec<Value> = vec![];
        while first.is_none() {
            let Some(frame) = body.frame().await else {
                return Err(storage("the watch stream ended at once"));
            };
            if let Ok(data) = frame.map_err(storage)?.into_data() {
                buf.extend_from_slice(&data);
            }
            for msg in take_messages(&mut buf) {
                if first.is_none() {
                    first = Some(msg);
                } else {
                    pending.push(msg);
                }
            }
        }
        let first = first.unwrap_or_default();
        let compact = num(first.pointer("/result/compact_revision"));
        if compact > 0 {
            return Err(Error::Compacted {
                asked: after,
                oldest: compact,
            });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let me = self.clone();
        let deliver = move |msg: &Value, tx: &mpsc::UnboundedSender<Event>| -> bool {
            me.seen(num(msg.pointer("/result/header/revision")));
            // Cancelled (compacted under it): the stream ends, the client watches again and
            // is told its revision is gone.
            if msg.pointer("/result/canceled") == Some(&Value::Bool(true)) {
                return false;
            }
            for ev in msg
                .pointer("/result/events")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let kv = ev.get("kv").map(kv_of).unwrap_or(KeyValue {
                    key: String::new(),
                    value: vec![],
                    create_revision: 0,
                    mod_revision: 0,
                });
                let prev = ev.get("prev_kv").map(kv_of);
                let delete = ev.get("type").and_then(Value::as_str) == Some("DELETE");
                let e = Event {
                    revision: kv.mod_revision,
                    kind: if delete { Kind::Delete } else { Kind::Put },
                    key: kv.key.clone(),
                    value: if delete {
                        prev.as_ref().map(|p| p.value.clone()).unwrap_or_default()
                    } else {
                        kv.value.clone()
                    },
                    create_revision: if delete {
                        prev.as_ref().map_or(0, |p| p.create_revision)
                    } else {
                        kv.create_revision
                    },
                    prev_revision: prev.as_ref().map_or(0, |p| p.mod_revision),
                };
                if tx.send(e).is_err() {
                    return false;
                }
            }
            true
        };
        for m in &pending {
            if !deliver(m, &tx) {
                return Ok(rx);
            }
        }
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    frame = body.frame() => {
                        let Some(Ok(frame)) = frame else { return };
                        if let Ok(data) = frame.into_data() {
                            buf.extend_from_slice(&data);
                        }
                        for msg in take_messages(&mut buf) {
                            if !deliver(&msg, &tx) {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// The whole JSON messages at the front of `buf` (the gateway writes one per line).
fn take_messages(buf: &mut Vec<u8>) -> Vec<Value> {
    let mut out = vec![];
    while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = buf.drain(..=nl).collect();
        if let Ok(v) = serde_json::from_slice::<Value>(&line) {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        let mut buf = b"{\"a\":1}\n{\"b\":".to_vec();
        assert_eq!(take_messages(&mut buf), vec![json!({"a": 1})]);
        assert_eq!(buf, b"{\"b\":".to_vec());
    }
}
