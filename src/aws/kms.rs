//! The broker's signing keys in KMS: public keys (fetched once per process, then cached) as a
//! JWK set, and compact JWS tokens signed by KMS `Sign` with the active key, which never leaves
//! KMS.
//! Errors are reduced to their code, like STS's, and split into retryable and not.

use std::sync::Arc;

use aws_lc_rs::digest;
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{MessageType, SigningAlgorithmSpec};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::jwk::{KeyAlgorithm, ecdsa_der_to_jose, spki_to_jwk, thumbprint};
use crate::oidc::key::VerifyingKey;
use crate::secret::Secret;

/// A KMS failure, by error code only (KMS messages name key ARNs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KmsError {
    /// Throttling, KMS's transient failures, 5xx, timeouts, connection trouble: the caller may
    /// retry.
    #[error("KMS is unavailable ({code})")]
    Unavailable { code: String },
    /// KMS refused the call (key disabled or deleted, no permission, wrong key usage …) or gave
    /// an unusable answer: retrying cannot help until someone fixes the key or its policy.
    #[error("KMS cannot sign with the configured key ({code})")]
    Refused { code: String },
}

/// KMS error codes worth retrying: request quotas, and KMS's or its key stores' transient trouble.
const RETRYABLE_CODES: [&str; 4] = [
    "ThrottlingException",
    "KMSInternalException",
    "DependencyTimeoutException",
    "KeyUnavailableException",
];

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
    /// The JWK parsed as relying parties will use it, to check each signature before it leaves.
    verifier: Arc<VerifyingKey>,
}

/// The active key and every key to publish (active first, then retired ones).
#[derive(Debug, Clone)]
pub struct KeySet {
    pub active: PublicKey,
    pub all: Vec<PublicKey>,
}

/// The signing key (and retired keys still published) behind one KMS client; holds the public
/// keys once fetched.
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
            client: aws_sdk_kms::Client::new(&super::client_config(config)),
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
            .ok_or_else(|| refused("MissingPublicKey"))?;
        let (algorithm, mut jwk) = spki_to_jwk(der.as_ref()).map_err(|reason| {
            tracing::warn!(%reason, "the KMS public key is not an RSA or P-256 key");
            refused("UnsupportedPublicKey")
        })?;
        let kid = thumbprint(&jwk);
        jwk["kid"] = Value::String(kid.clone());
        jwk["alg"] = Value::String(algorithm.jws().into());
        jwk["use"] = Value::String("sig".into());
        let verifier = serde_json::from_value::<Jwk>(jwk.clone())
            .ok()
            .and_then(|parsed| VerifyingKey::from_jwk(&parsed, &[algorithm.jwt()]))
            .ok_or_else(|| {
                tracing::warn!("the KMS public key cannot verify signatures");
                refused("UnsupportedPublicKey")
            })?;
        Ok(PublicKey {
            key_id: key_id.to_owned(),
            algorithm,
            kid,
            jwk,
            verifier: Arc::new(verifier),
        })
    }

    /// `claims` as a compact JWS (RFC 7515 §7.1) signed by the active key: a header of the
    /// key's `alg`, `typ: JWT` and its `kid`, then `header.payload.signature`, each base64url.
    #[tracing::instrument(skip_all)]
    pub async fn sign_jwt(&self, claims: &Value) -> Result<Secret, KmsError> {
        let keys = self.keys().await?;
        let key = &keys.active;
        let header = json!({"alg": key.algorithm.jws(), "typ": "JWT", "kid": key.kid});
        let input = format!("{}.{}", base64url_json(&header), base64url_json(claims));
        let signature = URL_SAFE_NO_PAD.encode(self.sign(key, input.as_bytes()).await?);
        // A token that does not verify against the published key must not be issued: KMS
        // signing with another key than the one fetched at start (an alias moved since) or an
        // answer mangled on the way would otherwise go out as a token nobody can verify.
        if key
            .verifier
            .verify(key.algorithm.jwt(), input.as_bytes(), &signature)
            .is_err()
        {
            tracing::error!(
                kid = %key.kid,
                "KMS's signature does not verify with the published key; no token issued"
            );
            return Err(refused("SignatureMismatch"));
        }
        Ok(Secret::new(format!("{input}.{signature}")))
    }

    /// Signs a JWS signing input (`header.payload`) with `key` and returns the JWS signature.
    /// KMS signs a `RAW` message of at most 4 KiB but a digest of anything, so the input is
    /// hashed here: a token's size never matters to KMS.
    async fn sign(&self, key: &PublicKey, input: &[u8]) -> Result<Vec<u8>, KmsError> {
        let digest = digest::digest(&digest::SHA256, input);
        let output = self
            .client
            .sign()
            .key_id(&key.key_id)
            .message(Blob::new(digest.as_ref()))
            .message_type(MessageType::Digest)
            .signing_algorithm(signing_algorithm(key.algorithm))
            .send()
            .await
            .map_err(classify)?;
        let signature = output
            .signature
            .ok_or_else(|| refused("MissingSignature"))?
            .into_inner();
        jws_signature(key.algorithm, signature)
    }
}

fn base64url_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// KMS's name for the algorithm; both hash with SHA-256, the digest [`Kms::sign`] sends.
fn signing_algorithm(algorithm: KeyAlgorithm) -> SigningAlgorithmSpec {
    match algorithm {
        KeyAlgorithm::Rs256 => SigningAlgorithmSpec::RsassaPkcs1V15Sha256,
        KeyAlgorithm::Es256 => SigningAlgorithmSpec::EcdsaSha256,
    }
}

/// KMS's signature as JWS wants it: RSA's as is, ECDSA's DER as the fixed-width `r‖s`.
fn jws_signature(algorithm: KeyAlgorithm, signature: Vec<u8>) -> Result<Vec<u8>, KmsError> {
    match algorithm {
        KeyAlgorithm::Rs256 => Ok(signature),
        KeyAlgorithm::Es256 => ecdsa_der_to_jose(&signature)
            .map(|rs| rs.to_vec())
            .map_err(|_| refused("MalformedSignature")),
    }
}

fn refused(code: &str) -> KmsError {
    KmsError::Refused {
        code: code.to_owned(),
    }
}

fn classify<E: ProvideErrorMetadata>(error: SdkError<E, HttpResponse>) -> KmsError {
    let super::Failure { code, retryable } = super::failure(&error, &RETRYABLE_CODES);
    if retryable {
        KmsError::Unavailable { code }
    } else {
        KmsError::Refused { code }
    }
}
