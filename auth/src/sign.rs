//! SigV4 signing of outgoing requests, with `aws-sigv4`.

use std::sync::Arc;
use std::time::SystemTime;

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request};

use crate::credentials::Credentials;
use crate::skew::ClockSkew;

/// Why a request could not be signed or built.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("invalid endpoint URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot sign request: {0}")]
    Signing(String),
}

/// Signs `req` in place with SigV4 (`Authorization`, `X-Amz-Date`, `Host` when
/// missing, and `X-Amz-Security-Token` when the credentials carry a token,
/// which is signed too). The body must be the exact bytes that will be sent.
pub fn sign_request<B: AsRef<[u8]>>(
    req: &mut Request<B>,
    creds: &Credentials,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<(), SignError> {
    // A request signed before (a retry after a refresh) must not carry the
    // old signature's headers into the new one.
    for stale in ["authorization", "x-amz-date", "x-amz-security-token"] {
        req.headers_mut().remove(stale);
    }
    let identity = creds.to_aws().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| SignError::Signing(e.to_string()))?
        .into();
    let uri = req.uri().to_string();
    let headers = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
    let signable = SignableRequest::new(
        req.method().as_str(),
        uri,
        headers,
        SignableBody::Bytes(req.body().as_ref()),
    )
    .map_err(|e| SignError::Signing(e.to_string()))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| SignError::Signing(e.to_string()))?
        .into_parts();
    instructions.apply_to_request_http1x(req);
    Ok(())
}

/// A signer for one region and service that signs with the skew-corrected time.
#[derive(Debug, Clone)]
pub struct Signer {
    region: String,
    service: String,
    skew: Option<Arc<ClockSkew>>,
}

impl Signer {
    pub fn new(region: impl Into<String>, service: impl Into<String>) -> Self {
        Signer {
            region: region.into(),
            service: service.into(),
            skew: None,
        }
    }

    /// Sign with the clock corrected by `skew`.
    pub fn with_clock_skew(mut self, skew: Arc<ClockSkew>) -> Self {
        self.skew = Some(skew);
        self
    }

    /// The time requests are signed with now.
    pub fn now(&self) -> SystemTime {
        match &self.skew {
            Some(s) => s.now(),
            None => SystemTime::now(),
        }
    }

    /// Signs `req` at [`Signer::now`].
    pub fn sign<B: AsRef<[u8]>>(
        &self,
        req: &mut Request<B>,
        creds: &Credentials,
    ) -> Result<(), SignError> {
        sign_request(req, creds, &self.region, &self.service, self.now())
    }
}

pub use crate::encoding::encode_param;

fn encode_params(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", encode_param(k), encode_param(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Builds an unsigned Query API `GET endpoint?params` request.
pub fn query_get_request(
    endpoint: &str,
    params: &[(&str, &str)],
) -> Result<Request<Vec<u8>>, SignError> {
    let base = endpoint_uri(endpoint)?;
    let sep = if base.query().is_some() { "&" } else { "?" };
    let url = format!("{base}{sep}{}", encode_params(params));
    build(Method::GET, &url, Vec::new(), None)
}

/// Builds an unsigned Query API `POST endpoint` request with a form body.
pub fn form_post_request(
    endpoint: &str,
    params: &[(&str, &str)],
) -> Result<Request<Vec<u8>>, SignError> {
    let base = endpoint_uri(endpoint)?;
    let body = encode_params(params).into_bytes();
    let ctype = "application/x-www-form-urlencoded; charset=utf-8";
    build(Method::POST, &base.to_string(), body, Some(ctype))
}

fn endpoint_uri(endpoint: &str) -> Result<http::Uri, SignError> {
    let bad = |reason: String| SignError::Url {
        url: endpoint.to_owned(),
        reason,
    };
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
    if uri.scheme().is_none() || uri.authority().is_none() {
        return Err(bad("needs a scheme and a host".into()));
    }
    Ok(uri)
}

fn build(
    method: Method,
    url: &str,
    body: Vec<u8>,
    content_type: Option<&str>,
) -> Result<Request<Vec<u8>>, SignError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| SignError::Url {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    let host = host_header(&uri);
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        req = req.header(CONTENT_TYPE, ct);
    }
    let mut req = req
        .body(body)
        .map_err(|e| SignError::Signing(e.to_string()))?;
    if let Some(h) = host {
        req.headers_mut().insert(HOST, h);
    }
    Ok(req)
}

/// `host[:port]`, leaving out the scheme's default port as HTTP clients do,
/// so the signed value matches the header the client will send.
fn host_header(uri: &http::Uri) -> Option<HeaderValue> {
    let auth = uri.authority()?;
    let default_port = match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    };
    let value = match auth.port_u16() {
        Some(p) if Some(p) != default_port => format!("{}:{p}", auth.host()),
        _ => auth.host().to_owned(),
    };
    HeaderValue::from_str(&value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_canonical_wire_forms() {
        let r = query_get_request(
            "https://clc:8773/services/compute/",
            &[
                ("Action", "DescribeNetworkModel"),
                ("ApplyError", "a b+c/ü"),
            ],
        )
        .unwrap();
        assert_eq!(
            r.uri().to_string(),
            "https://clc:8773/services/compute/?Action=DescribeNetworkModel&ApplyError=a%20b%2Bc%2F%C3%BC"
        );
        assert_eq!(r.headers()[HOST], "clc:8773");
        let r = form_post_request("https://sts.example:443/", &[("Action", "AssumeRole")]).unwrap();
        assert_eq!(r.body(), b"Action=AssumeRole");
        assert_eq!(r.headers()[HOST], "sts.example");
        assert!(query_get_request("not a url", &[]).is_err());
    }

    #[test]
    fn signs_with_token() {
        let creds = Credentials::temporary("ASIAX", "secret", "tok", SystemTime::now());
        let mut r = form_post_request("http://127.0.0.1:1/", &[("Action", "X")]).unwrap();
        sign_request(&mut r, &creds, "eucalyptus", "sts", SystemTime::now()).unwrap();
        let auth = r.headers()["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=ASIAX/"),
            "{auth}"
        );
        assert!(auth.contains("/eucalyptus/sts/aws4_request"), "{auth}");
        assert!(auth.contains("x-amz-security-token"), "{auth}");
        assert_eq!(r.headers()["x-amz-security-token"], "tok");

        // Signed again with long-term keys: no stale token or signature left.
        let long = Credentials::long_term("AKIDX", "secret");
        sign_request(&mut r, &long, "eucalyptus", "sts", SystemTime::now()).unwrap();
        assert!(r.headers().get("x-amz-security-token").is_none());
        let auth = r.headers()["authorization"].to_str().unwrap();
        assert!(
            auth.contains("Credential=AKIDX/") && !auth.contains("security-token"),
            "{auth}"
        );
        assert_eq!(r.headers().get_all("authorization").iter().count(), 1);
    }
}
