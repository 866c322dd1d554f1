//! The use case, as named steps: verify the GitLab token, decide from the policy, then either
//! plan the STS call (every input checked) and assume the role, or build the claims of a token
//! and have KMS sign it; when the grant limits how often one token may be used, a use is reserved
//! just before STS or KMS is called and given back if that call fails. One audit line and one
//! metric line for every request, whatever happened.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::aws::kms::{Kms, KmsError};
use crate::aws::names::{SessionDuration, SessionName, SessionTag, SourceIdentity};
use crate::aws::replay::{ReplayError, ReplayTable, UseId, UseKey};
use crate::aws::sts::{AssumeRole, Credentials, Sts, StsError};
use crate::metrics::{self, Metrics, Outcome, Subject};
use crate::oidc::{VerifiedToken, Verifier, VerifyError, now_secs};
use crate::policy::{Denial, Grant, LazyPolicy, Role, TokenGrant};
use crate::secret::Secret;

/// What a caller asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsRequest {
    /// The role by its policy name, already checked by `RoleName::parse`.
    pub role: String,
    /// Wanted session length; default and cap: the role's `max_duration`.
    pub duration_seconds: Option<u64>,
}

/// Credentials handed out, with what was decided.
#[derive(Debug, Clone)]
pub struct Issued {
    /// What STS answered.
    pub credentials: Credentials,
    /// The policy role they are for.
    pub role: String,
    /// `gitlab-<project_id>-<job_id>`, as CloudTrail shows it.
    pub session_name: String,
    /// The session length asked of STS, after every cap.
    pub duration_seconds: i32,
}

/// Why the exchange failed; `http` maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The GitLab token failed a check, or its issuer's keys could not be had.
    #[error(transparent)]
    InvalidToken(#[from] VerifyError),
    /// The caller is verified but gets nothing.
    #[error(transparent)]
    AccessDenied(#[from] Refusal),
    /// AssumeRole failed.
    #[error(transparent)]
    Sts(#[from] StsError),
    /// KMS could not give its public key or sign.
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// This broker has no signing key, so it issues no tokens.
    #[error("this broker issues no tokens (no KMS_KEY_ID configured)")]
    NoSigningKey,
    /// The replay guard could not count this use: the exchange fails closed.
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

/// What a caller from a project that no rule of the policy names is told, whatever was asked.
pub const NOTHING_ADMITTED: &str = "the policy admits nothing for this project";

/// Why a verified caller gets nothing. The audit log always gets the full reason; the caller
/// only when their project is one the policy admits somewhere (their own values only), so
/// nobody else can learn which roles exist or what their rules require.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// No rule of the role or token grant admits the caller.
    #[error("{}", if *.disclosed { .denial.to_string() } else { NOTHING_ADMITTED.to_owned() })]
    Policy {
        /// The policy's structured answer: which grant, which rule came closest, which claim.
        denial: Denial,
        /// Whether the caller may be told `denial`.
        disclosed: bool,
    },
    /// A rule admitted the caller, but one of their claims cannot go into the STS call or the
    /// token (STS would refuse it); told to the caller, since their project is admitted.
    #[error("claim {claim:?} {why}")]
    Claim {
        /// The claim at fault.
        claim: String,
        /// What is wrong with its value.
        why: String,
    },
    /// The GitLab token was already exchanged as often as the grant's `token_uses` allows; told
    /// to the caller, since a rule admitted them.
    #[error(
        "{grant}: this GitLab token was already exchanged {limit} time(s), all that token_uses allows; a new job gets a new token"
    )]
    Replayed {
        /// `role "NAME"` or `token "NAME"`.
        grant: String,
        /// The grant's `token_uses`.
        limit: u32,
    },
}

impl Refusal {
    /// The full reason, for the audit log.
    pub fn reason(&self) -> String {
        match self {
            Self::Policy { denial, .. } => denial.to_string(),
            Self::Claim { .. } | Self::Replayed { .. } => self.to_string(),
        }
    }

