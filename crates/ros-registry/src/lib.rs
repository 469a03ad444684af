//! Images from registries (the OCI distribution API): parsing references, a blocking client with
//! mirrors, credentials and per-registry CAs, and a content store on disk where every blob is
//! verified (digest and size) as it streams and nothing half-pulled is ever visible.

pub mod client;
pub mod manifest;
pub mod pull;
pub mod reference;
pub mod store;
pub mod unpack;
pub mod verify;

pub use client::{Client, PullError, Registries};
pub use reference::{Digest, Reference};
pub use store::{ImageRecord, Store};
