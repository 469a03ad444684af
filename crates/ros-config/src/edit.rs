//! Changes to a user-data file, as `ros config set|unset|merge` make them to the persisted
//! config: the TOML is edited in place (comments and layout kept, with `toml_edit`), and the
//! result is validated whole before it may replace the old one. Also the views `ros config get`
//! and `ros config sources` give of layered sources.

use std::collections::BTreeMap;

use toml_edit::{DocumentMut, Item, Table};

use crate::cmdline::segments;
use crate::{ConfigError, Pos, UserData};

/// A key as the CLI takes it, split into its table path.
pub fn key_path(key: &str) -> Result<Vec<String>, String> {
    let key = key.trim();
    let segs = segments(key);
    if key.is_empty() || segs.iter().any(|s| s.is_empty()) {
        return Err(format!(
            "`{key}` is not a key (use dotted names, e.g. network.dns.nameservers)"
        ));
    }
    Ok(segs)
}

fn parse(source: &str, text: &str) -> Result<DocumentMut, Vec<ConfigError>> {
    text.parse::<DocumentMut>().map_err(|e| {
        vec![ConfigError::new(
            source,
            Pos::default(),
            "",
            format!("not valid TOML: {}", e.message()),
        )]
    })
}

/// Errors of `text` read as user-data from `source`.
pub fn check(source: &str, text: &str) -> Vec<ConfigError> {
    crate::from_toml(source, text).errors
}