    /// The claim that failed, when one did, for the audit log.
    pub fn claim(&self) -> Option<&str> {
        match self {
            Self::Policy { denial, .. } => denial.claim(),
            Self::Claim { claim, .. } => Some(claim),
            Self::Replayed { .. } => Some("jti"),
        }
    }
}

/// A token the broker issued.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The compact JWS.
    pub token: Secret,
    /// Seconds until it expires.
    pub expires_in: u64,
}

/// The exchange, holding the compiled policy and its adapters.
pub struct Broker {
    policy: Arc<LazyPolicy>,
    verifier: Verifier,
    sts: Sts,
    kms: Option<Kms>,
    replay: Option<ReplayTable>,
    metrics: Metrics,
}

impl Broker {
    /// A broker for `policy`; without `kms` it issues credentials but no tokens.
    pub fn new(policy: Arc<LazyPolicy>, verifier: Verifier, sts: Sts, kms: Option<Kms>) -> Self {
        Self {
            policy,
            verifier,
            sts,
            kms,
            replay: None,
            metrics: Metrics::default(),
        }
    }

    /// The broker with the table that counts token uses for grants with `token_uses`. Without
    /// one, those grants fail closed (500).
    pub fn with_replay_table(mut self, replay: Option<ReplayTable>) -> Self {
        self.replay = replay;
        self
    }

    /// The broker writing a metric line for every decision; default: none.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The signing keys, when the broker has any.
    pub fn kms(&self) -> Option<&Kms> {
        self.kms.as_ref()
    }

    /// The policy the broker runs.
    pub fn policy(&self) -> &LazyPolicy {
        &self.policy
    }

    /// The token verifier (tests read its key cache).
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Exchanges a GitLab ID token for credentials of `request.role`:
    /// verify → decide → plan → reserve a use (guarded grants) → assume role → audit.
    pub async fn credentials(
        &self,
        token: &Secret,
        request: &CredentialsRequest,
        request_id: &str,
    ) -> Result<Issued, BrokerError> {
        let started = Instant::now();
        let target = Target::Role(&request.role);
        let result = async {
            let verified = self.verify(token, request_id, target).await?;
            let mut token_use = TokenUse::NotCounted;
            let outcome = self.assume(&verified, request, &mut token_use).await;
            audited(request_id, &verified, target, &token_use, outcome)
        }
        .await;
        self.count(target, started, &result);
        result
    }

    /// Exchanges a GitLab ID token for a broker-signed token for `audience` (RFC 8693), issued
    /// as `issuer`: verify → decide → build claims → reserve a use (guarded grants) → sign →
    /// audit.
    pub async fn token(
        &self,
        token: &Secret,
        audience: &str,
        issuer: &str,
        request_id: &str,
    ) -> Result<IssuedToken, BrokerError> {
        let kms = self.kms.as_ref().ok_or(BrokerError::NoSigningKey)?;
        let started = Instant::now();
        let target = Target::Audience(audience);
        let result = async {
            let verified = self.verify(token, request_id, target).await?;
            let mut token_use = TokenUse::NotCounted;
            let outcome = self
                .mint(kms, &verified, audience, issuer, &mut token_use)
                .await;
            audited(request_id, &verified, target, &token_use, outcome)
        }
        .await;
        self.count(target, started, &result);
        result
    }

    /// Step 1: the token's signature and claims; a rejection is audited here, since no later
    /// step runs.
    async fn verify(
        &self,
        token: &Secret,
        request_id: &str,
        target: Target<'_>,
    ) -> Result<VerifiedToken, BrokerError> {
        self.verifier.verify(token).await.map_err(|error| {
            audit_rejected(request_id, target, &error);
            error.into()
        })
    }

