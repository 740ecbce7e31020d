//! SigV4 verification of incoming requests (the server side).
//!
//! The canonical request is rebuilt here from what arrived on the wire, not by
//! `aws-sigv4`, so the server checks exactly the bytes it will act on.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::credentials::Secret;
use crate::principal::Principal;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const TERMINATOR: &str = "aws4_request";
/// `X-Amz-Date` may be this far from the server clock (docs/protocol.md).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Which API a request was for: the same failure has different codes in
/// EC2 (describe) and STS (AssumeRole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Ec2,
    Sts,
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("the request is not signed")]
    MissingAuthentication,
    #[error("malformed authorization: {0}")]
    IncompleteSignature(String),
    #[error("unknown access key id {0}")]
    UnknownAccessKey(String),
    #[error("the security token included in the request is invalid")]
    InvalidToken,
    #[error("the security token included in the request is expired")]
    ExpiredToken,
    #[error("request time {request} is more than 5 minutes from the server time {server}")]
    RequestExpired { request: String, server: String },
    #[error("the request signature does not match: {0}")]
    SignatureDoesNotMatch(String),
}

impl VerifyError {
    /// HTTP status and error code for this failure in `api` (docs/protocol.md
    /// tables). Malformed or missing signatures are `AuthFailure` for the
    /// describe API (no usable credentials), and the AWS codes for STS.
    pub fn status_and_code(&self, api: Api) -> (u16, &'static str) {
        use VerifyError::*;
        match (self, api) {
            (MissingAuthentication | IncompleteSignature(_), Api::Ec2) => (401, "AuthFailure"),
            (MissingAuthentication, Api::Sts) => (403, "MissingAuthenticationToken"),
            (IncompleteSignature(_), Api::Sts) => (400, "IncompleteSignature"),
            (UnknownAccessKey(_) | InvalidToken, Api::Ec2) => (401, "AuthFailure"),
            (UnknownAccessKey(_) | InvalidToken, Api::Sts) => (403, "InvalidClientTokenId"),
            (ExpiredToken, _) => (400, "ExpiredToken"),
            (RequestExpired { .. }, Api::Ec2) => (400, "RequestExpired"),
            // STS has no RequestExpired: AWS answers "Signature expired" this way.
            (RequestExpired { .. }, Api::Sts) => (403, "SignatureDoesNotMatch"),
            (SignatureDoesNotMatch(_), _) => (403, "SignatureDoesNotMatch"),
        }
    }
}

/// The secret to check a signature with, and who it belongs to.
#[derive(Debug, Clone)]
pub struct ResolvedKey {
    pub secret: Secret,
    pub principal: Principal,
}

/// Looks up the secret for an access key id (and session token, if any).
/// Implemented by [`crate::DevSts`], which knows the long-term keys and opens
/// its own session tokens.
pub trait KeyResolver: Send + Sync {
    /// `Err(UnknownAccessKey | InvalidToken | ExpiredToken)` when the key or
    /// token is not acceptable at `now`.
    fn resolve(
        &self,
        access_key_id: &str,
        session_token: Option<&str>,
        now: SystemTime,
    ) -> Result<ResolvedKey, VerifyError>;
}

/// An incoming request, as received.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The path as sent (still percent-encoded), e.g. `/services/compute/`.
    pub path: &'a str,
    /// The raw query string without `?` (empty when none).
    pub query: &'a str,
    /// The headers as received. Over HTTP/2 there is no `Host` header: put
    /// the `:authority` (the URI's authority) in as `host` before verifying.
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// Verifies SigV4 `Authorization` headers for one region.
#[derive(Clone)]
pub struct Verifier {
    region: String,
    resolver: Arc<dyn KeyResolver>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// The parsed `Authorization` header.
#[derive(Debug)]
struct AuthHeader<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

impl Verifier {
    pub fn new(region: impl Into<String>, resolver: Arc<dyn KeyResolver>) -> Self {
        Verifier {
            region: region.into(),
            resolver,
        }
    }

