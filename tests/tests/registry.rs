//! The registry client against the real thing: Debian's `docker-registry` on the loopback,
//! images built here as OCI layouts and pushed with `skopeo copy`; pulled into a store on the
//! host with `ros_registry`, as the guest's `ros-pull` does.

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use anyhow::Result;
use ros_registry::client::{HostConfig, Mirror, PullError, Registries};
use ros_registry::manifest::Platform;
use ros_registry::pull::{Event, pull};
use ros_registry::{Client, Reference, Store};
use ros_tests::registry::{Comp, Layout, Registry, RegistryOptions};

/// The library's errors are text.
trait Text<T> {
    fn s(self) -> Result<T>;
}

impl<T> Text<T> for std::result::Result<T, String> {
    fn s(self) -> Result<T> {
        self.map_err(anyhow::Error::msg)
    }
}

fn platform(arch: &str) -> Platform {
    Platform {
        architecture: arch.into(),
        os: "linux".into(),
        variant: None,
    }
}

/// A plain-HTTP registry is used only where the config says so: a mirror entry for itself.
fn http(reg: &Registry) -> Registries {
    let mut r = Registries::default();
    r.mirrors.insert(
        reg.host(),
        Mirror {
            endpoints: vec![format!("http://{}", reg.host())],
        },
    );
    r
}

/// Two layers (gzip, then uncompressed) where the second deletes a file of the first.
fn two_layer_image(
    l: &mut Layout,
    arch: &str,
    marker: &[u8],
) -> Result<ros_tests::registry::Built> {
    let base = Layout::tar(&[
        ("bin/", 0o755, b""),
        ("bin/sh", 0o755, b"#!/bin/true\n"),
        ("etc/", 0o755, b""),
        ("etc/old", 0o644, b"gone in the next layer"),
        ("etc/arch", 0o644, marker),
        ("lib", 0o777, b"->bin"),
    ])?;
    let top = Layout::tar(&[
        ("etc/", 0o755, b""),
        ("etc/.wh.old", 0o644, b""),
        ("etc/new", 0o600, b"top"),
    ])?;
    l.image(arch, &[(base, Comp::Gzip), (top, Comp::None)])
}

/// A registry serving `two_layer_image` (amd64, with `marker`) as `NAME:1`; and the temporary
/// folder the test keeps its layout and store in.
fn served(
    o: &RegistryOptions,
    name: &str,
    marker: &[u8],
) -> Result<(Registry, tempfile::TempDir, ros_tests::registry::Built)> {
    let reg = Registry::start(o)?;
    let t = tempfile::tempdir()?;
    let mut l = Layout::new(&t.path().join("oci"))?;
    let img = two_layer_image(&mut l, "amd64", marker)?;
    l.tag_image("1", &img, "amd64")?;
    reg.push(&l.dir, "1", name)?;
    Ok((reg, t, img))
}

fn pull_quiet(
    c: &Client,
    s: &Store,
    r: &str,
    arch: &str,
) -> Result<ros_registry::ImageRecord, PullError> {
    let r = Reference::parse(r).map_err(PullError::Invalid)?;
    pull(c, s, &r, &platform(arch), &mut |_| {})
}

