//! The log streams: the init's own log (its ring in memory) and a service's log file, each its
//! last lines, then (followed) what comes, until the client goes away.

use std::path::Path;
use std::time::Duration;

use ros_api::{Reply, Response};

use super::super::Ctx;
use super::services::find;
use crate::api::transport::Writer;
use crate::boot::main_loop::ToMain;

const POLL: Duration = Duration::from_millis(250);

async fn lines(w: &mut Writer, lines: impl IntoIterator<Item = String>) -> bool {
    for l in lines {
        if !w
            .send(&Reply::Line {
                line: l.trim_end().to_string(),
            })
            .await
        {
            return false;
        }
    }
    true
}

/// The last `n` lines of the init's log, then (`follow`) each new one.
pub async fn init(w: &mut Writer, n: usize, follow: bool) {
    let (all, mut seq) = crate::platform::logger::since(0);
    let skip = all.len().saturating_sub(n);
    if !lines(w, all.into_iter().skip(skip)).await {
        return;
    }
    if !follow {
        let _ = w.send(&Reply::ok(Response::End)).await;
        return;
    }
    loop {
        tokio::time::sleep(POLL).await;
        let (new, next) = crate::platform::logger::since(seq);
        seq = next;
        if !lines(w, new).await {
            return;
        }
    }
}

/// A service's log file: its last `n` lines, then (`follow`) what is appended (a rotation,
/// seen as the file getting shorter, starts over at the new file's beginning).
pub async fn service(w: &mut Writer, ctx: &Ctx, name: &str, n: usize, follow: bool) {
    match ctx.ask(ToMain::Services).await {
        Ok(list) => {
            if let Err(r) = find(&list, name) {
                let _ = w.send(&r).await;
                return;
            }
        }
        Err(e) => {
            let _ = w.send(&crate::api::route::failed(e)).await;
            return;
        }
    }
    let path = ros_api::paths::service_log(name);
    if !lines(w, ros_logstore::tail(&path, n)).await {
        return;
    }
    if !follow {
        let _ = w.send(&Reply::ok(Response::End)).await;
        return;
    }
    let mut pos = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut partial = String::new();
    loop {
        tokio::time::sleep(POLL).await;
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < pos {
            pos = 0;
        }
        if len == pos {
            continue;
        }
        let Ok(chunk) = read_range(&path, pos, len) else {
            continue;
        };
        pos += chunk.len() as u64;
        partial.push_str(&String::from_utf8_lossy(&chunk));
        let mut complete = Vec::new();
        while let Some(i) = partial.find('\n') {
            complete.push(partial.drain(..=i).collect::<String>());
        }
        if !lines(w, complete).await {
            return;
        }
    }
}

/// At most 1 MiB of `path` from `from` on (a large append is sent in several turns).
fn read_range(path: &Path, from: u64, to: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(from))?;
    let mut buf = vec![0; usize::try_from(to - from).unwrap_or(0).min(1 << 20)];
    let n = f.read(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}
