//! GitLab's report formats, so that a policy change is reviewed where reviewers look: lint
//! findings as Code Quality JSON (the merge request widget and inline in the diff), with the
//! policy file named as GitLab names it, and decision cases as JUnit XML (the test report widget).

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::beside;
use crate::cases::{CaseFailure, Outcome};
use crate::explain::Explanation;
use crate::lint::{Finding, Severity};

/// How a report names the files of a policy tree: the root policy, and each delegated file by
/// the name the root gives it ([`crate::Delegate::file`]). GitLab matches a Code Quality path
/// against the repository's files, so a report for GitLab names them with [`Paths::in_repository`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    root: String,
    delegated: HashMap<String, String>,
}

impl Paths {
    /// Every file as given: the root policy as `root`, a delegated file beside it
    /// ([`crate::beside`]). Pure.
    pub fn as_given(root: &Path) -> Self {
        Self {
            root: root.display().to_string(),
            delegated: HashMap::new(),
        }
    }

    /// Every file from its repository's root ([`repository_path`]): the root policy at `root`
    /// and the `delegated` files beside it, as the root names them. Reads the file system.
    pub fn in_repository<'a>(root: &Path, delegated: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            root: repository_path(root),
            delegated: delegated
                .into_iter()
                .map(|file| (file.to_owned(), repository_path(&beside(root, file))))
                .collect(),
        }
    }

    /// The name of the root policy (`None`) or of the delegated file `file`.
    pub fn of(&self, file: Option<&str>) -> String {
        match file {
            None => self.root.clone(),
            Some(file) => self
                .delegated
                .get(file)
                .cloned()
                .unwrap_or_else(|| beside(Path::new(&self.root), file).display().to_string()),
        }
    }
}

