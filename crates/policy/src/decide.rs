//! Decisions: does one of a grant's rules match these claims? Pure and cheap; the only
//! allocation is on the deny path, to say which claim failed.

use std::fmt;

use crate::index::INDEXABLE;
use crate::{Claims, Condition, Grant, GrantKind, Policy, Role, Rule, TokenGrant};

/// The outcome for one role or token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Rule `rule` (1-based) matched.
    Allow { rule: usize },
    /// Nothing matched.
    Deny(Denial),
}

impl Decision {
    /// Whether a rule matched.
    pub fn is_allow(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }
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
    /// Rule `failure.rule` matched, but the guardrail of the delegate whose file defines the
    /// grant did not: its first failing condition.
    Guardrail {
        kind: GrantKind,
        name: String,
        delegate: String,
        /// Boxed: the broker's error type carries a `Denial`, and should stay small.
        failure: Box<RuleFailure>,
    },
    /// The grant is in the file of `delegate`, which did not compile when the broker first
    /// needed it ([`crate::LazyPolicy`]; a build compiles every file, so only a bundle this
    /// code did not build can get here).
    Unavailable {
        kind: GrantKind,
        name: String,
        delegate: String,
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
            Self::Guardrail {
                kind,
                name,
                delegate,
                failure,
            } => match &failure.value {
                Some(value) => write!(
                    f,
                    "{kind} {name:?}: rule {} matches, but claim {:?} = {value:?} is outside the guardrail of delegate {delegate:?}",
                    failure.rule, failure.claim
                ),
                None => write!(
                    f,
                    "{kind} {name:?}: rule {} matches, but claim {:?} is missing, which the guardrail of delegate {delegate:?} requires",
                    failure.rule, failure.claim
                ),
            },
            Self::Unavailable {
                kind,
                name,
                delegate,
            } => write!(
                f,
                "{kind} {name:?}: the file of delegate {delegate:?} could not be compiled"
            ),
        }
    }
}

impl Denial {
    /// The claim that failed, for the audit log.
    pub fn claim(&self) -> Option<&str> {
        match self {
            Self::NoRuleMatched { closest, .. } => Some(&closest.claim),
            Self::Guardrail { failure, .. } => Some(&failure.claim),
            _ => None,
        }
    }
}

/// The role or token grant that admitted a caller, and which of its rules did (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted<'p, G> {
    /// What the caller may now have: the role to assume or the token to issue.
    pub grant: &'p G,
    /// The rule that matched, for the audit line.
    pub rule: usize,
}

impl Policy {
    /// Decides whether `claims` may assume `role`, and hands back the role if so. Deny by
    /// default.
    pub fn decide(&self, role: &str, claims: &Claims) -> Result<Admitted<'_, Role>, Denial> {
        let found = self.role(role).ok_or_else(|| Denial::Unknown {
            kind: GrantKind::Role,
            name: role.to_owned(),
        })?;
        admitted(found, found.grant.decide(claims))
    }

    /// Decides whether `claims` may get a token for `audience`, and hands back the token grant
    /// if so. Deny by default.
    pub fn decide_token(
        &self,
        audience: &str,
        claims: &Claims,
    ) -> Result<Admitted<'_, TokenGrant>, Denial> {
        let found = self.token_for(audience).ok_or_else(|| Denial::Unknown {
            kind: GrantKind::Token,
            name: audience.to_owned(),
        })?;
        admitted(found, found.grant.decide(claims))
    }
}

/// The rule-level outcome, for reports (`policy explain`, `policy test`) that need no grant.
impl<G> From<Result<Admitted<'_, G>, Denial>> for Decision {
    fn from(result: Result<Admitted<'_, G>, Denial>) -> Self {
        result.map_or_else(Decision::Deny, |admitted| Decision::Allow {
            rule: admitted.rule,
        })
    }
}

pub(crate) fn admitted<G>(grant: &G, decision: Decision) -> Result<Admitted<'_, G>, Denial> {
    match decision {
        Decision::Allow { rule } => Ok(Admitted { grant, rule }),
        Decision::Deny(denial) => Err(denial),
    }
}

/// The claims a rule that pins no id names a project by (see [`Policy::admits_project`]).
pub(crate) const PATHS: [&str; 2] = ["project_path", "namespace_path"];

impl Policy {
    /// Whether any rule of any role or token names the caller's project: a rule for the caller's
    /// issuer whose `project_id` or `namespace_id` condition holds for it, or, for a rule that
    /// pins no id (`allow_path_only`), whose path conditions all hold. A caller from a project no
    /// rule names is told nothing about the policy's roles and rules: anyone on gitlab.com can
    /// mint a token with the broker's audience, and must not learn the policy by asking.
    pub fn admits_project(&self, claims: &Claims) -> bool {
        // Every rule of the caller's issuer, not the index's candidates: the index files a rule
        // under one of its ids, so a rule that names the caller's namespace could be missed for
        // a large grant and found for a small one. Only the deny path asks.
        self.grants().any(|grant| {
            grant
                .rules
                .iter()
                .any(|rule| rule.issuer == claims.issuer() && rule.names(claims))
        })
    }
}

