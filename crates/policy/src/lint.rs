//! Lints: policies that compile but are dangerous, each with a stable id. Errors block a deploy;
//! warnings are for a person to weigh (or `--deny-warnings`). Compile errors come first and stop
//! before linting. A policy tree is linted file by file: each finding says which file it is in,
//! a delegated file's rules are weighed with their delegate's guardrail (which every job they
//! admit meets too), and each guardrail is linted in the root policy.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::gitlab::{
    FORK_CODE_SOURCES, FREE_FORM, IDENTIFYING, JOB_IDENTITY, KNOWN_CLAIMS, NOT_STRINGS,
    SOMETIMES_ABSENT, did_you_mean,
};
use crate::{
    Condition, Delegate, Grant, GrantKind, Guardrail, Pattern, Policy, Role, Rule, beside, parse,
};

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

/// What a finding is about: a role, a token, or a `[delegate.NAME]` entry of the root policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Role,
    Token,
    Delegate,
}

impl From<GrantKind> for Kind {
    fn from(kind: GrantKind) -> Self {
        match kind {
            GrantKind::Role => Self::Role,
            GrantKind::Token => Self::Token,
        }
    }
}

/// So a finding is matched against a grant as `finding.kind == grant.kind`.
impl PartialEq<GrantKind> for Kind {
    fn eq(&self, other: &GrantKind) -> bool {
        *self == Self::from(*other)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Role => "role",
            Self::Token => "token",
            Self::Delegate => "delegate",
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
    /// Whether the finding is about a role, a token or a delegate entry.
    pub kind: Kind,
    /// The role's, token's or delegate's name.
    pub grant: String,
    /// The delegated file the finding is in, relative to the root policy's directory, as the root
    /// names it ([`Delegate::file`]); `None` for the root policy, which holds its own grants and
    /// every delegate entry. See [`Finding::path_in`].
    pub file: Option<String>,
    /// 1-based rule number, when the finding is about one rule.
    pub rule: Option<usize>,
    /// What that rule says, in a canonical order (see [`rule_content`]); `None` for a finding
    /// about a role's settings. Unlike `rule` and `line`, it survives rules being inserted or
    /// moved, so a report can recognise the same finding across versions of the policy.
    pub rule_content: Option<String>,
    /// The claim the finding is about, when it is about one (TB102, TB105: a condition's claim;
    /// TB107, TB108: a session tag's), so two findings of one lint on one rule stay apart.
    pub subject: Option<String>,
    /// Line in the file the finding is in (`file`): the rule's, for a finding about a role's
    /// settings the line of the key it is about (`session_tags`, `max_duration`), for one about a
    /// delegate the line of its `require`.
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
    (
        "TB111",
        "guardrail-pins-no-id",
        Severity::Error,
        "a delegate's require pins no id of the code (an exact project_id or namespace_id), so the team's file may name any project, or a fork's code run in the team's (job_* ids name where a job runs, not whose code it is)",
    ),
];

/// The claims that pin an immutable id: of the project or group whose code the job runs
/// (`project_id`, `namespace_id`), or of the one it runs in (`job_project_id`,
/// `job_namespace_id`). Either answers TB101 and TB111 (a path renamed and re-registered by
/// someone else); a rule that pins only the latter is TB110's.
const ID_CLAIMS: [&str; 4] = [
    "project_id",
    "namespace_id",
    "job_project_id",
    "job_namespace_id",
];

/// STS's cap on a role-chained session, which every session the broker starts in Lambda is.
const ROLE_CHAINING_CAP: Duration = Duration::from_secs(3600);

/// Every finding for `policy`: the root policy's, then each delegated file's in the order the
/// root names them, each file's in line order.
pub fn lint(policy: &Policy) -> Vec<Finding> {
    let mut findings = Vec::new();
    for grant in policy.grants() {
        let guardrail = grant.delegate.as_deref().map(|d| &d.require);
        for rule in &grant.rules {
            lint_rule(grant, Effective { rule, guardrail }, &mut findings);
        }
        lint_shadowing(grant, &mut findings);
    }
    for role in &policy.roles {
        lint_session_tags(role, &mut findings);
        lint_role_chaining(role, &mut findings);
    }
    for delegate in &policy.delegates {
        lint_guardrail(delegate, &mut findings);
    }
    let file_order = |f: &Finding| {
        f.file.as_ref().map_or(0, |file| {
            1 + policy
                .delegates
                .iter()
                .position(|d| &d.file == file)
                .unwrap_or(policy.delegates.len())
        })
    };
    findings.sort_by_key(|f| (file_order(f), f.line, f.id));
    findings
}

/// A lint's name and severity, from [`LINTS`].
fn listed(id: &str) -> (&'static str, Severity) {
    let &(_, name, severity, _) = LINTS
        .iter()
        .find(|(known, ..)| *known == id)
        .expect("a listed lint");
    (name, severity)
}

fn finding(id: &'static str, grant: &Grant, rule: Option<&Rule>, message: String) -> Finding {
    let (name, severity) = listed(id);
    let line = rule.or(grant.rules.first()).map_or(0, |r| r.line);
    Finding {
        id,
        name,
        severity,
        kind: grant.kind.into(),
        grant: grant.name.clone(),
        file: grant.delegate.as_ref().map(|d| d.file.clone()),
        rule: rule.map(|r| r.number),
        rule_content: rule.map(rule_content),
        subject: None,
        line,
        message,
    }
}

/// A finding about `delegate`'s entry in the root policy, at its `require` line.
fn delegate_finding(id: &'static str, delegate: &Delegate, message: String) -> Finding {
    let (name, severity) = listed(id);
    Finding {
        id,
        name,
        severity,
        kind: Kind::Delegate,
        grant: delegate.name.clone(),
        file: None,
        rule: None,
        rule_content: None,
        subject: None,
        line: delegate.require.line,
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

/// Whether the condition names only exact values.
fn exact(condition: &Condition) -> bool {
    condition
        .patterns
        .iter()
        .all(|p| matches!(p, Pattern::Exact(_)))
}

/// Whether the condition admits only `"true"`.
fn only_true(condition: &Condition) -> bool {
    condition.patterns.iter().all(|p| p.source() == "true")
}

/// A rule as it decides: its own conditions and, in a delegated file, its delegate's guardrail,
/// which every job the rule admits meets too. The lints about what a rule admits (an id pinned,
/// protection, `ref_type`, forks, session tags) ask this; those about what the rule says (a
/// claim's name, a pattern, another rule's) ask the rule's own conditions. Without the guardrail
/// a team's rule would be told to require what its guardrail already does.
#[derive(Clone, Copy)]
struct Effective<'a> {
    rule: &'a Rule,
    guardrail: Option<&'a Guardrail>,
}

impl<'a> Effective<'a> {
    /// Every condition on `claim`, the rule's and the guardrail's: all of them must hold.
    fn on(self, claim: &str) -> impl Iterator<Item = &'a Condition> {
        let guardrail = self.guardrail.into_iter().flat_map(|g| &g.conditions);
        self.rule
            .conditions
            .iter()
            .chain(guardrail)
            .filter(move |c| c.claim == claim)
    }

    fn names(self, claim: &str) -> bool {
        self.on(claim).next().is_some()
    }

    fn pins(self, claim: &str) -> bool {
        self.on(claim).any(exact)
    }

    fn requires_true(self, claim: &str) -> bool {
        self.on(claim).any(only_true)
    }
}

fn lint_rule(grant: &Grant, rule: Effective<'_>, findings: &mut Vec<Finding>) {
    let Effective { rule: own, .. } = rule;
    let n = own.number;
    if !own.allow_path_only && !ID_CLAIMS.iter().any(|claim| rule.pins(claim)) {
        findings.push(finding("TB101", grant, Some(own), format!("rule {n} pins neither project_id nor namespace_id; paths can be renamed and re-registered by someone else (pin an id, or set allow_path_only = true)")));
    }
    findings.extend(job_project_only(grant, rule));
    for c in &own.conditions {
        findings.extend(match_everything(grant, own, c));
        if NOT_STRINGS.contains(&c.claim.as_str()) {
            let message = format!(
                "rule {n}: GitLab sends {:?} as a JSON array or object, never as a string, so the rule never matches",
                c.claim
            );
            findings.push(finding("TB105", grant, Some(own), message).about(&c.claim));
        } else if !KNOWN_CLAIMS.contains(&c.claim.as_str()) {
            let hint = did_you_mean(&c.claim)
                .map_or(String::new(), |known| format!("; did you mean {known:?}?"));
            findings.push(
                finding(
                    "TB105",
                    grant,
                    Some(own),
                    format!(
                        "rule {n}: GitLab issues no claim {:?}, so the rule never matches{hint}",
                        c.claim
                    ),
                )
                .about(&c.claim),
            );
        }
    }
    if !rule.requires_true("ref_protected") && !rule.requires_true("environment_protected") {
        findings.push(finding("TB103", grant, Some(own), format!("rule {n} trusts unprotected refs: require ref_protected = \"true\" or environment_protected = \"true\"")));
    }
    if condition(own, "ref").is_some() && !rule.pins("ref_type") {
        findings.push(finding(
            "TB104",
            grant,
            Some(own),
            format!(
                "rule {n} matches ref without fixing ref_type: a tag can be named like a branch"
            ),
        ));
    }
}

/// TB110 for a rule that says where the job runs (`job_project_*`, `job_namespace_*`) but not
/// whose code it runs (`project_id`, `namespace_id`), and does not keep out the pipelines that
/// run a fork's merge request in the parent project: those carry the parent's `job_*` claims
/// and the fork's `project_*` ones, and their refs and environments are whatever the fork says.
fn job_project_only(grant: &Grant, rule: Effective<'_>) -> Option<Finding> {
    let named: Vec<&str> = JOB_IDENTITY
        .iter()
        .copied()
        .filter(|claim| rule.names(claim))
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
        rule.rule.number,
        named.join(", "),
        FORK_CODE_SOURCES.join(" and "),
    );
    Some(finding("TB110", grant, Some(rule.rule), message))
}

