//! Shell-style matching of module alias globs (`*`, `?`, `[...]`, `[!...]`), as `fnmatch(3)`
//! without flags. Hand-written: it is twenty lines, allocation-free, and runs for every device at
//! boot; a glob crate would compile each of a few hundred patterns first.

/// Whether `text` matches the glob `pattern`.
pub fn fnmatch(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it is trying to cover up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some(b'?') => Some(pi + 1),
            Some(b'[') => class(p, pi, t[ti]),
            Some(&c) if c == t[ti] => Some(pi + 1),
            _ => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                ti += 1;
            }
            (None, Some((sp, st))) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `p[start] == b'['`; returns the index after `]`.
fn class(p: &[u8], start: usize, c: u8) -> Option<usize> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    while let Some(&b) = p.get(i) {
        if b == b']' && !first {
            return (hit != negate).then_some(i + 1);
        }
        first = false;
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&e| e != b']') {
            hit |= (b..=p[i + 2]).contains(&c);
            i += 3;
        } else {
            hit |= b == c;
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::fnmatch;

    #[test]
    fn globs() {
        assert!(fnmatch("virtio:d00000001v*", "virtio:d00000001v00001AF4"));
        assert!(fnmatch("acpi*:QEMU0002:*", "acpi:QEMU0002:"));
        assert!(fnmatch(
            "of:N*T*Cqemu,fw-cfg-mmio",
            "of:Nfw-cfgT(null)Cqemu,fw-cfg-mmio"
        ));
        assert!(!fnmatch(
            "of:N*T*Cqemu,fw-cfg-mmio",
            "of:Nfw-cfgT(null)Cqemu,fw-cfg-mmioCx"
        ));
        assert!(fnmatch("a?c", "abc"));
        assert!(fnmatch("x[0-9]y", "x5y"));
        assert!(!fnmatch("x[!0-9]y", "x5y"));
        assert!(fnmatch("x[]]y", "x]y"));
        assert!(fnmatch("*", ""));
        assert!(!fnmatch("a", ""));
        assert!(fnmatch("*a*b*c", "xxaybzc"));
        assert!(!fnmatch("*a*b*c", "xxaybz"));
    }
}
