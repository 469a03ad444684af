//! The logins the console makes, written where it mounts them from (`/run/ros/ssh`): root's
//! SSH keys (`authorized_keys`, which the console links, so a change needs no restart), the
//! users (`users`: `name:uid:shell:group,group` lines, and `keys/<name>`), and root's password
//! for the serial console (`root_password_hash`; SSH stays key-only).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ros_config::diff::Logins;

fn write(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

/// Writes `l` under `dir`. Returns what was written, and the errors.
pub fn write_all(dir: &Path, l: &Logins) -> (Vec<String>, Vec<String>) {
    let keys = dir.join("keys");
    if let Err(e) = std::fs::create_dir_all(&keys) {
        return (
            Vec::new(),
            vec![format!("creating {}: {e}", keys.display())],
        );
    }
    let mut errors = Vec::new();
    let mut text = String::new();
    for k in &l.root_keys {
        text.push_str(k);
        text.push('\n');
    }
    errors.extend(write(&dir.join("authorized_keys"), &text, 0o600).err());
    let mut list = String::new();
    for u in &l.users {
        list.push_str(&format!(
            "{}:{}:{}:{}\n",
            u.name,
            u.uid,
            u.shell,
            u.groups.join(",")
        ));
        let mut k = u.ssh_authorized_keys.join("\n");
        k.push('\n');
        errors.extend(write(&keys.join(&u.name), &k, 0o644).err());
    }
    errors.extend(write(&dir.join("users"), &list, 0o644).err());
    let hash = dir.join("root_password_hash");
    match &l.root_password_hash {
        Some(h) => errors.extend(write(&hash, &format!("{h}\n"), 0o600).err()),
        None => {
            let _ = std::fs::remove_file(&hash);
        }
    }
    let done = if errors.is_empty() {
        vec![format!(
            "logins: {} root key(s), {} user(s){}",
            l.root_keys.len(),
            l.users.len(),
            if l.root_password_hash.is_some() {
                ", a console password"
            } else {
                ""
            }
        )]
    } else {
        Vec::new()
    };
    (done, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_keys_users_and_the_password_hash() {
        let tmp = tempfile::tempdir().expect("tmp");
        let r = ros_config::from_toml(
            "t",
            "ssh_authorized_keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx a\"]\n[[users]]\nname = \"al\"\ngroups = [\"wheel\"]\n",
        );
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let mut l = Logins {
            root_keys: r.data.ssh_authorized_keys.clone().unwrap_or_default(),
            users: r.data.users.clone().unwrap_or_default(),
            root_password_hash: Some("$6$x$y".into()),
        };
        let (done, errors) = write_all(tmp.path(), &l);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(done.len(), 1);
        let read = |f: &str| std::fs::read_to_string(tmp.path().join(f)).expect(f);
        assert!(read("authorized_keys").starts_with("ssh-ed25519 "));
        assert_eq!(read("users"), "al:1000:/bin/sh:wheel\n");
        assert_eq!(read("root_password_hash"), "$6$x$y\n");
        l.root_password_hash = None;
        write_all(tmp.path(), &l);
        assert!(!tmp.path().join("root_password_hash").exists());
    }
}
