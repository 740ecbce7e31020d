//! HTTP request handling: routing, authentication, authorization, parameters
//! (in that order, docs/protocol.md), the actions, and the answers' wire form.

use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use edgenet_auth::{DevSts, Principal, SignedRequest, StsError, Verifier};
use http::header::{
    HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, ETAG, RETRY_AFTER, VARY,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};

use crate::errors::ApiError;
use crate::http1::{BodyError, RequestBody};
use crate::hub::{Hub, PollAnswer, PollError};
use crate::metrics::{AnswerKind, Metrics};
use crate::params::{self, Params};
use crate::source::SourceStatus;
use crate::status::{describe_node_status, FeedbackStore};

/// `Retry-After` of a 503: long enough for parked polls to drain a little.
const RETRY_AFTER_SECS: u64 = 5;

/// How requests are authenticated.
pub enum Auth {
    /// SigV4 against the credentials file; the dev STS serves AssumeRole.
    Verify { verifier: Verifier, sts: DevSts },
    /// `--insecure-no-auth`: everyone is an admin. AssumeRole still works
    /// when a credentials file was given.
    Insecure { sts: Option<DevSts> },
}

/// Limits on what a client may ask for (the body size and read time are
/// the connection layer's, `http1::Config`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_wait: Duration,
}

/// Everything a request handler needs.
pub struct AppState {
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub feedback: Arc<FeedbackStore>,
    pub source: Arc<SourceStatus>,
    pub auth: Auth,
    pub limits: Limits,
}

type Body = Bytes;

/// What an action answers before it is put on the wire.
enum Answer {
    View {
        node_id: String,
        state_id: String,
        view_json: Vec<u8>,
    },
    NotModified {
        state_id: String,
    },
    Json(Vec<u8>),
}

/// Answers one request; the connection layer has read its body already.
///
/// Every check runs before the returned future exists, and the request is
/// dropped by then: a parked poll's future holds only what the wait needs
/// (an `async fn` would keep its arguments, the request among them, for its
/// whole life).
pub fn handle(
    state: Arc<AppState>,
    req: Request<RequestBody>,
) -> impl Future<Output = Response<Body>> + Send {
    let started = Instant::now();
    let request_id = new_request_id();
    let routed = route(&state, req, &request_id);
    async move {
        let (mut response, kind) = match routed {
            Routed::Answered(answered) => *answered,
            Routed::Poll(ref job, gzip) => poll(&state, job, gzip, &request_id).await,
        };
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("x-amzn-requestid", v);
        }
        state.metrics.answered(kind, started.elapsed());
        response
    }
}

/// A request after its checks.
enum Routed {
    /// Boxed: the poll future carries this enum, and a response is big.
    Answered(Box<(Response<Body>, AnswerKind)>),
    /// A checked `DescribeNetworkModel`; `true`: the answer may be gzipped.
    Poll(PollJob, bool),
}

impl Routed {
    fn answered(response: Response<Body>, kind: AnswerKind) -> Self {
        Routed::Answered(Box::new((response, kind)))
    }
}

fn route(state: &AppState, req: Request<RequestBody>, request_id: &str) -> Routed {
    let (parts, body) = req.into_parts();
    let query = parts.uri.query().unwrap_or("");
    if parts.method == Method::GET && !query.contains("Action=") {
        match parts.uri.path() {
            "/healthz" => {
                // Unhealthy still serves the last valid model: the 503 tells
                // an operator (or a load balancer) why, not agents to stop.
                let r = match state.source.unhealthy_reason() {
                    None => plain(StatusCode::OK, "text/plain", "ok\n".into()),
                    Some(reason) => plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        format!("unhealthy: {reason}\n").into(),
                    ),
                };
                return Routed::answered(r, AnswerKind::Ok);
            }
            "/metrics" => {
                let text = state.metrics.render(&state.hub);
                let r = plain(StatusCode::OK, "text/plain; version=0.0.4", text.into());
                return Routed::answered(r, AnswerKind::Ok);
            }
            _ => {}
        }
    }
    if parts.method != Method::GET && parts.method != Method::POST {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET or POST\n".into(),
        );
        r.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, POST"));
        return Routed::answered(r, AnswerKind::Error);
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => return refused(&body_error(e), request_id),
    };
    let form = (parts.method == Method::POST && is_form(&parts.headers)).then_some(&body[..]);
    let params = Params::parse(query, form);
    let signed = SignedRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query,
        headers: &parts.headers,
        body: &body,
    };
    if params.first_action() == Some("AssumeRole") {
        let (r, kind) = assume_role(state, &signed, request_id);
        return Routed::answered(r, kind);
    }
    let gzip = accepts_gzip(&parts.headers);
    match ec2_action(state, &signed, &params) {
        Ok(Step::Done(answer)) => {
            let (r, kind) = wire(answer, gzip);
            Routed::answered(r, kind)
        }
        Ok(Step::Poll(job)) => Routed::Poll(job, gzip),
        Err(e) => refused(&e, request_id),
    }
}

