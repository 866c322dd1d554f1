//! A local KMS stand-in for the broker's signing keys: `Sign` and `GetPublicKey` over KMS's JSON
//! protocol, with real RSA-2048 and P-256 keys generated here. moto 5.2 ignores `MessageType:
//! DIGEST` and hashes the digest again, so its signatures over a digest do not verify; this one
//! signs a digest as KMS does (and hashes a `RAW` message first, also as KMS does). It records
//! every Sign request and answers with any KMS error when told to, so tests can check what the
//! broker sent and how it classifies KMS's errors, through the real SDK.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use aws_lc_rs::digest::{self, Digest, SHA256};
use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::serve::{self, Handler};

/// KMS's longest `RAW` message; a digest has no such limit on what it stands for.
const MAX_RAW_MESSAGE: usize = 4096;
/// The account the stand-in's key ARNs name.
const ARN_PREFIX: &str = "arn:aws:kms:us-east-1:111122223333:key/";
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// The kinds of key the stand-in makes; each signs with SHA-256 only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpec {
    /// `RSA_2048`, signing `RSASSA_PKCS1_V1_5_SHA_256`.
    Rsa2048,
    /// `ECC_NIST_P256`, signing `ECDSA_SHA_256` (DER signatures, as KMS returns them).
    EccNistP256,
}

/// How the stand-in answers. Default: [`KmsMode::Up`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsMode {
    /// As KMS does.
    Up,
    /// Every request fails with KMS error `code` and HTTP `status`: 400 for KMS's client errors
    /// (`DisabledException`, `ThrottlingException`, …), 500 for `KMSInternalException`.
    Fail { status: u16, code: &'static str },
    /// `Sign` answers 200 without a `Signature` (a broken or hostile upstream).
    NoSignature,
    /// `Sign` answers 200 with a `Signature` that is not one (random-looking bytes).
    GarbageSignature,
}

/// What one Sign request asked for (recorded before any failure is answered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignRequest {
    /// `KeyId` as sent (id or ARN).
    pub key_id: String,
    /// `MessageType` as sent; KMS takes a missing one as `RAW`.
    pub message_type: Option<String>,
    /// Length of the decoded `Message`.
    pub message_len: usize,
    pub signing_algorithm: Option<String>,
}

/// A running KMS stand-in; its server lives as long as the runtime it was started on.
pub struct LocalKms {
    url: String,
    shared: Arc<Shared>,
}

struct Shared {
    keys: RwLock<HashMap<String, Arc<Key>>>,
    mode: RwLock<KmsMode>,
    signs: Mutex<Vec<SignRequest>>,
}

impl LocalKms {
    /// Starts on a free loopback port, with no keys.
    pub async fn start() -> Self {
        let (listener, url) = serve::bind("127.0.0.1:0").await;
        let shared = Arc::new(Shared {
            keys: RwLock::default(),
            mode: RwLock::new(KmsMode::Up),
            signs: Mutex::default(),
        });
        serve::spawn(listener, shared.clone());
        Self { url, shared }
    }

    /// The endpoint URL, for the SDK's `endpoint_url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Generates a signing key of `spec`; returns its key id (its ARN works as well).
    pub fn create_key(&self, spec: KeySpec) -> String {
        let mut keys = self.shared.keys.write().expect("keys lock");
        let id = format!("00000000-0000-4000-8000-{:012}", keys.len() + 1);
        keys.insert(id.clone(), Arc::new(Key::generate(spec)));
        id
    }

    /// Points `alias` (`alias/…`) at key `target`, creating or moving it, as KMS's `CreateAlias`
    /// and `UpdateAlias` do: from then on `Sign` and `GetPublicKey` for the alias use `target`.
    pub fn set_alias(&self, alias: &str, target: &str) {
        let mut keys = self.shared.keys.write().expect("keys lock");
        let key = keys.get(target).expect("an existing key").clone();
        keys.insert(alias.to_owned(), key);
    }

    /// Changes how it answers from now on.
    pub fn set_mode(&self, mode: KmsMode) {
        *self.shared.mode.write().expect("mode lock") = mode;
    }

    /// Every Sign request received so far, oldest first.
    pub fn sign_requests(&self) -> Vec<SignRequest> {
        self.shared.signs.lock().expect("signs lock").clone()
    }
}

/// A key pair; KMS would keep it in an HSM.
enum Key {
    Rsa(RsaKeyPair),
    P256(EcdsaKeyPair),
}

impl Key {
    fn generate(spec: KeySpec) -> Self {
        match spec {
            KeySpec::Rsa2048 => Self::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA")),
            KeySpec::EccNistP256 => {
                Self::P256(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).expect("P-256"))
            }
        }
    }

    /// `KeySpec` and the one `SigningAlgorithm` the stand-in signs with for it.
    fn names(&self) -> (&'static str, &'static str) {
        match self {
            Self::Rsa(_) => ("RSA_2048", "RSASSA_PKCS1_V1_5_SHA_256"),
            Self::P256(_) => ("ECC_NIST_P256", "ECDSA_SHA_256"),
        }
    }

    /// The public key as DER SubjectPublicKeyInfo, as `GetPublicKey` returns it.
    fn spki(&self) -> Vec<u8> {
        let der: Result<PublicKeyX509Der, _> = match self {
            Self::Rsa(pair) => pair.public_key().as_der(),
            Self::P256(pair) => pair.public_key().as_der(),
        };
        der.expect("public key DER").as_ref().to_vec()
    }

    fn sign(&self, digest: &Digest) -> Vec<u8> {
        match self {
            Self::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign_digest(&RSA_PKCS1_SHA256, digest, &mut signature)
                    .expect("RSA signing");
                signature
            }
            Self::P256(pair) => pair
                .sign_digest(digest)
                .expect("ECDSA signing")
                .as_ref()
                .to_vec(),
        }
    }
}