fn set_in(doc: &mut DocumentMut, path: &[String], value: toml_edit::Value) -> Result<(), String> {
    let Some((last, tables)) = path.split_last() else {
        return Err("empty key".into());
    };
    let mut table: &mut Table = doc.as_table_mut();
    for (i, t) in tables.iter().enumerate() {
        let entry = table.entry(t).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        if let Some(inline) = entry.as_inline_table().cloned() {
            *entry = Item::Table(inline.into_table());
        }
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{}` is a value, not a table", path[..=i].join(".")))?;
    }
    // An existing value keeps its place and the comments around it.
    if let Some(old) = table.get_mut(last).and_then(Item::as_value_mut) {
        let decor = old.decor().clone();
        *old = value;
        *old.decor_mut() = decor;
    } else {
        table.insert(last, Item::Value(value));
    }
    Ok(())
}

/// The ways `value` can be read: as TOML, as text, as a comma list of text.
fn candidates(value: &str) -> Vec<toml_edit::Value> {
    let mut out = Vec::new();
    if let Ok(v) = value.trim().parse::<toml_edit::Value>() {
        out.push(v);
    }
    out.push(toml_edit::Value::from(value));
    if value.contains(',') || !value.is_empty() {
        let items: toml_edit::Array = value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        out.push(toml_edit::Value::Array(items));
    }
    out
}

/// Sets `key` to `value` in the user-data `text`; the new text, or why it cannot be. Of the
/// ways `value` can be read, the first that adds no error to the text is taken.
pub fn set(source: &str, text: &str, key: &str, value: &str) -> Result<String, Vec<ConfigError>> {
    let path = key_path(key).map_err(|e| vec![ConfigError::new(source, Pos::default(), key, e)])?;
    let doc = parse(source, text)?;
    let before = check(source, text);
    let mut first_errors = None;
    for v in candidates(value) {
        let mut d = doc.clone();
        set_in(&mut d, &path, v)
            .map_err(|e| vec![ConfigError::new(source, Pos::default(), key, e)])?;
        let out = d.to_string();
        // Errors elsewhere in the file were there before; only new ones matter here.
        let added = crate::load::new_errors(&before, &check(source, &out));
        if added.is_empty() {
            return Ok(out);
        }
        first_errors.get_or_insert(added);
    }
    Err(first_errors.unwrap_or_default())
}

/// Removes `key`; empty tables it leaves are removed too.
pub fn unset(source: &str, text: &str, key: &str) -> Result<String, Vec<ConfigError>> {
    let err = |m: String| vec![ConfigError::new(source, Pos::default(), key, m)];
    let path = key_path(key).map_err(err)?;
    let mut doc = parse(source, text)?;
    fn remove(t: &mut Table, path: &[String]) -> bool {
        match path {
            [] => false,
            [last] => t.remove(last).is_some(),
            [first, rest @ ..] => {
                let Some(item) = t.get_mut(first) else {
                    return false;
                };
                if let Some(inline) = item.as_inline_table().cloned() {
                    *item = Item::Table(inline.into_table());
                }
                let Some(sub) = item.as_table_mut() else {
                    return false;
                };
                let removed = remove(sub, rest);
                if removed && sub.is_empty() {
                    t.remove(first);
                }
                removed
            }
        }
    }
    if !remove(doc.as_table_mut(), &path) {
        return Err(err(format!("`{key}` is not set in {source}")));
    }
    Ok(doc.to_string())
}

/// Merges the user-data `other` (validated on its own first, as `other_source`) into `text`:
/// tables key by key, everything else replaced, as sources layer.
pub fn merge(
    source: &str,
    text: &str,
    other_source: &str,
    other: &str,
) -> Result<String, Vec<ConfigError>> {
    let errors = check(other_source, other);
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut doc = parse(source, text)?;
    let add = parse(other_source, other)?;
    fn deep(into: &mut Table, from: &Table) {
        for (k, v) in from.iter() {
            let from_table = match v {
                Item::Table(t) => Some(t.clone()),
                Item::Value(toml_edit::Value::InlineTable(t)) => Some(t.clone().into_table()),
                _ => None,
            };
            match (from_table, into.get_mut(k)) {
                (Some(ft), Some(existing)) if existing.is_table_like() => {
                    if let Some(inline) = existing.as_inline_table().cloned() {
                        *existing = Item::Table(inline.into_table());
                    }
                    if let Some(t) = existing.as_table_mut() {
                        deep(t, &ft);
                    }
                }
                _ => {
                    into.insert(k, v.clone());
                }
            }
        }
    }
    let before = check(source, text);
    deep(doc.as_table_mut(), add.as_table());
    let out = doc.to_string();
    let added = crate::load::new_errors(&before, &check(source, &out));
    if added.is_empty() {
        Ok(out)
    } else {
        Err(added)
    }
}

/// The user-data as JSON, the form `get` and `sources` work on.
pub fn to_json(data: &UserData) -> serde_json::Value {
    serde_json::to_value(data).unwrap_or_default()
}

/// A JSON user-data written as TOML (for `ros config export --full`).
pub fn to_toml(data: &serde_json::Value) -> String {
    fn value(v: &serde_json::Value) -> Option<toml_edit::Value> {
        Some(match v {
            serde_json::Value::Null => return None,
            serde_json::Value::Bool(b) => (*b).into(),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => i.into(),
                None => n.as_f64().unwrap_or_default().into(),
            },
            serde_json::Value::String(s) => s.as_str().into(),
            serde_json::Value::Array(a) => {
                toml_edit::Value::Array(a.iter().filter_map(value).collect())
            }
            serde_json::Value::Object(m) => {
                let mut t = toml_edit::InlineTable::new();
                for (k, x) in m {
                    if let Some(v) = value(x) {
                        t.insert(k, v);
                    }
                }
                toml_edit::Value::InlineTable(t)
            }
        })
    }
    fn table(m: &serde_json::Map<String, serde_json::Value>) -> Table {
        let mut t = Table::new();
        t.set_implicit(true);
        for (k, v) in m {
            match v {
                serde_json::Value::Object(sub) => {
                    t.insert(k, Item::Table(table(sub)));
                }
                other => {
                    if let Some(v) = value(other) {
                        t.insert(k, Item::Value(v));
                    }
                }
            }
        }
        t
    }
    match data {
        serde_json::Value::Object(m) => DocumentMut::from(table(m)).to_string(),
        _ => String::new(),
    }
}

/// The value at a dotted key of a JSON user-data.
pub fn get<'a>(data: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    let path = key_path(key).ok()?;
    let mut v = data;
    for p in &path {
        v = v.get(p)?;
    }
    Some(v)
}

/// Every leaf value (tables flattened into dotted keys, lists kept whole) of a JSON user-data.
pub fn leaves(data: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, x, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", data, &mut out);
    out
}

/// For each effective leaf key, its value and the source it comes from (the highest that sets
/// it), given the sources' data lowest first.
pub fn origins(sources: &[(String, UserData)]) -> BTreeMap<String, (String, serde_json::Value)> {
    let mut out = BTreeMap::new();
    for (name, data) in sources {
        for (k, v) in leaves(&to_json(data)) {
            out.insert(k, (name.clone(), v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "state:test";

    #[test]
    fn set_keeps_comments_and_reads_values_as_the_key_wants() {
        let text = "# my machine\nhostname = \"a\" # the name\n";
        let out = set(S, text, "hostname", "node-2").expect("set");
        assert!(out.contains("# my machine"), "{out}");
        assert!(out.contains("hostname = \"node-2\""), "{out}");
        // A number where text is wanted is text; a comma list where a list is wanted is a list.
        let out = set(S, "", "hostname", "1234").expect("set");
        assert!(out.contains("hostname = \"1234\""), "{out}");
        let out = set(S, "", "modules", "bonding,8021q").expect("set");
        assert!(out.contains("modules = [\"bonding\", \"8021q\"]"), "{out}");
        let out = set(S, "", "network.interfaces.eth0.mtu", "1400").expect("set");
        assert!(crate::from_toml(S, &out).errors.is_empty(), "{out}");
        assert!(out.contains("mtu = 1400"), "{out}");
        let out = set(S, "", "sysctl.net.ipv4.ip_forward", "1").expect("set");
        assert!(out.contains("\"net.ipv4.ip_forward\" = 1"), "{out}");
        // Dotted sysctl keys are validated like every other key.
        let e = set(S, "", "sysctl.net.ipv4.ip_forward", "1\nkernel.x = 2").expect_err("two lines");
        assert_eq!(e[0].key, "sysctl.\"net.ipv4.ip_forward\"", "{e:?}");
        let e = set(S, "", "sysctl.net..x", "1").expect_err("bad key");
        assert!(e[0].message.contains("sysctl key"), "{e:?}");
        // A file with an old error still takes an unrelated change.
        let out = set(S, "hostnme = \"x\"\n", "hostname", "b").expect("set");
        assert!(out.contains("hostname = \"b\""), "{out}");
    }

    #[test]
    fn a_bad_value_or_key_is_refused_with_its_error() {
        let e = set(S, "", "hostname", "not a hostname!").expect_err("bad");
        assert_eq!(e[0].key, "hostname", "{e:?}");
        let e = set(S, "", "hostnme", "x").expect_err("unknown");
        assert!(e[0].message.contains("did you mean `hostname`"), "{e:?}");
        let e = set(S, "", "network.interfaces.eth0.mtu", "huge").expect_err("type");
        assert!(e[0].key.contains("mtu"), "{e:?}");
        let e = set(S, "hostname = \"a\"\n", "hostname.x", "1").expect_err("not a table");
        assert!(e[0].message.contains("not a table"), "{e:?}");
    }

    #[test]
    fn unset_removes_the_key_and_empty_tables() {
        let text = "hostname = \"a\"\n[ntp]\nservers = [\"x\"]\n";
        let out = unset(S, text, "ntp.servers").expect("unset");
        assert_eq!(out.trim(), "hostname = \"a\"");
        let e = unset(S, text, "modules").expect_err("not set");
        assert!(e[0].message.contains("not set"), "{e:?}");
    }

    #[test]
    fn merge_layers_tables_and_replaces_lists() {
        let text = "modules = [\"a\"]\n[sysctl]\n\"vm.swappiness\" = 5\n";
        let other = "modules = [\"bonding\"]\n[sysctl]\n\"net.ipv4.ip_forward\" = 1\n";
        let out = merge(S, text, "file", other).expect("merge");
        let d = crate::from_toml(S, &out);
        assert!(d.errors.is_empty(), "{out}");
        assert_eq!(d.data.sysctl.len(), 2, "{out}");
        assert_eq!(d.data.modules.map(|m| m.len()), Some(1));
        let e = merge(S, text, "file", "hostnme = \"x\"\n").expect_err("invalid");
        assert_eq!(e[0].source, "file");
    }

    #[test]
    fn get_and_origins_follow_the_layering() {
        let low = crate::from_toml("image", "hostname = \"a\"\nmodules = [\"x\"]\n").data;
        let high = crate::from_toml("state", "hostname = \"b\"\n").data;
        let o = origins(&[
            ("image".into(), low.clone()),
            ("state".into(), high.clone()),
        ]);
        assert_eq!(o["hostname"], ("state".to_string(), serde_json::json!("b")));
        assert_eq!(o["modules"].0, "image");
        let mut all = low;
        all.merge(high);
        let j = to_json(&all);
        assert_eq!(get(&j, "hostname"), Some(&serde_json::json!("b")));
        assert_eq!(get(&j, "ntp.servers"), None);
    }
}
