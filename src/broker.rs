//! The use case, as named steps: verify the GitLab token, decide from the policy, plan the STS
//! call (every input checked), assume the role, and write one audit line for the decision.

use std::sync::Arc;
use std::time::Duration;

use crate::aws::names::{SessionName, SessionTag, SourceIdentity};
use crate::aws::sts::{AssumeRole, Credentials, Sts, StsError};
use crate::oidc::{VerifiedToken, Verifier, VerifyError, now_secs};
use crate::policy::{Decision, Policy, Role};
use crate::secret::Secret;

/// STS's shortest session.
pub const MIN_SESSION_SECS: u64 = 900;

/// What a caller asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsRequest {
    /// Policy role name.
    pub role: String,
    /// Wanted session length; default and cap: the role's `max_duration`.
    pub duration_seconds: Option<u64>,
}

/// Credentials handed out, with what was decided.
#[derive(Debug, Clone)]
pub struct Issued {
    pub credentials: Credentials,
    pub role: String,
    pub session_name: String,
    pub duration_seconds: i32,
}

/// Why the exchange failed; `http` maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    InvalidToken(#[from] VerifyError),
    #[error("{0}")]
    AccessDenied(String),
    #[error(transparent)]
    Sts(#[from] StsError),
}

/// The exchange, holding the compiled policy and its adapters.
pub struct Broker {
    policy: Arc<Policy>,
    verifier: Verifier,
    sts: Sts,
}

impl Broker {
    /// A broker for `policy`.
    pub fn new(policy: Arc<Policy>, verifier: Verifier, sts: Sts) -> Self {
        Self {
            policy,
            verifier,
            sts,
        }
    }

    /// The token verifier, for start-up prefetching.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Exchanges a GitLab ID token for credentials of `request.role`.
    pub async fn credentials(
        &self,
        token: &Secret,
        request: &CredentialsRequest,
        request_id: &str,
    ) -> Result<Issued, BrokerError> {
        let verified = match self.verifier.verify(token).await {
            Ok(verified) => verified,
            Err(error) => {
                audit_rejected(request_id, &request.role, &error);
                return Err(error.into());
            }
        };
        let outcome = self.exchange(&verified, request).await;
        audit(request_id, &verified, &request.role, &outcome);
        outcome.map(|(issued, _)| issued)
    }

    async fn exchange(
        &self,
        verified: &VerifiedToken,
        request: &CredentialsRequest,
    ) -> Result<(Issued, usize), BrokerError> {
        let rule = match self.policy.decide(&request.role, &verified.claims) {
            Decision::Allow { rule } => rule,
            Decision::Deny(denial) => return Err(BrokerError::AccessDenied(denial.to_string())),
        };
        let role = self
            .policy
            .role(&request.role)
            .expect("an allowed role exists");
        let input = plan(role, verified, request.duration_seconds, now_secs())?;
        let credentials = self.sts.assume_role(&input).await?;
        let issued = Issued {
            credentials,
            role: role.name.clone(),
            session_name: input.session_name.as_str().to_owned(),
            duration_seconds: input.duration_seconds,
        };
        Ok((issued, rule))
    }
}

/// Builds the AssumeRole input for an allowed job. Refuses (403, naming the claim) any claim
/// value STS would not take, rather than rewriting it.
pub fn plan(
    role: &Role,
    verified: &VerifiedToken,
    requested: Option<u64>,
    now: u64,
) -> Result<AssumeRole, BrokerError> {
    let claims = &verified.claims;
    let session_name = SessionName::for_job(claims.field("project_id"), claims.field("job_id"))
        .map_err(BrokerError::AccessDenied)?;
    let login = claims
        .get("user_login")
        .ok_or_else(|| denied_claim("user_login", "is missing"))?;
    let source_identity =
        SourceIdentity::parse(login).map_err(|why| denied_claim("user_login", &why))?;
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
        duration_seconds: session_seconds(requested, role.max_duration, verified.expires_at, now),
    })
}

fn session_tag(claims: &crate::Claims, claim: &str) -> Result<SessionTag, BrokerError> {
    let value = claims
        .get(claim)
        .ok_or_else(|| denied_claim(claim, "is missing but the role passes it as a session tag"))?;
    let key = SessionTag::key_for_claim(claim).map_err(BrokerError::AccessDenied)?;
    SessionTag::new(key, value).map_err(|why| denied_claim(claim, &why))
}

fn denied_claim(claim: &str, why: &str) -> BrokerError {
    BrokerError::AccessDenied(format!("claim {claim:?} {why}"))
}

/// min(requested, role max, time left on the token), but never under STS's 900 s minimum.
pub fn session_seconds(
    requested: Option<u64>,
    role_max: Duration,
    expires_at: u64,
    now: u64,
) -> i32 {
    let role_max = role_max.as_secs();
    let left = expires_at.saturating_sub(now);
    let seconds = requested
        .unwrap_or(role_max)
        .min(role_max)
        .min(left)
        .max(MIN_SESSION_SECS);
    i32::try_from(seconds).unwrap_or(i32::MAX)
}

fn audit_rejected(request_id: &str, role: &str, error: &VerifyError) {
    tracing::info!(
        target: "audit",
        request_id,
        role,
        outcome = if error.is_retryable() { "unavailable" } else { "invalid_token" },
        reason = %error,
        "token rejected"
    );
}

fn audit(
    request_id: &str,
    verified: &VerifiedToken,
    role: &str,
    outcome: &Result<(Issued, usize), BrokerError>,
) {
    let claims = &verified.claims;
    let (result, rule, reason) = match outcome {
        Ok((_, rule)) => ("allow", Some(*rule), String::new()),
        Err(BrokerError::AccessDenied(why)) => ("deny", None, why.clone()),
        Err(error) => ("error", None, error.to_string()),
    };
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
        rule,
        outcome = result,
        reason = %reason,
        "credentials decision"
    );
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
