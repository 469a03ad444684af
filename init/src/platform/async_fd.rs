//! Reading pipes and devices on the init's event loop: a descriptor made nonblocking and
//! registered with tokio, and a read that waits for it without blocking the loop.

use std::os::fd::OwnedFd;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::unix::AsyncFd;

/// `fd`, nonblocking, registered with the event loop (None when it cannot be).
/// O_NONBLOCK is a flag of the open file, shared with every duplicate of `fd`.
pub fn register(fd: OwnedFd) -> Option<AsyncFd<OwnedFd>> {
    let flags = fcntl(&fd, FcntlArg::F_GETFL).ok()?;
    fcntl(
        &fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .ok()?;
    // SAFETY: the OwnedFd keeps its descriptor open and unchanged for the AsyncFd's life.
    unsafe { AsyncFd::register(fd) }.ok()
}

/// Reads what is there once `fd` is readable; `Ok(0)` is end of file.
pub async fn read(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        if let Ok(r) =
            guard.try_io(|f| nix::unistd::read(f.get_ref(), buf).map_err(std::io::Error::from))
        {
            return r;
        }
    }
}

/// Everything until end of file (at most `cap` bytes kept), as text.
pub async fn read_to_end(fd: OwnedFd, cap: usize) -> String {
    let Some(afd) = register(fd) else {
        return "cannot watch the descriptor".into();
    };
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match read(&afd, &mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                let room = cap.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) => {
                out.extend_from_slice(format!(" (reading: {e})").as_bytes());
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn reads_to_the_end_and_caps() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let task = tokio::spawn(read_to_end(r, 5));
        tokio::task::yield_now().await;
        nix::unistd::write(&w, b"abc").expect("write");
        tokio::task::yield_now().await;
        nix::unistd::write(&w, b"defgh").expect("write");
        drop(w);
        assert_eq!(task.await.expect("task"), "abcde");
    }
}