#[test]
fn by_tag_and_by_digest_with_whiteouts_and_shared_layers() -> Result<()> {
    let (reg, t, img) = served(&RegistryOptions::default(), "hello", b"amd64")?;

    let store = Store::open(&t.path().join("store")).s()?;
    let client = Client::new(http(&reg));
    let mut events = Vec::new();
    let rec = pull(
        &client,
        &store,
        &Reference::parse(&format!("{}/hello:1", reg.host())).s()?,
        &platform("amd64"),
        &mut |e| events.push(e),
    )?;
    assert_eq!(rec.manifest, img.manifest);
    assert_eq!(rec.layers, img.diff_ids);
    assert!(
        matches!(
            &events[0],
            Event::Resolved {
                layers: 2,
                missing: 2,
                ..
            }
        ),
        "{events:?}"
    );
    let base = store.layer_path(&ros_registry::Digest::parse(&img.diff_ids[0]).s()?);
    let top = store.layer_path(&ros_registry::Digest::parse(&img.diff_ids[1]).s()?);
    assert_eq!(std::fs::read(base.join("etc/arch"))?, b"amd64");
    assert_eq!(
        std::fs::read_link(base.join("lib"))?,
        std::path::Path::new("bin")
    );
    let wh = std::fs::symlink_metadata(top.join("etc/old"))?;
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "the whiteout is overlayfs's"
    );
    assert_eq!(
        std::fs::metadata(top.join("etc/new"))?.mode() & 0o777,
        0o600
    );

    // By digest: the same image, nothing fetched again.
    let by_digest = format!("{}/hello@{}", reg.host(), img.manifest);
    let mut missing = None;
    let rec2 = pull(
        &client,
        &store,
        &Reference::parse(&by_digest).s()?,
        &platform("amd64"),
        &mut |e| {
            if let Event::Resolved { missing: m, .. } = e {
                missing = Some(m);
            }
        },
    )?;
    assert_eq!(rec2.manifest, img.manifest);
    assert_eq!(missing, Some(0), "shared layers are kept once");
    assert_eq!(store.refs().len(), 2);

    // Removing one reference keeps what the other names; removing both frees it all.
    store
        .remove_ref(
            &Reference::parse(&format!("{}/hello:1", reg.host()))
                .s()?
                .to_string(),
        )
        .s()?;
    assert_eq!(store.gc(&[]).s()?, (0, 0));
    store
        .remove_ref(&Reference::parse(&by_digest).s()?.to_string())
        .s()?;
    assert_eq!(store.gc(&[]).s()?, (2, 2));
    Ok(())
}

#[test]
fn an_index_resolves_to_the_machines_platform() -> Result<()> {
    let reg = Registry::start(&RegistryOptions::default())?;
    let t = tempfile::tempdir()?;
    let mut l = Layout::new(&t.path().join("oci"))?;
    let amd = two_layer_image(&mut l, "amd64", b"amd64")?;
    let arm = two_layer_image(&mut l, "arm64", b"arm64")?;
    let index = l.tag_index("multi", &[("amd64", &amd), ("arm64", &arm)])?;
    reg.push(&l.dir, "multi", "hello")?;

    let store = Store::open(&t.path().join("store")).s()?;
    let client = Client::new(http(&reg));
    let r = format!("{}/hello:multi", reg.host());
    let rec = pull_quiet(&client, &store, &r, "arm64")?;
    assert_eq!(
        rec.manifest, arm.manifest,
        "the arm64 guest gets the arm64 image"
    );
    assert_eq!(rec.index.as_deref(), Some(index.as_str()));
    let base = store.layer_path(&ros_registry::Digest::parse(&arm.diff_ids[0]).s()?);
    assert_eq!(std::fs::read(base.join("etc/arch"))?, b"arm64");
    let e = pull_quiet(&client, &store, &r, "riscv64").unwrap_err();
    assert!(
        matches!(&e, PullError::NotFound(m) if m.contains("no image for linux/riscv64") && m.contains("linux/arm64/v8")),
        "{e}"
    );
    Ok(())
}

#[test]
fn tls_with_a_registry_ca_and_htpasswd() -> Result<()> {
    let creds = ("ros".to_string(), "s3cret".to_string());
    let opts = RegistryOptions {
        tls: true,
        creds: Some(creds.clone()),
        ..Default::default()
    };
    let (reg, t, img) = served(&opts, "private/hello", b"x")?;
    let store = Store::open(&t.path().join("store")).s()?;
    let r = format!("{}/private/hello:1", reg.host());
    let cfg = |user: Option<&str>, pass: &str, ca: bool| {
        let mut c = Registries::default();
        c.configs.insert(
            reg.host(),
            HostConfig {
                username: user.map(Into::into),
                password: user.map(|_| pass.to_string()),
                ca: ca.then(|| reg.ca.clone().unwrap_or_default()),
                ..Default::default()
            },
        );
        c
    };

    let rec = pull_quiet(
        &Client::new(cfg(Some("ros"), "s3cret", true)),
        &store,
        &r,
        "amd64",
    )?;
    assert_eq!(rec.manifest, img.manifest);

    let e = pull_quiet(
        &Client::new(cfg(Some("ros"), "wrong", true)),
        &store,
        &r,
        "amd64",
    )
    .unwrap_err();
    assert!(
        matches!(&e, PullError::Auth(m) if m.contains("credentials were refused") && m.contains(&reg.host())),
        "{e}"
    );
    let e = pull_quiet(&Client::new(cfg(None, "", true)), &store, &r, "amd64").unwrap_err();
    assert!(
        matches!(&e, PullError::Auth(m) if m.contains("asks for a username and password")),
        "{e}"
    );
    // Without the CA, the built-in roots do not know the test CA.
    let e = pull_quiet(
        &Client::new(cfg(Some("ros"), "s3cret", false)),
        &store,
        &r,
        "amd64",
    )
    .unwrap_err();
    assert!(e.to_string().contains("TLS with"), "{e}");
    Ok(())
}

