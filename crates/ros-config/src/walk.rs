//! The validator's toolkit: typed reads from a [`Node`] that record an error (source, position,
//! dotted key, message) and return `None` when the value is not what the schema expects, so one
//! pass reports every problem and keeps every good key.

use std::fmt::Display;
use std::str::FromStr;

use crate::error::{ConfigError, Pos};
use crate::node::{Entry, Node, Value};
use crate::types::{Dur, DurRange};

const NUL_MESSAGE: &str = "a NUL character is not allowed here";

/// Collects the errors of one source while its tree is walked.
#[derive(Debug)]
pub struct Walker<'a> {
    source: &'a str,
    pub errors: Vec<ConfigError>,
    /// How many more "did you mean" suggestions to compute: each costs a string distance per
    /// allowed key, so a file of 50,000 unknown keys gets them for its first ones only.
    suggestions_left: usize,
}

/// Suggestions computed per source at most.
const MAX_SUGGESTIONS: usize = 100;

/// `path.key`, quoting a key that holds a dot or is empty, as TOML would write it.
pub fn join(path: &str, key: &str) -> String {
    let simple = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if simple {
        key.to_string()
    } else {
        format!("\"{key}\"")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// The allowed key nearest to `key`, when it is near enough to be a likely typo.
pub fn suggest<'k>(key: &str, allowed: &[&'k str]) -> Option<&'k str> {
    allowed
        .iter()
        .map(|a| {
            (
                strsim::damerau_levenshtein(key, a),
                strsim::jaro_winkler(key, a),
                *a,
            )
        })
        .filter(|(d, jw, a)| *d <= 2.max(a.len() / 4) || *jw >= 0.9)
        .min_by(|x, y| x.0.cmp(&y.0).then(y.1.total_cmp(&x.1)))
        .map(|(_, _, a)| a)
}

impl<'a> Walker<'a> {
    pub fn new(source: &'a str) -> Self {
        Walker {
            source,
            errors: Vec::new(),
            suggestions_left: MAX_SUGGESTIONS,
        }
    }

    pub fn source(&self) -> &str {
        self.source
    }

    pub fn err(&mut self, pos: Pos, key: &str, message: impl Into<String>) {
        self.errors
            .push(ConfigError::new(self.source, pos, key, message));
    }

    fn type_err(&mut self, path: &str, node: &Node, expected: &str) {
        self.err(
            node.pos,
            path,
            format!("expected {expected}, found {}", node.value.type_name()),
        );
    }

