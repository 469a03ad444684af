//! The config: its sources read from the machine ([`sources`], the NoCloud drive, the metadata
//! service), the config in force ([`Current`]), the worker thread that parses and checks off the
//! main loop ([`worker`]), and the one way a config reaches the machine ([`apply`]).

pub mod apply;
pub mod metadata;
pub mod nocloud;
pub mod sources;
pub mod system;
pub mod worker;

use std::sync::{Arc, Mutex};

use ros_config::{Context, Loaded};

/// The config in force and what it was checked against, shared between the main loop (which
/// replaces it when a change is applied) and the API (which reads it).
#[derive(Debug, Clone)]
pub struct Current {
    loaded: Arc<Mutex<Arc<Loaded>>>,
    pub ctx: Arc<Context>,
}

impl Current {
    pub fn new(loaded: Loaded, ctx: Context) -> Current {
        Current {
            loaded: Arc::new(Mutex::new(Arc::new(loaded))),
            ctx: Arc::new(ctx),
        }
    }

    /// The config in force now.
    pub fn get(&self) -> Arc<Loaded> {
        self.loaded
            .lock()
            .map(|l| Arc::clone(&l))
            .unwrap_or_else(|p| Arc::clone(&p.into_inner()))
    }

    /// Makes `loaded` the config in force.
    pub fn set(&self, loaded: Arc<Loaded>) {
        match self.loaded.lock() {
            Ok(mut l) => *l = loaded,
            Err(p) => *p.into_inner() = loaded,
        }
    }
}
