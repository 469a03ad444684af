//! The user-data keys that act on the host: `write_files`, `bootcmd`, `runcmd`, `environment`.

use std::collections::BTreeMap;
use std::io::Read;

use base64::Engine;
use serde::Serialize;

use crate::node::{Node, Value};
use crate::walk::{Walker, join};

const WRITE_FILE_KEYS: &[&str] = &[
    "path",
    "content",
    "encoding",
    "permissions",
    "owner",
    "append",
];
/// Decoded file contents larger than this are refused.
const MAX_FILE: usize = 1 << 20;

/// How `content` is written in the user-data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    #[default]
    Plain,
    Base64,
    #[serde(rename = "gzip+base64")]
    GzipBase64,
}

/// A file written on the host before the services start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteFile {
    pub path: String,
    /// As written in the user-data (see `encoding`).
    pub content: String,
    pub encoding: Encoding,
    /// Octal mode bits.
    pub permissions: u32,
    /// `(uid, gid)`.
    pub owner: (u32, u32),
    pub append: bool,
}

impl WriteFile {
    /// The bytes to write.
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        decode(&self.content, self.encoding)
    }
}

fn decode(content: &str, enc: Encoding) -> Result<Vec<u8>, String> {
    let b64 = |s: &str| {
        let clean: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(clean)
            .map_err(|e| format!("not base64: {e}"))
    };
    let out = match enc {
        Encoding::Plain => content.as_bytes().to_vec(),
        Encoding::Base64 => b64(content)?,
        Encoding::GzipBase64 => {
            let gz = b64(content)?;
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(gz.as_slice())
                .take(MAX_FILE as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| format!("not gzip: {e}"))?;
            out
        }
    };
    if out.len() > MAX_FILE {
        return Err(format!("larger than {} KiB", MAX_FILE / 1024));
    }
    Ok(out)
}

/// A command of `bootcmd` or `runcmd`: a string runs in `sh -c`, an array is the program and
/// its arguments (as cloud-init does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Command {
    Shell(String),
    Argv(Vec<String>),
}

