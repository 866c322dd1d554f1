//! Public keys as JWKs: KMS hands out DER SubjectPublicKeyInfo, JWKS wants `n`/`e` or `x`/`y`;
//! KMS ECDSA signatures are DER, JWS wants the fixed 64-byte `r‖s`. A small DER reader for just
//! these shapes, and the RFC 7638 thumbprint used as `kid`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// The signing algorithm a key supports, read from the key itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// RSA with RSASSA-PKCS1-v1_5 and SHA-256.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

impl KeyAlgorithm {
    /// The JWS `alg`.
    pub fn jws(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }

    /// The same algorithm as jsonwebtoken names it.
    pub fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Self::Rs256 => jsonwebtoken::Algorithm::RS256,
            Self::Es256 => jsonwebtoken::Algorithm::ES256,
        }
    }
}

/// A DER element: tag and contents, plus what follows it.
fn element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let (&tag, rest) = input.split_first().ok_or("DER: truncated")?;
    let (&first, rest) = rest.split_first().ok_or("DER: truncated length")?;
    let (length, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let count = (first & 0x7f) as usize;
        if count == 0 || count > 4 || rest.len() < count {
            return Err("DER: bad length".into());
        }
        let length = rest[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (length, &rest[count..])
    };
    if rest.len() < length {
        return Err("DER: truncated contents".into());
    }
    Ok((tag, &rest[..length], &rest[length..]))
}

fn expect(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), String> {
    let (found, contents, rest) = element(input)?;
    if found == tag {
        Ok((contents, rest))
    } else {
        Err(format!("DER: expected tag {tag:#x}, found {found:#x}"))
    }
}

/// An INTEGER's magnitude without the sign byte DER adds to keep it positive.
fn unsigned(integer: &[u8]) -> &[u8] {
    let mut bytes = integer;
    while bytes.len() > 1 && bytes[0] == 0 {
        bytes = &bytes[1..];
    }
    bytes
}

/// A DER SubjectPublicKeyInfo (RSA or P-256) as a public JWK, and the algorithm it signs with.
pub fn spki_to_jwk(der: &[u8]) -> Result<(KeyAlgorithm, Value), String> {
    let (spki, _) = expect(der, 0x30)?;
    let (algorithm, rest) = expect(spki, 0x30)?;
    let (oid, parameters) = expect(algorithm, 0x06)?;
    let (bits, _) = expect(rest, 0x03)?;
    let key = bits
        .strip_prefix(&[0])
        .ok_or("DER: BIT STRING with unused bits")?;
    let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    if oid == OID_RSA {
        let (sequence, _) = expect(key, 0x30)?;
        let (n, rest) = expect(sequence, 0x02)?;
        let (e, _) = expect(rest, 0x02)?;
        Ok((
            KeyAlgorithm::Rs256,
            json!({"kty": "RSA", "n": b64(unsigned(n)), "e": b64(unsigned(e))}),
        ))
    } else if oid == OID_EC {
        let (curve, _) = expect(parameters, 0x06)?;
        if curve != OID_P256 {
            return Err("only the P-256 curve is supported".into());
        }
        if key.len() != 65 || key[0] != 0x04 {
            return Err("P-256 key is not an uncompressed point".into());
        }
        Ok((
            KeyAlgorithm::Es256,
            json!({"kty": "EC", "crv": "P-256", "x": b64(&key[1..33]), "y": b64(&key[33..])}),
        ))
    } else {
        Err("unsupported key type (RSA or P-256 only)".into())
    }
}

/// A DER ECDSA signature (`SEQUENCE { r INTEGER, s INTEGER }`) as JWS's 64-byte `r‖s`.
pub fn ecdsa_der_to_jose(der: &[u8]) -> Result<[u8; 64], String> {
    let (sequence, _) = expect(der, 0x30)?;
    let (r, rest) = expect(sequence, 0x02)?;
    let (s, _) = expect(rest, 0x02)?;
    let mut out = [0u8; 64];
    for (half, integer) in [(0, r), (32, s)] {
        let magnitude = unsigned(integer);
        if magnitude.len() > 32 {
            return Err("ECDSA integer longer than 32 bytes".into());
        }
        out[half + 32 - magnitude.len()..half + 32].copy_from_slice(magnitude);
    }
    Ok(out)
}

/// The RFC 7638 thumbprint of a public JWK: SHA-256 of its required members, sorted, no spaces.
pub fn thumbprint(jwk: &Value) -> String {
    let members: &[&str] = match jwk["kty"].as_str() {
        Some("EC") => &["crv", "kty", "x", "y"],
        _ => &["e", "kty", "n"],
    };
    let canonical: serde_json::Map<String, Value> = members
        .iter()
        .map(|m| (m.to_string(), jwk[*m].clone()))
        .collect();
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        Value::Object(canonical).to_string().as_bytes(),
    );
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_matches_rfc_7638_example() {
        // RFC 7638, section 3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            thumbprint(&jwk),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    fn der_signature(r: &[u8], s: &[u8]) -> Vec<u8> {
        let mut body = vec![0x02, r.len() as u8];
        body.extend_from_slice(r);
        body.extend_from_slice(&[0x02, s.len() as u8]);
        body.extend_from_slice(s);
        let mut der = vec![0x30, body.len() as u8];
        der.extend(body);
        der
    }

    #[test]
    fn ecdsa_der_becomes_fixed_width_r_and_s() {
        // r with DER's leading zero (high bit set), s shorter than 32 bytes.
        let mut r = vec![0x00];
        r.extend([0x80; 32]);
        let s = vec![0x01; 30];
        let jose = ecdsa_der_to_jose(&der_signature(&r, &s)).unwrap();
        assert_eq!(&jose[..32], &[0x80; 32]);
        assert_eq!(&jose[32..34], &[0, 0]);
        assert_eq!(&jose[34..], &[0x01; 30]);
        // Plain 32-byte integers pass through.
        let jose = ecdsa_der_to_jose(&der_signature(&[0x11; 32], &[0x22; 32])).unwrap();
        assert_eq!(
            (&jose[..32], &jose[32..]),
            (&[0x11; 32][..], &[0x22; 32][..])
        );
        assert!(ecdsa_der_to_jose(&der_signature(&[0x11; 33], &[0x22; 32])).is_err());
        assert!(ecdsa_der_to_jose(&[0x30, 0x05, 0x02]).is_err());
    }

    #[test]
    fn rsa_and_p256_public_keys_become_jwks() {
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let spki = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(
            rsa.public_key(),
        )
        .unwrap();
        let (alg, jwk) = spki_to_jwk(spki.as_ref()).unwrap();
        assert_eq!(
            (alg, jwk["kty"].as_str(), jwk["e"].as_str()),
            (KeyAlgorithm::Rs256, Some("RSA"), Some("AQAB"))
        );
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(jwk["n"].as_str().unwrap())
                .unwrap()
                .len(),
            256
        );

        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let spki = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(
            ec.public_key(),
        )
        .unwrap();
        let (alg, jwk) = spki_to_jwk(spki.as_ref()).unwrap();
        assert_eq!(
            (alg, jwk["crv"].as_str()),
            (KeyAlgorithm::Es256, Some("P-256"))
        );
        let point = ec.public_key().as_ref();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap(),
            &point[1..33]
        );
        assert_eq!(
            URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap(),
            &point[33..]
        );
        assert!(spki_to_jwk(&[0x30, 0x00]).is_err());
    }
}