    /// The entries of a table whose keys must be among `allowed`; others are reported (with a
    /// suggestion when one is near) and left out.
    pub fn table<'n>(
        &mut self,
        path: &str,
        node: &'n Node,
        allowed: &[&str],
    ) -> Option<Vec<&'n Entry>> {
        let Value::Table(entries) = &node.value else {
            self.type_err(path, node, "a table");
            return None;
        };
        let mut known = Vec::new();
        for e in entries {
            if e.key.contains('\0') {
                self.err(e.key_pos, &join(path, &e.key), NUL_MESSAGE);
            } else if allowed.contains(&e.key.as_str()) {
                known.push(e);
            } else {
                self.unknown_key(path, e, allowed);
            }
        }
        Some(known)
    }

    /// The entries of a table whose keys are free-form (interface names, sysctl keys); a key
    /// holding a NUL character is reported and left out.
    pub fn map<'n>(&mut self, path: &str, node: &'n Node) -> Option<Vec<&'n Entry>> {
        match &node.value {
            Value::Table(entries) => {
                let mut out = Vec::with_capacity(entries.len());
                for e in entries {
                    if e.key.contains('\0') {
                        self.err(e.key_pos, &join(path, &e.key), NUL_MESSAGE);
                    } else {
                        out.push(e);
                    }
                }
                Some(out)
            }
            _ => {
                self.type_err(path, node, "a table");
                None
            }
        }
    }

    pub fn unknown_key(&mut self, path: &str, e: &Entry, allowed: &[&str]) {
        let key = join(path, &e.key);
        let suggestion = if self.suggestions_left > 0 {
            self.suggestions_left -= 1;
            suggest(&e.key, allowed)
        } else {
            None
        };
        let message = match suggestion {
            Some(s) => format!("unknown key `{}`; did you mean `{s}`?", e.key),
            None if allowed.is_empty() => format!("unknown key `{}`", e.key),
            None => format!(
                "unknown key `{}`; expected one of: {}",
                e.key,
                allowed.join(", ")
            ),
        };
        self.err(e.key_pos, &key, message);
    }

    /// Text, without NUL characters (no program on the host can take them).
    pub fn string(&mut self, path: &str, node: &Node) -> Option<String> {
        self.text(path, node, "a string").map(str::to_string)
    }

    fn text<'n>(&mut self, path: &str, node: &'n Node, what: &str) -> Option<&'n str> {
        match &node.value {
            Value::String(s) | Value::Text(s) if s.contains('\0') => {
                self.err(node.pos, path, NUL_MESSAGE);
                None
            }
            Value::String(s) | Value::Text(s) => Some(s),
            _ => {
                self.type_err(path, node, what);
                None
            }
        }
    }

    pub fn bool(&mut self, path: &str, node: &Node) -> Option<bool> {
        match &node.value {
            Value::Bool(b) => Some(*b),
            Value::Text(t) => match t.as_str() {
                "true" | "1" | "yes" | "on" => Some(true),
                "false" | "0" | "no" | "off" => Some(false),
                _ => {
                    self.err(
                        node.pos,
                        path,
                        format!("expected true or false, found `{t}`"),
                    );
                    None
                }
            },
            _ => {
                self.type_err(path, node, "a boolean (true or false)");
                None
            }
        }
    }

    /// An integer in `min..=max`.
    pub fn int(&mut self, path: &str, node: &Node, min: i64, max: i64) -> Option<i64> {
        let n = match &node.value {
            Value::Integer(n) => *n,
            Value::Text(t) => match t.parse::<i64>() {
                Ok(n) => n,
                Err(_) => {
                    self.err(node.pos, path, format!("expected an integer, found `{t}`"));
                    return None;
                }
            },
            _ => {
                self.type_err(path, node, "an integer");
                return None;
            }
        };
        if n < min || n > max {
            self.err(
                node.pos,
                path,
                format!("{n} is out of range; expected {min} to {max}"),
            );
            return None;
        }
        Some(n)
    }

    /// A string parsed into `T` (an address, a CIDR, a hostname ...); `what` names the type in
    /// errors about a value that is not a string at all.
    pub fn parsed<T>(&mut self, path: &str, node: &Node, what: &str) -> Option<T>
    where
        T: FromStr,
        T::Err: Display,
    {
        let s = self.text(path, node, what)?;
        match s.parse::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(node.pos, path, e.to_string());
                None
            }
        }
    }

    /// A duration (`"500ms"`, `"10s"`, `"2m"`, or a number of seconds) in `min..=max`.
    pub fn duration(&mut self, path: &str, node: &Node, range: DurRange) -> Option<Dur> {
        let d = match &node.value {
            Value::Integer(n) => match u64::try_from(*n) {
                Ok(s) => s
                    .checked_mul(1000)
                    .map(|ms| Dur(std::time::Duration::from_millis(ms)))
                    .ok_or_else(|| format!("{n} s is too long")),
                Err(_) => Err(format!("expected a duration, found {n}")),
            },
            _ => self
                .text(path, node, "a duration string like \"10s\"")?
                .parse::<Dur>(),
        };
        let d = match d {
            Ok(d) => d,
            Err(e) => {
                self.err(node.pos, path, e);
                return None;
            }
        };
        if d.0 < range.min || d.0 > range.max {
            self.err(
                node.pos,
                path,
                format!(
                    "{d} is out of range; expected {} to {}",
                    Dur(range.min),
                    Dur(range.max)
                ),
            );
            return None;
        }
        Some(d)
    }

    /// A string, integer or boolean as text (sysctl values).
    pub fn scalar_text(&mut self, path: &str, node: &Node) -> Option<String> {
        match &node.value {
            Value::String(s) | Value::Text(s) if s.contains('\0') => {
                self.err(node.pos, path, NUL_MESSAGE);
                None
            }
            Value::String(s) | Value::Text(s) => Some(s.clone()),
            Value::Integer(n) => Some(n.to_string()),
            Value::Bool(b) => Some(if *b { "1" } else { "0" }.to_string()),
            _ => {
                self.type_err(path, node, "a string, integer or boolean");
                None
            }
        }
    }

    /// An array whose items are each read by `item`. One bad item drops the whole key (after
    /// every item has been checked), so a half-read list is never applied. Command-line text is
    /// split on commas.
    pub fn list<T>(
        &mut self,
        path: &str,
        node: &Node,
        mut item: impl FnMut(&mut Self, &str, &Node) -> Option<T>,
    ) -> Option<Vec<T>> {
        let split: Vec<Node>;
        let items: &[Node] = match &node.value {
            Value::Array(items) => items,
            Value::Text(t) => {
                split = t
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| Node {
                        pos: node.pos,
                        value: Value::Text(s.to_string()),
                    })
                    .collect();
                &split
            }
            _ => {
                self.type_err(path, node, "an array");
                return None;
            }
        };
        let before = self.errors.len();
        let mut out = Vec::with_capacity(items.len());
        for (i, n) in items.iter().enumerate() {
            if let Some(v) = item(self, &format!("{path}[{i}]"), n) {
                out.push(v);
            }
        }
        (self.errors.len() == before).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_catch_typos_not_strangers() {
        let allowed = ["hostname", "modules", "sysctl", "network"];
        assert_eq!(suggest("hostnme", &allowed), Some("hostname"));
        assert_eq!(suggest("modlues", &allowed), Some("modules"));
        assert_eq!(suggest("networks", &allowed), Some("network"));
        assert_eq!(suggest("zzz", &allowed), None);
    }

    #[test]
    fn join_quotes_dotted_keys() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(
            join("sysctl", "net.ipv4.ip_forward"),
            "sysctl.\"net.ipv4.ip_forward\""
        );
    }

    #[test]
    fn a_bad_item_drops_the_list_but_every_item_is_reported() {
        let pos = Pos { line: 1, column: 1 };
        let node = Node {
            pos,
            value: Value::Array(vec![
                Node {
                    pos,
                    value: Value::Integer(1),
                },
                Node {
                    pos,
                    value: Value::String("x".into()),
                },
                Node {
                    pos,
                    value: Value::Bool(true),
                },
            ]),
        };
        let mut w = Walker::new("t");
        let got = w.list("k", &node, |w, p, n| w.int(p, n, 0, 10));
        assert_eq!(got, None);
        assert_eq!(w.errors.len(), 2);
        assert_eq!(w.errors[0].key, "k[1]");
    }

    #[test]
    fn command_line_text_is_read_as_the_expected_type() {
        let pos = Pos { line: 1, column: 5 };
        let text = |s: &str| Node {
            pos,
            value: Value::Text(s.into()),
        };
        let mut w = Walker::new("cmdline");
        assert_eq!(w.bool("b", &text("false")), Some(false));
        assert_eq!(w.int("i", &text("1500"), 68, 65535), Some(1500));
        assert_eq!(
            w.list("l", &text("a,b"), |w, p, n| w.string(p, n)),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(w.int("i", &text("x"), 0, 1), None);
        assert_eq!(w.errors.len(), 1);
    }
}
