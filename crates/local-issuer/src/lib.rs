//! A local stand-in for a GitLab instance's OIDC side, for token-broker's tests and demo: it
//! generates RSA keys, serves them at `/oauth/discovery/keys` like GitLab, and mints CI ID tokens
//! with GitLab's claim shapes. It can be told to misbehave (down, slow, oversized, garbage) and
//! counts JWKS requests, so tests can assert on how the broker fetches keys. [`sts`] and [`kms`]
//! stand in for the AWS services the broker calls, where moto is too slow or cannot do what the
//! test needs. Never part of the broker's own binary.
//!
//! Tooling the test binaries share lives here too, each in a module of its own: [`moto`] (SDK
//! configurations for moto and readers of its request recording), [`forge`] (hostile tokens),
//! [`urn`] (the RFC 8693 identifiers) and [`fixture`] (the test policy). None of it needs the
//! broker, which dev-depends on this crate and so could not be a dependency of it.

pub mod capture;
pub mod claims;
pub mod fixture;
pub mod forge;
pub mod keys;
pub mod kms;
pub mod moto;
pub mod requests;
mod serve;
mod server;
pub mod sts;
pub mod urn;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{Value, json};

pub use keys::SigningKey;

/// How the JWKS endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The key set, as GitLab serves it.
    Up,
    /// 503 with an empty body.
    Down,
    /// The key set, after a delay.
    Slow(Duration),
    /// A valid-looking body of this many bytes.
    Huge(usize),
    /// `200` with a body that is not JSON (a proxy's HTML error page).
    Garbage,
    /// `200` with `{"keys":[]}`.
    EmptyKeys,
    /// The key set with a second, different key published under the signing key's `kid`.
    DuplicateKid,
    /// `302` to the key set of the issuer on this loopback port (someone else's keys).
    RedirectTo(u16),
}

pub(crate) struct Shared {
    pub(crate) keys: RwLock<Vec<SigningKey>>,
    pub(crate) mode: RwLock<Mode>,
    pub(crate) jwks_requests: AtomicUsize,
    pub(crate) issuer: String,
}

/// A running local issuer; the server stops when this is dropped with its runtime.
pub struct LocalIssuer {
    shared: Arc<Shared>,
}

impl LocalIssuer {
    /// Starts on a free loopback port with one fresh RSA-2048 key.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0").await
    }

    /// Starts on `address`.
    pub async fn start_on(address: &str) -> Self {
        Self::start_with(address, SigningKey::generate()).await
    }

    /// Starts on `address` signing with `key` (an RSA-4096 one, say).
    pub async fn start_with(address: &str, key: SigningKey) -> Self {
        let (listener, url) = serve::bind(address).await;
        let shared = Arc::new(Shared {
            keys: RwLock::new(vec![key]),
            mode: RwLock::new(Mode::Up),
            jwks_requests: AtomicUsize::new(0),
            issuer: url,
        });
        serve::spawn(listener, shared.clone());
        Self { shared }
    }

    /// The issuer URL, `iss` of every token minted here.
    pub fn url(&self) -> &str {
        &self.shared.issuer
    }

    /// Where the keys are served, as GitLab serves them.
    pub fn jwks_url(&self) -> String {
        format!("{}/oauth/discovery/keys", self.url())
    }

    /// How many times the JWKS was requested.
    pub fn jwks_requests(&self) -> usize {
        self.shared.jwks_requests.load(Ordering::SeqCst)
    }

    /// Changes how the JWKS endpoint answers from now on.
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.write().expect("mode lock") = mode;
    }

    /// Adds a new key and makes it the signing key; the old ones stay published. Returns its kid.
    pub fn rotate(&self) -> String {
        let key = SigningKey::generate();
        let kid = key.kid().to_owned();
        self.shared.keys.write().expect("keys lock").push(key);
        kid
    }

    /// Replaces every key with a fresh one published under the same `kid` as the signing key:
    /// what a broken rotation looks like.
    pub fn replace_key_keeping_kid(&self) {
        let mut keys = self.shared.keys.write().expect("keys lock");
        let kid = keys.last().expect("a key").kid().to_owned();
        *keys = vec![SigningKey::generate().with_kid(kid)];
    }

    /// Runs `f` with the current signing key (the newest).
    fn with_signing_key<R>(&self, f: impl FnOnce(&SigningKey) -> R) -> R {
        f(self
            .shared
            .keys
            .read()
            .expect("keys lock")
            .last()
            .expect("a key"))
    }

    /// The signing key's `kid`.
    pub fn kid(&self) -> String {
        self.with_signing_key(|key| key.kid().to_owned())
    }

    /// The default CI claims for this issuer and `audience`, for job `job_id`.
    pub fn claims(&self, audience: &str, job_id: u64) -> Value {
        claims::ci_job(self.url(), audience, job_id)
    }

    /// A token with the standard header (`alg: RS256`, `typ: JWT`, `kid`) signed by the current key.
    pub fn mint(&self, claims: &Value) -> String {
        self.mint_with_header(
            &json!({"alg": "RS256", "typ": "JWT", "kid": self.kid()}),
            claims,
        )
    }

    /// A token with exactly `header`, signed RS256 by the current key.
    pub fn mint_with_header(&self, header: &Value, claims: &Value) -> String {
        self.with_signing_key(|key| key.mint(header, claims))
    }

    /// A PS256 token signed by the current key, whose JWK says `"alg": "RS256"`.
    pub fn mint_ps256(&self, claims: &Value) -> String {
        self.with_signing_key(|key| {
            key.mint_ps256(
                &json!({"alg": "PS256", "typ": "JWT", "kid": key.kid()}),
                claims,
            )
        })
    }

    /// `input` (an already encoded `header.payload`) with an RS256 signature by the current key
    /// appended; for payloads a JSON serializer would never write, like duplicate names.
    pub fn sign_input(&self, input: &str) -> String {
        let signature = self.with_signing_key(|key| key.sign(input.as_bytes()));
        format!(
            "{input}.{}",
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, signature)
        )
    }

    /// The current key's public DER, for algorithm-confusion attacks.
    pub fn public_der(&self) -> Vec<u8> {
        self.with_signing_key(SigningKey::public_der)
    }

    /// The current key's public JWK.
    pub fn public_jwk(&self) -> Value {
        self.with_signing_key(SigningKey::jwk)
    }
}
