//! The embedded backend: a redb database file in the agent's data directory.
//!
//! Reads run on tokio's blocking pool, each in its own read transaction (redb lets them run
//! alongside a write). Writes go through one writer thread that owns the write path: every
//! `apply` sends its batch and a reply channel, and the writer takes everything queued at that
//! moment, applies it in one write transaction, commits once (durably) and answers every caller
//! with the same result. Under load many registrations share one disk sync ("group commit"),
//! which is what lets a single agent sustain a high register rate; with no concurrency it costs
//! nothing, since a lone batch is committed as soon as it arrives.
//!
//! The writer is a dedicated thread rather than a task looping over `spawn_blocking` so that
//! dropping the store can join it: when `drop` returns (and no cancelled read is still running),
//! the database file is closed and its lock released, and the same directory can be reopened
//! at once, e.g. by an agent restarted in the same process.
//!
//! Failures (disk full, I/O errors) come back as `Error::Unavailable` naming the file. Note that
//! after an I/O error during a commit redb refuses further writes on that handle
//! (`PreviousIo`) until the database is reopened, i.e. until the agent restarts.

// The blocking closures below return redb's own error (160 bytes) so they can use `?` on every
// redb call; it is mapped to our Error right after. Boxing it would buy nothing on these paths.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use redb::{Database, DatabaseError, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::{Op, Store};
use crate::{Error, Result};

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "chordctl.redb";

/// The one table: key → value.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

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
/// that the caller frees them. (Freed on the writer thread, memory a runtime thread allocated
/// cost the writer a contended lock on glibc's arena per key and value.)
struct Done {
    result: Result<()>,
    _ops: Vec<Op>,
}

/// The embedded store: a redb database at `DIR/chordctl.redb` with group-committed writes.
///
/// Only one store (in this or any other process) can have a directory open at a time; a second
/// [`EmbeddedStore::open`] fails with a clear `Error::Unavailable` instead of corrupting it.
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
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
        // Create the table up front so that reads never meet a missing table.
        let init = || -> std::result::Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(KV)?;
            txn.commit()?;
            Ok(())
        };
        init().map_err(|e| unavailable(&path, e))?;

        let db = Arc::new(db);
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = {
            let (db, file) = (db.clone(), path.clone());
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || writer_loop(&db, &file, rx))
                .map_err(|e| unavailable(&path, format!("cannot start the writer thread: {e}")))?
        };
        Ok(EmbeddedStore {
            db,
            path,
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
        let (db, path) = (self.db.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(|e| unavailable(&path, e))?;
            let table = txn.open_table(KV).map_err(|e| unavailable(&path, e))?;
            f(&table).map_err(|e| unavailable(&path, e))
        })
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
        let key = key.to_string();
        self.read(move |table| Ok(table.get(key.as_str())?.map(|v| v.value().to_vec())))
            .await
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

    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let prefix = prefix.to_string();
        self.read(move |table| {
            let mut out = Vec::new();
            // Keys are ordered bytewise, so the matches are one contiguous run from `prefix`.
            for entry in table.range(prefix.as_str()..)? {
                let (k, v) = entry?;
                let k = k.value();
                if !k.starts_with(prefix.as_str()) {
                    break;
                }
                out.push((k.to_string(), v.value().to_vec()));
            }
            Ok(out)
        })
        .await
    }

    async fn check(&self) -> Result<()> {
        if self.queue.as_ref().is_none_or(|q| q.is_closed()) {
            return Err(self.writer_gone());
        }
        self.read(|_| Ok(())).await
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer commit what is still queued and exit; joining it
        // releases its handle on the database, so the file is closed when `db` drops next.
        // This blocks for at most one in-progress commit.
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!(path = %self.path.display(), "embedded store writer panicked");
            }
        }
    }
}

/// The writer thread: take every batch queued, commit them in one transaction, answer all.
/// Returns the number of transactions committed or attempted (for tests).
fn writer_loop(db: &Database, path: &Path, mut queue: mpsc::Receiver<Batch>) -> u64 {
    let mut commits = 0;
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
        let result = commit(db, &group).map_err(|e| {
            tracing::error!(path = %path.display(), error = %e, "embedded store commit failed");
            unavailable(path, e)
        });
        commits += 1;
        for batch in group {
            // A caller that gave up waiting is no error: its batch is committed all the same.
            let _ = batch.done.send(Done {
                result: result.clone(),
                _ops: batch.ops,
            });
        }
    }
    commits
}

/// Apply the batches in order in one write transaction and commit it durably.
///
/// One transaction keeps each batch atomic (all of the group or none of it is visible after a
/// crash); if it fails, every caller of the group gets the error and none of it is applied.
fn commit(db: &Database, group: &[Batch]) -> std::result::Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(KV)?;
        for op in group.iter().flat_map(|b| &b.ops) {
            match op {
                Op::Put(k, v) => {
                    table.insert(k.as_str(), v.as_slice())?;
                }
                Op::Delete(k) => {
                    table.remove(k.as_str())?;
                }
            }
        }
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
    use redb::ReadableTableMetadata;

    /// Batches queued while the writer is busy are committed together, each caller answered.
    #[test]
    fn queued_batches_share_one_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        let db = Database::create(&path).expect("create db");
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let mut answers = Vec::new();
        for i in 0..50 {
            let (done, answer) = oneshot::channel();
            let ops = vec![Op::Put(format!("k/{i:02}"), vec![i as u8])];
            tx.try_send(Batch { ops, done }).expect("queue has room");
            answers.push(answer);
        }
        drop(tx);
        // Everything is queued before the writer starts, so it must take it all at once.
        assert_eq!(writer_loop(&db, &path, rx), 1);
        for mut answer in answers {
            assert_eq!(answer.try_recv().expect("answered").result, Ok(()));
        }
        let txn = db.begin_read().expect("read");
        let table = txn.open_table(KV).expect("table");
        assert_eq!(table.len().expect("len"), 50);
    }

    /// A group is cut at MAX_GROUP_OPS so one transaction stays bounded.
    #[test]
    fn groups_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        let db = Database::create(&path).expect("create db");
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        for b in 0..3 {
            let (done, _answer) = oneshot::channel();
            let ops = (0..MAX_GROUP_OPS / 2)
                .map(|i| Op::Put(format!("{b}/{i}"), Vec::new()))
                .collect();
            tx.try_send(Batch { ops, done }).expect("queue has room");
        }
        drop(tx);
        assert_eq!(writer_loop(&db, &path, rx), 2);
    }
}
