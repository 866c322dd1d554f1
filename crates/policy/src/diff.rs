//! The access a policy change adds or removes (`policy diff OLD NEW`): what changed in each role
//! and token grant, rule by rule and setting by setting, and in each delegate's entry (its
//! guardrail, ARNs, cap, tokens, file), and which decisions come out otherwise on a set of probe
//! jobs built from both trees. OLD and NEW are root policies, each with the files it delegates;
//! a change in a delegated file names that file. A merge request that edits `policy.toml` or a
//! team's file is an access review; this is what the reviewer needs to see, widening changes
//! first.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::lint::{as_written, implies};
use crate::report::markdown_cell;
use crate::session_policy::only_narrows;
use crate::{
    Claims, Condition, Delegate, Grant, GrantKind, Guardrail, Issuer, Policy, Role, Rule,
    TokenGrant,
};

/// Claims every probe set varies, whether or not a rule names them: the ones reviewers reason
/// about (who, which ref, which environment, how the pipeline started). `describe` words all but
/// the last in its own way.
const PROBE_CLAIMS: [&str; 8] = [
    "project_id",
    "namespace_id",
    "ref_type",
    "ref",
    "ref_protected",
    "environment",
    "environment_protected",
    "pipeline_source",
];

/// Values tried for a claim in addition to those the files mention, so that dropping a
/// condition shows up as a decision that changes.
const FIXED_SAMPLES: [(&str, &[&str]); 3] = [
    ("ref_type", &["branch", "tag"]),
    ("ref_protected", &["true", "false"]),
    ("environment_protected", &["true", "false"]),
];

/// Most decision changes the text and Markdown reports list (JSON lists all).
const SHOWN_DECISIONS: usize = 40;

/// Everything that differs between two policies.
#[derive(Debug, Clone, Default)]
pub struct Delta {
    /// Per grant: added, removed or changed rules and settings; widening ones first.
    pub changes: Vec<Change>,
    /// Probe jobs whose decision differs; newly allowed first.
    pub decisions: Vec<DecisionChange>,
}

/// What a change is about: one role or token grant, a delegate's entry in the root policy, or
/// the trust every grant rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A role or a token grant.
    Grant(GrantKind),
    /// A `[delegate.NAME]` of the root policy: the guardrail and limits of a team's file.
    Delegate,
    /// The broker's audience, or an issuer (its keys, its algorithms).
    Trust,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Grant(kind) => kind.fmt(f),
            Self::Delegate => f.write_str("delegate"),
            Self::Trust => f.write_str("trust"),
        }
    }
}

/// One difference in one role or token grant, or in what the broker trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: Scope,
    /// The role's, token grant's or delegate's name; for trust, the issuer's URL or `policy`.
    pub grant: String,
    /// The delegated file the change is in, relative to the root policy's directory; `None`
    /// for the root policy itself (trust, delegate entries, the root's own grants).
    pub file: Option<String>,
    pub what: What,
    /// Whether it can admit a job, or hand out something, that the old policy did not.
    pub widening: bool,
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// The grant is new, with these rules.
    GrantAdded {
        rules: Vec<RuleText>,
    },
    /// The grant is gone, with these rules.
    GrantRemoved {
        rules: Vec<RuleText>,
    },
    RuleAdded(RuleText),
    RuleRemoved(RuleText),
    RuleChanged {
        before: RuleText,
        after: RuleText,
    },
    /// A setting of the grant or delegate (`arn`, `max_duration`, `role_arns`, `file`, …).
    Setting {
        name: &'static str,
        before: String,
        after: String,
    },
    /// The grant is defined in another file, under another guardrail: where it was and where
    /// it is (`the root policy`, `policies/payments.toml (delegate "payments")`).
    Moved {
        before: String,
        after: String,
    },
    /// The root policy delegates a file it did not.
    DelegateAdded(DelegateText),
    /// The root policy no longer delegates this file.
    DelegateRemoved(DelegateText),
    /// A delegate's `require` (its issuer shown as an `issuer` condition).
    RequireChanged {
        before: RuleText,
        after: RuleText,
    },
}

/// A delegate's entry as a reviewer reads it, with the grants of its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelegateText {
    /// The delegated file, relative to the root policy's directory.
    pub file: String,
    /// Line of `[delegate.NAME]` in the root policy.
    pub line: usize,
    /// The guardrail, as a rule (number 0).
    pub require: RuleText,
    /// The ARN patterns its roles must match.
    pub role_arns: Vec<String>,
    /// The cap on its roles' sessions as written, or `none`.
    pub max_duration: String,
    /// Whether its file may define tokens.
    pub tokens: bool,
    /// The grants its file defines: (kind, name, how many rules).
    pub grants: Vec<(GrantKind, String, usize)>,
}

/// A rule as a reviewer reads it: its number, its line, and its conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleText {
    pub number: usize,
    pub line: usize,
    /// The delegated file the line is in; `None` for the root policy.
    pub file: Option<String>,
    /// `project_id = "4242", ref = "main" | "release-*"`.
    pub text: String,
    /// Each condition as (claim, `"main" | "release-*"`), for showing what a change touched.
    pub conditions: Vec<(String, String)>,
}

/// A probe job whose decision for one grant differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionChange {
    /// `project 4242 · branch main (protected) · env production`.
    pub probe: String,
    pub kind: GrantKind,
    pub grant: String,
    /// Allowed by the old policy.
    pub before: bool,
    /// Allowed by the new policy.
    pub after: bool,
}

