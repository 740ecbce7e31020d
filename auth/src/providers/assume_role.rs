//! Temporary credentials from STS `AssumeRole` (Query API, POST form).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::xml::parse_sts_answer;
use super::{AuthError, CredentialProvider};
use crate::body::{error_chain, read_capped, BodyError};
use crate::credentials::Credentials;
use crate::sign::{form_post_request, sign_request};
use crate::skew::ClockSkew;

/// The largest STS answer read. Real ones are a few KiB (credentials and a
/// session token); this leaves room for any service's extras while a gzip
/// bomb or an endless body is cut off at once.
pub const MAX_STS_ANSWER_BYTES: usize = 1 << 20;

/// Settings of an [`AssumeRoleProvider`] (docs/cli.md `[credentials]`).
#[derive(Debug, Clone)]
pub struct AssumeRoleConfig {
    /// STS endpoint URL, e.g. `https://clc.example.internal:8773/`.
    pub sts_endpoint: String,
    /// Region in the signature scope (`eucalyptus` by default in edgenet).
    pub region: String,
    pub role_arn: String,
    /// `RoleSessionName`: the node id for node-bound keys.
    pub session_name: String,
    pub duration_seconds: u32,
    /// Extra trust root (PEM, may hold several certificates).
    pub ca_file: Option<PathBuf>,
    /// Timeout of one STS call.
    pub timeout: Duration,
}

