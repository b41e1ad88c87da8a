//! The Redis backend: every key under a per-node prefix in one Redis database.
//!
//! Keys are stored as `chordctl:{node_prefix}:{key}`, so several agents can share one Redis
//! database without seeing each other's data (but not its failures: agents sharing one Redis
//! are one failure domain, whatever `--replicas` says). Each node also keeps an index of its
//! keys, the sorted set `chordctl:{node_prefix}` (every score 0, so ordered by key bytes),
//! written in the same `MULTI` as the keys themselves: a prefix scan reads its range of the
//! index (`ZRANGEBYLEX`) and so costs the keys under the prefix, not every key in the
//! database (a `SCAN MATCH` walks them all, other nodes' included). A database written before
//! the index existed is indexed once, when the store connects (`ensure_index`).
//!
//! Durability is Redis's, checked at start (`durability`): AOF on (`appendonly yes`, else a
//! warning) and synced on every write (`appendfsync always`); `everysec` starts with a
//! warning that a crash of the Redis host can lose about the last second of writes, and `no`
//! is refused. When the settings cannot be read (CONFIG disabled, as on some managed
//! services), the agent warns that it cannot confirm them and starts.
//!
//! The connection is a [`ConnectionManager`]: one multiplexed connection that reconnects in the
//! background after it breaks. Every round trip is bounded by [`CALL_TIMEOUT`], so while Redis is
//! down a call fails quickly with `Error::Unavailable` instead of hanging, and once Redis is back
//! calls succeed again on the same `RedisStore`. Passwords in the URL never reach a message or a
//! log line: everything shows [`redact_url`]'s form of it.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisResult;

use super::{KeyFilter, Op, Store, Summarize, Summary};
use crate::{Error, Result};

/// The longest one Redis round trip may take before the call fails as unavailable.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest [`RedisStore::connect`] waits for Redis to answer at start.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Every key of every node starts with this, so chordctl's keys are easy to find and to remove.
const KEY_NAMESPACE: &str = "chordctl";

/// How many keys one SCAN or ZRANGEBYLEX step asks for, and one ZADD adds when indexing.
const SCAN_COUNT: usize = 1000;
const MGET_CHUNK: usize = 100;

/// The member of a node's index that says the index is complete: written last when a
/// database without an index is indexed. It is not UTF-8, so no key can be it, and it sorts
/// after every UTF-8 key, so no prefix's range holds it.
const INDEX_COMPLETE: &[u8] = b"\xff";

/// A [`Store`] on a Redis server, keeping this node's keys apart from other nodes'.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    /// `chordctl:{node_prefix}:`, prepended to every key.
    prefix: String,
    /// `chordctl:{node_prefix}`: the sorted set of this node's keys (without `prefix`).
    index: String,
    /// The server URL with any password replaced, for messages and logs.
    url: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("index", &self.index)
            .finish()
    }
}

