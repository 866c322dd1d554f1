//! `local-sts [ADDRESS]`: the fast STS stand-in on its own, printing its URL first.

#[tokio::main]
async fn main() {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let sts = local_issuer::sts::LocalSts::start_on(&listen).await;
    println!("{}", sts.url());
    let _ = tokio::signal::ctrl_c().await;
}
