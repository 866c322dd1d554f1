//! Lints: policies that compile but are dangerous, each with a stable id. Errors block a deploy;
//! warnings are for a person to weigh (or `--deny-warnings`). Compile errors come first and stop
//! before linting.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::gitlab::{
    FORK_CODE_SOURCES, FREE_FORM, IDENTIFYING, JOB_IDENTITY, KNOWN_CLAIMS, NOT_STRINGS,
    SOMETIMES_ABSENT, did_you_mean,
};
use crate::{Condition, Grant, GrantKind, Pattern, Policy, Role, Rule, parse};

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Error => "error",
            Self::Warning => "warning",
        })
    }
}

/// One lint finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Stable id, e.g. `TB101`.
    pub id: &'static str,
    /// Stable name, e.g. `unpinned-identity`.
    pub name: &'static str,
    pub severity: Severity,
    /// Whether the finding is about a role or a token.
    pub kind: GrantKind,
    /// The role's or token's name.
    pub grant: String,
    /// 1-based rule number, when the finding is about one rule.
    pub rule: Option<usize>,
    /// What that rule says, in a canonical order (see [`rule_content`]); `None` for a finding
    /// about a role's settings. Unlike `rule` and `line`, it survives rules being inserted or
    /// moved, so a report can recognise the same finding across versions of the policy.
    pub rule_content: Option<String>,
    /// The claim the finding is about, when it is about one (TB102, TB105: a condition's claim;
    /// TB107, TB108: a session tag's), so two findings of one lint on one rule stay apart.
    pub subject: Option<String>,
    /// Line in the policy file: the rule's, or for a finding about a role's settings the line of
    /// the key it is about (`session_tags`, `max_duration`).
    pub line: usize,
    pub message: String,
}

/// The lints, by id: (id, name, severity, what it catches).
pub const LINTS: &[(&str, &str, Severity, &str)] = &[
    (
        "TB101",
        "unpinned-identity",
        Severity::Error,
        "a rule pins no id: neither project_id nor namespace_id, nor job_project_id or job_namespace_id (which TB110 weighs); paths can be renamed and re-registered; waive with allow_path_only = true",
    ),
    (
        "TB102",
        "match-everything",
        Severity::Error,
        "a condition on a claim that identifies the job is only wildcards (`*`, `**`, `?*`, `*/*`, …): it names no value, so any name of its shape passes",
    ),
    (
        "TB103",
        "unprotected",
        Severity::Warning,
        "a rule requires neither ref_protected = \"true\" nor environment_protected = \"true\"",
    ),
    (
        "TB104",
        "ref-without-ref-type",
        Severity::Error,
        "a rule matches ref without fixing ref_type (a tag can be named like a branch)",
    ),
    (
        "TB105",
        "unknown-claim",
        Severity::Error,
        "a condition on a claim GitLab does not issue (a typo), or issues only as an array or object: it never matches",
    ),
    (
        "TB106",
        "shadowed-rule",
        Severity::Warning,
        "a rule is identical to, or allows nothing beyond, another rule of the same role or token",
    ),
    (
        "TB107",
        "tag-claim-may-be-absent",
        Severity::Warning,
        "session_tags names a claim some jobs do not carry; their requests are denied",
    ),
    (
        "TB108",
        "tag-claim-free-form",
        Severity::Warning,
        "session_tags names a claim whose values may hold characters STS refuses; such requests are denied",
    ),
    (
        "TB109",
        "role-chaining-cap",
        Severity::Warning,
        "a role's max_duration is over 1 h: in Lambda every AssumeRole is role chaining, which STS caps at 1 h",
    ),
    (
        "TB110",
        "job-project-admits-forks",
        Severity::Error,
        "a rule names the project or group only by job_project_* / job_namespace_* claims, which a fork's merge-request pipeline run there carries too; pin project_id or namespace_id, or require ref_protected = \"true\", environment_protected = \"true\" or a pipeline_source other than merge_request_event and parent_pipeline",
    ),
];

/// STS's cap on a role-chained session, which every session the broker starts in Lambda is.
const ROLE_CHAINING_CAP: Duration = Duration::from_secs(3600);

