//! nftables: `nft`'s JSON interface for reading and for most writes, and
//! our own nfnetlink socket for small changes (`fast_path`).
//!
//! Reads list only `inet edgenet` and `bridge edgenet`. Each apply is one
//! `nft -j -f -` run, which the kernel commits as one transaction: it takes
//! all of it or none of it. Only changed chains (flushed and rewritten),
//! sets and elements appear in it.
//!
//! What we write goes through the `nftables` crate's schema types, except
//! where the crate falls short: it has no `verdict` set type and writes
//! verdicts as bare strings, so verdict maps and their elements are
//! written as raw JSON next to the crate's objects.
//!
//! - `runner`: runs `nft` (listing, applying);
//! - `listing`: parses a listing as it arrives;
//! - `transaction`: orders the commands of one apply and writes them;
//! - `objects`, `elements`: the JSON of each command;
//! - `fast_path`: the same changes as one nfnetlink batch, when they allow;
//! - `bench_support`: the ruleset as text, for the benchmark only.

#[doc(hidden)]
pub mod bench_support;
mod elements;
pub mod fast_path;
mod listing;
mod objects;
mod runner;
mod transaction;

pub use objects::NftCommand;
pub use runner::NftRunner;
pub use transaction::{build_transaction, Transaction};