impl Delta {
    /// Nothing differs.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.decisions.is_empty()
    }

    /// Some change can admit or hand out more than before.
    pub fn widens(&self) -> bool {
        self.changes.iter().any(|c| c.widening) || self.decisions.iter().any(|d| d.after)
    }
}

/// The delta from `old` to `new`; `cases` are extra probe jobs (`policy.tests.toml`'s).
pub fn diff(old: &Policy, new: &Policy, cases: &[Claims]) -> Delta {
    let mut grants = Vec::new();
    for (kind, name, before, after) in grant_pairs(old, new) {
        grant_changes(&mut grants, kind, name, before, after);
    }
    for (_, before, after) in paired(&old.roles, &new.roles, |r| &r.grant.name) {
        if let (Some(before), Some(after)) = (before, after) {
            role_settings(&mut grants, before, after);
        }
    }
    for (_, before, after) in paired(&old.tokens, &new.tokens, |t| &t.grant.name) {
        if let (Some(before), Some(after)) = (before, after) {
            token_settings(&mut grants, before, after);
        }
    }
    let mut changes = trust_changes(old, new);
    changes.extend(delegate_changes(old, new, &grants));
    changes.extend(grants);
    // Stable: within each group the file's order stays.
    changes.sort_by_key(|c| !c.widening);
    let mut decisions = decision_changes(old, new, cases, &changes);
    decisions.sort_by_key(|d| !d.after);
    Delta { changes, decisions }
}

/// What the broker trusts before any rule is looked at: its audience and the issuers, their key
/// URLs and algorithms. Each can make every grant reachable by tokens it did not accept before
/// (another service's audience, keys someone else holds, a weaker algorithm), and no probe job's
/// decision shows it, so every such change is marked widening unless it only removes trust.
fn trust_changes(old: &Policy, new: &Policy) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut push = |name: &str, what: What, widening| {
        changes.push(Change {
            kind: Scope::Trust,
            grant: name.to_owned(),
            file: None,
            what,
            widening,
        })
    };
    if old.audience != new.audience {
        let what = What::Setting {
            name: "audience",
            before: old.audience.clone(),
            after: new.audience.clone(),
        };
        push("policy", what, true);
    }
    let find =
        |policy: &'_ Policy, url: &str| policy.issuers.iter().find(|i| i.url == url).cloned();
    for issuer in &old.issuers {
        if find(new, &issuer.url).is_none() {
            let what = What::Setting {
                name: "issuer",
                before: issuer.url.clone(),
                after: "removed".into(),
            };
            push(&issuer.url, what, false);
        }
    }
    for issuer in &new.issuers {
        let Some(before) = find(old, &issuer.url) else {
            let what = What::Setting {
                name: "issuer",
                before: "none".into(),
                after: issuer.url.clone(),
            };
            push(&issuer.url, what, true);
            continue;
        };
        if before.jwks_url != issuer.jwks_url {
            let what = What::Setting {
                name: "jwks_url",
                before: before.jwks_url.clone(),
                after: issuer.jwks_url.clone(),
            };
            push(&issuer.url, what, true);
        }
        let algorithms = |i: &Issuer| format!("{:?}", i.algorithms);
        if before.algorithms != issuer.algorithms {
            let added = issuer
                .algorithms
                .iter()
                .any(|a| !before.algorithms.contains(a));
            let what = What::Setting {
                name: "algorithms",
                before: algorithms(&before),
                after: algorithms(issuer),
            };
            push(&issuer.url, what, added);
        }
    }
    changes
}

/// The root policy's `[delegate.*]` entries, by name: each added (widening: its file's grants
/// are new access, listed with it), removed (narrowing: its file goes with it), or changed.
/// `grants` are the grant changes, which say whether a delegate's new file holds the same grants.
fn delegate_changes(old: &Policy, new: &Policy, grants: &[Change]) -> Vec<Change> {
    let mut changes = Vec::new();
    for (name, before, after) in paired(&old.delegates, &new.delegates, |d| &d.name) {
        let mut push = |what, widening| {
            changes.push(Change {
                kind: Scope::Delegate,
                grant: name.to_owned(),
                file: None,
                what,
                widening,
            })
        };
        match (before, after) {
            (None, Some(after)) => push(What::DelegateAdded(delegate_text(new, after)), true),
            (Some(before), None) => push(What::DelegateRemoved(delegate_text(old, before)), false),
            (Some(before), Some(after)) => {
                if guardrail_key(&before.require) != guardrail_key(&after.require) {
                    let what = What::RequireChanged {
                        before: guardrail_text(&before.require),
                        after: guardrail_text(&after.require),
                    };
                    push(
                        what,
                        !guardrail_narrows(Some(&before.require), Some(&after.require)),
                    );
                }
                let same = same_grants(old, new, before, after, grants);
                delegate_settings(&mut changes, before, after, same);
            }
            (None, None) => {}
        }
    }
    changes
}

