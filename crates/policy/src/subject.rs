//! The `sub` of the tokens the broker issues. AWS IAM trust policies can test only `aud` and
//! `sub`, so `sub` is what a relying party pins: it is built from facts that cannot be renamed or
//! re-registered (the GitLab instance and numeric ids), never from GitLab's path-based `sub`.
//!
//! A template is literal text and placeholders from a fixed set. Every placeholder stands between
//! `:` separators, and every value is percent-encoded outside `[A-Za-z0-9._~/-]`, so no claim
//! value can forge a separator (`:`) or an IAM wildcard (`*`, `?`): `…:project_id:4242:…` in a
//! trust policy can only ever match project 4242.

use std::fmt;

use crate::Claims;

/// The template used when a `[token.NAME]` sets no `subject`; `:environment:{environment}` is
/// appended when every rule of the grant requires an environment.
pub const DEFAULT_SUBJECT: &str =
    "{issuer_host}:project_id:{project_id}:ref_type:{ref_type}:ref:{ref}";

/// What a template may name. Paths (`project_path`, `namespace_path`) are left out on purpose:
/// they change on a rename and can be re-registered by someone else.
const PLACEHOLDERS: [&str; 7] = [
    "issuer_host",
    "project_id",
    "namespace_id",
    "ref_type",
    "ref",
    "environment",
    "pipeline_source",
];

/// A compiled `subject` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTemplate {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Claim(&'static str),
}

impl SubjectTemplate {
    /// Parses a template. Refused: unknown placeholders (path claims above all), a template that
    /// names neither `{project_id}` nor `{namespace_id}` or lacks `{issuer_host}` (ids are unique
    /// only within one GitLab instance), `{ref}` without `{ref_type}` (lint TB104's confusion,
    /// moved into the relying party's trust policy), placeholders not delimited by `:`, and literal text
    /// outside `[A-Za-z0-9_.:/-]`.
    pub fn parse(source: &str) -> Result<Self, String> {
        let parts = split(source)?;
        check_delimited(&parts)?;
        let names = |name: &str| parts.contains(&Part::Claim(placeholder(name)));
        if !names("project_id") && !names("namespace_id") {
            return Err(
                "names neither {project_id} nor {namespace_id}: a relying party could not pin a project"
                    .into(),
            );
        }
        if !names("issuer_host") {
            return Err(
                "has no {issuer_host}: ids are unique only within one GitLab instance".into(),
            );
        }
        if names("ref") && !names("ref_type") {
            return Err(
                "names {ref} without {ref_type}: a tag named like a branch would get its subject"
                    .into(),
            );
        }
        Ok(Self {
            source: source.to_owned(),
            parts,
        })
    }

    /// The default template, with the environment when the grant requires one.
    pub fn default_for(requires_environment: bool) -> Self {
        let source = if requires_environment {
            format!("{DEFAULT_SUBJECT}:environment:{{environment}}")
        } else {
            DEFAULT_SUBJECT.to_owned()
        };
        Self::parse(&source).expect("the default template is valid")
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The subject for `claims`, or the name of a claim the token lacks. `{environment}` is
    /// empty for a job that names none (GitLab omits the claim then, and no environment is
    /// called ""), so one template serves jobs with and without one.
    pub fn render(&self, claims: &Claims) -> Result<String, &'static str> {
        let mut subject = String::new();
        for part in &self.parts {
            let value = match part {
                Part::Literal(text) => {
                    subject.push_str(text);
                    continue;
                }
                Part::Claim("issuer_host") => issuer_host(claims),
                Part::Claim("environment") => claims.get("environment").unwrap_or(""),
                Part::Claim(name) => claims.get(name).ok_or(*name)?,
            };
            subject.push_str(&escape(value));
        }
        Ok(subject)
    }
}

impl fmt::Display for SubjectTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn placeholder(name: &str) -> &'static str {
    PLACEHOLDERS
        .into_iter()
        .find(|known| *known == name)
        .unwrap_or("")
}

fn split(source: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = source;
    loop {
        let (literal, after) = match rest.split_once('{') {
            Some((literal, after)) => (literal, Some(after)),
            None => (rest, None),
        };
        if !literal.is_empty() {
            check_literal(literal)?;
            parts.push(Part::Literal(literal.to_owned()));
        }
        let Some(after) = after else { break };
        let (name, tail) = after.split_once('}').ok_or("has a `{` without its `}`")?;
        match placeholder(name) {
            "" => {
                return Err(format!(
                    "names {{{name}}}, which is not one of {{{}}} (paths are left out: they can be renamed and re-registered)",
                    PLACEHOLDERS.join("}, {")
                ));
            }
            known => parts.push(Part::Claim(known)),
        }
        rest = tail;
    }
    if parts.is_empty() {
        return Err("is empty".into());
    }
    Ok(parts)
}

