//! `cairn snapshot restore`: a new member's data dir from a backup (etcdutl `snapshot restore`).
//!
//! The result is what a member of a NEW cluster would hold after installing a raft snapshot of the
//! backed-up state at the bootstrap entry: the state machine from the file (keys, history, leases,
//! revision and compacted revision), membership and ids derived from the new flags as
//! `--initial-cluster-state new` derives them, and the bootstrap log (term 1, configuration = the
//! new members, applied index 1). Every member restored with the same file and flags therefore
//! starts with the same log and hard state and elects a leader normally; `cairn` then starts from
//! the data dir as from any existing one (the `--initial-cluster*` flags are ignored).
//!
//! **Invariant:** a data dir is complete or absent: restore builds `member.restoring/` and renames
//! it to `member/` only once everything is written and synced; a failure removes it.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};

use super::{BackupReader, HashCheck, Header};
use crate::engine::{Durability, Engine};
use crate::mvcc::{Store, Writer};
use crate::server::{bootstrap_new, create_data_dir, db_dir, initial_membership, member_dir};

/// Records written per batch.
const RESTORE_BATCH_BYTES: usize = 4 << 20;

/// What to restore, where, and as which member of which new cluster (etcdutl's flags).
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub file: PathBuf,
    pub name: String,
    pub data_dir: PathBuf,
    /// `--initial-cluster` as (name, peer URLs) pairs.
    pub initial_cluster: Vec<(String, Vec<String>)>,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: Vec<String>,
    pub hash_check: HashCheck,
    /// `--bump-revision N --mark-compacted` (etcdutl accepts them only together).
    pub bump_revision: Option<u64>,
}

/// What a restore produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub member_id: u64,
    pub cluster_id: u64,
    /// The backup's header.
    pub header: Header,
    /// The revision the member starts at (the backup's, plus any bump).
    pub revision: i64,
    pub compact_revision: i64,
}

/// Writes a new member's data dir from the backup in `opts.file`; refuses a data dir that is not
/// empty, and a file that is truncated, malformed or (unless told not to check) corrupt.
pub fn restore(opts: &RestoreOptions) -> anyhow::Result<Restored> {
    let (membership, local) = initial_membership(
        &opts.initial_cluster,
        &opts.name,
        &opts.initial_cluster_token,
        &opts.initial_advertise_peer_urls,
    )?;
    let data_dir = &opts.data_dir;
    if data_dir.exists() && !is_empty_dir(data_dir) {
        bail!(
            "data-dir {:?} not empty or could not be read",
            data_dir.display().to_string()
        );
    }
    let reader = BackupReader::open(&opts.file)
        .with_context(|| format!("cannot restore {}", opts.file.display()))?;
    create_data_dir(data_dir)?;
    let staging = data_dir.join("member.restoring");
    let built = build(&staging, reader, opts, |engine| {
        bootstrap_new(engine, &membership, local)
    });
    let (header, revision, compact_revision) = match built {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(e.context(format!("cannot restore {}", opts.file.display())));
        }
    };
    fs::rename(&staging, member_dir(data_dir))?;
    File::open(data_dir)?.sync_all()?;
    Ok(Restored {
        member_id: local,
        cluster_id: membership.cluster_id,
        header,
        revision,
        compact_revision,
    })
}

