//! A pull: the manifest (an index resolved to this machine's platform), the config, then each
//! layer not already in the store: its blob streamed from the registry through its digest
//! check into the store, then unpacked from there through the decompressor and the diff_id
//! check. Nothing is held whole in memory but the manifests and the config (capped); the image
//! is recorded only once all of it is stored.

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
    /// A layer's blob is checked and stored.
    LayerFetched { digest: String },
    /// Every blob is in the store; this many layers are being unpacked.
    Unpacking { layers: usize },
    /// A layer is unpacked (named by its blob's digest).
    LayerDone { digest: String },
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

/// What the manifest (resolved to the platform) and the config say the image is.
struct Plan {
    what: String,
    eps: Vec<crate::client::Endpoint>,
    digest: Digest,
    index: Option<String>,
    /// The manifests as they came, stored with the image.
    kept: Vec<(Digest, Vec<u8>)>,
    config: Digest,
    config_bytes: Vec<u8>,
    layers: Vec<manifest::Descriptor>,
    layer_digests: Vec<Digest>,
    diff_ids: Vec<Digest>,
    size: u64,
}

/// The manifest, an index resolved to `platform`, and the config, each checked.
fn resolve(client: &Client, r: &Reference, platform: &Platform) -> Result<Plan, PullError> {
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
    let config_bytes = {
        let f = client.blob(&eps, &r.repository, &config.digest)?;
        let mut v = Verified::new(f, &cd.algorithm, Some(config.size));
        let mut buf = Vec::new();
        v.read_to_end(&mut buf)
            .map_err(|e| PullError::Unavailable(format!("{what}: reading the config: {e}")))?;
        v.finish(&cd, Some(config.size)).map_err(invalid)?;
        buf
    };
    let img: manifest::ImageConfig = serde_json::from_slice(&config_bytes)
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
    let layer_digests: Vec<Digest> = layers
        .iter()
        .map(|l| Digest::parse(&l.digest).map_err(invalid))
        .collect::<Result<_, _>>()?;
    let size = config.size + layers.iter().map(|l| l.size).sum::<u64>();
    Ok(Plan {
        what,
        eps,
        digest,
        index,
        kept,
        config: cd,
        config_bytes,
        layers,
        layer_digests,
        diff_ids,
        size,
    })
}

/// Runs `f` on each of `items`, up to [`PARALLEL`] at once (as containerd does by default);
/// the first error stops the rest and is returned.
fn parallel<T: Send>(
    items: &[usize],
    f: &(dyn Fn(usize) -> Result<T, PullError> + Sync),
) -> Result<Vec<T>, PullError> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<PullError>> = Mutex::new(None);
    let done = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL.min(items.len()) {
            scope.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= items.len() || failed.lock().map_or(true, |f| f.is_some()) {
                        break;
                    }
                    match f(items[k]) {
                        Ok(t) => {
                            if let Ok(mut d) = done.lock() {
                                d.push(t);
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
    match failed.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(done.into_inner().unwrap_or_default()),
    }
}

/// The layers of `plan` not unpacked in the store, and of those the ones whose blob is not
/// there either (a pull cut short after fetching leaves its blobs for the next).
fn missing(store: &Store, plan: &Plan) -> (Vec<usize>, Vec<usize>) {
    let unpack: Vec<usize> = (0..plan.layers.len())
        .filter(|&i| !store.has_layer(&plan.diff_ids[i]))
        .collect();
    let fetch = unpack
        .iter()
        .copied()
        .filter(|&i| !store.has_blob(&plan.layer_digests[i]))
        .collect();
    (unpack, fetch)
}

/// Fetches the layer blobs of `fetch` into the store, checked, each synced before it is
/// renamed into place.
fn fetch_layers(
    client: &Client,
    store: &Store,
    r: &Reference,
    plan: &Plan,
    fetch: &[usize],
    report: &(dyn Fn(Event) + Sync),
) -> Result<(), PullError> {
    parallel(fetch, &|i| {
        fetch_layer(client, store, r, plan, i, report)?;
        report(Event::LayerFetched {
            digest: plan.layers[i].digest.clone(),
        });
        Ok(())
    })
    .map(drop)
}

/// A pull's progress callback, shared by the threads that fetch and unpack.
fn shared<'a>(progress: &'a mut (dyn FnMut(Event) + Send)) -> impl Fn(Event) + Sync + 'a {
    let progress = std::sync::Mutex::new(progress);
    move |e| {
        if let Ok(mut p) = progress.lock() {
            p(e);
        }
    }
}

