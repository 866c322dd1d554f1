//! `local-issuer`: runs the local GitLab stand-in until interrupted, printing its URL first.
//! `POST {url}/-/mint` with a JSON object of claim overrides returns a signed CI ID token.

#[tokio::main]
async fn main() {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let issuer = local_issuer::LocalIssuer::start_on(&listen).await;
    println!("{}", issuer.url());
    let _ = tokio::signal::ctrl_c().await;
}
