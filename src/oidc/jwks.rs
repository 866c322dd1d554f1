//! The JWKS cache: each issuer's signing keys, fetched only from the policy's `jwks_url`.
//!
//! Keys survive warm invocations. A `kid` that is not cached triggers a refetch, at most one per
//! issuer per cooldown however many requests miss at once (they wait on one lock and share the
//! result), so unknown `kid`s cannot amplify into fetches. A failed fetch never drops the keys
//! already cached, and an answer that is not a usable key set (a proxy's HTML page, `{"keys":[]}`,
//! two keys under one `kid`) is a failed fetch: anyone can trigger a refetch with a made-up `kid`,
//! so a garbage answer must not be able to empty the cache. Every fetch is capped in time and
//! size and follows no redirect; it goes over the SDK's HTTP client (`aws::http`), so the process
//! has one TLS stack.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::key::VerifyingKey;
use crate::aws::http;
use crate::metrics::Metrics;
use crate::policy::Issuer;

/// Limits for JWKS fetches.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    /// Whole-fetch timeout; default 3 s.
    pub timeout: Duration,
    /// Largest JWKS body read; default 64 KiB (gitlab.com's is under 4 KiB).
    pub max_bytes: usize,
    /// Least time between two fetches for one issuer after a success; default 60 s.
    pub cooldown: Duration,
    /// Least time between two fetches after a failure; default 5 s.
    pub failure_backoff: Duration,
    /// Age after which cached keys are refreshed on use (kept if the refresh fails); default 1 h.
    pub max_age: Duration,
}

impl Default for JwksSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(3),
            max_bytes: 64 * 1024,
            cooldown: Duration::from_secs(60),
            failure_backoff: Duration::from_secs(5),
            max_age: Duration::from_secs(3600),
        }
    }
}

/// Why no key could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The issuer's JWKS, freshly fetched or within the cooldown, has no such `kid`.
    #[error("the token's kid is not among the issuer's keys")]
    UnknownKid,
    /// The JWKS could not be fetched and no cached key has that `kid`: retryable.
    #[error("the issuer's keys cannot be fetched right now")]
    Unavailable,
}

/// The signing keys of every issuer in the policy.
pub struct JwksCache {
    settings: JwksSettings,
    issuers: HashMap<String, IssuerKeys>,
    metrics: Metrics,
}

struct IssuerKeys {
    jwks_url: String,
    algorithms: Vec<Algorithm>,
    keys: RwLock<KeySet>,
    fetch: Mutex<FetchState>,
}

/// One published key, with the algorithm its JWK binds it to (`alg`), if any.
#[derive(Clone)]
pub struct CachedKey {
    /// The key, parsed once when the set was fetched, for each algorithm it may verify.
    pub key: Arc<VerifyingKey>,
    /// The JWK's `alg`: when set, the key verifies tokens of that algorithm only.
    pub algorithm: Option<Algorithm>,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, CachedKey>,
    fetched_at: Option<Instant>,
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    last_ok: bool,
}

impl JwksCache {
    /// An empty cache for the policy's issuers.
    pub fn new(issuers: &[Issuer], settings: JwksSettings) -> Self {
        let issuers = issuers
            .iter()
            .map(|issuer| {
                let keys = IssuerKeys {
                    jwks_url: issuer.jwks_url.clone(),
                    algorithms: issuer
                        .algorithms
                        .iter()
                        .map(|a| super::jwt_algorithm(*a))
                        .collect(),
                    keys: RwLock::default(),
                    fetch: Mutex::default(),
                };
                (issuer.url.clone(), keys)
            })
            .collect();
        Self {
            settings,
            issuers,
            metrics: Metrics::default(),
        }
    }

    /// Counts each failed fetch in `metrics` (`JwksFetchFailures`); default: not counted.
    pub fn set_metrics(&mut self, metrics: Metrics) {
        self.metrics = metrics;
    }

    /// Fetches every issuer's keys at once, so the first request does not wait for them.
    /// Failures are logged and left for the first request to retry.
    pub async fn prefetch(&self) {
        let fetches = self.issuers.values().map(|issuer| async move {
            let mut state = issuer.fetch.lock().await;
            issuer.refresh(self, &mut state).await;
        });
        futures_util::future::join_all(fetches).await;
    }

    /// The key `kid` of issuer `iss` (which the verifier already matched against the policy).
    pub async fn key(&self, iss: &str, kid: &str) -> Result<CachedKey, KeyError> {
        let issuer = self.issuers.get(iss).ok_or(KeyError::UnknownKid)?;
        if let Some(key) = issuer.fresh_key(kid, self.settings.max_age) {
            return Ok(key);
        }
        let mut state = issuer.fetch.lock().await;
        // Another request may have fetched while this one waited for the lock.
        if let Some(key) = issuer.fresh_key(kid, self.settings.max_age) {
            return Ok(key);
        }
        if state.may_fetch(&self.settings) {
            issuer.refresh(self, &mut state).await;
        }
        match issuer.cached_key(kid) {
            Some(key) => Ok(key),
            None if state.last_ok => Err(KeyError::UnknownKid),
            None => Err(KeyError::Unavailable),
        }
    }
}

