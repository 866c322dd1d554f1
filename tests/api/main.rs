//! One black-box test binary: the router over HTTP, with a local GitLab issuer and moto for STS.

mod attacks;
mod connections;
mod credentials;
mod delegation;
mod fail_safe;
mod faults;
mod gitlab_ci;
mod helpers;
mod job_scripts;
mod lambda;
mod metrics;
mod replay;
mod replay_faults;
mod requests;
#[path = "../common/serve.rs"]
mod serve;
mod sts_errors;
mod subject;
mod token;
mod verification;
