//! The policy as the broker runs it: a delegated tree of thousands of team files compiled at
//! every cold start would cost a 128 MB Lambda (a fourteenth of a core) seconds of init, so the
//! build does the work once ([`Bundle`]) and the broker compiles, at start, only the root
//! policy's own part, and each delegated file when one of its grants is first asked for. Which
//! file defines a role or a token, which exact ids the files' rules name (for
//! [`LazyPolicy::admits_project`]) and whether any sets `token_uses` come from an index the
//! build wrote. A file compiles with the ordinary compiler, from the very text `build.rs`
//! checked; the build compiles every file this way too and compares the result with the whole
//! tree compiled at once, so a bundle that would decide differently is never written.
//!
//! A policy compiled whole (`TOKEN_BROKER_POLICY`, or a root whose `[delegate.*]` entries
//! cannot be cut out) runs through the same type, with a name index.

mod bundle;
mod format;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub use bundle::Bundle;
use format::{EAGER, LAZY, Layout, Reader, Segment, Table};

use crate::decide::admitted;
use crate::index::INDEXABLE;
use crate::{
    Admitted, Claims, Condition, Denial, GrantKind, Issuer, Pattern, Policy, PolicyError, Role,
    Rule, TokenGrant, parse,
};

/// A compiled policy whose delegated files compile on first use. Deny by default, and decides
/// exactly as the [`Policy`] of the same text.
#[derive(Debug)]
pub struct LazyPolicy {
    /// The root's own part (or the whole policy, when compiled at once).
    root: Arc<Policy>,
    /// Positions in `root.roles`, by name.
    roles: Vec<usize>,
    /// Positions in `root.tokens`, by audience.
    tokens: Vec<usize>,
    /// The delegated files, when compiled on first use.
    tree: Option<Tree>,
    /// Told about a delegated file that does not compile when first used; default: nobody.
    on_compile_error: fn(&PolicyError),
}

/// The delegated files of a bundle and what its index says about them.
#[derive(Debug)]
struct Tree {
    /// The root policy, for messages.
    path: PathBuf,
    bytes: Cow<'static, [u8]>,
    layout: Layout,
    /// Each delegate's file, compiled on first use; `None` when it did not compile.
    files: Vec<OnceLock<Option<Policy>>>,
    /// Rules that name projects other than by exact ids, compiled on first need.
    naming: OnceLock<Vec<Rule>>,
    /// Whether a grant of some delegated file sets `token_uses`.
    guards_replay: bool,
}

/// What looking a grant up found.
enum Found<'p, G> {
    Here(&'p G),
    Unknown,
    /// In the file of this delegate, which did not compile.
    Unavailable(String),
}

impl From<Policy> for LazyPolicy {
    /// A policy compiled whole, with its roles and tokens indexed by name and audience.
    fn from(policy: Policy) -> Self {
        let roles = sorted(policy.roles.len(), |i| &policy.roles[i].grant.name);
        let tokens = sorted(policy.tokens.len(), |i| &policy.tokens[i].audience);
        Self {
            root: Arc::new(policy),
            roles,
            tokens,
            tree: None,
            on_compile_error: |_| {},
        }
    }
}

fn damaged(path: &Path, message: &str) -> PolicyError {
    PolicyError {
        file: path.to_owned(),
        line: 0,
        column: 0,
        message: format!("the bundled policy is damaged: {message}"),
    }
}

/// `0..len` ordered by `key`.
fn sorted<'a>(len: usize, key: impl Fn(usize) -> &'a String) -> Vec<usize> {
    let mut positions: Vec<usize> = (0..len).collect();
    positions.sort_unstable_by(|a, b| key(*a).cmp(key(*b)));
    positions
}

impl LazyPolicy {
    /// The policy in `bundle` (what [`Bundle::bytes`] wrote), its root named `path` in messages:
    /// the root's own part compiled now, each delegated file on first use. Fails when the
    /// bundle is damaged or the root does not compile.
    pub fn from_bundle(
        path: &Path,
        bundle: impl Into<Cow<'static, [u8]>>,
    ) -> Result<Self, PolicyError> {
        let bytes = bundle.into();
        let layout = Layout::new(&bytes).map_err(|e| damaged(path, &e))?;
        let reader = layout.reader(&bytes);
        match reader.rows(Table::Meta).get(0, 0) {
            Some(EAGER) => {
                let text = root_text(&reader).ok_or_else(|| damaged(path, "no root text"))?;
                let read = |relative: &str| read_file(&reader, relative);
                Ok(Self::from(parse(path, text, &read)?))
            }
            Some(LAZY) => Self::lazy(path, bytes, layout),
            _ => Err(damaged(path, "no mode")),
        }
    }

