//! One published signing key, parsed once for each pinned algorithm it may verify.
//!
//! jsonwebtoken keeps an RSA JWK as `n` and `e` and rebuilds the key on every verification (an
//! EC JWK as a point it parses every time). Here the key is parsed into aws-lc-rs
//! `ParsedPublicKey`s when the JWKS is fetched, so a verification is the signature check alone.
//! Which keys are accepted, and what a verification answers, are jsonwebtoken's: the JWK must
//! make a `DecodingKey`, a key of the wrong family for the token's algorithm cannot decode it,
//! and a key aws-lc-rs refuses to parse (a P-384 point pinned for ES256, an RSA key of 1,024
//! bits) fails every signature, as it failed them before.

use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents, VerificationAlgorithm};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};

use super::VerifyError;

/// A public key ready to verify signatures with the algorithms it was parsed for.
pub struct VerifyingKey {
    family: Family,
    parsed: Vec<(Algorithm, Option<ParsedPublicKey>)>,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algorithms: Vec<_> = self.parsed.iter().map(|(alg, _)| alg).collect();
        f.debug_struct("VerifyingKey")
            .field("family", &self.family)
            .field("algorithms", &algorithms)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
}

impl VerifyingKey {
    /// The key of `jwk`, parsed for each of `algorithms` in its family; `None` when jsonwebtoken
    /// would not make a key of it, it is neither RSA nor EC, or aws-lc-rs refuses it for every
    /// one of `algorithms` (an RSA key under 2,048 bits, a P-384 point pinned for ES256): such a
    /// key could verify nothing, so a key set of only such keys is no key set at all.
    pub fn from_jwk(jwk: &Jwk, algorithms: &[Algorithm]) -> Option<Self> {
        let decoding = DecodingKey::from_jwk(jwk).ok()?;
        let family = match decoding.kind() {
            DecodingKeyKind::RsaModulusExponent { .. } => Family::Rsa,
            DecodingKeyKind::SecretOrDer(_)
                if matches!(jwk.algorithm, AlgorithmParameters::EllipticCurve(_)) =>
            {
                Family::Ec
            }
            DecodingKeyKind::SecretOrDer(_) => return None,
        };
        let parsed: Vec<_> = algorithms
            .iter()
            .filter(|alg| family_of(**alg) == Some(family))
            .map(|alg| (*alg, parse(&decoding, *alg)))
            .collect();
        if parsed.iter().all(|(_, key)| key.is_none()) {
            return None;
        }
        Some(Self { family, parsed })
    }

    /// Checks `signature` (base64url, as in the token) over `message` with `alg`, answering as
    /// jsonwebtoken's `decode` did: a key of another family cannot decode the token, a signature
    /// that is not base64url cannot be decoded, and anything else that fails is a bad signature.
    pub fn verify(
        &self,
        alg: Algorithm,
        message: &[u8],
        signature: &str,
    ) -> Result<(), VerifyError> {
        if family_of(alg) != Some(self.family) {
            return Err(VerifyError::Malformed("the token cannot be decoded"));
        }
        let signature = super::token::decode_part(signature)
            .map_err(|_| VerifyError::Malformed("the token cannot be decoded"))?;
        let (_, key) = self
            .parsed
            .iter()
            .find(|(a, _)| *a == alg)
            .ok_or(VerifyError::Algorithm)?;
        key.as_ref()
            .ok_or(VerifyError::Signature)?
            .verify_sig(message, &signature)
            .map_err(|_| VerifyError::Signature)
    }
}

fn family_of(alg: Algorithm) -> Option<Family> {
    use Algorithm as A;
    match alg {
        A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => Some(Family::Rsa),
        A::ES256 | A::ES384 => Some(Family::Ec),
        _ => None,
    }
}

/// The aws-lc-rs algorithms jsonwebtoken verifies `alg` with.
fn ec_algorithm(alg: Algorithm) -> Option<&'static dyn VerificationAlgorithm> {
    Some(match alg {
        Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
        _ => return None,
    })
}

fn rsa_params(alg: Algorithm) -> Option<&'static signature::RsaParameters> {
    use Algorithm as A;
    Some(match alg {
        A::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        A::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        A::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        A::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        A::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        A::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

/// The key parsed for `alg`, or `None` when aws-lc-rs refuses it (every signature then fails).
fn parse(decoding: &DecodingKey, alg: Algorithm) -> Option<ParsedPublicKey> {
    match decoding.kind() {
        // aws-lc-rs checks the modulus size only when verifying; checked here too, so that a
        // key it would refuse every signature from is no key at all.
        DecodingKeyKind::RsaModulusExponent { n, e }
            if rsa_bits(n).is_some_and(|bits| (2048..=8192).contains(&bits)) =>
        {
            RsaPublicKeyComponents { n, e }
                .to_parsed_public_key(rsa_params(alg)?)
                .ok()
        }
        DecodingKeyKind::RsaModulusExponent { .. } => None,
        DecodingKeyKind::SecretOrDer(point) => ParsedPublicKey::new(ec_algorithm(alg)?, point).ok(),
    }
}

/// The size in bits of a big-endian modulus, leading zero bytes aside.
fn rsa_bits(n: &[u8]) -> Option<usize> {
    let start = n.iter().position(|b| *b != 0)?;
    Some((n.len() - start) * 8 - n[start].leading_zeros() as usize)
}