fn is_empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// Writes the backup's records into a new database under `staging`, checks them against the header
/// and the hash, applies the bump, then `bootstrap`s the member. Returns (header, revision,
/// compacted revision).
fn build(
    staging: &Path,
    mut reader: BackupReader,
    opts: &RestoreOptions,
    bootstrap: impl FnOnce(&Engine) -> anyhow::Result<()>,
) -> anyhow::Result<(Header, i64, i64)> {
    let engine = Engine::open(&db_dir(staging))?;
    let header = reader.header;
    let mut batch = engine.batch();
    reader.for_each_record(|cf, key, value| {
        batch.put(cf, key, value);
        if batch.size_bytes() >= RESTORE_BATCH_BYTES {
            engine.write(
                std::mem::replace(&mut batch, engine.batch()),
                Durability::Buffered,
            )?;
        }
        Ok(())
    })?;
    engine.write(batch, Durability::Buffered)?;
    reader.finish(opts.hash_check)?;
    let store = Store::new(engine.clone());
    ensure!(
        store.current_revision()? == header.revision
            && store.compact_revision()? == header.compact_revision,
        "malformed snapshot file: its records' revisions differ from its header's"
    );
    if let Some(by) = opts.bump_revision {
        let by = i64::try_from(by)
            .ok()
            .filter(|by| header.revision.checked_add(*by).is_some())
            .context("--bump-revision is too large")?;
        Writer::open(engine.clone())?.bump_revision(by)?;
    }
    bootstrap(&engine)?;
    Ok((header, store.current_revision()?, store.compact_revision()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::Backup;
    use crate::cluster::{cluster_id, member_id, Membership};
    use crate::engine::Cf;
    use cairn_proto::etcdserverpb::PutRequest;

    /// A backup file of a store at revision 11, compacted at 5.
    fn backup_file(dir: &Path) -> PathBuf {
        let engine = Engine::open(&dir.join("source")).unwrap();
        let mut w = Writer::open(engine.clone()).unwrap();
        for i in 0..10u64 {
            let put = PutRequest {
                key: format!("k{}", i % 3).into_bytes().into(),
                value: vec![b'v'; 10].into(),
                ..Default::default()
            };
            w.put(&put, 100 + i).unwrap();
        }
        w.compact(5, 200).unwrap();
        let backup = Backup::take(&engine, dir.join("ckpt")).unwrap();
        let path = dir.join("backup.db");
        std::fs::write(&path, backup.to_bytes()).unwrap();
        path
    }

    fn options(file: &Path, dir: &Path, name: &str, bump: Option<u64>) -> RestoreOptions {
        let url = |n: &str| format!("http://127.0.0.1:{}", if n == "a" { 1 } else { 2 });
        RestoreOptions {
            file: file.to_path_buf(),
            name: name.into(),
            data_dir: dir.join(name),
            initial_cluster: ["a", "b"].map(|n| (n.to_string(), vec![url(n)])).to_vec(),
            initial_cluster_token: "new".into(),
            initial_advertise_peer_urls: vec![url(name)],
            hash_check: HashCheck::Verify,
            bump_revision: bump,
        }
    }

    #[test]
    fn restored_members_start_alike_as_a_new_cluster_at_the_bootstrap_entry() {
        let dir = tempfile::tempdir().unwrap();
        let file = backup_file(dir.path());
        let a = restore(&options(&file, dir.path(), "a", None)).unwrap();
        let b = restore(&options(&file, dir.path(), "b", None)).unwrap();
        let ids = [
            member_id(&["http://127.0.0.1:1".into()], "new"),
            member_id(&["http://127.0.0.1:2".into()], "new"),
        ];
        assert_eq!((a.member_id, b.member_id), (ids[0], ids[1]));
        assert_eq!(a.cluster_id, cluster_id(&ids));
        assert_eq!((a.revision, a.compact_revision), (11, 5));
        assert!(!dir.path().join("a").join("member.restoring").exists());

        let open = |n: &str| Engine::open(&db_dir(&member_dir(&dir.path().join(n)))).unwrap();
        let (ea, eb) = (open("a"), open("b"));
        for cf in [
            Cf::RaftState,
            Cf::RaftLog,
            Cf::KvLatest,
            Cf::KvHistory,
            Cf::KvRevision,
            Cf::Lease,
        ] {
            assert_eq!(
                ea.dump(cf),
                eb.dump(cf),
                "{cf:?} is the same on every member"
            );
        }
        let meta = |e: &Engine| {
            let mut m = e.dump(Cf::Meta);
            m.retain(|(k, _)| !k.starts_with(b"local/"));
            m
        };
        assert_eq!(meta(&ea), meta(&eb));
        assert!(ea.dump(Cf::RaftLog).is_empty());
        let writer = Writer::open(ea.clone()).unwrap();
        assert_eq!(
            writer.applied_index().unwrap(),
            crate::raft::storage::BOOTSTRAP_INDEX
        );
        let (membership, local) = Membership::load(&ea).unwrap().unwrap();
        assert_eq!(local, ids[0]);
        assert_eq!(membership.voter_ids(), ids.to_vec());
    }

    #[test]
    fn a_bump_raises_and_compacts_the_revision_and_a_used_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = backup_file(dir.path());
        let r = restore(&options(&file, dir.path(), "a", Some(1000))).unwrap();
        assert_eq!(
            (r.header.revision, r.revision, r.compact_revision),
            (11, 1011, 1011)
        );
        let e = restore(&options(&file, dir.path(), "a", None)).unwrap_err();
        assert!(e.to_string().contains("not empty"), "{e}");
        let e = restore(&options(&file, dir.path(), "b", Some(u64::MAX))).unwrap_err();
        assert!(format!("{e:#}").contains("too large"), "{e:#}");
        assert!(!dir.path().join("b").join("member").exists());
    }
}
