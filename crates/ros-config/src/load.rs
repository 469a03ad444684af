//! The one validation path. The boot, every change made through the API, `ros config validate`
//! and `ros-image` read a config through [`load`] (each source decoded and validated on its own,
//! layered, then the whole checked: the services it makes, their dependencies and images, the
//! interfaces), and every write of the persisted config goes through [`change`], which refuses
//! what the next boot would refuse or report. Pure: callers read the files.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, Pos};
use crate::service::Service;
use crate::system::{self, Facts, Services};
use crate::{Read, UserData};

/// Larger user-data (after decompression) is refused, by the boot and by every write.
pub const MAX_BYTES: usize = 1 << 20;

/// What a source gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Not there (quietly skipped).
    Absent,
    /// There, but reading it failed.
    Unreadable(String),
    Bytes(Vec<u8>),
}

/// A source of user-data, by name (`fw_cfg:opt/ros/user-data`), lowest precedence first.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub input: Input,
}

impl Source {
    pub fn new(name: &str, input: Input) -> Source {
        Source {
            name: name.to_string(),
            input,
        }
    }

    pub fn text(name: &str, text: &str) -> Source {
        Source::new(name, Input::Bytes(text.as_bytes().to_vec()))
    }
}

/// What each source gave, for the ready line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceStatus {
    pub source: String,
    pub status: Status,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Read,
    Absent,
    Failed,
}

/// What a config is checked against besides itself.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The system services' definitions, under the user-data's.
    pub shipped: BTreeMap<String, Service>,
    /// The images a service may name.
    pub images: BTreeSet<String>,
    pub facts: Facts,
}

impl Context {
    /// What ros ships (compiled in), on a machine described by `facts`.
    pub fn shipped(facts: Facts) -> Context {
        let s = crate::shipped::get();
        Context {
            shipped: s.services.clone(),
            images: s.images.clone(),
            facts,
        }
    }
}

/// A config read from its sources and checked.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The sources layered.
    pub data: UserData,
    /// The services it makes.
    pub services: Services,
    /// Enabled services that must not start (their definitions have errors).
    pub blocked: BTreeSet<String>,
    /// Every problem: each source's, in order, then the whole's.
    pub errors: Vec<ConfigError>,
    pub sources: Vec<SourceStatus>,
    /// Each present source's own reading, lowest first (for `ros config sources`).
    pub each: Vec<(String, UserData)>,
}

/// The text of user-data bytes: gunzipped when they are gzip, at most [`MAX_BYTES`], UTF-8.
pub fn decode(bytes: &[u8]) -> Result<String, String> {
    let plain;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .take(MAX_BYTES as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("the user-data looks gzip-compressed but is not: {e}"))?;
        plain = out;
        &plain[..]
    } else {
        bytes
    };
    if bytes.len() > MAX_BYTES {
        return Err(format!(
            "the user-data is larger than {} KiB",
            MAX_BYTES / 1024
        ));
    }
    std::str::from_utf8(bytes)
        .map(str::to_string)
        .map_err(|e| format!("the user-data is not UTF-8 text (byte {})", e.valid_up_to()))
}

/// Reads one source: `None` when it is absent.
pub fn read_source(source: &Source) -> Option<(Read, Status)> {
    let fail = |message: String| {
        let mut r = Read::default();
        r.errors
            .push(ConfigError::new(&source.name, Pos::default(), "", message));
        Some((r, Status::Failed))
    };
    match &source.input {
        Input::Absent => None,
        Input::Unreadable(e) => fail(format!("cannot read: {e}")),
        Input::Bytes(b) => match decode(b) {
            Ok(t) => Some((crate::from_toml(&source.name, &t), Status::Read)),
            Err(e) => fail(e),
        },
    }
}

/// Reads the sources in order, then the command line `cmdline`, layers them and checks the
/// whole against `ctx`.
pub fn load(sources: &[Source], cmdline: &str, ctx: &Context) -> Loaded {
    let mut out = Loaded::default();
    for s in sources {
        match read_source(s) {
            Some((r, status)) => {
                out.sources.push(status_of(&s.name, status));
                out.errors.extend(r.errors);
                out.data.merge(r.data.clone());
                out.each.push((s.name.clone(), r.data));
            }
            None => out.sources.push(status_of(&s.name, Status::Absent)),
        }
    }
    let cmd = crate::from_cmdline(cmdline);
    out.sources.push(status_of("cmdline", Status::Read));
    out.errors.extend(cmd.errors);
    out.data.merge(cmd.data.clone());
    out.each.push(("cmdline".into(), cmd.data));
    out.services = system::services(&out.data, &ctx.shipped, &ctx.facts, &mut out.errors);
    let (errors, blocked) = crate::check::services(&out.services.defs, &ctx.images);
    out.errors.extend(errors);
    out.blocked = blocked;
    out.errors.extend(crate::check::network(&out.data.network));
    out
}

fn status_of(source: &str, status: Status) -> SourceStatus {
    SourceStatus {
        source: source.to_string(),
        status,
    }
}

/// A change of the persisted config, checked.
#[derive(Debug, Clone)]
pub struct Changed {
    /// The persisted source's new text.
    pub text: String,
    pub before: Loaded,
    pub after: Loaded,
}

