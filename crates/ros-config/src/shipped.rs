//! What ros ships, as every validator needs it: the system services' definitions
//! (`system-services/services/*.toml`) and the names of the images built into every ros image
//! (`system-services/images.toml`). Compiled in (read by build.rs into the validator's tree),
//! so the boot, the API, `ros config validate` on any host and `ros-image` check a user-data
//! against the same services and images.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use crate::error::Pos;
use crate::node::{Entry, Node, Value};
use crate::service::Service;

// `service_nodes()` and `IMAGE_NAMES`, made by build.rs from `system-services/`.
include!(concat!(env!("OUT_DIR"), "/shipped.rs"));

/// The shipped services and images.
#[derive(Debug, Clone, Default)]
pub struct Shipped {
    pub services: BTreeMap<String, Service>,
    pub images: BTreeSet<String>,
}

/// Read once, from the trees build.rs read (no TOML parse at run time).
pub fn get() -> &'static Shipped {
    static SHIPPED: OnceLock<Shipped> = OnceLock::new();
    SHIPPED.get_or_init(|| {
        let mut all = crate::UserData::default();
        for (file, node) in service_nodes() {
            let source = format!("image:{file}");
            let mut w = crate::walk::Walker::new(&source);
            all.merge(crate::schema::read(&mut w, &node));
        }
        Shipped {
            services: all.services,
            images: IMAGE_NAMES.iter().map(|n| (*n).to_string()).collect(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../system-services")
    }

    #[test]
    fn the_built_trees_are_what_a_parse_gives() {
        for (file, node) in service_nodes() {
            let text = std::fs::read_to_string(shipped_dir().join("services").join(file))
                .expect("a shipped file");
            let (parsed, errors) = crate::toml_src::parse(file, &text);
            assert!(errors.is_empty(), "{file}: {errors:?}");
            assert_eq!(node, parsed, "{file}");
        }
        let s = get();
        for name in ["console", "ntp", "syslog"] {
            assert!(s.services.contains_key(name), "{name}");
        }
        let images = std::fs::read_to_string(shipped_dir().join("images.toml")).expect("images");
        let parsed: BTreeSet<String> = images
            .parse::<toml_edit::DocumentMut>()
            .expect("images.toml parses")["images"]
            .as_table_like()
            .expect("an [images] table")
            .iter()
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(s.images, parsed);
        for name in ["busybox", "console", "e2fsprogs", "ntp", "syslog"] {
            assert!(s.images.contains(name), "{name}: {:?}", s.images);
        }
        let (errors, blocked) = crate::check::services(&s.services, &s.images);
        assert!(errors.is_empty() && blocked.is_empty(), "{errors:?}");
    }

    #[test]
    fn every_service_file_is_compiled_in() {
        let mut on_disk: Vec<String> = std::fs::read_dir(shipped_dir().join("services"))
            .expect("services folder")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let compiled: Vec<&str> = service_nodes().iter().map(|(f, _)| *f).collect();
        assert_eq!(on_disk, compiled);
    }
}
