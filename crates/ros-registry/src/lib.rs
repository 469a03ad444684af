//! Images from registries (the OCI distribution API): parsing references, a blocking client with
//! mirrors, credentials and per-registry CAs, and a content store on disk where every blob is
//! verified (digest and size) as it streams and nothing half-pulled is ever visible.

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod confine;
pub mod manifest;
#[cfg(feature = "client")]
pub mod pull;
pub mod record;
pub mod reference;
#[cfg(feature = "client")]
pub mod store;
#[cfg(feature = "client")]
pub mod unpack;
pub mod verify;

#[cfg(feature = "client")]
pub use client::{Client, PullError, Registries};
pub use record::ImageRecord;
pub use reference::{Digest, Reference};
#[cfg(feature = "client")]
pub use store::Store;
