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

    /// Whether the pattern says nothing about which characters a value holds, only about its
    /// shape: it has a wildcard and is made of nothing but `?`, `*`, `**`, classes that admit
    /// every character but `/`, and `/`. Replacing a matching value's characters (other than `/`)
    /// by any others keeps it matching, so it matches every value of its shape: `*` every value
    /// without a `/`, `?*` every non-empty one of those, `**` and `***` every value, `*/*` every
    /// `a/b`, `**/*` every value holding a `/`, `?` every one-character value. Branch, tag,
    /// group, project and environment names are chosen by whoever creates them, in any shape, so
    /// on a claim that identifies the job such a condition restricts nothing (lint TB102). A
    /// literal character or a narrower class (`v*`, `*-*`, `[a-z]*`) states an intent the lint
    /// cannot judge, and plain text is never a match-everything.
    pub fn matches_everything(&self) -> bool {
        let Self::Glob { source, .. } = self else {
            return false;
        };
        let pieces = pieces(source).expect("a compiled pattern tokenizes");
        pieces.iter().any(|p| !matches!(p, Piece::Literal('/')))
            && pieces.iter().all(Piece::admits_any_character)
    }
}

impl Pattern {
    /// A value the pattern matches, for probing what a policy admits (`policy diff`): the text
    /// itself, or the glob with each wildcard filled in (`*` and `?` by `x`, `**` by `x/x`, a
    /// class by a member). `None` when no such value is found (a class of `/` alone, say).
    pub fn sample(&self) -> Option<String> {
        let Self::Glob { source, regex } = self else {
            return Some(self.source().to_owned());
        };
        let pieces = pieces(source).ok()?;
        let value: String = pieces.iter().map(Piece::sample).collect::<Option<_>>()?;
        regex.is_match(&value).then_some(value)
    }
}

/// One element of a glob.
#[derive(Debug)]
enum Piece {
    /// A character the value must hold as written (after `\`, any character).
    Literal(char),
    /// `?`: one character other than `/`.
    One,
    /// `*`: any run of characters other than `/`.
    Star,
    /// `**`: any run of characters.
    DoubleStar,
    /// `[...]`: one character other than `/` among (or, negated, outside) inclusive ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Piece {
    fn regex(&self) -> String {
        match self {
            Self::Literal(c) => regex::escape(&c.to_string()),
            Self::One => "[^/]".into(),
            Self::Star => "[^/]*".into(),
            Self::DoubleStar => "(?s:.*)".into(),
            Self::Class { negated, ranges } => class_regex(*negated, ranges),
        }
    }

    /// Some text the piece accepts.
    fn sample(&self) -> Option<String> {
        match self {
            Self::Literal(c) => Some(c.to_string()),
            Self::One | Self::Star => Some("x".into()),
            Self::DoubleStar => Some("x/x".into()),
            Self::Class { negated, ranges } => {
                let member =
                    |c: &char| ranges.iter().any(|(start, end)| (start..=end).contains(&c));
                let pick = if *negated {
                    "xyzqXYZQ019_-.".chars().find(|c| !member(c))
                } else {
                    ranges
                        .iter()
                        .flat_map(|&(start, end)| (start..=end).take(2))
                        .find(|c| *c != '/')
                };
                pick.map(String::from)
            }
        }
    }

    /// Whether the piece accepts any character in its place (a literal `/` counts: it only
    /// fixes where a segment ends).
    fn admits_any_character(&self) -> bool {
        match self {
            Self::Literal(c) => *c == '/',
            Self::One | Self::Star | Self::DoubleStar => true,
            Self::Class {
                negated: true,
                ranges,
            } => ranges.iter().all(|r| *r == ('/', '/')),
            Self::Class {
                negated: false,
                ranges,
            } => covers_all_but_slash(ranges),
        }
    }
}

/// Whether `ranges` hold every `char` except perhaps `/` (surrogates are no `char`s).
fn covers_all_but_slash(ranges: &[(char, char)]) -> bool {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    let ignorable = |c: u32| c == u32::from('/') || (0xD800..0xE000).contains(&c);
    let mut next = 0u32;
    for (start, end) in sorted {
        if !(next..u32::from(start)).all(ignorable) {
            return false;
        }
        next = next.max(u32::from(end) + 1);
    }
    next > u32::from(char::MAX)
}

fn pieces(glob: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        pieces.push(match c {
            '*' if chars.next_if_eq(&'*').is_some() => Piece::DoubleStar,
            '*' => Piece::Star,
            '?' => Piece::One,
            '[' => class(&mut chars)?,
            '\\' => match chars.next() {
                Some(escaped) => Piece::Literal(escaped),
                None => return Err("a pattern cannot end with `\\`".into()),
            },
            other => Piece::Literal(other),
        });
    }
    Ok(pieces)
}

