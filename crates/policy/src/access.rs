//! Who can get what (`policy access`): every rule of every role and token grant as a row of
//! who (project, namespace, path), which refs, which environments and what else it requires;
//! or, for one project (and optionally a ref and an environment), the rules that can admit it.
//! A rule the linter proves can never match admits no one, so it is listed apart, with why; a
//! session is shown as long as STS will make it, not as long as the policy asks. A grant of a
//! delegated file says which delegate and file it comes from, and its guardrail's conditions are
//! part of who can get it, each marked `(guardrail)` and listed first in its column.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use crate::lint::{Finding, lint};
use crate::report::markdown_cell;
use crate::{Condition, Grant, GrantKind, Guardrail, Policy, Role, Rule};

/// STS caps a role-chained session at 1 h, and in Lambda every AssumeRole is role chaining (the
/// function runs on a role session of its own), whatever the target role's own maximum.
const ROLE_CHAINING_CAP: Duration = Duration::from_secs(3600);

/// Lints that prove a rule can never match: TB105, a condition on a claim GitLab does not issue
/// (a missing claim never matches). The others flag rules that match too much, not too little.
const NEVER_MATCHES: [&str; 1] = ["TB105"];

/// Claims that say who the job is.
const WHO: [&str; 4] = [
    "project_id",
    "namespace_id",
    "project_path",
    "namespace_path",
];
/// Claims that say which ref it runs on.
const REFS: [&str; 3] = ["ref_type", "ref", "ref_protected"];
/// Claims that say which environment it deploys to.
const ENVIRONMENTS: [&str; 2] = ["environment", "environment_protected"];

/// One rule, as an access table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub kind: GrantKind,
    /// The role's or token grant's name.
    pub grant: String,
    /// The delegate whose file defines the grant; `None` for the root policy's own grants.
    pub delegate: Option<String>,
    /// That file, relative to the root policy's directory (the rule's `line` is in it); `None`
    /// for the root policy.
    pub file: Option<String>,
    /// What the grant hands out: the role ARN and longest session, or the token's audience.
    pub gives: String,
    pub rule: usize,
    pub line: usize,
    /// `project_id 4242`, `namespace_id 72 · project_path acme/*`; for a delegated grant the
    /// guardrail's first: `namespace_id 77 | 78 (guardrail) · project_id 7701`.
    pub who: String,
    /// `branch main (protected)`, or `any ref`; a guardrail's `ref_protected true (guardrail)`
    /// first.
    pub refs: String,
    /// `production (protected)`, or `any`; a guardrail's conditions first.
    pub environments: String,
    /// The issuer when there are several (and the guardrail's, when it names one), then the
    /// remaining conditions, the guardrail's first (`pipeline_source push`).
    pub also: String,
    /// Why the rule can never match, one entry per lint finding that proves it; empty (the
    /// default) for a rule that can match.
    pub never_matches: Vec<NeverMatches>,
}

impl Row {
    /// Whether some job can get through this rule (no lint proves it never matches).
    pub fn can_match(&self) -> bool {
        self.never_matches.is_empty()
    }
}

/// A lint finding proving a rule can never match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeverMatches {
    /// The lint's id, e.g. `TB105`.
    pub lint: &'static str,
    /// Its message without the rule number: `GitLab issues no claim "projectid"; did you mean
    /// "project_id"?`.
    pub reason: String,
}

impl std::fmt::Display for NeverMatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.lint, self.reason)
    }
}

/// What one project asks about: its id, and optionally the ref and environment of a job.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub project_id: String,
    pub git_ref: Option<String>,
    pub environment: Option<String>,
}

/// Every rule of the policy, grant by grant in file order; a rule that can never match carries
/// the findings that prove it.
pub fn access(policy: &Policy) -> Vec<Row> {
    let several_issuers = policy.issuers.len() > 1;
    let roles = policy.roles.iter().map(|role| (&role.grant, session(role)));
    let tokens = policy.tokens.iter().map(|token| {
        let gives = format!("aud {} (≤ {} s)", token.audience, token.max_ttl.as_secs());
        (&token.grant, gives)
    });
    let findings: Vec<Finding> = lint(policy)
        .into_iter()
        .filter(|f| NEVER_MATCHES.contains(&f.id))
        .collect();
    let mut rows: Vec<Row> = roles
        .chain(tokens)
        .flat_map(|(grant, gives)| rows(grant, &gives, several_issuers))
        .collect();
    for row in &mut rows {
        row.never_matches = never_matches(row, &findings);
    }
    rows
}