    /// Steps 2–4 for credentials: the role that admits the caller, the STS input, the call.
    async fn assume(
        &self,
        verified: &VerifiedToken,
        request: &CredentialsRequest,
        token_use: &mut TokenUse,
    ) -> Result<(Issued, usize), BrokerError> {
        let admitted = tracing::info_span!("decide")
            .in_scope(|| self.policy.decide(&request.role, &verified.claims))
            .map_err(|denial| self.refuse(verified, denial))?;
        let role = admitted.grant;
        let cap = self.sts.session_cap().await;
        let input = plan(role, verified, request.duration_seconds, cap, now_secs())?;
        let reserved = self.reserve_use(&role.grant, verified, token_use).await?;
        let credentials = self.sts.assume_role(&input).await;
        let credentials = self
            .release_on_error(reserved, credentials, token_use)
            .await?;
        let issued = Issued {
            credentials,
            role: role.grant.name.clone(),
            session_name: input.session_name.as_str().to_owned(),
            duration_seconds: input.duration_seconds,
        };
        Ok((issued, admitted.rule))
    }

    /// Steps 2–4 for a token: the grant that admits the caller, its claims, KMS's signature.
    async fn mint(
        &self,
        kms: &Kms,
        verified: &VerifiedToken,
        audience: &str,
        issuer: &str,
        token_use: &mut TokenUse,
    ) -> Result<(IssuedToken, usize), BrokerError> {
        let admitted = tracing::info_span!("decide")
            .in_scope(|| self.policy.decide_token(audience, &verified.claims))
            .map_err(|denial| self.refuse(verified, denial))?;
        let now = now_secs();
        let claims = token_claims(admitted.grant, verified, issuer, now)?;
        let expires_in = claims["exp"].as_u64().unwrap_or(now).saturating_sub(now);
        let reserved = self
            .reserve_use(&admitted.grant.grant, verified, token_use)
            .await?;
        let token = kms.sign_jwt(&claims).await;
        let token = self.release_on_error(reserved, token, token_use).await?;
        Ok((IssuedToken { token, expires_in }, admitted.rule))
    }

    /// The replay guard: takes one of the grant's `token_uses` for this GitLab token, right
    /// before STS or KMS is called, so that concurrent exchanges of one token never issue more
    /// than the limit. `None` when the grant sets no limit. Fails closed: no table, or a table
    /// that cannot answer, is an error, never a skipped check. When the table's answer never
    /// came, the reservation may still have been applied, or be applied later still: it is given
    /// back at once and its id marked released (nothing else is touched), so the job's retry
    /// finds its use free.
    async fn reserve_use(
        &self,
        grant: &Grant,
        verified: &VerifiedToken,
        token_use: &mut TokenUse,
    ) -> Result<Option<(UseKey, UseId, u64)>, BrokerError> {
        let Some(limit) = grant.token_uses else {
            return Ok(None);
        };
        let table = self.replay.as_ref().ok_or(ReplayError::NotConfigured)?;
        let jti = verified
            .raw
            .get("jti")
            .and_then(serde_json::Value::as_str)
            .filter(|jti| !jti.is_empty())
            .ok_or_else(|| {
                denied_claim(
                    "jti",
                    "is missing, but this grant limits how often one token may be exchanged",
                )
            })?;
        let key = UseKey::new(grant.kind, &grant.name, verified.claims.issuer(), jti);
        let id = UseId::new();
        match table.reserve(&key, &id, limit, verified.expires_at).await {
            Ok(true) => {
                *token_use = TokenUse::Counted(id.clone());
                Ok(Some((key, id, verified.expires_at)))
            }
            Ok(false) => {
                *token_use = TokenUse::LimitReached;
                let grant = format!("{} {:?}", grant.kind, grant.name);
                Err(Refusal::Replayed { grant, limit }.into())
            }
            Err(error) => {
                *token_use = match table.release(&key, &id, verified.expires_at).await {
                    Ok(()) => TokenUse::GivenBack(id),
                    Err(_) => TokenUse::MaybeSpent(id),
                };
                Err(error.into())
            }
        }
    }