impl RedisStore {
    /// Connect to Redis at `url` (`redis://[user:password@]host:port[/db]`) and keep this node's
    /// keys under `chordctl:{node_prefix}:`.
    ///
    /// Fails with `Error::Unavailable` when Redis does not answer within [`CONNECT_TIMEOUT`]
    /// (an agent should not start on a store it cannot reach), and with `Error::InvalidInput`
    /// for a malformed URL, a node prefix that is empty or contains `:` (which would let two
    /// nodes' key spaces overlap), or a Redis with `appendfsync no`. Logs a warning when AOF is
    /// off, syncs only every second, or cannot be confirmed (`durability`).
    pub async fn connect(url: &str, node_prefix: &str) -> Result<Self> {
        let shown = redact_url(url);
        if node_prefix.is_empty() || node_prefix.contains(':') {
            return Err(Error::invalid(format!(
                "invalid Redis node prefix {node_prefix:?}: it must be non-empty and must not contain ':'"
            )));
        }
        let client = redis::Client::open(url)
            .map_err(|e| Error::invalid(format!("invalid Redis URL {shown}: {e}")))?;
        // One connection attempt per reconnect round, no backoff sleep: calls made while Redis
        // is down wait on the round in progress, so a round that fails at once (or after the
        // 1 s connect timeout) lets them fail fast instead of running into CALL_TIMEOUT. (The
        // crate's backoff starts at a fixed 1 s however it is configured.) When a round fails,
        // the next call starts another, so attempts follow the callers' pace, one at a time.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_number_of_retries(0);
        let conn = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                return Err(Error::unavailable(format!(
                    "store unavailable: redis {shown}: cannot connect: {e}"
                )))
            }
            Err(_) => {
                return Err(Error::unavailable(format!(
                    "store unavailable: redis {shown}: cannot connect: no answer within {CONNECT_TIMEOUT:?}"
                )))
            }
        };
        let store = RedisStore {
            conn,
            prefix: format!("{KEY_NAMESPACE}:{node_prefix}:"),
            index: format!("{KEY_NAMESPACE}:{node_prefix}"),
            url: shown,
        };
        store.check_durability().await?;
        store.ensure_index().await?;
        Ok(store)
    }

    /// Read Redis's AOF settings and act on `durability`'s verdict: log it, or refuse.
    async fn check_durability(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        // One pattern rather than two names: CONFIG GET takes several only from Redis 7 on.
        let reply = match tokio::time::timeout(
            CALL_TIMEOUT,
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("append*")
                .query_async::<HashMap<String, String>>(&mut conn),
        )
        .await
        {
            Ok(reply) => reply.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
        };
        match durability(&self.url, reply) {
            Durability::Confirmed => {
                tracing::info!(url = %self.url, "Redis store: appendonly=yes, appendfsync=always");
                Ok(())
            }
            Durability::Warn(warning) => {
                tracing::warn!("{warning}");
                Ok(())
            }
            Durability::Refuse(error) => Err(Error::invalid(error)),
        }
    }

    /// Index a database written before the index existed (chordctl 0.2 before it, or 0.1.0):
    /// when the index lacks its [`INDEX_COMPLETE`] member, walk this node's keys once with
    /// `SCAN MATCH`, add them to the index, then add the member. Adding is idempotent, so a
    /// crash half-way only means the walk is made again at the next start. Nothing else
    /// writes this node's keys while its store is being opened.
    async fn ensure_index(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let check = redis::cmd("ZSCORE")
            .arg(&self.index)
            .arg(INDEX_COMPLETE)
            .clone();
        let complete: Option<f64> = self.run(check.query_async(&mut conn)).await?;
        if complete.is_some() {
            return Ok(());
        }
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut cursor: u64 = 0;
        let mut indexed = 0usize;
        loop {
            let step = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .clone();
            let (next, batch): (u64, Vec<Vec<u8>>) = self.run(step.query_async(&mut conn)).await?;
            let keys: Vec<&[u8]> = batch
                .iter()
                .filter_map(|full| full.strip_prefix(self.prefix.as_bytes()))
                .filter(|key| std::str::from_utf8(key).is_ok())
                .collect();
            if !keys.is_empty() {
                let mut add = redis::cmd("ZADD");
                add.arg(&self.index);
                for key in &keys {
                    add.arg(0).arg(*key);
                }
                self.run(add.query_async::<()>(&mut conn)).await?;
                indexed += keys.len();
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let done = redis::cmd("ZADD")
            .arg(&self.index)
            .arg(0)
            .arg(INDEX_COMPLETE)
            .clone();
        self.run(done.query_async::<()>(&mut conn)).await?;
        if indexed > 0 {
            tracing::info!(url = %self.url, keys = indexed, index = %self.index, "Redis store: indexed the keys of a database written without an index");
        }
        Ok(())
    }

    /// The full Redis key of one of this node's keys.
    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Run one Redis round trip, bounded by CALL_TIMEOUT, mapping failures to Unavailable.
    async fn run<T>(&self, call: impl Future<Output = RedisResult<T>>) -> Result<T> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.unavailable(e)),
            Err(_) => Err(self.unavailable(format!("no answer within {CALL_TIMEOUT:?}"))),
        }
    }

    fn unavailable(&self, cause: impl std::fmt::Display) -> Error {
        Error::unavailable(format!("store unavailable: redis {}: {cause}", self.url))
    }

    /// Every key under `prefix` that `keep` keeps, with what `map` makes of its value, sorted
    /// by key: values are fetched [`MGET_CHUNK`] at a time and each is mapped as it arrives,
    /// so a scan holds at most one chunk of values at once.
    async fn scan_mapped<T>(
        &self,
        prefix: &str,
        mut keep: KeyFilter,
        mut map: impl FnMut(&str, Vec<u8>) -> T + Send,
    ) -> Result<Vec<(String, T)>> {
        let mut conn = self.conn.clone();
        // Every key starting with `prefix` lies in [prefix, prefix + 0xff): keys are UTF-8,
        // and no UTF-8 byte is 0xff.
        let mut min = [b"[", prefix.as_bytes()].concat();
        let max = [b"(", prefix.as_bytes(), b"\xff"].concat();
        let mut keys = Vec::new();
        loop {
            let step = redis::cmd("ZRANGEBYLEX")
                .arg(&self.index)
                .arg(&min)
                .arg(&max)
                .arg("LIMIT")
                .arg(0)
                .arg(SCAN_COUNT)
                .clone();
            let batch: Vec<Vec<u8>> = self.run(step.query_async(&mut conn)).await?;
            let Some(last) = batch.last() else { break };
            // The next step starts after the last key of this one.
            min = [b"(", last.as_slice()].concat();
            let full = batch.len() == SCAN_COUNT;
            // Members that are not UTF-8 were not written by a Store, so they are not keys.
            // Only the values of the keys kept are fetched.
            keys.extend(
                batch
                    .into_iter()
                    .filter_map(|key| String::from_utf8(key).ok())
                    .filter(|key| keep(key))
                    .map(|key| self.full_key(&key)),
            );
            if !full {
                break;
            }
        }
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MGET_CHUNK) {
            let fetch = redis::cmd("MGET").arg(chunk).clone();
            let values: Vec<Option<Vec<u8>>> = self.run(fetch.query_async(&mut conn)).await?;
            // A key deleted between SCAN and MGET comes back as nil: it is simply gone.
            for (full, value) in chunk.iter().zip(values) {
                if let Some(value) = value {
                    let key = &full[self.prefix.len()..];
                    out.push((key.to_string(), map(key, value)));
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("GET").arg(self.full_key(key)).clone();
        self.run(cmd.query_async(&mut conn)).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut conn = self.conn.clone();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MGET_CHUNK) {
            let full: Vec<String> = chunk.iter().map(|k| self.full_key(k)).collect();
            let fetch = redis::cmd("MGET").arg(&full).clone();
            let values: Vec<Option<Vec<u8>>> = self.run(fetch.query_async(&mut conn)).await?;
            out.extend(values);
        }
        Ok(out)
    }

    async fn apply(&self, ops: Vec<Op>) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        // MULTI/EXEC: Redis runs the batch as one unit, and with AOF on writes it as one unit.
        // The index changes in the same MULTI, by each key's last op in the batch.
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut last: HashMap<&str, bool> = HashMap::with_capacity(ops.len());
        for op in &ops {
            match op {
                Op::Put(k, v) => {
                    pipe.set(self.full_key(k), v.as_slice()).ignore();
                    last.insert(k, true);
                }
                Op::Delete(k) => {
                    pipe.del(self.full_key(k)).ignore();
                    last.insert(k, false);
                }
            };
        }
        let (mut added, mut removed) = (redis::cmd("ZADD"), redis::cmd("ZREM"));
        added.arg(&self.index);
        removed.arg(&self.index);
        let (mut any_added, mut any_removed) = (false, false);
        for (key, present) in last {
            if present {
                added.arg(0).arg(key);
                any_added = true;
            } else {
                removed.arg(key);
                any_removed = true;
            }
        }
        if any_added {
            pipe.add_command(added).ignore();
        }
        if any_removed {
            pipe.add_command(removed).ignore();
        }
        let mut conn = self.conn.clone();
        self.run(pipe.query_async::<()>(&mut conn)).await
    }

    async fn scan_prefix_where(
        &self,
        prefix: &str,
        keep: KeyFilter,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        self.scan_mapped(prefix, keep, |_, v| v).await
    }

    async fn scan_prefix_summaries(
        &self,
        prefix: &str,
        keep: KeyFilter,
        mut summarize: Summarize,
    ) -> Result<Vec<(String, Summary)>> {
        self.scan_mapped(prefix, keep, |k, v| summarize(k, &v))
            .await
    }

    async fn check(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        self.run(redis::cmd("PING").query_async::<()>(&mut conn))
            .await
    }
}

