//! The embedded store's write-ahead log: how a group of writes becomes durable with one
//! sequential write and one `fdatasync`, instead of a redb commit (a dozen page writes and a
//! sync) per group.
//!
//! There are two log files beside the database, `chordctl.wal` and `chordctl.wal.2`; one is
//! written at a time, and each grows to at most [`WAL_SIZE`]. Appending always goes on in the
//! active file. When the store checkpoints in the background, it freezes what the active file
//! holds and the log [rotates](Wal::rotate) to the other file, from offset 0, while redb takes
//! the frozen part; a file is written again only once everything in it is durably in redb. So
//! from the second round on, appending is overwriting blocks the file system already holds: the
//! sync flushes data only, with no journal commit for a growing file. (The files are not filled
//! up front: an agent on a nearly full disk still starts, and a write that finds no room is
//! refused like any other.) Each group of writes is one record:
//!
//! ```text
//! u32 length of the payload | u32 CRC-32 of (seq, payload) | u64 seq | payload
//! payload: per op, u8 tag (0 put, 1 delete) | u32 key length | key | [u32 value length | value]
//! ```
//!
//! Every record's number is its predecessor's plus one, across both files. Recovery reads each
//! file from offset 0 while its records check out — right length, right CRC, the next number —
//! and stops at the first that does not: the end of the file, a write torn by a crash (never
//! acknowledged: a group is acknowledged only after its sync), or older records left behind
//! when the file was started over. Then it follows the numbers from the one after the last
//! record redb holds (`meta/wal_seq`, written in each checkpoint's own transaction): the run
//! that holds that number, then the run that starts right after it ends. What a file held
//! before it was started over was in redb already, so its numbers are never the ones wanted. So
//! a checkpoint needs no write to the log at all: once redb has committed it durably, the file
//! it came from may start over and whatever lies beyond is ignored.
//!
//! A data directory of 0.1 has only `chordctl.wal`; it is read the same way.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::Op;

/// The log files' names inside the data directory.
pub const WAL_FILES: [&str; 2] = ["chordctl.wal", "chordctl.wal.2"];

/// The most a log file grows to; a group that does not fit in an empty file is committed
/// straight to redb instead (with everything logged before it).
pub const WAL_SIZE: u64 = 8 << 20;

/// length, CRC, sequence number.
const HEADER: usize = 4 + 4 + 8;

const PUT: u8 = 0;
const DELETE: u8 = 1;

/// The log, positioned where the next record goes: in the active file, at `offset`.
#[derive(Debug)]
pub struct Wal {
    files: [File; 2],
    paths: [PathBuf; 2],
    active: usize,
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
    /// Open the log in `dir` (creating its files if missing) and read the records after
    /// `applied`, the number of the last record redb holds. The log is positioned at offset 0
    /// of its first file: the caller commits what was recovered to redb (as
    /// `applied = last_seq`) before appending anything.
    pub fn open(dir: &Path, applied: u64) -> io::Result<(Wal, Recovered)> {
        let paths = WAL_FILES.map(|name| dir.join(name));
        let mut created = false;
        let mut runs = Vec::with_capacity(2);
        let mut files = Vec::with_capacity(2);
        for path in &paths {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?;
            let len = file.metadata()?.len();
            created |= len == 0;
            let mut content = vec![0u8; len.min(WAL_SIZE) as usize];
            file.read_exact_at(&mut content, 0)?;
            runs.push(read_run(&content));
            files.push(file);
        }
        if created {
            // A new file's directory entry must survive a crash too.
            File::open(dir)?.sync_all()?;
        }
        let recovered = follow(runs, applied);
        let [first, second] = <[File; 2]>::try_from(files)
            .map_err(|_| io::Error::other("write-ahead log: two files expected"))?;
        let wal = Wal {
            files: [first, second],
            paths,
            active: 0,
            offset: 0,
            next_seq: recovered.last_seq + 1,
            buf: Vec::new(),
        };
        Ok((wal, recovered))
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.paths[self.active]
    }

    /// The number of the last record appended (or recovered, or checkpointed).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// How far the active file is filled, in bytes.
    pub fn used(&self) -> u64 {
        self.offset
    }

    /// Whether a record of `ops` fits in what is left of the active file.
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
        let file = &self.files[self.active];
        file.write_all_at(&self.buf, self.offset)?;
        file.sync_data()?;
        self.offset += self.buf.len() as u64;
        self.next_seq += 1;
        // A burst of large groups must not keep its buffer for good.
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
        Ok(seq)
    }

    /// Everything up to [`Wal::last_seq`] is in redb, durably: start over at offset 0 of the
    /// active file.
    pub fn reset(&mut self) {
        self.offset = 0;
    }

    /// Go on in the other file, from offset 0. Everything that file holds must be in redb,
    /// durably (a checkpoint of it has committed); what the active file holds need not be yet.
    pub fn rotate(&mut self) {
        self.active = 1 - self.active;
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

/// A file's records from offset 0 while each checks out and follows the one before: the
/// numbers and ops of one unbroken run.
fn read_run(content: &[u8]) -> Vec<(u64, Vec<Op>)> {
    let mut run: Vec<(u64, Vec<Op>)> = Vec::new();
    let mut at = 0usize;
    while let Some(header) = content.get(at..at + HEADER) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(&header[8..16]);
        let seq = u64::from_le_bytes(seq_bytes);
        let follows = run.last().is_none_or(|(p, _)| seq == p + 1);
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
        run.push((seq, ops));
        at += HEADER + len;
    }
    run
}

