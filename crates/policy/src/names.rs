//! Validated STS inputs. moto accepts almost anything, and real STS rejects bad values with an
//! error that would reach the caller as a 502, so every value is checked here, before the call,
//! against the limits in the AssumeRole API reference.

use std::fmt;
use std::time::Duration;

use regex::Regex;
use std::sync::LazyLock;

static ROLE_ARN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:arn:aws(?:-cn|-us-gov)?:iam::[0-9]{12}:role/(?:[A-Za-z0-9_+=,.@-]+/)*[A-Za-z0-9_+=,.@-]{1,64})$")
        .expect("static regex")
});
// RoleSessionName and SourceIdentity share one alphabet, ASCII only (`\w` would take Unicode).
static SESSION_CHARS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?:[A-Za-z0-9_+=,.@-]+)$").expect("static regex"));
// Tag keys and values: Unicode letters, digits, white space and `_ . : / = + - @`.
static TAG_CHARS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?:[\p{L}\p{Z}\p{N}_.:/=+\-@]*)$").expect("static regex"));

/// Whether STS takes `text` in a session tag key or value: `TAG_CHARS`, decided without the
/// regex for ASCII text, where `\p{L}`, `\p{N}` and `\p{Z}` are letters, digits and the space.
/// Compiling the Unicode classes costs ~0.4 ms of CPU, a twentieth of a cold start, and tag keys
/// (checked when the policy loads) and nearly all values are ASCII.
fn legal_tag_text(text: &str) -> bool {
    if text.is_ascii() {
        text.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b" _.:/=+-@".contains(&b))
    } else {
        TAG_CHARS.is_match(text)
    }
}

// A role (or token grant) name: what a caller may put in `?role=`, so no glob and no path.
static ROLE_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,63})$").expect("static regex"));

/// Most session tags one AssumeRole call may carry.
pub const MAX_SESSION_TAGS: usize = 50;
/// Longest session policy, in characters, that STS takes as plain text.
pub const MAX_SESSION_POLICY_CHARS: usize = 2048;

/// An IAM role ARN (`arn:aws:iam::123456789012:role/name`, role paths allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleArn(String);

impl RoleArn {
    /// Checks the ARN's shape; the error says what a role ARN looks like.
    pub fn parse(arn: &str) -> Result<Self, String> {
        if arn.len() <= 2048 && ROLE_ARN.is_match(arn) {
            Ok(Self(arn.to_owned()))
        } else {
            Err(format!(
                "{arn:?} is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)"
            ))
        }
    }