impl Command {
    /// The command as one line of shell.
    pub fn to_shell(&self) -> String {
        match self {
            Command::Shell(s) => s.clone(),
            Command::Argv(a) => a
                .iter()
                .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// The script that runs `cmds` in order, each whatever the others did, naming the ones that
/// fail; it always exits 0 so that a failing command never holds up the services after it.
pub fn script(key: &str, cmds: &[Command]) -> String {
    let mut s = String::new();
    for (i, c) in cmds.iter().enumerate() {
        let line = c.to_shell();
        s.push_str(&format!(
            "echo {q}{key}[{i}]: {shown}{q}\n( {line}\n) || echo \"{key}[{i}] failed with status $?\"\n",
            q = '\'',
            shown = line.replace('\'', r"'\''"),
        ));
    }
    s
}

pub fn read_write_files(w: &mut Walker<'_>, path: &str, node: &Node) -> Option<Vec<WriteFile>> {
    w.list(path, node, |w, p, n| {
        let mut path = None;
        let mut content = String::new();
        let mut encoding = Encoding::Plain;
        let mut permissions = 0o644;
        let mut owner = (0, 0);
        let mut append = false;
        let before = w.errors.len();
        for e in w.table(p, n, WRITE_FILE_KEYS)? {
            let kp = join(p, &e.key);
            let v = &e.node;
            match e.key.as_str() {
                "path" => {
                    if let Some(s) = w.string(&kp, v) {
                        match file_path_problem(&s) {
                            Some(why) => w.err(v.pos, &kp, why),
                            None => path = Some(s),
                        }
                    }
                }
                "content" => content = w.string(&kp, v).unwrap_or_default(),
                "encoding" => match w.string(&kp, v).as_deref() {
                    Some("plain" | "text") => encoding = Encoding::Plain,
                    Some("base64" | "b64") => encoding = Encoding::Base64,
                    Some("gzip+base64" | "gz+b64" | "gz+base64" | "gzip+b64") => {
                        encoding = Encoding::GzipBase64
                    }
                    Some(other) => w.err(
                        v.pos,
                        &kp,
                        format!("unknown encoding `{other}`; expected plain, base64 or gzip+base64"),
                    ),
                    None => {}
                },
                "permissions" => {
                    let text = match &v.value {
                        Value::Integer(i) => Some(i.to_string()),
                        _ => w.string(&kp, v),
                    };
                    match text.as_deref().map(|t| u32::from_str_radix(t.trim_start_matches("0o"), 8)) {
                        Some(Ok(m)) if m <= 0o7777 => permissions = m,
                        Some(_) => w.err(v.pos, &kp, format!("expected an octal mode like \"0644\", found `{}`", text.unwrap_or_default())),
                        None => {}
                    }
                }
                "owner" => {
                    if let Some(s) = w.string(&kp, v) {
                        match parse_owner(&s) {
                            Some(o) => owner = o,
                            None => w.err(v.pos, &kp, format!("expected \"root\", \"UID\" or \"UID:GID\" (numbers: the host has no user database), found `{s}`")),
                        }
                    }
                }
                "append" => append = w.bool(&kp, v).unwrap_or(false),
                _ => {}
            }
        }
        let Some(path) = path else {
            if w.errors.len() == before {
                w.err(n.pos, p, "a file needs a `path`");
            }
            return None;
        };
        if let Err(e) = decode(&content, encoding) {
            w.err(n.pos, &join(p, "content"), e);
            return None;
        }
        (w.errors.len() == before).then_some(WriteFile {
            path,
            content,
            encoding,
            permissions,
            owner,
            append,
        })
    })
}

/// Kernel filesystems, where a file written by the config would be a kernel setting or a device
/// (sysctls and modules have keys of their own).
const NOT_WRITABLE: &[&str] = &["/proc", "/sys", "/dev"];

/// Why a `write_files` path cannot be written, if it cannot.
fn file_path_problem(s: &str) -> Option<String> {
    if !s.starts_with('/') || s.split('/').any(|c| c == ".." || c == ".") {
        return Some(format!(
            "expected an absolute path without `.` or `..`, found `{s}`"
        ));
    }
    if s.ends_with('/') {
        return Some(format!(
            "`{s}` is a folder; a file path does not end with `/`"
        ));
    }
    let clean = s.trim_end_matches('/');
    if let Some(fs) = NOT_WRITABLE
        .iter()
        .find(|d| clean == **d || clean.starts_with(&format!("{d}/")))
    {
        return Some(format!(
            "`{s}` is under {fs}, a kernel filesystem; use `sysctl` or `modules` for kernel settings"
        ));
    }
    None
}

fn parse_owner(s: &str) -> Option<(u32, u32)> {
    let id = |x: &str| match x {
        "root" => Some(0),
        n => n.parse().ok(),
    };
    match s.split_once(':') {
        Some((u, g)) => Some((id(u)?, id(g)?)),
        None => {
            let u = id(s)?;
            Some((u, u))
        }
    }
}

pub fn read_commands(w: &mut Walker<'_>, key: &str, node: &Node) -> Option<Vec<Command>> {
    w.list(key, node, |w, p, n| match &n.value {
        Value::Array(_) => {
            let argv = w.list(p, n, |w, p, n| w.string(p, n))?;
            if argv.is_empty() {
                w.err(n.pos, p, "an empty command");
                return None;
            }
            Some(Command::Argv(argv))
        }
        _ => {
            let s = w.string(p, n)?;
            if s.trim().is_empty() {
                w.err(n.pos, p, "an empty command");
                return None;
            }
            Some(Command::Shell(s))
        }
    })
}

pub fn read_environment(w: &mut Walker<'_>, path: &str, node: &Node) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in w.map(path, node).unwrap_or_default() {
        let kp = join(path, &e.key);
        if e.key.is_empty() || e.key.contains('=') {
            w.err(
                e.key_pos,
                &kp,
                "an environment variable name holds no `=` and is not empty",
            );
            continue;
        }
        if let Some(v) = w.scalar_text(&kp, &e.node) {
            out.insert(e.key.clone(), v);
        }
    }
    out
}

const USER_KEYS: &[&str] = &["name", "uid", "groups", "ssh_authorized_keys", "shell"];
/// Names the console's base layer has already.
const RESERVED_USERS: &[&str] = &["root", "nobody"];

/// A login user of the console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub name: String,
    /// Its uid (and its own group's gid); by default 1000, 1001, ... in the list's order.
    pub uid: u32,
    pub groups: Vec<String>,
    pub ssh_authorized_keys: Vec<String>,
    pub shell: String,
}

/// A Unix user or group name as `useradd` accepts it by default.
fn unix_name(s: &str) -> bool {
    let mut c = s.chars();
    s.len() <= 32
        && c.next().is_some_and(|f| f.is_ascii_lowercase() || f == '_')
        && c.all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || x == '_' || x == '-')
}

