//! The agent's STS client against a hostile STS endpoint: a gzip bomb, an
//! endless body and a redirect to another host. Each must end in a clear
//! error, read no more than the answer cap, and send nothing elsewhere.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use edgenet_auth::{
    AssumeRoleConfig, AssumeRoleProvider, AuthError, CredentialProvider, StaticFileProvider,
    MAX_STS_ANSWER_BYTES,
};

/// A long-term key file and a provider that assumes a role at `endpoint`.
fn provider(endpoint: &str, dir: &tempfile::TempDir) -> AssumeRoleProvider {
    let path = dir.path().join("node-credentials");
    std::fs::write(
        &path,
        "[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = secret\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let long_term = Arc::new(StaticFileProvider::new(&path, "default"));
    let mut config = AssumeRoleConfig::new(
        endpoint,
        "eucalyptus",
        "arn:aws:iam::000000000000:role/edgenet-node",
        NODE,
    );
    config.timeout = Duration::from_secs(10);
    AssumeRoleProvider::new(config, long_term).unwrap()
}

const ANSWER_HEAD: &str = "<AssumeRoleResponse><AssumeRoleResult><Credentials>";

fn valid_sts_answer() -> Vec<u8> {
    let xml = format!(
        "{ANSWER_HEAD}<AccessKeyId>ASIAEXAMPLE</AccessKeyId><SecretAccessKey>s</SecretAccessKey>\
         <SessionToken>t</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration>\
         </Credentials></AssumeRoleResult></AssumeRoleResponse>"
    );
    http("200 OK", &[("content-type", "text/xml")], xml.as_bytes())
}

/// A close-delimited answer (no length): the client cannot know its size.
fn endless_head(extra: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\ncontent-type: text/xml\r\nconnection: close\r\n{extra}\r\n")
        .into_bytes()
}

/// A gzip stream of zeros, written by hand: the gzip header, then a
/// fixed-Huffman deflate block that opens with one literal zero (the first
/// byte here)...
const GZIP_ZEROS_START: [u8; 11] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 0x62];
/// ...and goes on with matches of 258 bytes at distance 1: these 13 bytes
/// are 8 of them, 2,064 zero bytes, and may repeat for ever.
const GZIP_ZEROS_UNIT: [u8; 13] = [
    0x18, 0x05, 0xa3, 0x60, 0x14, 0x8c, 0x82, 0x51, 0x30, 0x0a, 0x46, 0xc1, 0x28,
];

fn assert_capped(error: &AuthError, case: &str) {
    let text = error.to_string();
    assert!(
        matches!(error, AuthError::BadResponse(_))
            && text.contains(&format!("larger than {MAX_STS_ANSWER_BYTES} bytes")),
        "{case}: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_from_sts_is_cut_at_the_cap() {
    // 2 MiB of it per write, inflating to about 330 MiB; 64 MiB in all
    // (10 GiB inflated) bounds what a client without a cap would take.
    let repeat = GZIP_ZEROS_UNIT.repeat((2 << 20) / GZIP_ZEROS_UNIT.len());
    let (server, url) = HostileServer::start("127.0.0.1", move |_| Answer::Endless {
        head: endless_head("content-encoding: gzip\r\n"),
        first: GZIP_ZEROS_START.to_vec(),
        repeat: repeat.clone(),
        up_to: 64 << 20,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let error = provider(&url, &dir).fetch().await.unwrap_err();
    assert_capped(&error, "a gzip bomb");
    assert_eq!(server.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_sts_answer_is_cut_at_the_cap() {
    let (server, url) = HostileServer::start("127.0.0.1", |_| Answer::Endless {
        head: endless_head(""),
        first: ANSWER_HEAD.as_bytes().to_vec(),
        repeat: vec![b' '; 64 << 10],
        up_to: 1 << 30,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let error = provider(&url, &dir).fetch().await.unwrap_err();
    assert_capped(&error, "an endless body");
    // What the socket buffers took besides the cap, not the gigabyte.
    let streamed = server.streamed();
    assert!(streamed < 64 << 20, "{streamed} bytes were read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_redirects_are_not_followed() {
    let (elsewhere, elsewhere_url) =
        HostileServer::start("127.0.0.2", |_| Answer::Now(valid_sts_answer())).await;
    let dir = tempfile::tempdir().unwrap();
    for status in [
        "302 Found",
        "307 Temporary Redirect",
        "308 Permanent Redirect",
    ] {
        let redirect = http(status, &[("location", &elsewhere_url)], b"");
        let (_, url) =
            HostileServer::start("127.0.0.1", move |_| Answer::Now(redirect.clone())).await;
        let error = provider(&url, &dir).fetch().await.unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("redirect") && text.contains(&elsewhere_url),
            "{status}: {text}"
        );
    }
    assert_eq!(elsewhere.requests(), 0, "a redirect was followed");
    // The same provider takes credentials from an STS that answers.
    let creds = provider(&elsewhere_url, &dir).fetch().await.unwrap();
    assert_eq!(creds.access_key_id, "ASIAEXAMPLE");
}
