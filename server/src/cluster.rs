//! Cluster membership: member and cluster ids, computed the way etcd computes them, so that the same
//! flags give the same ids (etcd: `server/etcdserver/api/membership/{member.go,cluster.go}`).
//!
//! Owns the `cluster/*` keys of the `meta` column family: written once at bootstrap; afterwards the
//! stored membership wins over `--initial-cluster*` flags, as with etcd.

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use crate::engine::{Cf, Durability, Engine, EngineError};

const META_MEMBERSHIP: &[u8] = b"cluster/membership";

/// One member as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
}

/// The cluster as this member knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub cluster_id: u64,
    pub member_id: u64,
    pub members: Vec<Member>,
}

/// etcd `computeMemberID`: SHA-1 of the sorted peer URLs, joined, then the cluster token.
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
    /// The membership that `--initial-cluster` describes, seen from member `name`.
    pub fn from_initial_cluster(
        initial: &[(String, Vec<String>)],
        name: &str,
        token: &str,
    ) -> Result<Membership, String> {
        let members: Vec<Member> = initial
            .iter()
            .map(|(n, urls)| Member {
                id: member_id(urls, token),
                name: n.clone(),
                peer_urls: urls.clone(),
            })
            .collect();
        let me = members.iter().find(|m| m.name == name).ok_or_else(|| {
            format!("couldn't find local name {name:?} in the initial cluster configuration")
        })?;
        let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        Ok(Membership {
            cluster_id: cluster_id(&ids),
            member_id: me.id,
            members,
        })
    }

    pub fn load(engine: &Engine) -> Result<Option<Membership>, EngineError> {
        Ok(engine
            .get(Cf::Meta, META_MEMBERSHIP)?
            .map(|b| serde_json::from_slice(&b).expect("stored membership is valid JSON")))
    }

    pub fn save(&self, engine: &Engine) -> Result<(), EngineError> {
        let mut batch = engine.batch();
        let json = serde_json::to_vec(self).expect("membership serializes");
        batch.put(Cf::Meta, META_MEMBERSHIP, &json);
        engine.write(batch, Durability::Sync)
    }

    pub fn voter_ids(&self) -> Vec<u64> {
        self.members.iter().map(|m| m.id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_etcd_for_its_default_flags() {
        // `etcd` with no flags reports member 8e9e05c52164694d in cluster cdf818194e3a8c32.
        let m = Membership::from_initial_cluster(
            &[("default".into(), vec!["http://localhost:2380".into()])],
            "default",
            "etcd-cluster",
        )
        .unwrap();
        assert_eq!(format!("{:x}", m.member_id), "8e9e05c52164694d");
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
