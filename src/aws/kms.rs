//! The broker's signing keys in KMS: public keys (fetched once per process, then cached) as a
//! JWK set, and JWS signatures made by KMS `Sign` with the active key, which never leaves KMS.
//! Errors are reduced to their code, like STS's.

use std::sync::Arc;

use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{MessageType, SigningAlgorithmSpec};
use serde_json::Value;
use tokio::sync::OnceCell;

use super::jwk::{KeyAlgorithm, ecdsa_der_to_jose, spki_to_jwk, thumbprint};

/// Longest message KMS signs with `MessageType: RAW`.
pub const MAX_RAW_MESSAGE: usize = 4096;

/// A KMS failure, by error code only (KMS messages name key ARNs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KmsError {
    #[error("KMS is unavailable ({code})")]
    Unavailable { code: String },
    #[error("the signing key cannot be used ({0})")]
    BadKey(String),
}

/// One public key, ready to publish.
#[derive(Debug, Clone)]
pub struct PublicKey {
    /// The KMS key id or ARN it was configured as.
    pub key_id: String,
    pub algorithm: KeyAlgorithm,
    /// RFC 7638 thumbprint.
    pub kid: String,
    /// The public JWK with `kid`, `alg` and `use`.
    pub jwk: Value,
}

/// The active key and every key to publish (active first, then retired ones).
#[derive(Debug, Clone)]
pub struct KeySet {
    pub active: PublicKey,
    pub all: Vec<PublicKey>,
}

/// The KMS adapter.
pub struct Kms {
    client: aws_sdk_kms::Client,
    active: String,
    retired: Vec<String>,
    keys: OnceCell<Arc<KeySet>>,
}

impl Kms {
    /// An adapter for `active` (which signs) and `retired` (published only).
    pub fn new(config: &aws_config::SdkConfig, active: String, retired: Vec<String>) -> Self {
        Self {
            client: aws_sdk_kms::Client::new(config),
            active,
            retired,
            keys: OnceCell::new(),
        }
    }

    /// The public keys, fetched concurrently on first use and cached for the process. A failed
    /// fetch is not cached: the next caller tries again.
    pub async fn keys(&self) -> Result<Arc<KeySet>, KmsError> {
        self.keys
            .get_or_try_init(|| self.fetch_all())
            .await
            .cloned()
    }

    async fn fetch_all(&self) -> Result<Arc<KeySet>, KmsError> {
        let ids = std::iter::once(&self.active).chain(&self.retired);
        let keys = futures_util::future::try_join_all(ids.map(|id| self.public_key(id))).await?;
        tracing::info!(keys = keys.len(), "fetched KMS public keys");
        Ok(Arc::new(KeySet {
            active: keys[0].clone(),
            all: keys,
        }))
    }

    async fn public_key(&self, key_id: &str) -> Result<PublicKey, KmsError> {
        let output = self
            .client
            .get_public_key()
            .key_id(key_id)
            .send()
            .await
            .map_err(classify)?;
        let der = output
            .public_key
            .ok_or_else(|| KmsError::BadKey("no public key".into()))?;
        let (algorithm, mut jwk) = spki_to_jwk(der.as_ref()).map_err(KmsError::BadKey)?;
        let kid = thumbprint(&jwk);
        jwk["kid"] = Value::String(kid.clone());
        jwk["alg"] = Value::String(algorithm.jws().into());
        jwk["use"] = Value::String("sig".into());
        Ok(PublicKey {
            key_id: key_id.to_owned(),
            algorithm,
            kid,
            jwk,
        })
    }

    /// Signs a JWS signing input (`header.payload`) with `key` and returns the JWS signature.
    pub async fn sign(&self, key: &PublicKey, input: &[u8]) -> Result<Vec<u8>, KmsError> {
        if input.len() > MAX_RAW_MESSAGE {
            return Err(KmsError::BadKey(format!(
                "token over KMS's {MAX_RAW_MESSAGE}-byte message limit"
            )));
        }
        let algorithm = match key.algorithm {
            KeyAlgorithm::Rs256 => SigningAlgorithmSpec::RsassaPkcs1V15Sha256,
            KeyAlgorithm::Es256 => SigningAlgorithmSpec::EcdsaSha256,
        };
        let output = self
            .client
            .sign()
            .key_id(&key.key_id)
            .message(Blob::new(input))
            .message_type(MessageType::Raw)
            .signing_algorithm(algorithm)
            .send()
            .await
            .map_err(classify)?;
        let signature = output
            .signature
            .ok_or_else(|| KmsError::BadKey("no signature".into()))?
            .into_inner();
        match key.algorithm {
            KeyAlgorithm::Rs256 => Ok(signature),
            KeyAlgorithm::Es256 => ecdsa_der_to_jose(&signature)
                .map(|rs| rs.to_vec())
                .map_err(KmsError::BadKey),
        }
    }
}

/// Any KMS failure makes the token endpoint retryable-unavailable; only the code is kept.
fn classify<E: ProvideErrorMetadata>(error: SdkError<E, HttpResponse>) -> KmsError {
    let code = match &error {
        SdkError::ServiceError(service) => service.err().code().unwrap_or("Unknown").to_owned(),
        SdkError::TimeoutError(_) => "Timeout".into(),
        SdkError::DispatchFailure(_) => "ConnectionFailure".into(),
        SdkError::ResponseError(_) => "BadResponse".into(),
        _ => "RequestNotSent".into(),
    };
    KmsError::Unavailable { code }
}
