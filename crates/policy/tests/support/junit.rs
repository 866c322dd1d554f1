//! Shared by the tests that write JUnit (`tests/report.rs`, `tests/tree_tools.rs`), included
//! with `#[path]`: the real validator they check it with.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// `xml` checked against pytest's JUnit 10 schema by xmllint (Debian's libxml2-utils, which
/// `scripts/apt-tools.sh` installs): a real validator, not our reading of the schema.
pub fn validate_junit(xml: &str) -> Result<(), String> {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/junit-10.xsd");
    let mut child = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(&schema)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run xmllint ({e}): install libxml2-utils (scripts/apt-tools.sh does); \
                 this test validates JUnit output against the schema and is not skipped"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(xml.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    match output.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}
