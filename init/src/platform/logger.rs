//! The init's log: human-readable lines with a level on the console (`[   2.345] INFO  text`),
//! each written with one `write(2)`, and the same lines kept in a bounded ring in memory for
//! `ros logs`. A small `log::Log` of our own: a subscriber crate would cost the init size and
//! start-up time for features PID 1 does not use.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::platform::clock::uptime_ms;

/// The ring keeps at most this many bytes of lines.
const RING_BYTES: usize = 256 * 1024;

#[derive(Debug)]
pub struct Logger {
    ring: Mutex<Ring>,
    console: bool,
}

#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<String>,
    bytes: usize,
    /// How many lines were ever pushed.
    pushed: u64,
}

impl Ring {
    fn push(&mut self, line: String) {
        self.pushed += 1;
        self.bytes += line.len();
        self.lines.push_back(line);
        while self.bytes > RING_BYTES {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
    }
}

static LOGGER: std::sync::OnceLock<Logger> = std::sync::OnceLock::new();

/// Installs the logger (once). `debug` shows debug lines from ros's own code.
pub fn init(debug: bool, console: bool) {
    let logger = LOGGER.get_or_init(|| Logger {
        ring: Mutex::new(Ring::default()),
        console,
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(if debug {
            LevelFilter::Debug
        } else {
            LevelFilter::Info
        });
    }
}

/// Changes the level after the config is read.
pub fn set_debug(debug: bool) {
    log::set_max_level(if debug {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    });
}

/// The lines kept so far, oldest first.
pub fn lines() -> Vec<String> {
    LOGGER.get().map_or_else(Vec::new, |l| match l.ring.lock() {
        Ok(r) => r.lines.iter().cloned().collect(),
        Err(_) => Vec::new(),
    })
}

/// The lines pushed after the first `seq` ever pushed (those still kept), and the new `seq`.
pub fn since(seq: u64) -> (Vec<String>, u64) {
    LOGGER.get().map_or_else(
        || (Vec::new(), seq),
        |l| match l.ring.lock() {
            Ok(r) => {
                let first = r.pushed - r.lines.len() as u64;
                let skip = usize::try_from(seq.saturating_sub(first)).unwrap_or(usize::MAX);
                (r.lines.iter().skip(skip).cloned().collect(), r.pushed)
            }
            Err(_) => (Vec::new(), seq),
        },
    )
}

/// Formats one line: uptime, level, text.
pub fn format_line(ms: u64, level: Level, text: &str) -> String {
    format!("[{:4}.{:03}] {:<5} {text}\n", ms / 1000, ms % 1000, level)
}

/// Writes raw text to the console in one write (used for the ready line).
pub fn console_write(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        // Libraries (netlink) speak at warn and above; ros's own code at the set level.
        m.target().starts_with("ros") || m.level() <= Level::Warn
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(uptime_ms(), record.level(), &record.args().to_string());
        if self.console {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(line.as_bytes());
        }
        if let Ok(mut ring) = self.ring.lock() {
            ring.push(line);
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_uptime_and_level() {
        assert_eq!(
            format_line(2345, Level::Info, "hi"),
            "[   2.345] INFO  hi\n"
        );
        assert_eq!(
            format_line(61_007, Level::Warn, "x"),
            "[  61.007] WARN  x\n"
        );
    }

    #[test]
    fn the_ring_is_bounded_by_bytes() {
        let mut r = Ring::default();
        let line = "x".repeat(1000);
        for _ in 0..1000 {
            r.push(line.clone());
        }
        assert!(r.bytes <= RING_BYTES);
        assert_eq!(r.lines.len(), RING_BYTES / 1000);
    }
}