fn refused(e: &ApiError, request_id: &str) -> Routed {
    tracing::debug!(error = %e, "request refused");
    Routed::answered(error_response(e, request_id), AnswerKind::Error)
}

/// Waits in the hub for the node's view to differ from the client's.
async fn poll(
    state: &AppState,
    job: &PollJob,
    gzip: bool,
    request_id: &str,
) -> (Response<Body>, AnswerKind) {
    let node = job.node_id.as_str();
    let answer = state
        .hub
        .poll(node, job.state_id.as_deref(), job.wait)
        .await;
    let answer = match answer {
        Ok(PollAnswer::View {
            state_id,
            view_json,
        }) => Answer::View {
            node_id: node.to_owned(),
            state_id: state_id.as_str().to_owned(),
            view_json,
        },
        Ok(PollAnswer::NotModified { state_id }) => Answer::NotModified {
            state_id: state_id.as_str().to_owned(),
        },
        Err(e) => {
            let e = match e {
                PollError::NodeNotFound => ApiError::NodeNotFound(node.to_owned()),
                PollError::TooManyParked => ApiError::RequestLimitExceeded {
                    retry_after_secs: RETRY_AFTER_SECS,
                },
            };
            tracing::debug!(error = %e, "request refused");
            return (error_response(&e, request_id), AnswerKind::Error);
        }
    };
    wire(answer, gzip)
}

/// The development STS (its own XML wire format and error codes).
fn assume_role(
    state: &AppState,
    signed: &SignedRequest<'_>,
    request_id: &str,
) -> (Response<Body>, AnswerKind) {
    let sts = match &state.auth {
        Auth::Verify { sts, .. } | Auth::Insecure { sts: Some(sts) } => sts,
        Auth::Insecure { sts: None } => {
            let e = StsError::InvalidAction(
                "AssumeRole needs a server started with --credentials".into(),
            );
            let (status, _) = e.status_and_code();
            return (xml(status, e.to_xml(request_id)), AnswerKind::Error);
        }
    };
    let (status, body) = sts.handle(signed, SystemTime::now());
    let kind = if status == 200 {
        AnswerKind::Ok
    } else {
        AnswerKind::Error
    };
    (xml(status, body), kind)
}

/// What an EC2 action does after its checks: answer now, or poll the hub.
enum Step {
    Done(Answer),
    Poll(PollJob),
}

/// A checked `DescribeNetworkModel`, owning all it needs to wait.
struct PollJob {
    node_id: String,
    state_id: Option<String>,
    wait: Duration,
}

/// The EC2 Query actions: authentication, then authorization, then parameters.
fn ec2_action(
    state: &AppState,
    signed: &SignedRequest<'_>,
    params: &Params,
) -> Result<Step, ApiError> {
    let principal = authenticate(state, signed)?;
    let action = params.required("Action")?;
    match action {
        "DescribeNetworkModel" => describe_network_model(state, &principal, params).map(Step::Poll),
        "DescribeNodeStatus" => describe_status(state, &principal, params).map(Step::Done),
        other => Err(ApiError::InvalidAction(format!(
            "the action {other} is not valid for this web service"
        ))),
    }
}

fn authenticate(state: &AppState, signed: &SignedRequest<'_>) -> Result<Principal, ApiError> {
    match &state.auth {
        Auth::Verify { verifier, .. } => verifier
            .verify(signed, "ec2", SystemTime::now())
            .map_err(ApiError::Auth),
        Auth::Insecure { .. } => Ok(Principal {
            access_key_id: "anonymous".into(),
            source_key_id: "anonymous".into(),
            node: None,
            admin: true,
            temporary: false,
            expiration: None,
        }),
    }
}

fn describe_network_model(
    state: &AppState,
    principal: &Principal,
    params: &Params,
) -> Result<PollJob, ApiError> {
    let node = params::node_id(params)?;
    if !principal.may_describe(node) {
        return Err(ApiError::UnauthorizedOperation(format!(
            "{} may not describe node {node}",
            principal.access_key_id
        )));
    }
    let p = params::describe_params(params, node, state.limits.max_wait)?;
    if state.hub.current().state_id(node).is_none() {
        return Err(ApiError::NodeNotFound(node.to_owned()));
    }
    state.feedback.record(node, &p.feedback, SystemTime::now());
    Ok(PollJob {
        node_id: p.node_id,
        state_id: p.state_id,
        wait: p.wait,
    })
}

