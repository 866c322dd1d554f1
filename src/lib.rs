//! token-broker as a library: the binary in `main.rs` only wires these modules together, and the
//! black-box tests in `tests/` drive the same router the binary serves.

pub mod aws;
pub mod broker;
pub mod bundled;
pub mod cli;
pub mod config;
pub mod http;
pub mod lambda;
pub mod metrics;
pub mod oidc;
pub mod secret;
pub mod serve;
pub mod startup;
pub mod telemetry;

pub use startup::AppState;
pub use token_broker_policy as policy;
pub use token_broker_policy::{Claims, Policy};
