//! The serial console, typed on as a user would (QEMU's serial line), on both arches: a root
//! shell without a login (`console.autologin`) in which `ros` works, a password login
//! (`console.root_password_hash`; a wrong password is refused), and, with neither, a line that
//! says how to get one.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use ros_qemu::Guest;
use ros_tests::{Arch, READY_TIMEOUT, config};

const WAIT: Duration = Duration::from_secs(90);

fn boot(arch: Arch, user_data: &str) -> Result<(Guest, tempfile::NamedTempFile)> {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile()?;
    f.write_all(user_data.as_bytes())?;
    let mut cfg = config(arch)?;
    cfg.user_data = Some(f.path().to_path_buf());
    let g = Guest::spawn(&cfg)?;
    g.wait_ready(READY_TIMEOUT)?;
    Ok((g, f))
}

/// Types `cmd` and a marker, and returns the console from the typing to the marker's output.
fn run(g: &mut Guest, cmd: &str, marker: &str) -> Result<String> {
    let from = g.console().len();
    g.type_text(&format!("{cmd}; echo {marker}-$((6*7))\n"))?;
    let (_, end) = g.wait_for_from(&format!("{marker}-42"), from, WAIT)?;
    Ok(g.console()[from..end].to_string())
}

fn autologin(arch: Arch) -> Result<()> {
    let (mut g, _f) = boot(arch, "[console]\nautologin = true\n")?;
    g.wait_for("service console started", WAIT)?;
    // The shell prints its prompt once the console service has started it.
    g.wait_for_text("root@", 0, WAIT)?;
    let out = run(&mut g, "id -u; ros service list", "serial")?;
    ensure!(out.contains("\n0\r\n") || out.contains("\n0\n"), "{out}");
    for s in ["console", "ntp", "syslog"] {
        ensure!(
            out.lines()
                .any(|l| l.starts_with(s) && l.contains("running")),
            "`ros service list` on the serial console: {out}"
        );
    }
    g.poweroff()?;
    g.wait_exit(Duration::from_secs(60))?;
    Ok(())
}

/// A SHA-512 crypt hash of `password`, made by OpenSSL (what `mkpasswd -m sha-512` makes).
fn hash(password: &str) -> Result<String> {
    let out = std::process::Command::new("openssl")
        .args(["passwd", "-6", "-salt", "rostestsalt", password])
        .output()
        .context("openssl")?;
    ensure!(out.status.success(), "openssl passwd failed");
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

fn password(arch: Arch) -> Result<()> {
    let ud = format!(
        "[console]\nroot_password_hash = \"{}\"\n",
        hash("s3cret-serial")?
    );
    let (mut g, _f) = boot(arch, &ud)?;
    // Prompts end without a newline: wait for their text.
    let at = g.wait_for_text("login: ", 0, WAIT)?;
    g.type_text("root\n")?;
    let at = g.wait_for_text("Password: ", at, WAIT)?;
    g.type_text("wrong\n")?;
    let at = g.wait_for_text("Login incorrect", at, WAIT)?;
    // login flushes what was typed before it prompts again: wait for the prompt.
    let at = g.wait_for_text("login: ", at, WAIT)?;
    g.type_text("root\n")?;
    let at = g.wait_for_text("Password: ", at, WAIT)?;
    g.type_text("s3cret-serial\n")?;
    g.wait_for_text("root@", at, WAIT)?;
    let out = run(&mut g, "ros os version", "logged-in")?;
    ensure!(out.contains("ros 0."), "{out}");
    g.poweroff()?;
    g.wait_exit(Duration::from_secs(60))?;
    Ok(())
}

fn neither(arch: Arch) -> Result<()> {
    let (g, _f) = boot(arch, "hostname = \"quiet\"\n")?;
    let line = g.wait_for("ros: no login on this console", WAIT)?;
    ensure!(line.contains("no login"), "{line}");
    let rest = g.wait_for("console.root_password_hash", WAIT)?;
    ensure!(rest.contains("mkpasswd"), "{rest}");
    Ok(())
}

mod x86_64 {
    #[test]
    fn autologin() -> anyhow::Result<()> {
        super::autologin(super::Arch::X86_64)
    }
    #[test]
    fn password() -> anyhow::Result<()> {
        super::password(super::Arch::X86_64)
    }
    #[test]
    fn neither() -> anyhow::Result<()> {
        super::neither(super::Arch::X86_64)
    }
}

mod aarch64 {
    #[test]
    fn autologin() -> anyhow::Result<()> {
        super::autologin(super::Arch::Aarch64)
    }
    #[test]
    fn password() -> anyhow::Result<()> {
        super::password(super::Arch::Aarch64)
    }
    #[test]
    fn neither() -> anyhow::Result<()> {
        super::neither(super::Arch::Aarch64)
    }
}
