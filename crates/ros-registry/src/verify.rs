//! A reader that hashes and counts what passes through it, so a blob is checked against its
//! descriptor while it streams: more bytes than the size is an error at once, a wrong digest or
//! a short body at the end.

use std::io::{self, Read};

use sha2::Digest as _;

use crate::reference::{Digest, hex};

enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(algorithm: &str) -> Hasher {
        if algorithm == "sha512" {
            Hasher::Sha512(sha2::Sha512::new())
        } else {
            Hasher::Sha256(sha2::Sha256::new())
        }
    }

    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }

    fn hex(self) -> String {
        match self {
            Hasher::Sha256(h) => hex(&h.finalize()),
            Hasher::Sha512(h) => hex(&h.finalize()),
        }
    }
}

/// Counts and hashes; `limit` bytes at most (more is an `InvalidData` error).
pub struct Verified<'a, R> {
    inner: R,
    hasher: Hasher,
    algorithm: String,
    count: u64,
    limit: Option<u64>,
    progress: Option<Box<dyn FnMut(u64) + 'a>>,
    reported: u64,
}

impl<R> std::fmt::Debug for Verified<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified")
            .field("algorithm", &self.algorithm)
            .field("count", &self.count)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// How often progress is reported, in bytes.
const PROGRESS_STEP: u64 = 1 << 20;

impl<'a, R: Read> Verified<'a, R> {
    pub fn new(inner: R, algorithm: &str, limit: Option<u64>) -> Self {
        Verified {
            inner,
            hasher: Hasher::new(algorithm),
            algorithm: algorithm.to_string(),
            count: 0,
            limit,
            progress: None,
            reported: 0,
        }
    }

    /// Calls `f` with the bytes read so far, every MiB and at the end.
    pub fn with_progress(mut self, f: impl FnMut(u64) + 'a) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// Reads what is left (a decompressor may stop before its input's end), then checks.
    pub fn finish(mut self, expected: &Digest, size: Option<u64>) -> Result<(), String> {
        io::copy(&mut self, &mut io::sink()).map_err(|e| format!("reading {expected}: {e}"))?;
        if let Some(p) = self.progress.as_mut() {
            p(self.count);
        }
        if let Some(s) = size
            && s != self.count
        {
            return Err(format!(
                "{expected}: {} bytes arrived, its descriptor says {s}",
                self.count
            ));
        }
        let got = self.hasher.hex();
        if expected.algorithm != self.algorithm || got != expected.hex {
            return Err(format!(
                "digest mismatch: expected {expected}, the content is {}:{got}",
                self.algorithm
            ));
        }
        Ok(())
    }

    /// The digest of what was read (for diff_ids, known only at the end).
    pub fn digest(self) -> Digest {
        Digest {
            algorithm: self.algorithm,
            hex: self.hasher.hex(),
        }
    }
}

impl<R: Read> Read for Verified<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if let Some(l) = self.limit
            && self.count > l
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than the {l} bytes the descriptor says"),
            ));
        }
        self.hasher.update(&buf[..n]);
        if self.count - self.reported >= PROGRESS_STEP
            && let Some(p) = self.progress.as_mut()
        {
            self.reported = self.count;
            p(self.count);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_and_digest_are_both_checked() {
        let data = b"hello world".to_vec();
        let d = Digest::sha256_of(&data);
        Verified::new(&data[..], "sha256", Some(11))
            .finish(&d, Some(11))
            .unwrap();
        let e = Verified::new(&b"hello worle"[..], "sha256", Some(11))
            .finish(&d, Some(11))
            .unwrap_err();
        assert!(e.contains("digest mismatch"), "{e}");
        let e = Verified::new(&data[..], "sha256", Some(5))
            .finish(&d, Some(5))
            .unwrap_err();
        assert!(e.contains("more than the 5 bytes"), "{e}");
        let e = Verified::new(&b"hello"[..], "sha256", Some(11))
            .finish(&d, Some(11))
            .unwrap_err();
        assert!(e.contains("5 bytes arrived"), "{e}");
    }
}
