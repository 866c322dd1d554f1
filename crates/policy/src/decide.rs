//! Decisions: does one of a grant's rules match these claims? Pure and cheap; the only
//! allocation is on the deny path, to say which claim failed.

use std::fmt;

use crate::{Claims, Grant, GrantKind, Policy, Rule};

/// The outcome for one role or token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Rule `rule` (1-based) matched.
    Allow { rule: usize },
    /// Nothing matched.
    Deny(Denial),
}

/// Why a grant was denied, told to the caller in terms of their own claims only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The policy has no role of that name, or no token for that audience.
    Unknown { kind: GrantKind, name: String },
    /// No rule accepts tokens from the caller's issuer.
    NoRuleForIssuer {
        kind: GrantKind,
        name: String,
        issuer: String,
    },
    /// The closest rule (fewest failed conditions) and its first failing condition.
    NoRuleMatched {
        kind: GrantKind,
        name: String,
        closest: RuleFailure,
    },
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
            Self::Unknown {
                kind: GrantKind::Role,
                name,
            } => write!(f, "role {name:?} is not defined in the policy"),
            Self::Unknown {
                kind: GrantKind::Token,
                name,
            } => {
                write!(f, "the policy issues no token for audience {name:?}")
            }
            Self::NoRuleForIssuer { kind, name, issuer } => {
                write!(
                    f,
                    "{kind} {name:?}: no rule accepts tokens from issuer {issuer:?}"
                )
            }
            Self::NoRuleMatched {
                kind,
                name,
                closest,
            } => match &closest.value {
                Some(value) => write!(
                    f,
                    "{kind} {name:?}: claim {:?} = {value:?} does not satisfy rule {}",
                    closest.claim, closest.rule
                ),
                None => write!(
                    f,
                    "{kind} {name:?}: claim {:?} is missing (rule {})",
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
            Some(role) => role.grant.decide(claims),
            None => Decision::Deny(Denial::Unknown {
                kind: GrantKind::Role,
                name: role.to_owned(),
            }),
        }
    }

    /// Decides whether `claims` may get a token for `audience`. Deny by default.
    pub fn decide_token(&self, audience: &str, claims: &Claims) -> Decision {
        match self.token_for(audience) {
            Some(token) => token.grant.decide(claims),
            None => Decision::Deny(Denial::Unknown {
                kind: GrantKind::Token,
                name: audience.to_owned(),
            }),
        }
    }
}

impl Grant {
    /// The first matching rule allows; otherwise the closest rule explains the denial.
    pub fn decide(&self, claims: &Claims) -> Decision {
        let candidates: Box<dyn Iterator<Item = &Rule>> = match &self.index {
            Some(index) => Box::new(
                index
                    .candidates(claims)
                    .into_iter()
                    .map(|at| &self.rules[at]),
            ),
            None => Box::new(self.rules.iter()),
        };
        let mut closest: Option<RuleFailure> = None;
        for rule in candidates.filter(|rule| rule.issuer == claims.issuer()) {
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
        if closest.is_none() && self.index.is_some() {
            // No rule names the caller's project or namespace: explain against the issuer's
            // first rule rather than scanning thousands.
            closest = self
                .rules
                .iter()
                .find(|rule| rule.issuer == claims.issuer())
                .and_then(|rule| rule.evaluate(claims));
        }
        let (kind, name) = (self.kind, self.name.clone());
        Decision::Deny(match closest {
            Some(closest) => Denial::NoRuleMatched {
                kind,
                name,
                closest,
            },
            None => Denial::NoRuleForIssuer {
                kind,
                name,
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