/// Whether the rule says whose code the job runs: an id pinned, or (a rule that waived TB101
/// with `allow_path_only`) a path.
fn names_the_code(rule: Effective<'_>) -> bool {
    rule.pins("project_id")
        || rule.pins("namespace_id")
        || (rule.rule.allow_path_only
            && ["project_path", "namespace_path"]
                .iter()
                .any(|claim| rule.names(claim)))
}

/// Whether the rule refuses every pipeline that can run a fork's code in the parent project: a
/// protected ref or environment, or a `pipeline_source` that admits none of those pipelines.
fn keeps_forks_out(rule: Effective<'_>) -> bool {
    rule.requires_true("ref_protected")
        || rule.requires_true("environment_protected")
        || (rule.names("pipeline_source")
            && FORK_CODE_SOURCES
                .iter()
                .all(|source| rule.on("pipeline_source").any(|c| !c.matches(Some(source)))))
}

/// TB111 for a guardrail that pins no id: the team's rules are joined to it, and a rule that
/// names another team's project (by id, path or nothing at all) is then admitted whatever
/// project it is. A path is not enough, for TB101's reason (renamed and re-registered); and a
/// guardrail has no `allow_path_only` to waive it.
/// The claims that name the code's own project or group (a fork's, in a fork's pipeline).
const CODE_ID_CLAIMS: [&str; 2] = ["project_id", "namespace_id"];