    /// Gives the reserved use back when STS or KMS issued nothing, so the job can retry a request
    /// that failed upstream. If the table cannot take it back, the use stays spent (logged): the
    /// guard errs towards refusing, never towards issuing more.
    async fn release_on_error<T, E>(
        &self,
        reserved: Option<(UseKey, UseId, u64)>,
        result: Result<T, E>,
        token_use: &mut TokenUse,
    ) -> Result<T, E> {
        if result.is_err()
            && let (Some((key, id, expires_at)), Some(table)) = (reserved, &self.replay)
        {
            *token_use = match table.release(&key, &id, expires_at).await {
                Ok(()) => TokenUse::GivenBack(id),
                Err(error) => {
                    tracing::warn!(%error, "a token use reserved for a failed exchange was not given back");
                    TokenUse::MaybeSpent(id)
                }
            };
        }
        result
    }

    /// The metric line of a request: its outcome, by the policy's name for what was asked
    /// (`unknown` when the policy has none, so callers cannot mint dimension values).
    fn count<T>(&self, target: Target<'_>, started: Instant, result: &Result<T, BrokerError>) {
        // Off outside Lambda unless a namespace is set: no policy lookup on the request path.
        if !self.metrics.is_on() {
            return;
        }
        // From the policy's index: naming a role must not compile its file (the token may not
        // even have been valid).
        let subject = match target {
            Target::Role(name) => {
                Subject::Role(self.policy.role_name(name).unwrap_or(metrics::UNKNOWN))
            }
            Target::Audience(audience) => Subject::Audience(
                self.policy
                    .token_audience(audience)
                    .unwrap_or(metrics::UNKNOWN),
            ),
        };
        self.metrics.decision(&metrics::Decision {
            outcome: outcome_of(result),
            subject,
            latency: started.elapsed(),
            sts_error: matches!(result, Err(BrokerError::Sts(_))),
            kms_error: matches!(result, Err(BrokerError::Kms(_))),
        });
    }

    /// A denial, told to the caller only if the policy admits their project somewhere.
    fn refuse(&self, verified: &VerifiedToken, denial: Denial) -> BrokerError {
        let disclosed = self.policy.admits_project(&verified.claims);
        Refusal::Policy { denial, disclosed }.into()
    }
}

/// The claims of a re-issued token: registered claims of the broker's own (its `sub` built from
/// immutable ids by the grant's template), GitLab's `iss` and `sub` as `gitlab_iss` and
/// `gitlab_sub` for relying parties that want them, and the grant's copied claims with their
/// GitLab types. Never outlives the GitLab token.
fn token_claims(
    grant: &TokenGrant,
    verified: &VerifiedToken,
    issuer: &str,
    now: u64,
) -> Result<serde_json::Value, BrokerError> {
    let sub = grant.subject.render(&verified.claims).map_err(|claim| {
        denied_claim(claim, "is missing but the token's subject is built from it")
    })?;
    let exp = (now + grant.max_ttl.as_secs()).min(verified.expires_at);
    if exp <= now {
        return Err(VerifyError::Expired.into());
    }
    let mut claims = serde_json::Map::new();
    for name in &grant.claims {
        if let Some(value) = verified.raw.get(name) {
            claims.insert(name.clone(), value.clone());
        }
    }
    let own = serde_json::json!({
        "iss": issuer, "sub": sub, "aud": grant.audience, "iat": now, "nbf": now, "exp": exp,
        "jti": uuid::Uuid::new_v4().to_string(),
        "gitlab_iss": verified.claims.issuer(),
    });
    claims.extend(own.as_object().expect("an object").clone());
    if let Some(gitlab_sub) = verified.raw.get("sub") {
        claims.insert("gitlab_sub".into(), gitlab_sub.clone());
    }
    Ok(serde_json::Value::Object(claims))
}

