//! The kernel module index: which modules an image carries, where, what each depends on, and
//! which device aliases each serves. `ros-image` writes it (from the modules' own `.modinfo`),
//! the init reads it to load modules by name or by the `modalias` of the devices it finds, in
//! dependency order. Pure: no file or syscall here.
//!
//! Format (text, one record a line; fields separated by single spaces):
//! ```text
//! ros-modules 1 <kernel release>
//! m <name> <path relative to the index> <dep,dep,...|->
//! a <name> <alias glob>
//! b <name>            (built into the kernel: nothing to load)
//! ```

mod glob;

use std::collections::{BTreeMap, BTreeSet};

pub use glob::fnmatch;

/// The index file name, in `/lib/modules/<release>/`.
pub const INDEX_FILE: &str = "ros-modules.idx";

const MAGIC: &str = "ros-modules";
const VERSION: &str = "1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    pub path: String,
    pub deps: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    pub release: String,
    pub modules: BTreeMap<String, Module>,
    /// (module name, alias glob), in file order.
    pub aliases: Vec<(String, String)>,
    /// Modules built into the kernel.
    pub builtin: BTreeSet<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    #[error("module index line {line}: {what}")]
    Syntax { line: usize, what: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("module `{0}` is not in this image")]
    Unknown(String),
    #[error("module `{module}` needs `{dep}`, which is not in this image")]
    MissingDep { module: String, dep: String },
    #[error("modules depend on each other in a cycle: {0}")]
    Cycle(String),
}

/// The kernel treats `-` and `_` in module names alike; the index keeps `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

impl Index {
    pub fn parse(text: &str) -> Result<Index, IndexError> {
        let mut lines = text.lines().enumerate();
        let bad = |line: usize, what: &str| IndexError::Syntax {
            line: line + 1,
            what: what.to_string(),
        };
        let (_, header) = lines.next().ok_or_else(|| bad(0, "empty index"))?;
        let mut h = header.split(' ');
        if h.next() != Some(MAGIC) || h.next() != Some(VERSION) {
            return Err(bad(0, "not a version 1 ros module index"));
        }
        let mut index = Index {
            release: h.next().unwrap_or_default().to_string(),
            ..Index::default()
        };
        for (n, line) in lines {
            if line.is_empty() {
                continue;
            }
            let mut f = line.splitn(4, ' ');
            match (f.next(), f.next(), f.next(), f.next()) {
                (Some("m"), Some(name), Some(path), Some(deps)) => {
                    let deps = if deps == "-" {
                        Vec::new()
                    } else {
                        deps.split(',').map(str::to_string).collect()
                    };
                    index.modules.insert(
                        name.to_string(),
                        Module {
                            name: name.to_string(),
                            path: path.to_string(),
                            deps,
                        },
                    );
                }
                (Some("b"), Some(name), None, None) => {
                    index.builtin.insert(name.to_string());
                }
                (Some("a"), Some(name), Some(glob), rest) => {
                    // A glob may hold spaces (rare, but `modinfo` allows it).
                    let glob = match rest {
                        Some(r) => format!("{glob} {r}"),
                        None => glob.to_string(),
                    };
                    index.aliases.push((name.to_string(), glob));
                }
                _ => {
                    return Err(bad(
                        n,
                        "expected `m NAME PATH DEPS`, `a NAME GLOB` or `b NAME`",
                    ));
                }
            }
        }
        Ok(index)
    }

    pub fn write(&self) -> String {
        let mut out = format!("{MAGIC} {VERSION} {}\n", self.release);
        for m in self.modules.values() {
            let deps = if m.deps.is_empty() {
                "-".to_string()
            } else {
                m.deps.join(",")
            };
            out.push_str(&format!("m {} {} {deps}\n", m.name, m.path));
        }
        for (name, glob) in &self.aliases {
            out.push_str(&format!("a {name} {glob}\n"));
        }
        for name in &self.builtin {
            out.push_str(&format!("b {name}\n"));
        }
        out
    }

    /// Names of the modules whose aliases match a device's `modalias`.
    pub fn matching(&self, modalias: &str) -> BTreeSet<&str> {
        self.aliases
            .iter()
            .filter(|(_, glob)| fnmatch(glob, modalias))
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// The name a request refers to: a module name, or an alias (`fs-overlay`, `net-pf-17`).
    pub fn lookup(&self, request: &str) -> Option<&str> {
        let name = normalize(request);
        if let Some((k, _)) = self.modules.get_key_value(&name) {
            return Some(k.as_str());
        }
        self.aliases
            .iter()
            .find(|(_, glob)| fnmatch(glob, request))
            .map(|(n, _)| n.as_str())
    }

    /// The modules to load for `wanted`, dependencies first, each once. Names that cannot be
    /// resolved are returned as errors; the rest still load.
    pub fn load_order<'a>(
        &'a self,
        wanted: impl IntoIterator<Item = &'a str>,
    ) -> (Vec<&'a Module>, Vec<ResolveError>) {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        let mut errors = Vec::new();
        for name in wanted {
            let name = normalize(name);
            if done.contains(name.as_str()) || self.builtin.contains(&name) {
                continue;
            }
            let mut path = Vec::new();
            let mut local = Vec::new();
            let mut local_done = done.clone();
            match self.visit(&name, &mut path, &mut local_done, &mut local) {
                Ok(()) => {
                    done = local_done;
                    order.extend(local);
                }
                Err(e) => errors.push(e),
            }
        }
        (order, errors)
    }

