//! Explanations: for a set of claims, which rules of a role match and, for the others, which
//! conditions fail and why; for a role of a delegated file, where each rule is in that file and
//! how its delegate's guardrail fared. For the policy's owner (`policy explain`, `policy test`),
//! so it shows the expected patterns; a denied caller only ever gets [`crate::Denial`].

use std::fmt::{self, Write as _};
use std::path::Path;

use crate::{Claims, Condition, Decision, Grant, GrantKind, Guardrail, Policy, Rule};

/// A condition that failed: the claim, the caller's value (`None`: absent) and the patterns it
/// had to match.
pub type Failed = (String, Option<String>, Vec<String>);

/// How one rule fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleReport {
    pub rule: usize,
    /// The delegated file the rule is in, relative to the root policy's directory; `None`: the
    /// root policy.
    pub file: Option<String>,
    /// Line in that file.
    pub line: usize,
    /// Whether the rule accepts the claims' issuer at all.
    pub issuer_ok: bool,
    /// The conditions that failed.
    pub failed: Vec<Failed>,
}

impl RuleReport {
    pub fn matched(&self) -> bool {
        self.issuer_ok && self.failed.is_empty()
    }
}

/// How the guardrail of the delegate whose file defines a grant fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardrailReport {
    /// The delegate's name.
    pub delegate: String,
    /// The root policy, as the explanation names it: its file name, or `root policy` when
    /// [`explain`] was not told it.
    pub root: String,
    /// Line of the delegate's `require` in the root policy.
    pub line: usize,
    /// What failed: an issuer other than the one it requires (as claim `iss`), and every
    /// condition that failed; empty when the guardrail holds.
    pub failed: Vec<Failed>,
}

/// How one role or token fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub kind: GrantKind,
    pub name: String,
    pub decision: Decision,
    pub rules: Vec<RuleReport>,
    /// For a grant of a delegated file, its delegate's guardrail; `None` for the root's own.
    pub guardrail: Option<GuardrailReport>,
}

/// The name of the root policy in an explanation that was not told its file.
pub(crate) const ROOT: &str = "root policy";

/// Explains `claims` against every role and token, or only those named `name`. A guardrail's
/// line is in the `root policy`; [`explain_in`] names the file.
pub fn explain(policy: &Policy, claims: &Claims, name: Option<&str>) -> Vec<Explanation> {
    explain_named(policy, ROOT, claims, name)
}

/// [`explain`] for the policy read from `root`, whose file name says where a guardrail is.
pub fn explain_in(
    policy: &Policy,
    root: &Path,
    claims: &Claims,
    name: Option<&str>,
) -> Vec<Explanation> {
    explain_named(policy, &root_name(root), claims, name)
}

/// How explanations name the root policy at `root`: by its file name, as a delegated file is
/// named relative to the root's directory.
pub(crate) fn root_name(root: &Path) -> String {
    root.file_name().map_or_else(
        || ROOT.to_owned(),
        |name| name.to_string_lossy().into_owned(),
    )
}

pub(crate) fn explain_named(
    policy: &Policy,
    root: &str,
    claims: &Claims,
    name: Option<&str>,
) -> Vec<Explanation> {
    policy
        .grants()
        .filter(|grant| name.is_none_or(|name| grant.name == name))
        .map(|grant| explain_grant(grant, root, claims))
        .collect()
}

fn explain_grant(grant: &Grant, root: &str, claims: &Claims) -> Explanation {
    let file = grant.delegate.as_ref().map(|d| d.file.clone());
    Explanation {
        kind: grant.kind,
        name: grant.name.clone(),
        decision: grant.decide(claims),
        rules: grant
            .rules
            .iter()
            .map(|rule| report(rule, file.clone(), claims))
            .collect(),
        guardrail: grant.delegate.as_ref().map(|d| GuardrailReport {
            delegate: d.name.clone(),
            root: root.to_owned(),
            line: d.require.line,
            failed: guardrail_failures(&d.require, claims),
        }),
    }
}

fn report(rule: &Rule, file: Option<String>, claims: &Claims) -> RuleReport {
    RuleReport {
        rule: rule.number,
        file,
        line: rule.line,
        issuer_ok: rule.issuer == claims.issuer(),
        failed: failures(&rule.conditions, claims),
    }
}

fn failures(conditions: &[Condition], claims: &Claims) -> Vec<Failed> {
    conditions
        .iter()
        .filter(|c| !c.matches(claims.get(&c.claim)))
        .map(|c| {
            let patterns = c.patterns.iter().map(|p| p.source().to_owned()).collect();
            (
                c.claim.clone(),
                claims.get(&c.claim).map(str::to_owned),
                patterns,
            )
        })
        .collect()
}

/// The guardrail's failures, an issuer it does not admit first (as [`Guardrail::evaluate`]
/// tells it).
fn guardrail_failures(guardrail: &Guardrail, claims: &Claims) -> Vec<Failed> {
    let issuer = guardrail
        .issuer
        .as_ref()
        .filter(|issuer| issuer.as_str() != claims.issuer())
        .map(|issuer| {
            (
                "iss".to_owned(),
                Some(claims.issuer().to_owned()),
                vec![issuer.clone()],
            )
        });
    issuer
        .into_iter()
        .chain(failures(&guardrail.conditions, claims))
        .collect()
}

/// `fails: claim = "value" is not a | b; …`.
fn fails(failed: &[Failed]) -> String {
    let reasons: Vec<String> = failed
        .iter()
        .map(|(claim, value, patterns)| match value {
            Some(value) => format!("{claim} = {value:?} is not {}", patterns.join(" | ")),
            None => format!("{claim} is missing (wanted {})", patterns.join(" | ")),
        })
        .collect();
    format!("fails: {}", reasons.join("; "))
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.decision {
            Decision::Allow { rule } => {
                writeln!(f, "{} {:?}: ALLOW (rule {rule})", self.kind, self.name)?
            }
            Decision::Deny(denial) => writeln!(f, "{} {:?}: DENY: {denial}", self.kind, self.name)?,
        }
        for report in &self.rules {
            let mut line = match &report.file {
                Some(file) => format!("  rule {} ({file} line {}): ", report.rule, report.line),
                None => format!("  rule {} (line {}): ", report.rule, report.line),
            };
            if !report.issuer_ok {
                line.push_str("other issuer");
            } else if report.failed.is_empty() {
                line.push_str("matches");
            } else {
                let _ = write!(line, "{}", fails(&report.failed));
            }
            writeln!(f, "{line}")?;
        }
        if let Some(guardrail) = &self.guardrail {
            let outcome = match guardrail.failed.as_slice() {
                [] => "holds".to_owned(),
                failed => fails(failed),
            };
            writeln!(
                f,
                "  guardrail of delegate {:?} ({} line {}): {outcome}",
                guardrail.delegate, guardrail.root, guardrail.line
            )?;
        }
        Ok(())
    }
}