impl FetchState {
    fn may_fetch(&self, settings: &JwksSettings) -> bool {
        let wait = if self.last_ok {
            settings.cooldown
        } else {
            settings.failure_backoff
        };
        self.last_attempt.is_none_or(|at| at.elapsed() >= wait)
    }
}

impl IssuerKeys {
    fn cached_key(&self, kid: &str) -> Option<CachedKey> {
        self.keys
            .read()
            .expect("key set lock")
            .by_kid
            .get(kid)
            .cloned()
    }

    fn fresh_key(&self, kid: &str, max_age: Duration) -> Option<CachedKey> {
        let keys = self.keys.read().expect("key set lock");
        let fresh = keys.fetched_at.is_some_and(|at| at.elapsed() < max_age);
        fresh.then(|| keys.by_kid.get(kid).cloned()).flatten()
    }

    async fn refresh(&self, cache: &JwksCache, state: &mut FetchState) {
        state.last_attempt = Some(Instant::now());
        let settings = &cache.settings;
        let fetched = http::get(&self.jwks_url, settings.max_bytes, settings.timeout)
            .await
            .and_then(|body| usable_keys(&body, &self.algorithms));
        match fetched {
            Ok(by_kid) => {
                tracing::info!(jwks_url = %self.jwks_url, keys = by_kid.len(), "fetched JWKS");
                *self.keys.write().expect("key set lock") = KeySet {
                    by_kid,
                    fetched_at: Some(Instant::now()),
                };
                state.last_ok = true;
            }
            Err(reason) => {
                tracing::warn!(jwks_url = %self.jwks_url, %reason, "JWKS fetch failed; keeping cached keys");
                cache.metrics.jwks_fetch_failure();
                state.last_ok = false;
            }
        }
    }
}

/// The keys of a JWKS document that can verify tokens with the issuer's pinned algorithms.
/// Entries that do not parse, have no `kid`, are for encryption or for another algorithm are
/// skipped one by one, so one odd key does not take the others down. A body that is not a key
/// set, has no usable key, or names one `kid` twice (which key would verify?) is refused whole.
fn usable_keys(
    body: &[u8],
    algorithms: &[Algorithm],
) -> Result<HashMap<String, CachedKey>, String> {
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document = serde_json::from_slice::<Document>(body)
        .map_err(|_| "the answer is not a JSON key set".to_owned())?;
    let mut seen = HashSet::new();
    for kid in document.keys.iter().filter_map(|k| k.get("kid")?.as_str()) {
        if !seen.insert(kid) {
            return Err(format!("the key set names kid {kid:?} twice"));
        }
    }
    let by_kid: HashMap<String, CachedKey> = document
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
        .filter(|jwk| fits(jwk, algorithms))
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            let algorithm = jwk.common.key_algorithm.and_then(signing_algorithm);
            // A key bound to one algorithm is parsed for that one only.
            let usable: Vec<Algorithm> = algorithms
                .iter()
                .copied()
                .filter(|a| algorithm.is_none_or(|bound| bound == *a))
                .collect();
            let key = Arc::new(VerifyingKey::from_jwk(&jwk, &usable)?);
            Some((kid, CachedKey { key, algorithm }))
        })
        .collect();
    if by_kid.is_empty() {
        return Err("the key set has no key usable with the pinned algorithms".into());
    }
    Ok(by_kid)
}

/// The JWS algorithm a JWK's `alg` names, when it names a signing one.
fn signing_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Algorithm::from_str(&format!("{alg:?}")).ok()
}

fn fits(jwk: &Jwk, algorithms: &[Algorithm]) -> bool {
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return false;
    }
    let family_ok = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => algorithms.iter().any(|a| {
            matches!(
                a,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            )
        }),
        AlgorithmParameters::EllipticCurve(_) => algorithms
            .iter()
            .any(|a| matches!(a, Algorithm::ES256 | Algorithm::ES384)),
        _ => false,
    };
    let alg_ok = match jwk.common.key_algorithm {
        None => true,
        Some(alg) => signing_algorithm(alg).is_some_and(|alg| algorithms.contains(&alg)),
    };
    family_ok && alg_ok
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    /// A key set of one RSA key whose modulus has `bytes` bytes.
    fn rsa_key_set(bytes: usize) -> Vec<u8> {
        let mut modulus = vec![0xc5; bytes];
        modulus[bytes - 1] = 0x01;
        let n = URL_SAFE_NO_PAD.encode(&modulus);
        format!(r#"{{"keys":[{{"kty":"RSA","kid":"k","use":"sig","alg":"RS256","n":"{n}","e":"AQAB"}}]}}"#)
            .into_bytes()
    }

    #[test]
    fn a_key_set_whose_keys_verify_nothing_is_not_a_usable_key_set() {
        let pinned = [Algorithm::RS256];
        assert!(usable_keys(&rsa_key_set(256), &pinned).is_ok(), "RSA-2048");
        // aws-lc-rs verifies RS256 only with 2,048 to 8,192 bits: RSA-1024 could verify nothing,
        // so it must not replace the cached keys.
        let Err(error) = usable_keys(&rsa_key_set(128), &pinned) else {
            panic!("an RSA-1024 key set was taken as usable");
        };
        assert!(error.contains("no key usable"), "{error}");
    }
}
