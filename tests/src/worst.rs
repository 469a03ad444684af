//! User-data made to be expensive to validate, each at most 1 MiB (the boot's cap): what the
//! config benchmark measures and the tests feed through the whole path.

/// A generated case: its name and its text.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: &'static str,
    pub what: &'static str,
    pub text: String,
}

/// The cap every case stays under.
pub const MAX: usize = 1 << 20;

fn services(n: usize, mut extra: impl FnMut(usize) -> String) -> String {
    let mut t = String::new();
    for i in 0..n {
        t.push_str(&format!(
            "[services.s{i}]\nimage = \"busybox\"\ncommand = [\"sleep\", \"1000\"]\n{}",
            extra(i)
        ));
    }
    t
}

/// Every case.
pub fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    let mut add = |name, what, text: String| {
        assert!(text.len() <= MAX, "{name}: {} bytes", text.len());
        out.push(Case { name, what, text });
    };
    add(
        "unknown-keys",
        "50,000 unknown top-level keys",
        (0..50_000).map(|i| format!("k{i} = 1\n")).collect(),
    );
    add(
        "services",
        "10,000 services",
        services(10_000, |_| String::new()),
    );
    add(
        "chain",
        "10,000 services, each depending on the one before",
        services(10_000, |i| {
            if i == 0 {
                String::new()
            } else {
                format!("depends_on = [\"s{}\"]\n", i - 1)
            }
        }),
    );
    add(
        "cycle",
        "the same chain, closed into one cycle",
        services(10_000, |i| {
            format!("depends_on = [\"s{}\"]\n", (i + 9_999) % 10_000)
        }),
    );
    add(
        "unknown-deps",
        "10,000 services depending on services that do not exist",
        services(10_000, |i| format!("depends_on = [\"x{i}\"]\n")),
    );
    add(
        "sysctl",
        "60,000 sysctl lines",
        std::iter::once("[sysctl]\n".to_string())
            .chain((0..60_000).map(|i| format!("\"n.e{i}\" = 1\n")))
            .collect(),
    );
    add(
        "one-line",
        "40,000 sysctls in one inline table on one line",
        format!(
            "sysctl = {{ {} }}\n",
            (0..40_000)
                .map(|i| format!("\"a.b{i}\" = 1"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    add(
        "bad-values",
        "7,000 services with a bad value each",
        services(7_000, |_| "restart = \"sometimes\"\n".into()),
    );
    add(
        "late-errors",
        "60,000 good sysctl lines, then 30 lines of broken TOML",
        {
            let mut t: String = std::iter::once("[sysctl]\n".to_string())
                .chain((0..60_000).map(|i| format!("\"n.f{i}\" = 1\n")))
                .collect();
            for i in 0..30 {
                t.push_str(&format!("broken{i} = = 1\n"));
            }
            t
        },
    );
    add(
        "deep",
        "nesting at and past the parser's limit, 2,000 times",
        {
            let mut t = String::new();
            for i in 0..2_000 {
                let depth = 70 + i % 20;
                t.push_str(&format!(
                    "d{i} = {}1{}\n",
                    "[".repeat(depth),
                    "]".repeat(depth)
                ));
            }
            t
        },
    );
    add(
        "dotted",
        "keys of 70 dotted parts, 3,000 times",
        (0..3_000)
            .map(|i| format!("{}.k{i} = {i}\n", vec!["a"; 70].join(".")))
            .collect(),
    );
    out
}