    /// Authenticates `req` for `service` (`ec2` or `sts`) at server time `now`.
    pub fn verify(
        &self,
        req: &SignedRequest<'_>,
        service: &str,
        now: SystemTime,
    ) -> Result<Principal, VerifyError> {
        let auth =
            header_str(req.headers, "authorization")?.ok_or(VerifyError::MissingAuthentication)?;
        let auth = parse_authorization(auth)?;
        let amz_date = request_date(req.headers, &auth)?;
        check_time(amz_date, now)?;
        self.check_scope(&auth, amz_date, service)?;
        let token = session_token(req.headers, &auth)?;
        let key = self.resolver.resolve(auth.access_key_id, token, now)?;
        let canonical = canonical_request(req, &auth.signed_headers)?;
        let expected = signature(&key.secret, amz_date, &auth, &canonical);
        let ok: bool = expected.as_bytes().ct_eq(auth.signature.as_bytes()).into();
        if !ok {
            tracing::debug!(access_key_id = auth.access_key_id, "signature mismatch");
            return Err(VerifyError::SignatureDoesNotMatch(
                "the signature does not match the request".into(),
            ));
        }
        Ok(key.principal)
    }

    /// The scope must name this server's region, the expected service and the
    /// day of `X-Amz-Date`; anything else is a wrong signature (docs/protocol.md).
    fn check_scope(
        &self,
        a: &AuthHeader<'_>,
        amz_date: &str,
        service: &str,
    ) -> Result<(), VerifyError> {
        let mismatch = |what: String| Err(VerifyError::SignatureDoesNotMatch(what));
        if a.region != self.region {
            return mismatch(format!(
                "credential scope region {:?} is not {:?}",
                a.region, self.region
            ));
        }
        if a.service != service {
            return mismatch(format!(
                "credential scope service {:?} is not {service:?}",
                a.service
            ));
        }
        if !amz_date.starts_with(a.date) || a.date.len() != 8 {
            return mismatch(format!(
                "credential scope date {:?} does not match X-Amz-Date",
                a.date
            ));
        }
        Ok(())
    }
}

/// A header that must appear at most once (a second `Authorization` or token
/// could otherwise be read differently by different parts of the server).
fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, VerifyError> {
    if headers.get_all(name).iter().nth(1).is_some() {
        return Err(VerifyError::IncompleteSignature(format!(
            "{name} given more than once"
        )));
    }
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| VerifyError::IncompleteSignature(format!("{name} is not ASCII"))),
    }
}

fn incomplete(msg: &str) -> VerifyError {
    VerifyError::IncompleteSignature(msg.to_owned())
}

/// Parses `AWS4-HMAC-SHA256 Credential=AKID/date/region/service/aws4_request,
/// SignedHeaders=a;b, Signature=hex`.
fn parse_authorization(value: &str) -> Result<AuthHeader<'_>, VerifyError> {
    let rest = value
        .trim()
        .strip_prefix(ALGORITHM)
        .filter(|r| r.starts_with(' '))
        .ok_or_else(|| incomplete("unsupported algorithm, expected AWS4-HMAC-SHA256"))?;
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or_else(|| incomplete("malformed Authorization component"))?;
        let slot = match k {
            "Credential" => &mut cred,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut sig,
            _ => return Err(incomplete("unknown Authorization component")),
        };
        if slot.replace(v).is_some() {
            return Err(incomplete("repeated Authorization component"));
        }
    }
    let cred = cred.ok_or_else(|| incomplete("Credential missing"))?;
    let signed = signed.ok_or_else(|| incomplete("SignedHeaders missing"))?;
    let sig = sig.ok_or_else(|| incomplete("Signature missing"))?;
    let scope: Vec<&str> = cred.split('/').collect();
    let [akid, date, region, service, term] = scope[..] else {
        return Err(incomplete(
            "Credential must be AKID/date/region/service/aws4_request",
        ));
    };
    if akid.is_empty() || term != TERMINATOR {
        return Err(incomplete(
            "Credential must be AKID/date/region/service/aws4_request",
        ));
    }
    let signed_headers = parse_signed_headers(signed)?;
    if sig.len() != 64 || !sig.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(incomplete("Signature must be 64 hex digits"));
    }
    Ok(AuthHeader {
        access_key_id: akid,
        date,
        region,
        service,
        signed_headers,
        signature: sig,
    })
}

