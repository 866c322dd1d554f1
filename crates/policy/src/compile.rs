//! Raw policy → compiled [`Policy`]: every value checked once, every pattern compiled once, so a
//! policy that would fail at request time fails at start (and in `policy check`) instead.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use std::sync::LazyLock;
use toml::Spanned;

use crate::file::{
    LineIndex, RawIssuer, RawPolicy, RawRole, RawRule, RawToken, RawUses, RawValue, Source,
};
use crate::names::{
    MAX_SESSION_POLICY_CHARS, MAX_SESSION_TAGS, RoleArn, RoleName, SessionDuration, SessionTag,
};
use crate::{
    Algorithm, Condition, Grant, GrantKind, Issuer, Pattern, Policy, Role, Rule, TokenGrant,
    subject::SubjectTemplate,
};

static CLAIM_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?:[a-z_][a-z0-9_]{0,63})$").expect("static regex"));

const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(3600);
const MIN_DURATION: Duration = SessionDuration::MIN.as_duration();
const MAX_DURATION: Duration = SessionDuration::MAX.as_duration();
const DEFAULT_MAX_TTL: Duration = Duration::from_secs(15 * 60);
const MIN_TTL: Duration = Duration::from_secs(60);
/// The largest `token_uses`: a limit above it guards nothing a job would notice.
const MAX_TOKEN_USES: i64 = 1000;

/// What every rule's compilation shares.
pub(crate) struct Context<'a> {
    pub(crate) issuers: &'a [Issuer],
    /// The policy-wide `token_uses`, for grants that set none.
    pub(crate) token_uses: Option<u32>,
    pub(crate) lines: LineIndex,
    /// Compiled globs by source: large policies repeat a few (`v*`, `release/*`) thousands of
    /// times, and compiling a regular expression costs far more than matching one.
    pub(crate) patterns: RefCell<HashMap<String, Pattern>>,
}

impl Context<'_> {
    pub(crate) fn pattern(&self, source: &str) -> Result<Pattern, String> {
        if let Some(pattern) = self.patterns.borrow().get(source) {
            return Ok(pattern.clone());
        }
        let pattern = Pattern::compile(source)?;
        self.patterns
            .borrow_mut()
            .insert(source.to_owned(), pattern.clone());
        Ok(pattern)
    }
}

/// A compile error at a byte offset of the policy text, or of a delegated file's (`source`).
#[derive(Debug)]
pub(crate) struct CompileError {
    pub offset: usize,
    pub message: String,
    pub source: Option<Arc<Source>>,
}

impl CompileError {
    /// The error, placed in `source` unless it already is in a file.
    pub(crate) fn in_file(mut self, source: &Arc<Source>) -> Self {
        self.source.get_or_insert_with(|| source.clone());
        self
    }
}

pub(crate) fn error_at<T>(
    span: std::ops::Range<usize>,
    message: impl Into<String>,
) -> Result<T, CompileError> {
    Err(CompileError {
        offset: span.start,
        message: message.into(),
        source: None,
    })
}

