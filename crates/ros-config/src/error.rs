//! A config error: what was wrong, in which source, at which line, column and key.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A position in a source: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    /// Line 1, column 1.
    pub const START: Pos = Pos { line: 1, column: 1 };

    /// The position of byte `offset` in `text`. Scans the text: for one position only; to place
    /// many, build a [`LineIndex`] once.
    pub fn at(text: &str, offset: usize) -> Pos {
        LineIndex::new(text).pos(offset)
    }
}

/// Finds the line and column of byte offsets in one text in about constant time each, so that
/// placing every key of a large file stays linear in its size (a scan per key made a 600 KB file
/// take half a minute). Built in one pass: where each line starts, and how many characters
/// precede each 256-byte block (columns count characters, not bytes).
#[derive(Debug, Clone)]
pub struct LineIndex<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
    /// Characters before byte `i * BLOCK`.
    chars_before_block: Vec<usize>,
}

const BLOCK: usize = 256;

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> Self {
        let bytes = text.as_bytes();
        let mut line_starts = vec![0];
        line_starts.extend(newlines(bytes).map(|i| i + 1));
        let mut chars_before_block = Vec::with_capacity(bytes.len() / BLOCK + 1);
        let mut chars = 0;
        for block in bytes.chunks(BLOCK) {
            chars_before_block.push(chars);
            chars += block.iter().filter(|b| !is_continuation(**b)).count();
        }
        chars_before_block.push(chars);
        LineIndex {
            text,
            line_starts,
            chars_before_block,
        }
    }

    /// Characters before byte `offset` (at a character boundary).
    fn chars_before(&self, offset: usize) -> usize {
        let block = offset / BLOCK;
        let start = block * BLOCK;
        self.chars_before_block.get(block).copied().unwrap_or(0)
            + self.text.as_bytes()[start..offset]
                .iter()
                .filter(|b| !is_continuation(**b))
                .count()
    }

    /// The position of byte `offset` (clamped to the text; moved back to a character boundary).
    pub fn pos(&self, offset: usize) -> Pos {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|s| *s <= offset);
        let line_start = self.line_starts[line.saturating_sub(1)];
        let column = self.chars_before(offset) - self.chars_before(line_start) + 1;
        Pos {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            column: u32::try_from(column).unwrap_or(u32::MAX),
        }
    }
}

fn is_continuation(b: u8) -> bool {
    b & 0xc0 == 0x80
}

fn newlines(bytes: &[u8]) -> impl Iterator<Item = usize> + '_ {
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
}

/// One problem found in one source. Errors never stop the boot: the key they name falls back to
/// its value from a lower source, or its default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
        // Inside a character: its start.
        assert_eq!(Pos::at(text, 8), Pos { line: 2, column: 2 });
    }

    #[test]
    fn the_index_agrees_with_a_plain_count_everywhere() {
        let text = format!(
            "a = 1\n{}\nçé = \"ü\"\n\n{}x",
            "é".repeat(300),
            "b".repeat(700)
        );
        let index = LineIndex::new(&text);
        for offset in (0..=text.len()).filter(|o| text.is_char_boundary(*o)) {
            let before = &text[..offset];
            let line = before.matches('\n').count() + 1;
            let start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before[start..].chars().count() + 1;
            assert_eq!(
                index.pos(offset),
                Pos {
                    line: line as u32,
                    column: column as u32
                },
                "at {offset}"
            );
        }
    }

    #[test]
    fn display_names_source_line_column_and_key() {
        let e = ConfigError::new("fw_cfg", Pos { line: 3, column: 7 }, "hostname", "bad");
        assert_eq!(e.to_string(), "fw_cfg:3:7: hostname: bad");
    }
}
