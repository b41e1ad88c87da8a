//! The embedded backend: a redb database file in the agent's data directory, with a
//! write-ahead log in front of it.
//!
//! Writes go through one writer thread that owns the write path: every `apply` sends its
//! batch and a reply channel, and the writer takes everything queued at that moment ("group
//! commit") and makes it durable as one record of the write-ahead log ([`super::wal`]): one
//! sequential write and one `fdatasync`, then every caller of the group is answered. The
//! group also goes into an in-memory table of what the log holds and redb does not yet (the
//! memtable: key → latest value, or deleted).
//!
//! A checkpoint moves the memtable into redb in one durable transaction, in the background: the
//! writer freezes the memtable, the log goes on in its other file, and a second thread (the
//! checkpointer) commits the frozen table while the writer goes on logging new groups into a
//! fresh one. So a write never waits for a checkpoint (a 4 MiB table takes redb tens of
//! milliseconds), unless the log's file fills up before the previous checkpoint has finished.
//! The writer starts a checkpoint when the memtable passes [`MEMTABLE_LIMIT`], when the log's
//! file is three quarters full, and at most [`CHECKPOINT_EVERY`] after the last one when the
//! queue is idle, each time only if none is under way. A key written many times between
//! checkpoints (a service's record, rewritten at every registration) reaches redb once. A
//! group too large for the log is committed straight to redb, memtable included.
//!
//! Reads look at the memtable, then the frozen one while its checkpoint runs, then redb (a read
//! transaction on tokio's blocking pool; redb lets reads run alongside a write). A frozen table
//! is dropped from reads only after its checkpoint has committed. A scan takes its memtable
//! snapshot and opens its read transaction under the same lock, so a checkpoint's end cannot
//! fall between the two.
//!
//! At open, the log's records after the last checkpoint (redb keeps the number of the last
//! record it holds in the checkpoint's own transaction) are committed to redb before anything
//! else: an acknowledged write survives a crash at any point.
//!
//! The writer and the checkpointer are dedicated threads rather than tasks looping over
//! `spawn_blocking` so that dropping the store can join them: when `drop` returns (and no
//! cancelled read is still running), the memtable is checkpointed, the database file closed and
//! its lock released, and the same directory can be reopened at once, e.g. by an agent
//! restarted in the same process.
//!
//! Failures (disk full, I/O errors) come back as `Error::Unavailable` naming the file. After an
//! I/O error on the log or during a checkpoint the writer refuses further writes (what reached
//! the disk is unknown; redb itself answers `PreviousIo` after a failed commit) until the
//! database is reopened, i.e. until the agent restarts, which recovers from the log.

// The blocking closures below return redb's own error (160 bytes) so they can use `?` on every
// redb call; it is mapped to our Error right after. Boxing it would buy nothing on these paths.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self as std_mpsc, TryRecvError};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, DatabaseError, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::wal::{Wal, WAL_SIZE};
use super::{KeyFilter, Op, Store, Summarize, Summary};
use crate::{Error, Result};

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "chordctl.redb";

/// The data: key → value.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

/// Bookkeeping: `wal_seq`, the number of the last write-ahead log record redb holds.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const WAL_SEQ: &str = "wal_seq";

/// The memtable is checkpointed into redb once its keys and values pass this many bytes.
pub const MEMTABLE_LIMIT: usize = 4 << 20;

/// An idle writer starts a checkpoint at most this long after the last one started.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// How many batches may wait for the writer before `apply` callers wait for room (backpressure).
const QUEUE_DEPTH: usize = 4096;

/// The writer stops adding batches to a group once it holds this many ops, which bounds the size
/// (and the latency) of one write transaction.
const MAX_GROUP_OPS: usize = 16 * 1024;

/// One caller's batch waiting for the writer, with the channel its result goes back on.
struct Batch {
    ops: Vec<Op>,
    done: oneshot::Sender<Done>,
}

/// The writer's answer to a batch: the commit's result, and the batch's ops handed back so
/// that the caller frees them, off the writer thread (which does not spend its time freeing
/// the runtime's memory).
struct Done {
    result: Result<()>,
    _ops: Vec<Op>,
}

/// Key → latest value (`None`: deleted) of every write since the last checkpoint.
#[derive(Debug, Default)]
struct Memtable {
    map: BTreeMap<String, Option<Vec<u8>>>,
    bytes: usize,
}

