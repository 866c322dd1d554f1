//! An index that keeps decisions fast for policies with thousands of rules: rules that pin one
//! claim (`project_id` or `namespace_id`) to exact values are looked up by that value, so a
//! decision evaluates only the rules that can match, plus those that pin neither.

use std::collections::HashMap;

use crate::{Claims, Pattern, Rule};

/// Below this many rules a plain scan is as fast and explains denials against every rule.
pub(crate) const INDEX_FROM_RULES: usize = 16;
/// The claims a rule can be indexed by, and that say which project a caller is (the
/// enumeration guard's question).
pub(crate) const INDEXABLE: [&str; 2] = ["project_id", "namespace_id"];

/// Rule positions by the exact value of one claim.
#[derive(Debug, Clone)]
pub(crate) struct RuleIndex {
    claim: &'static str,
    by_value: HashMap<String, Vec<usize>>,
    /// Rules that do not pin the claim to exact values: always candidates.
    rest: Vec<usize>,
}

impl RuleIndex {
    /// An index on whichever indexable claim the most rules pin, if any do.
    pub(crate) fn build(rules: &[Rule]) -> Option<Self> {
        let pinned = |rule: &Rule, claim: &str| exact_values(rule, claim).is_some();
        let claim = INDEXABLE
            .into_iter()
            .max_by_key(|claim| rules.iter().filter(|rule| pinned(rule, claim)).count())
            .filter(|claim| rules.iter().any(|rule| pinned(rule, claim)))?;
        let mut index = Self {
            claim,
            by_value: HashMap::new(),
            rest: Vec::new(),
        };
        for (position, rule) in rules.iter().enumerate() {
            match exact_values(rule, claim) {
                Some(values) => values.into_iter().for_each(|v| {
                    index
                        .by_value
                        .entry(v.to_owned())
                        .or_default()
                        .push(position)
                }),
                None => index.rest.push(position),
            }
        }
        Some(index)
    }

    /// Positions of the rules that can match `claims`, ascending (so the first match is the
    /// same rule a full scan would find).
    pub(crate) fn candidates(&self, claims: &Claims) -> Vec<usize> {
        let pinned = claims
            .get(self.claim)
            .and_then(|value| self.by_value.get(value));
        let mut candidates: Vec<usize> = pinned
            .into_iter()
            .flatten()
            .chain(&self.rest)
            .copied()
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        candidates
    }
}

/// The exact values a rule's condition on `claim` accepts, if it has one made only of them.
fn exact_values<'a>(rule: &'a Rule, claim: &str) -> Option<Vec<&'a str>> {
    let condition = rule.conditions.iter().find(|c| c.claim == claim)?;
    condition
        .patterns
        .iter()
        .map(|p| match p {
            Pattern::Exact(text) => Some(text.as_str()),
            Pattern::Glob { .. } => None,
        })
        .collect()
}
