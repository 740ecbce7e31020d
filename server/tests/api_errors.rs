//! Every error code of docs/protocol.md, the check order (authentication →
//! authorization → parameters), least privilege and the development STS.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use edgenet_auth::{query_get_request, sign_request, Credentials};

fn describe(node: &str) -> Vec<(&str, &str)> {
    vec![
        ("Action", "DescribeNetworkModel"),
        ("NodeId", node),
        ("WaitSeconds", "0"),
    ]
}

fn xml_field(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("{tag} missing in {xml}"))
        + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>")).unwrap();
    xml[start..end].to_owned()
}

/// AssumeRole on the server's development STS.
async fn assume_role(
    t: &TestServer,
    key: &Credentials,
    role: &str,
    session: &str,
    secs: &str,
) -> Reply {
    let params = [
        ("Action", "AssumeRole"),
        ("Version", "2011-06-15"),
        ("RoleArn", role),
        ("RoleSessionName", session),
        ("DurationSeconds", secs),
    ];
    t.post(key, &params, "sts").await
}

fn temporary_credentials(reply: &Reply) -> Credentials {
    assert_eq!(reply.status, 200, "{}", reply.text());
    let xml = reply.text();
    let akid = xml_field(&xml, "AccessKeyId");
    assert!(akid.starts_with("ASIA"), "{akid}");
    Credentials::temporary(
        akid,
        xml_field(&xml, "SecretAccessKey"),
        xml_field(&xml, "SessionToken"),
        SystemTime::now() + Duration::from_secs(900),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_errors() {
    let t = TestServer::start(&[]).await;
    let admin = admin_key();
    type Case<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (vec![("NodeId", "nc-1")], 400, "MissingParameter"),
        (
            vec![("Action", "DescribeNetworkModel")],
            400,
            "MissingParameter",
        ),
        (
            vec![("Action", "DescribeNetworkModel"), ("NodeId", "")],
            400,
            "MissingParameter",
        ),
        (
            vec![
                ("Action", "DescribeNetworkModel"),
                ("NodeId", "nc-1"),
                ("NodeId", "nc-1"),
            ],
            400,
            "InvalidParameterValue",
        ),
        (
            vec![
                ("Action", "DescribeNetworkModel"),
                ("NodeId", "nc-1"),
                ("WaitSeconds", "-1"),
            ],
            400,
            "InvalidParameterValue",
        ),
        (
            vec![
                ("Action", "DescribeNetworkModel"),
                ("NodeId", "nc-1"),
                ("WaitSeconds", "soon"),
            ],
            400,
            "InvalidParameterValue",
        ),
        (
            vec![
                ("Action", "DescribeNetworkModel"),
                ("NodeId", "nc-1"),
                ("StateId", "a"),
                ("StateId", "b"),
            ],
            400,
            "InvalidParameterValue",
        ),
        (
            vec![
                ("Action", "DescribeNetworkModel"),
                ("NodeId", "nc-1"),
                ("Version", "2016-11-15"),
            ],
            400,
            "InvalidParameterValue",
        ),
        (
            vec![("Action", "DescribeInstances"), ("NodeId", "nc-1")],
            400,
            "InvalidAction",
        ),
        (
            vec![("Action", "DescribeNetworkModel"), ("NodeId", "nc-9")],
            404,
            "InvalidNodeId.NotFound",
        ),
    ];
    for (params, status, code) in cases {
        for reply in [
            t.get(&admin, &params).await,
            t.post(&admin, &params, "ec2").await,
        ] {
            assert_eq!(
                (reply.status, reply.error_code().as_str()),
                (status, code),
                "{params:?}"
            );
            assert_eq!(reply.header("content-type"), Some("application/json"));
        }
    }
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_errors() {
    let t = TestServer::start(&[]).await;
    let p = describe("nc-1");
    // Unsigned.
    let unsigned = t
        .client
        .get(format!("{}?Action=DescribeNetworkModel&NodeId=nc-1", t.url))
        .send()
        .await
        .unwrap();
    let r = Reply::read(unsigned).await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "AuthFailure"));
    // Unknown key.
    let r = t
        .get(&Credentials::long_term("AKIDUNKNOWN0000000", "x"), &p)
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "AuthFailure"));
    // Wrong secret.
    let r = t
        .get(&Credentials::long_term("AKIDNC1EXAMPLE0001", "wrong"), &p)
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "SignatureDoesNotMatch")
    );
    // Tampered parameter after signing.
    let mut req = query_get_request(&t.url, &p).unwrap();
    sign_request(&mut req, &nc1_key(), REGION, "ec2", SystemTime::now()).unwrap();
    let tampered = req.uri().to_string().replace("NodeId=nc-1", "NodeId=nc-2");
    *req.uri_mut() = tampered.parse().unwrap();
    let r = t.send(req).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "SignatureDoesNotMatch")
    );
    // Wrong region, wrong service in the scope.
    let mut req = query_get_request(&t.url, &p).unwrap();
    sign_request(&mut req, &nc1_key(), "us-east-1", "ec2", SystemTime::now()).unwrap();
    let r = t.send(req).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "SignatureDoesNotMatch")
    );
    let r = t.get_at(&nc1_key(), &p, SystemTime::now(), "s3").await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "SignatureDoesNotMatch")
    );
    // Clock more than 5 minutes off.
    let r = t
        .get_at(
            &nc1_key(),
            &p,
            SystemTime::now() - Duration::from_secs(600),
            "ec2",
        )
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "RequestExpired"));
    // A bad session token.
    let bad = Credentials::temporary(
        "ASIAXXXXXXXXXXXXXXXX",
        "s",
        "not-a-token",
        SystemTime::now(),
    );
    let r = t.get(&bad, &p).await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "AuthFailure"));
    // Authentication comes before parameters.
    let r = t
        .get(
            &Credentials::long_term("AKIDNC1EXAMPLE0001", "wrong"),
            &[("Action", "Nope")],
        )
        .await;
    assert_eq!(r.error_code(), "SignatureDoesNotMatch");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_and_check_order() {
    let t = TestServer::start(&[]).await;
    let nc1 = nc1_key();
    assert_eq!(t.get(&nc1, &describe("nc-1")).await.status, 200);
    let r = t.get(&nc1, &describe("nc-2")).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "UnauthorizedOperation")
    );
    // Authorization comes before parameters: a bad WaitSeconds for another
    // node, or a node that does not exist, is still UnauthorizedOperation.
    let r = t
        .get(
            &nc1,
            &[
                ("Action", "DescribeNetworkModel"),
                ("NodeId", "nc-2"),
                ("WaitSeconds", "-1"),
            ],
        )
        .await;
    assert_eq!(r.error_code(), "UnauthorizedOperation");
    let r = t.get(&nc1, &describe("nc-9")).await;
    assert_eq!(r.error_code(), "UnauthorizedOperation");
    // A missing NodeId is MissingParameter whatever the key.
    let r = t.get(&nc1, &[("Action", "DescribeNetworkModel")]).await;
    assert_eq!(r.error_code(), "MissingParameter");
    let r = t.get(&nc1, &[("Action", "DescribeNodeStatus")]).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "UnauthorizedOperation")
    );
    assert_eq!(t.get(&admin_key(), &describe("nc-2")).await.status, 200);
    assert_eq!(
        t.get(&admin_key(), &[("Action", "DescribeNodeStatus")])
            .await
            .status,
        200
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assume_role_then_poll_with_the_temporary_credentials() {
    let t = TestServer::start(&[]).await;
    let temp = temporary_credentials(&assume_role(&t, &nc1_key(), NODE_ROLE, "nc-1", "900").await);
    let r = t.get(&temp, &describe("nc-1")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = t.get(&temp, &describe("nc-2")).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "UnauthorizedOperation")
    );
    let r = t.get(&temp, &[("Action", "DescribeNodeStatus")]).await;
    assert_eq!(r.error_code(), "UnauthorizedOperation");
    // Admin-assumed credentials may read the status.
    let admin_temp =
        temporary_credentials(&assume_role(&t, &admin_key(), ADMIN_ROLE, "ops", "900").await);
    assert_eq!(
        t.get(&admin_temp, &[("Action", "DescribeNodeStatus")])
            .await
            .status,
        200
    );
    // STS refusals, with STS's own codes.
    let r = assume_role(&t, &nc1_key(), NODE_ROLE, "nc-2", "900").await;
    assert_eq!(
        (r.status, xml_field(&r.text(), "Code").as_str()),
        (403, "AccessDenied")
    );
    let r = assume_role(&t, &nc1_key(), ADMIN_ROLE, "nc-1", "900").await;
    assert_eq!(xml_field(&r.text(), "Code"), "AccessDenied");
    let r = assume_role(&t, &temp, NODE_ROLE, "nc-1", "900").await;
    assert_eq!(
        xml_field(&r.text(), "Code"),
        "AccessDenied",
        "no role chaining"
    );
    let r = assume_role(
        &t,
        &Credentials::long_term("AKIDUNKNOWN0000000", "x"),
        NODE_ROLE,
        "nc-1",
        "900",
    )
    .await;
    assert_eq!(
        (r.status, xml_field(&r.text(), "Code").as_str()),
        (403, "InvalidClientTokenId")
    );
    let unsigned = t
        .client
        .post(&t.url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("Action=AssumeRole&RoleArn=x&RoleSessionName=nc-1")
        .send()
        .await
        .unwrap();
    let r = Reply::read(unsigned).await;
    assert_eq!(
        (r.status, xml_field(&r.text(), "Code").as_str()),
        (403, "MissingAuthenticationToken")
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_temporary_credentials_are_expired_token() {
    let t = TestServer::start(&[]).await;
    let temp = temporary_credentials(&assume_role(&t, &nc1_key(), NODE_ROLE, "nc-1", "1").await);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = t.get(&temp, &describe("nc-1")).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "ExpiredToken"));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_parked_polls_is_503_with_retry_after() {
    let t = TestServer::start(&["--max-parked", "1"]).await;
    let id = t.current_id("nc-1").await;
    let first = {
        let c = t.client_side();
        let id = id.clone();
        tokio::spawn(async move { c.get(&nc1_key(), &poll_params("nc-1", &id, "30")).await })
    };
    t.wait_parked(1).await;
    let r = t.get(&nc1_key(), &poll_params("nc-1", &id, "30")).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "RequestLimitExceeded")
    );
    assert!(r
        .header("retry-after")
        .is_some_and(|v| v.parse::<u64>().is_ok()));
    // An immediate answer needs no slot.
    assert_eq!(
        t.get(&nc1_key(), &poll_params("nc-1", "", "30"))
            .await
            .status,
        200
    );
    t.shutdown().await;
    assert_eq!(first.await.unwrap().status, 304);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_poll_whose_node_is_removed_gets_404_at_once() {
    let t = TestServer::start(&[]).await;
    let id = t.current_id("nc-3").await;
    let poll = {
        let c = t.client_side();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            (
                c.get(&admin_key(), &poll_params("nc-3", &id, "30")).await,
                started.elapsed(),
            )
        })
    };
    t.wait_parked(1).await;
    let mut model = sample_model();
    model["nodes"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["id"] != "nc-3");
    model["instances"]
        .as_array_mut()
        .unwrap()
        .retain(|i| i["node"] != "nc-3");
    t.write_model(&model);
    let (r, took) = poll.await.unwrap();
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (404, "InvalidNodeId.NotFound")
    );
    assert!(took < Duration::from_secs(3));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_odd_requests_are_refused_without_harm() {
    let t = TestServer::start(&["--max-body-bytes", "1024", "--max-header-bytes", "8192"]).await;
    let big = "x".repeat(4096);
    let r = t
        .post(
            &admin_key(),
            &[
                ("Action", "DescribeNetworkModel"),
                ("NodeId", "nc-1"),
                ("Pad", &big),
            ],
            "ec2",
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "InvalidParameterValue")
    );
    let r = t
        .client
        .get(&t.url)
        .header("x-big", "y".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let r = t.client.delete(&t.url).send().await.unwrap();
    assert_eq!(r.status(), 405);
    // The server still answers.
    assert_eq!(t.get(&admin_key(), &describe("nc-1")).await.status, 200);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_slow_clients_cannot_hurt_the_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = TestServer::start(&["--header-read-timeout-seconds", "1"]).await;
    let addr = t.server().local_addr();
    // Not HTTP at all.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"\x00\x01GARBAGE \xff\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    assert!(
        out.is_empty() || out.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // A client that sends half a request head and then nothing is cut off.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /?Action=DescribeNetworkModel HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a slow client held its socket");
    assert!(started.elapsed() < Duration::from_secs(4));
    // A parked poll whose client hangs up frees its slot.
    let id = t.current_id("nc-1").await;
    let quitter = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut req = edgenet_auth::query_get_request(&t.url, &poll_params("nc-1", &id, "30")).unwrap();
    sign_request(&mut req, &nc1_key(), REGION, "ec2", SystemTime::now()).unwrap();
    assert!(quitter
        .execute(reqwest::Request::try_from(req).unwrap())
        .await
        .is_err());
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while t.server().parked_polls() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot of a gone client was kept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(t.get(&admin_key(), &describe("nc-1")).await.status, 200);
    t.shutdown().await;
}
