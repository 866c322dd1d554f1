//! Who can get what (`policy access`): every rule of every role and token grant as a row of
//! who (project, namespace, path), which refs, which environments and what else it requires;
//! or, for one project (and optionally a ref and an environment), the rules that can admit it.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::report::markdown_cell;
use crate::{Condition, Grant, GrantKind, Policy, Rule};

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
}

/// What one project asks about: its id, and optionally the ref and environment of a job.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub project_id: String,
    pub git_ref: Option<String>,
    pub environment: Option<String>,
}

/// Every rule of the policy, grant by grant in file order.
pub fn access(policy: &Policy) -> Vec<Row> {
    let several_issuers = policy.issuers.len() > 1;
    let roles = policy.roles.iter().map(|role| {
        let gives = format!("{} (≤ {} s)", role.arn, role.max_duration.as_secs());
        (&role.grant, gives)
    });
    let tokens = policy.tokens.iter().map(|token| {
        let gives = format!("aud {} (≤ {} s)", token.audience, token.max_ttl.as_secs());
        (&token.grant, gives)
    });
    roles
        .chain(tokens)
        .flat_map(|(grant, gives)| rows(grant, &gives, several_issuers))
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
            }
        })
        .collect()
}

/// The table for a terminal: one block per grant, one line per rule.
pub fn render_text(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "no role or token admits this\n".into();
    }
    let mut out = String::new();
    let mut current = None;
    for row in rows {
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
    out
}

/// The table as Markdown.
pub fn render_markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| grant | gives | rule | who | refs | environments | also |\n|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
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
    out
}

/// The table for machines.
pub fn render_json(rows: &[Row]) -> Value {
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"kind": r.kind.to_string(), "grant": r.grant, "gives": r.gives, "rule": r.rule,
                   "line": r.line, "who": r.who, "refs": r.refs, "environments": r.environments,
                   "also": r.also})
        })
        .collect();
    json!({ "access": rows })
}
