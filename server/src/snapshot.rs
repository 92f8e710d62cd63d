//! State-machine snapshots: how a member that lags behind the leader's log (or a new one) gets the
//! state instead of the entries it missed.
//!
//! - The leader takes a [`Checkpoint`] (a consistent RocksDB copy made of hard links) and streams the
//!   records of its state column families ([`Cf::STATE`], without the member-local `local/*` keys).
//! - The receiver writes them to a file ([`SnapshotFile`]), checking the framing as they arrive, and
//!   only then hands the raft message to raft.
//! - The apply worker [`install`]s the file: it replaces the state column families and, in the last
//!   batch, writes what raft needs (truncated log, conf state, hard state).
//!
//! **Invariant:** installing is atomic as seen after a crash: a marker written first names the file
//! and the last batch; [`resume_install`] finishes an interrupted install at the next start.
//! Memory stays bounded: records move in chunks of about [`CHUNK_BYTES`].

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::cluster::LOCAL_PREFIX;
use crate::engine::{Batch, Cf, Durability, Engine, EngineError};
use crate::mvcc::META_APPLIED_INDEX;

/// The size a sender aims for per chunk of records (a record larger than this travels alone).
pub const CHUNK_BYTES: usize = 1 << 20;
/// Records written per batch while installing.
const INSTALL_BATCH_BYTES: usize = 4 << 20;
/// Names the snapshot file and the final batch of an install in progress.
const META_INSTALLING: &[u8] = b"local/installing_snapshot";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Not a `source`: the message says it already, and `{:#}` would say it twice.
    #[error("snapshot file: {0}")]
    Io(std::io::Error),
    #[error("malformed snapshot records: {0}")]
    Malformed(&'static str),
}

impl From<std::io::Error> for SnapshotError {
    fn from(e: std::io::Error) -> SnapshotError {
        SnapshotError::Io(e)
    }
}

type Result<T> = std::result::Result<T, SnapshotError>;

/// A consistent, read-only copy of a member's database, deleted from disk when dropped.
pub struct Checkpoint {
    pub engine: Engine,
    dir: PathBuf,
}

impl Checkpoint {
    /// Takes a checkpoint of `engine` into the new directory `dir`.
    pub fn create(engine: &Engine, dir: PathBuf) -> Result<Checkpoint> {
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent)?;
        }
        engine.checkpoint(&dir)?;
        let engine = Engine::open_read_only(&dir)?;
        Ok(Checkpoint { engine, dir })
    }

    /// The raft index of the last entry applied to this copy.
    pub fn applied_index(&self) -> Result<u64> {
        Ok(self
            .engine
            .get(Cf::Meta, META_APPLIED_INDEX)?
            .map_or(0, |b| {
                i64::from_be_bytes(b.as_slice().try_into().unwrap_or_default()) as u64
            }))
    }

    /// Calls `emit` with chunks of records of the state column families, in order; stops early
    /// when `emit` returns false.
    pub fn for_each_chunk(&self, mut emit: impl FnMut(Vec<u8>) -> bool) -> Result<()> {
        let mut chunk = Vec::with_capacity(CHUNK_BYTES + 4096);
        let mut stopped = false;
        self.for_each_record(|cf, k, v| {
            encode_record(cf, k, v, &mut chunk);
            stopped = chunk.len() >= CHUNK_BYTES && !emit(std::mem::take(&mut chunk));
            !stopped
        })?;
        if !stopped {
            emit(chunk);
        }
        Ok(())
    }

    /// The number of records [`Checkpoint::for_each_chunk`] emits and their size in bytes.
    pub fn measure(&self) -> Result<(u64, u64)> {
        let (mut records, mut bytes) = (0, 0);
        self.for_each_record(|_, k, v| {
            records += 1;
            bytes += record_bytes(k, v);
            true
        })?;
        Ok((records, bytes))
    }

    /// Calls `visit` with every record of the state column families (without the member-local
    /// keys), in order; stops early when `visit` returns false.
    fn for_each_record(&self, mut visit: impl FnMut(Cf, &[u8], &[u8]) -> bool) -> Result<()> {
        for cf in Cf::STATE {
            let mut it = self.engine.iter(cf, &[], None);
            while let Some((k, v)) = it.current() {
                let local = cf == Cf::Meta && k.starts_with(LOCAL_PREFIX);
                if !local && !visit(cf, k, v) {
                    return Ok(());
                }
                it.advance();
            }
            it.check()?;
        }
        Ok(())
    }
}