/// `arn (≤ 3600 s)`, and for a role that asks for more than role chaining allows, what it asks
/// and why it does not get it.
fn session(role: &Role) -> String {
    let asked = role.max_duration.as_secs();
    let cap = ROLE_CHAINING_CAP.as_secs();
    if asked > cap {
        format!(
            "{} (≤ {cap} s; asks {asked} s, capped at 1 h by role chaining)",
            role.arn
        )
    } else {
        format!("{} (≤ {asked} s)", role.arn)
    }
}

/// The findings about `row`'s rule, as reasons: the lint's message without its `rule N: `
/// prefix and without saying again that the rule never matches (the row says it). Only
/// trimming: a lint whose wording changes is shown whole, never dropped.
fn never_matches(row: &Row, findings: &[Finding]) -> Vec<NeverMatches> {
    let prefix = format!("rule {}: ", row.rule);
    findings
        .iter()
        .filter(|f| f.kind == row.kind && f.grant == row.grant && f.rule == Some(row.rule))
        .map(|f| {
            let message = f.message.strip_prefix(&prefix).unwrap_or(&f.message);
            NeverMatches {
                lint: f.id,
                reason: message.replace(", so the rule never matches", ""),
            }
        })
        .collect()
}

/// The rules that can admit a job of `query.project_id` (on `git_ref`, in `environment` when
/// given). A rule that names no project id but a namespace or path is kept, since the project
/// may be in it: its `who` says on what condition.
pub fn access_for(policy: &Policy, query: &Query) -> Vec<Row> {
    let rules: Vec<(&Grant, &Rule)> = policy
        .grants()
        .flat_map(|g| g.rules.iter().map(move |r| (g, r)))
        .collect();
    let admits = |conditions: &[Condition]| {
        let holds = |claim: &str, value: Option<&str>| match (condition(conditions, claim), value) {
            (Some(c), Some(v)) => c.matches(Some(v)),
            _ => true,
        };
        holds("project_id", Some(&query.project_id))
            && holds("ref", query.git_ref.as_deref())
            && holds("environment", query.environment.as_deref())
    };
    // A delegated rule admits only what its guardrail does too.
    let admitted = |grant: &Grant, rule: &Rule| {
        admits(&rule.conditions) && guardrail(grant).is_none_or(|g| admits(&g.conditions))
    };
    access(policy)
        .into_iter()
        .filter(|row| {
            rules.iter().any(|(g, r)| {
                g.kind == row.kind && g.name == row.grant && r.number == row.rule && admitted(g, r)
            })
        })
        .collect()
}

fn condition<'c>(conditions: &'c [Condition], claim: &str) -> Option<&'c Condition> {
    conditions.iter().find(|c| c.claim == claim)
}

fn guardrail(grant: &Grant) -> Option<&Guardrail> {
    grant.delegate.as_deref().map(|d| &d.require)
}