/// A delegate's ARNs, cap, tokens and file. Each is a compile-time limit on the team's file, not a
/// condition a job meets, so no probe job's decision shows it: an ARN pattern added or edited,
/// a cap raised or lifted, tokens allowed, are marked widening.
fn delegate_settings(changes: &mut Vec<Change>, before: &Delegate, after: &Delegate, same: bool) {
    let mut settings = Settings {
        changes,
        kind: Scope::Delegate,
        grant: &after.name,
        file: None,
    };
    // The grants move with the file: the same grants in another file are no other access, but
    // other grants there are (the file may be another team's, under other owners).
    settings.compare("file", before.file.clone(), after.file.clone(), !same);
    let arns = |d: &Delegate| -> BTreeSet<String> {
        d.role_arns.iter().map(|p| p.source().to_owned()).collect()
    };
    let (was, is) = (arns(before), arns(after));
    if was != is {
        let list = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
        settings.compare("role_arns", list(&was), list(&is), !is.is_subset(&was));
    }
    let widening = match (before.max_duration, after.max_duration) {
        (Some(old), Some(new)) => new > old,
        (Some(_), None) => true,
        (None, _) => false,
    };
    settings.compare(
        "max_duration",
        cap(before.max_duration),
        cap(after.max_duration),
        widening,
    );
    settings.compare(
        "tokens",
        before.tokens.to_string(),
        after.tokens.to_string(),
        after.tokens && !before.tokens,
    );
    let audiences = |d: &Delegate| -> BTreeSet<String> { d.audiences.iter().cloned().collect() };
    let (was, is) = (audiences(before), audiences(after));
    if was != is {
        let list = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
        // Another audience its tokens may be for is another relying party trusting the team.
        settings.compare("audiences", list(&was), list(&is), !is.is_subset(&was));
    }
}

fn cap(max_duration: Option<std::time::Duration>) -> String {
    max_duration.map_or_else(|| "none".into(), as_written)
}

/// Whether the delegate's file holds the same grants in both trees: the same names, and no
/// change found in any of them.
fn same_grants(
    old: &Policy,
    new: &Policy,
    before: &Delegate,
    after: &Delegate,
    grants: &[Change],
) -> bool {
    let was = grants_of(old, before);
    let changed = grants
        .iter()
        .any(|c| matches!(c.kind, Scope::Grant(kind) if was.contains(&(kind, c.grant.as_str()))));
    was == grants_of(new, after) && !changed
}

/// The grants `delegate`'s file defines in `policy`.
fn grants_of<'p>(policy: &'p Policy, delegate: &Delegate) -> BTreeSet<(GrantKind, &'p str)> {
    policy
        .grants()
        .filter(|g| is_under(g, delegate))
        .map(|g| (g.kind, g.name.as_str()))
        .collect()
}

fn is_under(grant: &Grant, delegate: &Delegate) -> bool {
    grant
        .delegate
        .as_ref()
        .is_some_and(|d| d.name == delegate.name)
}

fn delegate_text(policy: &Policy, delegate: &Delegate) -> DelegateText {
    DelegateText {
        file: delegate.file.clone(),
        line: delegate.line,
        require: guardrail_text(&delegate.require),
        role_arns: delegate
            .role_arns
            .iter()
            .map(|p| p.source().to_owned())
            .collect(),
        max_duration: cap(delegate.max_duration),
        tokens: delegate.tokens,
        grants: policy
            .grants()
            .filter(|g| is_under(g, delegate))
            .map(|g| (g.kind, g.name.clone(), g.rules.len()))
            .collect(),
    }
}

/// A guardrail as sets, so that order in the file does not count as a change.
fn guardrail_key(guardrail: &Guardrail) -> (Option<&str>, BTreeMap<&str, BTreeSet<&str>>) {
    let conditions = guardrail
        .conditions
        .iter()
        .map(|c| {
            (
                c.claim.as_str(),
                c.patterns.iter().map(|p| p.source()).collect(),
            )
        })
        .collect();
    (guardrail.issuer.as_deref(), conditions)
}

/// Whether the guardrail `after` (none: the root policy's own grants) provably admits no job
/// `before` does not: `before` had none, or `after` keeps `before`'s issuer and every one of its
/// conditions with the same patterns or some of them, and at most adds conditions (or an
/// issuer). Anything else (a condition dropped, a pattern added or edited, even to a narrower
/// one, the issuer dropped or changed) is not proven narrower.
fn guardrail_narrows(before: Option<&Guardrail>, after: Option<&Guardrail>) -> bool {
    let (before, after) = match (before, after) {
        (None, _) => return true,
        (Some(_), None) => return false,
        (Some(before), Some(after)) => (before, after),
    };
    let issuer = before.issuer.is_none() || before.issuer == after.issuer;
    issuer
        && before.conditions.iter().all(|old| {
            after.conditions.iter().any(|new| {
                new.claim == old.claim
                    && new
                        .patterns
                        .iter()
                        .all(|p| old.patterns.iter().any(|q| q.source() == p.source()))
            })
        })
}

/// Every grant of both files: (kind, name, old, new), roles then tokens.
type GrantPair<'p> = (GrantKind, &'p str, Option<&'p Grant>, Option<&'p Grant>);

fn grant_pairs<'p>(old: &'p Policy, new: &'p Policy) -> Vec<GrantPair<'p>> {
    let mut pairs = pairs_of(GrantKind::Role, &old.roles, &new.roles, |r| &r.grant);
    pairs.extend(pairs_of(GrantKind::Token, &old.tokens, &new.tokens, |t| {
        &t.grant
    }));
    pairs
}

fn pairs_of<'p, T>(
    kind: GrantKind,
    old: &'p [T],
    new: &'p [T],
    grant: fn(&T) -> &Grant,
) -> Vec<GrantPair<'p>> {
    paired(old, new, |item| &grant(item).name)
        .into_iter()
        .map(|(name, before, after)| (kind, name, before.map(grant), after.map(grant)))
        .collect()
}

