//! The init's local API, which the `ros` CLI speaks (`ros_api` has the protocol): the socket,
//! its callers and its limits ([`transport`]), the request dispatched ([`route`]), and what each
//! request does ([`handlers`]). Config requests are checked and written on the config worker,
//! never on the main loop; what must change what runs (services, the network, a config change
//! applied, power) goes to the main loop as a message.

pub mod handlers;
pub mod route;
pub mod transport;

use std::sync::{Arc, Mutex};

use ros_api::Ready;
use tokio::sync::mpsc;

use crate::boot::main_loop::{Stall, ToMain};
use crate::config::Current;

/// What the connections share.
#[derive(Debug)]
pub struct Ctx {
    pub cmdline: String,
    /// Whether the state disk is mounted (else the persisted config lasts until power-off).
    pub persistent: bool,
    /// The ready report, once printed.
    ready: Mutex<Option<Ready>>,
    pub tx: mpsc::UnboundedSender<ToMain>,
    pub current: Current,
    /// One change of the persisted config at a time.
    pub config_lock: tokio::sync::Mutex<()>,
    pub stall: Arc<Stall>,
}

impl Ctx {
    pub fn new(
        cmdline: String,
        persistent: bool,
        tx: mpsc::UnboundedSender<ToMain>,
        current: Current,
        stall: Arc<Stall>,
    ) -> Ctx {
        Ctx {
            cmdline,
            persistent,
            ready: Mutex::new(None),
            tx,
            current,
            config_lock: tokio::sync::Mutex::new(()),
            stall,
        }
    }

    pub fn set_ready(&self, r: Ready) {
        if let Ok(mut g) = self.ready.lock() {
            *g = Some(r);
        }
    }

    /// The ready report (empty until the ready line).
    pub fn ready(&self) -> Ready {
        self.ready
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .unwrap_or_default()
    }

    /// Sends the main loop a request made around a reply channel; its answer, within 30 s.
    pub async fn ask<T>(
        &self,
        req: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> ToMain,
    ) -> Result<T, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(req(tx))
            .map_err(|_| "the init's main loop is gone".to_string())?;
        tokio::time::timeout(std::time::Duration::from_secs(30), rx)
            .await
            .map_err(|_| "the init's main loop did not answer within 30 s".to_string())?
            .map_err(|_| "the init's main loop dropped the request".to_string())
    }
}
