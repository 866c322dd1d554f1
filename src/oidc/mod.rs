//! Verifying GitLab ID tokens: shape, pinned algorithm, the issuer's own keys, exact `iss`, the
//! broker's `aud`, time claims with leeway, and the CI claims that tell a job's token from a
//! gitlab.com login token signed with the same keys. Knows nothing of roles or policy rules.

pub mod jwks;
pub mod key;
mod registered;
pub mod token;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::decode_header;
use serde_json::Value;

pub use jwks::{CachedKey, JwksCache, JwksSettings, KeyError};

use crate::policy::{Policy, REQUIRED_CI_CLAIMS};
use crate::{Claims, secret::Secret};

/// Why a token was refused. Descriptions are safe to return: they never echo the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Malformed(&'static str),
    #[error("the token's issuer is not trusted by this broker")]
    UntrustedIssuer,
    #[error("the token's algorithm is not accepted for its issuer")]
    Algorithm,
    #[error("the token header has an unsupported `crit` extension")]
    Critical,
    #[error("the token names no key (`kid`)")]
    NoKid,
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's `iat` is in the future")]
    IssuedInFuture,
    /// The expected audience is not told: a caller learns only that theirs is wrong.
    #[error("the token's `aud` does not include this broker's audience")]
    Audience,
    #[error("the token has no `{0}` claim: it is not a GitLab CI job token")]
    MissingClaim(String),
    #[error("the token's `{0}` claim has the wrong type or form")]
    BadClaim(String),
}

impl VerifyError {
    /// Whether the caller should retry later (the issuer's keys could not be fetched).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Key(KeyError::Unavailable))
    }
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    /// Its claims, for the policy.
    pub claims: Claims,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// Every claim as GitLab sent it (types kept), for copying into re-issued tokens.
    pub raw: serde_json::Map<String, Value>,
}

/// A token that passed [`Verifier::inspect`]: well-formed, from a trusted issuer, with a pinned
/// algorithm and a `kid`. Nothing about it is verified yet.
pub struct Unverified<'a> {
    token: &'a str,
    algorithm: jsonwebtoken::Algorithm,
    /// The key id the header names.
    pub kid: String,
    /// The trusted issuer's URL, as the policy spells it (the token's `iss`).
    pub issuer: &'a str,
    payload: token::Payload,
}

/// Verifies tokens against the policy's issuers and audience.
pub struct Verifier {
    policy: Arc<Policy>,
    leeway: Duration,
    keys: JwksCache,
}

impl Verifier {
    /// A verifier for `policy`'s issuers and audience; `leeway` applies to `exp`, `nbf` and
    /// `iat`.
    pub fn new(policy: impl Into<Arc<Policy>>, leeway: Duration, settings: JwksSettings) -> Self {
        let policy = policy.into();
        Self {
            keys: JwksCache::new(&policy.issuers, settings),
            policy,
            leeway,
        }
    }