    /// The root's own part of a lazy bundle, compiled; its files left for first use.
    fn lazy(path: &Path, bytes: Cow<'static, [u8]>, layout: Layout) -> Result<Self, PolicyError> {
        let reader = layout.reader(&bytes);
        let text = assemble(&reader, |s| matches!(s, Segment::Delegate(_)))
            .ok_or_else(|| damaged(path, "no root text"))?;
        let root = parse(path, &text, &|relative| read_file(&reader, relative))?;
        if !root.delegates.is_empty() {
            return Err(damaged(path, "the root's own part names delegates"));
        }
        let tree = Tree {
            path: path.to_owned(),
            // A damaged flag asks for the replay table: a log line, never a skipped check.
            guards_replay: reader.rows(Table::Meta).get(0, 1) != Some(0),
            files: (0..reader.rows(Table::Delegates).len())
                .map(|_| OnceLock::new())
                .collect(),
            naming: OnceLock::new(),
            layout,
            bytes,
        };
        Ok(Self {
            tree: Some(tree),
            ..Self::from(root)
        })
    }

    /// The policy, telling `hook` (the broker logs it) about a delegated file that does not
    /// compile when first used; its grants are then denied. A build compiles every file, so
    /// this only happens to a bundle that was not built by this code.
    pub fn on_compile_error(mut self, hook: fn(&PolicyError)) -> Self {
        self.on_compile_error = hook;
        self
    }

    /// The root policy's own part: audience, issuers and its own roles and tokens (all of them
    /// when the policy was compiled whole).
    pub fn root(&self) -> &Arc<Policy> {
        &self.root
    }

    /// The `aud` GitLab jobs must request for the broker.
    pub fn audience(&self) -> &str {
        &self.root.audience
    }

    /// The trusted GitLab instances.
    pub fn issuers(&self) -> &[Issuer] {
        &self.root.issuers
    }

    /// The role named `name`, if any (compiling its file, if delegated).
    pub fn role(&self, name: &str) -> Option<&Role> {
        match self.find_role(name) {
            Found::Here(role) => Some(role),
            _ => None,
        }
    }

    /// The token whose audience is `audience`, if any (compiling its file, if delegated).
    pub fn token_for(&self, audience: &str) -> Option<&TokenGrant> {
        match self.find_token(audience) {
            Found::Here(token) => Some(token),
            _ => None,
        }
    }

    /// The policy's own spelling of role `name` if it defines one, answered without compiling
    /// a file (for metric dimensions, which name what was asked before anything was decided).
    pub fn role_name(&self, name: &str) -> Option<&str> {
        let root = &self.root.roles;
        let at = self
            .roles
            .binary_search_by(|i| root[*i].grant.name.as_str().cmp(name));
        match at {
            Ok(at) => Some(&root[self.roles[at]].grant.name),
            Err(_) => self.indexed(Table::Roles, name),
        }
    }

    /// The policy's own spelling of token audience `audience` if it has one, answered without
    /// compiling a file.
    pub fn token_audience(&self, audience: &str) -> Option<&str> {
        let root = &self.root.tokens;
        let at = self
            .tokens
            .binary_search_by(|i| root[*i].audience.as_str().cmp(audience));
        match at {
            Ok(at) => Some(&root[self.tokens[at]].audience),
            Err(_) => self.indexed(Table::Tokens, audience),
        }
    }

    /// `key` as `table`'s index holds it, if it does.
    fn indexed(&self, table: Table, key: &str) -> Option<&str> {
        let reader = self.tree.as_ref()?.reader();
        let row = reader.find(table, |row| reader.compare(table, row, 0, key))?;
        reader.text_at(table, row, 0)
    }