/// What the AOF settings of a Redis server mean for acknowledged writes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Durability {
    /// AOF on and synced before every answer: an acknowledged write survives a crash of Redis
    /// and of its host.
    Confirmed,
    /// Start, with this warning: writes can be lost, or the settings could not be confirmed.
    Warn(String),
    /// Do not start, with this error: Redis is set up to lose acknowledged writes.
    Refuse(String),
}

/// The verdict on a `CONFIG GET append*` reply (or why there is none).
///
/// - `appendonly` other than `yes`: warn (no AOF: a crash of Redis loses every write since
///   its last snapshot).
/// - `appendfsync always`: confirmed. `everysec`: warn that a power loss or OS crash of the
///   Redis host can lose about the last second of acknowledged writes (a crash of
///   redis-server alone loses none: it wrote them to the OS before answering, and the page
///   cache outlives the process). `no`: refuse, since the OS then flushes when it likes.
/// - No reply (CONFIG refused or renamed, no answer) or an unknown value: warn that it cannot
///   be confirmed.
fn durability(
    url: &str,
    reply: std::result::Result<HashMap<String, String>, String>,
) -> Durability {
    let config = match reply {
        Ok(config) => config,
        Err(cause) => {
            return Durability::Warn(format!(
                "cannot check appendonly and appendfsync on Redis at {url} ({cause}): cannot \
                 confirm that acknowledged writes survive a crash of Redis or of its host; make \
                 sure appendonly is yes and appendfsync is always"
            ))
        }
    };
    let setting = |name: &str| config.get(name).map(|v| v.to_ascii_lowercase());
    match setting("appendonly").as_deref() {
        Some("yes") => {}
        Some(other) => {
            return Durability::Warn(format!(
                "Redis at {url} has appendonly={other}: acknowledged writes can be lost on a \
                 Redis crash; set appendonly yes and appendfsync always"
            ))
        }
        None => {
            return Durability::Warn(format!(
                "Redis at {url} did not report appendonly: cannot confirm that acknowledged \
                 writes survive a Redis crash; make sure appendonly is yes and appendfsync is \
                 always"
            ))
        }
    }
    match setting("appendfsync").as_deref() {
        Some("always") => Durability::Confirmed,
        Some("everysec") => Durability::Warn(format!(
            "Redis at {url} has appendfsync=everysec: a power loss or OS crash of the Redis \
             host can lose up to about the last second of acknowledged writes (a crash of \
             redis-server alone loses none); set appendfsync always to lose none"
        )),
        Some("no") => Durability::Refuse(format!(
            "Redis at {url} has appendfsync=no: it leaves syncing its AOF to the OS, so a power \
             loss or OS crash of the Redis host can lose many seconds of acknowledged writes; \
             set appendfsync always (CONFIG SET appendfsync always, and in redis.conf), or \
             everysec to accept losing up to about 1 s, then start the agent again"
        )),
        Some(other) => Durability::Warn(format!(
            "Redis at {url} has appendfsync={other}, which this agent does not know: cannot \
             confirm that acknowledged writes survive a crash of the Redis host; set \
             appendfsync always"
        )),
        None => Durability::Warn(format!(
            "Redis at {url} did not report appendfsync: cannot confirm that acknowledged \
             writes survive a crash of the Redis host; make sure appendfsync is always"
        )),
    }
}

