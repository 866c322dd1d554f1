//! The verified claims of a GitLab ID token, as the policy engine sees them: the issuer plus every
//! claim that GitLab sends as a string (ids and booleans included) or as an integer.

use std::collections::BTreeMap;

use serde_json::Value;

/// Verified claims. Built by `oidc` after the signature and the registered claims are checked;
/// the policy engine only ever compares these strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    issuer: String,
    values: BTreeMap<String, String>,
}

impl Claims {
    /// Claims from a JSON object. Strings are kept as they are and integers in decimal (GitLab's
    /// `runner_id`); booleans, arrays and objects are left out, so no rule can match them.
    pub fn from_json(issuer: impl Into<String>, object: &serde_json::Map<String, Value>) -> Self {
        let values = object
            .iter()
            .filter_map(|(name, value)| match value {
                Value::String(s) => Some((name.clone(), s.clone())),
                Value::Number(n) if n.is_i64() || n.is_u64() => Some((name.clone(), n.to_string())),
                _ => None,
            })
            .collect();
        Self {
            issuer: issuer.into(),
            values,
        }
    }

    /// Claims from name/value pairs; for tests and `policy test` cases.
    pub fn from_pairs<'a>(
        issuer: impl Into<String>,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let values = pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self {
            issuer: issuer.into(),
            values,
        }
    }

    /// The token's `iss`, equal to one of the policy's issuers.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// A claim's value, or `None` when the token does not carry it as a string or integer.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Every claim with its value, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// A claim that GitLab always sends in a CI token; `""` when absent (only for log fields).
    pub fn field(&self, name: &str) -> &str {
        self.get(name).unwrap_or("")
    }
}