/// Every finding for `policy`, in file order.
pub fn lint(policy: &Policy) -> Vec<Finding> {
    let mut findings = Vec::new();
    for grant in policy.grants() {
        for rule in &grant.rules {
            lint_rule(grant, rule, &mut findings);
        }
        lint_shadowing(grant, &mut findings);
    }
    for role in &policy.roles {
        lint_session_tags(role, &mut findings);
        lint_role_chaining(role, &mut findings);
    }
    findings.sort_by_key(|f| (f.line, f.id));
    findings
}

fn finding(id: &'static str, grant: &Grant, rule: Option<&Rule>, message: String) -> Finding {
    let &(_, name, severity, _) = LINTS
        .iter()
        .find(|(known, ..)| *known == id)
        .expect("a listed lint");
    let line = rule.or(grant.rules.first()).map_or(0, |r| r.line);
    Finding {
        id,
        name,
        severity,
        kind: grant.kind,
        grant: grant.name.clone(),
        rule: rule.map(|r| r.number),
        rule_content: rule.map(rule_content),
        subject: None,
        line,
        message,
    }
}

impl Finding {
    fn about(mut self, claim: &str) -> Self {
        self.subject = Some(claim.to_owned());
        self
    }

    /// At the line of the role key the finding is about, when the file has the key.
    fn at(mut self, line: usize) -> Self {
        if line > 0 {
            self.line = line;
        }
        self
    }
}

/// A rule's issuer, conditions (claims sorted, each claim's patterns sorted) and
/// `allow_path_only`, as one JSON text: the same for two rules that say the same thing,
/// wherever they sit and in whatever order their conditions are written.
pub fn rule_content(rule: &Rule) -> String {
    let conditions: BTreeMap<&str, BTreeSet<&str>> = rule
        .conditions
        .iter()
        .map(|c| {
            (
                c.claim.as_str(),
                c.patterns.iter().map(Pattern::source).collect(),
            )
        })
        .collect();
    serde_json::to_string(&(&rule.issuer, conditions, rule.allow_path_only))
        .expect("strings, a map of strings and a bool serialise")
}

fn condition<'a>(rule: &'a Rule, claim: &str) -> Option<&'a Condition> {
    rule.conditions.iter().find(|c| c.claim == claim)
}

fn pins(rule: &Rule, claim: &str) -> bool {
    condition(rule, claim)
        .is_some_and(|c| c.patterns.iter().all(|p| matches!(p, Pattern::Exact(_))))
}

fn requires_true(rule: &Rule, claim: &str) -> bool {
    condition(rule, claim).is_some_and(|c| c.patterns.iter().all(|p| p.source() == "true"))
}

fn lint_rule(grant: &Grant, rule: &Rule, findings: &mut Vec<Finding>) {
    let n = rule.number;
    if !rule.allow_path_only && !pins_an_id(rule) {
        findings.push(finding("TB101", grant, Some(rule), format!("rule {n} pins neither project_id nor namespace_id; paths can be renamed and re-registered by someone else (pin an id, or set allow_path_only = true)")));
    }
    findings.extend(job_project_only(grant, rule));
    for c in &rule.conditions {
        findings.extend(match_everything(grant, rule, c));
        if NOT_STRINGS.contains(&c.claim.as_str()) {
            let message = format!(
                "rule {n}: GitLab sends {:?} as a JSON array or object, never as a string, so the rule never matches",
                c.claim
            );
            findings.push(finding("TB105", grant, Some(rule), message).about(&c.claim));
        } else if !KNOWN_CLAIMS.contains(&c.claim.as_str()) {
            let hint = did_you_mean(&c.claim)
                .map_or(String::new(), |known| format!("; did you mean {known:?}?"));
            findings.push(
                finding(
                    "TB105",
                    grant,
                    Some(rule),
                    format!(
                        "rule {n}: GitLab issues no claim {:?}, so the rule never matches{hint}",
                        c.claim
                    ),
                )
                .about(&c.claim),
            );
        }
    }
    if !requires_true(rule, "ref_protected") && !requires_true(rule, "environment_protected") {
        findings.push(finding("TB103", grant, Some(rule), format!("rule {n} trusts unprotected refs: require ref_protected = \"true\" or environment_protected = \"true\"")));
    }
    if condition(rule, "ref").is_some() && !pins(rule, "ref_type") {
        findings.push(finding(
            "TB104",
            grant,
            Some(rule),
            format!(
                "rule {n} matches ref without fixing ref_type: a tag can be named like a branch"
            ),
        ));
    }
}

