//! The verifier accepts requests signed by an independent signer: botocore's
//! SigV4Auth (Python). Fails, never skips, when Python/botocore is missing.

mod common;

use std::time::SystemTime;

use common::{dev_sts, run_python, Received, NODE_ROLE, REGION};
use edgenet_auth::{AssumeRoleParams, Principal, TokenKey};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

fn botocore_signed(spec: Value) -> Received {
    let out = run_python("botocore_sign.py", &[&spec.to_string()]);
    let v: Value = serde_json::from_str(&out).expect("botocore_sign.py printed JSON");
    let mut headers = HeaderMap::new();
    for pair in v["headers"].as_array().unwrap() {
        let name = HeaderName::from_bytes(pair[0].as_str().unwrap().as_bytes()).unwrap();
        headers.append(
            name,
            HeaderValue::from_str(pair[1].as_str().unwrap()).unwrap(),
        );
    }
    Received {
        method: v["method"].as_str().unwrap().into(),
        path: v["path"].as_str().unwrap().into(),
        query: v["query"].as_str().unwrap().into(),
        headers,
        body: v["body"].as_str().unwrap().as_bytes().to_vec(),
    }
}

const NC1: &str = "AKIDNC1EXAMPLE0001";
const NC1_SECRET: &str = "nc1-secret-access-key-0000000000000000";

fn long_term_caller() -> Principal {
    Principal {
        access_key_id: NC1.into(),
        source_key_id: NC1.into(),
        node: Some("nc-1".into()),
        admin: false,
        temporary: false,
        expiration: None,
    }
}

#[test]
fn accepts_botocore_get_and_post() {
    let sts = dev_sts(&TokenKey::generate());
    let verifier = sts.verifier();
    let params = AssumeRoleParams {
        role_arn: NODE_ROLE.into(),
        role_session_name: "nc-1".into(),
        duration_seconds: Some(900),
    };
    let temp = sts
        .assume_role(&long_term_caller(), &params, SystemTime::now())
        .unwrap()
        .credentials;
    let token = temp.session_token.as_ref().unwrap().expose();
    let describe = json!({
        "Action": "DescribeNetworkModel", "Version": "2026-11-01", "NodeId": "nc-1",
        "StateId": "v1-0123", "ApplyError": "route 10.0.0.0/8: a b+c ü ~*'()!",
    });
    for (method, url) in [
        ("GET", "https://clc.example.internal:8773/"),
        ("GET", "http://127.0.0.1:8773/services/compute/"),
        ("POST", "https://clc.example.internal:8773/"),
        ("POST", "http://127.0.0.1:8773/services/compute"),
    ] {
        let spec = json!({
            "method": method, "url": url, "params": describe,
            "access_key_id": temp.access_key_id,
            "secret_access_key": temp.secret_access_key.expose(),
            "token": token, "region": REGION, "service": "ec2",
        });
        let req = botocore_signed(spec);
        let p = verifier
            .verify(&req.signed(), "ec2", SystemTime::now())
            .unwrap_or_else(|e| panic!("{method} {url}: {e:?}"));
        assert!(p.temporary && p.may_describe("nc-1") && !p.may_describe("nc-2"));
    }

    // Long-term key, signing an STS AssumeRole POST form, served end to end.
    let form = json!({
        "Action": "AssumeRole", "Version": "2011-06-15", "RoleArn": NODE_ROLE,
        "RoleSessionName": "nc-1", "DurationSeconds": "900",
    });
    let spec = json!({
        "method": "POST", "url": "http://127.0.0.1:8773/", "params": form,
        "access_key_id": NC1, "secret_access_key": NC1_SECRET,
        "region": REGION, "service": "sts",
    });
    let req = botocore_signed(spec);
    let (status, xml) = sts.handle(&req.signed(), SystemTime::now());
    assert_eq!(status, 200, "{xml}");
    assert!(xml.contains("<AccessKeyId>ASIA"), "{xml}");

    // And botocore's signature with a wrong secret is refused.
    let spec = json!({
        "method": "GET", "url": "https://clc.example.internal:8773/", "params": describe,
        "access_key_id": NC1, "secret_access_key": "not-the-secret",
        "region": REGION, "service": "ec2",
    });
    let err = verifier
        .verify(&botocore_signed(spec).signed(), "ec2", SystemTime::now())
        .unwrap_err();
    assert_eq!(
        err.status_and_code(edgenet_auth::Api::Ec2),
        (403, "SignatureDoesNotMatch")
    );
}
