//! CachingProvider: refresh ahead of expiry once per period (not once per
//! caller), never hand out expired credentials, keep serving through failed
//! refreshes until expiry, single flight, deduplicated forced refreshes.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use common::*;
use edgenet_auth::{
    query_get_request, AssumeRoleConfig, AssumeRoleProvider, AuthError, CacheConfig,
    CachingProvider, CredentialProvider, Credentials, Signer, StaticFileProvider, TokenKey,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Margins in seconds instead of minutes, for tests.
fn fast_config() -> CacheConfig {
    CacheConfig {
        refresh_margin: secs(2),
        jitter: ms(200),
        expiry_margin: secs(1),
        min_backoff: ms(100),
        max_backoff: secs(1),
    }
}

/// Many callers for several seconds against the dev STS over HTTP, with 4 s
/// credentials and a 2 s refresh margin: every request they sign is accepted
/// (none with expired credentials) and refreshes happen once per period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_once_per_period_not_per_caller() {
    let dir = tempfile::tempdir().unwrap();
    let sts = dev_sts(&TokenKey::generate());
    let server = serve_sts(sts.clone(), 0).await;
    let source = Arc::new(StaticFileProvider::new(
        write_node_credentials(dir.path(), NC1_ID, NC1_SECRET),
        "default",
    ));
    let mut config = AssumeRoleConfig::new(&server.endpoint, REGION, NODE_ROLE, "nc-1");
    config.duration_seconds = 4;
    let inner = Arc::new(AssumeRoleProvider::new(config, source).unwrap());
    let cache = Arc::new(CachingProvider::new(inner, fast_config()));
    let run_for = secs(7);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (cache, verifier) = (cache.clone(), sts.verifier());
        tasks.push(tokio::spawn(async move {
            let mut calls = 0u64;
            while start.elapsed() < run_for {
                let creds = cache.credentials().await.unwrap();
                let now = SystemTime::now();
                assert!(
                    !creds.is_expired_at(now + secs(1)),
                    "handed out credentials about to expire"
                );
                let mut req = query_get_request(
                    "https://clc:8773/",
                    &[("Action", "DescribeNetworkModel"), ("NodeId", "nc-1")],
                )
                .unwrap();
                Signer::new(REGION, "ec2").sign(&mut req, &creds).unwrap();
                let r = Received::from_http(&req);
                verifier
                    .verify(&r.signed(), "ec2", SystemTime::now())
                    .expect("server refused the credentials");
                calls += 1;
                tokio::time::sleep(ms(20)).await;
            }
            calls
        }));
    }
    let mut calls = 0;
    for t in tasks {
        calls += t.await.unwrap();
    }
    let refreshes = cache.refresh_count();
    let served = server.requests.load(Ordering::Relaxed);
    eprintln!("{calls} calls by 32 callers, {refreshes} refreshes");
    // 4 s credentials (3-4 s left after the server's whole-second rounding),
    // refreshed 2-2.2 s before expiry: a period of 0.8-2 s, so 4-9 in 7 s.
    assert!(
        (3..=10).contains(&refreshes),
        "{refreshes} refreshes for {calls} calls"
    );
    assert_eq!(served, refreshes, "every refresh is one AssumeRole");
    assert!(calls > 32 * 20, "{calls}");
    assert_eq!(cache.failure_count(), 0);
}

/// A provider whose credentials last `ttl`, that can be made to fail and slow.
struct Fake {
    ttl: Duration,
    fail: AtomicBool,
    delay: Duration,
    calls: AtomicU64,
}

impl Fake {
    fn new(ttl: Duration, delay: Duration) -> Arc<Self> {
        Arc::new(Fake {
            ttl,
            fail: AtomicBool::new(false),
            delay,
            calls: AtomicU64::new(0),
        })
    }
}

#[async_trait]
impl CredentialProvider for Fake {
    async fn fetch(&self) -> Result<Credentials, AuthError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        if self.fail.load(Ordering::SeqCst) {
            return Err(AuthError::Transport("endpoint down".into()));
        }
        let exp = SystemTime::now() + self.ttl;
        Ok(Credentials::temporary(
            format!("ASIAFAKE{n:012}"),
            "s",
            format!("t{n}"),
            exp,
        ))
    }
}

#[tokio::test]
async fn failed_refresh_keeps_current_until_expiry() {
    let fake = Fake::new(secs(4), Duration::ZERO);
    let mut config = fast_config();
    config.refresh_margin = secs(3);
    config.jitter = Duration::ZERO;
    config.expiry_margin = ms(500);
    config.min_backoff = ms(300);
    let cache = CachingProvider::new(fake.clone(), config);
    let first = cache.credentials().await.unwrap();
    fake.fail.store(true, Ordering::SeqCst);
    let start = Instant::now();
    // Due after ~1 s; fails; the current credentials are served until 0.5 s
    // before their expiry (3.5 s), with attempts spaced by backoff, not per call.
    while start.elapsed() < ms(2400) {
        let c = cache.credentials().await.unwrap();
        assert_eq!(c.access_key_id, first.access_key_id);
        tokio::time::sleep(ms(10)).await;
    }
    let attempts = fake.calls.load(Ordering::SeqCst) - 1;
    assert!(
        (1..=4).contains(&attempts),
        "{attempts} attempts in 1.4 s of failures"
    );
    assert!(cache.failure_count() >= 1);
    tokio::time::sleep(ms(1400)).await;
    let err = cache.credentials().await.unwrap_err();
    assert_eq!(err, AuthError::Transport("endpoint down".into()));
    fake.fail.store(false, Ordering::SeqCst);
    tokio::time::sleep(secs(1)).await;
    let fresh = cache.credentials().await.unwrap();
    assert_ne!(fresh.access_key_id, first.access_key_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_and_deduplicated_force_refresh() {
    let fake = Fake::new(secs(3600), ms(300));
    let cache = Arc::new(CachingProvider::new(fake.clone(), CacheConfig::default()));
    let first: Vec<_> = (0..50)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.credentials().await.unwrap() })
        })
        .collect();
    let mut ids = Vec::new();
    for t in first {
        ids.push(t.await.unwrap().access_key_id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        1,
        "one fetch for 50 concurrent callers"
    );

    // 20 callers whose requests were all refused with the same credentials.
    let rejected = cache.credentials().await.unwrap();
    let forced: Vec<_> = (0..20)
        .map(|_| {
            let (cache, rejected) = (cache.clone(), rejected.clone());
            tokio::spawn(async move { cache.force_refresh(&rejected).await.unwrap() })
        })
        .collect();
    for t in forced {
        assert_ne!(t.await.unwrap().access_key_id, rejected.access_key_id);
    }
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        2,
        "one refresh for 20 rejections"
    );
    assert_eq!(cache.refresh_count(), 2);
}

#[test]
fn production_margin_is_max_of_15_min_and_twice_the_wait() {
    assert_eq!(
        CacheConfig::for_poll_wait(secs(30)).refresh_margin,
        secs(900)
    );
    assert_eq!(
        CacheConfig::for_poll_wait(secs(600)).refresh_margin,
        secs(1200)
    );
}