/// Builds the AssumeRole input for an allowed job. Refuses (403, naming the claim) any session
/// tag value STS would not take, rather than rewriting it. `cap` is STS's own limit on the
/// session (role chaining), below the role's `max_duration`.
#[tracing::instrument(skip_all)]
pub fn plan(
    role: &Role,
    verified: &VerifiedToken,
    requested: Option<u64>,
    cap: Option<Duration>,
    now: u64,
) -> Result<AssumeRole, BrokerError> {
    let claims = &verified.claims;
    let session_name = SessionName::for_job(claims.field("project_id"), claims.field("job_id"))
        .map_err(|_| {
            denied_claim(
                "job_id",
                "and project_id do not make a valid RoleSessionName",
            )
        })?;
    let source_identity = source_identity(claims)?;
    let max = cap.map_or(role.max_duration, |cap| cap.min(role.max_duration));
    let tags = role
        .session_tags
        .iter()
        .map(|claim| session_tag(claims, claim))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AssumeRole {
        role_arn: role.arn.clone(),
        session_name,
        source_identity,
        tags,
        policy: role.session_policy.clone(),
        duration_seconds: session_seconds(requested, max, verified.expires_at, now),
    })
}

/// The job's user as STS's SourceIdentity: `user_login` when STS takes it as it is, otherwise
/// `user_id=<id>`. GitLab logins never contain `=`, so the derived form cannot be claimed by a
/// user whose login merely looks like it; and a genuine token is never refused over its login
/// (null, absent, over 64 characters or outside STS's alphabet).
fn source_identity(claims: &crate::Claims) -> Result<SourceIdentity, BrokerError> {
    if let Some(login) = claims.get("user_login")
        && let Ok(identity) = SourceIdentity::parse(login)
    {
        return Ok(identity);
    }
    let user_id = claims
        .get("user_id")
        .filter(|id| !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            denied_claim(
                "user_id",
                "is missing or not a number, and `user_login` is not a legal SourceIdentity",
            )
        })?;
    SourceIdentity::parse(&format!("user_id={user_id}"))
        .map_err(|why| denied_claim("user_id", &why))
}

fn session_tag(claims: &crate::Claims, claim: &str) -> Result<SessionTag, BrokerError> {
    let value = claims
        .get(claim)
        .ok_or_else(|| denied_claim(claim, "is missing but the role passes it as a session tag"))?;
    let key = SessionTag::key_for_claim(claim)
        .map_err(|_| denied_claim(claim, "does not make a legal session tag key"))?;
    SessionTag::new(key, value).map_err(|why| denied_claim(claim, &why))
}

/// A refusal after a rule admitted the caller: their project is admitted, so they are told why.
fn denied_claim(claim: &str, why: &str) -> BrokerError {
    Refusal::Claim {
        claim: claim.to_owned(),
        why: why.to_owned(),
    }
    .into()
}

/// min(requested, role max, time left on the token), but never under STS's minimum.
fn session_seconds(requested: Option<u64>, role_max: Duration, expires_at: u64, now: u64) -> i32 {
    let role_max = role_max.as_secs();
    let left = expires_at.saturating_sub(now);
    let seconds = requested
        .unwrap_or(role_max)
        .min(role_max)
        .min(left)
        .max(SessionDuration::MIN.as_secs());
    i32::try_from(seconds).unwrap_or(i32::MAX)
}

/// How a request ended, as the `Outcome` metric dimension counts it.
fn outcome_of<T>(result: &Result<T, BrokerError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Allow,
        Err(BrokerError::AccessDenied(_)) => Outcome::Deny,
        Err(BrokerError::InvalidToken(error)) if !error.is_retryable() => Outcome::InvalidToken,
        Err(_) => Outcome::Error,
    }
}

