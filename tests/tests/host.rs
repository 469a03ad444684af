//! The user-data keys that act on the host, booted in QEMU on both arches: `write_files`
//! (plain and base64), `environment` for every service, `bootcmd` before the other services
//! (writing through the host's root at /host) and `runcmd` once the system services run; the
//! `console` table.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use ros_tests::{Arch, config, free_port};

const WAIT: Duration = Duration::from_secs(90);

const USER_DATA: &str = r#"
bootcmd = [
  "echo bootcmd-ran $GREETING >> /host/etc/ros-test/index.html",
  ["sh", "-c", "exit 3"],
  "echo after-a-failure >> /host/etc/ros-test/index.html",
]
runcmd = ["echo runcmd-ran > /host/etc/ros-test/late.txt"]

[environment]
GREETING = "hello-env"

[[write_files]]
path = "/etc/ros-test/index.html"
content = "written\n"

[[write_files]]
path = "/etc/ros-test/b64.txt"
content = "ZnJvbSBiYXNlNjQK"
encoding = "base64"
permissions = "0600"

[services.web]
image = "busybox"
command = ["sh", "-c", "echo env=$GREETING > /data/env.txt && exec httpd -f -p 8080 -h /data"]
volumes = ["/etc/ros-test:/data"]
host_namespaces = ["net"]
"#;

fn host_keys(arch: Arch) -> Result<()> {
    let mut ud = tempfile::Builder::new().suffix(".toml").tempfile()?;
    ud.write_all(USER_DATA.as_bytes())?;
    let port = free_port()?;
    let mut cfg = config(arch)?;
    cfg.user_data = Some(ud.path().to_path_buf());
    cfg.forwards = vec![(port, 8080)];
    let (mut g, r) = ros_tests::boot_ready(&cfg)?;
    ensure!(
        r["config_errors"] == serde_json::json!([]),
        "{:#}",
        r["config_errors"]
    );
    ensure!(r["errors"] == serde_json::json!([]), "{:#}", r["errors"]);
    let index = ros_tests::http_get_path(port, "/index.html", WAIT)?;
    // write_files first, then every bootcmd line (a failing one does not stop the rest), all
    // before the web service started.
    ensure!(
        index == "written\nbootcmd-ran hello-env\nafter-a-failure\n",
        "{index:?}"
    );
    ensure!(ros_tests::http_get_path(port, "/b64.txt", WAIT)? == "from base64\n");
    ensure!(ros_tests::http_get_path(port, "/env.txt", WAIT)? == "env=hello-env\n");
    let late = ros_tests::http_get_path(port, "/late.txt", WAIT).context("runcmd")?;
    ensure!(late == "runcmd-ran\n", "{late:?}");
    g.wait_for("service runcmd completed", WAIT)?;
    g.poweroff()?;
    Ok(())
}

/// The `console` table: SSH on another port, and a console whose files outlive a hard
/// power-off (its writable layer on the state disk).
fn console_settings(arch: Arch) -> Result<()> {
    let key = ros_tests::SshKey::new()?;
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("state.img");
    ros_qemu::blank_disk(&disk, 256 << 20)?;
    let mut ud = tempfile::Builder::new().suffix(".toml").tempfile()?;
    writeln!(
        ud,
        "ssh_authorized_keys = [\"{}\"]\n[console]\nssh_port = 2200\npersistent = true",
        key.public
    )?;
    let port = free_port()?;
    let mut cfg = config(arch)?;
    cfg.user_data = Some(ud.path().to_path_buf());
    cfg.forwards = vec![(port, 2200)];
    cfg.disks = vec![disk];
    let mut g = ros_qemu::Guest::spawn(&cfg)?;
    g.wait_ready(ros_tests::READY_TIMEOUT)?;
    key.run(port, "echo kept > /root/kept && sync", WAIT)?;
    g.kill();
    drop(g);
    let mut g = ros_qemu::Guest::spawn(&cfg)?;
    g.wait_ready(ros_tests::READY_TIMEOUT)?;
    let out = key.run(port, "cat /root/kept", WAIT)?;
    ensure!(out.trim() == "kept", "{out}");
    g.poweroff()?;
    Ok(())
}

mod x86_64 {
    #[test]
    fn host_keys() -> anyhow::Result<()> {
        super::host_keys(super::Arch::X86_64)
    }
    #[test]
    fn console_settings() -> anyhow::Result<()> {
        super::console_settings(super::Arch::X86_64)
    }
}

mod aarch64 {
    #[test]
    fn host_keys() -> anyhow::Result<()> {
        super::host_keys(super::Arch::Aarch64)
    }
    #[test]
    fn console_settings() -> anyhow::Result<()> {
        super::console_settings(super::Arch::Aarch64)
    }
}
