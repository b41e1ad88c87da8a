//! Persistence: `trait Store` and its backends.
//!
//! TO BE WRITTEN (store helper): the contract below, `embedded.rs` (redb) and `redis.rs`.

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

/// A node's durable key-value storage.
///
/// Contract (every backend, checked by the shared suite in tests/store.rs):
/// - a write that returned `Ok` is durable: it survives a crash of the agent and a restart on the
///   same directory / Redis database;
/// - `apply` is atomic: after a crash either every op of the batch is visible or none is;
/// - `scan_prefix` returns every key starting with the prefix, sorted by key;
/// - when the backend is unreachable, calls fail with `Error::Unavailable` and a message naming
///   the backend and the cause, and work again by themselves once it is back.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for logs and metrics: "embedded" or "redis".
    fn kind(&self) -> &'static str;
    /// The value at `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Apply a batch of writes atomically and durably.
    async fn apply(&self, ops: Vec<Op>) -> Result<()>;
    /// Every (key, value) whose key starts with `prefix`, sorted by key.
    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;
    /// Cheap health check: Ok when the backend is reachable and writable.
    async fn check(&self) -> Result<()>;

    /// Set one key.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.apply(vec![Op::Put(key.to_string(), value)]).await
    }
    /// Remove one key.
    async fn delete(&self, key: &str) -> Result<()> {
        self.apply(vec![Op::Delete(key.to_string())]).await
    }
}