impl Memtable {
    fn apply(&mut self, op: &Op) {
        let (key, value) = op_write(op);
        let added = key.len() + value.map_or(0, <[u8]>::len);
        if let Some(old) = self.map.insert(key.to_string(), value.map(<[u8]>::to_vec)) {
            self.bytes -= key.len() + old.map_or(0, |v| v.len());
        }
        self.bytes += added;
    }
}

/// One write as a checkpoint applies it: the key and its new value (`None`: delete).
type KvWrite<'a> = (&'a str, Option<&'a [u8]>);

fn op_write(op: &Op) -> KvWrite<'_> {
    match op {
        Op::Put(k, v) => (k, Some(v)),
        Op::Delete(k) => (k, None),
    }
}

impl Memtable {
    fn writes(&self) -> impl Iterator<Item = KvWrite<'_>> {
        self.map.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
    }
}

/// What the log holds and redb does not yet: the memtable the writer fills, and the one a
/// checkpoint is moving into redb (read until that checkpoint has committed).
#[derive(Debug, Default)]
struct Mem {
    active: Memtable,
    frozen: Option<Arc<Memtable>>,
}

impl Mem {
    /// The latest write of `key` that redb may not hold yet: `Some(None)` is a delete.
    fn get(&self, key: &str) -> Option<&Option<Vec<u8>>> {
        self.active
            .map
            .get(key)
            .or_else(|| self.frozen.as_ref()?.map.get(key))
    }

    /// The writes under `prefix` whose keys `keep` accepts (only those are copied), by key:
    /// the active table's write of a key wins over the frozen table's.
    fn overlay<T>(
        &self,
        prefix: &str,
        keep: &mut KeyFilter,
        map: &mut impl FnMut(&str, &[u8]) -> T,
    ) -> BTreeMap<String, Option<T>> {
        let mut out = BTreeMap::new();
        for table in self.frozen.as_deref().into_iter().chain([&self.active]) {
            let under = table.map.range(prefix.to_string()..);
            for (k, v) in under.take_while(|(k, _)| k.starts_with(prefix)) {
                if keep(k) {
                    out.insert(k.clone(), v.as_deref().map(|v| map(k, v)));
                }
            }
        }
        out
    }
}

/// `base` (sorted by key, each key once) with `overlay` applied in one merge: a value
/// replaces or adds its key, `None` removes it. The result is sorted too.
fn apply_overlay<T>(
    base: Vec<(String, T)>,
    overlay: BTreeMap<String, Option<T>>,
) -> Vec<(String, T)> {
    if overlay.is_empty() {
        return base;
    }
    let mut out = Vec::with_capacity(base.len() + overlay.len());
    let mut over = overlay.into_iter().peekable();
    for (k, v) in base {
        while let Some((ok, ov)) = over.next_if(|(ok, _)| ok.as_str() < k.as_str()) {
            out.extend(ov.map(|ov| (ok, ov)));
        }
        match over.next_if(|(ok, _)| *ok == k) {
            Some((ok, ov)) => out.extend(ov.map(|ov| (ok, ov))),
            None => out.push((k, v)),
        }
    }
    out.extend(over.filter_map(|(k, v)| Some((k, v?))));
    out
}

fn read_mem(mem: &RwLock<Mem>) -> RwLockReadGuard<'_, Mem> {
    mem.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write_mem(mem: &RwLock<Mem>) -> RwLockWriteGuard<'_, Mem> {
    mem.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The embedded store: a redb database at `DIR/chordctl.redb` with group-committed writes.
///
/// Only one store (in this or any other process) can have a directory open at a time; a second
/// [`EmbeddedStore::open`] fails with a clear `Error::Unavailable` instead of corrupting it.
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
    /// What the log holds and redb does not yet; written by the writer and the checkpointer.
    mem: Arc<RwLock<Mem>>,
    /// Why the writer refuses writes, once it does.
    failed: Arc<OnceLock<String>>,
    /// Batches for the writer thread; `None` only while dropping.
    queue: Option<mpsc::Sender<Batch>>,
    /// The writer thread, joined on drop.
    writer: Option<JoinHandle<u64>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish()
    }
}

