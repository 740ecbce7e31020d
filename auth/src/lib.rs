//! Credentials, STS AssumeRole, SigV4 signing and verification for edgenet.
//!
//! The agent side uses [`providers`] (static file, AssumeRole) behind a
//! [`CachingProvider`], signs with [`sign`] and corrects its clock with
//! [`ClockSkew`]. The server side uses [`Verifier`] to authenticate SigV4
//! requests and [`DevSts`] to answer the development `AssumeRole` and to
//! open the self-contained session tokens it issues.

pub mod cache;
pub mod credentials;
pub mod files;
pub mod keys;
pub mod principal;
pub mod providers;
pub mod sign;
pub mod skew;
pub mod sts;
pub mod verify;

pub use cache::{CacheConfig, CachingProvider};
pub use credentials::{Credentials, Secret};
pub use keys::{KeyEntry, KeyStore, KeysError, TokenKey};
pub use principal::Principal;
pub use providers::{
    AssumeRoleConfig, AssumeRoleProvider, AuthError, CredentialProvider, StaticFileProvider,
};
pub use sign::{form_post_request, query_get_request, sign_request, SignError, Signer};
pub use skew::ClockSkew;
pub use sts::{AssumeRoleParams, AssumeRoleResponse, DevSts, DevStsConfig, StsError};
pub use verify::{
    canonical_request, Api, KeyResolver, ResolvedKey, SignedRequest, Verifier, VerifyError,
};