/// The items (grants, delegates) of both trees by name: (name, old, new), old tree's order first.
fn paired<'p, T>(
    old: &'p [T],
    new: &'p [T],
    name_of: impl Fn(&T) -> &String,
) -> Vec<(&'p str, Option<&'p T>, Option<&'p T>)> {
    let find = |list: &'p [T], name: &str| list.iter().find(|g| name_of(g) == name);
    let mut names: Vec<&str> = old.iter().map(|g| name_of(g).as_str()).collect();
    for item in new {
        let name = name_of(item).as_str();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
        .into_iter()
        .map(|name| (name, find(old, name), find(new, name)))
        .collect()
}

fn grant_changes(
    changes: &mut Vec<Change>,
    kind: GrantKind,
    name: &str,
    before: Option<&Grant>,
    after: Option<&Grant>,
) {
    let mut push = |what, widening, grant: &Grant| {
        changes.push(Change {
            kind: Scope::Grant(kind),
            grant: name.to_owned(),
            file: file_of(grant),
            what,
            widening,
        })
    };
    let texts = |grant: &Grant| {
        let file = file_of(grant);
        let text = |rule| rule_text(rule, file.clone());
        grant.rules.iter().map(text).collect::<Vec<_>>()
    };
    match (before, after) {
        (None, Some(after)) => push(
            What::GrantAdded {
                rules: texts(after),
            },
            true,
            after,
        ),
        (Some(before), None) => push(
            What::GrantRemoved {
                rules: texts(before),
            },
            false,
            before,
        ),
        (Some(before), Some(after)) => {
            let delegate = |grant: &Grant| grant.delegate.as_ref().map(|d| d.name.clone());
            if delegate(before) != delegate(after) {
                // Under another guardrail, or none: the rules admit what that one lets through.
                let what = What::Moved {
                    before: place(before),
                    after: place(after),
                };
                let widening = !guardrail_narrows(guardrail(before), guardrail(after));
                push(what, widening, after);
            }
            let uses = |grant: &Grant| {
                grant
                    .token_uses
                    .map_or("unlimited".into(), |n| n.to_string())
            };
            if before.token_uses != after.token_uses {
                // More uses of one token, or none counted, lets a leaked token do more.
                let widening = match (before.token_uses, after.token_uses) {
                    (Some(old), Some(new)) => new > old,
                    (Some(_), None) => true,
                    _ => false,
                };
                let what = What::Setting {
                    name: "token_uses",
                    before: uses(before),
                    after: uses(after),
                };
                push(what, widening, after);
            }
            // Rules present in both files unchanged (wherever they moved) are no change; the
            // rest pair up in order as changed rules, and what is left was added or removed.
            let mut removed: Vec<&Rule> = before.rules.iter().collect();
            let mut added = Vec::new();
            for rule in &after.rules {
                match removed.iter().position(|old| same_rule(old, rule)) {
                    Some(at) => {
                        removed.remove(at);
                    }
                    None => added.push(rule),
                }
            }
            let paired = removed.len().min(added.len());
            let (old_file, new_file) = (file_of(before), file_of(after));
            for (old, new) in removed.iter().zip(&added) {
                let what = What::RuleChanged {
                    before: rule_text(old, old_file.clone()),
                    after: rule_text(new, new_file.clone()),
                };
                push(what, rule_widens(old, new), after);
            }
            for old in &removed[paired..] {
                push(
                    What::RuleRemoved(rule_text(old, old_file.clone())),
                    false,
                    before,
                );
            }
            for new in &added[paired..] {
                push(
                    What::RuleAdded(rule_text(new, new_file.clone())),
                    true,
                    after,
                );
            }
        }
        (None, None) => {}
    }
}

/// The delegated file that defines a grant; `None` for the root policy's own.
fn file_of(grant: &Grant) -> Option<String> {
    grant.delegate.as_ref().map(|d| d.file.clone())
}

/// Where a grant is defined, for a reviewer: `the root policy`, or
/// `policies/payments.toml (delegate "payments")`.
fn place(grant: &Grant) -> String {
    match &grant.delegate {
        None => "the root policy".into(),
        Some(d) => format!("{} (delegate {:?})", d.file, d.name),
    }
}

fn guardrail(grant: &Grant) -> Option<&Guardrail> {
    grant.delegate.as_deref().map(|d| &d.require)
}

/// Records the setting `name` of a grant or delegate when it changed.
struct Settings<'c> {
    changes: &'c mut Vec<Change>,
    kind: Scope,
    grant: &'c str,
    file: Option<String>,
}

impl Settings<'_> {
    fn compare(&mut self, name: &'static str, before: String, after: String, widening: bool) {
        if before != after {
            self.changes.push(Change {
                kind: self.kind,
                grant: self.grant.to_owned(),
                file: self.file.clone(),
                what: What::Setting {
                    name,
                    before,
                    after,
                },
                widening,
            });
        }
    }
}

fn role_settings(changes: &mut Vec<Change>, before: &Role, after: &Role) {
    let mut settings = Settings {
        changes,
        kind: Scope::Grant(GrantKind::Role),
        grant: &after.grant.name,
        file: file_of(&after.grant),
    };
    // Another role is other access, whatever its name.
    settings.compare("arn", before.arn.to_string(), after.arn.to_string(), true);
    settings.compare(
        "max_duration",
        as_written(before.max_duration),
        as_written(after.max_duration),
        after.max_duration > before.max_duration,
    );
    // The target role's policies may condition on `aws:PrincipalTag/gitlab:*` either way: an
    // Allow on a tag grants more once it appears, a Deny on a tag (or an Allow with
    // `…IfExists`) grants more once it is gone. We cannot see those policies, so any tag added or
    // removed widens; only a new order of the same tags does not.
    settings.compare(
        "session_tags",
        before.session_tags.join(", "),
        after.session_tags.join(", "),
        !same_set(&before.session_tags, &after.session_tags),
    );
    // A session policy only ever narrows the role: adding one narrows, removing one widens, and
    // an edit narrows only when it provably takes statements or actions out.
    let policy = |role: &Role| role.session_policy.clone().unwrap_or_else(|| "none".into());
    let widening = match (&before.session_policy, &after.session_policy) {
        (Some(old), Some(new)) => !only_narrows(old, new),
        (Some(_), None) => true,
        (None, _) => false,
    };
    settings.compare("session_policy", policy(before), policy(after), widening);
}

