//! What the host tests share: a server started on a free loopback port with its admin
//! kubeconfig beside its data, and kubectl (a version from the Google Cloud SDK's folder) run
//! against a kubeconfig with its own HOME.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const SDK_BIN: &str = "/usr/lib/google-cloud-sdk/bin";

/// Starts the server of `cfg` on its own runtime; the runtime, the address, and an admin
/// kubeconfig written in `dir`.
pub fn server(
    cfg: &ros_kube::server::Config,
    dir: &Path,
) -> (tokio::runtime::Runtime, std::net::SocketAddr, PathBuf) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let running = rt.block_on(ros_kube::server::start(cfg)).unwrap();
    let pki = ros_kube::pki::Pki::open(&cfg.data_dir.join("pki")).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        pki.kubeconfig(&format!("https://{}", running.addr))
            .unwrap(),
    )
    .unwrap();
    (rt, running.addr, kubeconfig)
}

/// kubectl `version` (e.g. "1.32") with `args`, `stdin` if any.
pub fn kubectl(
    version: &str,
    kubeconfig: &Path,
    home: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Output {
    let bin = Path::new(SDK_BIN).join(format!("kubectl.{version}"));
    assert!(bin.exists(), "{} is missing", bin.display());
    // The kubeconfig first: `args` may end with `-- COMMAND...`.
    let mut child = Command::new(bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env("HOME", home)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}
