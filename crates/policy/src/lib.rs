//! token-broker's policy file: which GitLab jobs may assume which role. Raw TOML is parsed and compiled once
//! at start ([`load`]); afterwards [`Policy::decide`] is pure and allocation-light. Deny by default:
//! a role is allowed only when one of its rules matches every one of its conditions.

pub mod access;
pub mod cases;
pub mod claims;
#[cfg(feature = "cli")]
pub mod cli;
mod compile;
mod decide;
mod delegate;
pub mod diff;
pub mod explain;
mod file;
pub mod gitlab;
mod glob;
mod index;
pub mod lazy;
pub mod lint;
pub mod names;
pub mod report;
mod session_policy;
pub mod subject;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

pub use compile::{PROVENANCE_CLAIMS, REGISTERED_CLAIMS, check_url};
pub use decide::{Admitted, Decision, Denial, RuleFailure};
pub use file::{PolicyError, beside, load, parse};
pub use glob::Pattern;
pub use lazy::LazyPolicy;

pub use claims::Claims;
use names::RoleArn;

/// Claims every GitLab CI ID token carries; a token without them is not a CI job's token.
pub const REQUIRED_CI_CLAIMS: [&str; 6] = [
    "project_id",
    "namespace_id",
    "job_id",
    "pipeline_id",
    "ref",
    "ref_type",
];

/// A compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The `aud` GitLab jobs must request for the broker (`id_tokens: …: aud:`).
    pub audience: String,
    /// The trusted GitLab instances, matched exactly against `iss`.
    pub issuers: Vec<Issuer>,
    /// Roles by name, in file order.
    pub roles: Vec<Role>,
    /// Tokens the broker re-issues, by name, in file order.
    pub tokens: Vec<TokenGrant>,
    /// Files the root policy hands to teams, each under its guardrail, in file order. Their
    /// roles and tokens are in `roles` and `tokens`, after the root's own.
    pub delegates: Vec<Arc<Delegate>>,
}

/// A `[delegate.NAME]`: a file of roles (and tokens, if allowed) that a team owns, under the
/// conditions the platform team sets in the root policy.
#[derive(Debug, Clone)]
pub struct Delegate {
    /// The `[delegate.NAME]` name.
    pub name: String,
    /// The delegated file, relative to the root policy's directory, as the root names it.
    pub file: String,
    /// Line of `[delegate.NAME]` in the root policy.
    pub line: usize,
    /// The guardrail: conditions joined (AND) to every rule of the file.
    pub require: Guardrail,
    /// Every role's ARN in the file must match one of these.
    pub role_arns: Vec<Pattern>,
    /// No role of the file may ask more; `None`: STS's 12 h.
    pub max_duration: Option<Duration>,
    /// Whether the file may define `[token.*]` grants; default false.
    pub tokens: bool,
    /// The audiences those tokens may be for; default none. A team's token keeps the broker's
    /// own subject and a lifetime within `max_duration`.
    pub audiences: Vec<String>,
}

/// A delegate's `require`: conditions every rule of its file must also meet.
#[derive(Debug, Clone)]
pub struct Guardrail {
    /// Line of `require` in the root policy.
    pub line: usize,
    /// The issuer it admits; `None`: any of the policy's issuers.
    pub issuer: Option<String>,
    /// Every condition must hold.
    pub conditions: Vec<Condition>,
}

/// What a set of rules protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GrantKind {
    /// AWS credentials of a role (`/v1/credentials`).
    Role,
    /// A broker-signed token for an audience (`/v1/token`).
    Token,
}

impl std::fmt::Display for GrantKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Role => "role",
            Self::Token => "token",
        })
    }
}

/// A named set of rules; deny by default, allowed when any rule matches.
#[derive(Debug, Clone)]
pub struct Grant {
    pub kind: GrantKind,
    /// The `[role.NAME]` or `[token.NAME]` name.
    pub name: String,
    /// The rules, any of which allows.
    pub rules: Vec<Rule>,
    /// How many times one GitLab token (by `iss` and `jti`) may be exchanged for this grant;
    /// default `None`: no limit, no replay guard. Set by `token_uses`, per grant or for all.
    pub token_uses: Option<u32>,
    /// For large rule sets, which rules can match a given project or namespace.
    pub(crate) index: Option<index::RuleIndex>,
    /// The delegate whose file defines this grant, whose guardrail each rule must also meet;
    /// `None` for the root policy's own grants.
    pub delegate: Option<Arc<Delegate>>,
}