fn describe_status(
    state: &AppState,
    principal: &Principal,
    params: &Params,
) -> Result<Answer, ApiError> {
    if !principal.may_read_status() {
        return Err(ApiError::UnauthorizedOperation(format!(
            "{} may not call DescribeNodeStatus: it needs an admin key",
            principal.access_key_id
        )));
    }
    params.check_version()?;
    let index = state.hub.current();
    Ok(Answer::Json(describe_node_status(
        &index,
        &state.feedback,
        &state.source.snapshot(),
    )))
}

/// A body the connection layer refused is the client's error (400).
fn body_error(e: BodyError) -> ApiError {
    ApiError::InvalidParameterValue(e.to_string())
}

fn is_form(headers: &HeaderMap) -> bool {
    match headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(ct) => ct.split(';').next().is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        }),
    }
}

/// True when `Accept-Encoding` lists gzip (or `*`) with a non-zero quality.
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let zero_quality = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !zero_quality
        })
}

/// An answer in its wire form.
fn wire(answer: Answer, gzip: bool) -> (Response<Body>, AnswerKind) {
    match answer {
        Answer::View {
            node_id,
            state_id,
            view_json,
        } => {
            let body = view_body(&state_id, &node_id, &view_json);
            let mut r = json_response(StatusCode::OK, body, gzip);
            set_etag(&mut r, &state_id);
            (r, AnswerKind::Ok)
        }
        Answer::NotModified { state_id } => {
            let mut r = Response::new(Body::new());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            set_etag(&mut r, &state_id);
            (r, AnswerKind::NotModified)
        }
        Answer::Json(body) => (json_response(StatusCode::OK, body, gzip), AnswerKind::Ok),
    }
}

/// `{"StateId":…,"NodeId":…,"View":<canonical view bytes>}`; the view is
/// embedded as is, so its bytes are exactly the ones its id hashes.
fn view_body(state_id: &str, node_id: &str, view_json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(view_json.len() + 96);
    out.extend_from_slice(b"{\"StateId\":");
    out.extend_from_slice(&json_string(state_id));
    out.extend_from_slice(b",\"NodeId\":");
    out.extend_from_slice(&json_string(node_id));
    out.extend_from_slice(b",\"View\":");
    out.extend_from_slice(view_json);
    out.push(b'}');
    out
}

fn json_string(s: &str) -> Vec<u8> {
    serde_json::to_vec(s).unwrap_or_else(|_| b"\"\"".to_vec())
}

fn json_response(status: StatusCode, body: Vec<u8>, gzip: bool) -> Response<Body> {
    let (body, encoded) = if gzip {
        match gzip_bytes(&body) {
            Ok(z) => (z, true),
            Err(_) => (body, false),
        }
    } else {
        (body, false)
    };
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    if encoded {
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
}

fn gzip_bytes(data: &[u8]) -> std::io::Result<Vec<u8>> {
    // Fast level: answers are small and a model change answers thousands of
    // them at once, so CPU time matters more than the last percent of size.
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    enc.write_all(data)?;
    enc.finish()
}

fn set_etag(r: &mut Response<Body>, state_id: &str) {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{state_id}\"")) {
        r.headers_mut().insert(ETAG, v);
    }
}

fn error_response(e: &ApiError, request_id: &str) -> Response<Body> {
    let (status, _) = e.status_and_code();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(status, e.to_json(request_id), false);
    if let ApiError::RequestLimitExceeded { retry_after_secs } = e {
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
    }
    r
}

fn xml(status: u16, body: String) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    r
}

fn plain(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A request id in the AWS style (a random UUID v4 in text form).
fn new_request_id() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_negotiation() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            accepts_gzip(&m)
        };
        assert!(h("gzip"));
        assert!(h("br, GZIP;q=0.5"));
        assert!(h("*"));
        assert!(!h("gzip;q=0"));
        assert!(!h("identity"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn view_body_embeds_the_view_bytes() {
        let b = view_body("v1-ab", "nc-\"1", br#"{"schema":1}"#);
        assert_eq!(
            b,
            br#"{"StateId":"v1-ab","NodeId":"nc-\"1","View":{"schema":1}}"#
        );
    }

    #[test]
    fn request_ids_look_like_uuids() {
        let id = new_request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
    }
}
