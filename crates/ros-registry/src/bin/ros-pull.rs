//! `ros-pull`: pulls an image into an image store, lists, removes and prunes. The init runs it
//! as a child process for each image a service names (`--json`: one event per line on stdout),
//! so the HTTP, TLS and decompression code never runs in PID 1.
//!
//! ```text
//! ros-pull [--confine] [--store DIR] [--registries FILE] [--platform OS/ARCH[/VARIANT]] [--policy P] [--json] pull REF
//! ros-pull [--store DIR] [--registries FILE] [--platform OS/ARCH[/VARIANT]] [--json] fetch REF
//! ros-pull [--store DIR] [--json] list
//! ros-pull [--store DIR] rm REF
//! ros-pull [--store DIR] [--keep DIGEST]... prune
//! ```
//!
//! `--confine` (the init always passes it): before anything is fetched or the store is touched,
//! the process confines itself (`ros_registry::confine`: its own mount namespace where only the
//! store is writable and the init's runtime state and the machine's state are hidden, and a
//! capability set cut to what unpacking needs).
//!
//! The arguments are read by hand: a few flags for a program the init drives, where clap would
//! add about half a megabyte to every image.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use ros_registry::client::{PullError, Registries};
use ros_registry::manifest::{self, Platform};
use ros_registry::pull::{self, Event};
use ros_registry::{Client, Reference, Store};
use serde_json::json;

const DEFAULT_STORE: &str = "/var/lib/ros/images";
const USAGE: &str = "usage: ros-pull [--confine] [--store DIR] [--registries FILE] [--platform OS/ARCH[/VARIANT]] \
[--policy always|if-not-present|never] [--json] [--keep DIGEST]... pull REF | fetch REF | list | rm REF | prune";

struct Args {
    store: PathBuf,
    registries: Option<PathBuf>,
    platform: Platform,
    policy: String,
    json: bool,
    confine: bool,
    keep: Vec<String>,
    command: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        store: DEFAULT_STORE.into(),
        registries: None,
        platform: manifest::host_platform(),
        policy: "if-not-present".into(),
        json: false,
        confine: false,
        keep: Vec::new(),
        command: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--store" => a.store = value("--store")?.into(),
            "--registries" => a.registries = Some(value("--registries")?.into()),
            "--platform" => {
                let v = value("--platform")?;
                let mut parts = v.split('/');
                let (os, arch) = (parts.next(), parts.next());
                let (Some(os), Some(arch)) = (os, arch) else {
                    return Err(format!("--platform `{v}`: OS/ARCH[/VARIANT]"));
                };
                a.platform = Platform {
                    os: os.into(),
                    architecture: arch.into(),
                    variant: parts.next().map(Into::into),
                };
            }
            "--policy" => {
                let v = value("--policy")?;
                if !matches!(v.as_str(), "always" | "if-not-present" | "never") {
                    return Err(format!("--policy `{v}`: always, if-not-present or never"));
                }
                a.policy = v;
            }
            "--keep" => a.keep.push(value("--keep")?),
            "--json" => a.json = true,
            "--confine" => a.confine = true,
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            _ => a.command.push(arg),
        }
    }
    Ok(a)
}

/// This process's peak resident memory (VmHWM), in KiB.
fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn emit(json: bool, v: serde_json::Value, human: impl FnOnce() -> String) {
    let mut out = std::io::stdout().lock();
    let _ = if json {
        writeln!(out, "{v}")
    } else {
        writeln!(out, "{}", human())
    };
    let _ = out.flush();
}

fn fail(json: bool, e: &PullError) -> ExitCode {
    if json {
        emit(
            true,
            json!({"event": "error", "kind": e.kind(), "retry": e.retryable(), "message": e.to_string()}),
            String::new,
        );
    } else {
        eprintln!("ros-pull: {e}");
    }
    ExitCode::from(if e.retryable() { 75 } else { 1 })
}

fn read_registries(a: &Args) -> Result<Registries, PullError> {
    match &a.registries {
        Some(p) => std::fs::read(p)
            .map_err(|e| format!("{}: {e}", p.display()))
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", p.display())))
            .map_err(PullError::Invalid),
        None => Ok(Registries::default()),
    }
}