fn check_literal(literal: &str) -> Result<(), String> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-');
    match literal.chars().find(|c| !legal(*c)) {
        None => Ok(()),
        Some(c) => Err(format!(
            "has {c:?} in its text; only letters, digits and _ . : / - may stand between placeholders"
        )),
    }
}

/// Each placeholder must be bounded by `:` (or the template's ends) on both sides, so that the
/// values, which never contain `:`, cannot run into each other or into the literal text.
fn check_delimited(parts: &[Part]) -> Result<(), String> {
    for (at, part) in parts.iter().enumerate() {
        let Part::Claim(name) = part else { continue };
        let before = at.checked_sub(1).map(|i| &parts[i]);
        let after = parts.get(at + 1);
        let bounded_before = match before {
            None => true,
            Some(Part::Literal(text)) => text.ends_with(':'),
            Some(Part::Claim(_)) => false,
        };
        let bounded_after = match after {
            None => true,
            Some(Part::Literal(text)) => text.starts_with(':'),
            Some(Part::Claim(_)) => false,
        };
        if !(bounded_before && bounded_after) {
            return Err(format!("puts {{{name}}} next to something other than `:`"));
        }
    }
    Ok(())
}

/// The issuer URL without its scheme (`gitlab.example.com`, or `example.com/gitlab` for an
/// instance under a path), so two instances never share a subject.
fn issuer_host(claims: &Claims) -> &str {
    let url = claims.issuer();
    let without_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    without_scheme.trim_end_matches('/')
}

