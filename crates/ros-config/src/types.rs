//! Validated value types: each can only be built by parsing, so a `Hostname` always is one.
//! Parse errors are lower-case sentences saying what was expected.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Serialize, Serializer};

/// A hostname: 1-64 characters, dot-separated labels of letters, digits and `-` (RFC 1123), no
/// label starting or ending with `-`. 64 is the kernel's limit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Hostname(String);

impl FromStr for Hostname {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 64 {
            return Err(format!(
                "a hostname has 1 to 64 characters, found {}",
                s.len()
            ));
        }
        for label in s.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(format!("`{s}` has an empty or over-long label"));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
            {
                return Err(format!(
                    "`{s}` holds `{c}`; a hostname has only letters, digits, `-` and `.`"
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(format!("`{s}` has a label that starts or ends with `-`"));
            }
        }
        Ok(Hostname(s.to_string()))
    }
}

impl Hostname {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Ethernet MAC address, written `52:54:00:12:34:56` (`-` separators are accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected a MAC address like 52:54:00:12:34:56, found `{s}`");
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A duration written with a unit: `500ms`, `10s`, `2m`, `1h`; a bare number means seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("expected a duration like `10s` or `500ms`, found `{s}`"))?;
        let ms = match unit.trim() {
            "ms" => Some(n),
            "" | "s" => n.checked_mul(1000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            other => {
                return Err(format!(
                    "unknown duration unit `{other}` in `{s}`; use ms, s, m or h"
                ));
            }
        };
        ms.map(|ms| Dur(Duration::from_millis(ms)))
            .ok_or_else(|| format!("duration `{s}` is too long"))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}ms", self.0.as_millis()))
    }
}

/// A kernel module name. `-` and `_` are the same to the kernel; the name is kept with `_`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ModuleName(String);

impl FromStr for ModuleName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 55 {
            return Err(format!("a module name has 1 to 55 characters, found `{s}`"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(format!(
                "module name `{s}` holds `{c}`; expected letters, digits, `_`, `-`"
            ));
        }
        Ok(ModuleName(s.replace('-', "_")))
    }
}

impl ModuleName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A sysctl key, dotted (`net.ipv4.ip_forward`) or as a path under /proc/sys
/// (`net/ipv4/conf/eth0.100/rp_filter`, the form needed when a part holds a dot).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SysctlKey(String);

impl FromStr for SysctlKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/');
        let key = s.trim_matches('/');
        let sep = if key.contains('/') { '/' } else { '.' };
        if key.is_empty()
            || !key.chars().all(ok_char)
            || key
                .split(sep)
                .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(format!(
                "expected a sysctl key like `net.ipv4.ip_forward`, found `{s}`"
            ));
        }
        Ok(SysctlKey(key.to_string()))
    }
}

impl SysctlKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The path under /proc/sys, e.g. `net/ipv4/ip_forward`.
    pub fn proc_path(&self) -> String {
        if self.0.contains('/') {
            self.0.clone()
        } else {
            self.0.replace('.', "/")
        }
    }
}

/// A network interface name as the kernel allows it: 1-15 bytes, no `/`, `:` or whitespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct IfName(String);

impl FromStr for IfName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 15 {
            return Err(format!(
                "an interface name has 1 to 15 characters, found `{s}`"
            ));
        }
        if s == "." || s == ".." || s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
            return Err(format!("`{s}` is not a valid interface name"));
        }
        Ok(IfName(s.to_string()))
    }
}

impl IfName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert!("node-1.example".parse::<Hostname>().is_ok());
        assert!("a".parse::<Hostname>().is_ok());
        for bad in ["", "-a", "a-", "a..b", "a_b", "a b", &"x".repeat(65)] {
            assert!(bad.parse::<Hostname>().is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn macs() {
        let m: MacAddr = "52:54:00:AB:cd:0f".parse().expect("mac");
        assert_eq!(m.0, [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert!("52-54-00-ab-cd-0f".parse::<MacAddr>().is_ok());
        for bad in [
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "5:54:00:ab:cd:0f",
            "zz:54:00:ab:cd:0f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!("500ms".parse::<Dur>(), Ok(Dur(Duration::from_millis(500))));
        assert_eq!("10s".parse::<Dur>(), Ok(Dur(Duration::from_secs(10))));
        assert_eq!("10".parse::<Dur>(), Ok(Dur(Duration::from_secs(10))));
        assert_eq!("2m".parse::<Dur>(), Ok(Dur(Duration::from_secs(120))));
        assert!("10 days".parse::<Dur>().is_err());
        assert!("s".parse::<Dur>().is_err());
        assert!("99999999999999999999h".parse::<Dur>().is_err());
    }

    #[test]
    fn module_names_normalise_dashes() {
        assert_eq!(
            "virtio-net".parse::<ModuleName>().map(|m| m.0),
            Ok("virtio_net".into())
        );
        assert!("../evil".parse::<ModuleName>().is_err());
    }

    #[test]
    fn sysctl_keys() {
        let k: SysctlKey = "net.ipv4.ip_forward".parse().expect("key");
        assert_eq!(k.proc_path(), "net/ipv4/ip_forward");
        let k: SysctlKey = "net/ipv4/conf/eth0.100/rp_filter".parse().expect("key");
        assert_eq!(k.proc_path(), "net/ipv4/conf/eth0.100/rp_filter");
        assert!("net..x".parse::<SysctlKey>().is_err());
        assert!("net/../../etc".parse::<SysctlKey>().is_err());
        assert!("net/ipv4/ip forward".parse::<SysctlKey>().is_err());
    }

    #[test]
    fn interface_names() {
        assert!("eth0".parse::<IfName>().is_ok());
        assert!("a-very-long-name0".parse::<IfName>().is_err());
        assert!("eth0:1".parse::<IfName>().is_err());
    }
}