/// The same names, in any order.
fn same_set(a: &[String], b: &[String]) -> bool {
    a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
}

fn token_settings(changes: &mut Vec<Change>, before: &TokenGrant, after: &TokenGrant) {
    let mut settings = Settings {
        changes,
        kind: Scope::Grant(GrantKind::Token),
        grant: &after.grant.name,
        file: file_of(&after.grant),
    };
    // A relying party trusts the token by `aud` and `sub`: changing either reaches other trust.
    settings.compare(
        "audience",
        before.audience.clone(),
        after.audience.clone(),
        true,
    );
    settings.compare(
        "subject",
        before.subject.source().to_owned(),
        after.subject.source().to_owned(),
        true,
    );
    settings.compare(
        "max_ttl",
        as_written(before.max_ttl),
        as_written(after.max_ttl),
        after.max_ttl > before.max_ttl,
    );
    // A relying party may grant on a copied claim, or deny on it (IAM's `StringNotEquals`, a
    // `…IfExists` or `Null` condition): a claim copied or no longer copied can widen either way.
    settings.compare(
        "claims",
        before.claims.join(", "),
        after.claims.join(", "),
        !same_set(&before.claims, &after.claims),
    );
}

/// A rule's conditions as sets, so that order in the file does not count as a change.
fn rule_key(rule: &Rule) -> (String, BTreeMap<&str, BTreeSet<&str>>, bool) {
    let conditions = rule
        .conditions
        .iter()
        .map(|c| {
            let patterns = c.patterns.iter().map(|p| p.source()).collect();
            (c.claim.as_str(), patterns)
        })
        .collect();
    (rule.issuer.clone(), conditions, rule.allow_path_only)
}

fn same_rule(a: &Rule, b: &Rule) -> bool {
    rule_key(a) == rule_key(b)
}

/// Whether `new` may admit a job `old` did not: unless every job `new` admits is one `old`
/// admitted too (lint's own implication, so `**` covers any glob), or `new` waives the path-only
/// lint `old` kept. The decisions on the probe jobs show what each change really does.
fn rule_widens(old: &Rule, new: &Rule) -> bool {
    !implies(new, old) || (new.allow_path_only && !old.allow_path_only)
}

/// `project_id = "4242", ref = "main" | "release-*"`; `file` is the delegated file it is in.
fn rule_text(rule: &Rule, file: Option<String>) -> RuleText {
    texts(
        rule.number,
        rule.line,
        file,
        condition_texts(&rule.conditions),
    )
}

/// A delegate's `require` as a rule numbered 0 on its line of the root policy, its issuer (when
/// it names one) first as an `issuer` condition, so that an edit of it reads like a rule's.
fn guardrail_text(guardrail: &Guardrail) -> RuleText {
    let issuer = guardrail
        .issuer
        .iter()
        .map(|url| ("issuer".to_owned(), format!("{url:?}")));
    let conditions = issuer
        .chain(condition_texts(&guardrail.conditions))
        .collect();
    texts(0, guardrail.line, None, conditions)
}

/// Each condition as (claim, `"main" | "release-*"`).
fn condition_texts(conditions: &[Condition]) -> Vec<(String, String)> {
    conditions
        .iter()
        .map(|c| {
            let values: Vec<String> = c
                .patterns
                .iter()
                .map(|p| format!("{:?}", p.source()))
                .collect();
            (c.claim.clone(), values.join(" | "))
        })
        .collect()
}

fn texts(
    number: usize,
    line: usize,
    file: Option<String>,
    conditions: Vec<(String, String)>,
) -> RuleText {
    let text = conditions
        .iter()
        .map(|(claim, values)| format!("{claim} = {values}"))
        .collect::<Vec<_>>()
        .join(", ");
    RuleText {
        number,
        line,
        file,
        text,
        conditions,
    }
}

impl RuleText {
    /// `line 14`, or `line 14 of policies/payments.toml` for a rule of a delegated file.
    fn at(&self) -> String {
        match &self.file {
            Some(file) => format!("line {} of {file}", self.line),
            None => format!("line {}", self.line),
        }
    }
}

/// What a changed rule changed: `ref: "main" → "release/*"`, `+ pipeline_source = "push"`,
/// `− environment_protected = "true"`.
fn rule_edits(before: &RuleText, after: &RuleText) -> String {
    let find = |rule: &RuleText, claim: &str| {
        rule.conditions
            .iter()
            .find(|(c, _)| c == claim)
            .map(|(_, v)| v.clone())
    };
    let mut edits = Vec::new();
    for (claim, old) in &before.conditions {
        match find(after, claim) {
            Some(new) if &new != old => edits.push(format!("{claim}: {old} → {new}")),
            Some(_) => {}
            None => edits.push(format!("− {claim} = {old}")),
        }
    }
    for (claim, new) in &after.conditions {
        if find(before, claim).is_none() {
            edits.push(format!("+ {claim} = {new}"));
        }
    }
    if edits.is_empty() {
        // Same conditions: the issuer or the path-only waiver changed.
        format!("{} → {}", before.text, after.text)
    } else {
        edits.join("; ")
    }
}

