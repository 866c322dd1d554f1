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

/// A CI job's claims as GitLab (18.4 and later) issues them to a merge-request pipeline from a
/// fork, `mallory/web` (9999, namespace `mallory`, 666), that a maintainer of the parent project
/// `acme/web` (4242) runs in `acme/web` itself. Since GitLab 18.2.2 `project_*` and
/// `namespace_*` name the fork, whose code the job runs, and `job_project_*` and
/// `job_namespace_*` name `acme/web`, where it runs and whose runners and variables it gets
/// (gitlab-org/gitlab#561735, #563038). `pipeline_source` is `merge_request_event`; `ref` and
/// `ref_path` are the fork's source branch, here one named `main` (GitLab's documented values;
/// the pipeline's own ref, `refs/merge-requests/<iid>/head`, is in no claim), not protected; no
/// environment; `ci_config_*` null, as the configuration is the fork's. The same claims as
/// `examples/policy/claims/fork-merge-request.json`, but valid from now, like [`ci_job`].
pub fn fork_merge_request(issuer: &str, audience: &str, job_id: u64) -> Value {
    let mut claims = with(
        ci_job(issuer, audience, job_id),
        &json!({
            "project_id": "9999",
            "project_path": "mallory/web",
            "namespace_id": "666",
            "namespace_path": "mallory",
            "job_project_id": "4242",
            "job_project_path": "acme/web",
            "job_namespace_id": "72",
            "job_namespace_path": "acme",
            "pipeline_source": "merge_request_event",
            "ref": "main",
            "ref_type": "branch",
            "ref_path": "refs/heads/main",
            "ref_protected": "false",
            "environment": null,
            "environment_protected": null,
            "deployment_tier": null,
            "sha": "9f3e1d2c4b5a69788766554433221100ffeeddcc",
            "project_visibility": "public",
            "sub": "project_path:mallory/web:ref_type:branch:ref:main",
        }),
    );
    // Null rather than absent, as GitLab sends them (`with` would remove them).
    for name in ["ci_config_ref_uri", "ci_config_sha"] {
        claims[name] = Value::Null;
    }
    claims
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

#[cfg(test)]
mod tests {
    use serde_json::Value;

    #[test]
    fn the_fork_constructor_and_the_examples_fork_claims_describe_the_same_job() {
        let file: Value = serde_json::from_str(include_str!(
            "../../../examples/policy/claims/fork-merge-request.json"
        ))
        .unwrap();
        let minted = super::fork_merge_request("https://gitlab.example.com", "aud", 7);
        // What differs between two runs of the job: its ids, its times, its token.
        let run = ["job_id", "pipeline_id", "jti", "iat", "nbf", "exp", "aud"];
        let (file, minted) = (file.as_object().unwrap(), minted.as_object().unwrap());
        let names = |o: &serde_json::Map<String, Value>| -> Vec<String> {
            o.keys()
                .filter(|k| !run.contains(&k.as_str()))
                .cloned()
                .collect()
        };
        assert_eq!(names(file), names(minted));
        for name in names(file) {
            assert_eq!(file[&name], minted[&name], "{name}");
        }
    }

    #[test]
    fn a_forks_merge_request_names_the_fork_as_its_project_and_the_parent_as_where_it_runs() {
        let claims = super::fork_merge_request("https://gitlab.example.com", "aud", 7);
        let main = super::ci_job("https://gitlab.example.com", "aud", 7);
        for (fork, parent) in [
            ("project_id", "job_project_id"),
            ("project_path", "job_project_path"),
            ("namespace_id", "job_namespace_id"),
            ("namespace_path", "job_namespace_path"),
        ] {
            assert_ne!(claims[fork], claims[parent], "{fork}");
            assert_eq!(claims[parent], main[fork], "{parent}");
        }
        assert_eq!(claims["pipeline_source"], "merge_request_event");
        assert_eq!(claims["ref_protected"], "false");
        assert!(claims.get("environment").is_none());
    }
}
