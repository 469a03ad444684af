//! Where the API server keeps objects: one seam over the store backends, the embedded revision
//! log (`ros-revlog`) and etcd (`crate::etcd`).
//!
//! Keys are kine's and the real API server's: `/registry/<resource>/<namespace>/<name>`, or
//! `/registry/<resource>/<name>` for cluster-scoped ones. Values are the objects' JSON without
//! their `resourceVersion`, which is the row's revision, filled in when read.

use std::sync::Arc;

pub use ros_revlog::{Error, Event, KeyValue, Kind, Op};
use tokio::sync::mpsc::UnboundedReceiver;

#[derive(Debug, Clone)]
pub enum Backend {
    Revlog(Arc<ros_revlog::Store>),
    Etcd(Arc<crate::etcd::Etcd>),
}

impl Backend {
    pub fn open_revlog(path: &std::path::Path) -> Result<Backend, Error> {
        Ok(Backend::Revlog(Arc::new(ros_revlog::Store::open(path)?)))
    }

    /// etcd at `etcd://HOST:PORT`, checked by reading its revision; compacted every five
    /// minutes to keep the newest 1,000 revisions, as the embedded store keeps them.
    pub async fn open_etcd(url: &str) -> Result<Backend, Error> {
        let e = Arc::new(crate::etcd::Etcd::new(url));
        e.refresh_revision().await?;
        let c = e.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(300)).await;
                let _ = c.compact(ros_revlog::KEEP).await;
            }
        });
        Ok(Backend::Etcd(e))
    }

    async fn write(&self, op: Op) -> Result<Event, Error> {
        match self {
            Backend::Revlog(s) => s
                .submit(op)
                .await
                .map_err(|_| Error::Storage("the store's writer stopped".into()))?,
            Backend::Etcd(e) => match op {
                Op::Create { key, value } => e.create(&key, value).await,
                Op::Update { key, value, expect } => e.update(&key, value, expect).await,
                Op::Delete { key, expect } => e.delete(&key, expect).await,
            },
        }
    }

    pub async fn create(&self, key: &str, value: Vec<u8>) -> Result<Event, Error> {
        self.write(Op::Create {
            key: key.to_string(),
            value,
        })
        .await
    }

    pub async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expect: Option<u64>,
    ) -> Result<Event, Error> {
        self.write(Op::Update {
            key: key.to_string(),
            value,
            expect,
        })
        .await
    }

    pub async fn delete(&self, key: &str, expect: Option<u64>) -> Result<Event, Error> {
        self.write(Op::Delete {
            key: key.to_string(),
            expect,
        })
        .await
    }

    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        match self {
            Backend::Revlog(s) => s.get(key),
            Backend::Etcd(e) => e.get(key).await,
        }
    }

    pub async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), Error> {
        match self {
            Backend::Revlog(s) => s.list(prefix),
            Backend::Etcd(e) => e.list(prefix).await,
        }
    }

    pub async fn watch(&self, prefix: &str, after: u64) -> Result<UnboundedReceiver<Event>, Error> {
        match self {
            Backend::Revlog(s) => s.watch(prefix, after),
            Backend::Etcd(e) => e.watch(prefix, after).await,
        }
    }

    pub fn revision(&self) -> u64 {
        match self {
            Backend::Revlog(s) => s.revision(),
            Backend::Etcd(e) => e.revision(),
        }
    }
}
