//! The replay guard's DynamoDB table: one item per GitLab token and grant, holding the ids of
//! the uses that may issue something, shared by every instance of the broker.
//!
//! Each exchange draws a fresh use id. A use is reserved with one conditional `UpdateItem` that
//! adds the id to the item's set `holders` unless the set already holds `limit` ids, and released
//! (the id deleted from the set) when STS or KMS issued nothing. Both writes are idempotent: the
//! SDK may retry an attempt whose answer was late or lost after DynamoDB applied it, and a
//! reservation applied twice is still one id (its retry succeeds, since the set holds it), a
//! release applied twice removes nothing else. So however many requests race with one token,
//! and whatever DynamoDB's answers do, at most `limit` ids are ever held at once and at most
//! `limit` exchanges issue anything. Each item expires (DynamoDB TTL on `expires_at`) once the
//! token it counts can no longer be accepted, so the table never grows. Errors are reduced to
//! their code, like STS's.
//!
//! Items written by earlier versions counted with a number `uses`; one that counted a use still
//! refuses (the guard errs towards refusing) until it expires with its token.

use std::time::Duration;

use aws_lc_rs::digest;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;

use crate::policy::GrantKind;

/// The table's key attribute (a string).
pub const KEY_ATTRIBUTE: &str = "id";
/// The table's TTL attribute: seconds since the epoch.
pub const TTL_ATTRIBUTE: &str = "expires_at";

/// The set of use ids an item holds (a DynamoDB string set).
pub const HOLDERS_ATTRIBUTE: &str = "holders";
/// The set of use ids given back: a reservation of one of them that lands late takes nothing.
pub const RELEASED_ATTRIBUTE: &str = "released";
/// What items of earlier versions counted uses with (a number).
const LEGACY_USES_ATTRIBUTE: &str = "uses";

/// One exchange's claim on a use: random, so that no two exchanges (on any instance) share one,
/// and a retried write of the same exchange is recognised as the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UseId(String);

impl UseId {
    /// A fresh id (a v4 UUID).
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// The id as stored and audited.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for UseId {
    fn default() -> Self {
        Self::new()
    }
}

/// Why the table could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// DynamoDB was throttled, failed or could not be reached: the guard cannot tell whether
    /// this use is allowed, so the exchange fails closed and the caller may retry.
    #[error("the replay guard's table is unavailable ({code})")]
    Unavailable {
        /// The DynamoDB error code, or what kept the request from an answer.
        code: String,
    },
    /// DynamoDB refused the call (no such table, no permission, a key schema other than the
    /// template's): the exchange fails closed, and retrying cannot help until someone fixes it.
    #[error("the replay guard's table refused the update ({code})")]
    Refused {
        /// The DynamoDB error code.
        code: String,
    },
    /// The policy limits token uses but this broker has no table.
    #[error("the policy limits token uses, but no replay table is configured")]
    NotConfigured,
}

/// Which counter a use goes to: one GitLab token (issuer and `jti`) for one grant. Hashed, so that
/// no caller-chosen `jti` can exceed DynamoDB's key size or show up in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UseKey {
    id: String,
    grant: String,
}

impl UseKey {
    /// The counter of the token (`issuer`, `jti`) for the grant `kind`/`name`.
    pub fn new(kind: GrantKind, name: &str, issuer: &str, jti: &str) -> Self {
        // A JSON array cannot be confused with another one: no issuer or jti can shift a
        // boundary, as it could in a `:`-joined string.
        let parts = serde_json::json!([kind.to_string(), name, issuer, jti]).to_string();
        let hash = digest::digest(&digest::SHA256, parts.as_bytes());
        Self {
            id: hash.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
            grant: format!("{kind}:{name}"),
        }
    }

