//! What `build.rs` embeds: the root policy's text cut into the root's own part, the part every
//! delegated file needs (audience, issuers, `token_uses`) and each `[delegate.NAME]`; every file
//! the tree reads; and the index that answers, without compiling a file, which file defines a
//! grant and whether the tree's rules name a caller's project. Built from the tree compiled
//! whole, then read back as the broker will and compared with it, grant by grant.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::LazyPolicy;
use super::format::{EAGER, LAZY, Segment, Table, Writer};
use crate::decide::PATHS;
use crate::index::INDEXABLE;
use crate::{Grant, Pattern, Policy, PolicyError, Role, Rule, TokenGrant, parse};

/// A policy tree packed for the binary ([`LazyPolicy::from_bundle`] reads it).
#[derive(Debug)]
pub struct Bundle {
    bytes: Vec<u8>,
    /// Why the tree is compiled whole at start, if it is.
    eager: Option<String>,
}

impl Bundle {
    /// Compiles the policy `text` (named `file`; `read` returns the files it names, as for
    /// [`parse`]) and packs it: lazily, so that the broker compiles each delegated file on
    /// first use, when its `[delegate.NAME]` entries can be cut out of the root (each written
    /// as a table of its own) and the result decides as the whole does; otherwise whole, as
    /// before, with the reason in [`Self::eager_because`]. Fails as [`parse`] does.
    pub fn build(
        file: &Path,
        text: &str,
        read: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<Self, PolicyError> {
        let files = RefCell::new(BTreeMap::new());
        let recording = |relative: &str| {
            let text = read(relative)?;
            files.borrow_mut().insert(relative.to_owned(), text.clone());
            Ok(text)
        };
        let policy = parse(file, text, &recording)?;
        let files = files.into_inner();
        let lazy = lazy_bytes(&policy, text, &files).and_then(|bytes| {
            let lazy = LazyPolicy::from_bundle(file, bytes.clone()).map_err(|e| e.to_string())?;
            same_decisions(&policy, &lazy)?;
            Ok(bytes)
        });
        Ok(match lazy {
            Ok(bytes) => Self { bytes, eager: None },
            Err(why) => Self {
                bytes: eager_bytes(text, &files),
                eager: Some(why),
            },
        })
    }

    /// The bytes to embed.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// `Some(why)` when the broker will compile the whole tree at start: a root whose
    /// `[delegate.*]` entries are not each a `[delegate.NAME]` table of its own.
    pub fn eager_because(&self) -> Option<&str> {
        self.eager.as_deref()
    }
}

fn eager_bytes(text: &str, files: &BTreeMap<String, String>) -> Vec<u8> {
    let mut writer = Writer::default();
    let [at, len] = writer.text(text);
    writer.row(Table::Meta, &[EAGER, 0, at, len]);
    write_files(&mut writer, files);
    writer.finish()
}

fn write_files(writer: &mut Writer, files: &BTreeMap<String, String>) {
    for (path, text) in files {
        let [path_at, path_len] = writer.text(path);
        let [at, len] = writer.text(text);
        writer.row(Table::Files, &[path_at, path_len, at, len]);
    }
}

/// The lazy bundle of `policy` (compiled from `text`, having read `files`).
fn lazy_bytes(
    policy: &Policy,
    text: &str,
    files: &BTreeMap<String, String>,
) -> Result<Vec<u8>, String> {
    let mut writer = Writer::default();
    fn delegated(grant: &Grant) -> Option<&str> {
        grant.delegate.as_ref().map(|d| d.name.as_str())
    }
    let number = |name: &str| {
        policy
            .delegates
            .iter()
            .position(|d| d.name == name)
            .map(|d| u32::try_from(d).expect("fewer than 4 billion delegates"))
    };
    let grants: Vec<&Grant> = policy.grants().filter(|g| g.delegate.is_some()).collect();
    let [at, len] = writer.text(text);
    let guards = grants.iter().any(|g| g.token_uses.is_some());
    writer.row(Table::Meta, &[LAZY, u32::from(guards), at, len]);
    write_files(&mut writer, files);
    for segment in segments(text) {
        let kind = match segment.header {
            Header::Shared => Segment::Shared,
            Header::Root => Segment::Root,
            Header::Delegate(name) => Segment::Delegate(
                number(name).ok_or_else(|| format!("[delegate.{name}] is not a delegate"))?,
            ),
        };
        let newlines = text[segment.range.clone()].matches('\n').count();
        let values = [segment.range.start, segment.range.end, newlines];
        let [start, end, newlines] = values.map(|v| u32::try_from(v).expect("a root under 4 GiB"));
        writer.row(Table::Segments, &[start, end, newlines, kind.code()]);
    }
    for delegate in &policy.delegates {
        let [at, len] = writer.text(&delegate.name);
        writer.row(Table::Delegates, &[at, len]);
    }
    let by_name = |grants: Vec<(&str, &Grant)>| -> BTreeMap<String, u32> {
        grants
            .into_iter()
            .filter_map(|(key, g)| Some((key.to_owned(), number(delegated(g)?)?)))
            .collect()
    };
    let roles = by_name(
        policy
            .roles
            .iter()
            .map(|r| (r.grant.name.as_str(), &r.grant))
            .collect(),
    );
    let tokens = by_name(
        policy
            .tokens
            .iter()
            .map(|t| (t.audience.as_str(), &t.grant))
            .collect(),
    );
    for (table, index) in [(Table::Roles, roles), (Table::Tokens, tokens)] {
        for (key, delegate) in index {
            let [at, len] = writer.text(&key);
            writer.row(table, &[at, len, delegate]);
        }
    }
    for issuer in &policy.issuers {
        let [at, len] = writer.text(&issuer.url);
        writer.row(Table::Issuers, &[at, len]);
    }
    write_naming(&mut writer, policy, &grants);
    let claims: BTreeSet<&str> = policy
        .tokens
        .iter()
        .filter(|t| t.grant.delegate.is_some())
        .flat_map(|t| t.claims.iter().map(String::as_str))
        .collect();
    for claim in claims {
        let [at, len] = writer.text(claim);
        writer.row(Table::TokenClaims, &[at, len]);
    }
    Ok(writer.finish())
}

/// What [`crate::decide`]'s `Rule::names` needs of every delegated rule: the exact ids of a
/// rule whose conditions on ids are all exact, else the rule's conditions on ids and paths.
fn write_naming(writer: &mut Writer, policy: &Policy, grants: &[&Grant]) {
    let issuer = |url: &str| {
        let at = policy.issuers.iter().position(|i| i.url == url);
        u32::try_from(at.expect("a rule's issuer is the policy's")).expect("few issuers")
    };
    let mut ids = BTreeSet::new();
    let mut naming = BTreeSet::new();
    for rule in grants.iter().flat_map(|g| &g.rules) {
        let on = |claims: &[&str]| -> Vec<(&str, Vec<&str>)> {
            rule.conditions
                .iter()
                .filter(|c| claims.contains(&c.claim.as_str()))
                .map(|c| {
                    (
                        c.claim.as_str(),
                        c.patterns.iter().map(Pattern::source).collect(),
                    )
                })
                .collect()
        };
        match exact_ids(rule) {
            Some(exact) => {
                ids.extend(exact.map(|(claim, value)| (issuer(&rule.issuer), claim, value)))
            }
            None => {
                naming.insert((issuer(&rule.issuer), on(&[INDEXABLE, PATHS].concat())));
            }
        }
    }
    for (issuer, claim, value) in ids {
        let [at, len] = writer.text(value);
        writer.row(Table::Ids, &[issuer, claim, at, len]);
    }
    let (mut condition_rows, mut pattern_rows) = (0u32, 0u32);
    for (issuer, conditions) in naming {
        let count = u32::try_from(conditions.len()).expect("few conditions");
        writer.row(Table::Naming, &[issuer, condition_rows, count]);
        condition_rows += count;
        for (claim, patterns) in conditions {
            let [at, len] = writer.text(claim);
            let count = u32::try_from(patterns.len()).expect("few patterns");
            writer.row(Table::NamingConditions, &[at, len, pattern_rows, count]);
            pattern_rows += count;
            for pattern in patterns {
                let [at, len] = writer.text(pattern);
                writer.row(Table::NamingPatterns, &[at, len]);
            }
        }
    }
}

/// `(claim number in INDEXABLE, value)` for every exact id of a rule whose conditions on ids
/// are all exact (and that has one); `None` otherwise.
fn exact_ids(rule: &Rule) -> Option<impl Iterator<Item = (u32, &str)>> {
    let ids: Vec<(u32, &crate::Condition)> = rule
        .conditions
        .iter()
        .filter_map(|c| {
            let number = INDEXABLE.iter().position(|claim| *claim == c.claim)?;
            Some((u32::try_from(number).expect("two claims"), c))
        })
        .collect();
    let exact = |c: &crate::Condition| c.patterns.iter().all(|p| matches!(p, Pattern::Exact(_)));
    if ids.is_empty() || !ids.iter().all(|(_, c)| exact(c)) {
        return None;
    }
    Some(
        ids.into_iter()
            .flat_map(|(number, c)| c.patterns.iter().map(move |p| (number, p.source()))),
    )
}

/// A piece of the root text from one table header to the next.
struct Piece<'t> {
    range: std::ops::Range<usize>,
    header: Header<'t>,
}