/// Every probe job, decided by both policies, where the decision differs. Only the smallest
/// jobs that show a change are kept: a job that adds claims to one already listed for the same
/// grant and the same change says nothing new.
fn decision_changes(
    old: &Policy,
    new: &Policy,
    cases: &[Claims],
    changes: &[Change],
) -> Vec<DecisionChange> {
    // A grant whose rules and guardrail did not change decides every job as before: only
    // changed ones are probed (over the probe jobs of both whole trees, which a changed rule or
    // guardrail may newly admit), and every grant of a delegate whose entry changed.
    let delegates: BTreeSet<&str> = changes
        .iter()
        .filter(|c| c.kind == Scope::Delegate)
        .map(|c| c.grant.as_str())
        .collect();
    let changed = |kind: GrantKind, name: &str, grants: [Option<&Grant>; 2]| {
        let guarded = grants.into_iter().flatten().any(|g| {
            g.delegate
                .as_ref()
                .is_some_and(|d| delegates.contains(d.name.as_str()))
        });
        guarded
            || changes
                .iter()
                .any(|c| c.kind == Scope::Grant(kind) && c.grant == name)
    };
    let probes = probes(old, new, cases);
    let several_issuers = old.issuers.len().max(new.issuers.len()) > 1;
    let named = named_claims(old, new);
    let mut changes = Vec::new();
    for (kind, name, before, after) in grant_pairs(old, new) {
        if !changed(kind, name, [before, after]) {
            continue;
        }
        // (issuer, the claims a rule names) of each job whose decision changed, by direction.
        let mut shown: Vec<(bool, &str, BTreeMap<&str, &str>)> = Vec::new();
        let mut found: Vec<(bool, &str, BTreeMap<&str, &str>)> = Vec::new();
        for probe in &probes {
            let allows = |grant: Option<&Grant>| grant.is_some_and(|g| g.decide(probe).is_allow());
            let (was, is) = (allows(before), allows(after));
            if was != is {
                let relevant = probe.iter().filter(|(c, _)| named.contains(c)).collect();
                found.push((is, probe.issuer(), relevant));
            }
        }
        found.sort_by_key(|(_, _, claims)| claims.len());
        for (is, issuer, claims) in found {
            let covered = shown.iter().any(|(d, i, smaller)| {
                *d == is && *i == issuer && smaller.iter().all(|(c, v)| claims.get(c) == Some(v))
            });
            if !covered {
                shown.push((is, issuer, claims));
            }
        }
        for (is, issuer, claims) in shown {
            changes.push(DecisionChange {
                probe: describe(issuer, &claims, several_issuers),
                kind,
                grant: name.to_owned(),
                before: !is,
                after: is,
            });
        }
    }
    changes
}

/// The claims worth showing in a probe job: the ones some rule or guardrail of either tree
/// names, and the ones every probe set varies.
fn named_claims<'p>(old: &'p Policy, new: &'p Policy) -> BTreeSet<&'p str> {
    [old, new]
        .into_iter()
        .flat_map(conditions)
        .map(|c| c.claim.as_str())
        .chain(PROBE_CLAIMS)
        .collect()
}

/// Every condition of a tree: its rules', then its guardrails'.
fn conditions(policy: &Policy) -> impl Iterator<Item = &Condition> {
    let rules = policy
        .grants()
        .flat_map(|g| &g.rules)
        .flat_map(|r| &r.conditions);
    let guardrails = policy.delegates.iter().flat_map(|d| &d.require.conditions);
    rules.chain(guardrails)
}

/// Probe jobs: for every rule of either tree, a job that the rule and its guardrail admit,
/// then that job with one claim at a time set to every other value either tree mentions for it
/// in a rule or a guardrail (literal values and a sample of each glob), or left out; plus the
/// `cases`.
fn probes(old: &Policy, new: &Policy, cases: &[Claims]) -> Vec<Claims> {
    let rules: Vec<(&Rule, Option<&Guardrail>)> = [old, new]
        .iter()
        .flat_map(|p| p.grants())
        .flat_map(|g| g.rules.iter().map(move |r| (r, guardrail(g))))
        .collect();
    let mut samples: BTreeMap<&str, BTreeSet<String>> = PROBE_CLAIMS
        .iter()
        .map(|claim| (*claim, BTreeSet::new()))
        .collect();
    for (claim, values) in FIXED_SAMPLES {
        samples
            .entry(claim)
            .or_default()
            .extend(values.iter().map(|v| v.to_string()));
    }
    for condition in [old, new].into_iter().flat_map(conditions) {
        samples
            .entry(condition.claim.as_str())
            .or_default()
            .extend(condition.patterns.iter().filter_map(|p| p.sample()));
    }
    let mut jobs: BTreeSet<(String, BTreeMap<String, String>)> = BTreeSet::new();
    for (rule, guardrail) in &rules {
        // The guardrail's values first, so that the rule's own (where it names the claim too)
        // are the ones the job holds.
        let guardrail = guardrail.iter().flat_map(|g| &g.conditions);
        let admitted: BTreeMap<String, String> = guardrail
            .chain(&rule.conditions)
            .filter_map(|c| Some((c.claim.clone(), c.patterns.first()?.sample()?)))
            .collect();
        jobs.insert((rule.issuer.clone(), admitted.clone()));
        for (claim, values) in &samples {
            let mut without = admitted.clone();
            without.remove(*claim);
            jobs.insert((rule.issuer.clone(), without));
            for value in values {
                let mut varied = admitted.clone();
                varied.insert(claim.to_string(), value.clone());
                jobs.insert((rule.issuer.clone(), varied));
            }
        }
    }
    jobs.into_iter()
        .map(|(issuer, claims)| {
            Claims::from_pairs(issuer, claims.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        })
        .chain(cases.iter().cloned())
        .collect()
}

/// `project 4242 · namespace 72 · branch main (protected) · env production (protected)`.
fn describe(issuer: &str, claims: &BTreeMap<&str, &str>, with_issuer: bool) -> String {
    let job = Claims::from_pairs(issuer, claims.iter().map(|(k, v)| (*k, *v)));
    let mut parts = Vec::new();
    if with_issuer {
        parts.push(issuer.to_owned());
    }
    if let Some(id) = job.get("project_id") {
        parts.push(format!("project {id}"));
    }
    if let Some(id) = job.get("namespace_id") {
        parts.push(format!("namespace {id}"));
    }
    let protected = |claim| match job.get(claim) {
        Some("true") => " (protected)",
        Some("false") => " (unprotected)",
        _ => "",
    };
    match (job.get("ref_type"), job.get("ref")) {
        (Some(kind), Some(name)) => {
            parts.push(format!("{kind} {name}{}", protected("ref_protected")))
        }
        (None, Some(name)) => parts.push(format!("ref {name}{}", protected("ref_protected"))),
        (Some(kind), None) => parts.push(format!("any {kind}{}", protected("ref_protected"))),
        (None, None) if job.get("ref_protected").is_some() => {
            parts.push(format!("any ref{}", protected("ref_protected")))
        }
        (None, None) => {}
    }
    match job.get("environment") {
        Some(env) => parts.push(format!("env {env}{}", protected("environment_protected"))),
        None if job.get("environment_protected").is_some() => {
            parts.push(format!("any env{}", protected("environment_protected")))
        }
        None => {}
    }
    // Every probe claim but the last (`pipeline_source`) has its own wording above.
    let worded = &PROBE_CLAIMS[..PROBE_CLAIMS.len() - 1];
    for (claim, value) in job.iter() {
        if !worded.contains(&claim) {
            parts.push(format!("{claim} {value}"));
        }
    }
    if parts.is_empty() {
        "any job".into()
    } else {
        parts.join(" · ")
    }
}

fn allowed(allow: bool) -> &'static str {
    if allow { "ALLOW" } else { "deny" }
}

