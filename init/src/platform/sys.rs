//! The seam between the init's decisions and the kernel: the system calls the boot phases make,
//! behind a trait, with the real implementation and a recording one that unit tests use to check
//! what a phase would do (and to make chosen calls fail).

use std::io;
use std::path::Path;
use std::sync::Mutex;

use nix::mount::MsFlags;

pub trait Sys {
    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()>;
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    fn symlink(&self, target: &str, link: &Path) -> io::Result<()>;
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    fn sethostname(&self, name: &str) -> io::Result<()>;
    /// Loads the kernel module at `path`; an already loaded module is `Ok`.
    fn finit_module(&self, path: &Path) -> io::Result<()>;
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealSys;

impl Sys for RealSys {
    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
    }

    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        nix::mount::mount(Some(source), target, Some(fstype), flags, data).map_err(io::Error::from)
    }

    fn symlink(&self, target: &str, link: &Path) -> io::Result<()> {
        match std::os::unix::fs::symlink(target, link) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        }
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        std::fs::write(path, data)
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        nix::unistd::sethostname(name).map_err(io::Error::from)
    }

    fn finit_module(&self, path: &Path) -> io::Result<()> {
        let file = std::fs::File::open(path)?;
        match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
            Err(e) => Err(io::Error::from(e)),
        }
    }
}

/// Records every call as a line; calls whose line starts with one of `fail` return an error.
#[derive(Debug, Default)]
pub struct Recorder {
    pub calls: Mutex<Vec<String>>,
    pub fail: Vec<String>,
}

impl Recorder {
    pub fn failing(prefixes: &[&str]) -> Self {
        Recorder {
            calls: Mutex::new(Vec::new()),
            fail: prefixes.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn record(&self, line: String) -> io::Result<()> {
        let fails = self.fail.iter().any(|f| line.starts_with(f.as_str()));
        if let Ok(mut c) = self.calls.lock() {
            c.push(line);
        }
        if fails {
            Err(io::Error::from_raw_os_error(libc::EPERM))
        } else {
            Ok(())
        }
    }
}

impl Sys for Recorder {
    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        self.record(format!("mkdir {} {mode:o}", path.display()))
    }
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        self.record(format!(
            "mount {source} {} {fstype} {:#x} {}",
            target.display(),
            flags.bits(),
            data.unwrap_or("-")
        ))
    }
    fn symlink(&self, target: &str, link: &Path) -> io::Result<()> {
        self.record(format!("symlink {target} {}", link.display()))
    }
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.record(format!(
            "write {} {}",
            path.display(),
            String::from_utf8_lossy(data).trim_end()
        ))
    }
    fn sethostname(&self, name: &str) -> io::Result<()> {
        self.record(format!("sethostname {name}"))
    }
    fn finit_module(&self, path: &Path) -> io::Result<()> {
        self.record(format!("finit_module {}", path.display()))
    }
}
