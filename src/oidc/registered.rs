//! The registered claims `exp`, `nbf`, `iss` and `aud`, checked on the claims object the broker
//! already parsed, in the order and with the answers of the jsonwebtoken validation it replaces
//! (`exp`, `iss` and `aud` required, `nbf` checked when present, both with leeway; an exact
//! `iss`; `aud` a string or a list that holds the broker's audience). jsonwebtoken parsed the
//! claims twice more to do this; the token is not accepted or refused differently for it.

use serde_json::{Map, Value};

use super::{VerifyError, now_secs};

/// Checks `claims` against the issuer's exact URL and the broker's audience.
pub fn check(
    claims: &Map<String, Value>,
    issuer: &str,
    audience: &str,
    leeway: u64,
) -> Result<(), VerifyError> {
    // jsonwebtoken read `sub` as an optional string without consuming a list or an object, so
    // one of those failed the whole claims parse.
    if matches!(claims.get("sub"), Some(Value::Array(_) | Value::Object(_))) {
        return Err(VerifyError::Malformed(
            "the token payload is not a JSON object without duplicate claims",
        ));
    }
    let exp = numeric(claims.get("exp"));
    let present = |name: &str| match name {
        "exp" => matches!(exp, Numeric::Parsed(_)),
        _ => strings(claims.get(name)).is_some(),
    };
    if let Some(missing) = ["exp", "iss", "aud"].into_iter().find(|c| !present(c)) {
        return Err(VerifyError::MissingClaim(missing.into()));
    }
    let nbf = numeric(claims.get("nbf"));
    if nbf == Numeric::Invalid {
        return Err(VerifyError::BadClaim("nbf".into()));
    }
    let now = now_secs();
    if matches!(exp, Numeric::Parsed(exp) if exp < now.saturating_sub(leeway)) {
        return Err(VerifyError::Expired);
    }
    if matches!(nbf, Numeric::Parsed(nbf) if nbf > now + leeway) {
        return Err(VerifyError::NotYetValid);
    }
    if !strings(claims.get("iss")).is_some_and(|iss| iss.contains(&issuer)) {
        return Err(VerifyError::UntrustedIssuer);
    }
    if !strings(claims.get("aud")).is_some_and(|aud| aud.contains(&audience)) {
        return Err(VerifyError::Audience);
    }
    Ok(())
}

/// A NumericDate as jsonwebtoken reads one: a non-negative integer, or a finite non-negative
/// number below 2^64 rounded to the nearest second; `null` is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Numeric {
    Absent,
    Parsed(u64),
    Invalid,
}

fn numeric(value: Option<&Value>) -> Numeric {
    let number = match value {
        None => return Numeric::Absent,
        Some(Value::Number(number)) => number,
        Some(_) => return Numeric::Invalid,
    };
    if let Some(n) = number.as_u64() {
        return Numeric::Parsed(n);
    }
    match number.as_f64() {
        Some(f) if number.is_f64() && f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => {
            Numeric::Parsed(f.round() as u64)
        }
        _ => Numeric::Invalid,
    }
}

