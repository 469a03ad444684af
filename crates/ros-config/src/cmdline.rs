//! The kernel command line: split as the kernel splits it, and its `ros.*` keys mapped onto the
//! user-data schema. `ros.a.b=v` sets key `b` of table `a`, with `v` read as the type the schema
//! expects there (`true`, `1500`, `a,b` for a list). Two keys hold dots of their own:
//! `ros.sysctl.<sysctl key>=v`, and `ros.network.interfaces.<name>.<field>=v` (the name may be
//! `eth0.100`). A later key wins over an earlier one, as in the kernel.

use crate::error::{ConfigError, Pos};
use crate::node::{Node, Value};

/// Keys of the command line that are ros options, not user-data.
pub const OPTION_KEYS: &[&str] = &[
    "datasource",
    "datasource.timeout",
    "debug",
    "state.autoformat",
];

/// One `key=value` word of the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub key: String,
    pub value: Option<String>,
    /// Byte offset of the word in the command line.
    pub offset: usize,
}

/// Splits a command line into words: whitespace separates, double quotes group (and are
/// removed), as the kernel's `next_arg` does.
pub fn split(cmdline: &str) -> Vec<Param> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut start = None;
    let mut quoted = false;
    for (i, c) in cmdline.char_indices() {
        if c == '"' {
            quoted = !quoted;
            start.get_or_insert(i);
            continue;
        }
        if c.is_whitespace() && !quoted {
            if let Some(s) = start.take() {
                out.push(param(std::mem::take(&mut word), s));
            }
            continue;
        }
        start.get_or_insert(i);
        word.push(c);
    }
    if let Some(s) = start {
        out.push(param(word, s));
    }
    out
}

fn param(word: String, offset: usize) -> Param {
    match word.split_once('=') {
        Some((k, v)) => Param {
            key: k.to_string(),
            value: Some(v.to_string()),
            offset,
        },
        None => Param {
            key: word,
            value: None,
            offset,
        },
    }
}

/// The value of a ros option (`ros.<name>=...`), the last one given.
pub fn option<'p>(params: &'p [Param], name: &str) -> Option<&'p str> {
    params
        .iter()
        .rev()
        .find(|p| p.key.strip_prefix("ros.") == Some(name))
        .and_then(|p| p.value.as_deref())
}

/// The user-data tree of the `ros.*` keys, and errors for words that cannot be one.
pub fn user_data(source: &str, params: &[Param]) -> (Node, Vec<ConfigError>) {
    let col = |offset: usize| Pos {
        line: 1,
        column: u32::try_from(offset + 1).unwrap_or(u32::MAX),
    };
    let mut root = Node::table(col(0));
    let mut errors = Vec::new();
    for p in params {
        let Some(path) = p.key.strip_prefix("ros.") else {
            continue;
        };
        if OPTION_KEYS.contains(&path) {
            continue;
        }
        let pos = col(p.offset);
        let Some(value) = &p.value else {
            errors.push(ConfigError::new(
                source,
                pos,
                path,
                format!("`{}` needs a value: {}=VALUE", p.key, p.key),
            ));
            continue;
        };
        let segments = segments(path);
        if segments.iter().any(String::is_empty) {
            errors.push(ConfigError::new(
                source,
                pos,
                path,
                format!("`{}` is not a key", p.key),
            ));
            continue;
        }
        let Some((last, tables)) = segments.split_last() else {
            continue;
        };
        let mut table = &mut root;
        for t in tables {
            table = table.child_table(t, pos);
        }
        let value_pos = col(p.offset + p.key.len() + 1);
        table.set(
            last,
            pos,
            Node {
                pos: value_pos,
                value: Value::Text(value.clone()),
            },
        );
    }
    (root, errors)
}

/// The table path of a dotted key: `sysctl.<sysctl key>` and `network.interfaces.<name>.<field>`
/// keep the dots of the sysctl key and of the interface name.
pub fn segments(path: &str) -> Vec<String> {
    if let Some(rest) = path.strip_prefix("sysctl.") {
        return vec!["sysctl".into(), rest.into()];
    }
    if let Some(rest) = path.strip_prefix("network.interfaces.")
        && let Some((name, field)) = rest.rsplit_once('.')
    {
        return vec![
            "network".into(),
            "interfaces".into(),
            name.into(),
            field.into(),
        ];
    }
    path.split('.').map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_the_kernel() {
        let p = split(" console=ttyS0  ros.hostname=\"a b\" \"ros.x=y z\" quiet\n");
        let keys: Vec<_> = p
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_deref()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("console", Some("ttyS0")),
                ("ros.hostname", Some("a b")),
                ("ros.x", Some("y z")),
                ("quiet", None)
            ]
        );
        assert_eq!(p[1].offset, 16);
    }

    #[test]
    fn options_are_not_user_data() {
        let p = split("ros.datasource=http://x ros.datasource=http://y");
        assert_eq!(option(&p, "datasource"), Some("http://y"));
        let (node, errors) = user_data("cmdline", &p);
        assert!(errors.is_empty());
        assert!(node.entries().is_empty());
    }

    #[test]
    fn maps_keys_to_tables_with_dotted_names() {
        let p = split(
            "ros.hostname=n1 ros.sysctl.net.ipv4.ip_forward=1 ros.network.interfaces.eth0.100.mtu=1400",
        );
        let (node, errors) = user_data("cmdline", &p);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            node.get("hostname").map(|e| &e.node.value),
            Some(&Value::Text("n1".into()))
        );
        let sysctl = node.get("sysctl").expect("sysctl");
        assert!(sysctl.node.get("net.ipv4.ip_forward").is_some());
        let vlan = node
            .get("network")
            .and_then(|e| e.node.get("interfaces"))
            .and_then(|e| e.node.get("eth0.100"))
            .expect("eth0.100");
        let mtu = vlan.node.get("mtu").expect("mtu");
        assert_eq!(mtu.node.pos.column, 86);
    }

    #[test]
    fn a_key_without_value_is_an_error_with_its_column() {
        let p = split("quiet ros.hostname");
        let (_, errors) = user_data("cmdline", &p);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].column, 7);
        assert!(errors[0].message.contains("needs a value"));
    }
}
