//! RSA signing keys generated in-process, with their JWK and RFC 7638 thumbprint `kid`.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaEncoding};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// An RSA key that signs RS256 tokens.
pub struct SigningKey {
    pair: KeyPair,
    kid: String,
    n: String,
    e: String,
}

impl SigningKey {
    /// A fresh RSA-2048 key.
    pub fn generate() -> Self {
        Self::generate_with(KeySize::Rsa2048)
    }

    /// A fresh RSA key of `size` (gitlab.com serves 2048- and 4096-bit keys).
    pub fn generate_with(size: KeySize) -> Self {
        let pair = KeyPair::generate(size).expect("RSA key generation");
        let components = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        let n = URL_SAFE_NO_PAD.encode(&components.n);
        let e = URL_SAFE_NO_PAD.encode(&components.e);
        let kid = thumbprint(&n, &e);
        Self { pair, kid, n, e }
    }

    /// The same key published under another `kid`.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = kid.into();
        self
    }

    /// The RFC 7638 thumbprint, which GitLab uses as `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK, as GitLab publishes it.
    pub fn jwk(&self) -> Value {
        json!({"kty": "RSA", "kid": self.kid, "e": self.e, "n": self.n, "use": "sig", "alg": "RS256"})
    }

    /// The public key as DER (PKCS#1 RSAPublicKey), e.g. to try it as an HMAC secret.
    pub fn public_der(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// An RS256 signature over `input`.
    pub fn sign(&self, input: &[u8]) -> Vec<u8> {
        self.sign_with(&RSA_PKCS1_SHA256, input)
    }

    fn sign_with(&self, encoding: &'static dyn RsaEncoding, input: &[u8]) -> Vec<u8> {
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(encoding, &SystemRandom::new(), input, &mut signature)
            .expect("RSA signing");
        signature
    }

    /// A compact JWS with exactly this `header` and `claims`, signed RS256 by this key.
    pub fn mint(&self, header: &Value, claims: &Value) -> String {
        self.mint_with(&RSA_PKCS1_SHA256, header, claims)
    }

    /// Like [`mint`](Self::mint), signed PS256 (RSASSA-PSS with SHA-256) by the same key: what
    /// a key published with `"alg": "RS256"` must not verify.
    pub fn mint_ps256(&self, header: &Value, claims: &Value) -> String {
        self.mint_with(&RSA_PSS_SHA256, header, claims)
    }

    fn mint_with(
        &self,
        encoding: &'static dyn RsaEncoding,
        header: &Value,
        claims: &Value,
    ) -> String {
        let input = format!("{}.{}", b64_json(header), b64_json(claims));
        let signature = URL_SAFE_NO_PAD.encode(self.sign_with(encoding, input.as_bytes()));
        format!("{input}.{signature}")
    }
}

/// base64url of a JSON value's compact serialization.
pub fn b64_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// RFC 7638 thumbprint of an RSA public key: SHA-256 over the required members in order.
pub fn thumbprint(n: &str, e: &str) -> String {
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        canonical.as_bytes(),
    ))
}
