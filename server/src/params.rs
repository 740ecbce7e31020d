//! Query/form parameter parsing (docs/protocol.md "Request").
//!
//! Both the GET query and the POST form body are `application/x-www-form-urlencoded`
//! (`+` and `%20` are both a space). A parameter given twice, in one part or
//! across query and body, is `InvalidParameterValue`.

use std::time::Duration;

use crate::errors::ApiError;

use edgenet_model::protocol::truncate_utf8;
pub use edgenet_model::protocol::{API_VERSION, DEFAULT_WAIT_SECONDS, MAX_APPLY_ERROR_BYTES};

/// The decoded parameters of one request, in arrival order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Decodes the query string and, when given, the form body.
    pub fn parse(query: &str, form_body: Option<&[u8]>) -> Self {
        let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        if let Some(body) = form_body {
            pairs.extend(form_urlencoded::parse(body).into_owned());
        }
        Params { pairs }
    }

    /// The value of `name`; `InvalidParameterValue` when it is given twice.
    pub fn get(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut values = self.pairs.iter().filter(|(k, _)| k == name);
        let first = values.next().map(|(_, v)| v.as_str());
        if values.next().is_some() {
            return Err(ApiError::InvalidParameterValue(format!(
                "the parameter {name} is given more than once"
            )));
        }
        Ok(first)
    }

    /// The value of a parameter that must be present and non-empty.
    pub fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name)?.filter(|v| !v.is_empty()).ok_or_else(|| {
            ApiError::MissingParameter(format!("the request must contain the parameter {name}"))
        })
    }

    /// The first `Action` value, without failing on duplicates: used only to
    /// pick which API (EC2 or STS) authenticates the request.
    pub fn first_action(&self) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == "Action")
            .map(|(_, v)| v.as_str())
    }

    /// `Version`, when given, must be the contract's version.
    pub fn check_version(&self) -> Result<(), ApiError> {
        match self.get("Version")? {
            None | Some(API_VERSION) => Ok(()),
            Some(other) => Err(ApiError::InvalidParameterValue(format!(
                "Version {other:?} is not supported, use {API_VERSION}"
            ))),
        }
    }
}

/// The parameters of `DescribeNetworkModel`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeParams {
    pub node_id: String,
    /// `None` = the null state (absent or empty).
    pub state_id: Option<String>,
    /// Already clamped to the server's maximum.
    pub wait: Duration,
    pub feedback: Feedback,
}

/// What the node reports about its last apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Feedback {
    /// `Some` when `AppliedStateId` was sent (`Some("")` = "none applied").
    pub applied_state_id: Option<String>,
    /// Truncated to [`MAX_APPLY_ERROR_BYTES`].
    pub apply_error: Option<String>,
}

impl Feedback {
    /// True when the poll carries no feedback: it changes nothing recorded.
    pub fn is_empty(&self) -> bool {
        self.applied_state_id.is_none() && self.apply_error.is_none()
    }
}

/// The `NodeId`, checked before authorization (which needs it).
pub fn node_id(params: &Params) -> Result<&str, ApiError> {
    params.required("NodeId")
}

/// The remaining parameters of a `DescribeNetworkModel`, checked after
/// authorization.
pub fn describe_params(
    params: &Params,
    node_id: &str,
    max_wait: Duration,
) -> Result<DescribeParams, ApiError> {
    params.check_version()?;
    let state_id = params
        .get("StateId")?
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let wait = match params.get("WaitSeconds")? {
        None => Duration::from_secs(u64::from(DEFAULT_WAIT_SECONDS)),
        Some(text) => Duration::from_secs(parse_wait_seconds(text)?),
    }
    .min(max_wait);
    let feedback = Feedback {
        applied_state_id: params.get("AppliedStateId")?.map(str::to_owned),
        apply_error: params
            .get("ApplyError")?
            .filter(|e| !e.is_empty())
            .map(|e| truncate_utf8(e, MAX_APPLY_ERROR_BYTES).to_owned()),
    };
    Ok(DescribeParams {
        node_id: node_id.to_owned(),
        state_id,
        wait,
        feedback,
    })
}

/// An integer ≥ 0. Digits too many for a u64 are still a valid (huge) wait,
/// which the caller clamps.
fn parse_wait_seconds(text: &str) -> Result<u64, ApiError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::InvalidParameterValue(format!(
            "WaitSeconds {text:?} must be an integer >= 0"
        )));
    }
    Ok(text.parse().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(60);

    #[test]
    fn decodes_plus_and_percent_twenty_alike() {
        let p = Params::parse("NodeId=nc-1&ApplyError=a+b%20c", None);
        let d = describe_params(&p, "nc-1", MAX).unwrap();
        assert_eq!(d.feedback.apply_error.as_deref(), Some("a b c"));
        assert_eq!(d.wait, Duration::from_secs(30));
        assert_eq!(d.state_id, None);
    }

    #[test]
    fn duplicates_are_invalid_even_across_query_and_body() {
        let p = Params::parse("NodeId=nc-1", Some(b"NodeId=nc-2"));
        assert!(matches!(
            node_id(&p),
            Err(ApiError::InvalidParameterValue(_))
        ));
        let p = Params::parse("NodeId=nc-1&StateId=a&StateId=a", None);
        assert!(matches!(
            describe_params(&p, "nc-1", MAX),
            Err(ApiError::InvalidParameterValue(_))
        ));
    }

    #[test]
    fn wait_seconds_rules() {
        let wait = |w: &str| {
            let p = Params::parse(&format!("WaitSeconds={w}"), None);
            describe_params(&p, "n", MAX).map(|d| d.wait.as_secs())
        };
        assert_eq!(wait("0"), Ok(0));
        assert_eq!(wait("5"), Ok(5));
        assert_eq!(wait("600"), Ok(60));
        assert_eq!(wait("99999999999999999999999"), Ok(60));
        for bad in ["-1", "1.5", "", "x", " 1"] {
            assert!(wait(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn missing_and_empty_node_id() {
        assert!(matches!(
            node_id(&Params::parse("", None)),
            Err(ApiError::MissingParameter(_))
        ));
        assert!(matches!(
            node_id(&Params::parse("NodeId=", None)),
            Err(ApiError::MissingParameter(_))
        ));
    }

    #[test]
    fn version_must_match() {
        assert!(Params::parse("Version=2026-11-01", None)
            .check_version()
            .is_ok());
        assert!(Params::parse("Version=2016-11-15", None)
            .check_version()
            .is_err());
    }
}
