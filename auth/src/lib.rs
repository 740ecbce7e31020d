//! Credentials, STS AssumeRole, SigV4 signing and verification for edgenet.
//!
//! The agent side uses [`providers`] (static file, AssumeRole) behind a
//! [`CachingProvider`], signs with [`sign`] and corrects its clock with
//! [`ClockSkew`]. The server side uses [`Verifier`] to authenticate SigV4
//! requests and [`DevSts`] to answer the development `AssumeRole` and to
//! open the self-contained session tokens it issues.
//!
//! Agent side:
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::{Duration, SystemTime};
//! use edgenet_auth::*;
//!
//! let skew = Arc::new(ClockSkew::new());
//! let long_term = Arc::new(StaticFileProvider::new("/etc/edgenet/node-credentials", "default"));
//! let config = AssumeRoleConfig::new(
//!     "https://clc.example.internal:8773/", "eucalyptus",
//!     "arn:aws:iam::000000000000:role/edgenet-node", "nc-1");
//! let sts = AssumeRoleProvider::new(config, long_term)?.with_clock_skew(skew.clone());
//! let cache = CachingProvider::new(Arc::new(sts), CacheConfig::for_poll_wait(Duration::from_secs(30)))
//!     .with_clock_skew(skew.clone());
//! let signer = Signer::new("eucalyptus", "ec2").with_clock_skew(skew.clone());
//!
//! let creds = cache.credentials().await?;
//! let mut req = query_get_request("https://clc.example.internal:8773/",
//!     &[("Action", "DescribeNetworkModel"), ("NodeId", "nc-1"), ("WaitSeconds", "0")])?;
//! signer.sign(&mut req, &creds)?;
//! let started = SystemTime::now();
//! // ... send it; for an answer given at once (not a held poll):
//! // skew.observe(date_header, started, SystemTime::now());
//! // on ExpiredToken / AuthFailure: cache.force_refresh(&creds).await?;
//! # let _ = started; Ok(())
//! # }
//! ```
//!
//! Server side:
//! ```no_run
//! # fn demo(req: &edgenet_auth::SignedRequest<'_>) -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use std::time::SystemTime;
//! use edgenet_auth::*;
//!
//! let keys = KeyStore::load(Path::new("/etc/edgenet/credentials.toml"))?;
//! let token_key = TokenKey::load_or_create(Path::new("/etc/edgenet/token.key"))?;
//! let sts = DevSts::new(keys, &token_key, DevStsConfig::new("eucalyptus"));
//! // Action=AssumeRole: the whole STS answer.
//! let (status, xml) = sts.handle(req, SystemTime::now());
//! // Describe calls: authenticate, then authorize.
//! match sts.verifier().verify(req, "ec2", SystemTime::now()) {
//!     Ok(principal) if principal.may_describe("nc-1") => { /* serve */ }
//!     Ok(_) => { /* 403 UnauthorizedOperation */ }
//!     Err(e) => { let (status, code) = e.status_and_code(Api::Ec2); }
//! }
//! # let _ = (status, xml); Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

// Both halves.
pub mod credentials;
pub mod encoding;
pub mod files;
pub mod skew;

pub use credentials::{Credentials, Secret};
pub use skew::ClockSkew;

// The agent's half (feature `client`).
#[cfg(feature = "client")]
pub mod cache;
#[cfg(feature = "client")]
pub mod providers;
#[cfg(feature = "client")]
pub mod sign;

#[cfg(feature = "client")]
pub use cache::{CacheConfig, CachingProvider};
#[cfg(feature = "client")]
pub use providers::{
    AssumeRoleConfig, AssumeRoleProvider, AuthError, CredentialProvider, StaticFileProvider,
};
#[cfg(feature = "client")]
pub use sign::{form_post_request, query_get_request, sign_request, SignError, Signer};

// The server's half (feature `server`): the agent does not link the STS's
// sealing crypto.
#[cfg(feature = "server")]
pub mod keys;
#[cfg(feature = "server")]
pub mod principal;
#[cfg(feature = "server")]
pub mod sts;
#[cfg(feature = "server")]
pub mod verify;

#[cfg(feature = "server")]
pub use keys::{KeyEntry, KeyStore, KeysError, TokenKey};
#[cfg(feature = "server")]
pub use principal::Principal;
#[cfg(feature = "server")]
pub use sts::{AssumeRoleParams, AssumeRoleResponse, DevSts, DevStsConfig, StsError};
#[cfg(feature = "server")]
pub use verify::{
    canonical_request, Api, KeyResolver, ResolvedKey, SignedRequest, Verifier, VerifyError,
};