/// A condition's patterns as written: `77 | 78`.
fn values(condition: &Condition) -> String {
    condition
        .patterns
        .iter()
        .map(|p| p.source())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A column: the guardrail's conditions on its claims first, then what the rule says (`None`
/// when it names none of them), or `default` when neither says anything.
fn column(guarded: Vec<String>, own: Option<String>, default: &str) -> String {
    let parts: Vec<String> = guarded.into_iter().chain(own).collect();
    if parts.is_empty() {
        default.to_owned()
    } else {
        parts.join(" · ")
    }
}

fn rows(grant: &Grant, gives: &str, several_issuers: bool) -> Vec<Row> {
    grant
        .rules
        .iter()
        .map(|rule| row(grant, gives, rule, several_issuers))
        .collect()
}

fn row(grant: &Grant, gives: &str, rule: &Rule, several_issuers: bool) -> Row {
    let guardrail = guardrail(grant);
    let named = |claim: &str| condition(&rule.conditions, claim).map(values);
    let names = |claims: &[&str]| claims.iter().any(|c| named(c).is_some());
    // The guardrail's conditions on `claims`: `namespace_id 77 | 78 (guardrail)`.
    let guarded = |claims: &[&str]| -> Vec<String> {
        guardrail
            .iter()
            .flat_map(|g| &g.conditions)
            .filter(|c| claims.contains(&c.claim.as_str()))
            .map(|c| format!("{} {} (guardrail)", c.claim, values(c)))
            .collect()
    };
    let who: Vec<String> = WHO
        .iter()
        .filter_map(|claim| Some(format!("{claim} {}", named(claim)?)))
        .collect();
    let own_who = (!who.is_empty()).then(|| who.join(" · "));
    let protected = |claim: &str| match named(claim).as_deref() {
        Some("true") => " (protected)".to_owned(),
        Some("false") => " (unprotected)".to_owned(),
        Some(other) => format!(" ({claim} {other})"),
        None => String::new(),
    };
    let refs = match (named("ref_type"), named("ref")) {
        (Some(kind), Some(name)) => format!("{kind} {name}"),
        (Some(kind), None) => format!("any {kind}"),
        (None, Some(name)) => format!("ref {name}"),
        (None, None) => "any ref".into(),
    } + &protected("ref_protected");
    let environments =
        named("environment").unwrap_or_else(|| "any".into()) + &protected("environment_protected");
    let mut also = Vec::new();
    if several_issuers {
        also.push(format!("issuer {}", rule.issuer));
        if let Some(issuer) = guardrail.and_then(|g| g.issuer.as_ref()) {
            also.push(format!("issuer {issuer} (guardrail)"));
        }
    }
    let guardrail_rest = others(guardrail.map_or(&[], |g| &g.conditions));
    also.extend(guardrail_rest.map(|c| format!("{} {} (guardrail)", c.claim, values(c))));
    also.extend(others(&rule.conditions).map(|c| format!("{} {}", c.claim, values(c))));
    let delegate = grant.delegate.as_deref();
    Row {
        kind: grant.kind,
        grant: grant.name.clone(),
        delegate: delegate.map(|d| d.name.clone()),
        file: delegate.map(|d| d.file.clone()),
        gives: gives.to_owned(),
        rule: rule.number,
        line: rule.line,
        who: column(guarded(&WHO), own_who, "anyone"),
        refs: column(guarded(&REFS), names(&REFS).then_some(refs.clone()), &refs),
        environments: column(
            guarded(&ENVIRONMENTS),
            names(&ENVIRONMENTS).then_some(environments.clone()),
            &environments,
        ),
        also: also.join(" · "),
        never_matches: Vec::new(),
    }
}

/// The conditions no column but `also` shows.
fn others(conditions: &[Condition]) -> impl Iterator<Item = &Condition> {
    conditions.iter().filter(|c| {
        let claim = c.claim.as_str();
        !WHO.contains(&claim) && !REFS.contains(&claim) && !ENVIRONMENTS.contains(&claim)
    })
}

impl Row {
    /// `role "payments-deploy" (delegate payments, policies/payments.toml)`, or for the root
    /// policy's own grants `role "deploy-web-prod"`.
    fn grant_label(&self) -> String {
        match (&self.delegate, &self.file) {
            (Some(delegate), Some(file)) => {
                format!(
                    "{} {:?} (delegate {delegate}, {file})",
                    self.kind, self.grant
                )
            }
            _ => format!("{} {:?}", self.kind, self.grant),
        }
    }

    /// `line 12`, or `line 9 of policies/payments.toml` for a delegated file's rule.
    fn at(&self) -> String {
        match &self.file {
            Some(file) => format!("line {} of {file}", self.line),
            None => format!("line {}", self.line),
        }
    }

    /// The delegate column: `payments (policies/payments.toml)`, empty for the root policy.
    fn delegate_cell(&self) -> String {
        match (&self.delegate, &self.file) {
            (Some(delegate), Some(file)) => format!("{delegate} ({file})"),
            _ => String::new(),
        }
    }
}

/// The table for a terminal: one block per grant, one line per rule; then the rules that can
/// never match, apart.
pub fn render_text(rows: &[Row]) -> String {
    let (matching, never) = split(rows);
    let mut out = String::new();
    if matching.is_empty() {
        out.push_str("no role or token admits this\n");
    }
    let mut current = None;
    for row in &matching {
        if current != Some((row.kind, &row.grant)) {
            let _ = writeln!(out, "{} → {}", row.grant_label(), row.gives);
            current = Some((row.kind, &row.grant));
        }
        let also = if row.also.is_empty() {
            String::new()
        } else {
            format!(" · {}", row.also)
        };
        let _ = writeln!(
            out,
            "  rule {} (line {}): {} · {} · env {}{also}",
            row.rule, row.line, row.who, row.refs, row.environments
        );
    }
    if !never.is_empty() {
        out.push_str("\nrules that can never match:\n");
    }
    for row in &never {
        let _ = writeln!(
            out,
            "  {} {:?} rule {} ({}): never matches {}",
            row.kind,
            row.grant,
            row.rule,
            row.at(),
            reasons(row)
        );
    }
    out
}

/// The rows that can match, and those that never can, each in file order.
fn split(rows: &[Row]) -> (Vec<&Row>, Vec<&Row>) {
    rows.iter().partition(|row| row.can_match())
}

/// `[TB105: GitLab issues no claim "projectid"]`, one bracket per finding.
fn reasons(row: &Row) -> String {
    row.never_matches
        .iter()
        .map(|n| format!("[{n}]"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The table as Markdown; the rules that can never match in a table of their own below it.
/// When some row comes from a delegated file, a `delegate` column names its delegate and file
/// (a policy that delegates nothing reads as before).
pub fn render_markdown(rows: &[Row]) -> String {
    let (matching, never) = split(rows);
    let delegated = rows.iter().any(|r| r.delegate.is_some());
    let mut out = if delegated {
        String::from(
            "| grant | delegate | gives | rule | who | refs | environments | also |\n|---|---|---|---|---|---|---|---|\n",
        )
    } else {
        String::from(
            "| grant | gives | rule | who | refs | environments | also |\n|---|---|---|---|---|---|---|\n",
        )
    };
    for row in matching {
        let delegate = if delegated {
            format!(" {} |", markdown_cell(&row.delegate_cell()))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {} {} |{delegate} {} | {} (line {}) | {} | {} | {} | {} |",
            row.kind,
            markdown_cell(&row.grant),
            markdown_cell(&row.gives),
            row.rule,
            row.line,
            markdown_cell(&row.who),
            markdown_cell(&row.refs),
            markdown_cell(&row.environments),
            markdown_cell(&row.also)
        );
    }
    if !never.is_empty() {
        out.push_str("\n**Rules that can never match** (they admit no one):\n\n| grant | rule | never matches |\n|---|---|---|\n");
    }
    for row in never {
        let _ = writeln!(
            out,
            "| {} {} | {} ({}) | {} |",
            row.kind,
            markdown_cell(&row.grant),
            row.rule,
            markdown_cell(&row.at()),
            markdown_cell(&reasons(row))
        );
    }
    out
}

/// The table for machines: `access` the rules that can match, `never_matches` those that never
/// can, each with its findings; `delegate` and `file` are null for the root policy's grants.
pub fn render_json(rows: &[Row]) -> Value {
    let (matching, never) = split(rows);
    let row = |r: &Row| {
        json!({"kind": r.kind.to_string(), "grant": r.grant, "delegate": r.delegate,
               "file": r.file, "gives": r.gives, "rule": r.rule, "line": r.line, "who": r.who,
               "refs": r.refs, "environments": r.environments, "also": r.also})
    };
    let never: Vec<Value> = never
        .into_iter()
        .map(|r| {
            let mut value = row(r);
            let findings: Vec<Value> = r
                .never_matches
                .iter()
                .map(|n| json!({"lint": n.lint, "reason": n.reason}))
                .collect();
            value["findings"] = Value::Array(findings);
            value
        })
        .collect();
    let access: Vec<Value> = matching.into_iter().map(row).collect();
    json!({ "access": access, "never_matches": never })
}
