//! Decisions: does a role's rule match these claims? Pure and cheap; the only allocation is on the
//! deny path, to say which claim failed.

use std::fmt;

use crate::Claims;
use crate::{Policy, Role, Rule};

/// The outcome for one role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Rule `rule` (1-based) matched.
    Allow { rule: usize },
    /// Nothing matched.
    Deny(Denial),
}

/// Why a role was denied, told to the caller in terms of their own claims only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The policy has no role of that name.
    UnknownRole { role: String },
    /// No rule of the role accepts tokens from the caller's issuer.
    NoRuleForIssuer { role: String, issuer: String },
    /// The closest rule (fewest failed conditions) and its first failing condition.
    NoRuleMatched { role: String, closest: RuleFailure },
}

/// The first failing condition of a rule; `value` is the caller's own claim, `None` if absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleFailure {
    pub rule: usize,
    pub claim: String,
    pub value: Option<String>,
    pub failed_conditions: usize,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownRole { role } => write!(f, "role {role:?} is not defined in the policy"),
            Self::NoRuleForIssuer { role, issuer } => {
                write!(
                    f,
                    "role {role:?}: no rule accepts tokens from issuer {issuer:?}"
                )
            }
            Self::NoRuleMatched { role, closest } => match &closest.value {
                Some(value) => write!(
                    f,
                    "role {role:?}: claim {:?} = {value:?} does not satisfy rule {}",
                    closest.claim, closest.rule
                ),
                None => write!(
                    f,
                    "role {role:?}: claim {:?} is missing (rule {})",
                    closest.claim, closest.rule
                ),
            },
        }
    }
}

impl Denial {
    /// The claim that failed, for the audit log.
    pub fn claim(&self) -> Option<&str> {
        match self {
            Self::NoRuleMatched { closest, .. } => Some(&closest.claim),
            _ => None,
        }
    }
}

impl Policy {
    /// Decides whether `claims` may assume `role`. Deny by default.
    pub fn decide(&self, role: &str, claims: &Claims) -> Decision {
        match self.role(role) {
            Some(role) => role.decide(claims),
            None => Decision::Deny(Denial::UnknownRole {
                role: role.to_owned(),
            }),
        }
    }
}

impl Role {
    /// The first matching rule allows; otherwise the closest rule explains the denial.
    pub fn decide(&self, claims: &Claims) -> Decision {
        let mut closest: Option<RuleFailure> = None;
        for rule in self
            .rules
            .iter()
            .filter(|rule| rule.issuer == claims.issuer())
        {
            match rule.evaluate(claims) {
                None => return Decision::Allow { rule: rule.number },
                Some(failure)
                    if closest
                        .as_ref()
                        .is_none_or(|c| failure.failed_conditions < c.failed_conditions) =>
                {
                    closest = Some(failure);
                }
                Some(_) => {}
            }
        }
        let role = self.name.clone();
        Decision::Deny(match closest {
            Some(closest) => Denial::NoRuleMatched { role, closest },
            None => Denial::NoRuleForIssuer {
                role,
                issuer: claims.issuer().to_owned(),
            },
        })
    }
}

impl Rule {
    /// `None` when every condition holds, else the first failing one and how many failed.
    pub fn evaluate(&self, claims: &Claims) -> Option<RuleFailure> {
        let mut failed = self
            .conditions
            .iter()
            .filter(|c| !c.matches(claims.get(&c.claim)));
        let first = failed.next()?;
        Some(RuleFailure {
            rule: self.number,
            claim: first.claim.clone(),
            value: claims.get(&first.claim).map(str::to_owned),
            failed_conditions: 1 + failed.count(),
        })
    }
}
