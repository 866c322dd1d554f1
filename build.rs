//! Compiles and lints the bundled policy (`policy.toml`, or `TOKEN_BROKER_BUNDLED_POLICY`) with the
//! same code the broker and `token-broker policy check` run, so a policy that does not compile or
//! has an error finding fails `cargo build` (and so `sam build`) instead of reaching a Lambda;
//! then embeds it and its session policy files. Warnings are shown and do not fail the build.

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
    // Named as `policy check` names it when run from the repository root.
    let shown = path.strip_prefix(&manifest).unwrap_or(&path);
    match token_broker_policy::lint::bundle_check(shown, &text, &read) {
        Ok(warnings) => {
            for warning in warnings {
                println!("cargo::warning={}", warning.display_with_path(shown));
            }
        }
        Err(report) => fail(&report),
    }
    let source = embedding(shown, &path, &files.borrow());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("bundled_policy.rs"), source).expect("write bundled_policy.rs");
}

/// `bundled_policy.rs`: the policy's name and text, and each session policy file it read.
fn embedding(shown: &Path, path: &Path, files: &[(String, PathBuf)]) -> String {
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
    for (relative, full) in files {
        writeln!(
            source,
            "    ({relative:?}, include_str!({:?})),",
            full.display().to_string()
        )
        .unwrap();
    }
    source.push_str("];\n");
    source
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