impl Grant {
    /// A grant, indexed when it has many rules.
    pub fn new(kind: GrantKind, name: String, rules: Vec<Rule>) -> Self {
        let index = (rules.len() >= index::INDEX_FROM_RULES)
            .then(|| index::RuleIndex::build(&rules))
            .flatten();
        Self {
            kind,
            name,
            rules,
            token_uses: None,
            index,
            delegate: None,
        }
    }
}

/// A trusted GitLab instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    /// Exactly the token's `iss`.
    pub url: String,
    /// Where its keys are fetched; default `{url}/oauth/discovery/keys`. Never taken from a token.
    pub jwks_url: String,
    /// JWS algorithms accepted from this issuer; default `["RS256"]`, asymmetric only.
    pub algorithms: Vec<Algorithm>,
}

/// A role a job may assume.
#[derive(Debug, Clone)]
pub struct Role {
    /// Its name (what callers ask for with `role=`) and rules.
    pub grant: Grant,
    /// The IAM role to assume.
    pub arn: RoleArn,
    /// Longest session; default 1 h, between 15 min and 12 h.
    pub max_duration: Duration,
    /// Claims passed as `gitlab:<claim>` session tags; default none.
    pub session_tags: Vec<String>,
    /// Minified JSON session policy that scopes the session down; default none.
    pub session_policy: Option<String>,
    /// Line of `max_duration` in the policy file, where findings about it point; 0 when unset.
    pub max_duration_line: usize,
    /// Line of `session_tags`, where findings about the tags point; 0 when unset.
    pub session_tags_line: usize,
}

/// A token the broker may re-issue, signed with its KMS key.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    /// Its name and rules.
    pub grant: Grant,
    /// The one `aud` a caller may request for it.
    pub audience: String,
    /// Longest lifetime; default 15 min, never past the GitLab token's `exp`.
    pub max_ttl: Duration,
    /// Verified GitLab claims copied into the token.
    pub claims: Vec<String>,
    /// The token's `sub`; default [`subject::DEFAULT_SUBJECT`], plus the environment when every
    /// rule requires one.
    pub subject: subject::SubjectTemplate,
}

/// A conjunction of conditions, tied to one issuer.
#[derive(Debug, Clone)]
pub struct Rule {
    /// 1-based position among its role's rules, as people count them.
    pub number: usize,
    /// Line in the policy file, for messages.
    pub line: usize,
    /// The issuer whose tokens the rule accepts.
    pub issuer: String,
    /// Every condition must hold.
    pub conditions: Vec<Condition>,
    /// The rule knowingly pins only paths, not `project_id`/`namespace_id` (a lint waiver).
    pub allow_path_only: bool,
}

/// One claim condition: the claim must be present and match any of the patterns.
#[derive(Debug, Clone)]
pub struct Condition {
    /// Claim name, e.g. `ref`.
    pub claim: String,
    /// Any of these.
    pub patterns: Vec<Pattern>,
}

impl Condition {
    /// A missing claim never matches.
    pub fn matches(&self, value: Option<&str>) -> bool {
        value.is_some_and(|v| self.patterns.iter().any(|p| p.matches(v)))
    }
}

/// The asymmetric JWS algorithms an issuer may be pinned to. HS* and `none` do not exist here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
}

impl Policy {
    /// The issuer whose `url` equals `iss` exactly, if any.
    pub fn issuer(&self, iss: &str) -> Option<&Issuer> {
        self.issuers.iter().find(|issuer| issuer.url == iss)
    }

    /// The role named `name`, if any.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.iter().find(|role| role.grant.name == name)
    }

    /// The token whose audience is `audience`, if any.
    pub fn token_for(&self, audience: &str) -> Option<&TokenGrant> {
        self.tokens.iter().find(|token| token.audience == audience)
    }

    /// Whether any role or token limits how often one GitLab token may be exchanged for it, so
    /// the broker needs its replay table.
    pub fn guards_replay(&self) -> bool {
        self.grants().any(|grant| grant.token_uses.is_some())
    }

    /// Every role's and token's rules, roles first, in file order.
    pub fn grants(&self) -> impl Iterator<Item = &Grant> {
        self.roles
            .iter()
            .map(|r| &r.grant)
            .chain(self.tokens.iter().map(|t| &t.grant))
    }
}
