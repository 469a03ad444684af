//! What ros ships, as every validator needs it: the system services' definitions
//! (`system-services/services/*.toml`) and the names of the images built into every ros image
//! (`system-services/images.toml`). Compiled in, so the boot, the API, `ros config validate` on
//! any host and `ros-image` check a user-data against the same services and images.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use crate::service::Service;

/// The shipped definitions, by file name (each file's errors name it).
const SERVICE_FILES: &[(&str, &str)] = &[
    (
        "console.toml",
        include_str!("../../../system-services/services/console.toml"),
    ),
    (
        "ntp.toml",
        include_str!("../../../system-services/services/ntp.toml"),
    ),
    (
        "syslog.toml",
        include_str!("../../../system-services/services/syslog.toml"),
    ),
];

const IMAGES_TOML: &str = include_str!("../../../system-services/images.toml");

/// The shipped services and images.
#[derive(Debug, Clone, Default)]
pub struct Shipped {
    pub services: BTreeMap<String, Service>,
    pub images: BTreeSet<String>,
}

/// Read once.
pub fn get() -> &'static Shipped {
    static SHIPPED: OnceLock<Shipped> = OnceLock::new();
    SHIPPED.get_or_init(|| {
        let mut all = crate::UserData::default();
        for (file, text) in SERVICE_FILES {
            all.merge(crate::from_toml(&format!("image:{file}"), text).data);
        }
        let images = text_images(IMAGES_TOML);
        Shipped {
            services: all.services,
            images,
        }
    })
}

/// The keys of `[images]` in an `images.toml`.
fn text_images(text: &str) -> BTreeSet<String> {
    text.parse::<toml_edit::DocumentMut>()
        .ok()
        .and_then(|d| {
            d.get("images")
                .and_then(|i| i.as_table_like())
                .map(|t| t.iter().map(|(k, _)| k.to_string()).collect())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_files_read_without_errors() {
        for (file, text) in SERVICE_FILES {
            let r = crate::from_toml(file, text);
            assert!(r.errors.is_empty(), "{file}: {:?}", r.errors);
        }
        let s = get();
        for name in ["console", "ntp", "syslog"] {
            assert!(s.services.contains_key(name), "{name}");
        }
        for name in ["busybox", "console", "e2fsprogs", "ntp", "syslog"] {
            assert!(s.images.contains(name), "{name}: {:?}", s.images);
        }
        let (errors, blocked) = crate::check::services(&s.services, &s.images);
        assert!(errors.is_empty() && blocked.is_empty(), "{errors:?}");
    }

    #[test]
    fn every_service_file_is_compiled_in() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../system-services/services");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .expect("services folder")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let compiled: Vec<&str> = SERVICE_FILES.iter().map(|(f, _)| *f).collect();
        assert_eq!(on_disk, compiled);
    }
}