pub fn read_users(w: &mut Walker<'_>, path: &str, node: &Node) -> Option<Vec<User>> {
    let mut next_uid = 1000u32;
    let mut seen = Vec::new();
    let mut uids: std::collections::BTreeMap<u32, String> = std::collections::BTreeMap::new();
    w.list(path, node, |w, p, n| {
        let before = w.errors.len();
        let mut name = None;
        let mut uid = None;
        let mut groups = Vec::new();
        let mut keys = Vec::new();
        let mut shell = "/bin/sh".to_string();
        for e in w.table(p, n, USER_KEYS)? {
            let kp = join(p, &e.key);
            let v = &e.node;
            match e.key.as_str() {
                "name" => {
                    if let Some(s) = w.string(&kp, v) {
                        if !unix_name(&s) {
                            w.err(v.pos, &kp, format!("`{s}` is not a user name (lowercase letters, digits, `_`, `-`; a letter or `_` first; at most 32)"));
                        } else if RESERVED_USERS.contains(&s.as_str()) || seen.contains(&s) {
                            w.err(v.pos, &kp, format!("user `{s}` exists already"));
                        } else {
                            seen.push(s.clone());
                            name = Some(s);
                        }
                    }
                }
                "uid" => uid = w.int(&kp, v, 1000, 60000).and_then(|u| u32::try_from(u).ok()),
                "groups" => {
                    groups = w
                        .list(&kp, v, |w, gp, g| {
                            let s = w.string(gp, g)?;
                            if unix_name(&s) {
                                Some(s)
                            } else {
                                w.err(g.pos, gp, format!("`{s}` is not a group name"));
                                None
                            }
                        })
                        .unwrap_or_default();
                }
                "ssh_authorized_keys" => {
                    keys = w.list(&kp, v, crate::schema::ssh_key).unwrap_or_default();
                }
                "shell" => {
                    if let Some(s) = w.string(&kp, v) {
                        if s.starts_with('/') && !s.contains(char::is_whitespace) {
                            shell = s;
                        } else {
                            w.err(v.pos, &kp, format!("expected an absolute path like /bin/sh, found `{s}`"));
                        }
                    }
                }
                _ => {}
            }
        }
        let Some(name) = name else {
            if w.errors.len() == before {
                w.err(n.pos, p, "a user needs a `name`");
            }
            return None;
        };
        let uid = uid.unwrap_or(next_uid);
        next_uid = next_uid.max(uid.saturating_add(1));
        if let Some(other) = uids.get(&uid) {
            w.err(n.pos, &join(p, "uid"), format!("uid {uid} is `{other}`'s already"));
        } else {
            uids.insert(uid, name.clone());
        }
        (w.errors.len() == before).then_some(User {
            name,
            uid,
            groups,
            ssh_authorized_keys: keys,
            shell,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_decode_and_bad_ones_are_named() {
        let r = crate::from_toml(
            "t",
            r#"
[[write_files]]
path = "/etc/motd"
content = "hi\n"

[[write_files]]
path = "/var/lib/ros/b"
content = "aGVsbG8="
encoding = "b64"
permissions = "0600"
owner = "1000:1000"
append = true

[[write_files]]
path = "/var/lib/ros/c"
content = "H4sIAAAAAAACA8tIzcnJBwCGphA2BQAAAA=="
encoding = "gzip+base64"
"#,
        );
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let f = r.data.write_files.expect("files");
        assert_eq!(f[1].bytes().expect("b64"), b"hello");
        assert_eq!(
            (f[1].permissions, f[1].owner, f[1].append),
            (0o600, (1000, 1000), true)
        );
        assert_eq!(f[2].bytes().expect("gz"), b"hello");
        let r = crate::from_toml(
            "t",
            "[[write_files]]\npath = \"etc/x\"\n[[write_files]]\npath = \"/x\"\ncontent = \"!!\"\nencoding = \"base64\"\n[[write_files]]\npath = \"/y\"\npermissions = \"999\"\nowner = \"bob\"\n",
        );
        let keys: Vec<&str> = r.errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "write_files[0].path",
                "write_files[1].content",
                "write_files[2].permissions",
                "write_files[2].owner"
            ],
            "{:?}",
            r.errors
        );
        assert!(r.data.write_files.is_none(), "a bad item drops the list");
    }

    #[test]
    fn commands_are_strings_or_argv_and_the_script_goes_on_after_a_failure() {
        let r = crate::from_toml(
            "t",
            "bootcmd = [\"echo one\", [\"echo\", \"it's\"]]\nruncmd = [\"\"]\n",
        );
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert_eq!(r.errors[0].key, "runcmd[0]");
        let cmds = r.data.bootcmd.expect("bootcmd");
        assert_eq!(cmds[1].to_shell(), r"'echo' 'it'\''s'");
        let s = script("bootcmd", &cmds);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{}\n{}",
                script("x", &[Command::Shell("false".into())]),
                s
            ))
            .output()
            .expect("sh");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(text.contains("x[0] failed with status 1"), "{text}");
        assert!(text.contains("one\n") && text.contains("it's\n"), "{text}");
    }

    #[test]
    fn users_are_checked_and_numbered() {
        let r = crate::from_toml(
            "t",
            "[[users]]\nname = \"alice\"\ngroups = [\"wheel\"]\nssh_authorized_keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx a\"]\n[[users]]\nname = \"bob\"\nuid = 1500\nshell = \"/bin/ash\"\n[[users]]\nname = \"carol\"\n",
        );
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let u = r.data.users.expect("users");
        let ids: Vec<(&str, u32)> = u.iter().map(|u| (u.name.as_str(), u.uid)).collect();
        assert_eq!(ids, [("alice", 1000), ("bob", 1500), ("carol", 1501)]);
        let r = crate::from_toml(
            "t",
            "[[users]]\nname = \"Root!\"\n[[users]]\nname = \"root\"\n[[users]]\nnme = \"x\"\n[[users]]\nname = \"d\"\nuid = 5\n",
        );
        let keys: Vec<&str> = r.errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "users[0].name",
                "users[1].name",
                "users[2].nme",
                "users[3].uid"
            ],
            "{:?}",
            r.errors
        );
        assert!(
            r.errors[2].message.contains("did you mean `name`"),
            "{:?}",
            r.errors
        );
    }

    #[test]
    fn environment_is_a_table_of_text() {
        let r = crate::from_toml(
            "t",
            "[environment]\nHTTP_PROXY = \"http://p:3128\"\nN = 3\n\"A=B\" = \"x\"\n",
        );
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert_eq!(r.data.environment.len(), 2);
        assert_eq!(r.data.environment["N"], "3");
    }
}
