//! The exchange's CPU cost, measured against its floor: one bare RSA-2048 signature verification
//! with the same crypto library (aws-lc-rs). Verifying a GitLab token (RSA-2048 and RSA-4096, as
//! gitlab.com serves both), building the STS request, and the whole in-process exchange through
//! the router, with STS answered by an in-process HTTP client (no network, no moto).
//!
//! cargo bench --bench exchange

use std::hint::black_box;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use aws_sdk_sts::config::{Credentials, SharedCredentialsProvider};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use criterion::Criterion;
use local_issuer::{LocalIssuer, SigningKey};
use token_broker::config::Settings;
use token_broker::http::{RequestMeta, handle};
use token_broker::oidc::Verifier;
use token_broker::secret::Secret;
use token_broker::{broker, policy, startup};

const AUDIENCE: &str = "https://token-broker.example.com";
const ASSUME_ROLE_OK: &str = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult><AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/deploy-web-prod/gitlab-4242-1</Arn><AssumedRoleId>AROA3XFRBF535PLBIFPI4:gitlab-4242-1</AssumedRoleId></AssumedRoleUser><Credentials><AccessKeyId>ASIAIOSFODNN7EXAMPLE</AccessKeyId><SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY</SecretAccessKey><SessionToken>FwoGZXIvYXdzEXAMPLE</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleResult><ResponseMetadata><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ResponseMetadata></AssumeRoleResponse>"#;

/// STS answered inside the process: the SDK still builds, signs and parses every call.
#[derive(Debug, Clone)]
struct InProcessSts;

impl HttpConnector for InProcessSts {
    fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
        let status = 200u16.try_into().expect("status");
        HttpConnectorFuture::ready(Ok(HttpResponse::new(status, SdkBody::from(ASSUME_ROLE_OK))))
    }
}

impl HttpClient for InProcessSts {
    fn http_connector(
        &self,
        _: &HttpConnectorSettings,
        _: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

fn sdk_config() -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "bench", "bench", None, None, "bench",
        )))
        .http_client(InProcessSts)
        .build()
}

const POLICY: &str = r#"
audience = "https://token-broker.example.com"
[[issuer]]
url = "{issuer}"
[role.deploy-web-prod]
arn = "arn:aws:iam::123456789012:role/deploy-web-prod"
session_tags = ["project_id", "ref", "environment"]
[[role.deploy-web-prod.allow]]
project_id = "4242"
ref_type = "branch"
ref = "main"
ref_protected = "true"
environment = "production"
"#;

fn compile(issuer: &LocalIssuer) -> policy::Policy {
    let text = POLICY.replace("{issuer}", issuer.url());
    policy::parse(std::path::Path::new("bench.toml"), &text, &|_| {
        Err("none".into())
    })
    .expect("policy")
}

fn bare_verify(c: &mut Criterion) {
    let key = aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).expect("key");
    let message = b"a JWS signing input of typical length".repeat(40);
    let mut signature = vec![0; key.public_modulus_len()];
    key.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        &message,
        &mut signature,
    )
    .expect("sign");
    let public = UnparsedPublicKey::new(
        &RSA_PKCS1_2048_8192_SHA256,
        key.public_key().as_ref().to_vec(),
    );
    c.bench_function("floor/bare_rs256_verify_rsa2048", |b| {
        b.iter(|| {
            public
                .verify(black_box(&message), black_box(&signature))
                .expect("verifies")
        })
    });
}

fn verify(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    for (name, size) in [("rsa2048", KeySize::Rsa2048), ("rsa4096", KeySize::Rsa4096)] {
        let issuer = rt.block_on(LocalIssuer::start_with(
            "127.0.0.1:0",
            SigningKey::generate_with(size),
        ));
        let policy = compile(&issuer);
        let verifier = Verifier::new(
            policy,
            std::time::Duration::from_secs(60),
            Default::default(),
        );
        rt.block_on(verifier.prefetch());
        let token = Secret::new(issuer.mint(&issuer.claims(AUDIENCE, 1)));
        rt.block_on(verifier.verify(&token)).expect("verifies");
        c.bench_function(&format!("verify_gitlab_token/{name}"), |b| {
            b.iter(|| {
                rt.block_on(verifier.verify(black_box(&token)))
                    .expect("verifies")
            })
        });
    }
}

fn plan_and_exchange(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let issuer = rt.block_on(LocalIssuer::start());
    let policy = compile(&issuer);
    let verifier = Verifier::new(
        policy.clone(),
        std::time::Duration::from_secs(60),
        Default::default(),
    );
    rt.block_on(verifier.prefetch());
    let token = issuer.mint(&issuer.claims(AUDIENCE, 7));
    let verified = rt
        .block_on(verifier.verify(&Secret::new(token.clone())))
        .expect("verifies");
    let role = policy.role("deploy-web-prod").expect("role").clone();
    let now = token_broker::oidc::now_secs();
    c.bench_function("plan_sts_request", |b| {
        b.iter(|| {
            broker::plan(black_box(&role), black_box(&verified), None, None, now).expect("plan")
        })
    });

    // Built the way the binary builds it, which loads the policy from a file.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, POLICY.replace("{issuer}", issuer.url())).expect("policy file");
    let settings = Settings {
        policy: Some(path),
        ..Settings::default()
    };
    let state = rt
        .block_on(startup::build(
            &settings,
            &sdk_config(),
            &sdk_config(),
            Default::default(),
        ))
        .expect("state");
    let request = || {
        http::Request::post("/v1/credentials?role=deploy-web-prod")
            .header("authorization", format!("Bearer {token}"))
            .body(Bytes::new())
            .expect("request")
    };
    let meta = || RequestMeta {
        request_id: "bench".into(),
        origin: None,
    };
    assert_eq!(rt.block_on(handle(&state, request(), meta())).status(), 200);
    c.bench_function("whole_exchange_in_process", |b| {
        b.iter(|| rt.block_on(handle(&state, request(), meta())))
    });
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut criterion = Criterion::default().configure_from_args();
    bare_verify(&mut criterion);
    verify(&mut criterion, &rt);
    plan_and_exchange(&mut criterion, &rt);
    criterion.final_summary();
}
