//! Glob patterns for claim conditions. `*` and `?` stay inside one path segment, `**` crosses
//! `/`, `[...]` is a character class (`[!...]` or `[^...]` negates it). Git refs and GitLab paths
//! cannot contain `*`, `?` or `[`, so a pattern without them is compared as plain text.
//! Every compiled pattern is anchored as `^(?:...)$`: an unanchored alternation was a real bypass
//! in a peer project.

use regex::Regex;

/// A compiled condition value.
#[derive(Debug, Clone)]
pub enum Pattern {
    /// No glob syntax: the claim must equal the text.
    Exact(String),
    /// Glob syntax, compiled to an anchored regular expression.
    Glob { source: String, regex: Regex },
}

impl Pattern {
    /// Compiles one condition value; the error says what is wrong with it.
    pub fn compile(source: &str) -> Result<Self, String> {
        if source.is_empty() {
            return Err("an empty pattern matches nothing; remove it".into());
        }
        if !source.contains(['*', '?', '[', '\\']) {
            return Ok(Self::Exact(source.to_owned()));
        }
        let body = translate(source)?;
        let regex = Regex::new(&format!("^(?:{body})$")).map_err(|e| e.to_string())?;
        Ok(Self::Glob {
            source: source.to_owned(),
            regex,
        })
    }

    /// Whether a claim value matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(text) => text == value,
            Self::Glob { regex, .. } => regex.is_match(value),
        }
    }

    /// The pattern as written in the policy.
    pub fn source(&self) -> &str {
        match self {
            Self::Exact(text) => text,
            Self::Glob { source, .. } => source,
        }
    }

    /// Whether the pattern matches every value (`*` within a segment or `**` anywhere).
    pub fn matches_everything(&self) -> bool {
        matches!(self.source(), "*" | "**")
    }
}

fn translate(glob: &str) -> Result<String, String> {
    let mut out = String::with_capacity(glob.len() * 2);
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                out.push_str("(?s:.*)");
            }
            '*' => out.push_str("[^/]*"),
            '?' => out.push_str("[^/]"),
            '[' => out.push_str(&class(&mut chars)?),
            '\\' => match chars.next() {
                Some(escaped) => out.push_str(&regex::escape(&escaped.to_string())),
                None => return Err("a pattern cannot end with `\\`".into()),
            },
            other => out.push_str(&regex::escape(&other.to_string())),
        }
    }
    Ok(out)
}

/// Translates a `[...]` class whose `[` was consumed. Classes never match `/`, like `?`.
fn class(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<String, String> {
    let negated = matches!(chars.peek(), Some('!' | '^'));
    if negated {
        chars.next();
    }
    let mut members = String::new();
    let mut first = true;
    loop {
        let start = match chars.next() {
            None => return Err("unclosed `[` in pattern".into()),
            Some(']') if !first => break,
            Some(c) => c,
        };
        first = false;
        // `a-z` is a range unless the `-` is last (`[a-]`): then both are members.
        let mut ahead = chars.clone();
        if ahead.next() == Some('-') && ahead.peek().is_some_and(|end| *end != ']') {
            chars.next();
            let end = chars.next().expect("peeked");
            if end < start {
                return Err(format!("`{start}-{end}` is an empty range"));
            }
            members.push_str(&format!("{}-{}", class_member(start), class_member(end)));
        } else {
            members.push_str(&class_member(start));
        }
    }
    // Intersecting with `[^/]` keeps a class inside one path segment, like `?`.
    Ok(if negated {
        format!("[^/{members}]")
    } else {
        format!("[{members}&&[^/]]")
    })
}

/// Every member as a `\x{…}` escape: inside a class the regex crate gives `--`, `&&`, `~~`, `[`
/// and `^` meanings of their own (a fuzzer found `[!e--x]` turning into a set difference that let
/// `/` through), and an escape has none.
fn class_member(c: char) -> String {
    format!("\\x{{{:x}}}", c as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_documented() {
        let cases: &[(&str, &str, bool)] = &[
            ("main", "main", true),
            ("main", "main2", false),
            ("main", "MAIN", false),
            ("release/*", "release/1.0", true),
            ("release/*", "release/a/b", false),
            ("release/**", "release/a/b", true),
            ("release/**", "release/", true),
            ("release/**", "releases/a", false),
            ("v*", "v1.2.3", true),
            ("v*", "xv1", false),
            ("v*", "v1/evil", false),
            ("acme/*", "acme/web", true),
            ("acme/*", "acme/sub/web", false),
            ("acme/*", "acme-evil/web", false),
            ("acme/**", "acme/sub/web", true),
            ("v?.0", "v1.0", true),
            ("v?.0", "v10.0", false),
            ("v?.0", "v/.0", false),
            ("v[0-9].*", "v7.1", true),
            ("v[0-9].*", "vx.1", false),
            ("v[!0-9]", "vx", true),
            ("v[!0-9]", "v1", false),
            ("v[!0-9]", "v/", false),
            ("a[/]b", "a/b", false),
            ("a.b", "axb", false),
            ("a+b*", "aab", false),
            ("a+b*", "a+bc", true),
            ("main|.*", "anything", false),
            ("main|*", "main|x", true),
            ("\\*", "*", true),
            ("\\*", "x", false),
        ];
        for (glob, value, expected) in cases {
            let pattern = Pattern::compile(glob).unwrap();
            assert_eq!(pattern.matches(value), *expected, "{glob:?} vs {value:?}");
        }
    }

    #[test]
    fn classes_cannot_smuggle_regex_set_operations() {
        // Found by fuzzing: `--` inside a class was the regex crate's set difference, and a
        // negated class minus a range holding `/` matched `/`.
        let cases: &[(&str, &str, bool)] = &[
            ("v[!,-9]", "v/", false),
            ("v[,-9]", "v/", false),
            ("v[,-9]", "v5", true),
            ("v[--/]", "v.", true),
            ("v[--/]", "v/", false),
            ("v[!--/]", "v/", false),
            ("v[&&]", "v&", true),
            ("v[~~]", "v~", true),
            ("v[a-]", "v-", true),
            ("v[a-]", "vb", false),
            ("v[!a&&b]", "v/", false),
            ("v[\\]]", "v]", false),
        ];
        for (glob, value, expected) in cases {
            let pattern = Pattern::compile(glob).unwrap();
            assert_eq!(pattern.matches(value), *expected, "{glob:?} vs {value:?}");
        }
        let crash = "v[!m\u{feff}xc\0\0\0e--\x0c\0\0\0_ttl0,-9\x01\x05\x01\0\0\x01\0\0\0\r]";
        assert!(
            Pattern::compile(crash).is_err(),
            "`e--` is a reversed range"
        );
        for reversed in ["v[!e--x]", "v[a--]", "[z-a]"] {
            assert!(Pattern::compile(reversed).is_err(), "{reversed:?}");
        }
    }

    #[test]
    fn broken_globs_are_refused_with_a_reason() {
        for glob in ["", "v[0-9", "[]", "x\\"] {
            assert!(
                Pattern::compile(glob).is_err(),
                "{glob:?} should not compile"
            );
        }
    }

    #[test]
    fn only_star_and_double_star_match_everything() {
        assert!(Pattern::compile("*").unwrap().matches_everything());
        assert!(Pattern::compile("**").unwrap().matches_everything());
        assert!(!Pattern::compile("v*").unwrap().matches_everything());
    }
}