/// `pull` (fetch and unpack, then record), or with `fetch_only` `fetch` (the blobs only).
fn run_pull(a: &Args, reference: &str, registries: Registries, fetch_only: bool) -> ExitCode {
    let start = std::time::Instant::now();
    let unpacking = std::sync::Mutex::new(None);
    let r = match Reference::parse(reference) {
        Ok(r) => r,
        Err(e) => return fail(a.json, &PullError::Invalid(e)),
    };
    let store = match Store::open(&a.store) {
        Ok(s) => s,
        Err(e) => return fail(a.json, &PullError::Store(e)),
    };
    let canonical = r.to_string();
    if a.policy != "always"
        && !fetch_only
        && let Some(rec) = store.get_ref(&canonical)
        && rec
            .layers
            .iter()
            .all(|l| ros_registry::Digest::parse(l).is_ok_and(|d| store.has_layer(&d)))
    {
        emit(
            a.json,
            json!({"event": "done", "image": rec, "pulled": false}),
            || format!("{canonical}: present ({})", rec.manifest),
        );
        return ExitCode::SUCCESS;
    }
    if a.policy == "never" {
        return fail(
            a.json,
            &PullError::NotFound(format!(
                "{canonical} is not in the store and the pull policy is never"
            )),
        );
    }
    let client = Client::new(registries);
    let json = a.json;
    let mut progress = |ev: Event| match ev {
        Event::Resolved {
            manifest,
            layers,
            size,
            missing,
        } => emit(
            json,
            json!({"event": "resolved", "manifest": manifest, "layers": layers, "size": size, "missing": missing}),
            || {
                format!(
                    "{canonical}: {manifest}, {layers} layers ({missing} to fetch), {size} bytes"
                )
            },
        ),
        Event::Layer {
            digest,
            done,
            total,
        } => {
            if json {
                emit(
                    true,
                    json!({"event": "layer", "digest": digest, "done": done, "total": total}),
                    String::new,
                );
            }
        }
        Event::LayerFetched { digest } => emit(
            json,
            json!({"event": "layer_fetched", "digest": digest}),
            || format!("  {digest}: fetched"),
        ),
        Event::Unpacking { layers } => {
            *unpacking
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(std::time::Instant::now());
            emit(
                json,
                json!({"event": "unpacking", "layers": layers}),
                || format!("{canonical}: unpacking {layers} layers"),
            );
        }
        Event::LayerDone { digest } => emit(
            json,
            json!({"event": "layer_done", "digest": digest}),
            || format!("  {digest}: unpacked"),
        ),
    };
    if fetch_only {
        return match pull::fetch(&client, &store, &r, &a.platform, &mut progress) {
            Ok(manifest) => {
                let peak = peak_kib();
                let secs = start.elapsed().as_secs_f64();
                emit(
                    a.json,
                    json!({"event": "fetched", "manifest": manifest, "seconds": secs, "peak_rss_kib": peak}),
                    || {
                        format!(
                            "{canonical}: fetched {manifest} in {secs:.2} s (peak memory {peak} KiB)"
                        )
                    },
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(a.json, &e),
        };
    }
    match pull::pull(&client, &store, &r, &a.platform, &mut progress) {
        Ok(rec) => {
            let peak = peak_kib();
            // Seconds fetching (from the start) and unpacking (from the last blob on).
            let end = std::time::Instant::now();
            let split = unpacking
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .unwrap_or(end);
            let (fetch, unpack) = (
                split.duration_since(start).as_secs_f64(),
                end.duration_since(split).as_secs_f64(),
            );
            emit(
                a.json,
                json!({"event": "done", "image": rec, "pulled": true, "peak_rss_kib": peak,
                       "fetch_seconds": fetch, "unpack_seconds": unpack}),
                || {
                    format!(
                        "{canonical}: pulled {} in {:.2} s ({fetch:.2} s fetching, {unpack:.2} s unpacking; peak memory {peak} KiB)",
                        rec.manifest,
                        fetch + unpack
                    )
                },
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(a.json, &e),
    }
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("ros-pull: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let words: Vec<&str> = a.command.iter().map(String::as_str).collect();
    // The settings are read before the confinement hides them (they live under /run).
    let registries = match words.as_slice() {
        ["pull" | "fetch", _] => match read_registries(&a) {
            Ok(r) => r,
            Err(e) => return fail(a.json, &e),
        },
        _ => Registries::default(),
    };
    if a.confine {
        let confined = std::fs::create_dir_all(&a.store)
            .map_err(|e| format!("{}: {e}", a.store.display()))
            .and_then(|()| ros_registry::confine::confine(&a.store));
        if let Err(e) = confined {
            return fail(a.json, &PullError::Store(e));
        }
    }
    match words.as_slice() {
        ["pull", reference] => run_pull(&a, reference, registries, false),
        ["fetch", reference] => run_pull(&a, reference, registries, true),
        ["list"] => match Store::open(&a.store) {
            Ok(s) => {
                let refs = s.refs();
                if a.json {
                    emit(true, json!(refs), String::new);
                } else {
                    for r in refs {
                        emit(false, json!(null), || {
                            format!(
                                "{}  {}  {}  {} bytes",
                                r.reference, r.manifest, r.platform, r.size
                            )
                        });
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(a.json, &PullError::Store(e)),
        },
        ["rm", reference] => {
            let canonical = match Reference::parse(reference) {
                Ok(r) => r.to_string(),
                Err(e) => return fail(a.json, &PullError::Invalid(e)),
            };
            match Store::open(&a.store).and_then(|s| s.remove_ref(&canonical)) {
                Ok(true) => {
                    emit(
                        a.json,
                        json!({"event": "removed", "reference": canonical}),
                        || format!("removed {canonical}"),
                    );
                    ExitCode::SUCCESS
                }
                Ok(false) => fail(
                    a.json,
                    &PullError::NotFound(format!("{canonical} is not in the store")),
                ),
                Err(e) => fail(a.json, &PullError::Store(e)),
            }
        }
        ["prune"] => match Store::open(&a.store).and_then(|s| s.gc(&a.keep)) {
            Ok((blobs, layers)) => {
                emit(
                    a.json,
                    json!({"event": "pruned", "blobs": blobs, "layers": layers}),
                    || format!("removed {blobs} blobs and {layers} layers"),
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(a.json, &PullError::Store(e)),
        },
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
