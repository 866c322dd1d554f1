//! Hostile token builders for the attack tests: tokens a careless verifier would accept. Each one
//! is built from the trusted issuer's public material or by a stranger, never from a private key
//! the broker trusts, except where the point is a genuine signature over a malformed token.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use crate::LocalIssuer;
use crate::keys::{SigningKey, b64_json};

/// `text` base64url-encoded without padding, as a JWS segment.
pub fn b64(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text)
}

/// A token MACed with `secret` under `header` (`alg` HS256, HS384, or else HS512): what a verifier
/// that trusts the token's `alg` accepts if it uses the issuer's public key bytes as HMAC key.
pub fn hmac_token(secret: &[u8], header: &Value, claims: &Value) -> String {
    let algorithm = match header["alg"].as_str() {
        Some("HS256") => hmac::HMAC_SHA256,
        Some("HS384") => hmac::HMAC_SHA384,
        _ => hmac::HMAC_SHA512,
    };
    let input = format!("{}.{}", b64_json(header), b64_json(claims));
    let tag = hmac::sign(&hmac::Key::new(algorithm, secret), input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// A token with exactly this header and payload text (duplicate names included), signed by
/// `issuer`'s current key: for texts a JSON serializer would never write.
pub fn signed_text(issuer: &LocalIssuer, header: &str, payload: &str) -> String {
    issuer.sign_input(&format!("{}.{}", b64(header), b64(payload)))
}

/// `claims` serialized with `extra` (raw JSON members) inserted first, so a name repeats.
pub fn with_leading_members(claims: &Value, extra: &str) -> String {
    let mut text = claims.to_string();
    text.insert_str(1, &format!("{extra},"));
    text
}

/// A token under the trusted key's `kid` but signed by a fresh key: its signature never verifies.
pub fn signed_by_a_stranger(kid: &str, claims: &Value) -> String {
    SigningKey::generate().mint(&json!({"alg": "RS256", "typ": "JWT", "kid": kid}), claims)
}

/// The RSA public key as a PEM file (`BEGIN PUBLIC KEY`, i.e. SPKI), built around the PKCS#1 DER
/// that `public_der()` returns: the exact bytes a JWT library loads as "the public key".
pub fn public_pem(pkcs1: &[u8]) -> String {
    // AlgorithmIdentifier { rsaEncryption, NULL }
    let algorithm = der(
        0x30,
        &[
            0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
        ],
    );
    let bits = der(0x03, &[&[0u8][..], pkcs1].concat());
    let spki = der(0x30, &[algorithm, bits].concat());
    let body = STANDARD.encode(spki);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

/// One DER element.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut element = vec![tag];
    if content.len() < 0x80 {
        element.push(content.len() as u8);
    } else {
        let length = content.len().to_be_bytes();
        let significant: Vec<u8> = length.into_iter().skip_while(|b| *b == 0).collect();
        element.push(0x80 | significant.len() as u8);
        element.extend(significant);
    }
    element.extend_from_slice(content);
    element
}
