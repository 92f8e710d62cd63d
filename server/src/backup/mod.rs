//! Backups: the file that `etcdctl snapshot save` writes from `Maintenance.Snapshot`, and that
//! `cairn snapshot restore|status` read (etcd's names for users; "backup" here to keep it apart from
//! raft's snapshots in [`crate::snapshot`], whose checkpoint and record encoding it reuses).
//!
//! The format is Cairn's own (etcd's is a bbolt file): `etcdutl` cannot read it and Cairn cannot
//! restore an etcd snapshot. Version 1, integers big-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `CAIRNSNP` |
//! | 4 | format version (1) |
//! | 8 | MVCC revision (i64) |
//! | 8 | compacted revision (i64, 0 if never compacted) |
//! | 8 | raft index applied on the member that took it (u64, informational) |
//! | 8 | number of records (u64) |
//! | 8 | size of the records in bytes (u64) |
//! | … | records of the state column families, in column-family then key order: tag (1), key length (4), key, value length (4), value — the raft snapshot's encoding |
//! | … | zeros up to a multiple of 512 bytes (etcdctl 3.4 accepts a file only if `size % 512 == 32`) |
//! | 32 | SHA-256 of every byte before it (etcd's integrity trailer, sent as the stream's last message) |
//!
//! **Invariant:** the header describes the records exactly: their count, their size, and the
//! revision and compacted revision that the `meta` records hold. The writer counts before it writes
//! and checks after; the reader checks the size before reading anything and the rest as it reads,
//! so a truncated file is refused even with `--skip-hash-check`.
//! **Invariant:** a backup holds only replicated state: no raft log or raft state, no member-local
//! keys (restore writes a new member's own).

pub mod cli;
pub mod restore;

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::engine::{Cf, Engine, EngineError};
use crate::mvcc::{self, Store};
use crate::snapshot::{self, Checkpoint, SnapshotError};

const MAGIC: &[u8; 8] = b"CAIRNSNP";
const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: u64 = 52;
/// The body (header, records, padding) is a multiple of this (etcd: `hasChecksum`).
const ALIGN_BYTES: u64 = 512;
/// The SHA-256 trailer.
pub const HASH_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Not a `source`: the message says it already, and `{:#}` would say it twice.
    #[error("snapshot file: {0}")]
    Io(std::io::Error),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Mvcc(#[from] mvcc::Error),
    #[error(
        "not a Cairn snapshot file (no CAIRNSNP magic): Cairn restores only what `etcdctl snapshot \
         save` took from a Cairn member, not an etcd (bbolt) snapshot"
    )]
    NotCairn,
    #[error("snapshot file format version {0} is not supported (this cairn reads version {FORMAT_VERSION})")]
    Version(u32),
    #[error("snapshot file has {actual} bytes but its header says {expected}: it is truncated or was altered")]
    Size { expected: u64, actual: u64 },
    #[error(
        "snapshot file is corrupt: its SHA-256 is {actual} but its trailer says {expected} \
         (`restore --skip-hash-check` ignores it)"
    )]
    Hash { expected: String, actual: String },
    #[error("malformed snapshot file: {0}")]
    Malformed(&'static str),
}

impl From<std::io::Error> for BackupError {
    fn from(e: std::io::Error) -> BackupError {
        BackupError::Io(e)
    }
}

pub type Result<T> = std::result::Result<T, BackupError>;