/// Signed header names: lowercase, and `host` must be among them so the
/// signature is bound to the endpoint it was meant for.
fn parse_signed_headers(value: &str) -> Result<Vec<&str>, VerifyError> {
    let names: Vec<&str> = value.split(';').collect();
    if names
        .iter()
        .any(|n| n.is_empty() || n.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(incomplete(
            "SignedHeaders must be lowercase names separated by ';'",
        ));
    }
    if !names.contains(&"host") {
        return Err(incomplete("SignedHeaders must include host"));
    }
    Ok(names)
}

/// `X-Amz-Date`, which must be present and signed (all SigV4 signers send it).
fn request_date<'a>(headers: &'a HeaderMap, auth: &AuthHeader<'_>) -> Result<&'a str, VerifyError> {
    if let Some(d) = header_str(headers, "x-amz-date")? {
        if !auth.signed_headers.contains(&"x-amz-date") {
            return Err(incomplete("X-Amz-Date must be signed"));
        }
        return Ok(d.trim());
    }
    Err(incomplete("X-Amz-Date header missing"))
}

fn check_time(amz_date: &str, now: SystemTime) -> Result<(), VerifyError> {
    let t = parse_amz_date(amz_date)
        .ok_or_else(|| incomplete("X-Amz-Date must be YYYYMMDDTHHMMSSZ"))?;
    let off = match t.duration_since(now) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if off > MAX_CLOCK_SKEW {
        return Err(VerifyError::RequestExpired {
            request: amz_date.to_owned(),
            server: format_amz_date(now),
        });
    }
    Ok(())
}

/// Parses the ISO 8601 basic form `20150830T123600Z`.
pub(crate) fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let t = time::PrimitiveDateTime::parse(s, &fmt).ok()?.assume_utc();
    Some(SystemTime::from(t))
}

pub(crate) fn format_amz_date(t: SystemTime) -> String {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::OffsetDateTime::from(t)
        .format(&fmt)
        .unwrap_or_default()
}

/// The session token, which must be covered by the signature when present
/// (docs/protocol.md: "present and signed").
fn session_token<'a>(
    headers: &'a HeaderMap,
    auth: &AuthHeader<'_>,
) -> Result<Option<&'a str>, VerifyError> {
    let token = header_str(headers, "x-amz-security-token")?;
    if token.is_some() && !auth.signed_headers.contains(&"x-amz-security-token") {
        return Err(incomplete("X-Amz-Security-Token must be signed"));
    }
    Ok(token)
}

/// Rebuilds the SigV4 canonical request of `req` for the given signed header
/// names (what the verifier hashes; public to debug signature mismatches).
pub fn canonical_request(req: &SignedRequest<'_>, signed: &[&str]) -> Result<Vec<u8>, VerifyError> {
    let payload_hash = hex::encode(Sha256::digest(req.body));
    if let Some(claimed) = header_str(req.headers, "x-amz-content-sha256")? {
        if claimed != payload_hash {
            return Err(VerifyError::SignatureDoesNotMatch(
                "x-amz-content-sha256 does not match the body".into(),
            ));
        }
    }
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(req.method.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(canonical_path(req.path).as_bytes());
    out.push(b'\n');
    out.extend_from_slice(canonical_query(req.query).as_bytes());
    out.push(b'\n');
    for name in signed {
        let values: Vec<&[u8]> = req
            .headers
            .get_all(*name)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        if values.is_empty() {
            return Err(VerifyError::SignatureDoesNotMatch(format!(
                "signed header {name} is missing"
            )));
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&trim_all(v));
        }
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(signed.join(";").as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload_hash.as_bytes());
    Ok(out)
}

/// Header value with leading/trailing spaces removed and inner runs of
/// spaces collapsed to one, as SigV4 requires.
fn trim_all(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    for word in v
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(word);
    }
    out
}