/// What a request asked for, as the audit log names it.
#[derive(Clone, Copy)]
enum Target<'a> {
    Role(&'a str),
    Audience(&'a str),
}

impl<'a> Target<'a> {
    /// `(role, audience)`, one of them empty.
    fn names(self) -> (&'a str, &'a str) {
        match self {
            Target::Role(role) => (role, ""),
            Target::Audience(audience) => ("", audience),
        }
    }
}

fn audit_rejected(request_id: &str, target: Target<'_>, error: &VerifyError) {
    let (role, audience) = target.names();
    tracing::info!(
        target: "audit",
        request_id,
        role,
        audience,
        // The metric's names: a token the broker could not check (no keys) is its failure.
        outcome = if error.is_retryable() { "error" } else { "invalid_token" },
        reason = %error,
        "token rejected"
    );
}

/// Writes the audit line of a verified request and hands back its result without the rule.
fn audited<T>(
    request_id: &str,
    verified: &VerifiedToken,
    target: Target<'_>,
    token_use: &TokenUse,
    outcome: Result<(T, usize), BrokerError>,
) -> Result<T, BrokerError> {
    audit(
        request_id,
        verified,
        target,
        token_use,
        outcome.as_ref().map(|(_, rule)| *rule),
    );
    outcome.map(|(issued, _)| issued)
}

/// One line per decision: who asked (the verified job), for what, and what was decided.
fn audit(
    request_id: &str,
    verified: &VerifiedToken,
    target: Target<'_>,
    token_use: &TokenUse,
    outcome: Result<usize, &BrokerError>,
) {
    let claims = &verified.claims;
    let (result, rule, reason, claim) = match outcome {
        Ok(rule) => ("allow", Some(rule), String::new(), None),
        Err(BrokerError::AccessDenied(refusal)) => {
            ("deny", None, refusal.reason(), refusal.claim())
        }
        Err(error) => ("error", None, error.to_string(), None),
    };
    let (role, audience) = target.names();
    tracing::info!(
        target: "audit",
        request_id,
        issuer = claims.issuer(),
        project_id = claims.field("project_id"),
        project_path = claims.field("project_path"),
        r#ref = claims.field("ref"),
        ref_type = claims.field("ref_type"),
        pipeline_id = claims.field("pipeline_id"),
        job_id = claims.field("job_id"),
        role,
        audience,
        rule,
        outcome = result,
        reason = %reason,
        claim,
        token_use = token_use.state(),
        use_id = token_use.id(),
        "decision"
    );
}

/// What the replay guard did with this exchange's use, for the audit line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TokenUse {
    /// The grant sets no `token_uses` (or the request ended before the guard).
    NotCounted,
    /// Held by this exchange, which issued.
    Counted(UseId),
    /// Every use is held by earlier exchanges: refused.
    LimitReached,
    /// Reserved (or perhaps reserved) and given back: this exchange issued nothing.
    GivenBack(UseId),
    /// Perhaps reserved and not given back, since the table did not answer: it stays spent
    /// until the token expires (errs towards refusing).
    MaybeSpent(UseId),
}

impl TokenUse {
    fn state(&self) -> &'static str {
        match self {
            Self::NotCounted => "not_counted",
            Self::Counted(_) => "counted",
            Self::LimitReached => "limit_reached",
            Self::GivenBack(_) => "given_back",
            Self::MaybeSpent(_) => "maybe_spent",
        }
    }

    fn id(&self) -> Option<&str> {
        match self {
            Self::Counted(id) | Self::GivenBack(id) | Self::MaybeSpent(id) => Some(id.as_str()),
            Self::NotCounted | Self::LimitReached => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_length_is_the_smallest_limit_but_at_least_900s() {
        let hour = Duration::from_secs(3600);
        let now = 1_000_000;
        let cases = [
            (None, hour, now + 7200, 3600),
            (Some(1800), hour, now + 7200, 1800),
            (Some(7200), hour, now + 7200, 3600),
            (None, hour, now + 1200, 1200),
            (None, hour, now + 300, 900),
            (Some(100), hour, now + 7200, 900),
            (None, hour, now - 30, 900),
        ];
        for (requested, max, exp, expected) in cases {
            assert_eq!(
                session_seconds(requested, max, exp, now),
                expected,
                "{requested:?} {exp}"
            );
        }
    }
}
