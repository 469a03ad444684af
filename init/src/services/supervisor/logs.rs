//! A service's output: every line of its stdout and stderr, stamped, kept in a bounded ring in
//! memory (for `ros service logs`) and in `<logs>/services/<name>.log`, rotated.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ros_logstore::LogFile;

use crate::platform::async_fd;

/// The ring keeps this many lines of a service.
pub const RING_LINES: usize = 1000;
const FILE_BYTES: u64 = 1 << 20;
const FILE_KEEP: u32 = 3;

#[derive(Debug)]
pub struct ServiceLog {
    ring: VecDeque<String>,
    file: Option<LogFile>,
}

pub type Shared = Arc<Mutex<ServiceLog>>;

impl ServiceLog {
    pub fn open(path: &Path) -> Shared {
        let file = LogFile::open(path, FILE_BYTES, FILE_KEEP)
            .map_err(|e| log::warn!("cannot open {}: {e}", path.display()))
            .ok();
        Arc::new(Mutex::new(ServiceLog {
            ring: VecDeque::new(),
            file,
        }))
    }

    pub fn push(&mut self, stream: &str, line: &str) {
        let time = ros_logstore::now_utc();
        let text = format!("{stream}: {line}");
        if let Some(f) = &mut self.file
            && let Err(e) = f.stamped(time.clone(), &text)
        {
            log::warn!("writing a service log: {e}");
            self.file = None;
        }
        self.ring.push_back(format!("{time} {text}"));
        while self.ring.len() > RING_LINES {
            self.ring.pop_front();
        }
    }

    pub fn tail(&self, n: usize) -> Vec<String> {
        self.ring
            .iter()
            .skip(self.ring.len().saturating_sub(n))
            .cloned()
            .collect()
    }
}

/// Reads `fd` (a pipe's read end) line by line into `log` until the writer side closes.
pub fn capture(fd: OwnedFd, stream: &'static str, log: Shared) {
    let Some(afd) = async_fd::register(fd) else {
        return;
    };
    tokio::spawn(async move {
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = match async_fd::read(&afd, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                if let Ok(mut l) = log.lock() {
                    l.push(
                        stream,
                        String::from_utf8_lossy(&line[..line.len() - 1]).trim_end_matches('\r'),
                    );
                }
            }
            // A line longer than the buffer is cut rather than held forever.
            if pending.len() > 16 * 1024 {
                if let Ok(mut l) = log.lock() {
                    l.push(stream, &String::from_utf8_lossy(&pending));
                }
                pending.clear();
            }
        }
        if !pending.is_empty()
            && let Ok(mut l) = log.lock()
        {
            l.push(stream, &String::from_utf8_lossy(&pending));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_bounded_and_the_file_written() {
        let tmp = tempfile::tempdir().expect("tmp");
        let log = ServiceLog::open(&tmp.path().join("s.log"));
        let mut l = log.lock().expect("lock");
        for i in 0..RING_LINES + 10 {
            l.push("out", &format!("line {i}"));
        }
        assert_eq!(l.ring.len(), RING_LINES);
        assert!(l.tail(1)[0].ends_with("out: line 1009"));
        let file = std::fs::read_to_string(tmp.path().join("s.log")).expect("file");
        assert!(
            file.lines()
                .last()
                .is_some_and(|x| x.ends_with("out: line 1009"))
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn captures_a_pipe_line_by_line() {
        let tmp = tempfile::tempdir().expect("tmp");
        let log = ServiceLog::open(&tmp.path().join("p.log"));
        let (r, w) = nix::unistd::pipe().expect("pipe");
        capture(r, "err", log.clone());
        nix::unistd::write(&w, b"one\ntwo\npartial").expect("write");
        drop(w);
        for _ in 0..100 {
            if log.lock().expect("lock").ring.len() == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let tail = log.lock().expect("lock").tail(3);
        assert!(
            tail[0].ends_with("err: one")
                && tail[1].ends_with("err: two")
                && tail[2].ends_with("err: partial"),
            "{tail:?}"
        );
    }
}