/// Whether the rule pins an immutable id: of the project or group whose code the job runs
/// (`project_id`, `namespace_id`), or of the one it runs in (`job_project_id`,
/// `job_namespace_id`). Either answers TB101 (a path renamed and re-registered by someone else);
/// a rule that pins only the latter is TB110's.
fn pins_an_id(rule: &Rule) -> bool {
    [
        "project_id",
        "namespace_id",
        "job_project_id",
        "job_namespace_id",
    ]
    .iter()
    .any(|claim| pins(rule, claim))
}

/// TB110 for a rule that says where the job runs (`job_project_*`, `job_namespace_*`) but not
/// whose code it runs (`project_id`, `namespace_id`), and does not keep out the pipelines that
/// run a fork's merge request in the parent project: those carry the parent's `job_*` claims
/// and the fork's `project_*` ones, and their refs and environments are whatever the fork says.
fn job_project_only(grant: &Grant, rule: &Rule) -> Option<Finding> {
    let named: Vec<&str> = JOB_IDENTITY
        .iter()
        .copied()
        .filter(|claim| condition(rule, claim).is_some())
        .collect();
    if named.is_empty() || names_the_code(rule) || keeps_forks_out(rule) {
        return None;
    }
    let what = if named.iter().any(|c| c.starts_with("job_project")) {
        "project"
    } else {
        "group"
    };
    let message = format!(
        "rule {} names the {what} only by {}, which a fork's merge-request pipeline run there carries too (its project_id is the fork's), so it admits the fork's code; pin project_id or namespace_id, or require ref_protected = \"true\", environment_protected = \"true\" or a pipeline_source other than {}",
        rule.number,
        named.join(", "),
        FORK_CODE_SOURCES.join(" and "),
    );
    Some(finding("TB110", grant, Some(rule), message))
}

/// Whether the rule says whose code the job runs: an id pinned, or (a rule that waived TB101
/// with `allow_path_only`) a path.
fn names_the_code(rule: &Rule) -> bool {
    pins(rule, "project_id")
        || pins(rule, "namespace_id")
        || (rule.allow_path_only
            && ["project_path", "namespace_path"]
                .iter()
                .any(|claim| condition(rule, claim).is_some()))
}

/// Whether the rule refuses every pipeline that can run a fork's code in the parent project: a
/// protected ref or environment, or a `pipeline_source` that admits none of those pipelines.
fn keeps_forks_out(rule: &Rule) -> bool {
    requires_true(rule, "ref_protected")
        || requires_true(rule, "environment_protected")
        || condition(rule, "pipeline_source").is_some_and(|c| {
            FORK_CODE_SOURCES
                .iter()
                .all(|source| !c.matches(Some(source)))
        })
}

/// TB102 for a condition on an identifying claim with a pattern that names no value.
fn match_everything(grant: &Grant, rule: &Rule, c: &Condition) -> Option<Finding> {
    let identifying = IDENTIFYING.contains(&c.claim.as_str());
    let pattern = c
        .patterns
        .iter()
        .find(|p| identifying && p.matches_everything())?;
    let (n, claim, source) = (rule.number, &c.claim, pattern.source());
    let message = format!(
        "rule {n}: {claim} = {source:?} is only wildcards: it names no value, so any {claim} of that shape matches"
    );
    Some(finding("TB102", grant, Some(rule), message).about(claim))
}

/// Whether every claims set that satisfies `narrow` also satisfies `wide` (`policy diff` asks
/// it too: a changed rule widens unless the old one implies it).
pub(crate) fn implies(narrow: &Rule, wide: &Rule) -> bool {
    narrow.issuer == wide.issuer
        && wide.conditions.iter().all(|w| {
            condition(narrow, &w.claim).is_some_and(|n| {
                n.patterns.iter().all(|p| match p {
                    Pattern::Exact(text) => w.matches(Some(text)),
                    Pattern::Glob { source, .. } => w
                        .patterns
                        .iter()
                        .any(|q| q.source() == source || q.source() == "**"),
                })
            })
        })
}

fn lint_shadowing(grant: &Grant, findings: &mut Vec<Finding>) {
    for (i, rule) in grant.rules.iter().enumerate() {
        for (j, other) in grant.rules.iter().enumerate() {
            if i == j || !implies(rule, other) {
                continue;
            }
            let identical = implies(other, rule);
            // Report an identical pair once, on the later rule.
            if identical && j > i {
                continue;
            }
            let how = if identical {
                "is identical to"
            } else {
                "allows nothing beyond"
            };
            findings.push(finding(
                "TB106",
                grant,
                Some(rule),
                format!("rule {} {how} rule {}", rule.number, other.number),
            ));
            break;
        }
    }
}