impl EmbeddedStore {
    /// Open (or create) the store in `dir`, creating the directory if it is missing.
    ///
    /// Blocking: it opens the file, may repair it after a crash, and starts the writer thread;
    /// call it from `spawn_blocking` (as [`super::open`] does) when on a runtime.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::unavailable(format!(
                "store unavailable: cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(DB_FILE);
        let db = Database::create(&path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => Error::unavailable(format!(
                "data directory {} is in use by another agent",
                dir.display()
            )),
            e => unavailable(&path, e),
        })?;
        let applied = prepare(&db).map_err(|e| unavailable(&path, e))?;
        let (wal, recovered) = Wal::open(dir, applied).map_err(|e| {
            unavailable(&path, format!("write-ahead log in {}: {e}", dir.display()))
        })?;
        if recovered.last_seq > applied {
            tracing::info!(
                writes = recovered.ops.len(),
                "embedded store: recovered writes from the write-ahead log"
            );
            let writes = recovered.ops.iter().map(op_write);
            checkpoint(&db, writes, recovered.last_seq).map_err(|e| unavailable(&path, e))?;
        }

        let db = Arc::new(db);
        let mem = Arc::new(RwLock::new(Mem::default()));
        let failed = Arc::new(OnceLock::new());
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = {
            let writer = Writer::new(db.clone(), path.clone(), wal, mem.clone(), failed.clone())?;
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || writer.run(rx))
                .map_err(|e| unavailable(&path, format!("cannot start the writer thread: {e}")))?
        };
        Ok(EmbeddedStore {
            db,
            path,
            mem,
            failed,
            queue: Some(queue),
            writer: Some(writer),
        })
    }

    /// The database file this store uses.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run a read transaction on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadOnlyTable<&'static str, &'static [u8]>) -> Result<T, redb::Error>
            + Send
            + 'static,
    {
        let db = self.db.clone();
        self.blocking(move || f(&db.begin_read()?.open_table(KV)?))
            .await
    }

    /// Every key under `prefix` that `keep` keeps, with what `map` makes of its value, sorted
    /// by key: the value is read in place (in redb's page, or the memtable), never copied
    /// unless `map` copies it.
    async fn scan_mapped<T: Send + 'static>(
        &self,
        prefix: &str,
        mut keep: KeyFilter,
        mut map: impl FnMut(&str, &[u8]) -> T + Send + 'static,
    ) -> Result<Vec<(String, T)>> {
        let prefix = prefix.to_string();
        let (db, mem) = (self.db.clone(), self.mem.clone());
        let scan = move || -> std::result::Result<Vec<(String, T)>, redb::Error> {
            // The memtables' part and the read transaction under one lock: a checkpoint drops
            // its frozen table, after committing it, only under the write lock.
            let (overlay, txn) = {
                let mem = read_mem(&mem);
                (mem.overlay(&prefix, &mut keep, &mut map), db.begin_read()?)
            };
            let table = txn.open_table(KV)?;
            let mut out = Vec::new();
            // Keys are ordered bytewise, so the matches are one contiguous run from `prefix`,
            // in order: no map is needed to sort them. A value is read only for a key kept.
            for entry in table.range(prefix.as_str()..)? {
                let (k, v) = entry?;
                let k = k.value();
                if !k.starts_with(prefix.as_str()) {
                    break;
                }
                if keep(k) {
                    out.push((k.to_string(), map(k, v.value())));
                }
            }
            // A key `keep` refuses is left out of both sides alike.
            Ok(apply_overlay(out, overlay))
        };
        self.blocking(scan).await
    }

    /// Run `f` on the blocking pool; its redb error becomes `Unavailable` naming the file.
    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, redb::Error> + Send + 'static,
    {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || f().map_err(|e| unavailable(&path, e)))
            .await
            .map_err(|e| {
                Error::internal(format!(
                    "embedded store {}: read task failed: {e}",
                    self.path.display()
                ))
            })?
    }

    fn writer_gone(&self) -> Error {
        Error::unavailable(format!(
            "store unavailable: embedded {}: the writer thread has stopped",
            self.path.display()
        ))
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        if let Some(value) = read_mem(&self.mem).get(key) {
            return Ok(value.clone());
        }
        let key = key.to_string();
        self.read(move |table| Ok(table.get(key.as_str())?.map(|v| v.value().to_vec())))
            .await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        // What the memtable holds needs no read transaction; the rest share one, on one
        // blocking task (not one task, and one transaction, per key).
        let mut out = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        {
            let mem = read_mem(&self.mem);
            for (i, key) in keys.iter().enumerate() {
                match mem.get(key) {
                    Some(value) => out.push(value.clone()),
                    None => {
                        out.push(None);
                        missing.push((i, key.clone()));
                    }
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let found = self
            .read(move |table| {
                let mut found = Vec::with_capacity(missing.len());
                for (i, key) in missing {
                    found.push((i, table.get(key.as_str())?.map(|v| v.value().to_vec())));
                }
                Ok(found)
            })
            .await?;
        for (i, value) in found {
            out[i] = value;
        }
        Ok(out)
    }

    async fn apply(&self, ops: Vec<Op>) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let queue = self.queue.as_ref().ok_or_else(|| self.writer_gone())?;
        let (done, result) = oneshot::channel();
        queue
            .send(Batch { ops, done })
            .await
            .map_err(|_| self.writer_gone())?;
        result.await.map_err(|_| self.writer_gone())?.result
    }

    async fn scan_prefix_where(
        &self,
        prefix: &str,
        keep: KeyFilter,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        self.scan_mapped(prefix, keep, |_, v| v.to_vec()).await
    }

    async fn scan_prefix_summaries(
        &self,
        prefix: &str,
        keep: KeyFilter,
        summarize: Summarize,
    ) -> Result<Vec<(String, Summary)>> {
        self.scan_mapped(prefix, keep, summarize).await
    }

    async fn check(&self) -> Result<()> {
        if let Some(why) = self.failed.get() {
            return Err(unavailable(&self.path, why));
        }
        if self.queue.as_ref().is_none_or(|q| q.is_closed()) {
            return Err(self.writer_gone());
        }
        self.read(|_| Ok(())).await
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer commit what is still queued and exit; joining it
        // (it joins the checkpointer) releases their handles on the database, so the file is
        // closed when `db` drops next. This blocks for at most one checkpoint and one commit.
        self.queue.take();
        join(self.writer.take(), &self.path, "writer");
    }
}

/// Wait for one of the store's threads, if it runs; a panic in it is logged.
fn join<T>(thread: Option<JoinHandle<T>>, path: &Path, which: &str) {
    if thread.is_some_and(|t| t.join().is_err()) {
        tracing::error!(path = %path.display(), "embedded store {which} panicked");
    }
}

/// The writer thread's state: the log, the memtable it fills, and the checkpointer that moves
/// frozen memtables into redb.
struct Writer {
    db: Arc<Database>,
    path: PathBuf,
    wal: Wal,
    mem: Arc<RwLock<Mem>>,
    failed: Arc<OnceLock<String>>,
    last_checkpoint: Instant,
    /// Frozen memtables for the checkpointer; `None` once closing.
    jobs: Option<std_mpsc::Sender<Flush>>,
    /// One `()` per checkpoint the checkpointer has finished (committed, or failed and said so
    /// in `failed`).
    flushed: std_mpsc::Receiver<()>,
    /// A checkpoint is under way: the log's other file is not free yet.
    flushing: bool,
    checkpointer: Option<JoinHandle<()>>,
}

/// A frozen memtable for the checkpointer, and the number of the last log record it holds.
struct Flush {
    table: Arc<Memtable>,
    applied: u64,
}

impl Writer {
    /// The writer's state, with its checkpointer thread started.
    fn new(
        db: Arc<Database>,
        path: PathBuf,
        wal: Wal,
        mem: Arc<RwLock<Mem>>,
        failed: Arc<OnceLock<String>>,
    ) -> Result<Writer> {
        let (jobs, queued) = std_mpsc::channel();
        let (done, flushed) = std_mpsc::channel();
        let checkpointer = {
            let (db, file, mem, failed) = (db.clone(), path.clone(), mem.clone(), failed.clone());
            std::thread::Builder::new()
                .name("store-checkpoint".into())
                .spawn(move || checkpointer(&db, &file, &mem, &failed, queued, done))
                .map_err(|e| {
                    unavailable(&path, format!("cannot start the checkpoint thread: {e}"))
                })?
        };
        Ok(Writer {
            db,
            path,
            wal,
            mem,
            failed,
            last_checkpoint: Instant::now(),
            jobs: Some(jobs),
            flushed,
            flushing: false,
            checkpointer: Some(checkpointer),
        })
    }

    /// Take every batch queued, make them durable together, answer all; start a checkpoint
    /// when due. Returns the number of groups written or attempted (for tests).
    fn run(mut self, mut queue: mpsc::Receiver<Batch>) -> u64 {
        let mut groups = 0;
        while let Some(first) = queue.blocking_recv() {
            let mut ops = first.ops.len();
            let mut group = vec![first];
            while ops < MAX_GROUP_OPS {
                match queue.try_recv() {
                    Ok(batch) => {
                        ops += batch.ops.len();
                        group.push(batch);
                    }
                    Err(_) => break,
                }
            }
            let result = self.write(&group);
            groups += 1;
            for batch in group {
                // A caller that gave up waiting is no error: its batch is written all the same.
                let _ = batch.done.send(Done {
                    result: result.clone(),
                    _ops: batch.ops,
                });
            }
            let idle = queue.is_empty();
            let mem_full = read_mem(&self.mem).active.bytes >= MEMTABLE_LIMIT;
            let log_full = self.wal.used() >= WAL_SIZE / 4 * 3;
            let stale = idle && self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY;
            // Only one checkpoint at a time: while one runs, the next waits for a later group
            // (or, when the log's file fills up, for that one to end; see `write`).
            if (mem_full || log_full || stale) && self.settle(false) {
                self.start_checkpoint();
            }
        }
        // Closing: leave redb whole, so that the next open has nothing to replay.
        let _ = self.commit_now(&[]);
        groups
    }

    /// Make one group durable: a record of the log and the memtable. When the log's file is
    /// full, the log goes on in its other file (once that one's checkpoint is done); a group
    /// that does not fit even there is committed straight to redb, with everything before it.
    fn write(&mut self, group: &[Batch]) -> Result<()> {
        if let Some(why) = self.failed.get() {
            return Err(unavailable(&self.path, why));
        }
        let ops = || group.iter().flat_map(|b| &b.ops);
        if !self.wal.fits(ops()) {
            self.settle(true);
            self.start_checkpoint();
            if let Some(why) = self.failed.get() {
                return Err(unavailable(&self.path, why));
            }
            if !self.wal.fits(ops()) {
                return self.commit_now(group);
            }
        }
        if let Err(e) = self.wal.append(ops()) {
            let why = format!("write-ahead log {}: {e}", self.wal.path().display());
            tracing::error!(path = %self.path.display(), error = %why, "embedded store write failed");
            let _ = self.failed.set(why.clone());
            return Err(unavailable(&self.path, why));
        }
        let mut mem = write_mem(&self.mem);
        for op in ops() {
            mem.active.apply(op);
        }
        Ok(())
    }

    /// Whether no checkpoint is under way, after waiting for the one that is when `wait`.
    /// A checkpointer that is gone refuses writes from now on.
    fn settle(&mut self, wait: bool) -> bool {
        if !self.flushing {
            return true;
        }
        let ended = match (wait, self.flushed.try_recv()) {
            (_, Ok(())) => true,
            (false, Err(TryRecvError::Empty)) => return false,
            (true, Err(TryRecvError::Empty)) => self.flushed.recv().is_ok(),
            (_, Err(TryRecvError::Disconnected)) => false,
        };
        self.flushing = false;
        if !ended {
            let _ = self
                .failed
                .set("the checkpoint thread has stopped".to_string());
        }
        true
    }

    /// Freeze the memtable, go on in the log's other file, and hand the frozen table to the
    /// checkpointer. Only when no checkpoint is under way (the other file must be free).
    fn start_checkpoint(&mut self) {
        self.last_checkpoint = Instant::now();
        if self.flushing || self.failed.get().is_some() {
            return;
        }
        let table = {
            let mut mem = write_mem(&self.mem);
            if mem.active.map.is_empty() {
                return;
            }
            let table = Arc::new(std::mem::take(&mut mem.active));
            mem.frozen = Some(table.clone());
            table
        };
        let applied = self.wal.last_seq();
        self.wal.rotate();
        let sent = self
            .jobs
            .as_ref()
            .map(|jobs| jobs.send(Flush { table, applied }));
        if matches!(sent, Some(Ok(()))) {
            self.flushing = true;
        } else {
            let _ = self
                .failed
                .set("the checkpoint thread has stopped".to_string());
        }
    }

    /// Move the memtable (and `extra`, a group the log could not take) into redb now, in one
    /// durable transaction, after the checkpoint under way; then empty it and start the log
    /// over. When the commit fails the writer refuses writes from now on.
    fn commit_now(&mut self, extra: &[Batch]) -> Result<()> {
        self.settle(true);
        if let Some(why) = self.failed.get() {
            return Err(unavailable(&self.path, why));
        }
        if extra.is_empty() && read_mem(&self.mem).active.map.is_empty() {
            self.last_checkpoint = Instant::now();
            return Ok(());
        }
        let committed = {
            let mem = read_mem(&self.mem);
            let writes = mem
                .active
                .writes()
                .chain(extra.iter().flat_map(|b| &b.ops).map(op_write));
            checkpoint(&self.db, writes, self.wal.last_seq())
        };
        match committed {
            Ok(()) => {
                write_mem(&self.mem).active = Memtable::default();
                self.wal.reset();
                self.last_checkpoint = Instant::now();
                Ok(())
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "embedded store checkpoint failed");
                let why = format!("checkpoint failed: {e}");
                let _ = self.failed.set(why.clone());
                Err(unavailable(&self.path, why))
            }
        }
    }
}

