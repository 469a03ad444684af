//! The host's own settings: the hostname (with `/etc/hostname` and `/etc/hosts`), the sysctls
//! (each one's value from before ros first wrote it is kept, so a sysctl removed from the config
//! goes back to it), and the files `write_files` asks for.

use std::collections::BTreeMap;
use std::path::Path;

use ros_config::{Hostname, MacAddr, SysctlKey};

use crate::platform::sys::Sys;

/// The hostname when the config sets none: `ros-` and the last three bytes of the first NIC's
/// MAC (so a fleet booted from one image is told apart), or `ros`.
pub fn default_hostname(mac: Option<MacAddr>) -> String {
    match mac {
        Some(MacAddr(m)) => format!("ros-{:02x}{:02x}{:02x}", m[3], m[4], m[5]),
        None => "ros".to_string(),
    }
}

/// Sets the hostname and writes the files that name it. Returns the errors.
pub fn set_hostname(sys: &dyn Sys, etc: &Path, name: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if let Err(e) = sys.sethostname(name) {
        errors.push(format!("setting the hostname to {name}: {e}"));
    }
    let short = name.split('.').next().unwrap_or(name);
    let hosts = if short == name {
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{name}\n"
        )
    } else {
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{name} {short}\n"
        )
    };
    for (file, data) in [("hostname", format!("{name}\n")), ("hosts", hosts)] {
        if let Err(e) = sys.write(&etc.join(file), data.as_bytes()) {
            errors.push(format!("writing /etc/{file}: {e}"));
        }
    }
    errors
}

/// The hostname to use.
pub fn choose_hostname(cfg: Option<&Hostname>, mac: Option<MacAddr>) -> String {
    cfg.map_or_else(|| default_hostname(mac), |h| h.to_string())
}

/// The sysctls ros has written, with the value each had before.
#[derive(Debug, Default)]
pub struct SysctlState {
    originals: BTreeMap<SysctlKey, String>,
}

impl SysctlState {
    /// Writes `d.set` under `proc_sys` (`/proc/sys`), first keeping each key's value from
    /// before, and writes the kept value back for each key of `d.reset`. Returns what was done
    /// and the errors.
    pub fn apply(
        &mut self,
        sys: &dyn Sys,
        proc_sys: &Path,
        d: &ros_config::diff::Sysctls,
    ) -> (Vec<String>, Vec<String>) {
        let (mut done, mut errors) = (Vec::new(), Vec::new());
        for k in &d.reset {
            match self.originals.remove(k) {
                Some(v) => match write_sysctl(sys, proc_sys, k, &v) {
                    Ok(()) => done.push(format!("sysctl {} back to {v}", k.as_str())),
                    Err(e) => errors.push(e),
                },
                None => done.push(format!("sysctl {} left as it is", k.as_str())),
            }
        }
        for (k, v) in &d.set {
            if !self.originals.contains_key(k)
                && let Ok(old) = std::fs::read_to_string(proc_sys.join(k.proc_path()))
            {
                self.originals.insert(k.clone(), old.trim().to_string());
            }
            match write_sysctl(sys, proc_sys, k, v) {
                Ok(()) => {
                    log::info!("sysctl {} = {v}", k.as_str());
                    done.push(format!("sysctl {} = {v}", k.as_str()));
                }
                Err(e) => errors.push(e),
            }
        }
        (done, errors)
    }
}

fn write_sysctl(sys: &dyn Sys, proc_sys: &Path, k: &SysctlKey, v: &str) -> Result<(), String> {
    sys.write(&proc_sys.join(k.proc_path()), format!("{v}\n").as_bytes())
        .map_err(|e| {
            let why = if e.kind() == std::io::ErrorKind::NotFound {
                "no such sysctl in this kernel".to_string()
            } else {
                e.to_string()
            };
            format!("sysctl {} = {v}: {why}", k.as_str())
        })
}

/// The configured sysctls as the kernel has them now (read back), for the ready line.
pub fn read_back(
    proc_sys: &Path,
    sysctls: &BTreeMap<SysctlKey, String>,
) -> BTreeMap<String, String> {
    sysctls
        .keys()
        .map(|k| {
            let v = std::fs::read_to_string(proc_sys.join(k.proc_path()))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|e| format!("(unreadable: {e})"));
            (k.as_str().to_string(), v)
        })
        .collect()
}