/// What the header of a backup says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub revision: i64,
    pub compact_revision: i64,
    pub applied_index: u64,
    pub records: u64,
    pub records_bytes: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_BYTES as usize] {
        let mut out = [0u8; HEADER_BYTES as usize];
        out[..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        out[12..20].copy_from_slice(&self.revision.to_be_bytes());
        out[20..28].copy_from_slice(&self.compact_revision.to_be_bytes());
        out[28..36].copy_from_slice(&self.applied_index.to_be_bytes());
        out[36..44].copy_from_slice(&self.records.to_be_bytes());
        out[44..52].copy_from_slice(&self.records_bytes.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8; HEADER_BYTES as usize]) -> Result<Header> {
        if &bytes[..8] != MAGIC {
            return Err(BackupError::NotCairn);
        }
        let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let version = u32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(BackupError::Version(version));
        }
        Ok(Header {
            revision: u64_at(12) as i64,
            compact_revision: u64_at(20) as i64,
            applied_index: u64_at(28),
            records: u64_at(36),
            records_bytes: u64_at(44),
        })
    }

    /// The bytes before the hash: header, records and padding (etcd's `remaining_bytes` total).
    pub fn body_bytes(&self) -> u64 {
        (HEADER_BYTES + self.records_bytes).div_ceil(ALIGN_BYTES) * ALIGN_BYTES
    }

    fn padding_bytes(&self) -> u64 {
        self.body_bytes() - HEADER_BYTES - self.records_bytes
    }

    /// The size of the whole file.
    pub fn file_bytes(&self) -> u64 {
        self.body_bytes() + HASH_BYTES as u64
    }
}

/// A consistent copy of a member's state, ready to be written as a backup.
pub struct Backup {
    checkpoint: Checkpoint,
    pub header: Header,
}

impl Backup {
    /// Takes a checkpoint of `engine` into the new directory `dir` (removed when the backup is
    /// dropped) and counts its records. Neither blocks the member's reads or writes.
    pub fn take(engine: &Engine, dir: PathBuf) -> Result<Backup> {
        let checkpoint = Checkpoint::create(engine, dir)?;
        let store = Store::new(checkpoint.engine.clone());
        let (records, records_bytes) = checkpoint.measure()?;
        let header = Header {
            revision: store.current_revision()?,
            compact_revision: store.compact_revision()?,
            applied_index: checkpoint.applied_index()?,
            records,
            records_bytes,
        };
        Ok(Backup { checkpoint, header })
    }

    /// Hands the file's body (every byte before the hash) to `out`, piece by piece, and returns the
    /// SHA-256 to append; `None` if `out` returned false (its reader is gone).
    pub fn write_body(
        &self,
        mut out: impl FnMut(&[u8]) -> bool,
    ) -> Result<Option<[u8; HASH_BYTES]>> {
        let mut sha = Sha256::new();
        let mut written = 0u64;
        let mut emit = |piece: &[u8], written: &mut u64| {
            sha.update(piece);
            *written += piece.len() as u64;
            out(piece)
        };
        if !emit(&self.header.encode(), &mut written) {
            return Ok(None);
        }
        let mut gone = false;
        self.checkpoint.for_each_chunk(|chunk| {
            gone = !emit(&chunk, &mut written);
            !gone
        })?;
        if gone {
            return Ok(None);
        }
        if written != HEADER_BYTES + self.header.records_bytes {
            return Err(BackupError::Malformed(
                "the checkpoint changed while it was read",
            ));
        }
        let padding = vec![0u8; self.header.padding_bytes() as usize];
        if !emit(&padding, &mut written) {
            return Ok(None);
        }
        Ok(Some(sha.finalize().into()))
    }
}

#[cfg(test)]
impl Backup {
    /// The whole file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = vec![];
        let sha = self
            .write_body(|piece| {
                bytes.extend_from_slice(piece);
                true
            })
            .unwrap()
            .unwrap();
        bytes.extend_from_slice(&sha);
        bytes
    }
}

/// Whether reading a backup compares its content with its SHA-256 trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashCheck {
    Verify,
    /// etcdutl's `--skip-hash-check`: the structure is still checked.
    Skip,
}