/// Percent-encodes every byte outside `[A-Za-z0-9._~/-]`: `:` (the separator), `*` and `?`
/// (IAM's wildcards), `%` itself, and anything else a ref or environment name may hold.
pub fn escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'~' | b'/' | b'-') {
            escaped.push(byte as char);
        } else {
            escaped.push_str(&format!("%{byte:02X}"));
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(issuer: &str, pairs: &[(&str, &str)]) -> Claims {
        Claims::from_pairs(issuer, pairs.iter().copied())
    }

    const JOB: [(&str, &str); 6] = [
        ("project_id", "4242"),
        ("namespace_id", "72"),
        ("ref_type", "branch"),
        ("ref", "main"),
        ("environment", "production"),
        ("pipeline_source", "push"),
    ];

    #[test]
    fn the_default_subject_names_the_instance_and_the_ids() {
        let gitlab = claims("https://gitlab.example.com", &JOB);
        let cases = [
            (
                false,
                &gitlab,
                "gitlab.example.com:project_id:4242:ref_type:branch:ref:main",
            ),
            (
                true,
                &gitlab,
                "gitlab.example.com:project_id:4242:ref_type:branch:ref:main:environment:production",
            ),
        ];
        for (environment, claims, expected) in cases {
            let subject = SubjectTemplate::default_for(environment).render(claims);
            assert_eq!(subject.as_deref(), Ok(expected));
        }
    }

    #[test]
    fn tags_and_other_instances_get_their_own_subjects() {
        let template = SubjectTemplate::default_for(false);
        let mut tag = JOB.to_vec();
        tag[2] = ("ref_type", "tag");
        tag[3] = ("ref", "v1.2.0");
        let cases = [
            (
                claims("https://gitlab.example.com", &tag),
                "gitlab.example.com:project_id:4242:ref_type:tag:ref:v1.2.0",
            ),
            (
                claims("https://gitlab.com", &JOB),
                "gitlab.com:project_id:4242:ref_type:branch:ref:main",
            ),
            (
                claims("http://127.0.0.1:8080", &JOB),
                "127.0.0.1%3A8080:project_id:4242:ref_type:branch:ref:main",
            ),
            (
                claims("https://example.com/gitlab/", &JOB),
                "example.com/gitlab:project_id:4242:ref_type:branch:ref:main",
            ),
        ];
        for (claims, expected) in cases {
            assert_eq!(template.render(&claims).as_deref(), Ok(expected));
        }
    }

    #[test]
    fn no_claim_value_can_forge_a_separator_or_a_wildcard() {
        let template = SubjectTemplate::default_for(true);
        let cases = [
            (
                "main:environment:production",
                "main%3Aenvironment%3Aproduction",
            ),
            ("release/*", "release/%2A"),
            ("a?b", "a%3Fb"),
            ("100%", "100%25"),
            ("%3A", "%253A"),
            ("feature/ünïcode", "feature/%C3%BCn%C3%AFcode"),
            ("tab\there", "tab%09here"),
        ];
        for (hostile, escaped) in cases {
            let mut job = JOB.to_vec();
            job[3] = ("ref", hostile);
            let subject = template
                .render(&claims("https://gitlab.example.com", &job))
                .unwrap();
            assert_eq!(
                subject,
                format!(
                    "gitlab.example.com:project_id:4242:ref_type:branch:ref:{escaped}:environment:production"
                ),
                "{hostile:?}"
            );
            assert_eq!(subject.matches(':').count(), 8, "{hostile:?}");
            assert!(!subject.contains(['*', '?']), "{hostile:?}");
        }
    }

    #[test]
    fn templates_are_refused_unless_they_pin_an_id_on_one_instance_with_delimited_values() {
        let cases = [
            ("{issuer_host}:project_id:{project_id}", Ok(())),
            ("{issuer_host}:ns:{namespace_id}:env:{environment}", Ok(())),
            ("{issuer_host}:{project_id}:{pipeline_source}", Ok(())),
            (
                "{issuer_host}:project_path:{project_path}",
                Err("{project_path}"),
            ),
            ("{issuer_host}:ref:{ref}:env:{environment}", Err("neither")),
            (
                "{issuer_host}:project_id:{project_id}:ref:{ref}",
                Err("without {ref_type}"),
            ),
            ("project_id:{project_id}", Err("{issuer_host}")),
            ("{issuer_host}:{project_id}{ref}", Err("next to")),
            ("{issuer_host}:p{project_id}", Err("next to")),
            ("{issuer_host}:project_id:{project_id}:*", Err("'*'")),
            ("{issuer_host}:project_id:{project_id", Err("without its")),
            ("{issuer_host}:project id:{project_id}", Err("' '")),
            ("", Err("empty")),
        ];
        for (source, expected) in cases {
            match (SubjectTemplate::parse(source), expected) {
                (Ok(_), Ok(())) => {}
                (Err(error), Err(needle)) => {
                    assert!(error.contains(needle), "{source:?}: {error}")
                }
                (got, want) => panic!("{source:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_claim_the_template_names_must_be_present_but_the_environment_may_be_empty() {
        let template =
            SubjectTemplate::parse("{issuer_host}:{project_id}:{environment}:{pipeline_source}")
                .unwrap();
        type Claims<'a> = &'a [(&'a str, &'a str)];
        let cases: [(Claims, Result<String, &str>); 2] = [
            (&JOB, Ok("gitlab.example.com:4242:production:push".into())),
            (&JOB[..4], Err("pipeline_source")),
        ];
        for (pairs, expected) in cases {
            let rendered = template.render(&claims("https://gitlab.example.com", pairs));
            assert_eq!(rendered, expected, "{pairs:?}");
        }
        let mut no_environment = JOB.to_vec();
        no_environment.remove(4);
        let rendered = template.render(&claims("https://gitlab.example.com", &no_environment));
        assert_eq!(rendered.as_deref(), Ok("gitlab.example.com:4242::push"));
    }

    #[test]
    fn a_policy_with_a_path_subject_does_not_compile_and_says_where() {
        let policy = r#"audience = "https://broker"

[[issuer]]
url = "https://gitlab.example.com"

[token.aws]
audience = "sts.amazonaws.com"
subject = "{issuer_host}:project_path:{project_path}"

[[token.aws.allow]]
project_id = "4242"
"#;
        let error = crate::parse(std::path::Path::new("policy.toml"), policy, &|_| {
            Err("no files".into())
        })
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("policy.toml:8:"), "{error}");
        assert!(error.contains("{project_path}"), "{error}");
    }

    #[test]
    fn the_default_names_the_environment_only_when_every_rule_requires_one() {
        let policy = |second_rule: &str| {
            format!(
                r#"audience = "https://broker"

[[issuer]]
url = "https://gitlab.example.com"

[token.aws]
audience = "sts.amazonaws.com"

[[token.aws.allow]]
project_id = "4242"
environment = "production"

[[token.aws.allow]]
project_id = "4242"
{second_rule}
"#
            )
        };
        let cases = [
            ("environment = \"staging\"", true),
            ("ref = \"main\"\nref_type = \"branch\"", false),
        ];
        for (second_rule, with_environment) in cases {
            let compiled = crate::parse(
                std::path::Path::new("p.toml"),
                &policy(second_rule),
                &|_| Err("no files".into()),
            )
            .unwrap();
            let subject = compiled.tokens[0].subject.source();
            assert_eq!(
                subject.ends_with(":environment:{environment}"),
                with_environment,
                "{second_rule}: {subject}"
            );
        }
    }
}