pub(crate) fn compile(
    raw: RawPolicy,
    text: &str,
    read: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Policy, CompileError> {
    if raw.audience.get_ref().trim().is_empty() {
        return error_at(
            raw.audience.span(),
            "`audience` must name the aud GitLab jobs request",
        );
    }
    let issuers = compile_issuers(&raw.issuers)?;
    let token_uses = match &raw.token_uses {
        Some(uses) => token_uses(uses)?,
        None => None,
    };
    let context = Context {
        issuers: &issuers,
        token_uses,
        lines: LineIndex::new(text),
        patterns: RefCell::default(),
    };
    let mut roles: Vec<Role> = raw
        .roles
        .iter()
        .map(|(name, role)| compile_role(name, role, &context, read))
        .collect::<Result<_, _>>()?;
    let mut tokens: Vec<TokenGrant> = raw
        .tokens
        .iter()
        .map(|(name, token)| compile_token(name, token, &context))
        .collect::<Result<_, _>>()?;
    for (i, token) in tokens.iter().enumerate() {
        if tokens[..i].iter().any(|t| t.audience == token.audience) {
            let (_, raw_token) = raw.tokens.iter().nth(i).expect("same order");
            return error_at(
                raw_token.get_ref().audience.span(),
                format!(
                    "audience {:?} is given by two [token] entries",
                    token.audience
                ),
            );
        }
    }
    let delegates = crate::delegate::compile_all(&raw, &context, read, &mut roles, &mut tokens)?;
    Ok(Policy {
        audience: raw.audience.into_inner(),
        issuers,
        roles,
        tokens,
        delegates,
    })
}

fn compile_issuers(raw: &[Spanned<RawIssuer>]) -> Result<Vec<Issuer>, CompileError> {
    if raw.is_empty() {
        return error_at(
            0..0,
            "the policy trusts no issuer: add an [[issuer]] with the GitLab URL",
        );
    }
    let mut issuers: Vec<Issuer> = Vec::new();
    for entry in raw {
        let issuer = compile_issuer(entry.get_ref())?;
        if issuers.iter().any(|known| known.url == issuer.url) {
            return error_at(
                entry.span(),
                format!("issuer {:?} is listed twice", issuer.url),
            );
        }
        issuers.push(issuer);
    }
    Ok(issuers)
}

fn compile_issuer(raw: &RawIssuer) -> Result<Issuer, CompileError> {
    let url = raw.url.get_ref();
    check_url(url).or_else(|e| error_at(raw.url.span(), format!("issuer url: {e}")))?;
    let jwks_url = match &raw.jwks_url {
        Some(jwks) => {
            check_url(jwks.get_ref())
                .or_else(|e| error_at(jwks.span(), format!("jwks_url: {e}")))?;
            jwks.get_ref().clone()
        }
        None => format!("{}/oauth/discovery/keys", url.trim_end_matches('/')),
    };
    let algorithms = match &raw.algorithms {
        None => vec![Algorithm::RS256],
        Some(names) => names
            .get_ref()
            .iter()
            .map(|name| asymmetric_algorithm(name))
            .collect::<Result<Vec<_>, _>>()
            .or_else(|e| error_at(names.span(), e))?,
    };
    if algorithms.is_empty() {
        return error_at(raw.url.span(), "`algorithms` cannot be empty");
    }
    Ok(Issuer {
        url: url.clone(),
        jwks_url,
        algorithms,
    })
}

/// https only, except on loopback hosts, where a local GitLab or test issuer runs on http.
pub fn check_url(text: &str) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "{text:?} must use https (http is only for loopback hosts)"
        )),
        _ => Err(format!("{text:?} must be an https URL")),
    }?;
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!(
            "{text:?} must not carry a query, fragment or user name"
        ));
    }
    Ok(())
}

fn asymmetric_algorithm(name: &str) -> Result<Algorithm, String> {
    use Algorithm::*;
    let algorithm = match name {
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        _ => {
            return Err(format!(
                "algorithm {name:?} is not accepted: use RS256 (GitLab) or another asymmetric JWS algorithm"
            ));
        }
    };
    Ok(algorithm)
}