/// Path with dot segments and empty segments removed, then percent-encoded
/// again as sent (non-S3 services sign the already-encoded path, so `%`
/// becomes `%25`).
pub(crate) fn canonical_path(path: &str) -> String {
    let mut segs: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let mut norm = format!("/{}", segs.join("/"));
    let trailing = ["/", "/.", "/..", "/./", "/../"]
        .iter()
        .any(|s| path.ends_with(s));
    if trailing && !norm.ends_with('/') {
        norm.push('/');
    }
    percent_encoding::utf8_percent_encode(&norm, PATH_SET).to_string()
}

const PATH_SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// Query parameters decoded (`+` and `%20` are both a space, as in
/// docs/protocol.md), re-encoded the SigV4 way and sorted.
pub(crate) fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| {
            (
                crate::encoding::encode_param(&k),
                crate::encoding::encode_param(&v),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("hmac accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The expected signature, in lowercase hex.
fn signature(secret: &Secret, amz_date: &str, a: &AuthHeader<'_>, canonical: &[u8]) -> String {
    let scope = format!("{}/{}/{}/{TERMINATOR}", a.date, a.region, a.service);
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical))
    );
    let k_date = hmac(
        format!("AWS4{}", secret.expose()).as_bytes(),
        a.date.as_bytes(),
    );
    let k_region = hmac(&k_date, a.region.as_bytes());
    let k_service = hmac(&k_region, a.service.as_bytes());
    let k_signing = hmac(&k_service, TERMINATOR.as_bytes());
    hex::encode(hmac(&k_signing, string_to_sign.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(canonical_path(""), "/");
        assert_eq!(canonical_path("/"), "/");
        assert_eq!(canonical_path("//example//"), "/example/");
        assert_eq!(canonical_path("/example1/example2/../.."), "/");
        assert_eq!(canonical_path("/a b/%3D"), "/a%20b/%253D");
        assert_eq!(canonical_path("/services/compute/"), "/services/compute/");
    }

    #[test]
    fn queries() {
        assert_eq!(canonical_query(""), "");
        assert_eq!(canonical_query("b=2&a=1&a=0"), "a=0&a=1&b=2");
        assert_eq!(canonical_query("x=a+b&y=a%20b&z"), "x=a%20b&y=a%20b&z=");
        assert_eq!(canonical_query("k=%7e%2f"), "k=~%2F");
    }

    #[test]
    fn authorization_parsing() {
        let ok = "AWS4-HMAC-SHA256 Credential=AK/20150830/r/s/aws4_request, SignedHeaders=host;x-amz-date, Signature=".to_owned()
            + &"a".repeat(64);
        let a = parse_authorization(&ok).unwrap();
        assert_eq!(
            (a.access_key_id, a.date, a.region, a.service),
            ("AK", "20150830", "r", "s")
        );
        for bad in [
            "AWS4-HMAC-SHA1 Credential=x",
            "AWS4-HMAC-SHA256",
            "AWS4-HMAC-SHA256 Credential=AK/20150830/r/s/aws4_request, Signature=00",
            &ok.replace("host;", ""),
            &ok.replace("aws4_request", "aws5_request"),
            &ok.replace("SignedHeaders", "Signed"),
        ] {
            assert!(
                matches!(
                    parse_authorization(bad),
                    Err(VerifyError::IncompleteSignature(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn amz_dates() {
        let t = parse_amz_date("20150830T123600Z").unwrap();
        assert_eq!(format_amz_date(t), "20150830T123600Z");
        assert!(parse_amz_date("2015-08-30T12:36:00Z").is_none());
    }
}