/// The records after `applied`, in order, from the files' runs: the run that holds the next
/// number wanted, then the one that goes on from its end. A run left from before its file
/// started over holds only numbers redb has, and is never reached.
fn follow(mut runs: Vec<Vec<(u64, Vec<Op>)>>, applied: u64) -> Recovered {
    let mut out = Recovered {
        ops: Vec::new(),
        last_seq: applied,
    };
    loop {
        let next = out.last_seq + 1;
        let holds = |run: &Vec<(u64, Vec<Op>)>| matches!((run.first(), run.last()), (Some((a, _)), Some((b, _))) if *a <= next && next <= *b);
        let Some(i) = runs.iter().position(holds) else {
            return out;
        };
        for (seq, ops) in runs.swap_remove(i) {
            if seq >= next {
                out.ops.extend(ops);
                out.last_seq = seq;
            }
        }
    }
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
        Wal::open(dir, applied).expect("open the log")
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
            .open(dir.path().join(WAL_FILES[0]))
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
        std::fs::write(dir.path().join(WAL_FILES[0]), vec![0xffu8; 4096]).expect("write");
        let (_, rec) = open(dir.path(), 0);
        assert_eq!(rec, Recovered::default());
    }

    /// Records written in one file, then (after a rotation) in the other, come back in order;
    /// once redb holds the first file's, only the second's.
    #[test]
    fn records_go_on_in_the_other_file_after_a_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = open(dir.path(), 0);
        wal.append([put("a", "1")].iter()).expect("append");
        wal.append([put("b", "2")].iter()).expect("append");
        wal.rotate();
        assert_eq!(wal.used(), 0);
        assert_eq!(wal.path(), dir.path().join(WAL_FILES[1]));
        assert_eq!(wal.append([put("a", "3")].iter()).expect("append"), 3);
        drop(wal);
        // The checkpoint of the first file had not committed: all three records.
        let (_, rec) = open(dir.path(), 0);
        assert_eq!(rec.ops, vec![put("a", "1"), put("b", "2"), put("a", "3")]);
        assert_eq!(rec.last_seq, 3);
        // It had: the second file's only.
        let (_, rec) = open(dir.path(), 2);
        assert_eq!(rec.ops, vec![put("a", "3")]);
        assert_eq!(rec.last_seq, 3);
    }

    /// A file started over a second time holds new records at its start and older ones
    /// (which redb has) beyond them; recovery follows the numbers through both files and never
    /// takes the old ones.
    #[test]
    fn a_file_written_again_hands_back_only_its_new_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = open(dir.path(), 0);
        for i in 0..4 {
            wal.append([put("old", &"x".repeat(200 + i))].iter())
                .expect("append");
        }
        wal.rotate();
        wal.append([put("b", "5")].iter()).expect("append");
        wal.append([put("b", "6")].iter()).expect("append");
        // redb took records 1..=4: the first file is written again, from its start.
        wal.rotate();
        wal.append([put("c", "7")].iter()).expect("append");
        drop(wal);
        let (_, rec) = open(dir.path(), 4);
        assert_eq!(rec.ops, vec![put("b", "5"), put("b", "6"), put("c", "7")]);
        assert_eq!(rec.last_seq, 7);
        let (_, rec) = open(dir.path(), 6);
        assert_eq!(rec.ops, vec![put("c", "7")]);
        // Everything in redb: nothing to replay, and numbering goes on from there.
        let (wal, rec) = open(dir.path(), 7);
        assert_eq!(rec.ops, Vec::<Op>::new());
        assert_eq!(wal.last_seq(), 7);
    }

    /// The second file, torn in its first record by a crash, recovers the first file's
    /// records and nothing of the torn one.
    #[test]
    fn a_torn_first_record_in_the_second_file_loses_only_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = open(dir.path(), 0);
        wal.append([put("a", "1")].iter()).expect("append");
        wal.rotate();
        wal.append([put("b", "22222222")].iter()).expect("append");
        drop(wal);
        let file = OpenOptions::new()
            .write(true)
            .open(dir.path().join(WAL_FILES[1]))
            .expect("open");
        file.write_all_at(&[0u8; 8], HEADER as u64 + 2)
            .expect("tear");
        let (_, rec) = open(dir.path(), 0);
        assert_eq!(rec.ops, vec![put("a", "1")]);
        assert_eq!(rec.last_seq, 1);
    }
}
