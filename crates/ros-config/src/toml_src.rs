//! Reads TOML text into a [`Node`] tree. A line TOML cannot parse is reported and blanked, and the
//! text is parsed again, so one typo costs one line, not the whole file; when the bad line is a
//! table header, the whole table under it is blanked too, so its keys cannot land in the table
//! above it.

use toml_edit::{Document, Item, Table, Value as TValue};

use crate::error::{ConfigError, Pos};
use crate::node::{Entry, Node, Value};

/// At most this many syntax errors are salvaged; past that the text is dropped whole.
const MAX_SYNTAX_ERRORS: usize = 20;

/// Parses `text` (named `source` in errors). Returns the tree of everything that parsed, and an
/// error for each line that did not.
pub fn parse(source: &str, text: &str) -> (Node, Vec<ConfigError>) {
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut work = text.to_string();
    for _ in 0..=MAX_SYNTAX_ERRORS {
        match Document::parse(work.as_str()) {
            Ok(doc) => {
                errors.sort_by_key(|e| (e.line, e.column));
                return (table_node(text, doc.as_table(), Pos::at(text, 0)), errors);
            }
            Err(e) => {
                let offset = e.span().map_or(0, |s| s.start);
                let pos = Pos::at(&work, offset);
                let key = key_on_line(&work, offset);
                let message = match bare_word_value(&work, offset) {
                    Some(word) => {
                        format!("invalid TOML: the value `{word}` needs quotes: {key} = \"{word}\"")
                    }
                    None => format!("invalid TOML: {}", first_line(e.message())),
                };
                errors.push(ConfigError::new(source, pos, &key, message));
                if !blank_bad_lines(&mut work, offset) {
                    break;
                }
            }
        }
    }
    errors.push(ConfigError::new(
        source,
        Pos::at(text, 0),
        "",
        "too many TOML errors; the whole text is ignored",
    ));
    (Node::table(Pos::at(text, 0)), errors)
}

fn first_line(message: &str) -> &str {
    message
        .trim()
        .lines()
        .next()
        .unwrap_or("")
        .trim_end_matches('.')
}

/// The key written on the line holding `offset` (the text before `=`, or a table header).
fn key_on_line(text: &str, offset: usize) -> String {
    let (start, end) = line_bounds(text, offset);
    let line = text.get(start..end).unwrap_or("").trim();
    if let Some(header) = line.strip_prefix('[') {
        return header
            .trim_start_matches('[')
            .split(']')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
    }
    match line.split_once('=') {
        Some((k, _)) => k.trim().trim_matches('"').to_string(),
        // No `=`: TOML read the first word as a key that has no value.
        None => line.split_whitespace().next().unwrap_or("").to_string(),
    }
}

/// The value of a `key = value` line when it is a bare word, which TOML reads as neither a
/// string nor anything else (the usual mistake: `hostname = node1`).
fn bare_word_value(text: &str, offset: usize) -> Option<String> {
    let (start, end) = line_bounds(text, offset);
    let (_, value) = text.get(start..end)?.split_once('=')?;
    let value = value.split('#').next().unwrap_or("").trim();
    let word_char = |c: char| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/');
    let is_word = !value.is_empty()
        && value.chars().all(word_char)
        && !matches!(value, "true" | "false" | "inf" | "nan")
        && value.parse::<f64>().is_err()
        && value.parse::<i64>().is_err();
    is_word.then(|| value.to_string())
}

fn line_bounds(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let start = text
        .get(..offset)
        .and_then(|s| s.rfind('\n'))
        .map_or(0, |i| i + 1);
    let end = text
        .get(offset..)
        .and_then(|s| s.find('\n'))
        .map_or(text.len(), |i| offset + i);
    (start, end)
}

/// Blanks (with spaces, so positions stay) the line at `offset`, and, when it is a table header,
/// every line up to the next header. Returns false when nothing was left to blank.
fn blank_bad_lines(text: &mut String, offset: usize) -> bool {
    let (start, mut end) = line_bounds(text, offset);
    let line = text.get(start..end).unwrap_or("");
    if line.trim().is_empty() {
        // The error is at an empty line (e.g. an unterminated string ran to the end): blank the
        // line before it instead.
        if start == 0 {
            return false;
        }
        return blank_bad_lines(text, start - 1);
    }
    if line.trim_start().starts_with('[') {
        let mut next = end;
        while next < text.len() {
            let (s, e) = line_bounds(text, next + 1);
            if text
                .get(s..e)
                .is_some_and(|l| l.trim_start().starts_with('['))
            {
                break;
            }
            end = e;
            next = e;
        }
    }
    let blank: String = text
        .get(start..end)
        .unwrap_or("")
        .chars()
        .map(|c| if c == '\n' { '\n' } else { ' ' })
        .collect();
    text.replace_range(start..end, &blank);
    true
}

fn pos_of(text: &str, span: Option<std::ops::Range<usize>>, fallback: Pos) -> Pos {
    span.map_or(fallback, |s| Pos::at(text, s.start))
}

