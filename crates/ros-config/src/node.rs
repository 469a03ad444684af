//! The tree every source is read into before validation: values with the position they came
//! from, so one validator serves TOML files and the kernel command line alike.

use crate::error::Pos;

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

/// An entry of a table: the key, where the key was written, and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub node: Node,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Node>),
    Table(Vec<Entry>),
    /// Untyped text from the kernel command line: read as whatever type the key expects
    /// (`true`, `42`, a comma-separated list, ...).
    Text(String),
}

impl Value {
    /// The name used in "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Bool(_) => "a boolean",
            Value::Datetime(_) => "a date-time",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
            Value::Text(_) => "text",
        }
    }
}

impl Node {
    pub fn table(pos: Pos) -> Node {
        Node {
            pos,
            value: Value::Table(Vec::new()),
        }
    }

    /// Entries of a table node; empty for any other kind.
    pub fn entries(&self) -> &[Entry] {
        match &self.value {
            Value::Table(entries) => entries,
            _ => &[],
        }
    }

    /// The entry for `key`, if this is a table holding it.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries().iter().find(|e| e.key == key)
    }

    /// Sets `key` in this table (replacing an earlier value), turning a non-table into a table.
    pub fn set(&mut self, key: &str, key_pos: Pos, node: Node) {
        let entries = self.table_mut();
        match entries.iter_mut().find(|e| e.key == key) {
            Some(e) => {
                e.key_pos = key_pos;
                e.node = node;
            }
            None => entries.push(Entry {
                key: key.to_string(),
                key_pos,
                node,
            }),
        }
    }

    /// The child table at `key`, created when missing (or when `key` held a non-table).
    pub fn child_table(&mut self, key: &str, key_pos: Pos) -> &mut Node {
        let entries = self.table_mut();
        let idx = match entries.iter().position(|e| e.key == key) {
            Some(i) => {
                if !matches!(entries[i].node.value, Value::Table(_)) {
                    entries[i].node = Node::table(key_pos);
                }
                i
            }
            None => {
                entries.push(Entry {
                    key: key.to_string(),
                    key_pos,
                    node: Node::table(key_pos),
                });
                entries.len() - 1
            }
        };
        &mut entries[idx].node
    }

    fn table_mut(&mut self) -> &mut Vec<Entry> {
        if !matches!(self.value, Value::Table(_)) {
            self.value = Value::Table(Vec::new());
        }
        match &mut self.value {
            Value::Table(entries) => entries,
            _ => unreachable!("made a table just above"),
        }
    }
}
