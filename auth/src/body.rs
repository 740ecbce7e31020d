//! Reading HTTP answers with a size cap, for every client call of edgenet
//! (STS `AssumeRole` here, `DescribeNetworkModel` in the agent): a hostile
//! endpoint's endless body, or a small gzip body that inflates to gigabytes,
//! is abandoned as soon as the decoded bytes pass the cap, never held.

/// Why a capped read gave no body.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("answer larger than {limit} bytes, abandoned")]
    TooLarge { limit: usize },
    #[error("reading the answer failed: {0}")]
    Transport(String),
}

/// Reads `response`'s body chunk by chunk (decoded, when the client
/// decompresses), stopping at the first chunk that takes it past `limit`.
/// A declared `Content-Length` above the cap is refused before any read.
pub async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Transport(error_chain(&e.without_url())))?
    {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error with its causes ("error sending request" alone says little).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Text from a hostile peer (a `Location`, an id) cut to a loggable size,
/// control characters escaped.
pub fn printable(text: &str) -> String {
    const MAX: usize = 200;
    let mut out: String = text
        .chars()
        .take(MAX)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > MAX {
        out.push('…');
    }
    out
}
