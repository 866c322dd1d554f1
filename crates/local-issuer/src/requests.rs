//! The two requests a CI job sends the broker, well formed, so every test harness sends them the
//! same way (the attack tables build their own malformed ones).

use crate::urn::{JWT, TOKEN_EXCHANGE};

/// `POST {base}/v1/token`: a token exchange (RFC 8693) of `subject_token`, a GitLab ID token,
/// for a token for `audience`.
pub async fn exchange(
    client: &reqwest::Client,
    base: &str,
    subject_token: &str,
    audience: &str,
) -> reqwest::Response {
    let form = [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", subject_token),
        ("subject_token_type", JWT),
        ("audience", audience),
    ];
    client
        .post(format!("{base}/v1/token"))
        .form(&form)
        .send()
        .await
        .expect("the broker answers")
}

/// `POST {base}/v1/credentials?{query}` with `token` as the bearer token.
pub async fn credentials(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    query: &str,
) -> reqwest::Response {
    client
        .post(format!("{base}/v1/credentials?{query}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("the broker answers")
}