/// What a piece of the root text holds, by its table header.
#[derive(Debug, PartialEq, Eq)]
enum Header<'t> {
    /// Before the first header, or `[[issuer]]`.
    Shared,
    /// Any other table: the root's own roles and tokens.
    Root,
    /// `[delegate.NAME]` or a table inside it.
    Delegate(&'t str),
}

/// The root text, cut at every line that starts a table (`[` first after blanks). A cut in the
/// wrong place (a line of a multi-line string or array that starts with `[`) makes a root that
/// does not compile as the whole does, which [`same_decisions`] catches.
fn segments(text: &str) -> Vec<Piece<'_>> {
    let mut pieces = vec![Piece {
        range: 0..0,
        header: Header::Shared,
    }];
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if let Some(header) = header(line) {
            pieces.last_mut().expect("one piece").range.end = offset;
            pieces.push(Piece {
                range: offset..offset,
                header,
            });
        }
        offset += line.len();
    }
    pieces.last_mut().expect("one piece").range.end = offset;
    pieces.retain(|p| !p.range.is_empty());
    pieces
}

fn header(line: &str) -> Option<Header<'_>> {
    let inside = line.trim_start().strip_prefix('[')?;
    let inside = inside.strip_prefix('[').unwrap_or(inside);
    let mut keys = inside.split(']').next()?.split('.').map(str::trim);
    Some(match (keys.next(), keys.next()) {
        (Some("issuer"), None) => Header::Shared,
        (Some("delegate"), Some(name)) if !name.is_empty() => Header::Delegate(name),
        _ => Header::Root,
    })
}

