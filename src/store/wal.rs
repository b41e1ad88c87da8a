//! The embedded store's write-ahead log: how a group of writes becomes durable with one
//! sequential write and one `fdatasync`, instead of a redb commit (a dozen page writes and a
//! sync) per group.
//!
//! The file, `chordctl.wal` beside the database, grows to at most [`WAL_SIZE`]; after each
//! checkpoint the log starts over at offset 0, so that from then on appending is overwriting
//! blocks the file system already holds: the sync flushes data only, with no journal commit
//! for a growing file. (It is not filled up front: an agent on a nearly full disk still starts,
//! and a write that finds no room is refused like any other.) Each group of writes is one
//! record:
//!
//! ```text
//! u32 length of the payload | u32 CRC-32 of (seq, payload) | u64 seq | payload
//! payload: per op, u8 tag (0 put, 1 delete) | u32 key length | key | [u32 value length | value]
//! ```
//!
//! The log always starts at offset 0 with the record after the last checkpoint, whose sequence
//! number redb holds (`meta/wal_seq`, written in the checkpoint's own transaction), and every
//! record's number is its predecessor's plus one. Recovery reads records from offset 0 while
//! they check out — right length, right CRC, the next number — keeps those after `wal_seq`,
//! and stops at the first that does not: the end of the file, a write torn by a crash (never
//! acknowledged: a group is acknowledged only after its sync), or older records left behind a
//! reset. So a checkpoint
//! needs no write to the log at all: once redb has committed it durably, the log starts over
//! at offset 0 and whatever lies beyond is ignored.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::Op;

/// The log file's name inside the data directory.
pub const WAL_FILE: &str = "chordctl.wal";

/// The most the log file grows to; a group that does not fit where the log stands is
/// committed straight to redb instead (with everything logged before it).
pub const WAL_SIZE: u64 = 8 << 20;

/// length, CRC, sequence number.
const HEADER: usize = 4 + 4 + 8;

const PUT: u8 = 0;
const DELETE: u8 = 1;

/// The log, positioned where the next record goes.
#[derive(Debug)]
pub struct Wal {
    file: File,
    path: PathBuf,
    offset: u64,
    next_seq: u64,
    buf: Vec<u8>,
}

/// The records found at open that redb does not hold yet, in order, and the last one's number.
#[derive(Debug, Default, PartialEq)]
pub struct Recovered {
    /// Every op of every record after `applied`, in log order.
    pub ops: Vec<Op>,
    /// The number of the last record recovered (`applied` when there was none).
    pub last_seq: u64,
}

impl Wal {
    /// Open the log at `path` (creating it if missing) and read the records after `applied`, the number of the last record redb holds. The
    /// log is positioned at offset 0: the caller commits what was recovered to redb (as
    /// `applied = last_seq`) before appending anything.
    pub fn open(path: &Path, applied: u64) -> io::Result<(Wal, Recovered)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        if len == 0 {
            if let Some(dir) = path.parent() {
                // A new file's directory entry must survive a crash too.
                File::open(dir)?.sync_all()?;
            }
        }
        let mut content = vec![0u8; len.min(WAL_SIZE) as usize];
        file.read_exact_at(&mut content, 0)?;
        let recovered = recover(&content, applied);
        let wal = Wal {
            file,
            path: path.to_path_buf(),
            offset: 0,
            next_seq: recovered.last_seq + 1,
            buf: Vec::new(),
        };
        Ok((wal, recovered))
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of the last record appended (or recovered, or checkpointed).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// How far the log is filled, in bytes.
    pub fn used(&self) -> u64 {
        self.offset
    }

