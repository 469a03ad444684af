//! Containers' logs on the state disk, rotated as the kubelet rotates them
//! (`containerLogMaxSize`, `containerLogMaxFiles`): a run's log is `<restart>.log`; when a line
//! would take it past the size, it becomes `<restart>.log.1` (the older parts shifting to
//! `.2`, ... and the oldest removed) and a new `<restart>.log` begins. The reader that follows
//! a log (`kubectl logs -f`) finds its file again among the parts after a rotation, so no line
//! is skipped unless it was rotated away before it could be read.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// The kubelet's defaults.
pub const DEFAULT_MAX_SIZE: u64 = 10 << 20;
pub const DEFAULT_MAX_FILES: u32 = 5;

/// The run a log file of a container is of: `3.log` and its rotated parts `3.log.1`... are run
/// 3's; `current` only: `3.log` alone.
pub fn run_of(file_name: &str, current: bool) -> Option<u32> {
    let (n, rest) = file_name.split_once(".log")?;
    if current && !rest.is_empty() {
        return None;
    }
    n.parse().ok()
}

/// The path of rotated part `k` (1 the newest) of `log`.
pub fn part(log: &Path, k: u32) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(format!(".{k}"));
    PathBuf::from(s)
}

/// Appends lines to a log, rotating it.
#[derive(Debug)]
pub struct Writer {
    path: PathBuf,
    file: tokio::fs::File,
    size: u64,
    max_size: u64,
    max_files: u32,
}

impl Writer {
    pub async fn open(path: PathBuf, max_size: u64, max_files: u32) -> Result<Writer, String> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        Ok(Writer {
            path,
            file,
            size,
            max_size: max_size.max(1),
            max_files: max_files.max(1),
        })
    }

    /// Appends one whole line (rotating first if it would not fit).
    pub async fn write(&mut self, line: &[u8]) -> Result<(), String> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_size {
            self.rotate().await?;
        }
        self.file
            .write_all(line)
            .await
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        self.size += line.len() as u64;
        Ok(())
    }

    async fn rotate(&mut self) -> Result<(), String> {
        self.file.flush().await.map_err(|e| e.to_string())?;
        if self.max_files <= 1 {
            // One file only: it starts again empty.
            self.file.set_len(0).await.map_err(|e| e.to_string())?;
            self.size = 0;
            return Ok(());
        }
        let _ = tokio::fs::remove_file(part(&self.path, self.max_files - 1)).await;
        for k in (1..self.max_files - 1).rev() {
            let _ = tokio::fs::rename(part(&self.path, k), part(&self.path, k + 1)).await;
        }
        tokio::fs::rename(&self.path, part(&self.path, 1))
            .await
            .map_err(|e| format!("rotating {}: {e}", self.path.display()))?;
        *self = Writer::open(self.path.clone(), self.max_size, self.max_files).await?;
        Ok(())
    }
}

/// Follows a log from an offset: each [`Follower::more`] returns what was appended since, from
/// the file read so far and, after a rotation, from the parts that followed it.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    ino: Option<u64>,
    pos: u64,
}

async fn ino(p: &Path) -> Option<u64> {
    tokio::fs::metadata(p).await.ok().map(|m| m.ino())
}

async fn read_from(p: &Path, pos: u64) -> Option<String> {
    let mut f = tokio::fs::File::open(p).await.ok()?;
    f.seek(std::io::SeekFrom::Start(pos)).await.ok()?;
    let mut out = String::new();
    f.read_to_string(&mut out).await.ok()?;
    Some(out)
}

impl Follower {
    /// From `pos` in the file now at `path`.
    pub async fn new(path: PathBuf, pos: u64) -> Follower {
        let ino = ino(&path).await;
        Follower { path, ino, pos }
    }

    /// From `pos` in the file whose inode is `ino` (one the caller has open), wherever the
    /// rotation has put it since.
    pub fn at(path: PathBuf, ino: Option<u64>, pos: u64) -> Follower {
        Follower { path, ino, pos }
    }

    pub async fn more(&mut self) -> String {
        let now = ino(&self.path).await;
        if now.is_some() && now == self.ino {
            let out = read_from(&self.path, self.pos).await.unwrap_or_default();
            self.pos += out.len() as u64;
            return out;
        }
        // Rotated: the rest of the file read so far (now a part), then the newer parts, then
        // the new file from its start.
        let mut out = String::new();
        let mut newer: Vec<PathBuf> = vec![];
        for k in 1..64 {
            let p = part(&self.path, k);
            match ino(&p).await {
                Some(i) if Some(i) == self.ino => {
                    out.push_str(&read_from(&p, self.pos).await.unwrap_or_default());
                    break;
                }
                Some(_) => newer.push(p),
                None => break,
            }
        }
        for p in newer.iter().rev() {
            out.push_str(&read_from(p, 0).await.unwrap_or_default());
        }
        let rest = read_from(&self.path, 0).await.unwrap_or_default();
        self.pos = rest.len() as u64;
        self.ino = now;
        out.push_str(&rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn logs_rotate_keep_their_parts_and_are_followed_across() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log = dir.path().join("0.log");
        let mut w = Writer::open(log.clone(), 100, 3)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut f = Follower::new(log.clone(), 0).await;
        let line = |i: u32| format!("line {i:04} ..............................\n"); // 45 bytes
        let mut followed = String::new();
        for i in 0..4 {
            w.write(line(i).as_bytes())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        // 0.log.1 holds lines 0-1, 0.log lines 2-3: the follower reads on across.
        followed.push_str(&f.more().await);
        for i in 4..8 {
            w.write(line(i).as_bytes())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        // Two more rotations before the next read: the parts hold them still.
        followed.push_str(&f.more().await);
        let want: String = (0..8).map(line).collect();
        assert_eq!(followed, want);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["0.log", "0.log.1", "0.log.2"],
            "three files at most"
        );
        assert_eq!(
            std::fs::read_to_string(&log).unwrap_or_default(),
            format!("{}{}", line(6), line(7))
        );
        for i in 8..10 {
            w.write(line(i).as_bytes())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(f.more().await, format!("{}{}", line(8), line(9)));
    }
}
