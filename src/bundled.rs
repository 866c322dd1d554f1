//! The policy compiled into the binary by `build.rs`: the deployed artifact carries the very
//! policy that was checked when it was built. Its delegated files compile on first use
//! (`token_broker_policy::lazy`), so a tree of thousands of team files costs a cold start no
//! more than its root's own roles.

use std::path::Path;

use crate::policy::{LazyPolicy, PolicyError};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/bundled_policy.rs"));
}

/// The bundled policy: its root's own part compiled now, each delegated file when one of its
/// grants is first asked for. `build.rs` already compiled all of it, so this only fails if the
/// compiler changed in between, which a build cannot do; a delegated file that fails all the
/// same is logged and its grants denied.
pub fn policy() -> Result<LazyPolicy, PolicyError> {
    LazyPolicy::from_bundle(Path::new(embedded::PATH), embedded::BUNDLE)
        .map(|policy| policy.on_compile_error(log_compile_error))
}

fn log_compile_error(error: &PolicyError) {
    tracing::error!(%error, "a bundled policy file does not compile: its roles and tokens are denied");
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bundled_policy_compiles() {
        let policy = super::policy().unwrap();
        policy.compile_all().unwrap();
        assert!(!policy.issuers().is_empty());
    }
}