/// Passes what it reads to a SHA-256.
struct Hashing<R> {
    inner: R,
    sha: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

/// Reads a backup file from start to end: the header, then the records, then the checks.
pub struct BackupReader {
    pub header: Header,
    input: Hashing<BufReader<File>>,
}

impl BackupReader {
    /// Opens `path` and reads its header; refuses a file whose size is not what the header says.
    pub fn open(path: &Path) -> Result<BackupReader> {
        let file = File::open(path)?;
        let actual = file.metadata()?.len();
        let mut input = Hashing {
            inner: BufReader::with_capacity(1 << 20, file),
            sha: Sha256::new(),
        };
        let mut head = [0u8; HEADER_BYTES as usize];
        if actual < HEADER_BYTES {
            let mut start = vec![];
            input.read_to_end(&mut start)?;
            return Err(if start.len() >= MAGIC.len() && start.starts_with(MAGIC) {
                BackupError::Size {
                    expected: HEADER_BYTES + HASH_BYTES as u64,
                    actual,
                }
            } else {
                BackupError::NotCairn
            });
        }
        input.read_exact(&mut head)?;
        let header = Header::decode(&head)?;
        if actual != header.file_bytes() {
            return Err(BackupError::Size {
                expected: header.file_bytes(),
                actual,
            });
        }
        Ok(BackupReader { header, input })
    }

