//! The verifier refuses tampered, stale and unauthenticated requests with
//! the codes of docs/protocol.md; least privilege is enforced through `Principal`.

mod common;

use std::time::{Duration, SystemTime};

use common::{dev_sts, secs, Received, ADMIN_ROLE, NODE_ROLE, REGION};
use edgenet_auth::{
    form_post_request, query_get_request, sign_request, Api, AssumeRoleParams, Credentials, DevSts,
    Principal, TokenKey, VerifyError,
};
use http::HeaderValue;

const ENDPOINT: &str = "https://clc.example.internal:8773/services/compute/";

fn long_term(id: &str, secret: &str, node: Option<&str>, admin: bool) -> (Principal, Credentials) {
    let p = Principal {
        access_key_id: id.into(),
        source_key_id: id.into(),
        node: node.map(str::to_owned),
        admin,
        temporary: false,
        expiration: None,
    };
    (p, Credentials::long_term(id, secret))
}

fn nc1() -> (Principal, Credentials) {
    long_term(
        "AKIDNC1EXAMPLE0001",
        "nc1-secret-access-key-0000000000000000",
        Some("nc-1"),
        false,
    )
}

fn admin() -> (Principal, Credentials) {
    long_term(
        "AKIDADMINEXAMPLE01",
        "admin-secret-access-key-00000000000000",
        None,
        true,
    )
}

fn assume(sts: &DevSts, who: &Principal, role: &str, session: &str, secs: u32) -> Credentials {
    let params = AssumeRoleParams {
        role_arn: role.into(),
        role_session_name: session.into(),
        duration_seconds: Some(secs),
    };
    sts.assume_role(who, &params, SystemTime::now())
        .unwrap()
        .credentials
}

fn describe(node: &str) -> http::Request<Vec<u8>> {
    let params = [
        ("Action", "DescribeNetworkModel"),
        ("Version", "2026-11-01"),
        ("NodeId", node),
    ];
    query_get_request(ENDPOINT, &params).unwrap()
}

fn signed(
    mut req: http::Request<Vec<u8>>,
    c: &Credentials,
    region: &str,
    service: &str,
    at: SystemTime,
) -> Received {
    sign_request(&mut req, c, region, service, at).unwrap();
    Received::from_http(&req)
}

fn code(sts: &DevSts, r: &Received, service: &str, api: Api) -> (u16, &'static str) {
    match sts
        .verifier()
        .verify(&r.signed(), service, SystemTime::now())
    {
        Ok(p) => panic!("accepted as {p:?}"),
        Err(e) => e.status_and_code(api),
    }
}