#[test]
fn bearer_tokens_from_the_registrys_token_service() -> Result<()> {
    let creds = ("ros".to_string(), "t0ken-pass".to_string());
    let opts = RegistryOptions {
        creds: Some(creds.clone()),
        token: true,
        ..Default::default()
    };
    let (reg, t, img) = served(&opts, "team/hello", b"bearer")?;
    let store = Store::open(&t.path().join("store")).s()?;
    let r = format!("{}/team/hello:1", reg.host());
    let cfg = |user: Option<&str>, pass: &str| {
        let mut c = http(&reg);
        c.configs.insert(
            reg.host(),
            HostConfig {
                username: user.map(Into::into),
                password: user.map(|_| pass.to_string()),
                ..Default::default()
            },
        );
        c
    };
    let service = reg.token.as_ref().expect("a token service");
    let asked = |n: usize| n < service.requests.load(std::sync::atomic::Ordering::Relaxed);

    let before = service.requests.load(std::sync::atomic::Ordering::Relaxed);
    let rec = pull_quiet(
        &Client::new(cfg(Some("ros"), "t0ken-pass")),
        &store,
        &r,
        "amd64",
    )?;
    assert_eq!(rec.manifest, img.manifest);
    assert!(asked(before), "the pull went through the token service");
    let base = store.layer_path(&ros_registry::Digest::parse(&img.diff_ids[0]).s()?);
    assert_eq!(std::fs::read(base.join("etc/arch"))?, b"bearer");

    let e = pull_quiet(&Client::new(cfg(Some("ros"), "wrong")), &store, &r, "amd64").unwrap_err();
    assert!(
        matches!(&e, PullError::Auth(m) if m.contains("token service") && m.contains("refused the credentials") && m.contains(&reg.host())),
        "{e}"
    );
    // Anonymous: the service hands out a token that grants nothing, and the registry says no.
    let e = pull_quiet(&Client::new(cfg(None, "")), &store, &r, "amd64").unwrap_err();
    assert!(
        matches!(&e, PullError::Auth(m) if m.contains("anonymous pull was refused")),
        "{e}"
    );
    Ok(())
}