impl Change {
    /// One line for a person: `role "deploy" rule 2 added (line 14): ref = "*"`; a change in a
    /// delegated file names it (`role "payments-x" added in policies/payments.toml …`).
    fn line(&self) -> String {
        let grant = format!("{} {:?}", self.kind, self.grant);
        let file = self.file.as_deref();
        match &self.what {
            What::GrantAdded { rules } => match file {
                Some(file) => format!("{grant} added in {file} with {} rule(s)", rules.len()),
                None => format!("{grant} added with {} rule(s)", rules.len()),
            },
            What::GrantRemoved { rules } => match file {
                Some(file) => format!("{grant} removed from {file} (had {} rule(s))", rules.len()),
                None => format!("{grant} removed (had {} rule(s))", rules.len()),
            },
            What::RuleAdded(rule) => format!(
                "{grant} rule {} added ({}): {}",
                rule.number,
                rule.at(),
                rule.text
            ),
            What::RuleRemoved(rule) => format!(
                "{grant} rule {} removed (was {}): {}",
                rule.number,
                rule.at(),
                rule.text
            ),
            What::RuleChanged { before, after } => format!(
                "{grant} rule {} changed ({}): {}",
                after.number,
                after.at(),
                rule_edits(before, after)
            ),
            What::Setting {
                name,
                before,
                after,
            } => match file {
                Some(file) => format!("{grant} {name} in {file}: {before} → {after}"),
                None => format!("{grant} {name}: {before} → {after}"),
            },
            What::Moved { before, after } => format!("{grant} moved from {before} to {after}"),
            What::DelegateAdded(d) => format!(
                "{grant} added (line {}): {} with {} grant(s)",
                d.line,
                d.file,
                d.grants.len()
            ),
            What::DelegateRemoved(d) => format!(
                "{grant} removed (was line {}): {} (had {} grant(s))",
                d.line,
                d.file,
                d.grants.len()
            ),
            What::RequireChanged { before, after } => format!(
                "{grant} require changed ({}): {}",
                after.at(),
                rule_edits(before, after)
            ),
        }
    }

    /// The rules of an added or removed grant, one per line; an added or removed delegate's
    /// guardrail, limits and grants.
    fn rule_lines(&self) -> Vec<String> {
        match &self.what {
            What::GrantAdded { rules } | What::GrantRemoved { rules } => rules
                .iter()
                .map(|r| format!("rule {} (line {}): {}", r.number, r.line, r.text))
                .collect(),
            What::DelegateAdded(d) | What::DelegateRemoved(d) => {
                let mut lines = vec![
                    format!("require ({}): {}", d.require.at(), d.require.text),
                    format!("role_arns: {}", d.role_arns.join(", ")),
                    format!("max_duration: {}", d.max_duration),
                    format!("tokens: {}", d.tokens),
                ];
                lines.extend(
                    d.grants
                        .iter()
                        .map(|(kind, name, rules)| format!("{kind} {name:?} with {rules} rule(s)")),
                );
                lines
            }
            _ => Vec::new(),
        }
    }
}

impl DecisionChange {
    fn line(&self) -> String {
        format!(
            "{}: {} {:?} {} → {}",
            self.probe,
            self.kind,
            self.grant,
            allowed(self.before),
            allowed(self.after)
        )
    }
}

/// The decision changes a person is shown, and how many more there are.
fn shown_decisions(delta: &Delta) -> (&[DecisionChange], usize) {
    let shown = delta.decisions.len().min(SHOWN_DECISIONS);
    (&delta.decisions[..shown], delta.decisions.len() - shown)
}

