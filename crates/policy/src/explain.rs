//! Explanations: for a set of claims, which rules of a role match and, for the others, which
//! conditions fail and why. For the policy's owner (`policy explain`, `policy test`), so it shows
//! the expected patterns; a denied caller only ever gets [`crate::Denial`].

use std::fmt::{self, Write as _};

use crate::{Claims, Decision, Grant, GrantKind, Policy, Rule};

/// How one rule fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleReport {
    pub rule: usize,
    pub line: usize,
    /// Whether the rule accepts the claims' issuer at all.
    pub issuer_ok: bool,
    /// The conditions that failed: claim, the caller's value, the patterns it had to match.
    pub failed: Vec<(String, Option<String>, Vec<String>)>,
}

impl RuleReport {
    pub fn matched(&self) -> bool {
        self.issuer_ok && self.failed.is_empty()
    }
}

/// How one role or token fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub kind: GrantKind,
    pub name: String,
    pub decision: Decision,
    pub rules: Vec<RuleReport>,
}

/// Explains `claims` against every role and token, or only those named `name`.
pub fn explain(policy: &Policy, claims: &Claims, name: Option<&str>) -> Vec<Explanation> {
    policy
        .grants()
        .filter(|grant| name.is_none_or(|name| grant.name == name))
        .map(|grant| explain_grant(grant, claims))
        .collect()
}

fn explain_grant(grant: &Grant, claims: &Claims) -> Explanation {
    Explanation {
        kind: grant.kind,
        name: grant.name.clone(),
        decision: grant.decide(claims),
        rules: grant
            .rules
            .iter()
            .map(|rule| report(rule, claims))
            .collect(),
    }
}

fn report(rule: &Rule, claims: &Claims) -> RuleReport {
    let failed = rule
        .conditions
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
        .collect();
    RuleReport {
        rule: rule.number,
        line: rule.line,
        issuer_ok: rule.issuer == claims.issuer(),
        failed,
    }
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
            let mut line = format!("  rule {} (line {}): ", report.rule, report.line);
            if !report.issuer_ok {
                line.push_str("other issuer");
            } else if report.failed.is_empty() {
                line.push_str("matches");
            } else {
                let reasons: Vec<String> = report
                    .failed
                    .iter()
                    .map(|(claim, value, patterns)| match value {
                        Some(value) => {
                            format!("{claim} = {value:?} is not {}", patterns.join(" | "))
                        }
                        None => format!("{claim} is missing (wanted {})", patterns.join(" | ")),
                    })
                    .collect();
                let _ = write!(line, "fails: {}", reasons.join("; "));
            }
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}
