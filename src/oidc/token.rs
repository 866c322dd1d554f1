//! The parts of a JWT that are read before its signature is checked, kept as small and strict as
//! possible: the compact form's shape, the header, and the `iss` that picks the issuer's keys.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// Longest token accepted; GitLab's are about 1.5 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest `kid` accepted; GitLab's are 43-character thumbprints.
pub const MAX_KID_CHARS: usize = 128;

/// Checks the compact serialization: three non-empty base64url segments, nothing else.
pub fn check_shape(token: &str) -> Result<(), &'static str> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err("token is too long");
    }
    let segments: Vec<&str> = token.split('.').collect();
    if segments.len() != 3 {
        return Err("token is not a signed JWT (three dot-separated parts)");
    }
    let base64url = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !segments.iter().all(|s| base64url(s)) {
        return Err("token parts are not base64url");
    }
    Ok(())
}

/// The issuer named by an unverified token; only used to pick which keys to verify it with.
pub fn unverified_issuer(token: &str) -> Result<String, &'static str> {
    #[derive(Deserialize)]
    struct IssOnly {
        iss: String,
    }
    let payload = token.split('.').nth(1).ok_or("token has no payload")?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| "token payload is not base64url")?;
    let claims: IssOnly =
        serde_json::from_slice(&bytes).map_err(|_| "token payload has no string `iss`")?;
    Ok(claims.iss)
}

/// A JSON object that refuses duplicate member names. serde_json keeps the last of duplicates,
/// so `{"aud":"broker","aud":"other"}` would mean whatever the last parser to read it chose.
#[derive(Debug, Default)]
pub struct UniqueObject(pub serde_json::Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;

        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = UniqueObject;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object without duplicate names")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut seen = BTreeMap::new();
                while let Some((name, value)) = access.next_entry::<String, Value>()? {
                    if seen.insert(name.clone(), value).is_some() {
                        return Err(de::Error::custom(format!("duplicate claim {name:?}")));
                    }
                }
                Ok(UniqueObject(seen.into_iter().collect()))
            }
        }

        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// Whether a header's raw JSON repeats a member name (`alg` twice, say).
pub fn header_has_duplicates(token: &str) -> bool {
    let Some(header) = token.split('.').next() else {
        return true;
    };
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(header) else {
        return true;
    };
    serde_json::from_slice::<UniqueObject>(&bytes).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn shape_needs_three_base64url_parts() {
        assert!(check_shape("a.b.c").is_ok());
        assert!(check_shape("a.b").is_err());
        assert!(check_shape("a.b.").is_err());
        assert!(check_shape("a.b.c.d").is_err());
        assert!(check_shape("a.b+.c").is_err());
        assert!(check_shape("a.b=.c").is_err());
        assert!(check_shape(&format!("a.{}.c", "b".repeat(MAX_TOKEN_BYTES))).is_err());
    }

    #[test]
    fn duplicate_names_are_refused() {
        let ok: UniqueObject = serde_json::from_str(r#"{"aud":"x","sub":"y"}"#).unwrap();
        assert_eq!(ok.0.len(), 2);
        assert!(serde_json::from_str::<UniqueObject>(r#"{"aud":"x","aud":"y"}"#).is_err());
        assert!(header_has_duplicates(&format!(
            "{}.x.y",
            b64(r#"{"alg":"RS256","alg":"none"}"#)
        )));
        assert!(!header_has_duplicates(&format!(
            "{}.x.y",
            b64(r#"{"alg":"RS256","kid":"k"}"#)
        )));
    }

    #[test]
    fn issuer_is_read_only_as_a_string() {
        let token = format!("h.{}.s", b64(r#"{"iss":"https://gitlab.example.com"}"#));
        assert_eq!(
            unverified_issuer(&token).unwrap(),
            "https://gitlab.example.com"
        );
        let token = format!("h.{}.s", b64(r#"{"iss":["https://gitlab.example.com"]}"#));
        assert!(unverified_issuer(&token).is_err());
        let token = format!("h.{}.s", b64(r#"{"iss":"a","iss":"b"}"#));
        assert!(unverified_issuer(&token).is_err());
    }
}