impl AssumeRoleConfig {
    /// Defaults: one hour, 30 s timeout, no extra CA.
    pub fn new(
        sts_endpoint: impl Into<String>,
        region: impl Into<String>,
        role_arn: impl Into<String>,
        session_name: impl Into<String>,
    ) -> Self {
        AssumeRoleConfig {
            sts_endpoint: sts_endpoint.into(),
            region: region.into(),
            role_arn: role_arn.into(),
            session_name: session_name.into(),
            duration_seconds: 3600,
            ca_file: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Calls STS `AssumeRole`, signing with the long-term credentials of `source`.
pub struct AssumeRoleProvider {
    config: AssumeRoleConfig,
    source: Arc<dyn CredentialProvider>,
    client: reqwest::Client,
    skew: Option<Arc<ClockSkew>>,
}

impl std::fmt::Debug for AssumeRoleProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssumeRoleProvider")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AssumeRoleProvider {
    pub fn new(
        config: AssumeRoleConfig,
        source: Arc<dyn CredentialProvider>,
    ) -> Result<Self, AuthError> {
        let client = build_client(&config)?;
        Ok(AssumeRoleProvider {
            config,
            source,
            client,
            skew: None,
        })
    }

    /// Measure clock skew from STS answers and sign with the corrected time.
    pub fn with_clock_skew(mut self, skew: Arc<ClockSkew>) -> Self {
        self.skew = Some(skew);
        self
    }

    fn signing_time(&self) -> SystemTime {
        self.skew.as_ref().map_or_else(SystemTime::now, |s| s.now())
    }

    fn request(&self, long_term: &Credentials) -> Result<reqwest::Request, AuthError> {
        let duration = self.config.duration_seconds.to_string();
        let params = [
            ("Action", "AssumeRole"),
            ("Version", "2011-06-15"),
            ("RoleArn", self.config.role_arn.as_str()),
            ("RoleSessionName", self.config.session_name.as_str()),
            ("DurationSeconds", duration.as_str()),
        ];
        let mut req = form_post_request(&self.config.sts_endpoint, &params)
            .map_err(|e| AuthError::Config(e.to_string()))?;
        sign_request(
            &mut req,
            long_term,
            &self.config.region,
            "sts",
            self.signing_time(),
        )
        .map_err(|e| AuthError::Config(e.to_string()))?;
        reqwest::Request::try_from(req.map(reqwest::Body::from))
            .map_err(|e| AuthError::Config(e.to_string()))
    }
}

fn build_client(config: &AssumeRoleConfig) -> Result<reqwest::Client, AuthError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        // An STS endpoint has no reason to redirect, and following one would
        // send the signed request, and take credentials, from another host.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(config.timeout)
        .connect_timeout(config.timeout.min(Duration::from_secs(10)));
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| AuthError::Config(format!("CA file {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| AuthError::Config(format!("CA file {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(AuthError::Config(format!(
                "CA file {}: no certificate",
                path.display()
            )));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| AuthError::Config(e.to_string()))
}

#[async_trait]
impl CredentialProvider for AssumeRoleProvider {
    async fn fetch(&self) -> Result<Credentials, AuthError> {
        let long_term = self.source.fetch().await?;
        let before = self.skew.as_ref().map(|s| s.offset_millis());
        let result = self.call(&long_term).await;
        // A refusal that came with news of a large clock skew was most likely
        // caused by it ("Signature expired"): try once more with the corrected clock.
        let after = self.skew.as_ref().map(|s| s.offset_millis());
        let skew_changed = matches!((before, after), (Some(b), Some(a)) if (a - b).abs() > 60_000);
        if skew_changed && matches!(result, Err(AuthError::Sts { .. })) {
            tracing::info!(
                skew_ms = after,
                "retrying AssumeRole with the corrected clock"
            );
            return self.call(&long_term).await;
        }
        result
    }
}

impl AssumeRoleProvider {
    /// One AssumeRole round trip.
    async fn call(&self, long_term: &Credentials) -> Result<Credentials, AuthError> {
        let req = self.request(long_term)?;
        let started = SystemTime::now();
        let resp = self.client.execute(req).await.map_err(transport)?;
        let received = SystemTime::now();
        // STS answers at once, so its Date header is a fair clock reading.
        if let (Some(skew), Some(date)) = (&self.skew, resp.headers().get(http::header::DATE)) {
            if let Ok(date) = date.to_str() {
                skew.observe(date, started, received);
            }
        }
        let status = resp.status();
        if status.is_redirection() {
            return Err(refused_redirect(&resp));
        }
        let body = read_capped(resp, MAX_STS_ANSWER_BYTES)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge { .. } => AuthError::BadResponse(e.to_string()),
                BodyError::Transport(text) => AuthError::Transport(text),
            })?;
        let body = String::from_utf8_lossy(&body);
        let answer = parse_sts_answer(&body).map_err(AuthError::BadResponse);
        interpret(status.as_u16(), answer)
    }
}

/// The error with its causes ("error sending request" alone says little);
/// the URL is left out, the caller knows it.
fn transport(err: reqwest::Error) -> AuthError {
    AuthError::Transport(error_chain(&err.without_url()))
}

/// A 3xx from STS is refused, naming where it pointed.
fn refused_redirect(resp: &reqwest::Response) -> AuthError {
    let location = resp
        .headers()
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(no Location)");
    AuthError::BadResponse(format!(
        "HTTP {} redirect to {} refused: an STS endpoint does not redirect",
        resp.status().as_u16(),
        crate::body::printable(location)
    ))
}

/// Credentials on success; the STS error code otherwise.
fn interpret(
    status: u16,
    answer: Result<super::xml::StsAnswer, AuthError>,
) -> Result<Credentials, AuthError> {
    let answer = match answer {
        Ok(a) => a,
        Err(_) if status >= 400 => {
            return Err(AuthError::Sts {
                status,
                code: format!("HTTP{status}"),
                message: "non-XML error answer".into(),
            })
        }
        Err(e) => return Err(e),
    };
    if let Some(code) = answer.error_code.clone() {
        let message = answer.error_message.clone().unwrap_or_default();
        return Err(AuthError::Sts {
            status,
            code,
            message,
        });
    }
    if !(200..300).contains(&status) {
        return Err(AuthError::Sts {
            status,
            code: format!("HTTP{status}"),
            message: "error answer without Error/Code".into(),
        });
    }
    let creds = answer.credentials().map_err(AuthError::BadResponse)?;
    tracing::info!(
        access_key_id = %creds.access_key_id,
        expiration = ?creds.expiration,
        "assumed role"
    );
    Ok(creds)
}