    /// The verifier counting failed JWKS fetches in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.keys.set_metrics(metrics);
        self
    }

    /// Fetches every issuer's keys now; see [`JwksCache::prefetch`].
    pub async fn prefetch(&self) {
        self.keys.prefetch().await;
    }

    /// Verifies `token` and returns its claims: [`Self::inspect`], the issuer's key for its
    /// `kid` (from the cache, or fetched from the policy's `jwks_url`), [`Self::verify_with`].
    #[tracing::instrument(skip_all)]
    pub async fn verify(&self, token: &Secret) -> Result<VerifiedToken, VerifyError> {
        let unverified = self.inspect(token.expose())?;
        let key = self.keys.key(unverified.issuer, &unverified.kid).await?;
        self.verify_with(unverified, &key)
    }

    /// The checks before a key is needed: the token's shape and header, a payload that parses,
    /// a trusted issuer, one of its pinned algorithms, no `crit`, a `kid`. Public, with
    /// [`Self::verify_with`], so that the fuzz target runs the very path `verify` runs.
    pub fn inspect<'a>(&'a self, token: &'a str) -> Result<Unverified<'a>, VerifyError> {
        token::check_shape(token).map_err(VerifyError::Malformed)?;
        token::check_header(token).map_err(VerifyError::Malformed)?;
        let header = decode_header(token)
            .map_err(|_| VerifyError::Malformed("the token header is not a JWS header"))?;
        let payload = token::Payload::parse(token).map_err(VerifyError::Malformed)?;
        let issuer = self
            .policy
            .issuer(payload.issuer())
            .ok_or(VerifyError::UntrustedIssuer)?;
        if !issuer
            .algorithms
            .iter()
            .any(|a| jwt_algorithm(*a) == header.alg)
        {
            return Err(VerifyError::Algorithm);
        }
        // jku, x5u, jwk and x5c are ignored on purpose: keys come only from the policy's jwks_url.
        if header.crit.is_some() {
            return Err(VerifyError::Critical);
        }
        let kid = header
            .kid
            .filter(|k| !k.is_empty() && k.len() <= token::MAX_KID_CHARS)
            .ok_or(VerifyError::NoKid)?;
        Ok(Unverified {
            token,
            algorithm: header.alg,
            kid,
            issuer: &issuer.url,
            payload,
        })
    }

    /// The rest of [`Self::verify`], given `key`, the issuer's key for the token's `kid`: the
    /// key's own `alg`, the signature, then the claims.
    pub fn verify_with(
        &self,
        unverified: Unverified<'_>,
        key: &CachedKey,
    ) -> Result<VerifiedToken, VerifyError> {
        let Unverified {
            token,
            algorithm,
            issuer,
            payload,
            ..
        } = unverified;
        // A JWK that names its `alg` is bound to it (RFC 7517 §4.4): an RS256 key must not verify
        // a PS256 token just because both are pinned for the issuer.
        if key.algorithm.is_some_and(|alg| alg != algorithm) {
            return Err(VerifyError::Algorithm);
        }
        let (signing_input, signature) = token.rsplit_once('.').ok_or(VerifyError::Signature)?;
        key.key
            .verify(algorithm, signing_input.as_bytes(), signature)?;
        let claims = payload.into_claims().ok_or(VerifyError::Malformed(
            "the token payload is not a JSON object without duplicate claims",
        ))?;
        registered::check(
            &claims,
            issuer,
            &self.policy.audience,
            self.leeway.as_secs(),
        )?;
        self.check_claims(issuer, claims)
    }

    /// Checks beyond the registered ones: types of `iss`, `exp` and `nbf`, `iat`, and CI claims.
    fn check_claims(
        &self,
        issuer: &str,
        raw: serde_json::Map<String, Value>,
    ) -> Result<VerifiedToken, VerifyError> {
        let object = &raw;
        if !matches!(object.get("iss"), Some(Value::String(_))) {
            return Err(VerifyError::BadClaim("iss".into()));
        }
        let expires_at =
            timestamp(object, "exp")?.ok_or_else(|| VerifyError::MissingClaim("exp".into()))?;
        let issued_at =
            timestamp(object, "iat")?.ok_or_else(|| VerifyError::MissingClaim("iat".into()))?;
        let not_before = timestamp(object, "nbf")?;
        let now = now_secs();
        if issued_at > now + self.leeway.as_secs() {
            return Err(VerifyError::IssuedInFuture);
        }
        if issued_at >= expires_at || not_before.is_some_and(|nbf| nbf >= expires_at) {
            return Err(VerifyError::BadClaim("exp".into()));
        }
        for claim in REQUIRED_CI_CLAIMS {
            check_ci_claim(object, claim)?;
        }
        Ok(VerifiedToken {
            claims: Claims::from_json(issuer, object),
            expires_at,
            raw,
        })
    }
}

/// A NumericDate claim: a non-negative integer, if present.
fn timestamp(
    object: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<u64>, VerifyError> {
    match object.get(name) {
        None => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| VerifyError::BadClaim(name.into())),
    }
}

/// CI claims must be non-empty strings, and GitLab's ids decimal digits.
fn check_ci_claim(object: &serde_json::Map<String, Value>, claim: &str) -> Result<(), VerifyError> {
    let value = match object.get(claim) {
        None => return Err(VerifyError::MissingClaim(claim.into())),
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(_) => return Err(VerifyError::BadClaim(claim.into())),
    };
    let is_id = claim.ends_with("_id");
    if is_id && !(value.len() <= 20 && value.bytes().all(|b| b.is_ascii_digit())) {
        return Err(VerifyError::BadClaim(claim.into()));
    }
    Ok(())
}

/// The jsonwebtoken name of a policy algorithm.
pub(crate) fn jwt_algorithm(algorithm: crate::policy::Algorithm) -> jsonwebtoken::Algorithm {
    use crate::policy::Algorithm as A;
    use jsonwebtoken::Algorithm as J;
    match algorithm {
        A::RS256 => J::RS256,
        A::RS384 => J::RS384,
        A::RS512 => J::RS512,
        A::PS256 => J::PS256,
        A::PS384 => J::PS384,
        A::PS512 => J::PS512,
        A::ES256 => J::ES256,
        A::ES384 => J::ES384,
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
