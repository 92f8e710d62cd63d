//! cairn-jepsen: a consistency-testing harness for Cairn or any etcd v3 cluster.
//!
//! It starts a cluster of any binary with etcd's flags, runs concurrent clients that record a
//! history while a nemesis injects faults, heals the cluster, and checks the history.
//! It is store-agnostic: it knows etcd's wire API and flags, never Cairn's internals.

pub mod admin;
pub mod checker;
pub mod client;
pub mod cluster;
pub mod history;
pub mod lock;
pub mod nemesis;
pub mod proxy;
pub mod report;
pub mod run;
pub mod shim;
pub mod smoke;
pub mod watcher;
pub mod workload;