/// What [`pull`] and [`fetch`] both do first: the manifest and config resolved, the blobs of
/// the layers not unpacked in the store (nor fetched by an earlier try) fetched, the small
/// blobs stored. Returns the plan and the layers still to unpack.
fn resolve_and_fetch(
    client: &Client,
    store: &Store,
    r: &Reference,
    platform: &Platform,
    report: &(dyn Fn(Event) + Sync),
) -> Result<(Plan, Vec<usize>), PullError> {
    let plan = resolve(client, r, platform)?;
    let (unpack, fetch) = missing(store, &plan);
    report(Event::Resolved {
        manifest: plan.digest.to_string(),
        layers: plan.layers.len(),
        size: plan.size,
        missing: fetch.len(),
    });
    fetch_layers(client, store, r, &plan, &fetch, report)?;
    store
        .put_blob(&plan.config, &plan.config_bytes)
        .map_err(PullError::Store)?;
    for (d, b) in &plan.kept {
        store.put_blob(d, b).map_err(PullError::Store)?;
    }
    Ok((plan, unpack))
}

/// Pulls `r` for `platform` into `store`: the blobs of the layers not yet unpacked are
/// fetched (and checked) into the store first, then unpacked from there. Split as containerd
/// splits its content store from its snapshotter: the network part is as fast as a copy
/// that does not unpack, and a pull cut short while unpacking resumes without fetching again.
/// The layer blobs go once their layers are in place.
pub fn pull(
    client: &Client,
    store: &Store,
    r: &Reference,
    platform: &Platform,
    progress: &mut (dyn FnMut(Event) + Send),
) -> Result<ImageRecord, PullError> {
    let report = shared(progress);
    let (plan, unpack) = resolve_and_fetch(client, store, r, platform, &report)?;
    if !unpack.is_empty() {
        report(Event::Unpacking {
            layers: unpack.len(),
        });
    }
    let unpacked = parallel(&unpack, &|i| {
        let done = unpack_layer(store, &plan, i)?;
        report(Event::LayerDone {
            digest: plan.layers[i].digest.clone(),
        });
        Ok(done.map(|s| (s, plan.diff_ids[i].clone())))
    })?;
    store
        .commit_layers(unpacked.into_iter().flatten().collect())
        .map_err(PullError::Store)?;

    // The record, last.
    let rec = ImageRecord {
        reference: r.to_string(),
        manifest: plan.digest.to_string(),
        index: plan.index.clone(),
        config: plan.config.to_string(),
        platform: platform_name(platform),
        layers: plan.diff_ids.iter().map(ToString::to_string).collect(),
        size: plan.size,
        pulled_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    store.set_ref(&rec).map_err(PullError::Store)?;
    // Unpacked and recorded: the layer blobs are no longer needed (what is left of them
    // after a crash here is unreferenced, for gc).
    for &i in &unpack {
        store
            .remove_blob(&plan.layer_digests[i])
            .map_err(PullError::Store)?;
    }
    Ok(rec)
}

/// Fetches the blobs of `r`'s image for `platform` into `store` (manifests, config, the
/// layers not already unpacked there), checked, without unpacking or recording it: what
/// `skopeo copy` to a layout does, for comparing the two, and for fetching ahead.
/// Returns the manifest's digest.
pub fn fetch(
    client: &Client,
    store: &Store,
    r: &Reference,
    platform: &Platform,
    progress: &mut (dyn FnMut(Event) + Send),
) -> Result<String, PullError> {
    let report = shared(progress);
    let (plan, _) = resolve_and_fetch(client, store, r, platform, &report)?;
    Ok(plan.digest.to_string())
}

/// An unpack error: the disk's (full, permissions) or the content's (the blob matched its
/// digest, so content that does not unpack is the image's fault, and a retry would not help).
fn classify(what: &str, e: String) -> PullError {
    let disk = [
        "No space left",
        "Read-only file system",
        "Disk quota",
        "Permission denied",
    ];
    if disk.iter().any(|d| e.contains(d)) {
        PullError::Store(format!("{what}: {e}"))
    } else {
        PullError::Invalid(format!("{what}: {e}"))
    }
}

/// How many layers are fetched, or unpacked, at once.
const PARALLEL: usize = 3;

/// Fetches one layer's blob into the store, checking its digest and size as it streams.
fn fetch_layer(
    client: &Client,
    store: &Store,
    r: &Reference,
    plan: &Plan,
    i: usize,
    report: &(dyn Fn(Event) + Sync),
) -> Result<(), PullError> {
    let (l, ld, what) = (&plan.layers[i], &plan.layer_digests[i], &plan.what);
    let body = client.blob(&plan.eps, &r.repository, &l.digest)?;
    let total = l.size;
    let mut bytes = |done: u64| {
        report(Event::Layer {
            digest: l.digest.clone(),
            done,
            total,
        })
    };
    let mut v = Verified::new(body, &ld.algorithm, Some(l.size)).with_progress(&mut bytes);
    let mut w = store.blob_writer().map_err(PullError::Store)?;
    // Read errors are the connection's (or too many bytes); write errors the disk's.
    let mut buf = vec![0u8; 128 << 10];
    loop {
        let n = match v.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(invalid(format!("{what}: layer {}: {e}", l.digest)));
            }
            Err(e) => {
                return Err(PullError::Unavailable(format!(
                    "{what}: layer {}: reading: {e}",
                    l.digest
                )));
            }
        };
        w.write(&buf[..n])
            .map_err(|e| PullError::Store(format!("{what}: layer {}: {e}", l.digest)))?;
    }
    match v.finish(ld, Some(l.size)) {
        Err(e) if e.starts_with("reading ") => {
            return Err(PullError::Unavailable(format!(
                "{what}: layer {}: {e}",
                l.digest
            )));
        }
        Err(e) => return Err(invalid(format!("{what}: layer {}: {e}", l.digest))),
        Ok(()) => {}
    }
    store
        .commit_blob(w, ld)
        .map_err(|e| PullError::Store(format!("{what}: layer {}: {e}", l.digest)))
}

