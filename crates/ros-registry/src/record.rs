//! What the image store keeps of each pulled reference (`refs/HEX.json`), readable without the
//! client (the init reads it to run pulled images).

use serde::{Deserialize, Serialize};

use crate::reference::hex;

/// What the store keeps of a pulled image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// The canonical reference (`docker.io/library/nginx:1.27`).
    pub reference: String,
    /// The image manifest's digest (for this platform).
    pub manifest: String,
    /// The index's digest when the reference named an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    pub config: String,
    /// `os/architecture[/variant]`.
    pub platform: String,
    /// The layers' diff_ids, bottom first.
    pub layers: Vec<String>,
    /// The compressed size: config and layers, as the manifest gives them.
    pub size: u64,
    /// Seconds since the epoch.
    pub pulled_at: u64,
}

/// The name of a reference's record file under `refs/`.
pub fn ref_file(reference: &str) -> String {
    use sha2::Digest as _;
    format!("{}.json", hex(&sha2::Sha256::digest(reference.as_bytes())))
}