/// Writes the user-data's `write_files` under `root` (`/`). Returns the errors, each naming
/// its item; the others are still written.
pub fn write_files(root: &Path, files: &[ros_config::host::WriteFile]) -> Vec<String> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut errors = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let path = root.join(f.path.trim_start_matches('/'));
        let r = (|| -> Result<(), String> {
            let bytes = f.bytes()?;
            if path.is_dir() {
                return Err("it is a folder; a file is not written over a folder".into());
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            }
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(f.append)
                .truncate(!f.append)
                .open(&path)
                .map_err(|e| e.to_string())?;
            file.write_all(&bytes).map_err(|e| e.to_string())?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.permissions))
                .map_err(|e| format!("chmod: {e}"))?;
            nix::unistd::chown(
                &path,
                Some(nix::unistd::Uid::from_raw(f.owner.0)),
                Some(nix::unistd::Gid::from_raw(f.owner.1)),
            )
            .map_err(|e| format!("chown: {e}"))
        })();
        if let Err(e) = r {
            errors.push(format!("write_files[{i}] ({}): {e}", f.path));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_appends_and_names_failures() {
        let dir = tempfile::tempdir().expect("tmp");
        let r = ros_config::from_toml(
            "t",
            "[[write_files]]\npath = \"/etc/a/b.conf\"\ncontent = \"one\\n\"\npermissions = \"0600\"\n[[write_files]]\npath = \"/etc/a/b.conf\"\ncontent = \"dHdvCg==\"\nencoding = \"base64\"\nappend = true\n[[write_files]]\npath = \"/etc/a/b.conf/under-a-file\"\n",
        );
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let errors = write_files(dir.path(), &r.data.write_files.expect("files"));
        let p = dir.path().join("etc/a/b.conf");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "one\ntwo\n");
        use std::os::unix::fs::PermissionsExt;
        // Each item sets its own mode: the appending one left the default.
        assert_eq!(
            std::fs::metadata(&p).expect("meta").permissions().mode() & 0o7777,
            0o644
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("write_files[2]"), "{errors:?}");
    }
    use crate::platform::sys::Recorder;

    #[test]
    fn default_hostname_from_mac() {
        assert_eq!(
            default_hostname(Some(MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 0xef]))),
            "ros-abcdef"
        );
        assert_eq!(default_hostname(None), "ros");
    }

    #[test]
    fn hostname_sets_kernel_and_files() {
        let r = Recorder::default();
        assert!(set_hostname(&r, Path::new("/etc"), "node1.example").is_empty());
        let calls = r.calls();
        assert_eq!(calls[0], "sethostname node1.example");
        assert_eq!(calls[1], "write /etc/hostname node1.example");
        assert!(
            calls[2].ends_with("127.0.1.1\tnode1.example node1"),
            "{}",
            calls[2]
        );
    }

    #[test]
    fn sysctls_write_proc_paths_report_failures_and_go_back_when_removed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let proc_sys = tmp.path();
        std::fs::create_dir_all(proc_sys.join("vm")).expect("mkdir");
        std::fs::write(proc_sys.join("vm/swappiness"), "60\n").expect("write");
        let r = Recorder::failing(&["write /x/net"]);
        let mut st = SysctlState::default();
        let mut d = ros_config::diff::Sysctls::default();
        d.set
            .insert("vm.swappiness".parse().expect("key"), "10".to_string());
        d.set
            .insert("net.ipv4.ip_forward".parse().expect("key"), "1".to_string());
        let (done, errors) = st.apply(&r, Path::new("/x"), &d);
        assert_eq!(r.calls()[0], "write /x/net/ipv4/ip_forward 1");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("sysctl net.ipv4.ip_forward = 1"));
        assert_eq!(done, ["sysctl vm.swappiness = 10"]);
        // The real writes, with the old value kept and put back.
        let sys = crate::platform::sys::RealSys;
        st.apply(&sys, proc_sys, &d);
        assert_eq!(
            std::fs::read_to_string(proc_sys.join("vm/swappiness")).expect("r"),
            "10\n"
        );
        let back = ros_config::diff::Sysctls {
            set: BTreeMap::new(),
            reset: vec!["vm.swappiness".parse().expect("key")],
        };
        let (done, _) = st.apply(&sys, proc_sys, &back);
        assert_eq!(done, ["sysctl vm.swappiness back to 60"]);
        assert_eq!(
            std::fs::read_to_string(proc_sys.join("vm/swappiness")).expect("r"),
            "60\n"
        );
    }
}
