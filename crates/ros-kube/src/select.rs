//! Label and field selectors, as `?labelSelector=` and `?fieldSelector=` spell them.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; the empty one matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Labels(Vec<Req>);

/// Splits on commas outside parentheses.
fn terms(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (vec![], 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out.into_iter().filter(|t| !t.is_empty()).collect()
}

fn set(s: &str) -> Result<Vec<String>, String> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|x| x.strip_suffix(')'))
        .ok_or_else(|| format!("expected a (value, ...) set, found {s:?}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl Labels {
    pub fn parse(s: &str) -> Result<Labels, String> {
        let mut reqs = vec![];
        for t in terms(s) {
            let r = if let Some((k, v)) = t.split_once("!=") {
                Req::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = t.split_once("==") {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = t.split_once('=') {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = t.split_once(" notin ") {
                Req::NotIn(k.trim().into(), set(v)?)
            } else if let Some((k, v)) = t.split_once(" in ") {
                Req::In(k.trim().into(), set(v)?)
            } else if let Some(k) = t.strip_prefix('!') {
                Req::NotExists(k.trim().into())
            } else if t.contains(['(', ' ', '<', '>']) {
                return Err(format!("unable to parse requirement {t:?}"));
            } else {
                Req::Exists(t.into())
            };
            reqs.push(r);
        }
        Ok(Labels(reqs))
    }

    /// A `matchLabels`/`matchExpressions` selector object.
    pub fn from_object(sel: &Value) -> Result<Labels, String> {
        let mut reqs = vec![];
        if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                reqs.push(Req::Eq(k.clone(), v.as_str().unwrap_or_default().into()));
            }
        }
        for e in sel
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
            let values: Vec<String> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            reqs.push(
                match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                    "In" => Req::In(key.into(), values),
                    "NotIn" => Req::NotIn(key.into(), values),
                    "Exists" => Req::Exists(key.into()),
                    "DoesNotExist" => Req::NotExists(key.into()),
                    op => return Err(format!("unknown operator {op:?}")),
                },
            );
        }
        Ok(Labels(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v),
            Req::Ne(k, v) => get(k) != Some(v),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A field selector: `path=value`, `path==value`, `path!=value`, comma separated; any dotted
/// path into the object (the real server allows a few per kind; a superset is harmless).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fields(Vec<(String, bool, String)>);

impl Fields {
    pub fn parse(s: &str) -> Result<Fields, String> {
        let mut out = vec![];
        for t in terms(s) {
            let (k, eq, v) = if let Some((k, v)) = t.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = t.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = t.split_once('=') {
                (k, true, v)
            } else {
                return Err(format!(
                    "invalid field selector {t:?}: expected field=value"
                ));
            };
            out.push((k.trim().to_string(), eq, v.trim().to_string()));
        }
        Ok(Fields(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, eq, want)| {
            let mut cur = Some(obj);
            for part in path.split('.') {
                cur = cur.and_then(|c| c.get(part));
            }
            let have = match cur {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(v) => v.to_string(),
            };
            (have == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels() -> Result<(), String> {
        let o = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        assert!(Labels::parse("app=web")?.matches(&o));
        assert!(Labels::parse("app in (web, api),tier")?.matches(&o));
        assert!(!Labels::parse("app notin (web),tier")?.matches(&o));
        assert!(Labels::parse("!missing,app!=api")?.matches(&o));
        assert!(!Labels::parse("app==api")?.matches(&o));
        assert!(Labels::parse("app in web").is_err());
        Ok(())
    }

    #[test]
    fn fields() -> Result<(), String> {
        let o = json!({"metadata": {"name": "a", "namespace": "d"}, "spec": {"nodeName": ""}});
        assert!(Fields::parse("metadata.name=a,metadata.namespace==d")?.matches(&o));
        assert!(Fields::parse("spec.nodeName=")?.matches(&o));
        assert!(!Fields::parse("metadata.name!=a")?.matches(&o));
        assert!(Fields::parse("name").is_err());
        Ok(())
    }
}
