//! Decision cases kept beside a policy (`policy.tests.toml`), and beside each delegated file of a
//! tree (`payments.tests.toml` beside `payments.toml`): claims, a role, the expected outcome.
//! `policy test` runs them so a policy change is tested in the pipeline that deploys it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::explain::{Explanation, ROOT, explain_named, root_name};
use crate::{Claims, Decision, Delegate, Denial, GrantKind, Policy, beside};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default, rename = "case")]
    cases: Vec<RawCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    /// The role to decide, or
    role: Option<String>,
    /// the `[token.NAME]` to decide.
    token: Option<String>,
    expect: Expect,
    /// A word the denial must contain (a claim name, say).
    reason: Option<String>,
    /// Default: the `iss` of `claims_file`, else the policy's first issuer.
    issuer: Option<String>,
    claims: Option<toml::Table>,
    /// A JSON claim set (a decoded GitLab ID token), relative to the cases file.
    claims_file: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

/// How a case did not come out as expected, with the decision trace.
#[derive(Debug)]
pub struct CaseFailure {
    pub problem: String,
    pub trace: Vec<Explanation>,
}

/// One case as it ran.
#[derive(Debug)]
pub struct CaseRun {
    pub name: String,
    /// Its claims (`policy diff` probes them too).
    pub claims: Claims,
    /// `None` when it came out as expected.
    pub failure: Option<CaseFailure>,
}

/// The outcome of a cases file: every case, in file order (names need not be unique).
#[derive(Debug)]
pub struct Outcome {
    pub cases: Vec<CaseRun>,
}

impl Outcome {
    /// How many cases came out as expected.
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| c.failure.is_none()).count()
    }

    /// The cases that did not, with why.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &CaseFailure)> {
        self.cases
            .iter()
            .filter_map(|c| Some((c.name.as_str(), c.failure.as_ref()?)))
    }
}

/// The cases file of a delegated file of the root policy at `root`: `<stem>.tests.toml` beside
/// it (`policies/payments.tests.toml` for `policies/payments.toml`). Its team keeps it, as it
/// keeps the file; its cases decide against the whole tree, like the root's.
pub fn for_delegate(root: &Path, delegate: &Delegate) -> PathBuf {
    let file = beside(root, &delegate.file);
    let stem = file
        .file_stem()
        .map_or_else(String::new, |stem| stem.to_string_lossy().into_owned());
    file.with_file_name(format!("{stem}.tests.toml"))
}

/// Runs the cases in `path` against `policy`. Errors are problems with the file itself. A
/// failure's trace names the root policy `root policy`; [`run_in`] names the file.
pub fn run(policy: &Policy, path: &Path) -> Result<Outcome, String> {
    run_named(policy, ROOT, path)
}

/// [`run`] for the policy read from `root`, whose file name the traces give a guardrail's line.
pub fn run_in(policy: &Policy, root: &Path, path: &Path) -> Result<Outcome, String> {
    run_named(policy, &root_name(root), path)
}

fn run_named(policy: &Policy, root: &str, path: &Path) -> Result<Outcome, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: CaseFile =
        toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
    if file.cases.is_empty() {
        return Err(format!("{}: no [[case]] entries", path.display()));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut outcome = Outcome { cases: Vec::new() };
    for case in &file.cases {
        let claims = claims(policy, case, base)
            .map_err(|e| format!("{}: case {:?}: {e}", path.display(), case.name))?;
        let decision = decide(policy, case, &claims)
            .map_err(|e| format!("{}: case {:?}: {e}", path.display(), case.name))?;
        let failure = check(case, decision).map(|problem| CaseFailure {
            problem,
            trace: explain_named(
                policy,
                root,
                &claims,
                case.role.as_deref().or(case.token.as_deref()),
            ),
        });
        outcome.cases.push(CaseRun {
            name: case.name.clone(),
            claims,
            failure,
        });
    }
    Ok(outcome)
}

fn claims(policy: &Policy, case: &RawCase, base: &Path) -> Result<Claims, String> {
    let mut object = serde_json::Map::new();
    if let Some(file) = &case.claims_file {
        let text = std::fs::read_to_string(base.join(file)).map_err(|e| format!("{file}: {e}"))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
        object = value
            .as_object()
            .cloned()
            .ok_or_else(|| format!("{file}: not a JSON object"))?;
    }
    for (name, value) in case.claims.iter().flatten() {
        let value = match value {
            toml::Value::String(s) => serde_json::Value::String(s.clone()),
            toml::Value::Integer(i) => serde_json::Value::from(*i),
            _ => {
                return Err(format!(
                    "claim {name:?} must be a string (GitLab sends ids and booleans as strings)"
                ));
            }
        };
        object.insert(name.clone(), value);
    }
    let issuer = case
        .issuer
        .clone()
        .or_else(|| {
            object
                .get("iss")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        })
        .or_else(|| policy.issuers.first().map(|i| i.url.clone()))
        .unwrap_or_default();
    Ok(Claims::from_json(issuer, &object))
}

fn decide(policy: &Policy, case: &RawCase, claims: &Claims) -> Result<Decision, String> {
    match (&case.role, &case.token) {
        (Some(role), None) => Ok(policy.decide(role, claims).into()),
        (None, Some(token)) => Ok(
            match policy.tokens.iter().find(|t| &t.grant.name == token) {
                Some(grant) => grant.grant.decide(claims),
                None => Decision::Deny(Denial::Unknown {
                    kind: GrantKind::Token,
                    name: token.clone(),
                }),
            },
        ),
        _ => Err("give exactly one of `role` and `token`".into()),
    }
}

fn check(case: &RawCase, decision: Decision) -> Option<String> {
    match (decision, case.expect) {
        (Decision::Allow { .. }, Expect::Allow) => None,
        (Decision::Allow { rule }, Expect::Deny) => {
            Some(format!("expected deny, but rule {rule} allows"))
        }
        (Decision::Deny(denial), Expect::Allow) => Some(format!("expected allow, but: {denial}")),
        (Decision::Deny(denial), Expect::Deny) => match &case.reason {
            Some(reason) if !denial.to_string().contains(reason.as_str()) => Some(format!(
                "denied, but the reason does not mention {reason:?}: {denial}"
            )),
            _ => None,
        },
    }
}