    /// As [`Policy::decide`]; a role of a delegated file that did not compile is denied.
    pub fn decide(&self, role: &str, claims: &Claims) -> Result<Admitted<'_, Role>, Denial> {
        let kind = GrantKind::Role;
        match self.find_role(role) {
            Found::Here(found) => admitted(found, found.grant.decide(claims)),
            missing => Err(missing.denial(kind, role)),
        }
    }

    /// As [`Policy::decide_token`]; a token of a delegated file that did not compile is denied.
    pub fn decide_token(
        &self,
        audience: &str,
        claims: &Claims,
    ) -> Result<Admitted<'_, TokenGrant>, Denial> {
        let kind = GrantKind::Token;
        match self.find_token(audience) {
            Found::Here(found) => admitted(found, found.grant.decide(claims)),
            missing => Err(missing.denial(kind, audience)),
        }
    }

    /// As [`Policy::admits_project`], with no file compiled: the root's own rules, then the
    /// exact ids the delegated files' rules name, then their other rules' conditions on ids and
    /// paths (compiled on first need).
    pub fn admits_project(&self, claims: &Claims) -> bool {
        self.root.admits_project(claims)
            || self
                .tree
                .as_ref()
                .is_some_and(|tree| tree.names_exactly(claims) || tree.names_otherwise(claims))
    }

    /// Whether any role or token sets `token_uses`, so the broker needs its replay table.
    pub fn guards_replay(&self) -> bool {
        self.root.guards_replay() || self.tree.as_ref().is_some_and(|tree| tree.guards_replay)
    }

    /// The claims any token grant copies (some may repeat).
    pub fn token_claims(&self) -> impl Iterator<Item = &str> {
        let own = self.root.tokens.iter().flat_map(|t| t.claims.iter());
        let delegated = self.tree.iter().flat_map(|tree| {
            let reader = tree.reader();
            (0..reader.rows(Table::TokenClaims).len())
                .filter_map(move |row| reader.text_at(Table::TokenClaims, row, 0))
        });
        own.map(String::as_str).chain(delegated)
    }

    /// Compiles every delegated file now; the first that does not compile, if any.
    pub fn compile_all(&self) -> Result<(), PolicyError> {
        let Some(tree) = &self.tree else {
            return Ok(());
        };
        for file in 0..tree.files.len() {
            if tree.file(file, self.on_compile_error).is_none() {
                // Compiled again for its error, which the first try handed to the hook.
                return Err(tree
                    .compile_file(file)
                    .err()
                    .unwrap_or_else(|| PolicyError {
                        file: tree.path.clone(),
                        line: 0,
                        column: 0,
                        message: format!("delegate {:?} did not compile", tree.delegate_name(file)),
                    }));
            }
        }
        Ok(())
    }

    /// How many delegated files are compiled so far.
    pub fn files_compiled(&self) -> usize {
        self.tree.as_ref().map_or(0, |tree| {
            tree.files.iter().filter(|f| f.get().is_some()).count()
        })
    }

    fn find_role(&self, name: &str) -> Found<'_, Role> {
        let root = &self.root.roles;
        if let Ok(at) = self
            .roles
            .binary_search_by(|i| root[*i].grant.name.as_str().cmp(name))
        {
            return Found::Here(&root[self.roles[at]]);
        }
        self.delegated(Table::Roles, name, |file| file.role(name))
    }

    fn find_token(&self, audience: &str) -> Found<'_, TokenGrant> {
        let root = &self.root.tokens;
        if let Ok(at) = self
            .tokens
            .binary_search_by(|i| root[*i].audience.as_str().cmp(audience))
        {
            return Found::Here(&root[self.tokens[at]]);
        }
        self.delegated(Table::Tokens, audience, |file| file.token_for(audience))
    }

    /// The grant `key` names in `table`'s index, from its file.
    fn delegated<'p, G>(
        &'p self,
        table: Table,
        key: &str,
        get: impl Fn(&'p Policy) -> Option<&'p G>,
    ) -> Found<'p, G> {
        let Some(tree) = &self.tree else {
            return Found::Unknown;
        };
        let reader = tree.reader();
        let Some(row) = reader.find(table, |row| reader.compare(table, row, 0, key)) else {
            return Found::Unknown;
        };
        let Some(file) = reader.rows(table).get(row, 2) else {
            return Found::Unknown;
        };
        match tree.file(file as usize, self.on_compile_error) {
            Some(policy) => get(policy).map_or(Found::Unknown, Found::Here),
            None => Found::Unavailable(tree.delegate_name(file as usize)),
        }
    }
}

impl<G> Found<'_, G> {
    /// Why a grant that was not found is denied.
    fn denial(self, kind: GrantKind, name: &str) -> Denial {
        let name = name.to_owned();
        match self {
            Found::Unavailable(delegate) => Denial::Unavailable {
                kind,
                name,
                delegate,
            },
            _ => Denial::Unknown { kind, name },
        }
    }
}

