//! The process's one HTTP client: the AWS SDK's own hyper + rustls (aws-lc) stack, shared by every
//! SDK client and by the JWKS fetches. One TLS stack and one load of the root certificates instead
//! of two; under Lambda's CPU share that load is a measurable part of a cold start
//! (BENCHMARKS.md). Inside it, two connectors: one for this machine and instance metadata, which
//! never has a proxy, and one for everything else, which sends HTTPS through `HTTPS_PROXY`.

use std::sync::OnceLock;
use std::time::Duration;

use aws_sdk_sts::config::SharedHttpClient;
use aws_smithy_http_client::Connector;
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector, http_client_fn,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_types::body::SdkBody;
use http_body_util::{BodyExt, Limited};

use super::direct;

/// The process's connector. It follows no redirect and connects within [`super::timeouts`]'s
/// connect timeout.
fn connector() -> &'static SharedHttpConnector {
    static CONNECTOR: OnceLock<SharedHttpConnector> = OnceLock::new();
    CONNECTOR.get_or_init(|| SharedHttpConnector::new(Route::default()))
}

/// Each request to the connector for its host: [`direct`]'s hosts (loopback, instance metadata,
/// by address, not spelling) to one without a proxy that connects to the very address the host
/// was judged by; every other host to one that sends HTTPS through the proxy `HTTPS_PROXY` names
/// ([`proxy`]). Each is made (and the root certificates loaded) on its first request: the JWKS
/// prefetch at start, or the first AWS call.
#[derive(Debug, Default)]
struct Route {
    direct: OnceLock<SharedHttpConnector>,
    egress: OnceLock<SharedHttpConnector>,
}

impl HttpConnector for Route {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        // Parsed as the connector parses it, to judge the host it will connect to.
        let direct = request
            .uri()
            .parse::<http::Uri>()
            .ok()
            .and_then(|uri| uri.host().and_then(direct::addresses))
            .is_some();
        let connector = if direct {
            self.direct
                .get_or_init(|| build(ProxyConfig::disabled(), Some(direct::Resolver)))
        } else {
            self.egress.get_or_init(|| build(proxy(), None))
        };
        connector.call(request)
    }
}

/// A connector with `proxy`, resolving names with `resolver` (the C library's when `None`).
fn build(proxy: ProxyConfig, resolver: Option<direct::Resolver>) -> SharedHttpConnector {
    let settings = HttpConnectorSettings::builder()
        .connect_timeout(
            super::timeouts()
                .connect_timeout()
                .expect("the broker's timeouts set a connect timeout"),
        )
        .build();
    let builder = Connector::builder()
        .connector_settings(settings)
        .proxy_config(proxy)
        .tls_provider(Provider::Rustls(CryptoMode::AwsLc));
    SharedHttpConnector::new(match resolver {
        Some(resolver) => builder.build_with_resolver(resolver),
        None => builder.build(),
    })
}

/// Egress through `HTTPS_PROXY` (or `https_proxy`) for HTTPS calls, except to the hosts `NO_PROXY`
/// names, as reqwest did for the JWKS (the SDK's own default ignores proxies). Loopback and
/// instance metadata never reach this connector ([`Route`]): `NO_PROXY` compares text, so
/// `127.1` or `localhost.` would slip past it. Plain HTTP is never proxied: the only such calls
/// are to those link-local endpoints and to local emulators, and `HTTP_PROXY` would hand the
/// credentials they answer to the proxy.
fn proxy() -> ProxyConfig {
    let var = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    };
    let Some(url) = var(["HTTPS_PROXY", "https_proxy"]) else {
        return ProxyConfig::disabled();
    };
    let Ok(config) = ProxyConfig::https(url.as_str()) else {
        // Not the URL itself: it may carry the proxy's password.
        tracing::warn!("HTTPS_PROXY is not a proxy URL; connecting directly");
        return ProxyConfig::disabled();
    };
    match var(["NO_PROXY", "no_proxy"]) {
        Some(rules) => config.no_proxy(rules),
        None => config,
    }
}

/// The shared connector as the SDK's HTTP client. The SDK asks with each client's connect and
/// read timeouts and gets the one connector whatever they are: its connect timeout is
/// [`super::timeouts`]'s, and each client's attempt and operation timeouts (which the SDK
/// applies above the connector) bound everything else.
pub(crate) fn sdk_client() -> SharedHttpClient {
    http_client_fn(|_settings, _components| connector().clone())
}

/// `GET url`: its body when the answer is `200` and at most `max_bytes` long, all within
/// `timeout`. Redirects are not followed (an answer other than `200` is an error). The error
/// says what failed, never what was sent or received.
pub(crate) async fn get(url: &str, max_bytes: usize, timeout: Duration) -> Result<Vec<u8>, String> {
    tokio::time::timeout(timeout, get_unbounded(url, max_bytes))
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

async fn get_unbounded(url: &str, max_bytes: usize) -> Result<Vec<u8>, String> {
    let request = http::Request::get(url)
        .header(
            http::header::USER_AGENT,
            concat!("token-broker/", env!("CARGO_PKG_VERSION")),
        )
        .body(SdkBody::empty())
        .map_err(|_| "not a URL".to_owned())?;
    let request = HttpRequest::try_from(request).map_err(|_| "not a URL".to_owned())?;
    let response = connector().call(request).await.map_err(|error| {
        if error.is_timeout() {
            "timed out".to_owned()
        } else if error.is_io() {
            "connection failed".to_owned()
        } else {
            "request failed".to_owned()
        }
    })?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(format!("status {status}"));
    }
    let declared = response
        .headers()
        .get("content-length")
        .and_then(|len| len.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_bytes as u64) {
        return Err(format!("body larger than {max_bytes} bytes"));
    }
    let body = Limited::new(response.into_body(), max_bytes)
        .collect()
        .await
        .map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                format!("body larger than {max_bytes} bytes")
            } else {
                "reading the body failed".to_owned()
            }
        })?;
    Ok(body.to_bytes().to_vec())
}