fn table_node(text: &str, table: &Table, pos: Pos) -> Node {
    let mut entries = Vec::new();
    for (key, item) in table.iter() {
        let key_pos = table.key(key).map_or(pos, |k| pos_of(text, k.span(), pos));
        let node = item_node(text, item, key_pos);
        entries.push(Entry {
            key: key.to_string(),
            key_pos,
            node,
        });
    }
    Node {
        pos,
        value: Value::Table(entries),
    }
}

fn item_node(text: &str, item: &Item, key_pos: Pos) -> Node {
    match item {
        Item::Value(v) => value_node(text, v, key_pos),
        Item::Table(t) => table_node(text, t, pos_of(text, t.span(), key_pos)),
        Item::ArrayOfTables(a) => Node {
            pos: pos_of(text, a.span(), key_pos),
            value: Value::Array(
                a.iter()
                    .map(|t| table_node(text, t, pos_of(text, t.span(), key_pos)))
                    .collect(),
            ),
        },
        Item::None => Node {
            pos: key_pos,
            value: Value::Table(Vec::new()),
        },
    }
}

fn value_node(text: &str, v: &TValue, fallback: Pos) -> Node {
    let pos = pos_of(text, v.span(), fallback);
    let value = match v {
        TValue::String(s) => Value::String(s.value().clone()),
        TValue::Integer(i) => Value::Integer(*i.value()),
        TValue::Float(f) => Value::Float(*f.value()),
        TValue::Boolean(b) => Value::Bool(*b.value()),
        TValue::Datetime(d) => Value::Datetime(d.value().to_string()),
        TValue::Array(a) => Value::Array(a.iter().map(|v| value_node(text, v, pos)).collect()),
        TValue::InlineTable(t) => {
            let mut entries = Vec::new();
            for (key, v) in t.iter() {
                let key_pos = t.key(key).map_or(pos, |k| pos_of(text, k.span(), pos));
                entries.push(Entry {
                    key: key.to_string(),
                    key_pos,
                    node: value_node(text, v, key_pos),
                });
            }
            Value::Table(entries)
        }
    };
    Node { pos, value }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_tables_with_positions() {
        let text = "hostname = \"a\"\n[network.interfaces.eth0]\nmtu = 1400\n";
        let (node, errors) = parse("t", text);
        assert!(errors.is_empty(), "{errors:?}");
        let h = node.get("hostname").expect("hostname");
        assert_eq!(h.key_pos, Pos { line: 1, column: 1 });
        assert_eq!(h.node.value, Value::String("a".into()));
        let eth0 = node
            .get("network")
            .and_then(|n| n.node.get("interfaces"))
            .and_then(|n| n.node.get("eth0"))
            .expect("eth0");
        let mtu = eth0.node.get("mtu").expect("mtu");
        assert_eq!(mtu.key_pos, Pos { line: 3, column: 1 });
        assert_eq!(mtu.node.pos, Pos { line: 3, column: 7 });
    }

    #[test]
    fn a_bad_line_is_reported_and_the_rest_survives() {
        let text = "hostname = node1\nmodules = [\"bonding\"]\n";
        let (node, errors) = parse("t", text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].line, 1);
        assert_eq!(errors[0].key, "hostname");
        assert_eq!(
            errors[0].message,
            "invalid TOML: the value `node1` needs quotes: hostname = \"node1\""
        );
        assert!(node.get("hostname").is_none());
        assert!(node.get("modules").is_some());
    }

    #[test]
    fn every_syntax_error_is_reported() {
        let text = "a = \nb = 2\nc = [1,\n";
        let (node, errors) = parse("t", text);
        assert!(errors.len() >= 2, "{errors:?}");
        assert_eq!(errors[0].line, 1);
        assert!(node.get("b").is_some());
    }

    #[test]
    fn a_broken_header_drops_its_whole_table() {
        let text = "[network.interfaces.eth0]\nmtu = 1400\n[network.interfaces.eth1\nmtu = 9000\n[x]\ny = 1\n";
        let (node, errors) = parse("t", text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].line, 3);
        assert_eq!(errors[0].key, "network.interfaces.eth1");
        let eth0 = node
            .get("network")
            .and_then(|n| n.node.get("interfaces"))
            .and_then(|n| n.node.get("eth0"))
            .expect("eth0");
        // eth1's mtu must not have landed in eth0.
        assert_eq!(
            eth0.node.get("mtu").map(|e| &e.node.value),
            Some(&Value::Integer(1400))
        );
        assert!(node.get("x").is_some());
    }

    #[test]
    fn arrays_of_tables_become_arrays_of_table_nodes() {
        let text = "[[r]]\nto = \"a\"\n[[r]]\nto = \"b\"\n";
        let (node, errors) = parse("t", text);
        assert!(errors.is_empty());
        match &node.get("r").expect("r").node.value {
            Value::Array(items) => assert_eq!(items.len(), 2),
            other => panic!("{other:?}"),
        }
    }
}