    /// The ARN as STS expects it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoleArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of a role or token grant: 1 to 64 of `A-Z a-z 0-9 _ . -`, starting with a letter or
/// digit. The policy's names and a caller's `role` parameter go through this one check, so a
/// caller can never name something the policy could not define (a glob, a path, a blank).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoleName(String);

impl RoleName {
    /// Checks the name; the error says which names are legal.
    pub fn parse(name: &str) -> Result<Self, String> {
        if ROLE_NAME.is_match(name) {
            Ok(Self(name.to_owned()))
        } else {
            Err(format!(
                "{name:?} must be 1-64 of A-Z a-z 0-9 _ . - and start with a letter or digit"
            ))
        }
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A session length AssumeRole accepts: 15 minutes to 12 hours. A role's `max_duration`, a
/// caller's `duration_seconds` and the floor under every session are this one range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SessionDuration(Duration);

impl SessionDuration {
    /// STS's shortest session.
    pub const MIN: Self = Self(Duration::from_secs(900));
    /// STS's longest session (and the most a role's `MaxSessionDuration` can allow).
    pub const MAX: Self = Self(Duration::from_secs(12 * 3600));

    /// `duration` when STS accepts it; the error gives the range in seconds.
    pub fn parse(duration: Duration) -> Result<Self, String> {
        if (Self::MIN.0..=Self::MAX.0).contains(&duration) {
            Ok(Self(duration))
        } else {
            Err(format!(
                "must be between {} and {} seconds",
                Self::MIN.as_secs(),
                Self::MAX.as_secs()
            ))
        }
    }

    /// The length, for arithmetic with other durations.
    pub const fn as_duration(self) -> Duration {
        self.0
    }

    /// The length in whole seconds.
    pub const fn as_secs(self) -> u64 {
        self.0.as_secs()
    }
}

/// A `RoleSessionName`: 2 to 64 characters of `[\w+=,.@-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionName(String);

impl SessionName {
    /// `gitlab-<project_id>-<job_id>`: unique per job and readable in CloudTrail.
    pub fn for_job(project_id: &str, job_id: &str) -> Result<Self, String> {
        let name = format!("gitlab-{project_id}-{job_id}");
        if (2..=64).contains(&name.len()) && SESSION_CHARS.is_match(&name) {
            Ok(Self(name))
        } else {
            Err("project_id and job_id do not make a valid RoleSessionName".into())
        }
    }

    /// The name as STS expects it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A `SourceIdentity`: 2 to 64 characters of `[\w+=,.@-]`, not starting with `aws:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceIdentity(String);

impl SourceIdentity {
    /// Checks a user login against STS's rules; never rewrites it.
    pub fn parse(value: &str) -> Result<Self, String> {
        let legal = (2..=64).contains(&value.len())
            && SESSION_CHARS.is_match(value)
            && !value.to_ascii_lowercase().starts_with("aws:");
        if legal {
            Ok(Self(value.to_owned()))
        } else {
            Err(
                "is not a legal SourceIdentity (2-64 characters of letters, digits and _+=,.@-)"
                    .into(),
            )
        }
    }

    /// The value as STS expects it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One session tag, key and value both checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTag {
    key: String,
    value: String,
}

impl SessionTag {
    /// The tag key token-broker uses for a claim: `gitlab:<claim>`.
    pub fn key_for_claim(claim: &str) -> Result<String, String> {
        let key = format!("gitlab:{claim}");
        if key.chars().count() <= 128 && legal_tag_text(&key) {
            Ok(key)
        } else {
            Err(format!(
                "claim {claim:?} does not make a legal session tag key"
            ))
        }
    }

    /// A tag for a claim value; values STS would refuse are refused here, never rewritten.
    pub fn new(key: String, value: &str) -> Result<Self, String> {
        if value.chars().count() <= 256 && legal_tag_text(value) {
            Ok(Self {
                key,
                value: value.to_owned(),
            })
        } else {
            Err("is not a legal session tag value (at most 256 letters, digits, spaces and _.:/=+-@)".into())
        }
    }

    /// `gitlab:<claim>`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The claim's value, unchanged.
    pub fn value(&self) -> &str {
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_arns_are_checked_and_anchored() {
        let cases = [
            ("arn:aws:iam::123456789012:role/deploy", true),
            ("arn:aws:iam::123456789012:role/ci/deploy-web", true),
            ("arn:aws-us-gov:iam::123456789012:role/x", true),
            ("arn:aws:iam::12345678901:role/short-account", false),
            ("arn:aws:iam::123456789012:user/alice", false),
            ("xarn:aws:iam::123456789012:role/deploy", false),
            ("arn:aws:iam::123456789012:role/deploy\n", false),
            ("arn:aws:iam::123456789012:role/", false),
            ("arn:aws:iam::123456789012:role/a*b", false),
        ];
        for (arn, ok) in cases {
            assert_eq!(RoleArn::parse(arn).is_ok(), ok, "{arn:?}");
        }
    }

    #[test]
    fn session_names_come_from_project_and_job() {
        assert_eq!(
            SessionName::for_job("4242", "7654321").unwrap().as_str(),
            "gitlab-4242-7654321"
        );
        assert!(SessionName::for_job("42 42", "1").is_err());
        assert!(SessionName::for_job("1", &"9".repeat(64)).is_err());
    }

    #[test]
    fn source_identity_is_refused_not_rewritten() {
        let cases = [
            ("ada", true),
            ("ada.lovelace@acme", true),
            ("a", false),
            ("ada lovelace", false),
            ("aws:root", false),
            ("AWS:root", false),
            ("Aws:x", false),
            ("ada/evil", false),
            ("ädä", false),
            (&"a".repeat(64), true),
            (&"a".repeat(65), false),
        ];
        for (value, ok) in cases {
            assert_eq!(SourceIdentity::parse(value).is_ok(), ok, "{value:?}");
        }
    }

    #[test]
    fn tag_values_follow_sts_rules() {
        let key = SessionTag::key_for_claim("ref").unwrap();
        assert_eq!(key, "gitlab:ref");
        let cases = [
            ("main", true),
            ("release/1.0", true),
            ("feature@x+y=z", true),
            ("", true),
            ("a\"b", false),
            ("a\nb", false),
            ("semi;colon", false),
            ("tilde~", false),
            (&"x".repeat(256), true),
            (&"x".repeat(257), false),
        ];
        for (value, ok) in cases {
            assert_eq!(SessionTag::new(key.clone(), value).is_ok(), ok, "{value:?}");
        }
    }

    #[test]
    fn the_ascii_shortcut_for_tag_text_agrees_with_the_regex() {
        for byte in 0..=127u8 {
            let text = format!("a{}b", byte as char);
            assert_eq!(legal_tag_text(&text), TAG_CHARS.is_match(&text), "{text:?}");
        }
        // Beyond ASCII the regex decides: letters and numbers of any script, separators, but not
        // a combining mark or a control character.
        for (text, ok) in [
            ("é", true),
            ("東京", true),
            ("٣", true),
            ("a\u{00a0}b", true),
            ("e\u{0301}", false),
            ("a\u{0085}", false),
        ] {
            assert_eq!(legal_tag_text(text), ok, "{text:?}");
        }
    }

    #[test]
    fn role_names_are_plain_names_and_durations_are_within_sts_limits() {
        for name in ["deploy", "a", "web.prod_1-x", &"r".repeat(64)] {
            assert!(RoleName::parse(name).is_ok(), "{name}");
        }
        for name in [
            "",
            "-x",
            ".x",
            "deploy*",
            "a/b",
            "a b",
            "é",
            &"r".repeat(65),
        ] {
            assert!(RoleName::parse(name).is_err(), "{name:?}");
        }
        let secs = |s| SessionDuration::parse(Duration::from_secs(s));
        assert_eq!(secs(900).map(|d| d.as_secs()), Ok(900));
        assert_eq!(secs(43_200).map(|d| d.as_secs()), Ok(43_200));
        assert!(secs(899).is_err() && secs(43_201).is_err() && secs(0).is_err());
    }
}