/// The one write path: `edit` makes the persisted source (`sources[persisted]`) a new text,
/// which must be one the boot reads whole (at most [`MAX_BYTES`]) and must not add a problem to
/// the config the sources make together (problems that were there before, in any source, do not
/// block an unrelated change). On refusal, the errors say why; nothing is written by this
/// function in either case.
pub fn change(
    sources: &[Source],
    persisted: usize,
    cmdline: &str,
    ctx: &Context,
    edit: impl FnOnce(&str) -> Result<String, Vec<ConfigError>>,
) -> Result<Changed, Vec<ConfigError>> {
    let Some(state) = sources.get(persisted) else {
        return Err(vec![ConfigError::new(
            "",
            Pos::default(),
            "",
            "no persisted config source",
        )]);
    };
    let refuse = |m: String| vec![ConfigError::new(&state.name, Pos::default(), "", m)];
    let old_text = match &state.input {
        Input::Absent => String::new(),
        Input::Unreadable(e) => return Err(refuse(format!("cannot read it: {e}"))),
        Input::Bytes(b) => decode(b).map_err(|e| {
            refuse(format!(
                "{e}; the boot ignores it, and a change cannot be made to it"
            ))
        })?,
    };
    let text = edit(&old_text)?;
    if text.len() > MAX_BYTES {
        return Err(refuse(format!(
            "the change would make it {} KiB; the boot reads at most {} KiB",
            text.len().div_ceil(1024),
            MAX_BYTES / 1024
        )));
    }
    let before = load(sources, cmdline, ctx);
    let mut next = sources.to_vec();
    next[persisted].input = Input::Bytes(text.clone().into_bytes());
    let after = load(&next, cmdline, ctx);
    let added = new_errors(&before.errors, &after.errors);
    if !added.is_empty() {
        return Err(added);
    }
    Ok(Changed {
        text,
        before,
        after,
    })
}

/// The errors of `after` that `before` did not have (compared by source, key and message, not
/// position: an edit moves lines).
pub fn new_errors(before: &[ConfigError], after: &[ConfigError]) -> Vec<ConfigError> {
    let mut had: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
    for e in before {
        *had.entry((&e.source, &e.key, &e.message)).or_default() += 1;
    }
    after
        .iter()
        .filter(
            |e| match had.get_mut(&(e.source.as_str(), e.key.as_str(), e.message.as_str())) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    false
                }
                _ => true,
            },
        )
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context::shipped(Facts::default())
    }

    #[test]
    fn gzip_is_read_later_sources_win_and_bad_ones_are_named() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"hostname = \"persisted\"\n").expect("gz");
        let sources = [
            Source::text(
                "image:x",
                "hostname = \"baked\"\nsysctl = { \"vm.swappiness\" = \"5\" }\n",
            ),
            Source::new("state:y", Input::Bytes(gz.finish().expect("gz"))),
            Source::new("fw", Input::Absent),
            Source::new("bin", Input::Bytes(vec![0xff, 0xfe, 0])),
            Source::new("gz", Input::Bytes(vec![0x1f, 0x8b, 0xff])),
        ];
        let l = load(&sources, "ros.ntp.servers=a,b", &ctx());
        assert_eq!(
            l.data.hostname.as_ref().map(|h| h.as_str()),
            Some("persisted")
        );
        assert_eq!(l.data.sysctl.len(), 1, "the image's keys stay");
        assert_eq!(
            l.services.defs["ntp"].env["ROS_NTP_SERVERS"], "a,b",
            "the command line wins and reaches its service"
        );
        use Status::*;
        let st: Vec<_> = l.sources.iter().map(|s| s.status).collect();
        assert_eq!(st, [Read, Read, Absent, Failed, Failed, Read]);
        assert_eq!(l.errors.len(), 2, "{:?}", l.errors);
        assert!(l.errors[0].message.contains("not UTF-8"));
        assert!(l.errors[1].message.contains("gzip"));
    }

    #[test]
    fn too_large_is_refused() {
        let big = vec![b'#'; MAX_BYTES + 1];
        assert!(decode(&big).expect_err("big").contains("larger"));
    }

    #[test]
    fn cross_checks_are_part_of_the_load() {
        let l = load(
            &[Source::text(
                "f",
                "[services.a]\nimage = \"nope\"\n[services.b]\nimage = \"busybox\"\ndepends_on = [\"a\"]\n",
            )],
            "",
            &ctx(),
        );
        assert_eq!(l.errors.len(), 1, "{:?}", l.errors);
        assert_eq!(
            l.errors[0].to_string(),
            "f:2:9: services.a.image: there is no image `nope`; did you mean `ntp`? (to pull `nope` from Docker Hub, write `docker.io/library/nope`)"
        );
        assert_eq!(
            l.blocked.iter().map(String::as_str).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn a_change_is_refused_when_it_adds_a_problem_or_exceeds_the_boot_cap() {
        let sources = [
            Source::text("fw", "hostnme = \"typo\"\n"),
            Source::new("state", Input::Absent),
        ];
        // An old problem elsewhere does not block an unrelated change.
        let c =
            change(&sources, 1, "", &ctx(), |_| Ok("hostname = \"a\"\n".into())).expect("allowed");
        assert_eq!(
            c.after.data.hostname.map(|h| h.to_string()).as_deref(),
            Some("a")
        );
        let e = change(&sources, 1, "", &ctx(), |_| {
            Ok("[services.x]\nimage = \"busybox\"\ndepends_on = [\"x\"]\n".into())
        })
        .expect_err("a cycle");
        assert!(e[0].message.contains("cycle"), "{e:?}");
        let e = change(&sources, 1, "", &ctx(), |_| {
            Ok(format!("hostname = \"a\"\n{}", "#".repeat(MAX_BYTES)))
        })
        .expect_err("too big");
        assert!(e[0].message.contains("at most 1024 KiB"), "{e:?}");
    }
}