/// A KMS error answer.
struct Fault {
    status: u16,
    code: &'static str,
}

/// A 400 with `code`, the status of every KMS client error.
fn refuse(code: &'static str) -> Fault {
    Fault { status: 400, code }
}

impl Handler for Shared {
    async fn respond(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        match self.answer(request).await {
            Ok(body) => serve::response(StatusCode::OK, CONTENT_TYPE, body.to_string()),
            Err(fault) => error(&fault),
        }
    }
}

impl Shared {
    async fn answer(&self, request: Request<Incoming>) -> Result<Value, Fault> {
        let target = request
            .headers()
            .get("x-amz-target")
            .and_then(|t| t.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let input = read_json(request).await?;
        if target == "TrentService.Sign" {
            self.record(&input);
        }
        if let KmsMode::Fail { status, code } = *self.mode.read().expect("mode lock") {
            return Err(Fault { status, code });
        }
        match target.as_str() {
            "TrentService.Sign" => self.sign(&input),
            "TrentService.GetPublicKey" => self.public_key(&input),
            _ => Err(refuse("UnknownOperationException")),
        }
    }

    fn record(&self, input: &Value) {
        let text = |name: &str| input[name].as_str().map(str::to_owned);
        let request = SignRequest {
            key_id: text("KeyId").unwrap_or_default(),
            message_type: text("MessageType"),
            message_len: blob(input, "Message").map_or(0, |m| m.len()),
            signing_algorithm: text("SigningAlgorithm"),
        };
        self.signs.lock().expect("signs lock").push(request);
    }

    /// The key `KeyId` names, by id or ARN, and its ARN.
    fn key(&self, input: &Value) -> Result<(String, Arc<Key>), Fault> {
        let named = input["KeyId"].as_str().unwrap_or_default();
        let id = named.strip_prefix(ARN_PREFIX).unwrap_or(named);
        let keys = self.keys.read().expect("keys lock");
        let key = keys.get(id).ok_or(refuse("NotFoundException"))?;
        Ok((format!("{ARN_PREFIX}{id}"), key.clone()))
    }

    fn public_key(&self, input: &Value) -> Result<Value, Fault> {
        let (arn, key) = self.key(input)?;
        let (spec, algorithm) = key.names();
        Ok(json!({
            "KeyId": arn,
            "PublicKey": STANDARD.encode(key.spki()),
            "KeySpec": spec,
            "CustomerMasterKeySpec": spec,
            "KeyUsage": "SIGN_VERIFY",
            "SigningAlgorithms": [algorithm],
        }))
    }

    fn sign(&self, input: &Value) -> Result<Value, Fault> {
        let (arn, key) = self.key(input)?;
        let (_, algorithm) = key.names();
        if input["SigningAlgorithm"] != algorithm {
            return Err(refuse("InvalidKeyUsageException"));
        }
        let message = blob(input, "Message").ok_or(refuse("ValidationException"))?;
        let digest = match input["MessageType"].as_str().unwrap_or("RAW") {
            "RAW" if message.len() <= MAX_RAW_MESSAGE => digest::digest(&SHA256, &message),
            "DIGEST" => Digest::import_less_safe(&message, &SHA256)
                .map_err(|_| refuse("ValidationException"))?,
            _ => return Err(refuse("ValidationException")),
        };
        let signature = match *self.mode.read().expect("mode lock") {
            KmsMode::NoSignature => {
                return Ok(json!({"KeyId": arn, "SigningAlgorithm": algorithm}));
            }
            KmsMode::GarbageSignature => vec![0x5a; key.sign(&digest).len()],
            _ => key.sign(&digest),
        };
        Ok(json!({
            "KeyId": arn,
            "Signature": STANDARD.encode(signature),
            "SigningAlgorithm": algorithm,
        }))
    }
}

/// The request body as JSON; KMS answers a body it cannot read with `SerializationException`.
async fn read_json(request: Request<Incoming>) -> Result<Value, Fault> {
    let body = Limited::new(request.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|_| refuse("SerializationException"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|_| refuse("SerializationException"))
}

/// A base64 blob member, decoded.
fn blob(input: &Value, name: &str) -> Option<Vec<u8>> {
    STANDARD.decode(input[name].as_str()?).ok()
}

/// KMS's error shape: the code in `__type`, and a message naming an ARN, as KMS's messages do,
/// which the broker must never pass on.
fn error(fault: &Fault) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = json!({
        "__type": fault.code,
        "message": format!("stand-in {} for {ARN_PREFIX}00000000-0000-4000-8000-000000000000", fault.code),
    });
    serve::response(status, CONTENT_TYPE, body.to_string())
}
