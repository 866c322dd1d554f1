//! What GitLab puts in a CI job's ID token, for lints: which claims exist, which are only
//! sometimes present, which may hold values STS refuses as tag values, and which say whose code
//! a job runs as against where it runs.

/// Every claim of a GitLab CI ID token (GitLab 17/18), registered claims included: the claims
/// table of <https://docs.gitlab.com/ci/secrets/id_token_authentication/> as of GitLab 18.9
/// (`job_project_*` and `job_namespace_*` since 18.4, `job_source` and `job_config` since 18.9).
pub const KNOWN_CLAIMS: &[&str] = &[
    "namespace_id",
    "namespace_path",
    "project_id",
    "project_path",
    "user_id",
    "user_login",
    "user_email",
    "user_access_level",
    "user_identities",
    "pipeline_id",
    "pipeline_source",
    "job_id",
    "ref",
    "ref_type",
    "ref_path",
    "ref_protected",
    "groups_direct",
    "environment",
    "environment_protected",
    "deployment_tier",
    "environment_action",
    "runner_id",
    "runner_environment",
    "sha",
    "project_visibility",
    "ci_config_ref_uri",
    "ci_config_sha",
    "job_project_id",
    "job_project_path",
    "job_namespace_id",
    "job_namespace_path",
    "job_source",
    "job_config",
    "jti",
    "iss",
    "iat",
    "nbf",
    "exp",
    "sub",
    "aud",
];

/// Claims GitLab leaves out of some jobs' tokens (no environment, no linked identity, a job no
/// policy started, a GitLab older than the claim, …).
pub const SOMETIMES_ABSENT: &[&str] = &[
    "environment",
    "environment_protected",
    "deployment_tier",
    "environment_action",
    "user_identities",
    "groups_direct",
    "user_email",
    "job_project_id",
    "job_project_path",
    "job_namespace_id",
    "job_namespace_path",
    "job_source",
    "job_config",
];

/// Claims GitLab sends as a JSON array or object, never as a string: the policy engine compares
/// strings only ([`crate::Claims::from_json`] leaves these out), so a condition on one never
/// matches.
pub const NOT_STRINGS: &[&str] = &["user_identities", "groups_direct", "job_config"];

/// Claims that name the project (and its group) the job runs in (GitLab 18.4 and later,
/// gitlab-org/gitlab#563038). `project_*` and `namespace_*` name the project whose code it runs:
/// in a merge-request pipeline the source project, so since GitLab 18.2.2 (gitlab-org/gitlab#561735)
/// a fork's merge-request pipeline run in the parent project carries the fork's `project_id` and
/// the parent's `job_project_id`.
pub const JOB_IDENTITY: &[&str] = &[
    "job_project_id",
    "job_project_path",
    "job_namespace_id",
    "job_namespace_path",
];

/// The `pipeline_source` values of pipelines that can run a fork's code in the parent project:
/// a merge-request pipeline run there, and the child pipelines it triggers (whose configuration
/// and code come from the same fork commit).
pub const FORK_CODE_SOURCES: &[&str] = &["merge_request_event", "parent_pipeline"];

/// Claims whose values GitLab lets users choose with characters STS refuses in a tag value
/// (git refs may contain `;`, `!`, `#`, …; environment names `$`, `{`, `}`, …).
pub const FREE_FORM: &[&str] = &[
    "ref",
    "ref_path",
    "environment",
    "user_email",
    "ci_config_ref_uri",
    "sub",
];

/// Claims that say which job or project this is; a match-everything pattern on one is a mistake.
pub const IDENTIFYING: &[&str] = &[
    "project_id",
    "project_path",
    "namespace_id",
    "namespace_path",
    "ref",
    "ref_path",
    "ref_type",
    "ref_protected",
    "environment",
    "environment_protected",
    "job_project_id",
    "job_project_path",
    "job_namespace_id",
    "job_namespace_path",
    "user_login",
    "user_id",
    "pipeline_source",
];

/// The known claim closest to `name`, if it is a plausible typo (edit distance ≤ 2).
pub fn did_you_mean(name: &str) -> Option<&'static str> {
    KNOWN_CLAIMS
        .iter()
        .map(|known| (distance(name, known), *known))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, known)| known)
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(current + 1);
            previous = current;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    #[test]
    fn typos_get_a_suggestion_and_strangers_do_not() {
        assert_eq!(super::did_you_mean("projectid"), Some("project_id"));
        assert_eq!(super::did_you_mean("ref_protect"), Some("ref_protected"));
        assert_eq!(super::did_you_mean("enviroment"), Some("environment"));
        assert_eq!(super::did_you_mean("favourite_colour"), None);
    }
}
