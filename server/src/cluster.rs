//! Cluster membership: member and cluster ids, computed the way etcd computes them, so that the same
//! flags give the same ids (etcd: `server/etcdserver/api/membership/{member.go,cluster.go}`).
//!
//! Owns the `cluster/*` and `local/*` keys of the `meta` column family: written at bootstrap, then only
//! by the apply worker as membership entries commit; the stored membership wins over
//! `--initial-cluster*` flags, as with etcd.

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use crate::engine::{Batch, Cf, Durability, Engine, EngineError};

const META_MEMBERSHIP: &[u8] = b"cluster/membership";
/// This member's own id: local to the member, never part of a snapshot (see [`LOCAL_PREFIX`]).
const META_LOCAL_MEMBER_ID: &[u8] = b"local/member_id";
/// Keys of the `meta` column family under this prefix describe the member itself, not the replicated
/// state: snapshots leave them out and installing one keeps them.
pub const LOCAL_PREFIX: &[u8] = b"local/";

/// One member as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    /// Empty until the member has started and published it.
    pub name: String,
    pub peer_urls: Vec<String>,
    /// Empty until the member has started and published them.
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// The replicated membership: changed only by applying committed raft entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub cluster_id: u64,
    pub members: Vec<Member>,
    /// Members removed from the cluster: their ids are never reused and their messages are refused.
    pub removed: Vec<u64>,
}

/// etcd `computeMemberID`: SHA-1 of the sorted peer URLs, joined, then the cluster token (for a
/// member added at runtime, the current time in seconds).
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha1::new();
    h.update(urls.concat().as_bytes());
    h.update(token.as_bytes());
    u64::from_be_bytes(h.finalize()[..8].try_into().expect("sha1 is 20 bytes"))
}

/// etcd `RaftCluster.genID`: SHA-1 of the sorted member ids, big-endian.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    u64::from_be_bytes(h.finalize()[..8].try_into().expect("sha1 is 20 bytes"))
}

impl Membership {
    /// The membership that `--initial-cluster` describes, and the id of member `name` in it.
    pub fn from_initial_cluster(
        initial: &[(String, Vec<String>)],
        name: &str,
        token: &str,
    ) -> Result<(Membership, u64), String> {
        let members: Vec<Member> = initial
            .iter()
            .map(|(n, urls)| Member {
                id: member_id(urls, token),
                name: n.clone(),
                peer_urls: urls.clone(),
                client_urls: vec![],
                is_learner: false,
            })
            .collect();
        let me = members.iter().find(|m| m.name == name).ok_or_else(|| {
            format!("couldn't find local name {name:?} in the initial cluster configuration")
        })?;
        let local = me.id;
        let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        let mut seen = ids.clone();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != ids.len() {
            return Err("--initial-cluster has duplicate members (same peer URLs)".into());
        }
        Ok((
            Membership {
                cluster_id: cluster_id(&ids),
                members,
                removed: vec![],
            },
            local,
        ))
    }

    /// The stored membership and this member's id, if the member was bootstrapped.
    pub fn load(engine: &Engine) -> Result<Option<(Membership, u64)>, EngineError> {
        let Some(id) = engine.get(Cf::Meta, META_LOCAL_MEMBER_ID)? else {
            return Ok(None);
        };
        let id = u64::from_be_bytes(id.as_slice().try_into().expect("8-byte member id"));
        Ok(engine
            .get(Cf::Meta, META_MEMBERSHIP)?
            .map(|b| (Membership::decode(&b), id)))
    }

    pub fn decode(bytes: &[u8]) -> Membership {
        serde_json::from_slice(bytes).expect("stored membership is valid JSON")
    }

    /// Adds the membership to `batch` (with the data of the entry that changed it).
    pub fn save(&self, batch: &mut Batch) {
        let json = serde_json::to_vec(self).expect("membership serializes");
        batch.put(Cf::Meta, META_MEMBERSHIP, &json);
    }

    /// Records the membership and this member's id at bootstrap.
    pub fn save_bootstrap(&self, engine: &Engine, local: u64) -> Result<(), EngineError> {
        let mut batch = engine.batch();
        self.save(&mut batch);
        batch.put(Cf::Meta, META_LOCAL_MEMBER_ID, &local.to_be_bytes());
        engine.write(batch, Durability::Sync)
    }

    pub fn voter_ids(&self) -> Vec<u64> {
        self.members
            .iter()
            .filter(|m| !m.is_learner)
            .map(|m| m.id)
            .collect()
    }

    pub fn get(&self, id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.id == id)
    }

    /// Whether any member other than `except` already uses one of `urls` as a peer URL.
    pub fn peer_urls_taken(&self, urls: &[String], except: u64) -> bool {
        self.members
            .iter()
            .filter(|m| m.id != except)
            .any(|m| m.peer_urls.iter().any(|u| urls.contains(u)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_etcd_for_its_default_flags() {
        // `etcd` with no flags reports member 8e9e05c52164694d in cluster cdf818194e3a8c32.
        let (m, local) = Membership::from_initial_cluster(
            &[("default".into(), vec!["http://localhost:2380".into()])],
            "default",
            "etcd-cluster",
        )
        .unwrap();
        assert_eq!(format!("{local:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", m.cluster_id), "cdf818194e3a8c32");
    }

    #[test]
    fn local_name_must_be_in_the_initial_cluster() {
        let err = Membership::from_initial_cluster(
            &[("a".into(), vec!["http://127.0.0.1:2380".into()])],
            "b",
            "t",
        )
        .unwrap_err();
        assert!(err.contains("\"b\""), "{err}");
    }
}
