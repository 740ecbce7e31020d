//! Where credentials come from: a static file or STS AssumeRole.

use async_trait::async_trait;

use crate::credentials::Credentials;
use crate::files::FileError;

mod assume_role;
mod static_file;
mod xml;

pub use assume_role::{AssumeRoleConfig, AssumeRoleProvider, MAX_STS_ANSWER_BYTES};
pub use static_file::StaticFileProvider;

/// Why credentials could not be had.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: {reason}")]
    Format { path: String, reason: String },
    #[error("STS request failed: {0}")]
    Transport(String),
    /// STS answered with an error document (`Error/Code`).
    #[error("STS refused AssumeRole ({status}): {code}: {message}")]
    Sts {
        status: u16,
        code: String,
        message: String,
    },
    #[error("STS answer could not be read: {0}")]
    BadResponse(String),
    #[error("configuration: {0}")]
    Config(String),
}

impl AuthError {
    /// The STS error code, when STS answered with one.
    pub fn sts_code(&self) -> Option<&str> {
        match self {
            AuthError::Sts { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A source of credentials. Used as `Arc<dyn CredentialProvider>`.
#[async_trait]
pub trait CredentialProvider: Send + Sync {
    /// Fetches fresh credentials (no caching: see [`crate::CachingProvider`]).
    async fn fetch(&self) -> Result<Credentials, AuthError>;
}
