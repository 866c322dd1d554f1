//! The parts of a GitLab ID token read before and during verification: the compact form's shape,
//! duplicate header members, the unverified `iss`, jsonwebtoken's header parser, the
//! duplicate-refusing claims object, and `jsonwebtoken::decode` with the validation the broker
//! uses, against a fixed RSA key generated once per process. Contract: never panic, and a token
//! that decodes carries the expected `iss`, `aud` and `exp`.
//!
//! Input: a compact token (`header.payload.signature`), or, when it starts with `{`, a header
//! JSON and a claims JSON separated by the first newline, which the target encodes itself. Every
//! token that passes the checks the broker makes before `decode` is also re-signed with the fixed
//! key, so its claims reach jsonwebtoken's claim validation.

#![no_main]

use std::sync::OnceLock;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use token_broker::oidc::token::{self, MAX_KID_CHARS, UniqueObject};

const ISSUER: &str = "https://gitlab.example.com";
const AUDIENCE: &str = "https://token-broker.example.com";

struct Key {
    pair: KeyPair,
    decoding: DecodingKey,
}

/// One RSA-2048 key per process, turned into a `DecodingKey` from its JWK as the broker does.
fn key() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let pair = KeyPair::generate(KeySize::Rsa2048).expect("RSA key generation");
        let components = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        let jwk: Jwk = serde_json::from_value(json!({
            "kty": "RSA",
            "kid": "fuzz",
            "use": "sig",
            "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(&components.n),
            "e": URL_SAFE_NO_PAD.encode(&components.e),
        }))
        .expect("a JWK");
        let decoding = DecodingKey::from_jwk(&jwk).expect("an RSA decoding key");
        Key { pair, decoding }
    })
}

fn sign(input: &str) -> String {
    let key = key();
    let mut signature = vec![0; key.pair.public_modulus_len()];
    key.pair
        .sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            input.as_bytes(),
            &mut signature,
        )
        .expect("RSA signing");
    URL_SAFE_NO_PAD.encode(signature)
}

/// `Verifier::validation` with a fixed issuer and audience.
fn validation() -> Validation {
    let mut validation = Validation::new(Algorithm::RS256);
    validation.leeway = 60;
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.validate_nbf = true;
    validation
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
        if let Ok(bytes) = URL_SAFE_NO_PAD.decode(part) {
            let _ = serde_json::from_slice::<UniqueObject>(&bytes);
        }
    }
    let shape = token::check_shape(token);
    let header_ok = token::check_header(token).is_ok();
    let header = decode_header(token);
    let issuer = token::unverified_issuer(token);
    if shape.is_err() {
        return;
    }
    // The signature is the fuzzer's, so this nearly always fails; it must fail cleanly.
    verify(token);
    // What `Verifier::verify` checks before it calls `decode` (the issuer aside: any is tried).
    let Ok(header) = header else { return };
    let kid_ok = header
        .kid
        .as_deref()
        .is_some_and(|k| !k.is_empty() && k.len() <= MAX_KID_CHARS);
    if !header_ok || issuer.is_err() || header.alg != Algorithm::RS256 || header.crit.is_some() {
        return;
    }
    if !kid_ok {
        return;
    }
    let Some((input, _)) = token.rsplit_once('.') else {
        return;
    };
    verify(&format!("{input}.{}", sign(input)));
}

fn verify(token: &str) {
    let Ok(data) = decode::<UniqueObject>(token, &key().decoding, &validation()) else {
        return;
    };
    let claims = data.claims.0;
    assert_eq!(claims.get("iss"), Some(&json!(ISSUER)), "iss was validated");
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == AUDIENCE,
        Some(Value::Array(auds)) => auds.iter().any(|a| a == AUDIENCE),
        _ => false,
    };
    assert!(audience_ok, "aud was validated: {:?}", claims.get("aud"));
    assert!(
        claims.get("exp").is_some_and(Value::is_number),
        "exp was validated"
    );
    let _ = token_broker::Claims::from_json(ISSUER, &claims);
}
