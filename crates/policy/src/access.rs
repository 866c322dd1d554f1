//! Who can get what (`policy access`): every rule of every role and token grant as a row of
//! who (project, namespace, path), which refs, which environments and what else it requires;
//! or, for one project (and optionally a ref and an environment), the rules that can admit it.
//! A rule the linter proves can never match admits no one, so it is listed apart, with why; a
//! session is shown as long as STS will make it, not as long as the policy asks.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use crate::lint::{Finding, lint};
use crate::report::markdown_cell;
use crate::{Condition, Grant, GrantKind, Policy, Role, Rule};

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
    /// What the grant hands out: the role ARN and longest session, or the token's audience.
    pub gives: String,
    pub rule: usize,
    pub line: usize,
    /// `project_id 4242`, `namespace_id 72 · project_path acme/*`.
    pub who: String,
    /// `branch main (protected)`, or `any ref`.
    pub refs: String,
    /// `production (protected)`, or `any`.
    pub environments: String,
    /// The remaining conditions (`pipeline_source push`), and the issuer when there are several.
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
    let admits = |rule: &Rule| {
        let holds = |claim: &str, value: Option<&str>| match (condition(rule, claim), value) {
            (Some(c), Some(v)) => c.matches(Some(v)),
            _ => true,
        };
        holds("project_id", Some(&query.project_id))
            && holds("ref", query.git_ref.as_deref())
            && holds("environment", query.environment.as_deref())
    };
    access(policy)
        .into_iter()
        .filter(|row| {
            rules.iter().any(|(g, r)| {
                g.kind == row.kind && g.name == row.grant && r.number == row.rule && admits(r)
            })
        })
        .collect()
}

fn condition<'r>(rule: &'r Rule, claim: &str) -> Option<&'r Condition> {
    rule.conditions.iter().find(|c| c.claim == claim)
}

fn rows(grant: &Grant, gives: &str, several_issuers: bool) -> Vec<Row> {
    grant
        .rules
        .iter()
        .map(|rule| {
            let values = |claim: &str| {
                condition(rule, claim).map(|c| {
                    c.patterns
                        .iter()
                        .map(|p| p.source())
                        .collect::<Vec<_>>()
                        .join(" | ")
                })
            };
            let who = WHO
                .iter()
                .filter_map(|claim| Some(format!("{claim} {}", values(claim)?)))
                .collect::<Vec<_>>()
                .join(" · ");
            let protected = |claim: &str| match values(claim).as_deref() {
                Some("true") => " (protected)".to_owned(),
                Some("false") => " (unprotected)".to_owned(),
                Some(other) => format!(" ({claim} {other})"),
                None => String::new(),
            };
            let refs = match (values("ref_type"), values("ref")) {
                (Some(kind), Some(name)) => format!("{kind} {name}"),
                (Some(kind), None) => format!("any {kind}"),
                (None, Some(name)) => format!("ref {name}"),
                (None, None) => "any ref".into(),
            } + &protected("ref_protected");
            let environments = values("environment").unwrap_or_else(|| "any".into())
                + &protected("environment_protected");
            let mut also: Vec<String> = rule
                .conditions
                .iter()
                .filter(|c| {
                    let claim = c.claim.as_str();
                    !WHO.contains(&claim)
                        && !REFS.contains(&claim)
                        && !ENVIRONMENTS.contains(&claim)
                })
                .map(|c| format!("{} {}", c.claim, values(&c.claim).unwrap_or_default()))
                .collect();
            if several_issuers {
                also.insert(0, format!("issuer {}", rule.issuer));
            }
            Row {
                kind: grant.kind,
                grant: grant.name.clone(),
                gives: gives.to_owned(),
                rule: rule.number,
                line: rule.line,
                who: if who.is_empty() { "anyone".into() } else { who },
                refs,
                environments,
                also: also.join(" · "),
                never_matches: Vec::new(),
            }
        })
        .collect()
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
            let _ = writeln!(out, "{} {:?} → {}", row.kind, row.grant, row.gives);
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
            "  {} {:?} rule {} (line {}): never matches {}",
            row.kind,
            row.grant,
            row.rule,
            row.line,
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
pub fn render_markdown(rows: &[Row]) -> String {
    let (matching, never) = split(rows);
    let mut out = String::from(
        "| grant | gives | rule | who | refs | environments | also |\n|---|---|---|---|---|---|---|\n",
    );
    for row in matching {
        let _ = writeln!(
            out,
            "| {} {} | {} | {} (line {}) | {} | {} | {} | {} |",
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
            "| {} {} | {} (line {}) | {} |",
            row.kind,
            markdown_cell(&row.grant),
            row.rule,
            row.line,
            markdown_cell(&reasons(row))
        );
    }
    out
}

/// The table for machines: `access` the rules that can match, `never_matches` those that never
/// can, each with its findings.
pub fn render_json(rows: &[Row]) -> Value {
    let (matching, never) = split(rows);
    let row = |r: &Row| {
        json!({"kind": r.kind.to_string(), "grant": r.grant, "gives": r.gives, "rule": r.rule,
               "line": r.line, "who": r.who, "refs": r.refs, "environments": r.environments,
               "also": r.also})
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
