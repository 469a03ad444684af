//! The distribution API's documents: image indexes (and Docker's manifest lists), image
//! manifests (OCI and Docker schema 2), image configs. Only the fields a pull uses are read;
//! the bytes are kept as they came (their digest is what the store records).

use serde::Deserialize;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The `Accept` header of a manifest request: every kind this client reads.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Upper bounds on what is read into memory (layers never are).
pub const MAX_MANIFEST: u64 = 4 << 20;
pub const MAX_CONFIG: u64 = 8 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub urls: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// A manifest document of any of the four kinds, told apart by its media type (the header's,
/// or the document's own `mediaType`, or its shape).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    #[serde(default)]
    pub schema_version: Option<u32>,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
}

#[derive(Debug, Clone)]
pub enum Parsed {
    Index(Vec<Descriptor>),
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

/// Reads a manifest document; `header` is the response's Content-Type.
pub fn parse(bytes: &[u8], header: Option<&str>) -> Result<Parsed, String> {
    let doc: Document = serde_json::from_slice(bytes)
        .map_err(|e| format!("the manifest is not valid JSON: {e}"))?;
    if doc.schema_version != Some(2) {
        return Err(format!(
            "manifest schemaVersion {:?}: only schema 2 (OCI, Docker v2) is supported",
            doc.schema_version
        ));
    }
    let header = header.map(|h| h.split(';').next().unwrap_or("").trim());
    let kind = doc
        .media_type
        .as_deref()
        .filter(|m| !m.is_empty())
        .or(header.filter(|h| h.starts_with("application/vnd.")));
    match (kind, doc.manifests, doc.config, doc.layers) {
        (Some(OCI_INDEX | DOCKER_LIST), Some(m), _, _) | (None, Some(m), None, _) => {
            Ok(Parsed::Index(m))
        }
        (Some(OCI_MANIFEST | DOCKER_MANIFEST) | None, None, Some(config), Some(layers)) => {
            if let Some(l) = layers.iter().find(|l| !l.urls.is_empty()) {
                return Err(format!(
                    "layer {} is a foreign layer (fetched from {:?}): not supported",
                    l.digest, l.urls
                ));
            }
            Ok(Parsed::Image { config, layers })
        }
        (Some(k), ..) => Err(format!(
            "manifest media type `{k}` is not one this client reads"
        )),
        _ => Err("the manifest is neither an image index nor an image manifest".into()),
    }
}

/// This machine's platform, as OCI names it.
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    Platform {
        architecture: architecture.into(),
        os: "linux".into(),
        variant: None,
    }
}

/// The index entry for `want`: same os and architecture; for arm64 a `v8` variant or none.
pub fn select<'a>(entries: &'a [Descriptor], want: &Platform) -> Option<&'a Descriptor> {
    entries.iter().find(|d| {
        d.platform.as_ref().is_some_and(|p| {
            p.os == want.os
                && p.architecture == want.architecture
                && match (&want.variant, &p.variant) {
                    (Some(w), Some(v)) => w == v,
                    (None, Some(v)) => want.architecture != "arm64" || v == "v8",
                    (_, None) => true,
                }
        })
    })
}

/// The parts of an image config a pull checks and a container runs with.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

/// How a layer's bytes are compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

pub fn compression(media_type: &str) -> Result<Compression, String> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Ok(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd" => Ok(Compression::Zstd),
        other => Err(format!(
            "layer media type `{other}` is not a tar, tar+gzip or tar+zstd layer"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(arch: &str, variant: Option<&str>, digest: &str) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: digest.into(),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(Into::into),
            }),
            urls: Vec::new(),
        }
    }

    #[test]
    fn an_index_resolves_to_this_platform() {
        let list = vec![
            desc("arm", Some("v7"), "a"),
            desc("arm64", Some("v8"), "b"),
            desc("amd64", None, "c"),
        ];
        let arm64 = Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert_eq!(select(&list, &arm64).unwrap().digest, "b");
        let amd64 = Platform {
            architecture: "amd64".into(),
            ..arm64.clone()
        };
        assert_eq!(select(&list, &amd64).unwrap().digest, "c");
        let riscv = Platform {
            architecture: "riscv64".into(),
            ..arm64
        };
        assert!(select(&list, &riscv).is_none());
    }

    #[test]
    fn documents_are_told_apart() {
        let index = br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:x","size":3,"platform":{"architecture":"amd64","os":"linux"}}]}"#;
        assert!(matches!(parse(index, Some(OCI_INDEX)), Ok(Parsed::Index(m)) if m.len() == 1));
        let image = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"digest":"sha256:c","size":2},"layers":[]}"#;
        assert!(matches!(parse(image, None), Ok(Parsed::Image { .. })));
        let v1 = br#"{"schemaVersion":1,"name":"x"}"#;
        assert!(parse(v1, None).unwrap_err().contains("schemaVersion"));
        let foreign = br#"{"schemaVersion":2,"config":{"digest":"sha256:c","size":2},"layers":[{"digest":"sha256:l","size":1,"urls":["http://x"]}]}"#;
        assert!(parse(foreign, None).unwrap_err().contains("foreign"));
        assert!(compression("application/vnd.oci.image.layer.v1.tar+bz2").is_err());
    }
}