    /// Whether a record of `ops` fits in what is left of the file.
    pub fn fits<'a>(&self, ops: impl Iterator<Item = &'a Op>) -> bool {
        let size: u64 = ops.map(|op| encoded_len(op) as u64).sum::<u64>() + HEADER as u64;
        size <= WAL_SIZE - self.offset
    }

    /// Append `ops` as one record and sync it to disk; returns the record's number. On an
    /// error the log must not be used again (what reached the disk is unknown).
    pub fn append<'a>(&mut self, ops: impl Iterator<Item = &'a Op>) -> io::Result<u64> {
        let seq = self.next_seq;
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; HEADER]);
        for op in ops {
            encode_op(&mut self.buf, op);
        }
        let payload = (self.buf.len() - HEADER) as u32;
        self.buf[0..4].copy_from_slice(&payload.to_le_bytes());
        self.buf[8..16].copy_from_slice(&seq.to_le_bytes());
        let crc = crc32fast::hash(&self.buf[8..]);
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        if self.buf.len() as u64 > WAL_SIZE - self.offset {
            return Err(io::Error::other("write-ahead log record does not fit"));
        }
        self.file.write_all_at(&self.buf, self.offset)?;
        self.file.sync_data()?;
        self.offset += self.buf.len() as u64;
        self.next_seq += 1;
        // A burst of large groups must not keep its buffer for good.
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
        Ok(seq)
    }

    /// Everything up to [`Wal::last_seq`] is in redb, durably: start over at offset 0.
    pub fn reset(&mut self) {
        self.offset = 0;
    }
}

fn encoded_len(op: &Op) -> usize {
    match op {
        Op::Put(k, v) => 1 + 4 + k.len() + 4 + v.len(),
        Op::Delete(k) => 1 + 4 + k.len(),
    }
}

fn encode_op(buf: &mut Vec<u8>, op: &Op) {
    let (tag, key, value) = match op {
        Op::Put(k, v) => (PUT, k, Some(v)),
        Op::Delete(k) => (DELETE, k, None),
    };
    buf.push(tag);
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(key.as_bytes());
    if let Some(v) = value {
        buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
        buf.extend_from_slice(v);
    }
}

/// The records from offset 0 while each checks out and follows the one before; those up to
/// `applied` (redb has them) are skipped, and the first one kept must be `applied + 1`.
fn recover(content: &[u8], applied: u64) -> Recovered {
    let mut out = Recovered {
        ops: Vec::new(),
        last_seq: applied,
    };
    let mut previous: Option<u64> = None;
    let mut at = 0usize;
    while let Some(header) = content.get(at..at + HEADER) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(&header[8..16]);
        let seq = u64::from_le_bytes(seq_bytes);
        let follows = match previous {
            None => seq <= applied + 1,
            Some(p) => seq == p + 1,
        };
        if len == 0 || !follows {
            break;
        }
        let Some(record) = content.get(at + 8..at + HEADER + len) else {
            break;
        };
        if crc32fast::hash(record) != crc {
            break;
        }
        let Some(ops) = decode_ops(&record[8..]) else {
            break;
        };
        if seq > applied {
            out.ops.extend(ops);
            out.last_seq = seq;
        }
        previous = Some(seq);
        at += HEADER + len;
    }
    out
}