/// Whether `lazy`, read back from the bundle, holds what `whole` does: the same root, the same
/// replay guard, and every delegated role and token compiled from its file exactly as in the
/// whole (rules, lines, guardrail), and nothing more.
fn same_decisions(whole: &Policy, lazy: &LazyPolicy) -> Result<(), String> {
    let root = lazy.root();
    let own = |grant: &Grant| grant.delegate.is_none();
    let roles = |p: &Policy, keep: &dyn Fn(&Grant) -> bool| -> Vec<String> {
        p.roles
            .iter()
            .filter(|r| keep(&r.grant))
            .map(role_print)
            .collect()
    };
    let tokens = |p: &Policy, keep: &dyn Fn(&Grant) -> bool| -> Vec<String> {
        p.tokens
            .iter()
            .filter(|t| keep(&t.grant))
            .map(token_print)
            .collect()
    };
    let everything = |_: &Grant| true;
    if root.audience != whole.audience
        || root.issuers != whole.issuers
        || !root.delegates.is_empty()
        || roles(root, &everything) != roles(whole, &own)
        || tokens(root, &everything) != tokens(whole, &own)
    {
        return Err("the root's own part does not compile as in the whole policy".into());
    }
    if lazy.guards_replay() != whole.guards_replay() {
        return Err("token_uses differs".into());
    }
    lazy.compile_all().map_err(|e| e.to_string())?;
    for role in whole.roles.iter().filter(|r| !own(&r.grant)) {
        if lazy.role(&role.grant.name).map(role_print) != Some(role_print(role)) {
            return Err(format!("role {:?} differs", role.grant.name));
        }
    }
    for token in whole.tokens.iter().filter(|t| !own(&t.grant)) {
        if lazy.token_for(&token.audience).map(token_print) != Some(token_print(token)) {
            return Err(format!("token {:?} differs", token.grant.name));
        }
    }
    let compiled = lazy.tree.iter().flat_map(|tree| &tree.files);
    let grants: usize = compiled
        .filter_map(|file| file.get()?.as_ref())
        .map(|file| file.roles.len() + file.tokens.len())
        .sum();
    let delegated = whole.grants().filter(|g| !own(g)).count();
    if grants != delegated {
        return Err(format!("{grants} delegated grants instead of {delegated}"));
    }
    Ok(())
}

