//! What a `DescribeNetworkModel` answer means (docs/protocol.md,
//! "Responses"): the view of a 200, once every check passed, or the error
//! of any other status.

use std::time::Duration;

use edgenet_auth::body::printable;
use edgenet_model::protocol::{state_id_problem, truncate_utf8};
use edgenet_model::NodeView;
use serde::Deserialize;

use super::poller::PollError;
use crate::snapshot::Snapshot;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope {
    state_id: String,
    node_id: String,
    view: NodeView,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ErrorDocument {
    error: ErrorBody,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody {
    code: String,
    #[serde(default)]
    message: String,
}

/// The view of a 200 answer, when the answer is one the agent may use:
/// its `StateId` in the grammar, the `ETag` equal to it, for this node,
/// and (v1) the hash of the view it comes with.
pub(super) fn check_view(
    node: &str,
    endpoint: &str,
    etag: Option<&str>,
    body: &[u8],
) -> Result<Snapshot, PollError> {
    let bad = |message: String| PollError::BadAnswer {
        endpoint: endpoint.to_string(),
        message,
    };
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    if let Some(problem) = state_id_problem(&envelope.state_id) {
        return Err(bad(format!("StateId {problem}")));
    }
    let etag = etag.map(|t| t.trim().trim_start_matches("W/").trim_matches('"'));
    if etag != Some(envelope.state_id.as_str()) {
        return Err(bad(format!(
            "ETag {:?} does not match StateId {}",
            etag.map(printable),
            envelope.state_id
        )));
    }
    if envelope.node_id != node {
        return Err(bad(format!(
            "view is for node {:?}, not {:?}",
            printable(&envelope.node_id),
            node
        )));
    }
    verify_state_id(&envelope.state_id, &envelope.view).map_err(bad)?;
    let snapshot = Snapshot::from_view(node, envelope.state_id, &envelope.view);
    for left_out in &snapshot.left_out {
        tracing::warn!(state_id = %snapshot.state_id, "left out of the view: {left_out}");
    }
    Ok(snapshot)
}

/// A v1 id is the hash of the view it names (docs/protocol.md): one that
/// does not match is refused, whatever else the answer holds. This client
/// polls version 1, so a v2 id is not an answer to its request.
fn verify_state_id(state_id: &str, view: &NodeView) -> Result<(), String> {
    if !state_id.starts_with(edgenet_model::StateId::PREFIX) {
        return Err(format!(
            "StateId {state_id} is not a version 1 id, the version polled"
        ));
    }
    let computed = view.state_id();
    if computed != *state_id {
        return Err(format!(
            "StateId {state_id} does not match the view it came with (its id is {computed})"
        ));
    }
    Ok(())
}

pub(super) fn server_error(
    endpoint: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> PollError {
    let document: ErrorDocument = serde_json::from_slice(body).unwrap_or_default();
    let code = if document.error.code.is_empty() {
        format!("HTTP{status}")
    } else {
        document.error.code
    };
    let mut message = document.error.message;
    message.truncate(truncate_utf8(&message, 300).len());
    PollError::Server {
        endpoint: endpoint.to_string(),
        status,
        code,
        message,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_out_of_the_grammar_or_not_the_views_are_refused() {
        let view: NodeView =
            serde_json::from_str(include_str!("../dataplane/testdata/view-nc-1.json")).unwrap();
        let id = view.state_id().to_string();
        let body = |id: &str| {
            serde_json::to_vec(&serde_json::json!({"StateId": id, "NodeId": "nc-1", "View": view}))
                .unwrap()
        };
        let check = |id: &str| check_view("nc-1", "e", Some(&format!("\"{id}\"")), &body(id));
        assert_eq!(check(&id).unwrap().state_id, id);
        let long = format!("v1-{}", "f".repeat(65_576));
        let cases = [
            (
                "v1-ffffffffffffffffffffffffffffffff",
                "does not match the view",
            ),
            ("v2-0123456789abcdef0123456789abcdef", "not a version 1 id"),
            (long.as_str(), "65579 bytes) is not a state id"),
        ];
        for (bad, expected) in cases {
            let error = check(bad).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
            assert!(error.len() < 400, "{} bytes of error", error.len());
        }
    }

    #[test]
    fn reads_error_documents() {
        let body =
            br#"{"Error": {"Code": "ExpiredToken", "Message": "too old"}, "RequestId": "r"}"#;
        let error = server_error("e", 400, body, None);
        assert_eq!(error.code(), Some("ExpiredToken"));
        assert_eq!(error.outcome(), "auth_error");
        let error = server_error("e", 502, b"<html>", None);
        assert_eq!(error.code(), Some("HTTP502"));
        assert_eq!(error.outcome(), "server_error");
    }
}