    /// Calls `visit` with every record, in order, then checks that they were what the header says.
    pub fn for_each_record(
        &mut self,
        mut visit: impl FnMut(Cf, &[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut records = (&mut self.input).take(self.header.records_bytes);
        let mut count = 0u64;
        while let Some((cf, key, value)) = snapshot::read_record(&mut records)? {
            visit(cf, &key, &value)?;
            count += 1;
        }
        if count != self.header.records {
            return Err(BackupError::Malformed(
                "the number of records differs from the header's",
            ));
        }
        Ok(())
    }

    /// Reads the padding and the trailer; compares the trailer with the content unless told not
    /// to. Returns the trailer.
    pub fn finish(mut self, check: HashCheck) -> Result<[u8; HASH_BYTES]> {
        let mut padding = vec![];
        (&mut self.input)
            .take(self.header.padding_bytes())
            .read_to_end(&mut padding)?;
        if padding.iter().any(|&b| b != 0) {
            return Err(BackupError::Malformed("non-zero padding after the records"));
        }
        let Hashing { mut inner, sha } = self.input;
        let actual: [u8; HASH_BYTES] = sha.finalize().into();
        let mut trailer = [0u8; HASH_BYTES];
        inner.read_exact(&mut trailer)?;
        if check == HashCheck::Verify && trailer != actual {
            return Err(BackupError::Hash {
                expected: hex(&trailer),
                actual: hex(&actual),
            });
        }
        Ok(trailer)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `snapshot status` reports (etcdutl's columns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The first 4 bytes of the file's SHA-256 (etcd: a CRC-32C of the bbolt content).
    pub hash: u32,
    pub revision: i64,
    /// Records in the file (etcd: keys in every bucket).
    pub total_key: u64,
    /// The file's size without its hash trailer (etcd: the bbolt file's size).
    pub total_size: u64,
}

/// Reads the whole file at `path`, checking its structure and its hash, and reports on it.
pub fn status(path: &Path) -> Result<Status> {
    let mut reader = BackupReader::open(path)?;
    let header = reader.header;
    reader.for_each_record(|_, _, _| Ok(()))?;
    let sha = reader.finish(HashCheck::Verify)?;
    Ok(Status {
        hash: u32::from_be_bytes(sha[..4].try_into().expect("4 bytes")),
        revision: header.revision,
        total_key: header.records,
        total_size: header.body_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Durability;
    use cairn_proto::etcdserverpb::PutRequest;

    /// A store with a few revisions, a compaction and a member-local key; its backup's bytes.
    fn backup(dir: &Path) -> (Header, Vec<u8>) {
        let engine = Engine::open(&dir.join("db")).unwrap();
        let mut w = mvcc::Writer::open(engine.clone()).unwrap();
        for i in 0..50u64 {
            let put = PutRequest {
                key: format!("key{}", i % 7).into_bytes().into(),
                value: vec![i as u8; 1000].into(),
                ..Default::default()
            };
            w.put(&put, i + 2).unwrap();
        }
        w.compact(20, 60).unwrap();
        let mut local = engine.batch();
        local.put(Cf::Meta, b"local/member_id", b"me");
        engine.write(local, Durability::Sync).unwrap();

        let backup = Backup::take(&engine, dir.join("ckpt")).unwrap();
        (backup.header, backup.to_bytes())
    }

    fn read_all(path: &Path, check: HashCheck) -> Result<Vec<snapshot::OwnedRecord>> {
        let mut reader = BackupReader::open(path)?;
        let mut out = vec![];
        reader.for_each_record(|cf, k, v| {
            out.push((cf, k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        reader.finish(check)?;
        Ok(out)
    }

    #[test]
    fn a_backup_round_trips_with_its_header_and_etcds_framing() {
        let dir = tempfile::tempdir().unwrap();
        let (header, bytes) = backup(dir.path());
        assert_eq!(header.revision, 51);
        assert_eq!(header.compact_revision, 20);
        assert_eq!(header.applied_index, 60);
        assert_eq!(bytes.len() as u64, header.file_bytes());
        assert_eq!(bytes.len() % 512, 32, "etcdctl's hasChecksum");
        let body = &bytes[..bytes.len() - HASH_BYTES];
        assert_eq!(&bytes[body.len()..], Sha256::digest(body).as_slice());

        let path = dir.path().join("backup.db");
        std::fs::write(&path, &bytes).unwrap();
        let records = read_all(&path, HashCheck::Verify).unwrap();
        assert_eq!(records.len() as u64, header.records);
        assert!(records
            .iter()
            .any(|(cf, k, _)| *cf == Cf::KvLatest && k == b"key3"));
        assert!(
            !records.iter().any(|(_, k, _)| k.starts_with(b"local/")),
            "member-local keys stay out"
        );
        let status = status(&path).unwrap();
        assert_eq!(
            status,
            Status {
                hash: u32::from_be_bytes(bytes[body.len()..][..4].try_into().unwrap()),
                revision: 51,
                total_key: header.records,
                total_size: body.len() as u64,
            }
        );
    }

    #[test]
    fn truncated_corrupt_and_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, bytes) = backup(dir.path());
        let path = dir.path().join("bad.db");

        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let e = read_all(&path, HashCheck::Skip).unwrap_err();
        assert!(matches!(e, BackupError::Size { .. }), "{e}");
        std::fs::write(&path, &bytes[..20]).unwrap();
        let e = read_all(&path, HashCheck::Skip).unwrap_err();
        assert!(matches!(e, BackupError::Size { .. }), "{e}");

        // A flipped byte inside a value: only the hash notices.
        let mut flipped = bytes.clone();
        let value = flipped
            .windows(1000)
            .position(|w| w.iter().all(|&b| b == 49));
        flipped[value.unwrap() + 500] ^= 0x01;
        std::fs::write(&path, &flipped).unwrap();
        let e = read_all(&path, HashCheck::Verify).unwrap_err();
        assert!(matches!(e, BackupError::Hash { .. }), "{e}");
        assert!(e.to_string().contains("--skip-hash-check"), "{e}");
        assert!(matches!(status(&path), Err(BackupError::Hash { .. })));
        read_all(&path, HashCheck::Skip).unwrap();

        // A flipped bit in the trailer.
        let mut trailer = bytes.clone();
        *trailer.last_mut().unwrap() ^= 0x80;
        std::fs::write(&path, &trailer).unwrap();
        let e = read_all(&path, HashCheck::Verify).unwrap_err();
        assert!(matches!(e, BackupError::Hash { .. }), "{e}");

        // A wrong record count in the header is caught even without the hash.
        let mut count = bytes.clone();
        count[43] ^= 0x01;
        std::fs::write(&path, &count).unwrap();
        let e = read_all(&path, HashCheck::Skip).unwrap_err();
        assert!(matches!(e, BackupError::Malformed(_)), "{e}");

        // An etcd (bbolt) file, or anything else.
        std::fs::write(&path, vec![0u8; 20512]).unwrap();
        let e = read_all(&path, HashCheck::Skip).unwrap_err();
        assert!(matches!(e, BackupError::NotCairn), "{e}");
        let mut version = bytes.clone();
        version[11] = 9;
        std::fs::write(&path, &version).unwrap();
        let e = read_all(&path, HashCheck::Skip).unwrap_err();
        assert!(matches!(e, BackupError::Version(9)), "{e}");
    }
}
