//! Credentials, AssumeRole, SigV4 signing and verification.