impl Drop for Checkpoint {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), "cannot remove snapshot checkpoint: {e}");
        }
    }
}

/// A record: column family tag (1 byte), key length (u32 BE), key, value length (u32 BE), value.
fn encode_record(cf: Cf, key: &[u8], value: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.push(cf.tag());
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
    debug_assert_eq!((out.len() - start) as u64, record_bytes(key, value));
}

/// The encoded size of a record (see [`encode_record`]).
fn record_bytes(key: &[u8], value: &[u8]) -> u64 {
    1 + 4 + key.len() as u64 + 4 + value.len() as u64
}

/// One record of a snapshot: column family, key, value.
pub type Record<'a> = (Cf, &'a [u8], &'a [u8]);
/// A record read from a file.
pub type OwnedRecord = (Cf, Vec<u8>, Vec<u8>);

/// Splits `buf` into whole records; an error if a record is cut or names an unknown column family.
pub fn parse_records(mut buf: &[u8]) -> Result<Vec<Record<'_>>> {
    fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
        if buf.len() < n {
            return Err(SnapshotError::Malformed("record cut short"));
        }
        let (head, rest) = buf.split_at(n);
        *buf = rest;
        Ok(head)
    }
    fn len(buf: &mut &[u8]) -> Result<usize> {
        Ok(u32::from_be_bytes(take(buf, 4)?.try_into().expect("4 bytes")) as usize)
    }
    let mut out = vec![];
    while !buf.is_empty() {
        let cf = Cf::from_tag(take(&mut buf, 1)?[0])
            .filter(|cf| Cf::STATE.contains(cf))
            .ok_or(SnapshotError::Malformed("unknown column family"))?;
        let n = len(&mut buf)?;
        let key = take(&mut buf, n)?;
        let n = len(&mut buf)?;
        let value = take(&mut buf, n)?;
        if cf == Cf::Meta && key.starts_with(LOCAL_PREFIX) {
            return Err(SnapshotError::Malformed("member-local key"));
        }
        out.push((cf, key, value));
    }
    Ok(out)
}

/// A snapshot being received: records are checked and appended to a temporary file, which becomes
/// `<dir>/<index>.snap` once complete and synced.
pub struct SnapshotFile {
    tmp: PathBuf,
    path: PathBuf,
    out: BufWriter<File>,
}

impl SnapshotFile {
    pub fn create(dir: &Path, index: u64) -> Result<SnapshotFile> {
        fs::create_dir_all(dir)?;
        let path = dir.join(format!("{index:016x}.snap"));
        let tmp = path.with_extension("snap.tmp");
        let out = BufWriter::new(File::create(&tmp)?);
        Ok(SnapshotFile { tmp, path, out })
    }

    pub fn append(&mut self, records: &[u8]) -> Result<()> {
        parse_records(records)?;
        self.out.write_all(records)?;
        Ok(())
    }

    /// Syncs and renames the file; returns its final path.
    pub fn finish(self) -> Result<PathBuf> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&self.tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(self.path)
    }
}

/// Replaces the state column families with the snapshot in `path`, then writes `last` (raft's
/// state for the snapshot) in the same batch as the end of the install.
pub fn install(engine: &Engine, path: &Path, last: Batch) -> Result<()> {
    let mut marker = engine.batch();
    marker.put(Cf::Meta, META_INSTALLING, &encode_marker(path, &last));
    engine.write(marker, Durability::Sync)?;
    load(engine, path, last)
}