#[test]
fn zstd_layers_are_unpacked() -> Result<()> {
    let reg = Registry::start(&RegistryOptions::default())?;
    let t = tempfile::tempdir()?;
    let mut l = Layout::new(&t.path().join("oci"))?;
    let big: Vec<u8> = (0..300_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    let base = Layout::tar(&[
        ("usr/", 0o755, b""),
        ("usr/data", 0o644, &big),
        ("usr/zst", 0o644, b"zstd layer"),
    ])?;
    let top = Layout::tar(&[("usr/", 0o755, b""), ("usr/.wh.zst", 0o644, b"")])?;
    let img = l.image("amd64", &[(base, Comp::Zstd), (top, Comp::Zstd)])?;
    l.tag_image("1", &img, "amd64")?;
    reg.push(&l.dir, "1", "zst")?;
    let store = Store::open(&t.path().join("store")).s()?;
    let rec = pull_quiet(
        &Client::new(http(&reg)),
        &store,
        &format!("{}/zst:1", reg.host()),
        "amd64",
    )?;
    assert_eq!(rec.layers, img.diff_ids);
    let base = store.layer_path(&ros_registry::Digest::parse(&img.diff_ids[0]).s()?);
    assert_eq!(std::fs::read(base.join("usr/data"))?, big);
    let top = store.layer_path(&ros_registry::Digest::parse(&img.diff_ids[1]).s()?);
    assert!(
        std::fs::symlink_metadata(top.join("usr/zst"))?
            .file_type()
            .is_char_device()
    );
    Ok(())
}

/// Bytes gzip cannot shrink (xorshift).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// A tmpfs mounted for a test, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &std::path::Path, size: &str) -> Result<SmallDisk> {
        std::fs::create_dir_all(at)?;
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0700").as_str()),
        )?;
        Ok(SmallDisk(at.to_path_buf()))
    }

    fn resize(&self, size: &str) -> Result<()> {
        nix::mount::mount(
            None::<&str>,
            &self.0,
            None::<&str>,
            nix::mount::MsFlags::MS_REMOUNT,
            Some(format!("size={size}").as_str()),
        )?;
        Ok(())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_full_disk_is_a_clear_error_and_the_store_stays_consistent() -> Result<()> {
    let reg = Registry::start(&RegistryOptions::default())?;
    let t = tempfile::tempdir()?;
    let mut l = Layout::new(&t.path().join("oci"))?;
    let small = Layout::tar(&[("etc/", 0o755, b""), ("etc/small", 0o644, b"fits")])?;
    let big = noise(3 << 20, 7);
    let large = Layout::tar(&[("var/", 0o755, b""), ("var/big", 0o644, &big)])?;
    let img = l.image("amd64", &[(small, Comp::Gzip), (large, Comp::Gzip)])?;
    l.tag_image("1", &img, "amd64")?;
    reg.push(&l.dir, "1", "big")?;

    let disk = SmallDisk::mount(&t.path().join("disk"), "2m")?;
    let root = t.path().join("disk/store");
    let r = format!("{}/big:1", reg.host());
    let client = Client::new(http(&reg));
    let layers: Vec<ros_registry::Digest> = img
        .diff_ids
        .iter()
        .map(|d| ros_registry::Digest::parse(d))
        .collect::<Result<_, _>>()
        .s()?;
    let blob = ros_registry::Digest::parse(&img.layers[1]).s()?;
    // Too small for the big layer's blob: the fetch fails, nothing of it is kept.
    let store = Store::open(&root).s()?;
    let e = pull_quiet(&client, &store, &r, "amd64").unwrap_err();
    assert!(
        matches!(&e, PullError::Store(m) if m.contains("No space left on device")
            && m.contains(&root.display().to_string()) && m.contains(&img.layers[1])),
        "{e}"
    );
    assert!(store.refs().is_empty(), "no image is recorded");
    assert!(!store.has_blob(&blob), "no half blob is visible");
    drop(store);
    // Room for the blob, not for it unpacked beside it: the unpacking fails, naming the file.
    disk.resize("5m")?;
    let store = Store::open(&root).s()?;
    let e = pull_quiet(&client, &store, &r, "amd64").unwrap_err();
    assert!(
        matches!(&e, PullError::Store(m) if m.contains("No space left on device")
            && m.contains(&root.display().to_string()) && m.contains("var/big")),
        "{e}"
    );
    assert!(store.refs().is_empty(), "no image is recorded");
    assert!(!store.has_layer(&layers[1]), "no half layer is visible");
    drop(store);
    // Opened again (as after a reboot), the scratch space is emptied and the room given back;
    // the fetched blob stays for the next try.
    let store = Store::open(&root).s()?;
    assert_eq!(std::fs::read_dir(root.join("tmp"))?.count(), 0);
    let free = nix::sys::statvfs::statvfs(&root)?;
    assert!(
        free.blocks_available() * free.fragment_size() > 1 << 20,
        "the partial layer's space is freed"
    );
    assert!(store.has_blob(&blob));
    // With room, the same store completes the pull without fetching the blob again, and the
    // blob goes once its layer is in place.
    disk.resize("16m")?;
    let mut fetched = None;
    let rec = pull(
        &client,
        &store,
        &Reference::parse(&r).s()?,
        &platform("amd64"),
        &mut |e| {
            if let Event::Resolved { missing, .. } = e {
                fetched = Some(missing);
            }
        },
    )?;
    assert_eq!(fetched, Some(0), "the blobs were there");
    assert_eq!(rec.layers, img.diff_ids);
    assert_eq!(
        std::fs::read(store.layer_path(&layers[1]).join("var/big"))?,
        big
    );
    assert!(
        !store.has_blob(&blob),
        "the unpacked layer's blob is removed"
    );
    Ok(())
}

#[test]
fn an_altered_blob_is_refused_and_nothing_is_stored() -> Result<()> {
    let (reg, t, img) = served(&RegistryOptions::default(), "hello", b"x")?;
    // Flip a byte of the uncompressed top layer in the registry's storage.
    let f = reg.blob_file(&img.layers[1]);
    let mut bytes = std::fs::read(&f)?;
    bytes[600] ^= 0x20;
    std::fs::write(&f, bytes)?;

    let root = t.path().join("store");
    let store = Store::open(&root).s()?;
    let e = pull_quiet(
        &Client::new(http(&reg)),
        &store,
        &format!("{}/hello:1", reg.host()),
        "amd64",
    )
    .unwrap_err();
    assert!(
        matches!(&e, PullError::Invalid(m) if m.contains("digest mismatch") && m.contains(&img.layers[1])),
        "{e}"
    );
    assert!(store.refs().is_empty());
    let top = store.layer_path(&ros_registry::Digest::parse(&img.diff_ids[1]).s()?);
    assert!(!top.exists(), "the bad layer is not in the store");
    assert!(
        !store.has_blob(&ros_registry::Digest::parse(&img.layers[1]).s()?),
        "nor its blob"
    );
    assert_eq!(
        std::fs::read_dir(root.join("tmp"))?.count(),
        0,
        "nothing left half-written"
    );
    Ok(())
}

#[test]
fn a_failing_mirror_then_the_registry_and_a_registry_that_is_down() -> Result<()> {
    let (reg, t, img) = served(&RegistryOptions::default(), "hello", b"x")?;
    let refuser = ros_tests::registry::Refuser::start()?;
    let dead = refuser.port;
    let mut cfg = Registries::default();
    cfg.mirrors.insert(
        reg.host(),
        Mirror {
            endpoints: vec![
                format!("http://127.0.0.1:{dead}"),
                format!("http://{}", reg.host()),
            ],
        },
    );
    let store = Store::open(&t.path().join("store")).s()?;
    let rec = pull_quiet(
        &Client::new(cfg.clone()),
        &store,
        &format!("{}/hello:1", reg.host()),
        "amd64",
    )?;
    assert_eq!(rec.manifest, img.manifest);

    // Only the dead endpoint: an error worth retrying, naming it.
    let mut down = Registries::default();
    down.mirrors.insert(
        format!("127.0.0.1:{dead}"),
        Mirror {
            endpoints: vec![format!("http://127.0.0.1:{dead}")],
        },
    );
    let e = pull_quiet(
        &Client::new(down),
        &store,
        &format!("127.0.0.1:{dead}/hello:1"),
        "amd64",
    )
    .unwrap_err();
    assert!(
        e.retryable() && e.to_string().contains(&dead.to_string()),
        "{e}"
    );
    Ok(())
}

/// A guest's service names an image in a registry on the host that is down when the guest
/// boots: the boot goes on (the service waits, the pull is retried), then the registry comes
/// up and the service starts from the pulled image. The image is an index of an amd64 and an
/// arm64 image; the guest runs its own platform's (a health check reads the marker file).
/// A guest config that logs in with a new key over a forwarded SSH port, reaches `host` (a
/// registry on the host) over plain HTTP, and has `rest` in its user-data; with the key, the
/// port and the user-data file (kept while the guest runs).
fn guest_config(
    arch: ros_tests::Arch,
    host: &str,
    rest: &str,
) -> Result<(
    ros_qemu::BootConfig,
    ros_tests::SshKey,
    u16,
    tempfile::NamedTempFile,
)> {
    use std::io::Write;
    let key = ros_tests::SshKey::new()?;
    let ssh_port = ros_tests::free_port()?;
    let mut ud = tempfile::Builder::new().suffix(".toml").tempfile()?;
    write!(
        ud,
        "ssh_authorized_keys = [\"{}\"]\n\n[registries.mirrors.\"{host}\"]\nendpoints = [\"http://{host}\"]\n{rest}",
        key.public
    )?;
    let mut cfg = ros_tests::config(arch)?;
    cfg.user_data = Some(ud.path().to_path_buf());
    cfg.forwards = vec![(ssh_port, 22)];
    Ok((cfg, key, ssh_port, ud))
}

fn guest_pulls_when_the_registry_comes_up(arch: ros_tests::Arch) -> Result<()> {
    use std::time::Duration;
    // The registry's port is held (closing every connection) until the registry starts.
    let refuser = ros_tests::registry::Refuser::start()?;
    let port = refuser.port;
    let host = format!("10.0.2.2:{port}");
    let image = format!("{host}/hello:multi");
    // A second registry over HTTPS, with a CA of its own and a password.
    let private = Registry::start(&RegistryOptions {
        tls: true,
        creds: Some(("ros".into(), "guest-s3cret".into())),
        ..Default::default()
    })?;
    let private_host = format!("10.0.2.2:{}", private.port);
    let (cfg, key, ssh_port, _ud) = guest_config(
        arch,
        &host,
        &format!(
            r#"
[registries.configs."{private_host}"]
username = "ros"
password = "guest-s3cret"
ca = """
{ca}"""

[services.hello]
image = "{image}"
command = ["/bin/busybox", "sh", "-c", "exec /bin/busybox sleep 3600"]
health = {{ exec = ["/bin/busybox", "grep", "-q", "{oci_arch}", "/marker"], interval = "1s" }}
"#,
            ca = private.ca.clone().unwrap_or_default(),
            // Debian's and OCI's names agree for both arches.
            oci_arch = arch.debian()
        ),
    )?;
    let g = ros_qemu::Guest::spawn(&cfg)?;
    let ready = g.wait_ready(ros_tests::READY_TIMEOUT)?;
    let hello = ready["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "hello"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(hello["state"], "pulling", "{hello}");
    g.wait_for(
        "images: no state disk; pulled images are kept in memory (at most",
        Duration::from_secs(10),
    )?;
    g.wait_for(&format!("image {image}: "), Duration::from_secs(60))?;
    g.wait_for("(retrying)", Duration::from_secs(60))?;

    // The registry comes up on that port, with both platforms' images.
    refuser.release();
    let reg = Registry::start(&RegistryOptions {
        port: Some(port),
        ..Default::default()
    })?;
    let t = tempfile::tempdir()?;
    let mut l = Layout::new(&t.path().join("oci"))?;
    let mut built = Vec::new();
    for (a, oci) in [
        (ros_tests::Arch::X86_64, "amd64"),
        (ros_tests::Arch::Aarch64, "arm64"),
    ] {
        let bb = std::fs::read(ros_tests::image(a)?.join("staging/busybox/bin/busybox"))?;
        let base = Layout::tar(&[("bin/", 0o755, b""), ("bin/busybox", 0o755, &bb)])?;
        let top = Layout::tar(&[("marker", 0o644, oci.as_bytes())])?;
        built.push((oci, l.image(oci, &[(base, Comp::Gzip), (top, Comp::Gzip)])?));
    }
    l.tag_index(
        "multi",
        &[(built[0].0, &built[0].1), (built[1].0, &built[1].1)],
    )?;
    reg.push(&l.dir, "multi", "hello")?;

    let wait = Duration::from_secs(180);
    g.wait_for(&format!("image {image}: pulled"), wait)
        .map_err(|e| anyhow::anyhow!("{e}\n{}", g.tail(40)))?;
    g.wait_for("service hello is healthy", wait)
        .map_err(|e| anyhow::anyhow!("{e}\n{}", g.tail(40)))?;

    // The CLI, in the console over SSH.
    let ros = |args: &str| key.ros(ssh_port, args, wait);
    let (code, out) = ros("image list -o json")?;
    anyhow::ensure!(code == 0, "image list: {out}");
    let list: serde_json::Value = serde_json::from_str(out.trim())?;
    let pulled = list
        .as_array()
        .and_then(|l| l.iter().find(|i| i["source"] == "registry"))
        .cloned()
        .unwrap_or_default();
    let own = &built[usize::from(arch == ros_tests::Arch::Aarch64)].1;
    assert_eq!(pulled["reference"], image, "{list:#}");
    assert_eq!(pulled["manifest"], own.manifest.as_str(), "{list:#}");
    assert!(
        list.as_array().is_some_and(|l| l
            .iter()
            .any(|i| i["reference"] == "busybox" && i["source"] == "boot")),
        "{list:#}"
    );
    // In use: refused, named.
    let (code, out) = ros(&format!("image rm {image}"))?;
    assert!(
        code != 0 && out.contains("the image of service `hello`"),
        "{code}: {out}"
    );
    // A second tag of the same content: pulled (nothing new fetched), removed, pruned.
    reg.push(&l.dir, "multi", "again")?;
    let again = format!("{host}/again:multi");
    let (code, out) = ros(&format!("image pull {again}"))?;
    assert!(code == 0 && out.contains(&own.manifest), "{code}: {out}");
    let (code, out) = ros(&format!("image rm {again}"))?;
    assert_eq!(code, 0, "{out}");
    let (code, out) = ros("image prune")?;
    assert!(code == 0, "{out}");
    // HTTPS with the registry's CA and password from the user-data.
    private.push(&l.dir, "multi", "private/hello")?;
    let (code, out) = ros(&format!("image pull {private_host}/private/hello:multi"))?;
    assert!(code == 0 && out.contains(&own.manifest), "{code}: {out}");
    let (code, out) = ros("image pull 10.0.2.2:1/nothing:1")?;
    assert!(code != 0 && out.contains("10.0.2.2:1"), "{code}: {out}");
    // The service still runs from the store (its layers were kept).
    let (code, out) = ros("service status hello")?;
    assert!(code == 0 && out.contains("running"), "{out}");
    Ok(())
}

/// An error with the guest's last console lines.
fn explain(g: &ros_qemu::Guest) -> impl Fn(anyhow::Error) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("{e}\n{}", g.tail(40))
}

/// The service named `name` in a ready line.
fn ready_service(ready: &serde_json::Value, name: &str) -> serde_json::Value {
    ready["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .cloned()
        .unwrap_or_default()
}

/// A guest with a state disk is powered off hard in the middle of a pull (the registry is
/// reached through a relay that holds it to 1 MiB/s a connection, so the cut lands inside the
/// large layer); the next boot finds no half image (the service is still `pulling`), the pull
/// completes and the service runs. A third boot starts it from the store without a pull, while
/// a service with `pull = "always"` pulls again and one with `pull = "never"` naming an image
/// the store lacks says so.
fn guest_power_cut_mid_pull(arch: ros_tests::Arch) -> Result<()> {
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    let reg = Registry::start(&RegistryOptions::default())?;
    let relay = ros_tests::registry::Relay::start(reg.port, 1 << 20)?;
    let t = tempfile::tempdir()?;
    let mut l = Layout::new(&t.path().join("oci"))?;
    let bb = std::fs::read(ros_tests::image(arch)?.join("staging/busybox/bin/busybox"))?;
    let base = Layout::tar(&[("bin/", 0o755, b""), ("bin/busybox", 0o755, &bb)])?;
    let big = Layout::tar(&[
        ("var/", 0o755, b""),
        ("var/big", 0o644, &noise(24 << 20, 3)),
    ])?;
    let top = Layout::tar(&[("marker", 0o644, b"whole")])?;
    let oci = arch.debian();
    let img = l.image(
        oci,
        &[(base, Comp::Gzip), (big, Comp::Gzip), (top, Comp::Gzip)],
    )?;
    l.tag_image("1", &img, oci)?;
    reg.push(&l.dir, "1", "hello")?;
    reg.push(&l.dir, "1", "fresh")?;

    let host = format!("10.0.2.2:{}", relay.port);
    let (hello, fresh) = (format!("{host}/hello:1"), format!("{host}/fresh:1"));
    let (mut cfg, key, ssh_port, _ud) = guest_config(
        arch,
        &host,
        &format!(
            r#"
[services.hello]
image = "{hello}"
command = ["/bin/busybox", "sleep", "3600"]
health = {{ exec = ["/bin/busybox", "grep", "-q", "whole", "/marker"], interval = "1s" }}

[services.fresh]
image = "{fresh}"
pull = "always"
command = ["/bin/busybox", "sleep", "3600"]

[services.never]
image = "{host}/absent:1"
pull = "never"
command = ["/bin/busybox", "sleep", "3600"]
"#
        ),
    )?;
    let state = t.path().join("state.img");
    std::fs::File::create(&state)?.set_len(256 << 20)?;
    cfg.disks = vec![state];
    let wait = Duration::from_secs(180);

    // Boot 1: cut once 8 MiB have come through, well inside the 24 MiB layer.
    let mut g = ros_qemu::Guest::spawn(&cfg)?;
    g.wait_ready(ros_tests::READY_TIMEOUT)?;
    g.wait_for(&format!("image {hello}: pulling"), wait)
        .map_err(explain(&g))?;
    let deadline = std::time::Instant::now() + wait;
    while relay.bytes.load(Ordering::Relaxed) < 8 << 20 {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the pull did not get going: {} bytes\n{}",
            relay.bytes.load(Ordering::Relaxed),
            g.tail(40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::ensure!(
        !g.console().contains(&format!("image {hello}: pulled")),
        "the pull ended before the cut"
    );
    g.kill();
    drop(g);

    // Boot 2: no half image; the pull completes.
    relay.rate.store(0, Ordering::Relaxed);
    let g = ros_qemu::Guest::spawn(&cfg)?;
    let ready = g.wait_ready(ros_tests::READY_TIMEOUT)?;
    assert_eq!(
        ready_service(&ready, "hello")["state"],
        "pulling",
        "{ready}"
    );
    let never = ready_service(&ready, "never").to_string();
    assert!(
        never.contains("is not in the store") && never.contains("pull = \\\"never\\\""),
        "{never}"
    );
    g.wait_for(&format!("image {hello}: pulled"), wait)
        .map_err(explain(&g))?;
    g.wait_for("service hello is healthy", wait)
        .map_err(explain(&g))?;
    g.wait_for(&format!("image {fresh}: pulled"), wait)
        .map_err(explain(&g))?;
    let (code, out) = key.ros(ssh_port, "image list -o json", wait)?;
    anyhow::ensure!(code == 0, "image list: {out}");
    let list: serde_json::Value = serde_json::from_str(out.trim())?;
    for r in [&hello, &fresh] {
        assert!(
            list.as_array().is_some_and(|l| l
                .iter()
                .any(|i| i["reference"] == r.as_str() && i["manifest"] == img.manifest.as_str())),
            "{r}: {list:#}"
        );
    }
    let mut g = g;
    g.kill();
    drop(g);

    // Boot 3: `hello` from the store, `fresh` pulled again.
    let g = ros_qemu::Guest::spawn(&cfg)?;
    g.wait_ready(ros_tests::READY_TIMEOUT)?;
    g.wait_for("service hello is healthy", wait)
        .map_err(explain(&g))?;
    g.wait_for(&format!("image {fresh}: pulled"), wait)
        .map_err(explain(&g))?;
    assert!(
        !g.console().contains(&format!("image {hello}: pulling")),
        "an image in the store is not pulled again with pull = if-not-present"
    );
    Ok(())
}

mod x86_64 {
    #[test]
    fn guest_pulls_when_the_registry_comes_up() -> anyhow::Result<()> {
        super::guest_pulls_when_the_registry_comes_up(ros_tests::Arch::X86_64)
    }

    #[test]
    fn guest_power_cut_mid_pull() -> anyhow::Result<()> {
        super::guest_power_cut_mid_pull(ros_tests::Arch::X86_64)
    }
}

mod aarch64 {
    #[test]
    fn guest_pulls_when_the_registry_comes_up() -> anyhow::Result<()> {
        super::guest_pulls_when_the_registry_comes_up(ros_tests::Arch::Aarch64)
    }

    #[test]
    fn guest_power_cut_mid_pull() -> anyhow::Result<()> {
        super::guest_power_cut_mid_pull(ros_tests::Arch::Aarch64)
    }
}
