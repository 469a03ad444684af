//! Reads TOML text into a [`Node`] tree. The parser recovers from errors, so one pass finds
//! every bad line; each is reported and blanked (spaces, so offsets stay), and the text is
//! parsed again: one typo costs one line, not the whole file, and a file with errors costs a
//! few passes, not one per error. When a bad line is a table header, the whole table under it
//! is blanked too, so its keys cannot land in the table above it. Nesting is limited by the
//! parser (80 levels), so nothing here recurses deeper than that.

use toml::de::{DeTable, DeValue};

use crate::error::{ConfigError, LineIndex, Pos};
use crate::node::{Entry, Node, Value};

/// Rounds of blanking after which the text is dropped whole (each round blanks every line the
/// parser reported; a second round is rare, a third rarer still).
const MAX_ROUNDS: usize = 8;

/// Parses `text` (named `source` in errors). Returns the tree of everything that parsed, and an
/// error for each line that did not.
pub fn parse(source: &str, text: &str) -> (Node, Vec<ConfigError>) {
    let index = LineIndex::new(text);
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut work: Vec<u8> = text.as_bytes().to_vec();
    for _ in 0..MAX_ROUNDS {
        let Ok(current) = std::str::from_utf8(&work) else {
            break;
        };
        let (table, parse_errors) = DeTable::parse_recoverable(current);
        if parse_errors.is_empty() {
            errors.sort_by_key(|e| (e.line, e.column));
            return (table_node(&index, table.get_ref(), Pos::START), errors);
        }
        let mut offsets: Vec<(usize, String)> = parse_errors
            .iter()
            .map(|e| (e.span().map_or(0, |s| s.start), e.message().to_string()))
            .collect();
        offsets.sort_by_key(|(o, _)| *o);
        let mut last_line = None;
        let mut blank = Vec::new();
        for (offset, message) in offsets {
            let (start, _) = line_bounds(current, offset);
            if last_line == Some(start) {
                continue;
            }
            last_line = Some(start);
            let key = key_on_line(current, offset);
            let message = match bare_word_value(current, offset) {
                Some(word) => {
                    format!("invalid TOML: the value `{word}` needs quotes: {key} = \"{word}\"")
                }
                None => format!("invalid TOML: {}", first_line(&message)),
            };
            errors.push(ConfigError::new(source, index.pos(offset), &key, message));
            blank.push(offset);
        }
        let mut blanked = false;
        for offset in blank {
            blanked |= blank_bad_lines(&mut work, offset);
        }
        if !blanked {
            break;
        }
    }
    errors.push(ConfigError::new(
        source,
        Pos::START,
        "",
        "too many TOML errors; the whole text is ignored",
    ));
    (Node::table(Pos::START), errors)
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

/// Blanks (with spaces, so offsets stay) the line at `offset`, and, when it is a table header,
/// every line up to the next header; an error at the end of the text (a string or array never
/// closed) blanks from the line that opened it. Returns false when nothing was left to blank.
fn blank_bad_lines(text: &mut [u8], offset: usize) -> bool {
    let Ok(s) = std::str::from_utf8(text) else {
        return false;
    };
    let (mut start, mut end) = line_bounds(s, offset);
    if s.get(start..end).is_none_or(|l| l.trim().is_empty()) {
        if s[..start].trim().is_empty() {
            return false;
        }
        // At the end (or an empty line): an unterminated multi-line string swallowed the text
        // from where it opened; else blank the line before.
        match unclosed_multiline(s) {
            Some(open) => {
                start = line_bounds(s, open).0;
                end = s.len();
            }
            None => return blank_bad_lines(text, start.saturating_sub(1)),
        }
    } else if s[start..end].trim_start().starts_with('[') {
        let mut next = end;
        while next < s.len() {
            let (ls, le) = line_bounds(s, next + 1);
            if s[ls..le].trim_start().starts_with('[') {
                break;
            }
            end = le;
            next = le;
        }
    }
    let mut changed = false;
    for b in &mut text[start..end] {
        if *b != b'\n' && *b != b' ' {
            *b = b' ';
            changed = true;
        }
    }
    changed
}

/// Where a multi-line string that is never closed opens (`"""` or `\'\'\'`), if one is.
fn unclosed_multiline(s: &str) -> Option<usize> {
    let mut open: Option<(usize, &str)> = None;
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        match open {
            Some((_, delim)) if rest.starts_with(delim) => {
                open = None;
                i += 3;
            }
            None if rest.starts_with("\"\"\"") || rest.starts_with("\'\'\'") => {
                open = Some((i, &rest[..3]));
                i += 3;
            }
            _ => i += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    open.map(|(at, _)| at)
}

fn pos_of(index: &LineIndex<'_>, span: std::ops::Range<usize>) -> Pos {
    index.pos(span.start)
}

fn table_node(index: &LineIndex<'_>, table: &DeTable<'_>, pos: Pos) -> Node {
    let entries = table
        .iter()
        .map(|(k, v)| {
            let key_pos = pos_of(index, k.span());
            Entry {
                key: k.get_ref().to_string(),
                key_pos,
                node: value_node(index, v.get_ref(), pos_of(index, v.span())),
            }
        })
        .collect();
    Node {
        pos,
        value: Value::Table(entries),
    }
}

fn value_node(index: &LineIndex<'_>, v: &DeValue<'_>, pos: Pos) -> Node {
    let value = match v {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Value::Integer(n),
            // Out of i64: kept as text, which a number key reports as out of range.
            Err(_) => Value::Text(i.as_str().to_string()),
        },
        DeValue::Float(f) => Value::Float(float(f.as_str())),
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::Datetime(d.to_string()),
        DeValue::Array(a) => Value::Array(
            a.iter()
                .map(|x| value_node(index, x.get_ref(), pos_of(index, x.span())))
                .collect(),
        ),
        DeValue::Table(t) => return table_node(index, t, pos),
    };
    Node { pos, value }
}

/// A TOML float's text (`1e3`, `inf`, `-nan`, `1_000.5`).
fn float(s: &str) -> f64 {
    let t: String = s.chars().filter(|c| *c != '_').collect();
    match t.trim_start_matches('+') {
        "inf" => f64::INFINITY,
        "-inf" => f64::NEG_INFINITY,
        "nan" | "-nan" => f64::NAN,
        other => other.parse().unwrap_or(f64::NAN),
    }
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
