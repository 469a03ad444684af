//! ros's log files: one line per record, each stamped with the wall-clock time in UTC
//! (`2026-11-22T03:04:05.678Z`), rotated by size (`name.log` -> `name.log.1` -> ... up to
//! `keep` old files). Used by the init for services' output and by the syslog service.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A log file with rotation.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<File>,
    size: u64,
}

impl LogFile {
    /// Opens (appending to) `path`; rotates when it would pass `max_bytes`, keeping `keep` old
    /// files.
    pub fn open(path: impl Into<PathBuf>, max_bytes: u64, keep: u32) -> io::Result<LogFile> {
        let path = path.into();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            path,
            max_bytes,
            keep,
            file: Some(file),
            size,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `line` (without its newline) stamped with the current time.
    pub fn line(&mut self, line: &str) -> io::Result<()> {
        self.stamped(now_utc(), line)
    }

    /// Appends `line` stamped with `time`.
    pub fn stamped(&mut self, time: String, line: &str) -> io::Result<()> {
        let record = format!("{time} {}\n", line.trim_end_matches(['\n', '\r']));
        let len = record.len() as u64;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => return Err(io::Error::other("log file closed")),
        };
        file.write_all(record.as_bytes())?;
        self.size += len;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let name = |i: u32| -> PathBuf {
            if i == 0 {
                self.path.clone()
            } else {
                PathBuf::from(format!("{}.{i}", self.path.display()))
            }
        };
        if self.keep == 0 {
            let _ = std::fs::remove_file(&self.path);
        } else {
            let _ = std::fs::remove_file(name(self.keep));
            for i in (0..self.keep).rev() {
                let _ = std::fs::rename(name(i), name(i + 1));
            }
        }
        self.file = Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?,
        );
        self.size = 0;
        Ok(())
    }
}

/// The last `n` lines of a log, from its rotated files when the current one holds fewer.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut i = 0;
    while lines.len() < n {
        let p = if i == 0 {
            path.to_path_buf()
        } else {
            PathBuf::from(format!("{}.{i}", path.display()))
        };
        let Ok(text) = std::fs::read_to_string(&p) else {
            break;
        };
        let mut older: Vec<String> = text.lines().map(str::to_string).collect();
        older.append(&mut lines);
        lines = older;
        i += 1;
    }
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

/// The current time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn now_utc() -> String {
    // A clock before 1970 (a machine without an RTC, before NTP) reads as the epoch.
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format_utc(
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        d.subsec_millis(),
    )
}

/// Formats seconds since the epoch (UTC) and milliseconds.
pub fn format_utc(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(format_utc(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc(1_795_316_645, 678), "2026-11-22T03:04:05.678Z");
        assert_eq!(format_utc(951_782_400, 5), "2000-02-29T00:00:00.005Z");
    }

    #[test]
    fn rotates_by_size_and_keeps_n() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = tmp.path().join("svc.log");
        let mut log = LogFile::open(&p, 100, 2).expect("open");
        for i in 0..20 {
            log.stamped("T".into(), &format!("line {i:02} ............"))
                .expect("write");
        }
        assert!(std::fs::metadata(&p).expect("meta").len() <= 100);
        assert!(tmp.path().join("svc.log.1").exists());
        assert!(tmp.path().join("svc.log.2").exists());
        assert!(!tmp.path().join("svc.log.3").exists());
        let last = tail(&p, 5);
        assert_eq!(last.len(), 5);
        assert_eq!(last[4], "T line 19 ............");
        assert_eq!(last[0], "T line 15 ............");
    }

    #[test]
    fn reopening_appends() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = tmp.path().join("a.log");
        LogFile::open(&p, 1000, 1)
            .expect("open")
            .stamped("T".into(), "one")
            .expect("w");
        LogFile::open(&p, 1000, 1)
            .expect("open")
            .stamped("T".into(), "two")
            .expect("w");
        assert_eq!(tail(&p, 10), ["T one", "T two"]);
    }
}
