//! GitLab's report formats, so that a policy change is reviewed where reviewers look: lint
//! findings as Code Quality JSON (the merge request widget and inline in the diff) and decision
//! cases as JUnit XML (the test report widget).

use std::path::Path;

use serde_json::{Value, json};

use crate::cases::Outcome;
use crate::explain::Explanation;
use crate::lint::{Finding, Severity};

/// Findings (and a compile error, which stops linting) as GitLab Code Quality issues: CodeClimate
/// JSON with `description`, `check_name` (the lint id), `severity`, `fingerprint` and
/// `location.path` / `location.lines.begin`.
pub fn code_quality(
    file: &Path,
    findings: &[Finding],
    compile_error: Option<(usize, &str)>,
) -> Value {
    let path = file.display().to_string();
    let mut issues: Vec<Value> = findings
        .iter()
        .map(|f| {
            // The line is left out of the fingerprint: moving a rule is not a new finding.
            let rule = f.rule.map(|r| r.to_string()).unwrap_or_default();
            let fingerprint = fingerprint(&[f.id, &path, &f.kind.to_string(), &f.grant, &rule, &f.message]);
            json!({
                "description": format!("{} {:?}: {} [{} {}]", f.kind, f.grant, f.message, f.id, f.name),
                "check_name": f.id,
                "severity": match f.severity {
                    Severity::Error => "critical",
                    Severity::Warning => "minor",
                },
                "fingerprint": fingerprint,
                "location": {"path": path, "lines": {"begin": f.line.max(1)}},
            })
        })
        .collect();
    if let Some((line, message)) = compile_error {
        issues.push(json!({
            "description": format!("the policy does not compile: {message}"),
            "check_name": "compile",
            "severity": "blocker",
            "fingerprint": fingerprint(&["compile", &path, message]),
            "location": {"path": path, "lines": {"begin": line.max(1)}},
        }));
    }
    Value::Array(issues)
}

/// 128 bits of FNV-1a over the parts, as hex: stable across runs and machines, which is all
/// GitLab asks of a fingerprint (it is not a security boundary).
fn fingerprint(parts: &[&str]) -> String {
    let hash = |offset: u64| {
        let mut hash = offset;
        for part in parts {
            for byte in part.bytes().chain([0xff]) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        hash
    };
    format!(
        "{:016x}{:016x}",
        hash(0xcbf2_9ce4_8422_2325),
        hash(0x6c62_272e_07bb_0142)
    )
}

/// The decision cases as JUnit XML: one `testcase` per case, a failing one with its problem as
/// the failure message and the decision trace as its text.
pub fn junit(cases_file: &Path, outcome: &Outcome) -> String {
    let suite = cases_file.display().to_string();
    let (tests, failures) = (outcome.cases.len(), outcome.cases.len() - outcome.passed());
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<testsuites tests=\"{tests}\" failures=\"{failures}\">\n  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\">\n",
        xml(&suite)
    ));
    for case in &outcome.cases {
        out.push_str(&format!(
            "    <testcase classname=\"{}\" name=\"{}\"",
            xml(&suite),
            xml(&case.name)
        ));
        match &case.failure {
            None => out.push_str("/>\n"),
            Some(failure) => {
                let trace: String = failure.trace.iter().map(Explanation::to_string).collect();
                out.push_str(&format!(
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                    xml(&failure.problem),
                    xml(&trace)
                ));
            }
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// Text safe inside an XML attribute or element; characters XML 1.0 cannot hold are dropped.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c < ' ' || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => out.push(c),
        }
    }
    out
}

/// Text that can neither break out of a Markdown table cell nor become markup, a link or a
/// mention once GitLab renders it (policy values are chosen by whoever edits the policy; the
/// merge request note is read by reviewers and notifies whoever it `@`-mentions).
pub(crate) fn markdown_cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '|' | '\\' | '`' | '*' | '_' | '<' | '>' | '[' | ']' | '(' | ')' | '#' | '@' | '!'
            | '~' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}
