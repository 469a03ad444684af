//! A config error: what was wrong, in which source, at which line, column and key.

use std::fmt;

use serde::Serialize;

/// A position in a source: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    /// The position of byte `offset` in `text`.
    pub fn at(text: &str, offset: usize) -> Pos {
        let offset = offset.min(text.len());
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        Pos {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            column: u32::try_from(column).unwrap_or(u32::MAX),
        }
    }
}

/// One problem found in one source. Errors never stop the boot: the key they name falls back to
/// its value from a lower source, or its default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    /// Where the text came from, e.g. `fw_cfg:opt/ros/user-data` or `cmdline`.
    pub source: String,
    pub line: u32,
    pub column: u32,
    /// The dotted key the error is about, e.g. `network.interfaces.eth0.mtu`; empty when the text
    /// could not be read at all.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(source: &str, pos: Pos, key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            source: source.to_string(),
            line: pos.line,
            column: pos.column,
            key: key.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.source, self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(Pos::at(text, 0), Pos { line: 1, column: 1 });
        assert_eq!(Pos::at(text, 6), Pos { line: 2, column: 1 });
        // "bé " is 4 bytes, 3 characters.
        assert_eq!(Pos::at(text, 10), Pos { line: 2, column: 4 });
        assert_eq!(Pos::at(text, 999), Pos { line: 3, column: 1 });
    }

    #[test]
    fn display_names_source_line_column_and_key() {
        let e = ConfigError::new("fw_cfg", Pos { line: 3, column: 7 }, "hostname", "bad");
        assert_eq!(e.to_string(), "fw_cfg:3:7: hostname: bad");
    }
}