impl Drop for Writer {
    /// Stop the checkpointer once it has done its last job, and wait for it: then nothing of
    /// this writer holds the database any more.
    fn drop(&mut self) {
        self.jobs.take();
        join(self.checkpointer.take(), &self.path, "checkpointer");
    }
}

/// The checkpointer thread: commit each frozen memtable into redb, then drop it from reads
/// (or, when the commit fails, refuse writes from now on); say so after each.
fn checkpointer(
    db: &Database,
    path: &Path,
    mem: &RwLock<Mem>,
    failed: &OnceLock<String>,
    jobs: std_mpsc::Receiver<Flush>,
    done: std_mpsc::Sender<()>,
) {
    for Flush { table, applied } in jobs {
        match checkpoint(db, table.writes(), applied) {
            Ok(()) => {
                write_mem(mem).frozen = None;
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "embedded store checkpoint failed");
                let _ = failed.set(format!("checkpoint failed: {e}"));
            }
        }
        // The table is freed here, off the writer's thread.
        drop(table);
        if done.send(()).is_err() {
            return;
        }
    }
}

/// Create the tables if missing, so that reads never meet a missing table, and return the
/// number of the last log record redb holds.
fn prepare(db: &Database) -> std::result::Result<u64, redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(KV)?;
    let applied = txn.open_table(META)?.get(WAL_SEQ)?.map_or(0, |v| v.value());
    txn.commit()?;
    Ok(applied)
}