fn decode_ops(mut payload: &[u8]) -> Option<Vec<Op>> {
    fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (buf.get(..n)?, buf.get(n..)?);
        *buf = tail;
        Some(head)
    }
    fn take_len(buf: &mut &[u8]) -> Option<usize> {
        let b = take(buf, 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    let mut ops = Vec::new();
    while !payload.is_empty() {
        let tag = take(&mut payload, 1)?[0];
        let n = take_len(&mut payload)?;
        let key = String::from_utf8(take(&mut payload, n)?.to_vec()).ok()?;
        match tag {
            PUT => {
                let n = take_len(&mut payload)?;
                ops.push(Op::Put(key, take(&mut payload, n)?.to_vec()));
            }
            DELETE => ops.push(Op::Delete(key)),
            _ => return None,
        }
    }
    Some(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Op {
        Op::Put(k.to_string(), v.as_bytes().to_vec())
    }

    fn open(dir: &Path, applied: u64) -> (Wal, Recovered) {
        Wal::open(&dir.join(WAL_FILE), applied).expect("open the log")
    }

    #[test]
    fn a_new_log_is_empty_and_grows_no_further_than_its_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, rec) = open(dir.path(), 0);
        assert_eq!(rec, Recovered::default());
        assert_eq!(wal.last_seq(), 0);
        let op = [Op::Put("k".into(), vec![1u8; 1 << 20])];
        while wal.fits(op.iter()) {
            wal.append(op.iter()).expect("append");
        }
        let len = std::fs::metadata(wal.path()).expect("metadata").len();
        assert!(len <= WAL_SIZE, "{len} bytes");
        wal.reset();
        wal.append(op.iter()).expect("append after a reset");
        let again = std::fs::metadata(wal.path()).expect("metadata").len();
        assert_eq!(again, len, "after a reset the log overwrites what it has");
    }

    #[test]
    fn appended_records_come_back_in_order_after_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = open(dir.path(), 0);
        let first = [put("a", "1"), Op::Delete("b".into())];
        let second = [put("a", "2"), put("c", "")];
        assert_eq!(wal.append(first.iter()).expect("append"), 1);
        assert_eq!(wal.append(second.iter()).expect("append"), 2);
        drop(wal);
        let (wal, rec) = open(dir.path(), 0);
        assert_eq!(rec.last_seq, 2);
        let all: Vec<Op> = first.iter().chain(second.iter()).cloned().collect();
        assert_eq!(rec.ops, all);
        assert_eq!(
            wal.last_seq(),
            2,
            "numbering goes on after the recovered records"
        );
        // What redb already holds (applied = 1) is not handed back again.
        let (_, rec) = open(dir.path(), 1);
        assert_eq!(rec.ops, second.to_vec());
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_the_ones_before_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = open(dir.path(), 0);
        wal.append([put("a", "1")].iter()).expect("append");
        let end = wal.used();
        wal.append([put("b", "22222222")].iter()).expect("append");
        drop(wal);
        // A crash in the middle of the second write: its last bytes never reached the disk.
        let file = OpenOptions::new()
            .write(true)
            .open(dir.path().join(WAL_FILE))
            .expect("open");
        let torn_from = end + HEADER as u64 + 3;
        file.write_all_at(&[0u8; 16], torn_from).expect("tear");
        let (_, rec) = open(dir.path(), 0);
        assert_eq!(rec.ops, vec![put("a", "1")]);
        assert_eq!(rec.last_seq, 1);
    }

    #[test]
    fn after_a_reset_older_records_beyond_the_new_ones_are_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = open(dir.path(), 0);
        for i in 0..5 {
            wal.append([put("old", &"x".repeat(100 + i))].iter())
                .expect("append");
        }
        // A checkpoint put records 1..=5 into redb; the log starts over.
        wal.reset();
        wal.append([put("new", "1")].iter()).expect("append");
        drop(wal);
        let (_, rec) = open(dir.path(), 5);
        assert_eq!(rec.ops, vec![put("new", "1")]);
        assert_eq!(rec.last_seq, 6);
        // Had the checkpoint not committed (redb still at 0), record 1 is no longer there:
        // nothing is replayed rather than a mix (the checkpoint is durable before a reset).
        let (_, rec) = open(dir.path(), 0);
        assert_eq!(rec.last_seq, 0);
    }

    #[test]
    fn what_does_not_fit_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = open(dir.path(), 0);
        let big = [Op::Put("k".into(), vec![7u8; WAL_SIZE as usize])];
        assert!(!wal.fits(big.iter()));
        assert!(wal.append(big.iter()).is_err());
        assert_eq!(wal.used(), 0);
        assert!(wal.fits([put("a", "1")].iter()));
    }

    #[test]
    fn garbage_in_the_log_recovers_nothing_and_does_not_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(WAL_FILE), vec![0xffu8; 4096]).expect("write");
        let (_, rec) = open(dir.path(), 0);
        assert_eq!(rec, Recovered::default());
    }
}
