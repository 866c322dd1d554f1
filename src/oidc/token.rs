//! The parts of a JWT that are read before its signature is checked, kept as small and strict as
//! possible: the compact form's shape, the header, and the `iss` that picks the issuer's keys.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// Longest token accepted. GitLab's are about 1.5 KiB, but one that lists 200 groups in
/// `groups_direct` (GitLab's cap) reaches 11-14 KiB, and must still be taken.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
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

/// A base64url segment of the token, decoded.
pub fn decode_part(segment: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(segment)
}

fn issuer_of(payload: &[u8]) -> Result<String, &'static str> {
    #[derive(Deserialize)]
    struct IssOnly {
        iss: String,
    }
    let claims: IssOnly =
        serde_json::from_slice(payload).map_err(|_| "token payload has no string `iss`")?;
    Ok(claims.iss)
}

/// The claims segment, decoded and parsed once, before the signature is checked: its `iss`
/// picks the keys, and its claims are handed out only once the signature has verified.
#[derive(Debug)]
pub struct Payload {
    issuer: String,
    claims: Option<serde_json::Map<String, Value>>,
}

impl Payload {
    /// Reads the payload of `token`; it fails when there is no payload, it is not base64url, or
    /// it names no string `iss` (a test compares this with reading `iss` alone). A payload that
    /// names a string `iss` but is not a JSON object without duplicate names still parses: it
    /// is refused by [`Payload::claims`], after the signature check, as it was when
    /// jsonwebtoken parsed the claims a second time.
    pub fn parse(token: &str) -> Result<Self, &'static str> {
        let segment = token.split('.').nth(1).ok_or("token has no payload")?;
        let bytes = decode_part(segment).map_err(|_| "token payload is not base64url")?;
        match serde_json::from_slice::<UniqueObject>(&bytes) {
            Ok(UniqueObject(claims)) => match claims.get("iss") {
                Some(Value::String(issuer)) => Ok(Self {
                    issuer: issuer.clone(),
                    claims: Some(claims),
                }),
                _ => Err("token payload has no string `iss`"),
            },
            Err(_) => Ok(Self {
                issuer: issuer_of(&bytes)?,
                claims: None,
            }),
        }
    }

    /// The unverified `iss`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The claims, or `None` when the payload is not a JSON object without duplicate names.
    pub fn into_claims(self) -> Option<serde_json::Map<String, Value>> {
        self.claims
    }
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

/// Checks that the header is a JSON object that names each member once (`alg` twice would mean
/// whatever the last parser to read it chose), saying which of the two it is not.
pub fn check_header(token: &str) -> Result<(), &'static str> {
    let header = token.split('.').next().unwrap_or("");
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| "the token header is not base64url")?;
    if serde_json::from_slice::<UniqueObject>(&bytes).is_ok() {
        return Ok(());
    }
    // Parsed a second time only to say what is wrong with it.
    match serde_json::from_slice::<Value>(&bytes) {
        Err(_) => Err("the token header is not JSON"),
        Ok(value) if !value.is_object() => Err("the token header is not a JSON object"),
        Ok(_) => Err("the token header repeats a member"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The issuer as the broker read it before `Payload` (the `iss` alone): the reference
    /// `Payload::parse` must agree with.
    fn unverified_issuer(token: &str) -> Result<String, &'static str> {
        let payload = token.split('.').nth(1).ok_or("token has no payload")?;
        let bytes = decode_part(payload).map_err(|_| "token payload is not base64url")?;
        issuer_of(&bytes)
    }

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
    }

    #[test]
    fn a_header_is_told_apart_as_not_json_not_an_object_or_repeating_a_member() {
        let cases = [
            (r#"{"alg":"RS256","kid":"k"}"#, Ok(())),
            (
                r#"{"alg":"RS256","alg":"none"}"#,
                Err("the token header repeats a member"),
            ),
            ("not json", Err("the token header is not JSON")),
            (r#"{"alg":"RS256""#, Err("the token header is not JSON")),
            (r#"["alg"]"#, Err("the token header is not a JSON object")),
        ];
        for (header, expected) in cases {
            assert_eq!(
                check_header(&format!("{}.x.y", b64(header))),
                expected,
                "{header}"
            );
        }
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

    #[test]
    fn a_payload_is_parsed_once_and_read_as_unverified_issuer_reads_it() {
        let cases = [
            r#"{"iss":"https://gitlab.example.com","aud":"x"}"#,
            r#"{"iss":"https://gitlab.example.com","aud":"x","aud":"y"}"#,
            r#"["https://gitlab.example.com"]"#,
            r#"{"iss":"a","iss":"b"}"#,
            r#"{"iss":["a"]}"#,
            r#"{"iss":null}"#,
            r#"{"sub":"x"}"#,
            "not json",
        ];
        for claims in cases {
            let token = format!("h.{}.s", b64(claims));
            let payload = Payload::parse(&token);
            let issuer = payload.as_ref().map(|p| p.issuer().to_owned());
            assert_eq!(
                issuer.map_err(|e| *e),
                unverified_issuer(&token),
                "{claims}"
            );
            let object = serde_json::from_str::<UniqueObject>(claims).ok();
            if let Ok(payload) = payload {
                assert_eq!(payload.into_claims(), object.map(|o| o.0), "{claims}");
            }
        }
        assert_eq!(
            Payload::parse("h.b+.s").unwrap_err(),
            "token payload is not base64url"
        );
    }
}