/// Apply `writes` in order and set `wal_seq = applied`, in one redb transaction committed
/// durably: all of it is in redb after a crash, or none.
fn checkpoint<'a>(
    db: &Database,
    writes: impl Iterator<Item = KvWrite<'a>>,
    applied: u64,
) -> std::result::Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(KV)?;
        for (key, value) in writes {
            match value {
                Some(v) => {
                    table.insert(key, v)?;
                }
                None => {
                    table.remove(key)?;
                }
            }
        }
        txn.open_table(META)?.insert(WAL_SEQ, applied)?;
    }
    txn.commit()?;
    Ok(())
}

/// A backend failure, as callers see it: retryable, naming the file and the cause.
fn unavailable(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::unavailable(format!(
        "store unavailable: embedded {}: {e}",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::wal::WAL_FILES;
    use redb::ReadableTableMetadata;

    /// The merge gives what applying the overlay to a map gives, on random keys (including
    /// deletions of absent keys and overlay keys before, between and after the base's).
    #[test]
    fn an_overlay_merged_into_a_sorted_scan_matches_a_map() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let key = |rng: &mut rand::rngs::StdRng| format!("k/{:03}", rng.gen_range(0..60));
            let base: BTreeMap<String, Vec<u8>> = (0..rng.gen_range(0..40))
                .map(|i| (key(&mut rng), vec![i]))
                .collect();
            let overlay: BTreeMap<String, Option<Vec<u8>>> = (0..rng.gen_range(0..20))
                .map(|i| (key(&mut rng), rng.gen_bool(0.5).then_some(vec![100 + i])))
                .collect();
            let mut want = base.clone();
            for (k, v) in &overlay {
                match v {
                    Some(v) => want.insert(k.clone(), v.clone()),
                    None => want.remove(k),
                };
            }
            let got = apply_overlay(base.into_iter().collect(), overlay);
            assert_eq!(got, want.into_iter().collect::<Vec<_>>());
        }
    }

    /// A writer over a fresh database in `dir`, as `open` would make it.
    fn writer(dir: &Path) -> Writer {
        let path = dir.join(DB_FILE);
        let db = Database::create(&path).expect("create db");
        prepare(&db).expect("tables");
        let (wal, _) = Wal::open(dir, 0).expect("log");
        let mem = Arc::new(RwLock::new(Mem::default()));
        Writer::new(Arc::new(db), path, wal, mem, Arc::new(OnceLock::new())).expect("writer")
    }

    fn queue(
        batches: impl IntoIterator<Item = Vec<Op>>,
    ) -> (mpsc::Receiver<Batch>, Vec<oneshot::Receiver<Done>>) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let mut answers = Vec::new();
        for ops in batches {
            let (done, answer) = oneshot::channel();
            tx.try_send(Batch { ops, done }).expect("queue has room");
            answers.push(answer);
        }
        (rx, answers)
    }

    fn redb_len(db: &Database) -> u64 {
        let txn = db.begin_read().expect("read");
        let table = txn.open_table(KV).expect("table");
        table.len().expect("len")
    }

    /// Batches queued while the writer is busy are written together, each caller answered;
    /// closing the queue checkpoints everything into redb.
    #[test]
    fn queued_batches_share_one_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = writer(dir.path());
        let db = w.db.clone();
        let (rx, answers) =
            queue((0..50).map(|i| vec![Op::Put(format!("k/{i:02}"), vec![i as u8])]));
        // Everything is queued before the writer starts, so it must take it all at once.
        assert_eq!(w.run(rx), 1);
        for mut answer in answers {
            assert_eq!(answer.try_recv().expect("answered").result, Ok(()));
        }
        assert_eq!(redb_len(&db), 50);
    }

    /// A group is cut at MAX_GROUP_OPS so one write stays bounded.
    #[test]
    fn groups_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = writer(dir.path());
        let (rx, _answers) = queue((0..3).map(|b| {
            (0..MAX_GROUP_OPS / 2)
                .map(|i| Op::Put(format!("{b}/{i}"), Vec::new()))
                .collect()
        }));
        assert_eq!(w.run(rx), 2);
    }

    /// An acknowledged write that only the log holds (the process died before any
    /// checkpoint) is in the store after the next open; so is a later delete of another key.
    #[tokio::test]
    async fn writes_only_in_the_log_are_recovered_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut w = writer(dir.path());
            let (_rx, _answers) = queue([]);
            let (done, _a) = oneshot::channel();
            let first = [Batch {
                ops: vec![
                    Op::Put("svc/a".into(), b"1".to_vec()),
                    Op::Put("svc/b".into(), b"2".to_vec()),
                ],
                done,
            }];
            assert_eq!(w.write(&first), Ok(()));
            assert_eq!(
                w.commit_now(&[]),
                Ok(()),
                "a checkpoint: a and b are in redb"
            );
            let (done, _a) = oneshot::channel();
            let second = [Batch {
                ops: vec![
                    Op::Put("svc/a".into(), b"3".to_vec()),
                    Op::Delete("svc/b".into()),
                ],
                done,
            }];
            assert_eq!(w.write(&second), Ok(()));
            // Dropped without a checkpoint: the second batch is only in the log.
            assert_eq!(w.wal.last_seq(), 2);
        }
        let store = EmbeddedStore::open(dir.path()).expect("reopen");
        assert_eq!(store.get("svc/a").await, Ok(Some(b"3".to_vec())));
        assert_eq!(store.get("svc/b").await, Ok(None));
        let all = store.scan_prefix("svc/").await.expect("scan");
        assert_eq!(all, vec![("svc/a".to_string(), b"3".to_vec())]);
        // Recovery committed the log to redb: nothing is left only in memory.
        let mem = read_mem(&store.mem);
        assert!(mem.active.map.is_empty() && mem.frozen.is_none());
    }

    /// Reads see the memtable over redb: a newer value, a delete, and keys only in one of
    /// the two, in order.
    #[tokio::test]
    async fn reads_merge_the_memtable_over_redb() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let put = |k: &str, v: &str| Op::Put(k.to_string(), v.as_bytes().to_vec());
        // A group too big for the log goes straight to redb.
        let big = vec![
            put("p/0", "redb"),
            put("p/1", "redb"),
            put("p/3", "redb"),
            Op::Put("z/big".into(), vec![0u8; WAL_SIZE as usize]),
        ];
        store.apply(big).await.expect("big write");
        // What the log holds and redb not yet, put in the memtable as the writer would (the
        // writer checkpoints only after a group, so nothing moves it while the test reads).
        {
            let mut mem = write_mem(&store.mem);
            for op in [
                put("p/1", "mem"),
                Op::Delete("p/3".into()),
                put("p/2", "mem"),
            ] {
                mem.active.apply(&op);
            }
        }
        assert_eq!(store.get("p/1").await, Ok(Some(b"mem".to_vec())));
        assert_eq!(store.get("p/3").await, Ok(None));
        let scan = store.scan_prefix("p/").await.expect("scan");
        let keys: Vec<(&str, &[u8])> = scan
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("p/0", &b"redb"[..]),
                ("p/1", &b"mem"[..]),
                ("p/2", &b"mem"[..])
            ]
        );
    }

    /// A checkpoint that takes long (here: redb's one write transaction is held by the test)
    /// does not hold up writes: the log goes on in its other file, reads see the frozen table
    /// and the new one, and once the checkpoint ends redb has the frozen writes. A crash then
    /// loses nothing: the writes after the checkpoint come back from the log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_go_on_while_a_checkpoint_is_under_way() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let value = vec![7u8; 64 << 10];
        let puts = |from: usize, to: usize| -> Vec<Op> {
            (from..to)
                .map(|i| Op::Put(format!("k/{i:04}"), value.clone()))
                .collect()
        };
        let blocker = store
            .db
            .begin_write()
            .expect("hold redb's write transaction");
        // Past the memtable's limit: the writer freezes it and a checkpoint starts, and waits.
        let past_limit = MEMTABLE_LIMIT / value.len() + 1;
        for i in 0..past_limit {
            store.apply(puts(i, i + 1)).await.expect("write");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let frozen = loop {
            if let Some(table) = &read_mem(&store.mem).frozen {
                break table.map.len() as u64;
            }
            assert!(Instant::now() < deadline, "no checkpoint started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        // Writes go on, acknowledged, while it cannot commit.
        let more = tokio::time::timeout(Duration::from_secs(20), async {
            for i in past_limit..past_limit + 20 {
                store.apply(puts(i, i + 1)).await.expect("write");
            }
        })
        .await;
        assert!(more.is_ok(), "writes waited for the checkpoint");
        assert!(
            read_mem(&store.mem).frozen.is_some(),
            "the checkpoint ended early"
        );
        assert_eq!(redb_len(&store.db), 0, "redb took the checkpoint early");
        assert_eq!(store.get("k/0000").await, Ok(Some(value.clone())));
        let last = format!("k/{:04}", past_limit + 19);
        assert_eq!(store.get(&last).await, Ok(Some(value.clone())));
        let all = store.scan_prefix("k/").await.expect("scan");
        assert_eq!(all.len(), past_limit + 20);
        // A crash now leaves the files as they are: a copy of them opens with every write,
        // those of the frozen table and those after it, recovered from the log's two files.
        let crashed = tempfile::tempdir().expect("tempdir");
        for name in [DB_FILE, WAL_FILES[0], WAL_FILES[1]] {
            std::fs::copy(dir.path().join(name), crashed.path().join(name)).expect("copy");
        }
        let image = EmbeddedStore::open(crashed.path()).expect("open the crash image");
        let recovered = image.scan_prefix("k/").await.expect("scan");
        assert_eq!(recovered, all);
        drop(image);
        // Let it commit: the frozen table leaves the reads once redb has it.
        blocker.abort().expect("abort");
        while read_mem(&store.mem).frozen.is_some() {
            assert!(Instant::now() < deadline, "the checkpoint did not end");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(redb_len(&store.db), frozen);
        assert_eq!(store.scan_prefix("k/").await, Ok(all));
    }
}
