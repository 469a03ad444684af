//! Reads the shipped service definitions (`system-services/services/*.toml`) at build time into
//! the tree the validator walks, and writes it out as Rust code (`$OUT_DIR/shipped.rs`), with
//! the names of the images in `system-services/images.toml`. Every boot needs them, and when
//! no user-data is TOML (a default boot, or one configured on the kernel command line) reading
//! them was the only TOML parse of the boot: translating the parser's code under QEMU TCG cost
//! ~34 ms (x86_64). The reader is the crate's own (`src/toml_src.rs`, with the modules it
//! uses), so the tree is the one a parse at boot would give, positions and all; a shipped file
//! with an error fails the build.

// A build script reports to cargo on standard output, and fails by panicking.
#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)]

#[allow(dead_code, unused_imports)]
#[path = "src/error.rs"]
mod error;
#[allow(dead_code)]
#[path = "src/node.rs"]
mod node;
#[allow(dead_code)]
#[path = "src/toml_src.rs"]
mod toml_src;

use std::fmt::Write;

use node::{Node, Value};

const SERVICES: &str = "../../system-services/services";
const IMAGES: &str = "../../system-services/images.toml";

fn main() {
    let mut files: Vec<String> = std::fs::read_dir(SERVICES)
        .expect("system-services/services")
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.ends_with(".toml").then_some(name)
        })
        .collect();
    files.sort();
    println!("cargo:rerun-if-changed={SERVICES}");
    println!("cargo:rerun-if-changed={IMAGES}");
    let mut out = String::from(
        "/// The shipped service definitions, as read by `toml_src::parse` at build time: (file,\n\
         /// tree).\nfn service_nodes() -> Vec<(&'static str, Node)> {\n    vec![\n",
    );
    for f in &files {
        let path = format!("{SERVICES}/{f}");
        println!("cargo:rerun-if-changed={path}");
        let text = std::fs::read_to_string(&path).expect("a shipped definition");
        let (node, errors) = toml_src::parse(&format!("image:{f}"), &text);
        assert!(errors.is_empty(), "{path}: {errors:?}");
        let _ = writeln!(out, "        ({f:?}, {}),", emit(&node));
    }
    out.push_str("    ]\n}\n\n");
    // The keys of `[images]`.
    let images = std::fs::read_to_string(IMAGES).expect("images.toml");
    let doc: toml::Table = images.parse().expect("images.toml parses");
    let names: Vec<String> = doc
        .get("images")
        .and_then(toml::Value::as_table)
        .map(|t| t.keys().map(|k| format!("{k:?}")).collect())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "/// The images built into every ros image.\nconst IMAGE_NAMES: &[&str] = &[{}];",
        names.join(", ")
    );
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("shipped.rs");
    std::fs::write(dest, out).expect("writing shipped.rs");
}

fn emit(n: &Node) -> String {
    format!(
        "Node {{ pos: Pos {{ line: {}, column: {} }}, value: {} }}",
        n.pos.line,
        n.pos.column,
        emit_value(&n.value)
    )
}

fn emit_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("Value::String({s:?}.to_string())"),
        Value::Integer(i) => format!("Value::Integer({i})"),
        Value::Float(f) => {
            assert!(f.is_finite(), "a shipped float must be finite");
            format!("Value::Float({f:?})")
        }
        Value::Bool(b) => format!("Value::Bool({b})"),
        Value::Datetime(s) => format!("Value::Datetime({s:?}.to_string())"),
        Value::Text(s) => format!("Value::Text({s:?}.to_string())"),
        Value::Array(items) => format!(
            "Value::Array(vec![{}])",
            items.iter().map(emit).collect::<Vec<_>>().join(", ")
        ),
        Value::Table(entries) => format!(
            "Value::Table(vec![{}])",
            entries
                .iter()
                .map(|e| format!(
                    "Entry {{ key: {:?}.to_string(), key_pos: Pos {{ line: {}, column: {} }}, node: {} }}",
                    e.key,
                    e.key_pos.line,
                    e.key_pos.column,
                    emit(&e.node)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