    fn visit<'a>(
        &'a self,
        name: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<&'a str>,
        order: &mut Vec<&'a Module>,
    ) -> Result<(), ResolveError> {
        if self.builtin.contains(name) {
            return Ok(());
        }
        let Some(m) = self.modules.get(name) else {
            return Err(match path.last() {
                Some(parent) => ResolveError::MissingDep {
                    module: parent.clone(),
                    dep: name.to_string(),
                },
                None => ResolveError::Unknown(name.to_string()),
            });
        };
        if done.contains(m.name.as_str()) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            path.push(name.to_string());
            return Err(ResolveError::Cycle(path.join(" -> ")));
        }
        path.push(name.to_string());
        for dep in &m.deps {
            self.visit(dep, path, done, order)?;
        }
        path.pop();
        done.insert(m.name.as_str());
        order.push(m);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> Index {
        let text = "ros-modules 1 6.1.0-test\n\
            m failover kernel/net/core/failover.ko -\n\
            m net_failover kernel/drivers/net/net_failover.ko failover\n\
            m virtio kernel/drivers/virtio/virtio.ko -\n\
            m virtio_ring kernel/drivers/virtio/virtio_ring.ko -\n\
            m virtio_net kernel/drivers/net/virtio_net.ko net_failover,virtio,virtio_ring\n\
            m virtio_pci kernel/drivers/virtio/virtio_pci.ko virtio,virtio_ring\n\
            m a a.ko b\n\
            m b b.ko a\n\
            m lonely lonely.ko ghost\n\
            a virtio_net virtio:d00000001v*\n\
            a virtio_pci pci:v00001AF4d*sv*sd*bc*sc*i*\n\
            a overlay fs-overlay\n\
            b ext4\n";
        Index::parse(text).expect("parse")
    }

    #[test]
    fn round_trips() {
        let i = index();
        assert_eq!(Index::parse(&i.write()), Ok(i));
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let i = index();
        let (order, errors) = i.load_order(["virtio-net", "virtio_pci", "virtio_net"]);
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<_> = order.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "failover",
                "net_failover",
                "virtio",
                "virtio_ring",
                "virtio_net",
                "virtio_pci"
            ]
        );
    }

    #[test]
    fn unknown_missing_and_cyclic_modules_are_errors_and_the_rest_loads() {
        let i = index();
        let (order, errors) = i.load_order(["nope", "a", "lonely", "virtio"]);
        assert_eq!(order.len(), 1);
        assert_eq!(order[0].name, "virtio");
        assert_eq!(
            errors,
            [
                ResolveError::Unknown("nope".into()),
                ResolveError::Cycle("a -> b -> a".into()),
                ResolveError::MissingDep {
                    module: "lonely".into(),
                    dep: "ghost".into()
                },
            ]
        );
    }

    #[test]
    fn builtin_modules_need_no_loading() {
        let i = index();
        let (order, errors) = i.load_order(["ext4"]);
        assert!(order.is_empty());
        assert!(errors.is_empty());
    }

    #[test]
    fn modaliases_match_globs() {
        let i = index();
        let pci = "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00";
        assert_eq!(
            i.matching(pci).into_iter().collect::<Vec<_>>(),
            ["virtio_pci"]
        );
        assert_eq!(
            i.matching("virtio:d00000001v00001AF4")
                .into_iter()
                .collect::<Vec<_>>(),
            ["virtio_net"]
        );
        assert!(i.matching("virtio:d00000002v00001AF4").is_empty());
    }

    #[test]
    fn lookup_takes_names_and_aliases() {
        let i = index();
        assert_eq!(i.lookup("virtio-net"), Some("virtio_net"));
        assert_eq!(i.lookup("fs-overlay"), Some("overlay"));
        assert_eq!(i.lookup("fs-nothing"), None);
    }

    #[test]
    fn rejects_other_files() {
        assert!(Index::parse("").is_err());
        assert!(Index::parse("ros-modules 2 x\n").is_err());
        assert!(Index::parse("ros-modules 1 x\nq\n").is_err());
    }
}