pub(crate) fn compile_role(
    name: &Spanned<String>,
    raw: &Spanned<RawRole>,
    context: &Context<'_>,
    read: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Role, CompileError> {
    RoleName::parse(name.get_ref()).or_else(|e| error_at(name.span(), format!("role name {e}")))?;
    let role = raw.get_ref();
    let arn = RoleArn::parse(role.arn.get_ref()).or_else(|e| error_at(role.arn.span(), e))?;
    let max_duration = match &role.max_duration {
        None => DEFAULT_MAX_DURATION,
        Some(d) => parse_duration(d.get_ref())
            .or_else(|e| error_at(d.span(), format!("max_duration: {e}")))?,
    };
    let tags = role.session_tags.as_ref();
    let session_tags = compile_session_tags(tags.map_or(&[], |t| t.get_ref()))?;
    let session_policy = match &role.session_policy {
        None => None,
        Some(path) => {
            Some(load_session_policy(path.get_ref(), read).or_else(|e| error_at(path.span(), e))?)
        }
    };
    let rules = compile_rules(&role.allow, context)?;
    let mut grant = Grant::new(GrantKind::Role, name.get_ref().clone(), rules);
    grant.token_uses = grant_token_uses(role.token_uses.as_ref(), context)?;
    Ok(Role {
        grant,
        arn,
        max_duration,
        session_tags,
        session_policy,
        max_duration_line: key_line(role.max_duration.as_ref(), context),
        session_tags_line: key_line(tags, context),
    })
}

/// The line of a role key's value, which TOML keeps on the key's own line; 0 when it is absent.
fn key_line<T>(value: Option<&Spanned<T>>, context: &Context<'_>) -> usize {
    value.map_or(0, |v| context.lines.line(v.span().start))
}

fn compile_rules(
    raw: &[Spanned<RawRule>],
    context: &Context<'_>,
) -> Result<Vec<Rule>, CompileError> {
    raw.iter()
        .enumerate()
        .map(|(i, rule)| compile_rule(i + 1, rule, context))
        .collect()
}

/// Claims the broker sets itself in the tokens it issues; a `[token]` cannot copy them.
pub const REGISTERED_CLAIMS: [&str; 7] = ["iss", "sub", "aud", "iat", "nbf", "exp", "jti"];
/// Where the broker keeps GitLab's own `iss` and `sub` in the tokens it issues.
pub const PROVENANCE_CLAIMS: [&str; 2] = ["gitlab_iss", "gitlab_sub"];

pub(crate) fn compile_token(
    name: &Spanned<String>,
    raw: &Spanned<RawToken>,
    context: &Context<'_>,
) -> Result<TokenGrant, CompileError> {
    RoleName::parse(name.get_ref())
        .or_else(|e| error_at(name.span(), format!("token name {e}")))?;
    let token = raw.get_ref();
    let audience = token.audience.get_ref();
    if audience.trim().is_empty() || audience.len() > 512 {
        return error_at(
            token.audience.span(),
            "`audience` must be a non-empty string of at most 512 bytes",
        );
    }
    let max_ttl = match &token.max_ttl {
        None => DEFAULT_MAX_TTL,
        Some(ttl) => parse_duration_within(ttl.get_ref(), MIN_TTL, MAX_DURATION)
            .or_else(|e| error_at(ttl.span(), format!("max_ttl: {e}")))?,
    };
    let mut claims = Vec::new();
    for claim in &token.claims {
        let name = claim.get_ref();
        let own = REGISTERED_CLAIMS
            .iter()
            .chain(&PROVENANCE_CLAIMS)
            .any(|c| c == name);
        if !CLAIM_NAME.is_match(name) || own {
            return error_at(
                claim.span(),
                format!(
                    "claims: {name:?} is not a GitLab claim the broker can copy (iss, sub, aud, iat, nbf, exp, jti, gitlab_iss and gitlab_sub are its own)"
                ),
            );
        }
        if claims.contains(name) {
            return error_at(claim.span(), format!("claims: {name:?} is listed twice"));
        }
        claims.push(name.clone());
    }
    let rules = compile_rules(&token.allow, context)?;
    let subject = match &token.subject {
        Some(source) => SubjectTemplate::parse(source.get_ref())
            .or_else(|e| error_at(source.span(), format!("subject {e}")))?,
        None => SubjectTemplate::default_for(requires(&rules, "environment")),
    };
    let mut grant = Grant::new(GrantKind::Token, name.get_ref().clone(), rules);
    grant.token_uses = grant_token_uses(token.token_uses.as_ref(), context)?;
    Ok(TokenGrant {
        grant,
        audience: audience.clone(),
        max_ttl,
        claims,
        subject,
    })
}

/// A grant's own `token_uses`, else the policy's.
fn grant_token_uses(
    own: Option<&Spanned<RawUses>>,
    context: &Context<'_>,
) -> Result<Option<u32>, CompileError> {
    match own {
        Some(uses) => token_uses(uses),
        None => Ok(context.token_uses),
    }
}

/// `1` to `1000`, or `"unlimited"` (`None`). Zero is refused rather than read as "unlimited" or
/// "never": either reading would surprise half of the people who write it.
fn token_uses(raw: &Spanned<RawUses>) -> Result<Option<u32>, CompileError> {
    match raw.get_ref() {
        RawUses::Count(n) if (1..=MAX_TOKEN_USES).contains(n) => {
            Ok(Some(u32::try_from(*n).expect("at most 1000")))
        }
        RawUses::Word(word) if word == "unlimited" => Ok(None),
        _ => error_at(
            raw.span(),
            format!(
                "token_uses: a whole number from 1 to {MAX_TOKEN_USES} (how many times one GitLab token may be exchanged), or \"unlimited\""
            ),
        ),
    }
}

/// Whether every rule has a condition on `claim` (so every token allowed carries it).
fn requires(rules: &[Rule], claim: &str) -> bool {
    !rules.is_empty()
        && rules
            .iter()
            .all(|rule| rule.conditions.iter().any(|c| c.claim == claim))
}

/// `"1h"`, `"90m"`, `"3600s"` or `"3600"`, between 15 minutes and 12 hours (STS's limits).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_duration_within(text, MIN_DURATION, MAX_DURATION)
        .map_err(|e| e.replace("the allowed range", "STS's range"))
}

/// A duration between `min` and `max`.
fn parse_duration_within(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, "s"),
    };
    let multiplier = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => {
            return Err(format!(
                "{text:?} is not a duration like \"1h\", \"45m\" or \"900s\""
            ));
        }
    };
    let amount: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like \"1h\", \"45m\" or \"900s\""))?;
    let duration = Duration::from_secs(amount.saturating_mul(multiplier));
    if !(min..=max).contains(&duration) {
        return Err(format!(
            "{text:?} is outside the allowed range of {}m to {}h",
            min.as_secs() / 60,
            max.as_secs() / 3600
        ));
    }
    Ok(duration)
}