fn translate(glob: &str) -> Result<String, String> {
    Ok(pieces(glob)?.iter().map(Piece::regex).collect())
}

/// Parses a `[...]` class whose `[` was consumed.
fn class(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<Piece, String> {
    let negated = chars.next_if(|c| matches!(c, '!' | '^')).is_some();
    let mut ranges = Vec::new();
    loop {
        let start = match chars.next() {
            None => return Err("unclosed `[` in pattern".into()),
            Some(']') if !ranges.is_empty() => break,
            Some(c) => c,
        };
        // `a-z` is a range unless the `-` is last (`[a-]`): then both are members.
        let mut ahead = chars.clone();
        if ahead.next() == Some('-') && ahead.peek().is_some_and(|end| *end != ']') {
            chars.next();
            let end = chars.next().expect("peeked");
            if end < start {
                return Err(format!("`{start}-{end}` is an empty range"));
            }
            ranges.push((start, end));
        } else {
            ranges.push((start, start));
        }
    }
    Ok(Piece::Class { negated, ranges })
}

/// A class as a regex. Classes never match `/`, like `?`: intersecting with `[^/]` keeps them
/// inside one path segment.
fn class_regex(negated: bool, ranges: &[(char, char)]) -> String {
    let members: String = ranges
        .iter()
        .map(|&(start, end)| {
            if start == end {
                class_member(start)
            } else {
                format!("{}-{}", class_member(start), class_member(end))
            }
        })
        .collect();
    if negated {
        format!("[^/{members}]")
    } else {
        format!("[{members}&&[^/]]")
    }
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

    /// (pattern, TB102 fires, what it matches)
    const MATCH_EVERYTHING: &[(&str, bool, &str)] = &[
        ("main", false, "one name"),
        ("v*", false, "names starting with v"),
        ("release-*", false, "names starting with release-"),
        ("*-*", false, "names holding a -"),
        ("[a-z]*", false, "names starting with a lowercase letter"),
        ("[!x]*", false, "names not starting with x"),
        ("\\*", false, "the name *"),
        ("*", true, "every value without a /"),
        ("**", true, "every value"),
        ("***", true, "every value"),
        ("?*", true, "every non-empty value without a /"),
        ("*?", true, "every non-empty value without a /"),
        ("**?", true, "every non-empty value"),
        ("?", true, "every one-character value"),
        ("*/*", true, "every a/b"),
        ("**/*", true, "every value holding a /"),
        ("*/**", true, "every value holding a /"),
        ("[!/]*", true, "every value without a /, spelt as a class"),
        (
            "[\0-\u{10ffff}]*",
            true,
            "every value without a /, spelt as a range",
        ),
        (
            "[\0-.0-\u{10ffff}]?",
            true,
            "every one-character value, / skipped",
        ),
        ("[\0-\u{10fffe}]*", false, "all but values holding U+10FFFF"),
    ];

    #[test]
    fn match_everything_means_made_only_of_wildcards() {
        for (glob, fires, what) in MATCH_EVERYTHING {
            let pattern = Pattern::compile(glob).unwrap();
            assert_eq!(pattern.matches_everything(), *fires, "{glob:?} ({what})");
        }
        let no_wildcard = Pattern::compile("\\/").unwrap();
        assert!(!no_wildcard.matches_everything(), "the name / alone");
    }

    #[test]
    fn match_everything_is_blind_to_which_characters_a_value_holds() {
        let values = [
            "main",
            "v1.2",
            "x-y",
            "release-1",
            "*",
            "a",
            "",
            "feature/x",
            "acme/sub/web",
        ];
        let renamed = |value: &str, to: char| -> String {
            value
                .chars()
                .map(|c| if c == '/' { c } else { to })
                .collect()
        };
        for (glob, fires, _) in MATCH_EVERYTHING {
            let pattern = Pattern::compile(glob).unwrap();
            let blind = values.iter().all(|value| {
                ['x', 'é', '\u{10ffff}']
                    .iter()
                    .all(|&to| pattern.matches(value) == pattern.matches(&renamed(value, to)))
            });
            assert_eq!(blind, *fires, "{glob:?}");
        }
    }

    #[test]
    fn a_shape_only_pattern_matches_any_value_of_its_shape() {
        let cases: &[(&str, &str, bool)] = &[
            ("?*", "feature-x", true),
            ("?*", "", false),
            ("?*", "a/b", false),
            ("**/*", "acme/web", true),
            ("**/*", "web", false),
            ("*/*", "acme/web", true),
            ("*/*", "acme/sub/web", false),
        ];
        for (glob, value, expected) in cases {
            let pattern = Pattern::compile(glob).unwrap();
            assert_eq!(pattern.matches(value), *expected, "{glob:?} vs {value:?}");
        }
    }
}
