//! GitLab-shaped CI ID token claims, with the types GitLab uses (ids and booleans as strings).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A CI job's claims for project `acme/web` (id 4242) on protected `main`, deploying to
/// `production`; valid from now for an hour, like a job with the default timeout.
pub fn ci_job(issuer: &str, audience: &str, job_id: u64) -> Value {
    let iat = now();
    json!({
        "namespace_id": "72",
        "namespace_path": "acme",
        "project_id": "4242",
        "project_path": "acme/web",
        "user_id": "1001",
        "user_login": "ada",
        "user_email": "ada@example.com",
        "user_access_level": "maintainer",
        "pipeline_id": "1234567",
        "pipeline_source": "push",
        "job_id": job_id.to_string(),
        "ref": "main",
        "ref_type": "branch",
        "ref_path": "refs/heads/main",
        "ref_protected": "true",
        "environment": "production",
        "environment_protected": "true",
        "deployment_tier": "production",
        "runner_id": 12270852,
        "runner_environment": "gitlab-hosted",
        "sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
        "project_visibility": "private",
        "ci_config_ref_uri": "gitlab.example.com/acme/web//.gitlab-ci.yml@refs/heads/main",
        "ci_config_sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
        "jti": format!("jti-{job_id}"),
        "iss": issuer,
        "iat": iat,
        "nbf": iat - 5,
        "exp": iat + 3600,
        "sub": "project_path:acme/web:ref_type:branch:ref:main",
        "aud": audience,
    })
}

/// `claims` with `overrides` applied; a `null` override removes the claim.
pub fn with(mut claims: Value, overrides: &Value) -> Value {
    if let (Some(target), Some(changes)) = (claims.as_object_mut(), overrides.as_object()) {
        for (name, value) in changes {
            if value.is_null() {
                target.remove(name);
            } else {
                target.insert(name.clone(), value.clone());
            }
        }
    }
    claims
}

/// A job id no other test in this or an earlier run uses (milliseconds since the epoch, times a
/// thousand, counting up), so the STS calls moto recorded can be told apart by job.
pub fn unique_job_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis() as u64
        % 1_000_000_000
        * 1000;
    let _ = NEXT.compare_exchange(0, base, Ordering::SeqCst, Ordering::SeqCst);
    NEXT.fetch_add(1, Ordering::SeqCst)
}