fn compile_session_tags(raw: &[Spanned<String>]) -> Result<Vec<String>, CompileError> {
    if raw.len() > MAX_SESSION_TAGS {
        return error_at(
            raw[MAX_SESSION_TAGS].span(),
            format!("STS takes at most {MAX_SESSION_TAGS} session tags"),
        );
    }
    let mut seen = BTreeSet::new();
    for claim in raw {
        if !CLAIM_NAME.is_match(claim.get_ref()) {
            return error_at(
                claim.span(),
                format!("session tag {:?} is not a claim name", claim.get_ref()),
            );
        }
        SessionTag::key_for_claim(claim.get_ref()).or_else(|e| error_at(claim.span(), e))?;
        if !seen.insert(claim.get_ref().as_str()) {
            return error_at(
                claim.span(),
                format!("session tag {:?} is listed twice", claim.get_ref()),
            );
        }
    }
    Ok(raw.iter().map(|c| c.get_ref().clone()).collect())
}

fn load_session_policy(
    path: &str,
    read: &dyn Fn(&str) -> Result<String, String>,
) -> Result<String, String> {
    let text = read(path).map_err(|e| format!("session_policy {path:?}: {e}"))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("session_policy {path:?} is not JSON: {e}"))?;
    if !json.is_object() {
        return Err(format!(
            "session_policy {path:?} must be a JSON object (an IAM policy document)"
        ));
    }
    let minified = json.to_string();
    if minified.chars().count() > MAX_SESSION_POLICY_CHARS {
        return Err(format!(
            "session_policy {path:?} is {} characters minified; STS takes at most {MAX_SESSION_POLICY_CHARS}",
            minified.chars().count()
        ));
    }
    Ok(minified)
}

fn compile_rule(
    number: usize,
    raw: &Spanned<RawRule>,
    context: &Context<'_>,
) -> Result<Rule, CompileError> {
    let mut issuer = None;
    let mut allow_path_only = false;
    let mut conditions = Vec::new();
    for (key, value) in raw.get_ref() {
        match (key.get_ref().as_str(), value.get_ref()) {
            ("issuer", RawValue::One(url)) => issuer = Some((url, value.span())),
            ("issuer", _) => return error_at(value.span(), "`issuer` is one issuer URL"),
            ("allow_path_only", RawValue::Flag(flag)) => allow_path_only = *flag,
            ("allow_path_only", _) => {
                return error_at(value.span(), "`allow_path_only` is true or false");
            }
            (claim, raw_value) => conditions.push(compile_condition(
                key,
                claim,
                raw_value,
                value.span(),
                context,
            )?),
        }
    }
    let issuer = rule_issuer(issuer, context.issuers, raw.span())?;
    if conditions.is_empty() {
        return error_at(
            raw.span(),
            "a rule needs at least one claim condition (an empty rule would allow every job)",
        );
    }
    let line = context.lines.line(raw.span().start);
    Ok(Rule {
        number,
        line,
        issuer,
        conditions,
        allow_path_only,
    })
}

pub(crate) fn rule_issuer(
    named: Option<(&String, std::ops::Range<usize>)>,
    issuers: &[Issuer],
    rule_span: std::ops::Range<usize>,
) -> Result<String, CompileError> {
    match named {
        Some((url, span)) => match issuers.iter().find(|i| &i.url == url) {
            Some(issuer) => Ok(issuer.url.clone()),
            None => error_at(
                span,
                format!("issuer {url:?} is not one of the [[issuer]] entries"),
            ),
        },
        None if issuers.len() == 1 => Ok(issuers[0].url.clone()),
        None => error_at(
            rule_span,
            "with several issuers, every rule must name its `issuer`",
        ),
    }
}

pub(crate) fn compile_condition(
    key: &Spanned<String>,
    claim: &str,
    value: &RawValue,
    span: std::ops::Range<usize>,
    context: &Context<'_>,
) -> Result<Condition, CompileError> {
    if !CLAIM_NAME.is_match(claim) || claim == "iss" {
        return error_at(
            key.span(),
            format!("{claim:?} is not a claim name this broker can match"),
        );
    }
    let sources: Vec<&String> = match value {
        RawValue::One(one) => vec![one],
        RawValue::Any(any) if !any.is_empty() => any.iter().collect(),
        RawValue::Any(_) => {
            return error_at(
                span,
                format!("condition {claim:?}: an empty list matches nothing"),
            );
        }
        RawValue::Flag(_) => {
            return error_at(
                span,
                format!(
                    "condition {claim:?}: claims are compared as strings; write \"true\" or \"false\""
                ),
            );
        }
    };
    let patterns = sources
        .into_iter()
        .map(|s| context.pattern(s))
        .collect::<Result<Vec<_>, _>>()
        .or_else(|e| error_at(span, format!("condition {claim:?}: {e}")))?;
    Ok(Condition {
        claim: claim.to_owned(),
        patterns,
    })
}