/// Unpacks one layer from its blob in the store into scratch space, checking its diff_id;
/// `None` when another pull put the layer in place meanwhile.
fn unpack_layer(
    store: &Store,
    plan: &Plan,
    i: usize,
) -> Result<Option<crate::store::Scratch>, PullError> {
    let (l, ld, diff_id, what) = (
        &plan.layers[i],
        &plan.layer_digests[i],
        &plan.diff_ids[i],
        &plan.what,
    );
    let comp = manifest::compression(&l.media_type).map_err(|e| invalid(format!("{what}: {e}")))?;
    let blob = match std::fs::File::open(store.blob_path(ld)) {
        Ok(f) => f,
        // Another pull of the same layer unpacked it and removed the blob.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && store.has_layer(diff_id) => {
            return Ok(None);
        }
        Err(e) => {
            return Err(PullError::Store(format!(
                "{what}: layer {}: opening its blob: {e}",
                l.digest
            )));
        }
    };
    let blob = std::io::BufReader::with_capacity(128 << 10, blob);
    let scratch = store.scratch("layer");
    std::fs::create_dir(&scratch.path)
        .map_err(|e| PullError::Store(format!("creating {}: {e}", scratch.path.display())))?;
    let diff_alg = diff_id.algorithm.clone();
    // The decompressed stream, hashed for the diff_id, buffered (the tar reader reads its
    // 512-byte headers one by one) into the unpacker; what follows the archive's end is read
    // too (it counts in the diff_id).
    let into = |v: &mut dyn Read| -> Result<(), String> {
        let mut b = std::io::BufReader::with_capacity(64 << 10, v);
        crate::unpack::unpack(&mut b, &scratch.path)?;
        std::io::copy(&mut b, &mut std::io::sink())
            .map(drop)
            .map_err(|e| format!("reading the layer: {e}"))
    };
    let unpacked: Result<Digest, String> = match comp {
        Compression::None => {
            let mut v = Verified::new(blob, &diff_alg, None);
            into(&mut v).map(|()| v.digest())
        }
        Compression::Gzip => {
            let mut v = Verified::new(flate2::bufread::GzDecoder::new(blob), &diff_alg, None);
            into(&mut v).map(|()| v.digest())
        }
        Compression::Zstd => match ruzstd::decoding::StreamingDecoder::new(blob) {
            Ok(dec) => {
                let mut v = Verified::new(dec, &diff_alg, None);
                into(&mut v).map(|()| v.digest())
            }
            Err(e) => Err(format!("zstd: {e}")),
        },
    };
    match unpacked {
        Err(e) => Err(classify(what, format!("layer {}: {e}", l.digest))),
        Ok(diff) if diff != *diff_id => Err(invalid(format!(
            "{what}: layer {}: its content is {diff}, the config says {}",
            l.digest, *diff_id
        ))),
        Ok(_) => Ok(Some(scratch)),
    }
}