impl Tree {
    fn reader(&self) -> Reader<'_> {
        self.layout.reader(&self.bytes)
    }

    /// Delegate `file`'s compiled file, compiling it on first use; `None` (told to `hook` once)
    /// when it does not compile.
    fn file(&self, file: usize, hook: fn(&PolicyError)) -> Option<&Policy> {
        self.files
            .get(file)?
            .get_or_init(|| self.compile_file(file).map_err(|e| hook(&e)).ok())
            .as_ref()
    }

    /// The root's shared part (audience, issuers, `token_uses`) and `[delegate.NAME]`, each
    /// line where it is in the root, compiled with the delegated file it names.
    fn compile_file(&self, file: usize) -> Result<Policy, PolicyError> {
        let reader = self.reader();
        let d = u32::try_from(file).expect("fewer than 4 billion delegates");
        let wanted = Segment::Delegate(d);
        let text = assemble(&reader, |s| s != Segment::Shared && s != wanted)
            .ok_or_else(|| damaged(&self.path, "no root text"))?;
        let policy = parse(&self.path, &text, &|relative| read_file(&reader, relative))?;
        let name = self.delegate_name(file);
        match policy.delegates.as_slice() {
            [only] if only.name == name => Ok(policy),
            _ => Err(damaged(
                &self.path,
                &format!("delegate {name:?}'s part of the root does not define it alone"),
            )),
        }
    }

    fn delegate_name(&self, file: usize) -> String {
        self.reader()
            .text_at(Table::Delegates, file, 0)
            .unwrap_or("?")
            .to_owned()
    }

    /// Whether a delegated rule for the caller's issuer pins the caller's `project_id` or
    /// `namespace_id` by one of its exact values.
    fn names_exactly(&self, claims: &Claims) -> bool {
        let reader = self.reader();
        let issuers = reader.rows(Table::Issuers).len();
        let Some(issuer) = (0..issuers)
            .find(|row| reader.text_at(Table::Issuers, *row, 0) == Some(claims.issuer()))
        else {
            return false;
        };
        let ids = reader.rows(Table::Ids);
        INDEXABLE.iter().zip(0u32..).any(|(claim, number)| {
            let Some(value) = claims.get(claim) else {
                return false;
            };
            let key = |row| {
                let here = (ids.get(row, 0), ids.get(row, 1));
                here.cmp(&(Some(issuer as u32), Some(number)))
                    .then_with(|| reader.compare(Table::Ids, row, 2, value))
            };
            reader.find(Table::Ids, key).is_some()
        })
    }

    /// Whether a delegated rule that names projects by anything but exact ids names the
    /// caller's ([`Rule::names`], on the rule's conditions on ids and paths).
    fn names_otherwise(&self, claims: &Claims) -> bool {
        self.naming
            .get_or_init(|| naming_rules(&self.reader()))
            .iter()
            .any(|rule| rule.issuer == claims.issuer() && rule.names(claims))
    }
}

/// The rules of [`Table::Naming`], with only their conditions on ids and paths: what
/// [`Rule::names`] reads. A rule whose pattern does not compile is left out (it names nobody:
/// the caller is told less, never more).
fn naming_rules(reader: &Reader<'_>) -> Vec<Rule> {
    let rules = reader.rows(Table::Naming);
    (0..rules.len())
        .filter_map(|row| {
            let issuer = reader.text_at(Table::Issuers, rules.get(row, 0)? as usize, 0)?;
            let conditions = span(rules.get(row, 1)?, rules.get(row, 2)?)
                .map(|c| naming_condition(reader, c))
                .collect::<Option<Vec<_>>>()?;
            Some(Rule {
                number: 0,
                line: 0,
                issuer: issuer.to_owned(),
                conditions,
                allow_path_only: false,
            })
        })
        .collect()
}

fn naming_condition(reader: &Reader<'_>, row: usize) -> Option<Condition> {
    let conditions = reader.rows(Table::NamingConditions);
    let patterns = span(conditions.get(row, 2)?, conditions.get(row, 3)?)
        .map(|p| Pattern::compile(reader.text_at(Table::NamingPatterns, p, 0)?).ok())
        .collect::<Option<Vec<_>>>()?;
    Some(Condition {
        claim: reader.text_at(Table::NamingConditions, row, 0)?.to_owned(),
        patterns,
    })
}

fn span(first: u32, count: u32) -> std::ops::Range<usize> {
    first as usize..first as usize + count as usize
}

/// A file of the tree (a delegated file or a session policy), as `parse`'s `read` returns it.
fn read_file(reader: &Reader<'_>, relative: &str) -> Result<String, String> {
    reader
        .find(Table::Files, |row| {
            reader.compare(Table::Files, row, 0, relative)
        })
        .and_then(|row| reader.text_at(Table::Files, row, 2))
        .map(str::to_owned)
        .ok_or_else(|| format!("{relative} was not bundled"))
}

fn root_text<'a>(reader: &Reader<'a>) -> Option<&'a str> {
    let meta = reader.rows(Table::Meta);
    reader.text(meta.get(0, 2)?, meta.get(0, 3)?)
}

/// The root text with every segment `drop` says to leave out replaced by its newlines, so each
/// line that stays is where it was (messages and rule lines are as in the root).
fn assemble(reader: &Reader<'_>, drop: impl Fn(Segment) -> bool) -> Option<String> {
    let text = root_text(reader)?;
    let segments = reader.rows(Table::Segments);
    let mut out = String::new();
    for row in 0..segments.len() {
        let (start, end) = (
            segments.get(row, 0)? as usize,
            segments.get(row, 1)? as usize,
        );
        let kind = Segment::from_code(segments.get(row, 3)?);
        if drop(kind) {
            out.extend(std::iter::repeat_n('\n', segments.get(row, 2)? as usize));
        } else {
            out.push_str(text.get(start..end)?);
        }
    }
    Some(out)
}
