//! The user-data sources and their precedence, booted in QEMU on both arches with real
//! artifacts: a NoCloud config drive (an ISO9660 volume labelled `cidata`, made with
//! genisoimage, its user-data gzip-compressed), QEMU fw_cfg, an HTTP metadata service on the
//! host, the kernel command line, and the
//! state disk's persisted config (set with `ros config set`, read at the next boot), and a
//! config baked into the image.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use ros_qemu::Guest;
use ros_tests::{Arch, READY_TIMEOUT, SshKey, config, free_port};
use serde_json::Value;

const SSH: std::time::Duration = std::time::Duration::from_secs(90);

/// A NoCloud seed ISO with `user-data` (gzip) and `meta-data`.
fn seed_iso(dir: &Path, user_data: &str, meta_data: &str) -> Result<std::path::PathBuf> {
    let src = dir.join("seed");
    std::fs::create_dir_all(&src)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(user_data.as_bytes())?;
    std::fs::write(src.join("user-data"), gz.finish()?)?;
    std::fs::write(src.join("meta-data"), meta_data)?;
    let iso = dir.join("seed.iso");
    let out = Command::new("genisoimage")
        .args(["-quiet", "-output"])
        .arg(&iso)
        .args(["-volid", "cidata", "-joliet", "-rock"])
        .arg(src.join("user-data"))
        .arg(src.join("meta-data"))
        .output()
        .context("genisoimage (apt-get install genisoimage)")?;
    ensure!(
        out.status.success(),
        "genisoimage: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(iso)
}

/// A NoCloud seed on vfat (`mkfs.vfat -n CIDATA`, files put in with mtools' `mcopy`).
fn seed_vfat(dir: &Path, user_data: &str, meta_data: &str) -> Result<std::path::PathBuf> {
    let img = dir.join("seed.vfat");
    std::fs::File::create(&img)?.set_len(8 << 20)?;
    let run = |cmd: &mut Command| -> Result<()> {
        let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
        ensure!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    run(Command::new("mkfs.vfat").args(["-n", "CIDATA"]).arg(&img))?;
    for (name, text) in [("user-data", user_data), ("meta-data", meta_data)] {
        let f = dir.join(name);
        std::fs::write(&f, text)?;
        run(Command::new("mcopy")
            .arg("-i")
            .arg(&img)
            .arg(&f)
            .arg(format!("::{name}")))?;
    }
    Ok(img)
}

/// A vfat config drive, as cloud-init also accepts.
fn nocloud_vfat(arch: Arch) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let img = seed_vfat(
        dir.path(),
        "hostname = \"from-vfat\"\n",
        "instance-id: iid-vfat\n",
    )?;
    let mut cfg = config(arch)?;
    cfg.disks = vec![img];
    let (mut g, r) = ros_tests::boot_ready(&cfg)?;
    ensure!(
        r["hostname"] == "from-vfat",
        "{} {:#}",
        r["hostname"],
        r["config_sources"]
    );
    ensure!(r["errors"] == serde_json::json!([]), "{:#}", r["errors"]);
    g.poweroff()?;
    Ok(())
}

fn sources_of(key: &SshKey, port: u16) -> Result<Value> {
    let out = key.run(port, "ros config sources -o json", SSH)?;
    serde_json::from_str(out.trim()).context(out)
}

fn source_of(sources: &Value, k: &str) -> String {
    sources["keys"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["key"] == k))
        .map(|x| x["source"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

fn precedence(arch: Arch) -> Result<()> {
    let key = SshKey::new()?;
    let dir = tempfile::tempdir()?;
    let iso = seed_iso(
        dir.path(),
        "hostname = \"from-nocloud\"\n[sysctl]\n\"vm.swappiness\" = 7\n\"vm.dirty_ratio\" = 21\n",
        "instance-id: iid-ros-1\nlocal-hostname: meta-host\n",
    )?;
    let disk = dir.path().join("state.img");
    ros_qemu::blank_disk(&disk, 256 << 20)?;
    let mut ud = tempfile::Builder::new().suffix(".toml").tempfile()?;
    writeln!(
        ud,
        "ssh_authorized_keys = [\"{}\"]\n[sysctl]\n\"vm.swappiness\" = 9",
        key.public
    )?;
    let port = free_port()?;
    let mut cfg = config(arch)?;
    cfg.user_data = Some(ud.path().to_path_buf());
    cfg.forwards = vec![(port, 22)];
    // The state disk first (vda), the config drive second.
    cfg.disks = vec![disk.clone(), iso.clone()];
    cfg.append = vec!["ros.sysctl.vm.dirty_background_ratio=6".into()];

    let mut g = Guest::spawn(&cfg)?;
    let r = g.wait_ready(READY_TIMEOUT)?;
    let ctx = format!("{:#}\n{}", r["config_sources"], g.tail(30));
    ensure!(r["config_errors"] == serde_json::json!([]), "{ctx}");
    // NoCloud's user-data (gzip) beats its meta-data's local-hostname.
    ensure!(r["hostname"] == "from-nocloud", "{ctx}");
    // fw_cfg beats NoCloud; NoCloud alone sets dirty_ratio; the command line its own key.
    ensure!(r["sysctl"]["vm.swappiness"] == "9", "{:#}", r["sysctl"]);
    ensure!(r["sysctl"]["vm.dirty_ratio"] == "21", "{:#}", r["sysctl"]);
    ensure!(
        r["sysctl"]["vm.dirty_background_ratio"] == "6",
        "{:#}",
        r["sysctl"]
    );
    let status = |name: &str| {
        r["config_sources"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["source"] == name))
            .map(|s| s["status"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    ensure!(status("nocloud:user-data") == "read", "{ctx}");
    ensure!(status("nocloud:meta-data") == "read", "{ctx}");

    // The persisted config sits below NoCloud: its hostname loses, its own key holds.
    key.run(
        port,
        "ros config set hostname from-state && ros config set sysctl.vm.overcommit_ratio 60",
        SSH,
    )?;
    let s = sources_of(&key, port)?;
    ensure!(source_of(&s, "hostname") == "nocloud:user-data", "{s:#}");
    ensure!(
        source_of(&s, "sysctl.vm.overcommit_ratio") == "state:/var/lib/ros/config/user-data.toml",
        "{s:#}"
    );
    ensure!(
        source_of(&s, "sysctl.vm.swappiness") == "fw_cfg:opt/ros/user-data",
        "{s:#}"
    );
    ensure!(
        source_of(&s, "sysctl.vm.dirty_background_ratio") == "cmdline",
        "{s:#}"
    );
    g.kill();
    drop(g);

    // Next boot, without the config drive: the persisted hostname now shows.
    cfg.disks = vec![disk];
    let mut g = Guest::spawn(&cfg)?;
    let r = g.wait_ready(READY_TIMEOUT)?;
    ensure!(r["hostname"] == "from-state", "{}", r["hostname"]);
    ensure!(
        r["sysctl"]["vm.overcommit_ratio"] == "60",
        "{:#}",
        r["sysctl"]
    );
    g.poweroff()?;
    Ok(())
}

/// A metadata service on the host (QEMU's user network shows the host as 10.0.2.2): it answers
/// 503 at first, then the user-data and the local hostname.
fn metadata_server() -> Result<u16> {
    use std::io::Read;
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for (i, s) in l.incoming().enumerate() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 2048];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = req
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            let (status, body) = if i < 2 {
                ("503 Busy", String::new())
            } else if path == "/latest/user-data" {
                (
                    "200 OK",
                    "[sysctl]\n\"vm.swappiness\" = 13\n\"vm.dirty_background_ratio\" = 8\n\
                     [network.interfaces.eth0]\n[network.interfaces.eth1]\naddresses = [\"192.168.80.10/24\"]\n"
                        .to_string(),
                )
            } else if path == "/latest/meta-data/local-hostname" {
                ("200 OK", "md-host\n".to_string())
            } else {
                ("404 Not Found", String::new())
            };
            let _ = write!(
                s,
                "HTTP/1.0 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(port)
}

fn metadata(arch: Arch) -> Result<()> {
    let port = metadata_server()?;
    let mut ud = tempfile::Builder::new().suffix(".toml").tempfile()?;
    writeln!(
        ud,
        "[sysctl]\n\"vm.swappiness\" = 9\n\"vm.dirty_ratio\" = 23"
    )?;
    let mut cfg = config(arch)?;
    cfg.user_data = Some(ud.path().to_path_buf());
    cfg.extra_nics.push(ros_qemu::Nic {
        mac: "52:54:00:12:34:58".into(),
        net: ros_qemu::NicNet::Isolated,
    });
    cfg.append = vec![
        format!("ros.datasource=http://10.0.2.2:{port}/"),
        "ros.sysctl.vm.dirty_background_ratio=5".into(),
    ];
    let (mut g, r) = ros_tests::boot_ready(&cfg)?;
    let ctx = format!(
        "{:#}\n{:#}\n{}",
        r["config_sources"],
        r["config_errors"],
        g.tail(30)
    );
    ensure!(r["config_errors"] == serde_json::json!([]), "{ctx}");
    // Its local-hostname names the machine (its user-data sets no hostname; NoCloud's test
    // shows a user-data's hostname winning over its meta-data's, the same code).
    ensure!(r["hostname"] == "md-host", "{ctx}");
    // It was read as a source of its own.
    let status_of = |name: &str| {
        r["config_sources"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["source"] == name))
            .map(|s| s["status"].clone())
    };
    ensure!(
        status_of("metadata:meta-data") == Some(serde_json::json!("read")),
        "{ctx}"
    );
    // Its network keys apply: eth1 gets its address; eth0, which it was read through and which
    // it names as set up already, keeps the lease it had before the service was read.
    let eth1 = ros_tests::interface(&r, "eth1").context("eth1")?;
    ensure!(
        ros_tests::strings(&eth1["addresses"]).contains(&"192.168.80.10/24".to_string()),
        "{eth1:#}\n{ctx}"
    );
    let eth0 = ros_tests::interface(&r, "eth0").context("eth0")?;
    let datasource_start = r["timeline"]
        .as_array()
        .and_then(|t| t.iter().find(|p| p["phase"] == "datasource"))
        .and_then(|p| p["start_ms"].as_u64())
        .context("datasource phase")?;
    ensure!(
        eth0["config"] == "eth0"
            && eth0["dhcp"]["acquired_ms"]
                .as_u64()
                .is_some_and(|a| a < datasource_start),
        "{eth0:#}\n{ctx}"
    );
    ensure!(r["sysctl"]["vm.swappiness"] == "13", "{:#}", r["sysctl"]);
    ensure!(r["sysctl"]["vm.dirty_ratio"] == "23", "{:#}", r["sysctl"]);
    ensure!(
        r["sysctl"]["vm.dirty_background_ratio"] == "5",
        "{:#}",
        r["sysctl"]
    );
    ensure!(
        r["timeline"]
            .as_array()
            .is_some_and(|t| t.iter().any(|p| p["phase"] == "datasource")),
        "{ctx}"
    );
    g.poweroff()?;
    drop(g);

    // Nobody answers: the boot goes on after the deadline, and says why.
    cfg.append = vec![
        "ros.datasource=http://10.0.2.2:9/".into(),
        "ros.datasource.timeout=2s".into(),
    ];
    let (mut g, r) = ros_tests::boot_ready(&cfg)?;
    let failed = r["config_sources"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["source"] == "metadata:user-data"))
        .map(|s| s["status"].clone());
    ensure!(
        failed == Some(serde_json::json!("failed")),
        "{:#}",
        r["config_sources"]
    );
    ensure!(
        r["config_errors"].to_string().contains("deadline"),
        "{:#}",
        r["config_errors"]
    );
    ensure!(r["sysctl"]["vm.swappiness"] == "9", "fw_cfg still applies");
    g.poweroff()?;
    Ok(())
}

/// An image with a baked config (`ros-image build --user-data`): the lowest source, which the
/// command line still overrides.
fn baked(arch: Arch) -> Result<()> {
    let base = ros_tests::image(arch)?;
    let out = base.with_file_name(format!("{}-baked", arch.name()));
    let dir = tempfile::tempdir()?;
    let ud = dir.path().join("baked.toml");
    std::fs::write(
        &ud,
        "hostname = \"baked-host\"\n[sysctl]\n\"vm.swappiness\" = 11\n\"vm.dirty_ratio\" = 22\n",
    )?;
    ros_image::build(&ros_image::BuildOptions {
        arch,
        out: out.clone(),
        refresh_kernel: false,
        init: ros_image::InitKind::Ros,
        quiet: true,
        layer_store: ros_image::images::LayerStore::Tree,
        user_data: Some(ud),
    })?;
    let mut cfg = config(arch)?;
    cfg.image = out;
    cfg.append = vec!["ros.sysctl.vm.swappiness=12".into()];
    let (mut g, r) = ros_tests::boot_ready(&cfg)?;
    ensure!(r["hostname"] == "baked-host", "{}", r["hostname"]);
    ensure!(r["sysctl"]["vm.dirty_ratio"] == "22", "{:#}", r["sysctl"]);
    ensure!(r["sysctl"]["vm.swappiness"] == "12", "{:#}", r["sysctl"]);
    ensure!(
        r["config_sources"][0]
            == serde_json::json!({"source": "image:/usr/lib/ros/user-data.toml", "status": "read"}),
        "{:#}",
        r["config_sources"]
    );
    g.poweroff()?;
    Ok(())
}

/// An ISO labelled `cidata` (Rock Ridge, so links and FIFOs are kept) of the folder `src`.
fn iso_of(src: &Path, out: &Path) -> Result<()> {
    let o = Command::new("genisoimage")
        .args(["-quiet", "-output"])
        .arg(out)
        .args(["-volid", "cidata", "-rock"])
        .arg(src)
        .output()
        .context("genisoimage")?;
    ensure!(
        o.status.success(),
        "genisoimage: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

/// Crafted drives: a user-data that is a symlink to /dev/zero and a meta-data that is a FIFO
/// (neither followed nor read), then a 100 MB user-data (refused by its size, not read): the
/// boot reaches its ready line as usual and says what it refused.
fn nocloud_hostile(arch: Arch) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("links");
    std::fs::create_dir_all(&src)?;
    std::os::unix::fs::symlink("/dev/zero", src.join("user-data"))?;
    nix::unistd::mkfifo(
        &src.join("meta-data"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )?;
    let iso = dir.path().join("links.iso");
    iso_of(&src, &iso)?;
    let mut cfg = config(arch)?;
    cfg.disks = vec![iso];
    let (g, r) = ros_tests::boot_ready(&cfg)?;
    let errors = ros_tests::strings(&r["errors"]);
    ensure!(
        errors
            .iter()
            .any(|e| e.contains("user-data on /dev/vd") && e.contains("symbolic link")),
        "{errors:?}"
    );
    ensure!(
        errors
            .iter()
            .any(|e| e.contains("meta-data on /dev/vd") && e.contains("not a regular file")),
        "{errors:?}"
    );
    drop(g);

    let big = dir.path().join("big");
    std::fs::create_dir_all(&big)?;
    let mut f = std::fs::File::create(big.join("user-data"))?;
    let line = b"# padding\n";
    for _ in 0..(100 << 20) / line.len() {
        f.write_all(line)?;
    }
    drop(f);
    std::fs::write(big.join("meta-data"), "local-hostname: big-drive\n")?;
    let iso = dir.path().join("big.iso");
    iso_of(&big, &iso)?;
    cfg.disks = vec![iso];
    let (_g, r) = ros_tests::boot_ready(&cfg)?;
    let errors = ros_tests::strings(&r["errors"]);
    ensure!(
        errors
            .iter()
            .any(|e| e.contains("user-data on /dev/vd") && e.contains("at most 1024 KiB")),
        "{errors:?}"
    );
    // The meta-data beside it still counts.
    ensure!(r["hostname"] == "big-drive", "{}", r["hostname"]);
    Ok(())
}

mod x86_64 {
    #[test]
    fn nocloud_hostile() -> anyhow::Result<()> {
        super::nocloud_hostile(super::Arch::X86_64)
    }
    #[test]
    fn precedence() -> anyhow::Result<()> {
        super::precedence(super::Arch::X86_64)
    }
    #[test]
    fn baked() -> anyhow::Result<()> {
        super::baked(super::Arch::X86_64)
    }
    #[test]
    fn metadata() -> anyhow::Result<()> {
        super::metadata(super::Arch::X86_64)
    }
    #[test]
    fn nocloud_vfat() -> anyhow::Result<()> {
        super::nocloud_vfat(super::Arch::X86_64)
    }
}

mod aarch64 {
    #[test]
    fn nocloud_hostile() -> anyhow::Result<()> {
        super::nocloud_hostile(super::Arch::Aarch64)
    }
    #[test]
    fn precedence() -> anyhow::Result<()> {
        super::precedence(super::Arch::Aarch64)
    }
    #[test]
    fn baked() -> anyhow::Result<()> {
        super::baked(super::Arch::Aarch64)
    }
    #[test]
    fn metadata() -> anyhow::Result<()> {
        super::metadata(super::Arch::Aarch64)
    }
    #[test]
    fn nocloud_vfat() -> anyhow::Result<()> {
        super::nocloud_vfat(super::Arch::Aarch64)
    }
}