/// `iss` or `aud` as a string or a list of strings; `None` when absent, null or anything else.
fn strings(value: Option<&Value>) -> Option<Vec<&str>> {
    match value? {
        Value::String(s) => Some(vec![s.as_str()]),
        Value::Array(items) => items.iter().map(Value::as_str).collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ISS: &str = "https://gitlab.example.com";
    const AUD: &str = "https://token-broker.example.com";

    fn run(claims: Value) -> Result<(), VerifyError> {
        check(claims.as_object().expect("object"), ISS, AUD, 60)
    }

    #[test]
    fn registered_claims_are_answered_as_jsonwebtoken_answered_them() {
        let now = now_secs();
        let ok = json!({"iss": ISS, "aud": AUD, "exp": now + 300});
        let with = |name: &str, value: Value| {
            let mut claims = ok.clone();
            claims[name] = value;
            claims
        };
        let without = |name: &str| {
            let mut claims = ok.clone();
            claims.as_object_mut().expect("object").remove(name);
            claims
        };
        let missing = |c: &str| Err(VerifyError::MissingClaim(c.into()));
        let cases = [
            (ok.clone(), Ok(())),
            (with("aud", json!(["other", AUD])), Ok(())),
            (with("exp", json!((now + 300) as f64 + 0.4)), Ok(())),
            (with("exp", json!(now - 30)), Ok(())),
            (with("nbf", json!(now + 30)), Ok(())),
            (
                with("nbf", Value::Null),
                Err(VerifyError::BadClaim("nbf".into())),
            ),
            (with("iss", json!([ISS])), Ok(())),
            (with("aud", Value::Null), missing("aud")),
            (with("exp", json!(1e30)), missing("exp")),
            (
                with("sub", json!({"a": 1})),
                Err(VerifyError::Malformed(
                    "the token payload is not a JSON object without duplicate claims",
                )),
            ),
            (with("sub", json!(true)), Ok(())),
            (with("sub", json!(42)), Ok(())),
            (without("exp"), missing("exp")),
            (with("exp", json!("soon")), missing("exp")),
            (with("exp", json!(-1)), missing("exp")),
            (with("exp", Value::Null), missing("exp")),
            (without("aud"), missing("aud")),
            (with("aud", json!(5)), missing("aud")),
            (with("aud", json!([AUD, 5])), missing("aud")),
            (
                with("nbf", json!("later")),
                Err(VerifyError::BadClaim("nbf".into())),
            ),
            (
                with("nbf", json!(-5)),
                Err(VerifyError::BadClaim("nbf".into())),
            ),
            (with("exp", json!(now - 61)), Err(VerifyError::Expired)),
            (with("nbf", json!(now + 61)), Err(VerifyError::NotYetValid)),
            (
                with("iss", json!("https://gitlab.example.com/")),
                Err(VerifyError::UntrustedIssuer),
            ),
            (with("aud", json!("other")), Err(VerifyError::Audience)),
            (with("aud", json!([])), Err(VerifyError::Audience)),
            (with("aud", json!(["other"])), Err(VerifyError::Audience)),
            (
                with("sub", json!(["a"])),
                Err(VerifyError::Malformed(
                    "the token payload is not a JSON object without duplicate claims",
                )),
            ),
        ];
        for (claims, expected) in cases {
            assert_eq!(run(claims.clone()), expected, "{claims}");
            assert_eq!(
                run(claims.clone()),
                jsonwebtoken_answer(&claims),
                "{claims}"
            );
        }
    }

    /// What `jsonwebtoken::decode` with the validation the verifier used to build answered for
    /// `claims`, mapped to a `VerifyError` as the verifier mapped it.
    fn jsonwebtoken_answer(claims: &Value) -> Result<(), VerifyError> {
        use jsonwebtoken::errors::ErrorKind;
        use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(b"k"),
        )
        .expect("encode");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 60;
        validation.set_issuer(&[ISS]);
        validation.set_audience(&[AUD]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        let decoded = jsonwebtoken::decode::<crate::oidc::token::UniqueObject>(
            &token,
            &DecodingKey::from_secret(b"k"),
            &validation,
        );
        decoded.map(|_| ()).map_err(|e| match e.into_kind() {
            ErrorKind::ExpiredSignature => VerifyError::Expired,
            ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
            ErrorKind::InvalidAudience => VerifyError::Audience,
            ErrorKind::InvalidIssuer => VerifyError::UntrustedIssuer,
            ErrorKind::MissingRequiredClaim(claim) => VerifyError::MissingClaim(claim),
            ErrorKind::InvalidClaimFormat(claim) => VerifyError::BadClaim(claim),
            ErrorKind::Json(_) => VerifyError::Malformed(
                "the token payload is not a JSON object without duplicate claims",
            ),
            other => panic!("unexpected {other:?}"),
        })
    }
}
