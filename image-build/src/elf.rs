//! What a dynamically linked program needs at run time: its program interpreter (`PT_INTERP`)
//! and the libraries it names (`DT_NEEDED`), found again in the libraries' own needs. So a layer
//! carries exactly the shared libraries of its binaries, from the Debian packages unpacked for it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use object::Endianness;
use object::elf;
use object::read::elf::{ElfFile64, ProgramHeader};

/// The interpreter path and the needed library names of an ELF file's bytes.
pub fn needs(data: &[u8]) -> Result<(Option<String>, Vec<String>)> {
    let file = ElfFile64::<Endianness>::parse(data).context("not a 64-bit ELF file")?;
    let endian = file.endian();
    let mut interp = None;
    for ph in file.elf_program_headers() {
        if let Some(i) = ph.interpreter(endian, data)? {
            interp = Some(String::from_utf8_lossy(i).into_owned());
        }
    }
    let table = file.elf_section_table().dynamic_table(endian, data)?;
    let mut needed = Vec::new();
    for d in table.iter() {
        if d.tag == elf::DT_NEEDED {
            needed.push(String::from_utf8_lossy(table.string(d)?).into_owned());
        }
    }
    Ok((interp, needed))
}

/// The library folders of a Debian tree for an architecture's multiarch triplet.
fn lib_dirs(triplet: &str) -> Vec<String> {
    vec![
        format!("lib/{triplet}"),
        format!("usr/lib/{triplet}"),
        "lib".into(),
        "usr/lib".into(),
        "lib64".into(),
    ]
}

/// The files (relative paths) that `binaries` need, looked up in `trees` (unpacked packages):
/// the interpreter and every library, transitively. Symlinked names are returned as such, with
/// their targets.
pub fn closure(
    binaries: &[PathBuf],
    trees: &[PathBuf],
    triplet: &str,
) -> Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    let mut queue: Vec<PathBuf> = binaries.to_vec();
    let mut seen_libs = BTreeSet::new();
    while let Some(file) = queue.pop() {
        let data = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let (interp, needed) =
            needs(&data).with_context(|| format!("reading {}", file.display()))?;
        if let Some(i) = interp {
            let rel = PathBuf::from(i.trim_start_matches('/'));
            let found = find_file(trees, &rel)
                .with_context(|| format!("no interpreter {i} for {}", file.display()))?;
            add_with_links(&mut out, trees, &rel)?;
            if seen_libs.insert(rel.clone()) {
                queue.push(found);
            }
        }
        for lib in needed {
            let rel = lib_dirs(triplet)
                .iter()
                .map(|d| Path::new(d).join(&lib))
                .find(|r| find_file(trees, r).is_some());
            let Some(rel) = rel else {
                bail!(
                    "{} needs {lib}, which no unpacked package has",
                    file.display()
                );
            };
            add_with_links(&mut out, trees, &rel)?;
            if seen_libs.insert(rel.clone())
                && let Some(p) = find_file(trees, &rel)
            {
                queue.push(p);
            }
        }
    }
    Ok(out)
}

/// The tree holding `rel`, resolved through symlinks inside it.
fn find_file(trees: &[PathBuf], rel: &Path) -> Option<PathBuf> {
    trees.iter().map(|t| t.join(rel)).find(|p| p.exists())
}

/// Adds `rel` and, when it is a symlink, what it points to (relative to its folder).
fn add_with_links(out: &mut BTreeSet<PathBuf>, trees: &[PathBuf], rel: &Path) -> Result<()> {
    let mut cur = rel.to_path_buf();
    for _ in 0..8 {
        out.insert(cur.clone());
        let Some(tree) = trees
            .iter()
            .find(|t| t.join(&cur).symlink_metadata().is_ok())
        else {
            return Ok(());
        };
        let Ok(target) = std::fs::read_link(tree.join(&cur)) else {
            return Ok(());
        };
        let parent = cur.parent().map(Path::to_path_buf).unwrap_or_default();
        cur = if target.is_absolute() {
            PathBuf::from(target.to_string_lossy().trim_start_matches('/'))
        } else {
            parent.join(target)
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test binary is dynamically linked on the host: it needs libc and an interpreter.
    #[test]
    fn reads_the_needs_of_a_dynamic_program() {
        let exe = std::env::current_exe().expect("exe");
        let data = std::fs::read(exe).expect("read");
        let (interp, needed) = needs(&data).expect("elf");
        assert!(interp.is_some_and(|i| i.contains("ld-linux")));
        assert!(
            needed.iter().any(|n| n.starts_with("libc.so")),
            "{needed:?}"
        );
    }
}