/// Findings (and a compile error, which stops linting) as GitLab Code Quality issues: CodeClimate
/// JSON with `description`, `check_name` (the lint id), `severity`, `fingerprint` and
/// `location.path` / `location.lines.begin`. `paths` names the file each finding is in
/// ([`Finding::file`]); `compile_error` is the path of the file it is in, as the report should
/// name it, its line and its message.
///
/// A fingerprint is how GitLab tells a finding that is still there from one that is new or
/// fixed, so it hashes what the finding is about and never where it is: the lint id, the file,
/// the role, token or delegate, the rule's content ([`Finding::rule_content`]) and the finding's
/// subject, but not the rule's number, its line or the message (which names the number).
/// Inserting, moving or reordering rules and roles leaves the other findings' fingerprints as
/// they were; a role moved to another file of the tree is another finding.
pub fn code_quality(
    paths: &Paths,
    findings: &[Finding],
    compile_error: Option<(&str, usize, &str)>,
) -> Value {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut issues: Vec<Value> = findings
        .iter()
        .map(|f| {
            let path = paths.of(f.file.as_deref());
            let fingerprint = unique(&mut seen, finding_fingerprint(&path, f));
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
    if let Some((path, line, message)) = compile_error {
        // The message says what is wrong, not where (that is `lines.begin`), so the issue keeps
        // its fingerprint while edits above it move it.
        issues.push(json!({
            "description": format!("the policy does not compile: {message}"),
            "check_name": "compile",
            "severity": "blocker",
            "fingerprint": fingerprint(&["compile", path, message]),
            "location": {"path": path, "lines": {"begin": line.max(1)}},
        }));
    }
    Value::Array(issues)
}

fn finding_fingerprint(path: &str, f: &Finding) -> String {
    fingerprint(&[
        f.id,
        path,
        &f.kind.to_string(),
        &f.grant,
        f.rule_content.as_deref().unwrap_or_default(),
        f.subject.as_deref().unwrap_or_default(),
    ])
}

/// `print`, or for its second and later occurrences a hash of it and the count: GitLab needs
/// every issue's fingerprint to differ, and identical rules (which TB106 reports) have identical
/// findings. Counting in file order keeps the first occurrence's fingerprint as it was.
fn unique(seen: &mut HashMap<String, usize>, print: String) -> String {
    let count = seen.entry(print.clone()).or_insert(0);
    *count += 1;
    match *count {
        1 => print,
        n => fingerprint(&[&print, &n.to_string()]),
    }
}

/// Where `file` sits in its Git repository, with `/` separators (`crates/x/policy.toml`), as
/// GitLab names files in Code Quality reports: the nearest directory above the canonical `file`
/// that holds a `.git` (a directory, or a file in a worktree) is the root. The path as given when
/// `file` does not exist, is in no repository or is not UTF-8. Reads the file system, unlike the
/// rest of this module, so a caller runs it once for the file it reports on.
pub fn repository_path(file: &Path) -> String {
    relative_to_repository(file).unwrap_or_else(|| file.display().to_string())
}

fn relative_to_repository(file: &Path) -> Option<String> {
    let file = file.canonicalize().ok()?;
    let root = file
        .ancestors()
        .skip(1)
        .find(|dir| dir.join(".git").exists())?;
    let parts = file
        .strip_prefix(root)
        .ok()?
        .components()
        .map(|part| part.as_os_str().to_str())
        .collect::<Option<Vec<_>>>()?;
    Some(parts.join("/"))
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

/// One cases file's part of a JUnit report.
#[derive(Debug, Clone, Copy)]
pub enum Suite<'a> {
    /// Its cases, as they ran.
    Ran {
        cases_file: &'a Path,
        outcome: &'a Outcome,
    },
    /// Its cases could not run (the policy does not compile, the file does not load): `what`
    /// failed, and `reason` says why.
    Failed {
        cases_file: &'a Path,
        what: &'a str,
        reason: &'a str,
    },
}

/// The decision cases as JUnit XML: one `testsuite` per cases file (named by its path), one
/// `testcase` per case, a failing one with its problem as the failure message and as the start
/// of its text, then a blank line and the decision trace. A cases file that cannot run is one
/// failed `testcase` named for what failed, with the reason as its message and text, so the
/// merge request's test report shows why instead of nothing: a `failure`, not an `error`, as the
/// JUnit 10 schema has no `error` element in a `testcase`. Valid against that schema (pytest
/// ships it; `tests/fixtures/junit-10.xsd`), which requires `errors` on `testsuite`: no case can
/// error, so it is always 0, as is `skipped`.
pub fn junit_suites(suites: &[Suite<'_>]) -> String {
    let count = |suite: &Suite<'_>| match suite {
        Suite::Ran { outcome, .. } => (outcome.cases.len(), outcome.cases.len() - outcome.passed()),
        Suite::Failed { .. } => (1, 1),
    };
    let (tests, failures) = suites
        .iter()
        .map(count)
        .fold((0, 0), |(t, f), (tests, failures)| {
            (t + tests, f + failures)
        });
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <testsuites tests=\"{tests}\" failures=\"{failures}\" errors=\"0\">\n"
    );
    for suite in suites {
        let (tests, failures) = count(suite);
        let (Suite::Ran { cases_file, .. } | Suite::Failed { cases_file, .. }) = suite;
        let name = xml(&cases_file.display().to_string());
        out.push_str(&format!(
            "  <testsuite name=\"{name}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\">\n",
        ));
        match suite {
            Suite::Ran { outcome, .. } => {
                for case in &outcome.cases {
                    let problem = case
                        .failure
                        .as_ref()
                        .map(|failure| (failure.problem.as_str(), failure_text(failure)));
                    testcase(&mut out, &name, &case.name, problem);
                }
            }
            Suite::Failed { what, reason, .. } => {
                testcase(&mut out, &name, what, Some((reason, (*reason).to_owned())));
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// One `testcase` of suite `suite` (already escaped): passed, or failed with a message and text.
fn testcase(out: &mut String, suite: &str, name: &str, failure: Option<(&str, String)>) {
    out.push_str(&format!(
        "    <testcase classname=\"{suite}\" name=\"{}\"",
        xml(name)
    ));
    match failure {
        None => out.push_str("/>\n"),
        Some((message, text)) => out.push_str(&format!(
            ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
            xml(message),
            xml(&text)
        )),
    }
}

/// The decision cases of one file as JUnit XML ([`junit_suites`] with one suite).
pub fn junit(cases_file: &Path, outcome: &Outcome) -> String {
    junit_suites(&[Suite::Ran {
        cases_file,
        outcome,
    }])
}

/// The report of one cases file that cannot run ([`junit_suites`] with one failed suite).
pub fn junit_error(cases_file: &Path, what: &str, reason: &str) -> String {
    junit_suites(&[Suite::Failed {
        cases_file,
        what,
        reason,
    }])
}

/// What GitLab shows when a failed case is opened: the problem first, as `policy test` prints
/// it, so the trace below reads as its evidence.
fn failure_text(failure: &CaseFailure) -> String {
    let trace: String = failure.trace.iter().map(Explanation::to_string).collect();
    if trace.is_empty() {
        failure.problem.clone()
    } else {
        format!("{}\n\n{trace}", failure.problem)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_fingerprint_is_made_distinct_and_the_first_keeps_its_own() {
        let mut seen = HashMap::new();
        let prints: Vec<String> = ["a", "b", "a", "a"]
            .into_iter()
            .map(|p| unique(&mut seen, p.to_owned()))
            .collect();
        assert_eq!((prints[0].as_str(), prints[1].as_str()), ("a", "b"));
        assert!(prints[2] != "a" && prints[3] != "a" && prints[2] != prints[3]);
    }

    #[test]
    fn a_failure_without_a_trace_is_only_its_problem() {
        let failure = CaseFailure {
            problem: "expected allow, but: no role \"x\"".into(),
            trace: Vec::new(),
        };
        assert_eq!(failure_text(&failure), failure.problem);
    }
}