#[test]
fn tampering_is_refused_with_the_right_code() {
    let sts = dev_sts(&TokenKey::generate());
    let (nc1_p, _) = nc1();
    let temp = assume(&sts, &nc1_p, NODE_ROLE, "nc-1", 900);
    let now = SystemTime::now();
    let good = signed(describe("nc-1"), &temp, REGION, "ec2", now);
    let p = sts.verifier().verify(&good.signed(), "ec2", now).unwrap();
    assert!(p.temporary && p.access_key_id.starts_with("ASIA"));
    let ec2 = |r: &Received| code(&sts, r, "ec2", Api::Ec2);
    let mismatch = (403, "SignatureDoesNotMatch");
    let auth_failure = (401, "AuthFailure");
    let mut cases = 0;
    let mut check = |name: &str, got: (u16, &'static str), want: (u16, &'static str)| {
        assert_eq!(got, want, "case: {name}");
        cases += 1;
    };

    let mut r = Received::from_http(&describe("nc-1"));
    r.headers = good.headers.clone();
    r.query = good.query.replace("nc-1", "nc-2");
    check("changed parameter", ec2(&r), mismatch);

    let mut r = Received::from_http(&describe("nc-1"));
    r.headers = good.headers.clone();
    r.query = format!("{}&StateId=v1-00", good.query);
    check("added parameter", ec2(&r), mismatch);

    let mut r = Received::from_http(&describe("nc-1"));
    r.headers = good.headers.clone();
    r.path = "/services/other/".into();
    check("changed path", ec2(&r), mismatch);

    let mut wrong = temp.clone();
    wrong.secret_access_key = "not-the-secret".into();
    check(
        "wrong secret",
        ec2(&signed(describe("nc-1"), &wrong, REGION, "ec2", now)),
        mismatch,
    );

    let mut r = signed(describe("nc-1"), &temp, REGION, "ec2", now);
    r.headers.remove("x-amz-security-token");
    check("missing token", ec2(&r), auth_failure);

    let other = assume(&sts, &nc1_p, NODE_ROLE, "nc-1", 900);
    let mut swapped = temp.clone();
    swapped.session_token = other.session_token.clone();
    check(
        "another session's token",
        ec2(&signed(describe("nc-1"), &swapped, REGION, "ec2", now)),
        auth_failure,
    );

    let mut garbage = temp.clone();
    garbage.session_token =
        Some("EN1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into());
    check(
        "forged token",
        ec2(&signed(describe("nc-1"), &garbage, REGION, "ec2", now)),
        auth_failure,
    );

    let foreign = dev_sts(&TokenKey::generate());
    let foreign_temp = assume(&foreign, &nc1_p, NODE_ROLE, "nc-1", 900);
    check(
        "token sealed with another key",
        ec2(&signed(describe("nc-1"), &foreign_temp, REGION, "ec2", now)),
        auth_failure,
    );

    let short = assume(&sts, &nc1_p, NODE_ROLE, "nc-1", 1);
    let r = signed(describe("nc-1"), &short, REGION, "ec2", now + secs(3));
    let err = sts
        .verifier()
        .verify(&r.signed(), "ec2", now + secs(3))
        .unwrap_err();
    check(
        "expired token",
        err.status_and_code(Api::Ec2),
        (400, "ExpiredToken"),
    );

    let skewed = now - Duration::from_secs(6 * 60);
    check(
        "date skewed > 5 min (past)",
        ec2(&signed(describe("nc-1"), &temp, REGION, "ec2", skewed)),
        (400, "RequestExpired"),
    );
    let ahead = now + Duration::from_secs(6 * 60);
    check(
        "date skewed > 5 min (future)",
        ec2(&signed(describe("nc-1"), &temp, REGION, "ec2", ahead)),
        (400, "RequestExpired"),
    );

    let mut r = signed(describe("nc-1"), &temp, REGION, "ec2", now);
    let later = edgenet_auth_date(now + secs(60));
    r.headers
        .insert("x-amz-date", HeaderValue::from_str(&later).unwrap());
    check("X-Amz-Date changed after signing", ec2(&r), mismatch);

    check(
        "wrong region",
        ec2(&signed(describe("nc-1"), &temp, "us-east-1", "ec2", now)),
        mismatch,
    );
    check(
        "wrong service",
        ec2(&signed(describe("nc-1"), &temp, REGION, "sts", now)),
        mismatch,
    );

    let unsigned = Received::from_http(&describe("nc-1"));
    check("unsigned (describe)", ec2(&unsigned), auth_failure);
    check(
        "unsigned (STS)",
        code(&sts, &unsigned, "sts", Api::Sts),
        (403, "MissingAuthenticationToken"),
    );

    let mut r = signed(describe("nc-1"), &temp, REGION, "ec2", now);
    let auth = r.headers["authorization"]
        .to_str()
        .unwrap()
        .replace("SignedHeaders=host;", "SignedHeaders=");
    r.headers
        .insert("authorization", HeaderValue::from_str(&auth).unwrap());
    check(
        "signed headers without host (describe)",
        ec2(&r),
        auth_failure,
    );
    check(
        "signed headers without host (STS)",
        code(&sts, &r, "sts", Api::Sts),
        (400, "IncompleteSignature"),
    );

    let mut r = signed(describe("nc-1"), &temp, REGION, "ec2", now);
    r.headers
        .insert("host", HeaderValue::from_static("evil.example"));
    check("changed host", ec2(&r), mismatch);

    let form = |node: &str| {
        let params = [("Action", "DescribeNetworkModel"), ("NodeId", node)];
        form_post_request(ENDPOINT, &params).unwrap()
    };
    let mut r = signed(form("nc-1"), &temp, REGION, "ec2", now);
    r.body = b"Action=DescribeNetworkModel&NodeId=nc-2".to_vec();
    check("replayed with another body", ec2(&r), mismatch);

    let unknown = Credentials::long_term("AKIDUNKNOWN0000000", "x");
    check(
        "unknown access key",
        ec2(&signed(describe("nc-1"), &unknown, REGION, "ec2", now)),
        auth_failure,
    );
    check(
        "unknown access key (STS)",
        code(
            &sts,
            &signed(describe("nc-1"), &unknown, REGION, "sts", now),
            "sts",
            Api::Sts,
        ),
        (403, "InvalidClientTokenId"),
    );

    let mut r = signed(describe("nc-1"), &temp, REGION, "ec2", now);
    r.headers.insert(
        "authorization",
        HeaderValue::from_static("AWS4-HMAC-SHA256 Credential=garbage"),
    );
    check("malformed Authorization", ec2(&r), auth_failure);

    let mut r = signed(describe("nc-1"), &temp, REGION, "ec2", now);
    let token = other.session_token.as_ref().unwrap().expose();
    r.headers.append(
        "x-amz-security-token",
        HeaderValue::from_str(token).unwrap(),
    );
    check("second security token", ec2(&r), auth_failure);

    assert_eq!(cases, 24, "every case ran");
}

/// `X-Amz-Date` format.
fn edgenet_auth_date(t: SystemTime) -> String {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::OffsetDateTime::from(t).format(&fmt).unwrap()
}

#[test]
fn least_privilege() {
    let sts = dev_sts(&TokenKey::generate());
    let now = SystemTime::now();
    let verify = |c: &Credentials, node: &str| {
        let r = signed(describe(node), c, REGION, "ec2", now);
        sts.verifier().verify(&r.signed(), "ec2", now).unwrap()
    };
    let (nc1_p, nc1_c) = nc1();
    let temp = assume(&sts, &nc1_p, NODE_ROLE, "nc-1", 900);
    for c in [&temp, &nc1_c] {
        // The server answers 403 UnauthorizedOperation when these are false.
        let p = verify(c, "nc-2");
        assert!(!p.may_describe("nc-2"), "another node's view");
        assert!(p.may_describe("nc-1"));
        assert!(!p.may_read_status(), "DescribeNodeStatus without admin");
    }
    let (admin_p, admin_c) = admin();
    let admin_temp = assume(&sts, &admin_p, ADMIN_ROLE, "ops", 900);
    for c in [&admin_c, &admin_temp] {
        let p = verify(c, "nc-2");
        assert!(p.may_describe("nc-2") && p.may_read_status());
    }
    let unbound = Credentials::long_term(
        "AKIDUNBOUNDEXAMPLE",
        "unbound-secret-access-key-000000000000",
    );
    let p = verify(&unbound, "nc-7");
    assert!(p.may_describe("nc-7") && !p.may_read_status());
}

/// AssumeRole through `DevSts::handle`, with the STS codes.
#[test]
fn assume_role_refusals() {
    let sts = dev_sts(&TokenKey::generate());
    let now = SystemTime::now();
    let (nc1_p, nc1_c) = nc1();
    let call = |c: &Credentials, role: &str, session: &str, duration: &str| {
        let params = [
            ("Action", "AssumeRole"),
            ("Version", "2011-06-15"),
            ("RoleArn", role),
            ("RoleSessionName", session),
            ("DurationSeconds", duration),
        ];
        let r = signed(
            form_post_request("http://127.0.0.1:8773/", &params).unwrap(),
            c,
            REGION,
            "sts",
            now,
        );
        sts.handle(&r.signed(), now)
    };
    let expect = |(status, xml): (u16, String), want_status: u16, want_code: &str| {
        assert_eq!(status, want_status, "{xml}");
        assert!(xml.contains(&format!("<Code>{want_code}</Code>")), "{xml}");
    };
    let (status, xml) = call(&nc1_c, NODE_ROLE, "nc-1", "900");
    assert_eq!(status, 200, "{xml}");
    expect(call(&nc1_c, NODE_ROLE, "nc-2", "900"), 403, "AccessDenied");
    expect(call(&nc1_c, ADMIN_ROLE, "nc-1", "900"), 403, "AccessDenied");
    expect(
        call(&nc1_c, NODE_ROLE, "nc-1", "43201"),
        400,
        "ValidationError",
    );
    expect(call(&nc1_c, NODE_ROLE, "nc-1", "0"), 400, "ValidationError");
    let temp = assume(&sts, &nc1_p, NODE_ROLE, "nc-1", 900);
    expect(call(&temp, NODE_ROLE, "nc-1", "900"), 403, "AccessDenied");
    let mut wrong = nc1_c.clone();
    wrong.secret_access_key = "nope".into();
    expect(
        call(&wrong, NODE_ROLE, "nc-1", "900"),
        403,
        "SignatureDoesNotMatch",
    );
    let unknown = Credentials::long_term("AKIDUNKNOWN0000000", "x");
    expect(
        call(&unknown, NODE_ROLE, "nc-1", "900"),
        403,
        "InvalidClientTokenId",
    );
    let short = assume(&sts, &nc1_p, NODE_ROLE, "nc-1", 1);
    let params = [
        ("Action", "AssumeRole"),
        ("RoleArn", NODE_ROLE),
        ("RoleSessionName", "nc-1"),
    ];
    let r = signed(
        form_post_request("http://127.0.0.1:8773/", &params).unwrap(),
        &short,
        REGION,
        "sts",
        now + secs(3),
    );
    expect(sts.handle(&r.signed(), now + secs(3)), 400, "ExpiredToken");
    let unsigned =
        Received::from_http(&form_post_request("http://127.0.0.1:8773/", &params).unwrap());
    expect(
        sts.handle(&unsigned.signed(), now),
        403,
        "MissingAuthenticationToken",
    );
    let mut bad =
        Received::from_http(&form_post_request("http://127.0.0.1:8773/", &params).unwrap());
    bad.headers.insert(
        "authorization",
        HeaderValue::from_static("AWS4-HMAC-SHA256 Signature=00"),
    );
    expect(sts.handle(&bad.signed(), now), 400, "IncompleteSignature");
}

#[test]
fn verify_error_codes_table() {
    use VerifyError::*;
    let all = [
        (
            MissingAuthentication,
            (401, "AuthFailure"),
            (403, "MissingAuthenticationToken"),
        ),
        (
            IncompleteSignature("x".into()),
            (401, "AuthFailure"),
            (400, "IncompleteSignature"),
        ),
        (
            UnknownAccessKey("x".into()),
            (401, "AuthFailure"),
            (403, "InvalidClientTokenId"),
        ),
        (
            InvalidToken,
            (401, "AuthFailure"),
            (403, "InvalidClientTokenId"),
        ),
        (ExpiredToken, (400, "ExpiredToken"), (400, "ExpiredToken")),
        (
            RequestExpired {
                request: "a".into(),
                server: "b".into(),
            },
            (400, "RequestExpired"),
            (403, "SignatureDoesNotMatch"),
        ),
        (
            SignatureDoesNotMatch("x".into()),
            (403, "SignatureDoesNotMatch"),
            (403, "SignatureDoesNotMatch"),
        ),
    ];
    for (e, ec2, sts) in all {
        assert_eq!(e.status_and_code(Api::Ec2), ec2, "{e:?}");
        assert_eq!(e.status_and_code(Api::Sts), sts, "{e:?}");
    }
}