fn lint_guardrail(delegate: &Delegate, findings: &mut Vec<Finding>) {
    let pinned = delegate
        .require
        .conditions
        .iter()
        // The code's own ids, not `job_*`: a guardrail on where jobs run would still admit a
        // stranger's fork run there, under a team rule that names its project by path.
        .any(|c| CODE_ID_CLAIMS.contains(&c.claim.as_str()) && exact(c));
    if !pinned {
        let message = format!(
            "require pins no id of the code (an exact project_id or namespace_id), so the rules of {:?} can admit any project, or a fork run in the team's: pin the team's namespace_id to exact values",
            delegate.file
        );
        findings.push(delegate_finding("TB111", delegate, message));
    }
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
    let guardrail = role.grant.delegate.as_deref().map(|d| &d.require);
    let rules: Vec<Effective<'_>> = role
        .grant
        .rules
        .iter()
        .map(|rule| Effective { rule, guardrail })
        .collect();
    for claim in &role.session_tags {
        if SOMETIMES_ABSENT.contains(&claim.as_str()) {
            let required = !rules.is_empty() && rules.iter().all(|r| r.names(claim));
            if !required {
                let message = format!(
                    "session tag {claim:?}: some jobs' tokens have no {claim}, and their requests are denied; require it in every rule or drop the tag"
                );
                findings.push(tag_finding("TB107", role, claim, message));
            }
        }
        if FREE_FORM.contains(&claim.as_str()) {
            let pinned = !rules.is_empty() && rules.iter().all(|r| r.pins(claim));
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
    /// The file the finding is in, for the root policy at `root`: `root` itself, or the
    /// delegated file beside it.
    pub fn path_in(&self, root: &Path) -> PathBuf {
        match &self.file {
            Some(file) => beside(root, file),
            None => root.to_owned(),
        }
    }

    /// The finding on one line, as `policy check` and the build print it:
    /// `file:line: severity[id name] message`, `file` being the file it is in, for the root
    /// policy at `root` ([`Finding::path_in`]).
    pub fn display_with_path(&self, root: &Path) -> String {
        format!(
            "{}:{}: {}[{} {}] {}",
            self.path_in(root).display(),
            self.line,
            self.severity,
            self.id,
            self.name,
            self.message
        )
    }
}

/// The findings for people, grouped by role, token and delegate, then a count line; what
/// `token-broker policy check` prints and what a build refused for its bundled policy shows.
/// `file` is the root policy. When a finding is in a delegated file, the groups are under a
/// line naming their file, the root policy's first.
pub fn render_human(file: &Path, findings: &[Finding]) -> String {
    let mut files: Vec<Option<&str>> = Vec::new();
    for f in findings {
        if !files.contains(&f.file.as_deref()) {
            files.push(f.file.as_deref());
        }
    }
    files.sort_by_key(|in_file| in_file.is_some());
    let tree = files.iter().any(Option::is_some);
    let mut out = String::new();
    for in_file in files {
        let here: Vec<&Finding> = findings
            .iter()
            .filter(|f| f.file.as_deref() == in_file)
            .collect();
        let indent = if tree {
            out.push_str(&format!("{}\n", here[0].path_in(file).display()));
            "  "
        } else {
            ""
        };
        render_grants(&mut out, indent, file, &here);
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

/// One file's findings, by role, token and delegate.
fn render_grants(out: &mut String, indent: &str, root: &Path, findings: &[&Finding]) {
    let mut grants: Vec<(String, &str)> = findings
        .iter()
        .map(|f| (f.kind.to_string(), f.grant.as_str()))
        .collect();
    grants.sort();
    grants.dedup();
    for (kind, grant) in grants {
        out.push_str(&format!("{indent}{kind} {grant:?}\n"));
        for f in findings
            .iter()
            .filter(|f| f.kind.to_string() == kind && f.grant == grant)
        {
            out.push_str(&format!("{indent}  {}\n", f.display_with_path(root)));
        }
    }
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