/// Everything a role decides and hands out with (its grant's index aside, which is built from
/// its rules and holds a hash map, whose order varies).
fn role_print(role: &Role) -> String {
    format!(
        "{} {:?} {:?} {:?} {:?} {} {}",
        grant_print(&role.grant),
        role.arn,
        role.max_duration,
        role.session_tags,
        role.session_policy,
        role.max_duration_line,
        role.session_tags_line
    )
}

fn token_print(token: &TokenGrant) -> String {
    format!(
        "{} {:?} {:?} {:?} {:?}",
        grant_print(&token.grant),
        token.audience,
        token.max_ttl,
        token.claims,
        token.subject
    )
}

fn grant_print(grant: &Grant) -> String {
    format!(
        "{:?} {:?} {:?} {:?} {:?}",
        grant.kind, grant.name, grant.rules, grant.token_uses, grant.delegate
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_cut_at_each_table_header() {
        let text = "audience = \"a\"\n[[issuer]]\nurl = \"u\"\n\n[role.x]\narn = \"r\"\n  [[role.x.allow]]\n[delegate.team]\nfile = \"f\"\n[delegate.team.require]\nx = 1\n[ delegate . other ]\n";
        let cut: Vec<(&str, Header<'_>)> = segments(text)
            .into_iter()
            .map(|p| (&text[p.range], p.header))
            .collect();
        assert_eq!(
            cut,
            [
                ("audience = \"a\"\n", Header::Shared),
                ("[[issuer]]\nurl = \"u\"\n\n", Header::Shared),
                ("[role.x]\narn = \"r\"\n", Header::Root),
                ("  [[role.x.allow]]\n", Header::Root),
                ("[delegate.team]\nfile = \"f\"\n", Header::Delegate("team")),
                ("[delegate.team.require]\nx = 1\n", Header::Delegate("team")),
                ("[ delegate . other ]\n", Header::Delegate("other")),
            ]
        );
    }

    #[test]
    fn a_root_that_does_not_write_each_delegate_as_a_table_is_bundled_whole() {
        let team = "[role.payments-read]\narn = \"arn:aws:iam::111122223333:role/payments-read\"\n[[role.payments-read.allow]]\nnamespace_id = \"77\"\nref_protected = \"true\"\n";
        let read = |path: &str| match path {
            "payments.toml" => Ok(team.to_owned()),
            _ => Err("no such file".to_owned()),
        };
        let entry = "file = \"payments.toml\", require = { namespace_id = \"77\" }, role_arns = [\"arn:aws:iam::111122223333:role/payments-*\"]";
        let head = "audience = \"https://broker.example.com\"\n[[issuer]]\nurl = \"https://gitlab.example.com\"\n";
        let tables = format!(
            "{head}[delegate.payments]\n{}\n",
            entry.replace(", r", "\nr")
        );
        let inline = format!("{head}[delegate]\npayments = {{ {entry} }}\n");
        for (text, lazy) in [(tables, true), (inline, false)] {
            let bundle = Bundle::build(Path::new("policy.toml"), &text, &read).unwrap();
            assert_eq!(bundle.eager_because().is_none(), lazy, "{text}");
            let policy =
                LazyPolicy::from_bundle(Path::new("policy.toml"), bundle.bytes().to_vec()).unwrap();
            assert!(policy.role("payments-read").is_some(), "{text}");
        }
    }
}
