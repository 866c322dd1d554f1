//! The policy the broker's black-box tests run against, and writing it where the broker loads it.
//! Shared by every test binary that starts a broker, so they all test the same grants.

use std::path::{Path, PathBuf};

/// The broker's audience in [`POLICY`]: what the tests' GitLab tokens are minted for.
pub const AUDIENCE: &str = "https://token-broker.example.com";

/// The test policy; `{issuer}` stands for the local issuer's URL. Project 4242's protected `main`
/// gets every role and the `aws` token; tags (`v*`, `release-*`) in namespace 72 get the deploy
/// role, whose text is shared with the policy crate's unit tests
/// (`crates/policy/tests/fixtures/deploy-web-prod.toml`).
pub const POLICY: &str = concat!(
    r#"
audience = "https://token-broker.example.com"

[[issuer]]
url = "{issuer}"

"#,
    include_str!("../../policy/tests/fixtures/deploy-web-prod.toml"),
    r#"
[role.read-only]
arn = "arn:aws:iam::123456789012:role/read-only"
max_duration = "30m"

[[role.read-only.allow]]
project_id = "4242"

[token.aws]
audience = "sts.amazonaws.com"
max_ttl = "10m"
claims = ["project_id", "ref", "runner_id", "environment"]

[[token.aws.allow]]
project_id = "4242"
ref_type = "branch"
ref = "main"
ref_protected = "true"

[role.tagged]
arn = "arn:aws:iam::123456789012:role/tagged"
session_tags = ["ref"]

[[role.tagged.allow]]
project_id = "4242"
"#
);

/// The session policy `deploy-web-prod` names, which the broker reads beside the policy file.
pub const SESSION_POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::acme-web/*"}]
}"#;

/// Writes `policy` with `{issuer}` replaced by `issuer_url` to `dir/policy.toml`, and
/// [`SESSION_POLICY`] to `dir/policies/deploy-web-prod.json`; returns the policy file's path.
pub fn write_policy(dir: &Path, policy: &str, issuer_url: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("policies")).expect("policies dir");
    std::fs::write(dir.join("policies/deploy-web-prod.json"), SESSION_POLICY)
        .expect("session policy");
    let path = dir.join("policy.toml");
    std::fs::write(&path, policy.replace("{issuer}", issuer_url)).expect("policy file");
    path
}
