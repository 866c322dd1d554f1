//! The policy compiled into the binary by `build.rs`: the deployed artifact carries the very
//! policy that was checked when it was built.

use std::path::Path;

use crate::policy::{Policy, PolicyError};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/bundled_policy.rs"));
}

/// The bundled policy, compiled. `build.rs` already compiled it once, so this only fails if the
/// compiler changed in between, which a build cannot do.
pub fn policy() -> Result<Policy, PolicyError> {
    crate::policy::parse(Path::new(embedded::PATH), embedded::TEXT, &|relative| {
        embedded::FILES
            .iter()
            .find(|(name, _)| *name == relative)
            .map(|(_, text)| (*text).to_owned())
            .ok_or_else(|| format!("{relative} was not bundled"))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bundled_policy_compiles() {
        let policy = super::policy().unwrap();
        assert!(!policy.issuers.is_empty());
    }
}
