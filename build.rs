//! Compiles the bundled policy (`policy.toml`, or `TOKEN_BROKER_BUNDLED_POLICY`) with the same
//! code the broker runs, so a policy that does not parse or compile fails `cargo build` (and so
//! `sam build`) instead of a running Lambda; then embeds it and its session policy files.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rerun-if-env-changed=TOKEN_BROKER_BUNDLED_POLICY");
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let path = std::env::var("TOKEN_BROKER_BUNDLED_POLICY")
        .map(PathBuf::from)
        .unwrap_or_else(|_| manifest.join("policy.toml"));
    println!("cargo::rerun-if-changed={}", path.display());
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", path.display())));
    let base = path.parent().unwrap_or(Path::new(".")).to_owned();
    let files = RefCell::new(Vec::new());
    let read = |relative: &str| {
        let full = base.join(relative);
        println!("cargo::rerun-if-changed={}", full.display());
        let text = std::fs::read_to_string(&full).map_err(|e| e.to_string())?;
        files.borrow_mut().push((relative.to_owned(), full));
        Ok(text)
    };
    let shown = path.strip_prefix(&manifest).unwrap_or(&path);
    if let Err(error) = token_broker_policy::parse(shown, &text, &read) {
        fail(&format!("the bundled policy is invalid: {error}"));
    }
    let mut source = format!(
        "pub const PATH: &str = {:?};\n",
        shown.display().to_string()
    );
    writeln!(
        source,
        "pub const TEXT: &str = include_str!({:?});",
        path.display().to_string()
    )
    .unwrap();
    source.push_str("pub const FILES: &[(&str, &str)] = &[\n");
    for (relative, full) in files.borrow().iter() {
        writeln!(
            source,
            "    ({relative:?}, include_str!({:?})),",
            full.display().to_string()
        )
        .unwrap();
    }
    source.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("bundled_policy.rs"), source).expect("write bundled_policy.rs");
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
