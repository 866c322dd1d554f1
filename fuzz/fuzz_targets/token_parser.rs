//! A GitLab ID token through the broker's own verification: `Verifier::inspect` (shape, header,
//! payload, trusted issuer, pinned algorithm, `crit`, `kid`) and `Verifier::verify_with` (the
//! key's `alg`, the signature with aws-lc-rs, the claims, registered and CI) against a fixed RSA
//! key generated once per process, the two halves `Verifier::verify` runs around the key fetch.
//! Also the duplicate-refusing claims object on every part. Contract: never panic, and a token
//! that verifies carries the expected `iss`, `aud`, `exp` and CI claims.
//!
//! Input: a compact token (`header.payload.signature`), or, when it starts with `{`, a header
//! JSON and a claims JSON separated by the first newline, which the target encodes itself. Every
//! token that passes `inspect` is also re-signed with the fixed key, so its claims reach the
//! claim checks.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::Jwk;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use token_broker::oidc::key::VerifyingKey;
use token_broker::oidc::token::{self, UniqueObject};
use token_broker::oidc::{CachedKey, Verifier};
use token_broker::policy;

const ISSUER: &str = "https://gitlab.example.com";
const AUDIENCE: &str = "https://token-broker.example.com";
const POLICY: &str = r#"
audience = "https://token-broker.example.com"
[[issuer]]
url = "https://gitlab.example.com"
[role.fuzz]
arn = "arn:aws:iam::123456789012:role/fuzz"
[[role.fuzz.allow]]
project_id = "1"
"#;

struct Fixture {
    pair: KeyPair,
    key: CachedKey,
    verifier: Verifier,
}

/// One RSA-2048 key per process, published as a JWK and parsed as the JWKS cache parses it, and
/// a verifier for a policy trusting [`ISSUER`] (the key is handed to it, never fetched).
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let pair = KeyPair::generate(KeySize::Rsa2048).expect("RSA key generation");
        let components = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        let jwk: Jwk = serde_json::from_value(json!({
            "kty": "RSA",
            "kid": "fuzz",
            "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(&components.n),
            "e": URL_SAFE_NO_PAD.encode(&components.e),
        }))
        .expect("a JWK");
        let key = CachedKey {
            key: Arc::new(VerifyingKey::from_jwk(&jwk, &[Algorithm::RS256]).expect("a key")),
            algorithm: None,
        };
        let policy = policy::parse(std::path::Path::new("fuzz.toml"), POLICY, &|_| {
            Err("none".into())
        })
        .expect("the fuzz policy");
        let verifier = Verifier::new(policy, Duration::from_secs(60), Default::default());
        Fixture {
            pair,
            key,
            verifier,
        }
    })
}

fn sign(input: &str) -> String {
    let pair = &fixture().pair;
    let mut signature = vec![0; pair.public_modulus_len()];
    pair.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut signature,
    )
    .expect("RSA signing");
    URL_SAFE_NO_PAD.encode(signature)
}

fuzz_target!(|data: &[u8]| {
    if data.first() == Some(&b'{') {
        let (header, claims) = match data.iter().position(|&b| b == b'\n') {
            Some(at) => (&data[..at], &data[at + 1..]),
            None => (data, &[][..]),
        };
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims),
            URL_SAFE_NO_PAD.encode(b"not a signature"),
        );
        check(&token);
    } else if let Ok(token) = std::str::from_utf8(data) {
        check(token);
    }
});

fn check(token: &str) {
    for part in token.split('.') {
        if let Ok(bytes) = token::decode_part(part) {
            let _ = serde_json::from_slice::<UniqueObject>(&bytes);
        }
    }
    // The signature is the fuzzer's, so this nearly always fails; it must fail cleanly.
    verify(token);
    if fixture().verifier.inspect(token).is_err() {
        return;
    }
    let Some((input, _)) = token.rsplit_once('.') else {
        return;
    };
    verify(&format!("{input}.{}", sign(input)));
}

fn verify(token: &str) {
    let Fixture { key, verifier, .. } = fixture();
    let Ok(unverified) = verifier.inspect(token) else {
        return;
    };
    assert_eq!(unverified.issuer, ISSUER, "only the trusted issuer passes");
    let Ok(verified) = verifier.verify_with(unverified, key) else {
        return;
    };
    let claims = &verified.raw;
    assert_eq!(claims.get("iss"), Some(&json!(ISSUER)), "iss was checked");
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == AUDIENCE,
        Some(Value::Array(auds)) => auds.iter().any(|a| a == AUDIENCE),
        _ => false,
    };
    assert!(audience_ok, "aud was checked: {:?}", claims.get("aud"));
    assert!(
        claims.get("exp").and_then(Value::as_u64) == Some(verified.expires_at),
        "exp was checked"
    );
    assert!(
        verified
            .claims
            .get("project_id")
            .is_some_and(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_digit())),
        "project_id was checked"
    );
}
