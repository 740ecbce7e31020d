//! The one error type of the describe API, mapped to docs/protocol.md's
//! status/code table.

use edgenet_auth::{Api, VerifyError};

/// Why a describe request (`DescribeNetworkModel`, `DescribeNodeStatus`)
/// was not answered with data.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ApiError {
    #[error("{0}")]
    MissingParameter(String),
    #[error("{0}")]
    InvalidParameterValue(String),
    #[error("{0}")]
    InvalidAction(String),
    /// Authentication failed; the auth crate knows the EC2 code.
    #[error("{0}")]
    Auth(VerifyError),
    #[error("{0}")]
    UnauthorizedOperation(String),
    #[error("the node {0} is not in the network model")]
    NodeNotFound(String),
    #[error("too many parked requests, retry after {retry_after_secs} s")]
    RequestLimitExceeded { retry_after_secs: u64 },
    #[error("{0}")]
    InternalError(String),
}

use edgenet_model::protocol::error_code as code;

impl ApiError {
    /// HTTP status and the `Error.Code` of docs/protocol.md.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            ApiError::MissingParameter(_) => (400, code::MISSING_PARAMETER),
            ApiError::InvalidParameterValue(_) => (400, code::INVALID_PARAMETER_VALUE),
            ApiError::InvalidAction(_) => (400, code::INVALID_ACTION),
            ApiError::Auth(e) => e.status_and_code(Api::Ec2),
            ApiError::UnauthorizedOperation(_) => (403, code::UNAUTHORIZED_OPERATION),
            ApiError::NodeNotFound(_) => (404, code::NODE_NOT_FOUND),
            ApiError::RequestLimitExceeded { .. } => (503, code::REQUEST_LIMIT_EXCEEDED),
            ApiError::InternalError(_) => (500, code::INTERNAL_ERROR),
        }
    }

    /// The JSON error body: `{"Error":{"Code","Message"},"RequestId"}`.
    pub fn to_json(&self, request_id: &str) -> Vec<u8> {
        let (_, code) = self.status_and_code();
        let message = match self {
            // The verifier's details (which scope part, which header) help the
            // caller fix its signer and reveal nothing secret.
            ApiError::Auth(e) => e.to_string(),
            other => other.to_string(),
        };
        serde_json::to_vec(&serde_json::json!({
            "Error": {"Code": code, "Message": message},
            "RequestId": request_id,
        }))
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_protocol_table() {
        let cases = [
            (
                ApiError::MissingParameter("x".into()),
                400,
                "MissingParameter",
            ),
            (
                ApiError::InvalidParameterValue("x".into()),
                400,
                "InvalidParameterValue",
            ),
            (ApiError::InvalidAction("x".into()), 400, "InvalidAction"),
            (
                ApiError::Auth(VerifyError::ExpiredToken),
                400,
                "ExpiredToken",
            ),
            (
                ApiError::Auth(VerifyError::MissingAuthentication),
                401,
                "AuthFailure",
            ),
            (
                ApiError::UnauthorizedOperation("x".into()),
                403,
                "UnauthorizedOperation",
            ),
            (
                ApiError::NodeNotFound("nc-9".into()),
                404,
                "InvalidNodeId.NotFound",
            ),
            (
                ApiError::RequestLimitExceeded {
                    retry_after_secs: 1,
                },
                503,
                "RequestLimitExceeded",
            ),
            (ApiError::InternalError("x".into()), 500, "InternalError"),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status_and_code(), (status, code));
            let body: serde_json::Value = serde_json::from_slice(&err.to_json("rid")).unwrap();
            assert_eq!(body["Error"]["Code"], code);
            assert_eq!(body["RequestId"], "rid");
        }
    }
}
