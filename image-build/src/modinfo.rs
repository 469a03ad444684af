//! Reads a kernel module's own `.modinfo` section (name, depends, alias), so the image needs no
//! depmod and no host kernel tools.

use anyhow::{Context, Result};
use object::{Object, ObjectSection};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    pub name: String,
    pub depends: Vec<String>,
    pub aliases: Vec<String>,
}

/// Parses the `.modinfo` of a `.ko` file's bytes.
pub fn read(ko: &[u8]) -> Result<ModInfo> {
    let file = object::File::parse(ko).context("not an ELF object")?;
    let section = file
        .section_by_name(".modinfo")
        .context("no .modinfo section")?;
    let data = section.data().context("reading .modinfo")?;
    Ok(parse(data))
}

/// Parses the NUL-separated `key=value` strings of a `.modinfo` section.
pub fn parse(data: &[u8]) -> ModInfo {
    let mut info = ModInfo::default();
    for field in data.split(|&b| b == 0) {
        let Ok(field) = std::str::from_utf8(field) else {
            continue;
        };
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        match key {
            "name" => info.name = value.to_string(),
            "depends" => {
                info.depends = value
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(ros_kmod::normalize)
                    .collect();
            }
            "alias" => info.aliases.push(value.to_string()),
            _ => {}
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields() {
        let data = b"license=GPL\0alias=virtio:d00000001v*\0depends=net_failover,virtio\0\0name=virtio_net\0vermagic=6.1\0";
        let info = parse(data);
        assert_eq!(info.name, "virtio_net");
        assert_eq!(info.depends, ["net_failover", "virtio"]);
        assert_eq!(info.aliases, ["virtio:d00000001v*"]);
    }

    #[test]
    fn empty_depends_is_none() {
        assert!(parse(b"depends=\0name=x\0").depends.is_empty());
    }
}