    /// The item's key.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The table, behind its SDK client.
#[derive(Debug, Clone)]
pub struct ReplayTable {
    client: aws_sdk_dynamodb::Client,
    table: String,
    margin: Duration,
}

impl ReplayTable {
    /// The table `table`; each item lives until its token's `exp` plus `margin` (the broker's
    /// clock leeway, for as long as the token is accepted).
    pub fn new(config: &aws_config::SdkConfig, table: String, margin: Duration) -> Self {
        // Its own short timeouts: the guard's two calls share the function's 15 s with the JWKS
        // fetch (3 s) and STS (8 s), and a use reserved before a Lambda timeout stays spent. The
        // attempt timeout bounds the connect too (the shared connector's own is 2 s).
        let config = aws_sdk_dynamodb::config::Builder::from(&super::client_config(config))
            // Retries, set here rather than taken from wherever the config came from: both
            // writes are idempotent, so a retry of an attempt that was applied but answered late
            // is safe, and it is what keeps a job's first use from failing for nothing. A short
            // first backoff keeps a retry within the operation's 2 s.
            .retry_config(
                aws_config::retry::RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_initial_backoff(Duration::from_millis(50)),
            )
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_secs(1))
                    .operation_timeout(Duration::from_secs(2))
                    .build(),
            )
            .build();
        Self {
            client: aws_sdk_dynamodb::Client::from_conf(config),
            table,
            margin,
        }
    }

    /// Takes one of `limit` uses of `key` for the use `id` (fresh per exchange); `false` when
    /// all are taken by other uses. `expires_at` is the token's `exp`. Idempotent: applied again
    /// (an SDK retry), it finds `id` held and succeeds without taking another use.
    pub async fn reserve(
        &self,
        key: &UseKey,
        id: &UseId,
        limit: u32,
        expires_at: u64,
    ) -> Result<bool, ReplayError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(key.id.clone()))
            .update_expression("ADD #holders :me SET #expires = :expires, #grant = :grant")
            .condition_expression(
                "(attribute_not_exists(#uses) OR #uses = :zero) AND \
                 (attribute_not_exists(#released) OR NOT contains(#released, :id)) AND \
                 (attribute_not_exists(#holders) OR size(#holders) < :limit OR contains(#holders, :id))",
            )
            .expression_attribute_names("#holders", HOLDERS_ATTRIBUTE)
            .expression_attribute_names("#released", RELEASED_ATTRIBUTE)
            .expression_attribute_names("#uses", LEGACY_USES_ATTRIBUTE)
            .expression_attribute_names("#expires", TTL_ATTRIBUTE)
            .expression_attribute_names("#grant", "grant")
            .expression_attribute_values(":me", AttributeValue::Ss(vec![id.0.clone()]))
            .expression_attribute_values(":id", AttributeValue::S(id.0.clone()))
            .expression_attribute_values(":zero", number(0))
            .expression_attribute_values(":limit", number(u64::from(limit)))
            .expression_attribute_values(
                ":expires",
                number(expires_at.saturating_add(self.margin.as_secs())),
            )
            .expression_attribute_values(":grant", AttributeValue::S(key.grant.clone()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(error) if is_condition_failed(&error) => Ok(false),
            Err(error) => Err(classify(error)),
        }
    }

    /// Gives back the use `id` took by [`ReplayTable::reserve`] (it issued nothing, or its
    /// reservation's answer never came), and marks `id` released, so that a reservation of it
    /// that DynamoDB applies only now (an attempt the SDK gave up on) finds the mark and takes
    /// nothing. Idempotent, and only ever touches `id`. The item gets the token's expiry if it
    /// has none yet (a release that arrives before its reservation), so it still expires.
    pub async fn release(
        &self,
        key: &UseKey,
        id: &UseId,
        expires_at: u64,
    ) -> Result<(), ReplayError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(key.id.clone()))
            .update_expression(
                "DELETE #holders :me ADD #released :me SET #expires = if_not_exists(#expires, :expires)",
            )
            .expression_attribute_names("#holders", HOLDERS_ATTRIBUTE)
            .expression_attribute_names("#released", RELEASED_ATTRIBUTE)
            .expression_attribute_names("#expires", TTL_ATTRIBUTE)
            .expression_attribute_values(":me", AttributeValue::Ss(vec![id.0.clone()]))
            .expression_attribute_values(
                ":expires",
                number(expires_at.saturating_add(self.margin.as_secs())),
            )
            .send()
            .await;
        result.map(|_| ()).map_err(classify)
    }
}

fn number(n: u64) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

fn is_condition_failed<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> bool {
    matches!(error, SdkError::ServiceError(service)
        if service.err().code() == Some("ConditionalCheckFailedException"))
}

/// DynamoDB codes worth retrying: capacity and request quotas, and its own transient trouble.
const RETRYABLE_CODES: [&str; 5] = [
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
];

fn classify<E: ProvideErrorMetadata>(error: SdkError<E, HttpResponse>) -> ReplayError {
    let super::Failure { code, retryable } = super::failure(&error, &RETRYABLE_CODES);
    if retryable {
        ReplayError::Unavailable { code }
    } else {
        ReplayError::Refused { code }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_grant_issuer_and_jti_and_never_by_where_a_boundary_falls() {
        let key = |kind, name, iss, jti| UseKey::new(kind, name, iss, jti).id;
        let base = key(GrantKind::Role, "deploy", "https://a.example", "j1");
        assert_eq!(
            base,
            key(GrantKind::Role, "deploy", "https://a.example", "j1")
        );
        assert_eq!(base.len(), 64);
        for other in [
            key(GrantKind::Token, "deploy", "https://a.example", "j1"),
            key(GrantKind::Role, "read", "https://a.example", "j1"),
            key(GrantKind::Role, "deploy", "https://b.example", "j1"),
            key(GrantKind::Role, "deploy", "https://a.example", "j2"),
            key(GrantKind::Role, "deploy", "https://a.example:j1", ""),
        ] {
            assert_ne!(base, other);
        }
    }
}
