//! The replay guard's DynamoDB table: one item per GitLab token and grant, counting the uses that
//! issued something, shared by every instance of the broker.
//!
//! A use is reserved with one conditional `UpdateItem` (`ADD uses 1` unless `uses` has reached the
//! limit) just before STS or KMS is called, and released (`ADD uses -1`) when that call fails: so
//! however many requests race with one token, at most `limit` reach STS or KMS, and a job whose
//! request failed upstream can retry. Each item expires (DynamoDB TTL on `expires_at`) once the
//! token it counts can no longer be accepted, so the table never grows. Errors are reduced to
//! their code, like STS's.

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

    /// Takes one of `limit` uses of `key`; `false` when all are taken. `expires_at` is the
    /// token's `exp`.
    pub async fn reserve(
        &self,
        key: &UseKey,
        limit: u32,
        expires_at: u64,
    ) -> Result<bool, ReplayError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(key.id.clone()))
            .update_expression("ADD #uses :one SET #expires = :expires, #grant = :grant")
            .condition_expression("attribute_not_exists(#uses) OR #uses < :limit")
            .expression_attribute_names("#uses", "uses")
            .expression_attribute_names("#expires", TTL_ATTRIBUTE)
            .expression_attribute_names("#grant", "grant")
            .expression_attribute_values(":one", number(1))
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

    /// Gives back a use taken by [`ReplayTable::reserve`] that issued nothing. Never below zero:
    /// an item that expired meanwhile stays as it is.
    pub async fn release(&self, key: &UseKey) -> Result<(), ReplayError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY_ATTRIBUTE, AttributeValue::S(key.id.clone()))
            .update_expression("ADD #uses :minus_one")
            .condition_expression("#uses > :zero")
            .expression_attribute_names("#uses", "uses")
            .expression_attribute_values(":minus_one", AttributeValue::N("-1".into()))
            .expression_attribute_values(":zero", number(0))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if is_condition_failed(&error) => Ok(()),
            Err(error) => Err(classify(error)),
        }
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