/// The delta for a terminal or a job log.
pub fn render_text(delta: &Delta) -> String {
    if delta.is_empty() {
        return "no access changes\n".into();
    }
    let mut out = String::new();
    for change in &delta.changes {
        let mark = if change.widening { "WIDENS" } else { "      " };
        let _ = writeln!(out, "{mark} {}", change.line());
        for rule in change.rule_lines() {
            let _ = writeln!(out, "         {rule}");
        }
    }
    if !delta.decisions.is_empty() {
        let _ = writeln!(out, "\ndecisions that change:");
        let (shown, hidden) = shown_decisions(delta);
        for decision in shown {
            let _ = writeln!(out, "  {}", decision.line());
        }
        if hidden > 0 {
            let _ = writeln!(out, "  … and {hidden} more (--format json lists all)");
        }
    }
    out
}

/// The delta as Markdown, for a merge request note or artifact.
pub fn render_markdown(delta: &Delta) -> String {
    let mut out = String::from("### Policy access changes\n\n");
    if delta.is_empty() {
        out.push_str("No access changes.\n");
        return out;
    }
    if delta.widens() {
        let _ = writeln!(
            out,
            "**⚠ This change widens access** ({}).\n",
            widening_summary(delta)
        );
    }
    if !delta.changes.is_empty() {
        out.push_str("| | grant | change |\n|---|---|---|\n");
        for change in &delta.changes {
            let mark = if change.widening { "⚠ widens" } else { "" };
            let mut text = markdown_cell(&change.line());
            for rule in change.rule_lines() {
                text.push_str("<br>");
                text.push_str(&markdown_cell(&rule));
            }
            let _ = writeln!(
                out,
                "| {mark} | {} {} | {text} |",
                change.kind,
                markdown_cell(&change.grant)
            );
        }
        out.push('\n');
    }
    if !delta.decisions.is_empty() {
        out.push_str(
            "#### Decisions that change\n\n| job | grant | before | after |\n|---|---|---|---|\n",
        );
        let (shown, hidden) = shown_decisions(delta);
        for decision in shown {
            let _ = writeln!(
                out,
                "| {} | {} {} | {} | **{}** |",
                markdown_cell(&decision.probe),
                decision.kind,
                markdown_cell(&decision.grant),
                allowed(decision.before),
                allowed(decision.after)
            );
        }
        if hidden > 0 {
            let _ = writeln!(out, "\n… and {hidden} more decision changes.");
        }
    }
    out
}

/// What the Markdown header counts: the change rows marked widening, and only those (newly
/// allowed jobs are a consequence of them, shown in their own table, not more widening rows).
fn widening_summary(delta: &Delta) -> String {
    match delta.changes.iter().filter(|c| c.widening).count() {
        // No change marked, yet a job newly allowed: say so rather than count none.
        0 => "jobs newly allowed below".into(),
        marked => format!("{marked} widening change(s), marked ⚠ and listed first"),
    }
}

/// The delta for machines.
pub fn render_json(delta: &Delta) -> Value {
    let rule =
        |r: &RuleText| json!({"number": r.number, "line": r.line, "file": r.file, "text": r.text});
    let delegate = |d: &DelegateText| {
        let grants: Vec<Value> = d
            .grants
            .iter()
            .map(|(kind, name, rules)| json!({"kind": kind.to_string(), "grant": name, "rules": rules}))
            .collect();
        json!({"file": d.file, "line": d.line, "require": rule(&d.require),
               "role_arns": d.role_arns, "max_duration": d.max_duration, "tokens": d.tokens,
               "grants": grants})
    };
    let changes: Vec<Value> = delta
        .changes
        .iter()
        .map(|c| {
            let mut value = json!({
                "kind": c.kind.to_string(), "grant": c.grant, "file": c.file,
                "widening": c.widening,
            });
            let detail = match &c.what {
                What::GrantAdded { rules } => json!({"change": "grant_added",
                    "rules": rules.iter().map(rule).collect::<Vec<_>>()}),
                What::GrantRemoved { rules } => json!({"change": "grant_removed",
                    "rules": rules.iter().map(rule).collect::<Vec<_>>()}),
                What::RuleAdded(r) => json!({"change": "rule_added", "after": rule(r)}),
                What::RuleRemoved(r) => json!({"change": "rule_removed", "before": rule(r)}),
                What::RuleChanged { before, after } => {
                    json!({"change": "rule_changed", "before": rule(before), "after": rule(after)})
                }
                What::Setting {
                    name,
                    before,
                    after,
                } => {
                    json!({"change": "setting", "setting": name, "before": before, "after": after})
                }
                What::Moved { before, after } => {
                    json!({"change": "moved", "before": before, "after": after})
                }
                What::DelegateAdded(d) => {
                    json!({"change": "delegate_added", "delegate": delegate(d)})
                }
                What::DelegateRemoved(d) => {
                    json!({"change": "delegate_removed", "delegate": delegate(d)})
                }
                What::RequireChanged { before, after } => json!({"change": "require_changed",
                    "before": rule(before), "after": rule(after)}),
            };
            value
                .as_object_mut()
                .expect("an object")
                .extend(detail.as_object().expect("an object").clone());
            value
        })
        .collect();
    let decisions: Vec<Value> = delta
        .decisions
        .iter()
        .map(|d| {
            json!({"job": d.probe, "kind": d.kind.to_string(), "grant": d.grant,
                   "before": allowed(d.before).to_lowercase(), "after": allowed(d.after).to_lowercase()})
        })
        .collect();
    json!({"widening": delta.widens(), "changes": changes, "decisions": decisions})
}
