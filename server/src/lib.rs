//! Cairn's server: an etcd-compatible, Raft-replicated key-value store.
//! The map of modules and their invariants is in ARCHITECTURE.md at the repository root.

pub mod alarm;
pub mod api;
pub mod apply;
pub mod auth;
pub mod backup;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod failpoints;
#[cfg(test)]
mod fuzz;
pub mod lease;
pub mod metrics;
pub mod mvcc;
pub mod raft;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod watch;
