//! Reading the policy file: TOML into raw types, then [`super::compile`]. The only policy module
//! that touches the file system, and only at start.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::Policy;

/// A policy that cannot be used, with the place in the file that is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The policy file.
    pub file: PathBuf,
    /// 1-based line, 0 when the problem is not at one place.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// What is wrong and, where it helps, how to fix it.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (0, _) => write!(f, "{}: {}", self.file.display(), self.message),
            (line, 0) => write!(f, "{}:{line}: {}", self.file.display(), self.message),
            (line, column) => write!(
                f,
                "{}:{line}:{column}: {}",
                self.file.display(),
                self.message
            ),
        }
    }
}

impl std::error::Error for PolicyError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub audience: Spanned<String>,
    #[serde(default, rename = "issuer")]
    pub issuers: Vec<Spanned<RawIssuer>>,
    #[serde(default, rename = "role")]
    pub roles: BTreeMap<Spanned<String>, Spanned<RawRole>>,
    #[serde(default, rename = "token")]
    pub tokens: BTreeMap<Spanned<String>, Spanned<RawToken>>,
    /// The default of every role's and token's `token_uses`.
    pub token_uses: Option<Spanned<RawUses>>,
    #[serde(default, rename = "delegate")]
    pub delegates: BTreeMap<Spanned<String>, Spanned<RawDelegate>>,
}

/// `[delegate.NAME]` in the root policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDelegate {
    pub file: Spanned<String>,
    pub require: Spanned<RawRule>,
    pub role_arns: Spanned<Vec<Spanned<String>>>,
    pub max_duration: Option<Spanned<String>>,
    pub tokens: Option<Spanned<bool>>,
    /// The audiences the file's `[token.*]` grants may issue for; none by default.
    pub audiences: Option<Spanned<Vec<String>>>,
}

/// A delegated file: roles and tokens in the root's format, and nothing else (no `audience`,
/// `[[issuer]]`, `token_uses` default or `[delegate.*]`: those are the platform team's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDelegated {
    #[serde(default, rename = "role")]
    pub roles: BTreeMap<Spanned<String>, Spanned<RawRole>>,
    #[serde(default, rename = "token")]
    pub tokens: BTreeMap<Spanned<String>, Spanned<RawToken>>,
}

/// `token_uses`: a count, or `"unlimited"` (how a grant opts out of the global default).
#[derive(Debug)]
pub(crate) enum RawUses {
    Count(i64),
    Word(String),
}

/// By hand rather than `#[serde(untagged)]`, whose error names this type instead of saying what
/// to write.
impl<'de> Deserialize<'de> for RawUses {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UsesVisitor;

        impl serde::de::Visitor<'_> for UsesVisitor {
            type Value = RawUses;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("token_uses: a whole number from 1 to 1000, or \"unlimited\"")
            }

            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<RawUses, E> {
                Ok(RawUses::Count(value))
            }

            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<RawUses, E> {
                Ok(RawUses::Count(i64::try_from(value).unwrap_or(i64::MAX)))
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<RawUses, E> {
                Ok(RawUses::Word(value.to_owned()))
            }
        }

        deserializer.deserialize_any(UsesVisitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawToken {
    pub audience: Spanned<String>,
    pub max_ttl: Option<Spanned<String>>,
    #[serde(default)]
    pub claims: Vec<Spanned<String>>,
    pub subject: Option<Spanned<String>>,
    pub token_uses: Option<Spanned<RawUses>>,
    #[serde(default)]
    pub allow: Vec<Spanned<RawRule>>,
}

/// One `[[….allow]]` table: claim conditions and rule options.
pub(crate) type RawRule = BTreeMap<Spanned<String>, Spanned<RawValue>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIssuer {
    pub url: Spanned<String>,
    pub jwks_url: Option<Spanned<String>>,
    pub algorithms: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRole {
    pub arn: Spanned<String>,
    pub max_duration: Option<Spanned<String>>,
    /// Spanned as a whole too, so lint findings about the tags can point at the key's line.
    pub session_tags: Option<Spanned<Vec<Spanned<String>>>>,
    pub session_policy: Option<Spanned<String>>,
    pub token_uses: Option<Spanned<RawUses>>,
    #[serde(default)]
    pub allow: Vec<Spanned<RawRule>>,
}

/// A rule entry: a claim condition (string or list of strings) or a rule option.
#[derive(Debug)]
pub(crate) enum RawValue {
    One(String),
    Any(Vec<String>),
    Flag(bool),
}

/// By hand rather than `#[serde(untagged)]`, which buffers every value and tries each variant
/// in turn: this is most of the time it takes to compile a policy of 10,000 rules.
impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;

        impl<'de> serde::de::Visitor<'de> for ValueVisitor {
            type Value = RawValue;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a list of strings, or true/false")
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<RawValue, E> {
                Ok(RawValue::One(value.to_owned()))
            }

            fn visit_string<E: serde::de::Error>(self, value: String) -> Result<RawValue, E> {
                Ok(RawValue::One(value))
            }

            fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<RawValue, E> {
                Ok(RawValue::Flag(value))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawValue, A::Error> {
                let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(2));
                while let Some(value) = seq.next_element::<String>()? {
                    values.push(value);
                }
                Ok(RawValue::Any(values))
            }
        }

        deserializer.deserialize_any(ValueVisitor)
    }
}

/// Reads and compiles the policy at `path`; session policy files are read relative to it.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
        file: path.to_owned(),
        line: 0,
        column: 0,
        message: format!("cannot read the policy file: {e}"),
    })?;
    let base = path.parent().unwrap_or(Path::new(".")).to_owned();
    parse(path, &text, &|relative| {
        std::fs::read_to_string(base.join(relative)).map_err(|e| e.to_string())
    })
}

/// Compiles policy `text`, named `file` in messages; `read` returns a session policy file's text.
pub fn parse(
    file: &Path,
    text: &str,
    read: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Policy, PolicyError> {
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map_or((0, 0), |span| line_column(text, span.start));
        PolicyError {
            file: file.to_owned(),
            line,
            column,
            message: e.message().to_owned(),
        }
    })?;
    crate::compile::compile(raw, text, read).map_err(|e| {
        // An error in a delegated file is told at its place in that file.
        let (file, text) = match &e.source {
            Some(source) => (beside(file, &source.file), source.text.as_str()),
            None => (file.to_owned(), text),
        };
        let (line, column) = line_column(text, e.offset);
        PolicyError {
            file,
            line,
            column,
            message: e.message,
        }
    })
}

/// `relative` (a delegated file, as the root policy names it) beside the root policy `root`.
pub fn beside(root: &Path, relative: &str) -> PathBuf {
    root.parent().unwrap_or(Path::new("")).join(relative)
}

/// A delegated file's name (relative to the root policy's directory) and text, for messages
/// about places in it.
#[derive(Debug)]
pub(crate) struct Source {
    pub file: String,
    pub text: String,
}

/// Where each line starts, so a policy of thousands of rules finds each rule's line with a binary
/// search instead of rescanning the text.
pub(crate) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(at, _)| at + 1))
            .collect();
        Self { starts }
    }

    /// 1-based line of a byte offset: a binary search, for compiling many rules of one file
    /// ([`line_column`] scans the text, which is fine for the one error a parse reports).
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|start| *start <= offset)
    }
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