/// Finishes an install that a crash interrupted; returns whether there was one.
pub fn resume_install(engine: &Engine) -> Result<bool> {
    let Some(marker) = engine.get(Cf::Meta, META_INSTALLING)? else {
        return Ok(false);
    };
    let (path, last) = decode_marker(&marker)?;
    tracing::warn!(path = %path.display(), "finishing an interrupted snapshot install");
    load(engine, &path, engine.batch_from_data(&last))?;
    Ok(true)
}

fn encode_marker(path: &Path, last: &Batch) -> Vec<u8> {
    let path = path.to_string_lossy();
    let mut v = (path.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(path.as_bytes());
    v.extend_from_slice(&last.data());
    v
}

fn decode_marker(v: &[u8]) -> Result<(PathBuf, Vec<u8>)> {
    let bad = SnapshotError::Malformed("install marker");
    let n = u32::from_be_bytes(v.get(..4).ok_or(bad)?.try_into().expect("4 bytes")) as usize;
    let path = std::str::from_utf8(
        v.get(4..4 + n)
            .ok_or(SnapshotError::Malformed("install marker"))?,
    )
    .map_err(|_| SnapshotError::Malformed("install marker path"))?;
    Ok((PathBuf::from(path), v[4 + n..].to_vec()))
}

fn load(engine: &Engine, path: &Path, mut last: Batch) -> Result<()> {
    let mut batch = engine.batch();
    for cf in Cf::STATE {
        if cf == Cf::Meta {
            let mut it = engine.iter(cf, &[], None);
            while let Some((k, _)) = it.current() {
                if !k.starts_with(LOCAL_PREFIX) {
                    batch.delete(cf, k);
                }
                it.advance();
            }
            it.check()?;
        } else {
            engine.clear(cf, &mut batch)?;
        }
    }
    engine.write(batch, Durability::Buffered)?;

    let mut reader = BufReader::new(File::open(path)?);
    let mut batch = engine.batch();
    while let Some((cf, key, value)) = read_record(&mut reader)? {
        batch.put(cf, &key, &value);
        if batch.size_bytes() >= INSTALL_BATCH_BYTES {
            engine.write(
                std::mem::replace(&mut batch, engine.batch()),
                Durability::Buffered,
            )?;
        }
    }
    engine.write(batch, Durability::Buffered)?;
    last.delete(Cf::Meta, META_INSTALLING);
    engine.write(last, Durability::Sync)?;
    fs::remove_file(path)?;
    Ok(())
}

/// Reads the next record (see [`encode_record`]) from `reader`: `None` at the end of the input,
/// an error if a record is cut short, names a column family outside the state or a member-local key.
pub fn read_record(reader: &mut impl Read) -> Result<Option<OwnedRecord>> {
    let mut tag = [0u8; 1];
    match reader.read_exact(&mut tag) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let cf = Cf::from_tag(tag[0])
        .filter(|cf| Cf::STATE.contains(cf))
        .ok_or(SnapshotError::Malformed("unknown column family"))?;
    let key = read_field(reader)?;
    let value = read_field(reader)?;
    if cf == Cf::Meta && key.starts_with(LOCAL_PREFIX) {
        return Err(SnapshotError::Malformed("member-local key"));
    }
    Ok(Some((cf, key, value)))
}

/// Reads a length-prefixed field. Memory grows with the bytes actually read, so a corrupt length
/// cannot make it allocate gigabytes up front.
fn read_field(reader: &mut impl Read) -> Result<Vec<u8>> {
    const PREALLOCATE_BYTES_MAX: u64 = 64 << 10;
    let mut len = [0u8; 4];
    reader.read_exact(&mut len)?;
    let len = u64::from(u32::from_be_bytes(len));
    let mut v = Vec::with_capacity(len.min(PREALLOCATE_BYTES_MAX) as usize);
    reader.take(len).read_to_end(&mut v)?;
    if v.len() as u64 != len {
        return Err(SnapshotError::Malformed("record cut short"));
    }
    Ok(v)
}

/// Removes snapshot files that no install refers to (left by a crash while receiving).
pub fn remove_stale_files(engine: &Engine, dir: &Path) -> Result<()> {
    let installing = match engine.get(Cf::Meta, META_INSTALLING)? {
        Some(m) => Some(decode_marker(&m)?.0),
        None => None,
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        if Some(&path) != installing.as_ref() {
            if path.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(engine: &Engine, pairs: &[(Cf, &[u8], &[u8])]) {
        let mut b = engine.batch();
        for (cf, k, v) in pairs {
            b.put(*cf, k, v);
        }
        engine.write(b, Durability::Sync).unwrap();
    }

    #[test]
    fn a_snapshot_replaces_state_keeps_local_keys_and_finishes_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let leader = Engine::open(&dir.path().join("leader")).unwrap();
        fill(
            &leader,
            &[
                (Cf::KvLatest, b"a", b"1"),
                (Cf::KvLatest, &[0xff; 300], b"big key"),
                (Cf::Meta, META_APPLIED_INDEX, &9i64.to_be_bytes()),
                (Cf::Meta, b"local/member_id", b"leader"),
                (Cf::RaftLog, b"log", b"not state"),
            ],
        );
        let checkpoint = Checkpoint::create(&leader, dir.path().join("ckpt")).unwrap();
        assert_eq!(checkpoint.applied_index().unwrap(), 9);
        let mut file = SnapshotFile::create(&dir.path().join("snap"), 9).unwrap();
        checkpoint
            .for_each_chunk(|c| {
                file.append(&c).unwrap();
                true
            })
            .unwrap();
        let path = file.finish().unwrap();

        let follower = Engine::open(&dir.path().join("follower")).unwrap();
        fill(
            &follower,
            &[
                (Cf::KvLatest, b"stale", b"x"),
                (Cf::KvHistory, &[0xff; 1000], b"stale"),
                (Cf::Meta, b"local/member_id", b"follower"),
            ],
        );
        let mut last = follower.batch();
        last.put(Cf::RaftState, b"truncated", b"9");
        // Crash after the marker: the next start finishes the install.
        let mut marker = follower.batch();
        marker.put(Cf::Meta, META_INSTALLING, &encode_marker(&path, &last));
        follower.write(marker, Durability::Sync).unwrap();
        assert!(resume_install(&follower).unwrap());
        assert!(!resume_install(&follower).unwrap());

        assert_eq!(
            follower.dump(Cf::KvLatest),
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (vec![0xff; 300], b"big key".to_vec())
            ]
        );
        assert!(follower.dump(Cf::KvHistory).is_empty());
        assert_eq!(
            follower.get(Cf::Meta, b"local/member_id").unwrap().unwrap(),
            b"follower"
        );
        assert_eq!(
            follower.get(Cf::RaftState, b"truncated").unwrap().unwrap(),
            b"9"
        );
        assert!(follower.get(Cf::RaftLog, b"log").unwrap().is_none());
        assert!(!path.exists());
    }

    #[test]
    fn malformed_records_are_refused() {
        let mut buf = vec![];
        encode_record(Cf::KvLatest, b"k", b"v", &mut buf);
        assert_eq!(parse_records(&buf).unwrap().len(), 1);
        assert!(parse_records(&buf[..buf.len() - 1]).is_err());
        let mut raft = vec![];
        encode_record(Cf::RaftLog, b"k", b"v", &mut raft);
        assert!(parse_records(&raft).is_err());
        let mut local = vec![];
        encode_record(Cf::Meta, b"local/x", b"v", &mut local);
        assert!(parse_records(&local).is_err());
    }
}