fn lint_session_tags(role: &Role, findings: &mut Vec<Finding>) {
    for claim in &role.session_tags {
        if SOMETIMES_ABSENT.contains(&claim.as_str()) {
            let required = !role.grant.rules.is_empty()
                && role
                    .grant
                    .rules
                    .iter()
                    .all(|r| condition(r, claim).is_some());
            if !required {
                let message = format!(
                    "session tag {claim:?}: some jobs' tokens have no {claim}, and their requests are denied; require it in every rule or drop the tag"
                );
                findings.push(tag_finding("TB107", role, claim, message));
            }
        }
        if FREE_FORM.contains(&claim.as_str()) {
            let pinned =
                !role.grant.rules.is_empty() && role.grant.rules.iter().all(|r| pins(r, claim));
            if !pinned {
                let message = format!(
                    "session tag {claim:?}: its values may contain characters STS refuses in tags, and such requests are denied"
                );
                findings.push(tag_finding("TB108", role, claim, message));
            }
        }
    }
}

fn lint_role_chaining(role: &Role, findings: &mut Vec<Finding>) {
    if role.max_duration > ROLE_CHAINING_CAP {
        let asked = as_written(role.max_duration);
        let message = format!(
            "max_duration = {asked:?}, but in Lambda every AssumeRole is role chaining, which STS caps at 1 h; sessions will be 1 h"
        );
        findings.push(finding("TB109", &role.grant, None, message).at(role.max_duration_line));
    }
}

/// A finding about one of `role`'s session tags, at the `session_tags` line.
fn tag_finding(id: &'static str, role: &Role, claim: &str, message: String) -> Finding {
    finding(id, &role.grant, None, message)
        .about(claim)
        .at(role.session_tags_line)
}

/// A duration in the policy's own syntax (`"90m"`), so a message reads like the file.
pub(crate) fn as_written(duration: Duration) -> String {
    match duration.as_secs() {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

impl Finding {
    /// The finding on one line, as `policy check` and the build print it:
    /// `file:line: severity[id name] message`.
    pub fn display_with_path(&self, file: &Path) -> String {
        format!(
            "{}:{}: {}[{} {}] {}",
            file.display(),
            self.line,
            self.severity,
            self.id,
            self.name,
            self.message
        )
    }
}

/// The findings for people, grouped by role and token, then a count line; what
/// `token-broker policy check` prints and what a build refused for its bundled policy shows.
pub fn render_human(file: &Path, findings: &[Finding]) -> String {
    let mut grants: Vec<(String, &str)> = findings
        .iter()
        .map(|f| (f.kind.to_string(), f.grant.as_str()))
        .collect();
    grants.sort();
    grants.dedup();
    let mut out = String::new();
    for (kind, grant) in grants {
        out.push_str(&format!("{kind} {grant:?}\n"));
        for f in findings
            .iter()
            .filter(|f| f.kind.to_string() == kind && f.grant == grant)
        {
            out.push_str(&format!("  {}\n", f.display_with_path(file)));
        }
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    out.push_str(&format!(
        "{}: {errors} error(s), {warnings} warning(s)\n",
        file.display()
    ));
    out
}

/// The build's gate on the policy it bundles (`build.rs` calls it): compiles and lints the policy
/// `text`, named `file` in messages (as [`parse`]); `read` returns a session policy file's text.
/// Ok with the findings when none is an error (warnings, for the build to show); else Err with
/// what `policy check` prints: the compile error, or every finding with its `file:line`. So a
/// policy `check` refuses never gets into a binary, and never reaches `sam deploy`.
pub fn bundle_check(
    file: &Path,
    text: &str,
    read: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Vec<Finding>, String> {
    let policy = parse(file, text, read)
        .map_err(|error| format!("the bundled policy is invalid: {error}"))?;
    let findings = lint(&policy);
    if findings.iter().any(|f| f.severity == Severity::Error) {
        return Err(format!(
            "the bundled policy has error findings (`token-broker policy check {}`):\n{}",
            file.display(),
            render_human(file, &findings)
        ));
    }
    Ok(findings)
}