impl Grant {
    /// The rules for the caller's issuer that can match its claims, in file order: all of them,
    /// or for an indexed grant those the index finds for its project or namespace.
    fn candidates<'a>(&'a self, claims: &'a Claims) -> Box<dyn Iterator<Item = &'a Rule> + 'a> {
        let rules: Box<dyn Iterator<Item = &Rule>> = match &self.index {
            Some(index) => Box::new(
                index
                    .candidates(claims)
                    .into_iter()
                    .map(|at| &self.rules[at]),
            ),
            None => Box::new(self.rules.iter()),
        };
        Box::new(rules.filter(|rule| rule.issuer == claims.issuer()))
    }

    /// The first matching rule allows; otherwise the closest rule explains the denial.
    pub fn decide(&self, claims: &Claims) -> Decision {
        let mut closest: Option<RuleFailure> = None;
        for rule in self.candidates(claims) {
            match rule.evaluate(claims) {
                None => return self.guarded(rule.number, claims),
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

impl Grant {
    /// Rule `rule` matched: allowed, unless the grant is a delegate's and its guardrail fails.
    fn guarded(&self, rule: usize, claims: &Claims) -> Decision {
        let Some(delegate) = &self.delegate else {
            return Decision::Allow { rule };
        };
        match delegate.require.evaluate(claims) {
            None => Decision::Allow { rule },
            Some(mut failure) => {
                failure.rule = rule;
                Decision::Deny(Denial::Guardrail {
                    kind: self.kind,
                    name: self.name.clone(),
                    delegate: delegate.name.clone(),
                    failure: Box::new(failure),
                })
            }
        }
    }
}

impl crate::Guardrail {
    /// `None` when the caller's issuer and every condition are what the guardrail requires,
    /// else the first failure (`rule` 0: it is no rule of the file).
    pub fn evaluate(&self, claims: &Claims) -> Option<RuleFailure> {
        if let Some(issuer) = &self.issuer
            && issuer != claims.issuer()
        {
            return Some(RuleFailure {
                rule: 0,
                claim: "iss".to_owned(),
                value: Some(claims.issuer().to_owned()),
                failed_conditions: 1,
            });
        }
        let mut failed = self
            .conditions
            .iter()
            .filter(|c| !c.matches(claims.get(&c.claim)));
        let first = failed.next()?;
        Some(RuleFailure {
            rule: 0,
            claim: first.claim.clone(),
            value: claims.get(&first.claim).map(str::to_owned),
            failed_conditions: 1 + failed.count(),
        })
    }
}

impl Rule {
    /// Whether the rule is about the caller's project (see [`Policy::admits_project`]); reads
    /// only its conditions on [`INDEXABLE`] and [`PATHS`].
    pub(crate) fn names(&self, claims: &Claims) -> bool {
        let mut ids = self.conditions_on(&INDEXABLE).peekable();
        if ids.peek().is_some() {
            return ids.any(|c| c.matches(claims.get(&c.claim)));
        }
        self.conditions_on(&PATHS)
            .all(|c| c.matches(claims.get(&c.claim)))
    }

    fn conditions_on<'a>(&'a self, names: &'a [&str]) -> impl Iterator<Item = &'a Condition> {
        self.conditions
            .iter()
            .filter(move |c| names.contains(&c.claim.as_str()))
    }

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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::{Claims, parse};

    const GITLAB: &str = "https://gitlab.example.com";

    /// A role pinned to a project, a token pinned to a namespace, and a path-only rule.
    const POLICY: &str = include_str!("../tests/fixtures/admits-project.toml");

    #[test]
    fn a_large_indexed_grant_admits_the_same_projects_as_a_small_one() {
        // Rule 1 pins a project and a namespace; the others make the grant large enough to be
        // indexed (crate::index::INDEX_FROM_RULES).
        let mut text = String::from(
            "audience = \"https://token-broker.example.com\"\n\n[[issuer]]\nurl = \"https://gitlab.example.com\"\n\n[role.deploy]\narn = \"arn:aws:iam::123456789012:role/deploy\"\n\n[[role.deploy.allow]]\nproject_id = \"4242\"\nnamespace_id = \"72\"\n",
        );
        for id in 0..crate::index::INDEX_FROM_RULES {
            text.push_str(&format!(
                "\n[[role.deploy.allow]]\nproject_id = \"{}\"\n",
                9000 + id
            ));
        }
        let policy = parse(Path::new("p.toml"), &text, &|_| Err("no files".into())).unwrap();
        assert!(
            policy.roles[0].grant.index.is_some(),
            "the grant is indexed"
        );
        let same_namespace =
            Claims::from_pairs(GITLAB, [("project_id", "1"), ("namespace_id", "72")]);
        assert!(policy.admits_project(&same_namespace));
        let stranger = Claims::from_pairs(GITLAB, [("project_id", "1"), ("namespace_id", "666")]);
        assert!(!policy.admits_project(&stranger));
    }

    #[test]
    fn a_project_is_admitted_only_where_a_rule_names_its_identity() {
        let policy = parse(Path::new("p.toml"), POLICY, &|_| Err("no files".into())).unwrap();
        let cases = [
            // project_id pinned by `deploy`, whatever the ref: admitted (told precise reasons).
            (GITLAB, "4242", "1", "other/web", true),
            // namespace 72 with a path under acme/: admitted by the token grant.
            (GITLAB, "9", "72", "acme/api", true),
            // namespace 72 is named, whatever the path: the caller is told which claim failed.
            (GITLAB, "9", "72", "evil/api", true),
            // a path-only rule names its project by path.
            (GITLAB, "5", "6", "docs/site", true),
            // nothing names project 5 in namespace 6 at another path.
            (GITLAB, "5", "6", "docs/other", false),
            // the right ids from an issuer no rule accepts.
            ("https://gitlab.com", "4242", "72", "acme/web", false),
        ];
        for (issuer, project_id, namespace_id, project_path, admitted) in cases {
            let claims = Claims::from_pairs(
                issuer,
                [
                    ("project_id", project_id),
                    ("namespace_id", namespace_id),
                    ("project_path", project_path),
                ],
            );
            assert_eq!(
                policy.admits_project(&claims),
                admitted,
                "{issuer} {project_id} {namespace_id} {project_path}"
            );
        }
    }
}