/// Escape Redis glob characters so `s` matches only itself in a SCAN MATCH pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `url` with any password (in the user-info part or a `pass`/`password` query parameter)
/// replaced by `***`, fit for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL we can take apart; show it only if it cannot hold a credential.
        return if url.contains('@') || url.contains("pass") {
            "<redacted URL>".to_string()
        } else {
            url.to_string()
        };
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:***{host}"),
                // `redis://secret@host`: some clients read a lone user-info as the password.
                None => format!("***{host}"),
            }
        }
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((name, _))
                        if name.eq_ignore_ascii_case("pass")
                            || name.eq_ignore_ascii_case("password") =>
                    {
                        format!("{name}=***")
                    }
                    _ => param.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords() {
        let cases = [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("redis://:s3cret@host:6379", "redis://:***@host:6379"),
            ("redis://alice:s3cret@host/2", "redis://alice:***@host/2"),
            ("rediss://s3cret@host", "rediss://***@host"),
            ("redis://a:p@ss@host", "redis://a:***@host"),
            (
                "redis+unix:///run/redis.sock?db=1&pass=s3cret",
                "redis+unix:///run/redis.sock?db=1&pass=***",
            ),
            ("host:6379", "host:6379"),
            ("user:s3cret@host", "<redacted URL>"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "redacting {url}");
            assert!(!redact_url(url).contains("s3cret"));
        }
    }

    #[test]
    fn glob_escape_matches_literally() {
        assert_eq!(glob_escape("a/b"), "a/b");
        assert_eq!(glob_escape("*?[x]\\"), "\\*\\?\\[x\\]\\\\");
    }

    fn config(pairs: &[(&str, &str)]) -> std::result::Result<HashMap<String, String>, String> {
        Ok(pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    fn warning(verdict: Durability) -> String {
        match verdict {
            Durability::Warn(w) => w,
            other => panic!("want a warning, got {other:?}"),
        }
    }

    #[test]
    fn appendfsync_always_is_confirmed() {
        let reply = config(&[
            ("appendonly", "yes"),
            ("appendfsync", "always"),
            ("appendfilename", "appendonly.aof"),
        ]);
        assert_eq!(durability("redis://h", reply), Durability::Confirmed);
        let reply = config(&[("appendonly", "YES"), ("appendfsync", "Always")]);
        assert_eq!(durability("redis://h", reply), Durability::Confirmed);
    }

    #[test]
    fn appendfsync_no_is_refused_with_what_to_do() {
        let reply = config(&[("appendonly", "yes"), ("appendfsync", "no")]);
        let Durability::Refuse(e) = durability("redis://h:6379", reply) else {
            panic!("appendfsync no must be refused")
        };
        assert!(e.contains("redis://h:6379"), "{e}");
        assert!(e.contains("appendfsync=no"), "{e}");
        assert!(e.contains("set appendfsync always"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn appendfsync_everysec_warns_what_can_be_lost() {
        let reply = config(&[("appendonly", "yes"), ("appendfsync", "everysec")]);
        let w = warning(durability("redis://h", reply));
        assert!(w.contains("appendfsync=everysec"), "{w}");
        assert!(w.contains("power loss or OS crash"), "{w}");
        assert!(w.contains("about the last second"), "{w}");
        assert!(w.contains("redis-server alone loses none"), "{w}");
        assert!(w.contains("set appendfsync always"), "{w}");
    }

    #[test]
    fn aof_off_or_unknown_settings_warn() {
        // AOF off: appendfsync does not matter, the warning is about appendonly.
        let w = warning(durability(
            "redis://h",
            config(&[("appendonly", "no"), ("appendfsync", "no")]),
        ));
        assert!(w.contains("appendonly=no"), "{w}");
        assert!(w.contains("set appendonly yes"), "{w}");

        let w = warning(durability("redis://h", config(&[])));
        assert!(w.contains("did not report appendonly"), "{w}");
        let w = warning(durability("redis://h", config(&[("appendonly", "yes")])));
        assert!(w.contains("did not report appendfsync"), "{w}");
        let w = warning(durability(
            "redis://h",
            config(&[("appendonly", "yes"), ("appendfsync", "sometimes")]),
        ));
        assert!(w.contains("appendfsync=sometimes"), "{w}");
        assert!(w.contains("cannot confirm"), "{w}");
    }

    /// CONFIG refused (managed services rename or disable it): start, saying it cannot be
    /// confirmed.
    #[test]
    fn config_refused_warns_that_it_cannot_confirm() {
        let w = warning(durability(
            "redis://h",
            Err("ERR unknown command 'CONFIG'".into()),
        ));
        assert!(w.contains("cannot check appendonly and appendfsync"), "{w}");
        assert!(w.contains("unknown command"), "{w}");
        assert!(w.contains("cannot confirm"), "{w}");
    }
}
