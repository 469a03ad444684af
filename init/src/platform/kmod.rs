//! Loads kernel modules with `finit_module`, dependencies first, from the index `ros-image`
//! wrote: the modules the devices present ask for (their `modalias`, rescanned after each round
//! since loading a bus driver reveals new devices), and the modules the config names. A module
//! that fails is reported; the boot goes on.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ros_kmod::Index;

use crate::platform::sys::Sys;

/// Rounds of scan-and-load; each loads bus drivers that reveal the next level of devices.
const MAX_ROUNDS: usize = 6;

/// The outcome of the module phases, for the ready line.
pub use ros_api::report::{ModuleFailure as Failure, Modules as Report};

#[derive(Debug)]
pub struct Loader {
    index: Index,
    dir: PathBuf,
    /// Loaded or attempted, so nothing is tried twice.
    tried: BTreeSet<String>,
    /// Not loaded for devices until asked.
    held: BTreeSet<String>,
    pub report: Report,
}

impl Loader {
    /// Reads the index of the running kernel from `modules_root` (`/lib/modules`).
    pub fn open(modules_root: &Path, release: &str) -> Result<Loader, String> {
        let dir = modules_root.join(release);
        let path = dir.join(ros_kmod::INDEX_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let index = Index::parse(&text).map_err(|e| e.to_string())?;
        Ok(Loader {
            index,
            dir,
            tried: BTreeSet::new(),
            held: BTreeSet::new(),
            report: Report::default(),
        })
    }

    pub fn from_index(index: Index, dir: PathBuf) -> Loader {
        Loader {
            index,
            dir,
            tried: BTreeSet::new(),
            held: BTreeSet::new(),
            report: Report::default(),
        }
    }

    /// Loads `names` (modules or aliases) and what they need.
    pub fn load(&mut self, sys: &dyn Sys, names: &[String]) {
        let mut resolved = Vec::new();
        for n in names {
            match self.index.lookup(n) {
                Some(m) => resolved.push(m.to_string()),
                None if self.index.builtin.contains(&ros_kmod::normalize(n)) => {}
                None => self.fail(n, "not in this image (and not built into the kernel)"),
            }
        }
        self.load_resolved(sys, resolved);
    }

    fn load_resolved(&mut self, sys: &dyn Sys, names: Vec<String>) {
        let (order, errors) = self.index.load_order(names.iter().map(String::as_str));
        let order: Vec<(String, PathBuf)> = order
            .into_iter()
            .map(|m| (m.name.clone(), self.dir.join(&m.path)))
            .collect();
        for e in errors {
            let name = match &e {
                ros_kmod::ResolveError::Unknown(n) => n.clone(),
                ros_kmod::ResolveError::MissingDep { module, .. } => module.clone(),
                ros_kmod::ResolveError::Cycle(c) => c.clone(),
            };
            self.fail(&name, &e.to_string());
        }
        for (name, path) in order {
            if !self.tried.insert(name.clone()) {
                continue;
            }
            let t = crate::platform::clock::uptime_ms();
            match sys.finit_module(&path) {
                Ok(()) => {
                    log::debug!(
                        "module {name} loaded in {} ms",
                        crate::platform::clock::uptime_ms() - t
                    );
                    self.report.loaded.push(name);
                }
                Err(e) => self.fail(&name, &e.to_string()),
            }
        }
    }

    fn fail(&mut self, name: &str, error: &str) {
        if self.report.failed.iter().any(|f| f.name == name) {
            return;
        }
        log::warn!("module {name}: {error}");
        self.tried.insert(name.to_string());
        self.report.failed.push(Failure {
            name: name.to_string(),
            error: error.to_string(),
        });
    }

    /// Loads what the devices under `sysfs` ask for: one scan of sysfs, then the devices that
    /// each round of loading reveals, from `new_devices` (the modaliases of devices added since
    /// the last call), until no new module is wanted.
    pub fn load_for_devices(
        &mut self,
        sys: &dyn Sys,
        sysfs: &Path,
        new_devices: &mut dyn FnMut() -> Vec<String>,
    ) {
        let t = crate::platform::clock::uptime_ms();
        let mut aliases: Vec<String> = modaliases(sysfs).into_iter().collect();
        log::debug!(
            "scanned {} device aliases in {} ms",
            aliases.len(),
            crate::platform::clock::uptime_ms() - t
        );
        for _ in 0..MAX_ROUNDS {
            let wanted: Vec<String> = self.wanted(&aliases);
            if wanted.is_empty() {
                return;
            }
            log::debug!("devices ask for: {}", wanted.join(" "));
            self.load_resolved(sys, wanted);
            aliases = new_devices();
        }
    }

    /// The modules `aliases` ask for that were not tried yet and are not held back.
    fn wanted(&self, aliases: &[String]) -> Vec<String> {
        aliases
            .iter()
            .flat_map(|a| self.index.matching(a))
            .filter(|m| !self.tried.contains(*m) && !self.held.contains(*m))
            .map(str::to_string)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Holds these modules back from device-driven loading (loaded later with
    /// [`Loader::load_held`]).
    pub fn hold(&mut self, names: &[&str]) {
        self.held.extend(names.iter().map(|n| n.to_string()));
    }

    /// Releases the held-back modules and loads what devices ask for now, in rounds as
    /// [`Loader::load_for_devices`] does (a held module can reveal devices that want another).
    pub fn load_held(
        &mut self,
        sys: &dyn Sys,
        sysfs: &Path,
        new_devices: &mut dyn FnMut() -> Vec<String>,
    ) {
        self.held.clear();
        self.load_for_devices(sys, sysfs, new_devices);
    }
}

/// The `modalias` of every device on every bus under `sysfs` (`/sys`). Reads each file with one
/// `open` and one `read` into a stack buffer: this runs at every boot, and under emulation each
/// system call counts.
pub fn modaliases(sysfs: &Path) -> BTreeSet<String> {
    use std::io::Read;
    let mut out = BTreeSet::new();
    let Ok(buses) = std::fs::read_dir(sysfs.join("bus")) else {
        return out;
    };
    let mut buf = [0u8; 512];
    for bus in buses.flatten() {
        let Ok(devices) = std::fs::read_dir(bus.path().join("devices")) else {
            continue;
        };
        for dev in devices.flatten() {
            let Ok(mut f) = std::fs::File::open(dev.path().join("modalias")) else {
                continue;
            };
            let Ok(n) = f.read(&mut buf) else {
                continue;
            };
            if let Ok(a) = std::str::from_utf8(&buf[..n]) {
                let a = a.trim();
                if !a.is_empty() {
                    out.insert(a.to_string());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::sys::Recorder;

    fn index() -> Index {
        Index::parse(
            "ros-modules 1 r\n\
             m virtio kernel/virtio.ko -\n\
             m virtio_pci kernel/virtio_pci.ko virtio\n\
             m virtio_net kernel/virtio_net.ko virtio\n\
             m bad kernel/bad.ko -\n\
             a virtio_pci pci:v00001AF4d*\n\
             a virtio_net virtio:d00000001v*\n\
             b ext4\n",
        )
        .expect("index")
    }

    /// A fake /sys whose virtio device appears once virtio_pci is "loaded".
    struct FakeSys {
        rec: Recorder,
        sysfs: PathBuf,
    }

    impl Sys for FakeSys {
        fn mkdir_all(&self, p: &Path, m: u32) -> std::io::Result<()> {
            self.rec.mkdir_all(p, m)
        }
        fn mount(
            &self,
            s: &str,
            t: &Path,
            f: &str,
            fl: nix::mount::MsFlags,
            d: Option<&str>,
        ) -> std::io::Result<()> {
            self.rec.mount(s, t, f, fl, d)
        }
        fn symlink(&self, t: &str, l: &Path) -> std::io::Result<()> {
            self.rec.symlink(t, l)
        }
        fn write(&self, p: &Path, d: &[u8]) -> std::io::Result<()> {
            self.rec.write(p, d)
        }
        fn sethostname(&self, n: &str) -> std::io::Result<()> {
            self.rec.sethostname(n)
        }
        fn finit_module(&self, path: &Path) -> std::io::Result<()> {
            if path.ends_with("virtio_pci.ko") {
                let d = self.sysfs.join("bus/virtio/devices/virtio0");
                std::fs::create_dir_all(&d)?;
                std::fs::write(d.join("modalias"), "virtio:d00000001v00001AF4\n")?;
            }
            self.rec.finit_module(path)
        }
    }

    #[test]
    fn devices_pull_in_drivers_round_by_round_in_dependency_order() {
        let tmp = tempfile::tempdir().expect("tmp");
        let pci = tmp.path().join("bus/pci/devices/0000:00:03.0");
        std::fs::create_dir_all(&pci).expect("mkdir");
        std::fs::write(
            pci.join("modalias"),
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00\n",
        )
        .expect("write");
        let sys = FakeSys {
            rec: Recorder::default(),
            sysfs: tmp.path().to_path_buf(),
        };
        let mut l = Loader::from_index(index(), PathBuf::from("/lib/modules/r"));
        let sysfs = tmp.path().to_path_buf();
        let mut seen = modaliases(&sysfs);
        let mut new_devices = || {
            let now = modaliases(&sysfs);
            let new: Vec<String> = now.difference(&seen).cloned().collect();
            seen = now;
            new
        };
        l.load_for_devices(&sys, tmp.path(), &mut new_devices);
        assert_eq!(
            sys.rec.calls(),
            [
                "finit_module /lib/modules/r/kernel/virtio.ko",
                "finit_module /lib/modules/r/kernel/virtio_pci.ko",
                "finit_module /lib/modules/r/kernel/virtio_net.ko",
            ]
        );
        assert_eq!(l.report.loaded, ["virtio", "virtio_pci", "virtio_net"]);
    }

    #[test]
    fn held_modules_wait_until_asked() {
        let tmp = tempfile::tempdir().expect("tmp");
        let pci = tmp.path().join("bus/pci/devices/0000:00:03.0");
        std::fs::create_dir_all(&pci).expect("mkdir");
        std::fs::write(pci.join("modalias"), "pci:v00001AF4d00001000\n").expect("write");
        let rec = Recorder::default();
        let mut l = Loader::from_index(index(), PathBuf::from("/lib/modules/r"));
        l.hold(&["virtio_pci"]);
        l.load_for_devices(&rec, tmp.path(), &mut Vec::new);
        assert!(rec.calls().is_empty());
        l.load_held(&rec, tmp.path(), &mut Vec::new);
        assert_eq!(rec.calls().len(), 2, "{:?}", rec.calls());
    }

    #[test]
    fn config_modules_unknown_builtin_and_failing() {
        let rec = Recorder::failing(&["finit_module /lib/modules/r/kernel/bad.ko"]);
        let mut l = Loader::from_index(index(), PathBuf::from("/lib/modules/r"));
        l.load(
            &rec,
            &[
                "virtio-net".into(),
                "ext4".into(),
                "nope".into(),
                "bad".into(),
                "virtio".into(),
            ],
        );
        assert_eq!(l.report.loaded, ["virtio", "virtio_net"]);
        let failed: Vec<_> = l.report.failed.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(failed, ["nope", "bad"]);
        // Nothing is loaded twice.
        assert_eq!(
            rec.calls()
                .iter()
                .filter(|c| c.ends_with("/virtio.ko"))
                .count(),
            1
        );
    }
}
