//! Compiles and lints the bundled policy (`policy.toml`, or `TOKEN_BROKER_BUNDLED_POLICY`) with the
//! same code the broker and `token-broker policy check` run, so a policy that does not compile or
//! has an error finding fails `cargo build` (and so `sam build`) instead of reaching a Lambda;
//! then embeds it, with every file it reads (delegated team files, session policies), as a
//! bundle (`token_broker_policy::lazy::Bundle`) whose index lets the broker compile, at start,
//! only the root's own part and each delegated file on first use. Warnings are shown and do not
//! fail the build.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use token_broker_policy::lazy::Bundle;

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
    // Each file read once, so the check and the bundle see the same text.
    let files = RefCell::new(BTreeMap::new());
    let read = |relative: &str| {
        if let Some(text) = files.borrow().get(relative) {
            return Ok(String::clone(text));
        }
        let full = base.join(relative);
        println!("cargo::rerun-if-changed={}", full.display());
        let text = std::fs::read_to_string(&full).map_err(|e| e.to_string())?;
        files.borrow_mut().insert(relative.to_owned(), text.clone());
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
    let bundle = Bundle::build(shown, &text, &read)
        .unwrap_or_else(|e| fail(&format!("the bundled policy is invalid: {e}")));
    if let Some(why) = bundle.eager_because() {
        println!(
            "cargo::warning=the broker will compile the whole policy tree at every start ({why}): write each [delegate.NAME] entry as a table of its own so that it compiles a team's file on first use"
        );
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bytes = out.join("bundled_policy.bin");
    std::fs::write(&bytes, bundle.bytes()).expect("write bundled_policy.bin");
    std::fs::write(out.join("bundled_policy.rs"), embedding(shown, &bytes))
        .expect("write bundled_policy.rs");
}

/// `bundled_policy.rs`: the policy's name, for messages, and its bundle.
fn embedding(shown: &Path, bytes: &Path) -> String {
    let mut source = format!(
        "pub const PATH: &str = {:?};\n",
        shown.display().to_string()
    );
    writeln!(
        source,
        "pub static BUNDLE: &[u8] = include_bytes!({:?});",
        bytes.display().to_string()
    )
    .unwrap();
    source
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
