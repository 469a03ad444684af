//! A pull: the manifest (an index resolved to this machine's platform), the config, then each
//! layer not already in the store, streamed from the registry through its digest check, the
//! decompressor and the diff_id check into the unpacker. Nothing is held whole in memory but
//! the manifests and the config (capped); the image is recorded only once all of it is stored.

use std::io::Read;

use crate::client::{Client, PullError};
use crate::manifest::{self, Compression, Parsed, Platform};
use crate::reference::{Digest, Reference};
use crate::store::{ImageRecord, Store};
use crate::verify::Verified;

/// What a pull reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The manifest is known: how many layers, how many bytes in all, how many to fetch.
    Resolved {
        manifest: String,
        layers: usize,
        size: u64,
        missing: usize,
    },
    /// Bytes of a layer received so far.
    Layer {
        digest: String,
        done: u64,
        total: u64,
    },
    LayerDone {
        digest: String,
    },
}

fn invalid(e: String) -> PullError {
    PullError::Invalid(e)
}

fn platform_name(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

/// A manifest's bytes checked against the digest they were asked by, or hashed.
fn checked(bytes: &[u8], asked: Option<&Digest>, what: &str) -> Result<Digest, PullError> {
    let got = Digest::sha256_of(bytes);
    match asked {
        Some(d) if d.algorithm == "sha256" && *d != got => Err(invalid(format!(
            "{what}: digest mismatch: asked for {d}, the content is {got}"
        ))),
        Some(d) if d.algorithm != "sha256" => {
            use sha2::Digest as _;
            let h = crate::reference::hex(&sha2::Sha512::digest(bytes));
            if h != d.hex {
                return Err(invalid(format!(
                    "{what}: digest mismatch: asked for {d}, the content is sha512:{h}"
                )));
            }
            Ok(d.clone())
        }
        _ => Ok(got),
    }
}

/// Pulls `r` for `platform` into `store`.
pub fn pull(
    client: &Client,
    store: &Store,
    r: &Reference,
    platform: &Platform,
    progress: &mut (dyn FnMut(Event) + Send),
) -> Result<ImageRecord, PullError> {
    let mut eps = client.endpoints(r)?;
    let (bytes, ct, ep) = client.manifest(&eps, &r.repository, &r.target())?;
    // The endpoint that answered is asked first for the rest.
    if let Some(i) = eps.iter().position(|e| *e == ep) {
        let first = eps.remove(i);
        eps.insert(0, first);
    }
    let what = r.to_string();
    let mut digest = checked(&bytes, r.digest.as_ref(), &what)?;
    let mut doc =
        manifest::parse(&bytes, ct.as_deref()).map_err(|e| invalid(format!("{what}: {e}")))?;
    let mut index = None;
    let mut kept = vec![(digest.clone(), bytes)];
    if let Parsed::Index(entries) = &doc {
        let chosen = manifest::select(entries, platform).ok_or_else(|| {
            let offered: Vec<String> = entries
                .iter()
                .filter_map(|e| e.platform.as_ref().map(platform_name))
                .collect();
            PullError::NotFound(format!(
                "{what} has no image for {} (it has: {})",
                platform_name(platform),
                offered.join(", ")
            ))
        })?;
        let d = Digest::parse(&chosen.digest).map_err(invalid)?;
        let (bytes, ct, _) = client.manifest(&eps, &r.repository, &d.to_string())?;
        checked(&bytes, Some(&d), &what)?;
        index = Some(digest.to_string());
        digest = d;
        doc =
            manifest::parse(&bytes, ct.as_deref()).map_err(|e| invalid(format!("{what}: {e}")))?;
        kept.push((digest.clone(), bytes));
    }
    let Parsed::Image { config, layers } = doc else {
        return Err(invalid(format!(
            "{what}: an index inside an index is not supported"
        )));
    };

    // The config: small, read whole (capped), checked.
    let cd = Digest::parse(&config.digest).map_err(invalid)?;
    if config.size > manifest::MAX_CONFIG {
        return Err(invalid(format!(
            "{what}: config of {} bytes is over the cap",
            config.size
        )));
    }
    let cfg_bytes = {
        let f = client.blob(&eps, &r.repository, &config.digest)?;
        let mut v = Verified::new(f, &cd.algorithm, Some(config.size));
        let mut buf = Vec::new();
        v.read_to_end(&mut buf)
            .map_err(|e| PullError::Unavailable(format!("{what}: reading the config: {e}")))?;
        v.finish(&cd, Some(config.size)).map_err(invalid)?;
        buf
    };
    let img: manifest::ImageConfig = serde_json::from_slice(&cfg_bytes)
        .map_err(|e| invalid(format!("{what}: the image config: {e}")))?;
    if img.rootfs.diff_ids.len() != layers.len() {
        return Err(invalid(format!(
            "{what}: the manifest has {} layers, the config {} diff_ids",
            layers.len(),
            img.rootfs.diff_ids.len()
        )));
    }
    if !img.architecture.is_empty() && img.architecture != platform.architecture {
        return Err(invalid(format!(
            "{what}: the image is for {}, this machine is {}",
            img.architecture, platform.architecture
        )));
    }
    let diff_ids: Vec<Digest> = img
        .rootfs
        .diff_ids
        .iter()
        .map(|d| Digest::parse(d).map_err(invalid))
        .collect::<Result<_, _>>()?;
    let missing: Vec<usize> = (0..layers.len())
        .filter(|&i| !store.has_layer(&diff_ids[i]))
        .collect();
    let size = config.size + layers.iter().map(|l| l.size).sum::<u64>();
    progress(Event::Resolved {
        manifest: digest.to_string(),
        layers: layers.len(),
        size,
        missing: missing.len(),
    });

    // Up to PARALLEL layers at once (as containerd does by default): one layer's unpacking
    // overlaps another's download.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed: std::sync::Mutex<Option<PullError>> = std::sync::Mutex::new(None);
    let unpacked = std::sync::Mutex::new(Vec::new());
    let progress = std::sync::Mutex::new(progress);
    let report = |e: Event| {
        if let Ok(mut p) = progress.lock() {
            p(e);
        }
    };
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL.min(missing.len()) {
            scope.spawn(|| {
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if k >= missing.len() || failed.lock().map_or(true, |f| f.is_some()) {
                        break;
                    }
                    let i = missing[k];
                    let r = layer(
                        client,
                        store,
                        &eps,
                        r,
                        &what,
                        &layers[i],
                        &diff_ids[i],
                        &report,
                    );
                    match r {
                        Ok(done) => {
                            if let Ok(mut u) = unpacked.lock() {
                                u.push((done, diff_ids[i].clone()));
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failed.lock() {
                                f.get_or_insert(e);
                            }
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().ok().flatten() {
        return Err(e);
    }
    store
        .commit_layers(unpacked.into_inner().unwrap_or_default())
        .map_err(PullError::Store)?;

    // The small blobs, then the record, last.
    store.put_blob(&cd, &cfg_bytes).map_err(PullError::Store)?;
    for (d, b) in &kept {
        store.put_blob(d, b).map_err(PullError::Store)?;
    }
    let rec = ImageRecord {
        reference: r.to_string(),
        manifest: digest.to_string(),
        index,
        config: cd.to_string(),
        platform: platform_name(platform),
        layers: diff_ids.iter().map(ToString::to_string).collect(),
        size,
        pulled_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    store.set_ref(&rec).map_err(PullError::Store)?;
    Ok(rec)
}

/// An unpack error: the disk's (full, permissions) or the content's.
fn classify(what: &str, e: String) -> PullError {
    let disk = [
        "No space left",
        "Read-only file system",
        "Disk quota",
        "Permission denied",
    ];
    if disk.iter().any(|d| e.contains(d)) {
        PullError::Store(format!("{what}: {e}"))
    } else if e.contains("digest mismatch")
        || e.contains("descriptor says")
        || e.contains("more than the")
    {
        PullError::Invalid(format!("{what}: {e}"))
    } else if e.contains("reading the layer") {
        // The stream broke (the connection, or bytes that are not a tar).
        PullError::Unavailable(format!("{what}: {e}"))
    } else {
        PullError::Invalid(format!("{what}: {e}"))
    }
}

/// How many layers are fetched at once.
const PARALLEL: usize = 3;

/// Fetches, checks and unpacks one layer into the store's scratch space; returns it there.
#[allow(clippy::too_many_arguments)]
fn layer(
    client: &Client,
    store: &Store,
    eps: &[crate::client::Endpoint],
    r: &Reference,
    what: &str,
    l: &manifest::Descriptor,
    diff_id: &Digest,
    report: &(dyn Fn(Event) + Sync),
) -> Result<crate::store::Scratch, PullError> {
    let ld = Digest::parse(&l.digest).map_err(invalid)?;
    let comp = manifest::compression(&l.media_type).map_err(|e| invalid(format!("{what}: {e}")))?;
    let f = client.blob(eps, &r.repository, &l.digest)?;
    let total = l.size;
    let digest_s = l.digest.clone();
    let mut bytes = |done: u64| {
        report(Event::Layer {
            digest: digest_s.clone(),
            done,
            total,
        })
    };
    let mut compressed = Verified::new(f, &ld.algorithm, Some(l.size)).with_progress(&mut bytes);
    let scratch = store.scratch("layer");
    std::fs::create_dir(&scratch.path)
        .map_err(|e| PullError::Store(format!("creating {}: {e}", scratch.path.display())))?;
    let diff_alg = diff_id.algorithm.clone();
    // The decompressed stream, hashed for the diff_id, into the unpacker; what follows the
    // archive's end is read too (it counts in the diff_id).
    let into = |v: &mut dyn Read| -> Result<(), String> {
        crate::unpack::unpack(v, &scratch.path)?;
        std::io::copy(v, &mut std::io::sink())
            .map(drop)
            .map_err(|e| format!("reading the layer: {e}"))
    };
    let unpacked: Result<Digest, String> = match comp {
        Compression::None => {
            let mut v = Verified::new(&mut compressed, &diff_alg, None);
            into(&mut v).map(|()| v.digest())
        }
        Compression::Gzip => {
            let mut v = Verified::new(
                flate2::read::GzDecoder::new(&mut compressed),
                &diff_alg,
                None,
            );
            into(&mut v).map(|()| v.digest())
        }
        Compression::Zstd => match ruzstd::decoding::StreamingDecoder::new(&mut compressed) {
            Ok(dec) => {
                let mut v = Verified::new(dec, &diff_alg, None);
                into(&mut v).map(|()| v.digest())
            }
            Err(e) => Err(format!("zstd: {e}")),
        },
    };
    // The blob's own digest and size first, whatever the unpacking said: bytes that are
    // not what the registry promised explain any failure after them.
    match (compressed.finish(&ld, Some(l.size)), unpacked) {
        (Err(e), _) if e.starts_with("reading ") => {
            return Err(PullError::Unavailable(format!(
                "{what}: layer {}: {e}",
                l.digest
            )));
        }
        (Err(e), _) => return Err(invalid(format!("{what}: layer {}: {e}", l.digest))),
        (Ok(()), Err(e)) => return Err(classify(what, format!("layer {}: {e}", l.digest))),
        (Ok(()), Ok(diff)) if diff != *diff_id => {
            return Err(invalid(format!(
                "{what}: layer {}: its content is {diff}, the config says {}",
                l.digest, *diff_id
            )));
        }
        (Ok(()), Ok(_)) => {}
    }
    report(Event::LayerDone {
        digest: l.digest.clone(),
    });
    Ok(scratch)
}
