//! Dev STS round trip over HTTP: AssumeRoleProvider → DevSts → sealed token →
//! the verifier accepts requests signed with the temporary credentials, on any
//! replica sharing the token key, and on no other.

mod common;

use std::sync::Arc;
use std::time::SystemTime;

use common::*;
use edgenet_auth::{
    query_get_request, Api, AssumeRoleConfig, AssumeRoleProvider, AuthError, ClockSkew,
    CredentialProvider, Signer, StaticFileProvider, TokenKey,
};

fn provider(endpoint: &str, creds: &std::path::Path, session: &str) -> AssumeRoleProvider {
    let source = Arc::new(StaticFileProvider::new(creds, "default"));
    let mut config = AssumeRoleConfig::new(endpoint, REGION, NODE_ROLE, session);
    config.duration_seconds = 900;
    AssumeRoleProvider::new(config, source).unwrap()
}

#[tokio::test]
async fn assume_role_then_describe_on_any_replica() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("token.key");
    let key = TokenKey::load_or_create(&key_path).unwrap();
    let server = serve_sts(dev_sts(&key), 0).await;
    let node_creds = write_node_credentials(dir.path(), NC1_ID, NC1_SECRET);

    let temp = provider(&server.endpoint, &node_creds, "nc-1")
        .fetch()
        .await
        .unwrap();
    assert!(temp.access_key_id.starts_with("ASIA"));
    let left = temp.remaining(SystemTime::now()).unwrap().as_secs();
    assert!((890..=900).contains(&left), "{left}");

    let params = [("Action", "DescribeNetworkModel"), ("NodeId", "nc-1")];
    let mut req = query_get_request("https://clc.example.internal:8773/", &params).unwrap();
    Signer::new(REGION, "ec2").sign(&mut req, &temp).unwrap();
    let received = Received::from_http(&req);
    let now = SystemTime::now();

    // The issuing replica, and another one that loaded the same key file.
    let replica = dev_sts(&TokenKey::load_or_create(&key_path).unwrap());
    for sts in [dev_sts(&key), replica] {
        let p = sts
            .verifier()
            .verify(&received.signed(), "ec2", now)
            .unwrap();
        assert!(p.temporary && p.may_describe("nc-1") && !p.may_describe("nc-2"));
        assert_eq!(p.source_key_id, NC1_ID);
    }
    // A server with another token key cannot open the token.
    let stranger = dev_sts(&TokenKey::generate());
    let err = stranger
        .verifier()
        .verify(&received.signed(), "ec2", now)
        .unwrap_err();
    assert_eq!(err.status_and_code(Api::Ec2), (401, "AuthFailure"));

    // Secrets stay out of Debug output everywhere they travel.
    let token = temp.session_token.as_ref().unwrap().expose().to_owned();
    let secret = temp.secret_access_key.expose().to_owned();
    let debug = format!(
        "{temp:?} {:?} {key:?} {:?}",
        dev_sts(&key).keys(),
        received.headers.len()
    );
    for s in [&token, &secret, &NC1_SECRET.to_owned()] {
        assert!(!debug.contains(s.as_str()), "secret in {debug}");
    }
}

#[tokio::test]
async fn sts_refusals_reach_the_provider_as_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_sts(dev_sts(&TokenKey::generate()), 0).await;
    let node_creds = write_node_credentials(dir.path(), NC1_ID, NC1_SECRET);
    let err = provider(&server.endpoint, &node_creds, "nc-2")
        .fetch()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AuthError::Sts { status: 403, code, .. } if code == "AccessDenied"),
        "{err:?}"
    );

    let wrong = write_node_credentials(dir.path(), NC1_ID, "wrong-secret");
    let err = provider(&server.endpoint, &wrong, "nc-1")
        .fetch()
        .await
        .unwrap_err();
    assert_eq!(err.sts_code(), Some("SignatureDoesNotMatch"), "{err:?}");
    assert!(!format!("{err:?} {err}").contains("wrong-secret"));
}

#[tokio::test]
async fn clock_skew_is_measured_and_corrected() {
    let dir = tempfile::tempdir().unwrap();
    // The server's clock is 10 minutes ahead: a request signed with our clock
    // is "expired" for it, until the provider learns the skew from Date.
    let server = serve_sts(dev_sts(&TokenKey::generate()), 600).await;
    let node_creds = write_node_credentials(dir.path(), NC1_ID, NC1_SECRET);
    let skew = Arc::new(ClockSkew::new());
    let p = provider(&server.endpoint, &node_creds, "nc-1").with_clock_skew(skew.clone());
    let temp = p.fetch().await.unwrap();
    assert!(
        (skew.offset_millis() - 600_000).abs() < 2_000,
        "{}",
        skew.offset_millis()
    );
    assert_eq!(
        server.requests.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "one refusal, one retry"
    );
    // Expiry is in the server's time.
    assert!(temp.remaining(skew.now()).unwrap().as_secs() <= 900);
    // Without the skew tracker the call fails with the STS code for it.
    let err = provider(&server.endpoint, &node_creds, "nc-1")
        .fetch()
        .await
        .unwrap_err();
    assert_eq!(err.sts_code(), Some("SignatureDoesNotMatch"));
}

#[tokio::test]
async fn unreachable_sts_is_a_transport_error() {
    let dir = tempfile::tempdir().unwrap();
    let node_creds = write_node_credentials(dir.path(), NC1_ID, NC1_SECRET);
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}/");
    let err = provider(&endpoint, &node_creds, "nc-1")
        .fetch()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AuthError::Transport(t) if t.contains("onnect")),
        "{err:?}"
    );
}
