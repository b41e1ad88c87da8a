//! Persistence: `trait Store`, its contract, and the two backends.
//!
//! Everything the agent keeps across restarts (records, versions, ring bookkeeping) goes through
//! [`Store`], a small ordered key-value interface. Two backends implement it:
//!
//! - [`embedded::EmbeddedStore`] (the default): a redb database in the agent's `--data-dir`
//!   behind a write-ahead log ([`wal`]). Concurrent writes are merged into one log record
//!   ("group commit"), so many registrations arriving at once cost one disk sync, not one
//!   each; redb takes them in periodic checkpoints.
//! - [`redis::RedisStore`] (`--redis URL`): a Redis server with AOF on (`appendfsync always`
//!   expected, `everysec` warned about, `no` refused); every key is kept under a per-node prefix
//!   so several agents can share one Redis database (as one failure domain).
//!
//! [`open`] picks the backend from the agent's configuration. One shared test suite
//! (tests/store.rs) runs the same checks against both backends.

pub mod embedded;
pub mod redis;
pub mod wal;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

use crate::Result;

/// One write in an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value`.
    Put(String, Vec<u8>),
    /// Remove `key` (no error when absent).
    Delete(String),
}

/// Which store keys a [`Store::scan_prefix_where`] keeps (it may remember what it saw).
///
/// It may be asked about a key more than once, and not in key order, and must answer the same
/// for the same key: a backend that keeps recent writes apart (the embedded store's
/// memtables) asks once for each place a key is held.
pub type KeyFilter = Box<dyn FnMut(&str) -> bool + Send>;

/// Bytes in a [`Summary`].
pub const SUMMARY_LEN: usize = 32;

/// A fixed-size digest of a stored value, made by a [`Summarize`] where the value is read.
pub type Summary = [u8; SUMMARY_LEN];

/// What [`Store::scan_prefix_summaries`] keeps of each value it reads: called with the key and
/// the value, once for each place a key is held (as a [`KeyFilter`] is), and must answer the
/// same for the same key and value.
pub type Summarize = Box<dyn FnMut(&str, &[u8]) -> Summary + Send>;

/// A node's durable key-value storage.
///
/// Contract (every backend, checked by the shared suite in tests/store.rs):
/// - a write that returned `Ok` is durable: it survives a crash of the agent and a restart on the
///   same directory / Redis database (for Redis: as durable as its AOF settings make it, which
///   is why the backend checks them at start, refuses `appendfsync no` and warns about the
///   rest);
/// - `apply` is atomic: after a crash either every op of the batch is visible or none is; ops of
///   one batch take effect in order, so a later op on the same key wins;
/// - keys are arbitrary UTF-8 strings (glob characters such as `*?[]` included), values arbitrary
///   bytes; an empty batch is a no-op;
/// - `scan_prefix` returns every key starting with the prefix (a plain byte prefix, no pattern),
///   sorted by key, and nothing written by another node sharing the same backend;
///   `scan_prefix_where` the same less the keys its filter refuses, `scan_prefix_summaries`
///   the same as `scan_prefix_where` with each value replaced by its summary;
/// - when the backend is unreachable, calls fail within a bounded time (a few seconds) with
///   `Error::Unavailable` and a message naming the backend and the cause (never a password), and
///   work again by themselves once it is back, without reopening the store;
/// - no call panics on a runtime failure (disk full, connection lost).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for logs and metrics: "embedded" or "redis".
    fn kind(&self) -> &'static str;
    /// The value at `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Apply a batch of writes atomically and durably.
    async fn apply(&self, ops: Vec<Op>) -> Result<()>;
    /// Every (key, value) whose key starts with `prefix` and that `keep` accepts, sorted by
    /// key. The backend runs `keep` where it reads the keys, so the values of the others are
    /// neither copied nor fetched: a scan of one range of the ring among the several a node
    /// holds costs that range.
    async fn scan_prefix_where(
        &self,
        prefix: &str,
        keep: KeyFilter,
    ) -> Result<Vec<(String, Vec<u8>)>>;
    /// Every (key, summary of its value) whose key starts with `prefix` and that `keep`
    /// accepts, sorted by key: [`Store::scan_prefix_where`] for a caller that needs a digest
    /// of each value, not the value. The backend summarizes each value where it reads it, so a
    /// scan of many entries holds their keys and digests, never all their values at once.
    async fn scan_prefix_summaries(
        &self,
        prefix: &str,
        keep: KeyFilter,
        summarize: Summarize,
    ) -> Result<Vec<(String, Summary)>>;
    /// Every (key, value) whose key starts with `prefix`, sorted by key.
    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.scan_prefix_where(prefix, Box::new(|_| true)).await
    }
    /// Cheap health check: Ok when the backend is reachable and writable.
    async fn check(&self) -> Result<()>;

    /// The values at `keys`, in their order: one read of the backend for all of them where
    /// it can (what a replica does for every instance of a batch it receives).
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(key).await?);
        }
        Ok(out)
    }

    /// Set one key.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.apply(vec![Op::Put(key.to_string(), value)]).await
    }
    /// Remove one key.
    async fn delete(&self, key: &str) -> Result<()> {
        self.apply(vec![Op::Delete(key.to_string())]).await
    }
}

/// Open the store an agent is configured with: Redis at `redis_url` when given (keys kept under
/// `node_prefix`), otherwise the embedded store in `data_dir` (created if missing).
///
/// Fails with `Error::Unavailable` when the backend cannot be reached or the directory is in use
/// by another agent, and with `Error::InvalidInput` for a malformed URL or node prefix.
pub async fn open(
    redis_url: Option<&str>,
    data_dir: &Path,
    node_prefix: &str,
) -> Result<Arc<dyn Store>> {
    match redis_url {
        Some(url) => Ok(Arc::new(
            redis::RedisStore::connect(url, node_prefix).await?,
        )),
        None => {
            // Opening may replay or repair the database file: blocking work, off the runtime.
            let dir = data_dir.to_path_buf();
            let store = tokio::task::spawn_blocking(move || embedded::EmbeddedStore::open(&dir))
                .await
                .map_err(|e| {
                    crate::Error::internal(format!("opening the embedded store failed: {e}"))
                })??;
            Ok(Arc::new(store))
        }
    }
}
