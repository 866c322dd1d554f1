//! Whether one session policy provably grants no more than another (`policy diff` asks it). A
//! session policy scopes the role down, so an edit narrows only when every statement of the new
//! document is an `Allow` of the old one with some actions taken out, or an old statement
//! unchanged, and nothing else moved. Anything we cannot prove that of (a Deny dropped, a
//! Resource or Condition edited, a wildcard added, text that is not JSON) counts as widening:
//! a reviewer is asked to look rather than told it is safe.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// Whether the policy `after` grants nothing `before` did not: `after` keeps the document's
/// other keys, and its statements pair off one to one with statements of `before` that they
/// equal or narrow; `before`'s unpaired statements may only be `Allow`s (removed).
pub(crate) fn only_narrows(before: &str, after: &str) -> bool {
    let (Some(before), Some(after)) = (document(before), document(after)) else {
        return false;
    };
    if others(&before.0) != others(&after.0) {
        return false;
    }
    let Some(pairing) = pair(&before.1, &after.1) else {
        return false;
    };
    before
        .1
        .iter()
        .enumerate()
        .all(|(i, statement)| pairing.contains(&i) || is_allow(statement))
}

/// A document as (its top-level object, its statements); `Statement` may be one object or a list.
fn document(text: &str) -> Option<(Map<String, Value>, Vec<Value>)> {
    let Value::Object(top) = serde_json::from_str(text).ok()? else {
        return None;
    };
    let statements = match top.get("Statement")? {
        Value::Array(list) => list.clone(),
        single @ Value::Object(_) => vec![single.clone()],
        _ => return None,
    };
    Some((top, statements))
}

/// The document without its statements (`Version`, `Id`), which must not change.
fn others(top: &Map<String, Value>) -> Map<String, Value> {
    let mut rest = top.clone();
    rest.remove("Statement");
    rest
}

fn is_allow(statement: &Value) -> bool {
    statement.get("Effect").and_then(Value::as_str) == Some("Allow")
}

/// Whether `new` grants nothing beyond `old`: the same statement, or the same `Allow` with a
/// subset of its `Action`s (compared as written: `s3:*` added to `s3:GetObject` is not a subset).
fn narrows(old: &Value, new: &Value) -> bool {
    if old == new {
        return true;
    }
    let (Some(old_fields), Some(new_fields)) = (old.as_object(), new.as_object()) else {
        return false;
    };
    let without_action = |fields: &Map<String, Value>| {
        let mut rest = fields.clone();
        rest.remove("Action");
        rest
    };
    is_allow(old)
        && without_action(old_fields) == without_action(new_fields)
        && match (actions(old), actions(new)) {
            (Some(old), Some(new)) => new.is_subset(&old),
            _ => false,
        }
}

/// A statement's `Action`, one string or a list of them.
fn actions(statement: &Value) -> Option<BTreeSet<&str>> {
    match statement.get("Action")? {
        Value::String(action) => Some(BTreeSet::from([action.as_str()])),
        Value::Array(list) => list.iter().map(Value::as_str).collect(),
        _ => None,
    }
}

/// Pairs every statement of `after` with its own statement of `before` that it narrows (a
/// bipartite matching, so that reordered statements still pair); the indices of `before` used,
/// or None when some statement of `after` has none.
fn pair(before: &[Value], after: &[Value]) -> Option<BTreeSet<usize>> {
    // owner[i]: which statement of `after` holds statement i of `before`.
    let mut owner: Vec<Option<usize>> = vec![None; before.len()];
    for new in 0..after.len() {
        let mut seen = vec![false; before.len()];
        if !augment(new, before, after, &mut owner, &mut seen) {
            return None;
        }
    }
    Some(
        owner
            .iter()
            .enumerate()
            .filter(|(_, o)| o.is_some())
            .map(|(i, _)| i)
            .collect(),
    )
}

/// Kuhn's augmenting path: gives `after[new]` a statement of `before`, moving earlier
/// pairings along when that frees one.
fn augment(
    new: usize,
    before: &[Value],
    after: &[Value],
    owner: &mut [Option<usize>],
    seen: &mut [bool],
) -> bool {
    for old in 0..before.len() {
        if seen[old] || !narrows(&before[old], &after[new]) {
            continue;
        }
        seen[old] = true;
        let free = match owner[old] {
            None => true,
            Some(holder) => augment(holder, before, after, owner, seen),
        };
        if free {
            owner[old] = Some(new);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::only_narrows;

    const BEFORE: &str = r#"{"Version":"2012-10-17","Statement":[
        {"Effect":"Allow","Action":["s3:GetObject","s3:PutObject"],"Resource":"*"},
        {"Effect":"Allow","Action":["s3:GetObject"],"Resource":"arn:aws:s3:::a/*"}]}"#;

    #[test]
    fn reordered_statements_that_each_narrow_still_pair_off() {
        // A greedy pairing gives the first new statement the first old one and leaves the
        // second with none; the matching moves it along.
        let after = r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Action":["s3:GetObject"],"Resource":"arn:aws:s3:::a/*"},
            {"Effect":"Allow","Action":"s3:PutObject","Resource":"*"}]}"#;
        assert!(only_narrows(BEFORE, after));
    }

    #[test]
    fn a_statement_split_in_two_is_not_proven_narrower() {
        let after = r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Action":"s3:GetObject","Resource":"*"},
            {"Effect":"Allow","Action":"s3:PutObject","Resource":"*"},
            {"Effect":"Allow","Action":["s3:GetObject"],"Resource":"arn:aws:s3:::a/*"}]}"#;
        assert!(!only_narrows(BEFORE, after));
    }

    #[test]
    fn a_changed_version_is_not_proven_narrower() {
        let after = BEFORE.replace("2012-10-17", "2008-10-17");
        assert!(!only_narrows(BEFORE, &after));
    }
}
