//! The shared store suite: the same checks against every backend, plus each backend's own.
//!
//! Every shared check is an `async fn(&Backend)`; `shared_suite!` turns it into one test per
//! backend. The Redis tests start their own `redis-server` (see support/redis.rs) and skip with
//! a message when it is not installed (fail under CI=true).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chordctl::store::{self, embedded::EmbeddedStore, redis::RedisStore, Op, Store};
use chordctl::Error;
use futures::future::BoxFuture;

use crate::support::procs;
use crate::support::redis::RedisServer;

/// Where a test's data lives; `open` gives a fresh store on that same data each time.
enum Backend {
    Embedded(tempfile::TempDir),
    Redis { server: RedisServer, node: String },
}

impl Backend {
    fn embedded() -> Backend {
        Backend::Embedded(tempfile::tempdir().expect("temporary data directory"))
    }

    fn redis() -> Option<Backend> {
        Some(Backend::Redis {
            server: RedisServer::start()?,
            node: "n1".to_string(),
        })
    }

    /// Open a store through the same helper the agent uses.
    async fn open(&self) -> Arc<dyn Store> {
        let opened = match self {
            Backend::Embedded(dir) => store::open(None, dir.path(), "n1").await,
            Backend::Redis { server, node } => {
                store::open(Some(&server.url()), Path::new("/nonexistent"), node).await
            }
        };
        opened.expect("store opens")
    }
}

/// Turn each shared check into one test per backend.
macro_rules! shared_suite {
    ($($check:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let backend = super::Backend::embedded();
                    super::$check(&backend).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let Some(backend) = super::Backend::redis() else { return };
                    super::$check(&backend).await;
                }
            )*
        }
    };
}

shared_suite!(
    get_put_delete_overwrite,
    apply_is_one_ordered_batch,
    scan_prefix_is_sorted_and_exact,
    glob_characters_are_plain_key_characters,
    binary_values_round_trip,
    large_values_round_trip,
    concurrent_applies_all_land,
    reopen_keeps_data,
    check_succeeds_when_healthy,
    get_many_answers_each_key_in_order,
    scan_prefix_where_copies_only_the_keys_it_keeps,
    scan_prefix_summaries_answer_each_kept_value_summarized,
);

fn put(key: &str, value: &[u8]) -> Op {
    Op::Put(key.to_string(), value.to_vec())
}

async fn get_put_delete_overwrite(backend: &Backend) {
    let s = backend.open().await;
    assert_eq!(s.get("k").await.unwrap(), None);
    s.put("k", b"one".to_vec()).await.unwrap();
    assert_eq!(s.get("k").await.unwrap(), Some(b"one".to_vec()));
    s.put("k", b"two".to_vec()).await.unwrap();
    assert_eq!(s.get("k").await.unwrap(), Some(b"two".to_vec()));
    s.delete("k").await.unwrap();
    assert_eq!(s.get("k").await.unwrap(), None);
    // Deleting what is not there is no error.
    s.delete("k").await.unwrap();
    s.delete("never-written").await.unwrap();
}

async fn apply_is_one_ordered_batch(backend: &Backend) {
    let s = backend.open().await;
    s.put("gone", b"x".to_vec()).await.unwrap();
    s.apply(vec![
        put("b/1", b"1"),
        put("b/2", b"first"),
        Op::Delete("gone".to_string()),
        put("b/2", b"second"),
        put("b/3", b"3"),
        Op::Delete("b/3".to_string()),
    ])
    .await
    .unwrap();
    // Ops apply in order: the later write to a key wins, a delete after a put removes it.
    assert_eq!(
        s.scan_prefix("b/").await.unwrap(),
        vec![
            ("b/1".to_string(), b"1".to_vec()),
            ("b/2".to_string(), b"second".to_vec()),
        ]
    );
    assert_eq!(s.get("gone").await.unwrap(), None);
    // An empty batch is a no-op.
    s.apply(Vec::new()).await.unwrap();
}

async fn scan_prefix_is_sorted_and_exact(backend: &Backend) {
    let s = backend.open().await;
    for key in ["ab/1", "a/2", "b/1", "a/1", "a", "a0"] {
        s.put(key, key.as_bytes().to_vec()).await.unwrap();
    }
    let keys = |v: Vec<(String, Vec<u8>)>| -> Vec<String> {
        v.into_iter()
            .map(|(k, value)| {
                assert_eq!(k.as_bytes(), value, "value of {k}");
                k
            })
            .collect()
    };
    assert_eq!(keys(s.scan_prefix("a/").await.unwrap()), ["a/1", "a/2"]);
    assert_eq!(
        keys(s.scan_prefix("a").await.unwrap()),
        ["a", "a/1", "a/2", "a0", "ab/1"]
    );
    assert_eq!(
        keys(s.scan_prefix("").await.unwrap()),
        ["a", "a/1", "a/2", "a0", "ab/1", "b/1"]
    );
    assert!(s.scan_prefix("c").await.unwrap().is_empty());
    assert!(s.scan_prefix("a/1/").await.unwrap().is_empty());
}

/// A store holding, under `w/` and `x/`, keys written before a reopen (in redb, for the
/// embedded store: `w/a1`, `w/a2`, `w/b1`, `w/b2`, `x/b1`, each holding its name, and `more`)
/// and changes written after it (in its memtable): `w/b2` deleted, `w/b1` = "new", `w/b3` and
/// `w/a3` = "3".
async fn written_across_a_reopen(backend: &Backend, more: &[(&str, &[u8])]) -> Arc<dyn Store> {
    let s = backend.open().await;
    for key in ["w/a1", "w/a2", "w/b1", "w/b2", "x/b1"] {
        s.put(key, key.as_bytes().to_vec()).await.unwrap();
    }
    for (key, value) in more {
        s.put(key, value.to_vec()).await.unwrap();
    }
    drop(s);
    let s = backend.open().await;
    s.apply(vec![
        Op::Delete("w/b2".to_string()),
        put("w/b1", b"new"),
        put("w/b3", b"3"),
        put("w/a3", b"3"),
    ])
    .await
    .unwrap();
    s
}

/// The filtered scan sees the keys as the store's callers name them (no backend prefix),
/// only under the prefix, and answers exactly what `scan_prefix` holds less the keys it
/// refuses: for entries written before a reopen (in redb, for the embedded store) and for
/// overwrites, deletions and new keys written after it (in its memtable).
async fn scan_prefix_where_copies_only_the_keys_it_keeps(backend: &Backend) {
    let s = written_across_a_reopen(backend, &[]).await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let got = s
        .scan_prefix_where(
            "w/",
            Box::new(move |key: &str| {
                log.lock().unwrap().push(key.to_string());
                key.starts_with("w/b")
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![
            ("w/b1".to_string(), b"new".to_vec()),
            ("w/b3".to_string(), b"3".to_vec()),
        ]
    );
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|k| k.starts_with("w/")) && seen.iter().any(|k| k == "w/a1"),
        "the filter saw {seen:?}"
    );
    let all = s.scan_prefix("w/").await.unwrap();
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["w/a1", "w/a2", "w/a3", "w/b1", "w/b3"]);
}

/// The summarizing scan answers what `scan_prefix_where` answers with each value replaced by
/// its summary, made from the key and the value as stored: for entries written before a
/// reopen (in redb, for the embedded store), and for overwrites, deletions and new keys
/// written after it (in its memtable).
async fn scan_prefix_summaries_answer_each_kept_value_summarized(backend: &Backend) {
    fn summary(key: &str, value: &[u8]) -> store::Summary {
        let mut out = [0u8; store::SUMMARY_LEN];
        out[0] = u8::try_from(key.len()).unwrap();
        out[1..3].copy_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        let n = value.len().min(out.len() - 3);
        out[3..3 + n].copy_from_slice(&value[..n]);
        out
    }
    let long = vec![b'L'; 4000];
    let s = written_across_a_reopen(backend, &[("w/b4", &long)]).await;
    let keep = || -> store::KeyFilter { Box::new(|key: &str| key.starts_with("w/b")) };
    let got = s
        .scan_prefix_summaries("w/", keep(), Box::new(summary))
        .await
        .unwrap();
    let want: Vec<(String, store::Summary)> = s
        .scan_prefix_where("w/", keep())
        .await
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let sum = summary(&k, &v);
            (k, sum)
        })
        .collect();
    assert_eq!(got, want);
    let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["w/b1", "w/b3", "w/b4"]);
    assert_eq!(got[0].1, summary("w/b1", b"new"));
    assert_eq!(got[2].1, summary("w/b4", &long));
}

async fn glob_characters_are_plain_key_characters(backend: &Backend) {
    let s = backend.open().await;
    let keys = ["g/*", "g/?", "g/[x]", "g/x", "g/\\", "g*/1", "g?/1", "h/1"];
    for key in keys {
        s.put(key, key.as_bytes().to_vec()).await.unwrap();
    }
    for key in keys {
        assert_eq!(s.get(key).await.unwrap(), Some(key.as_bytes().to_vec()));
    }
    let scan = |prefix: &'static str| {
        let s = s.clone();
        async move {
            s.scan_prefix(prefix)
                .await
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(scan("g/*").await, ["g/*"]);
    assert_eq!(scan("g/?").await, ["g/?"]);
    assert_eq!(scan("g/[").await, ["g/[x]"]);
    assert_eq!(scan("g/\\").await, ["g/\\"]);
    assert_eq!(scan("g*").await, ["g*/1"]);
    assert_eq!(scan("g?").await, ["g?/1"]);
    assert_eq!(scan("*").await, Vec::<String>::new());
    assert_eq!(scan("g/").await, ["g/*", "g/?", "g/[x]", "g/\\", "g/x"]);
}

async fn binary_values_round_trip(backend: &Backend) {
    let s = backend.open().await;
    let every_byte: Vec<u8> = (0..=255).collect();
    let not_utf8 = vec![0xff, 0xfe, 0x00, 0xc3];
    s.apply(vec![
        put("bin/all", &every_byte),
        put("bin/empty", b""),
        put("bin/invalid-utf8", &not_utf8),
    ])
    .await
    .unwrap();
    assert_eq!(s.get("bin/all").await.unwrap(), Some(every_byte.clone()));
    assert_eq!(s.get("bin/empty").await.unwrap(), Some(Vec::new()));
    assert_eq!(
        s.get("bin/invalid-utf8").await.unwrap(),
        Some(not_utf8.clone())
    );
    assert_eq!(
        s.scan_prefix("bin/").await.unwrap(),
        vec![
            ("bin/all".to_string(), every_byte),
            ("bin/empty".to_string(), Vec::new()),
            ("bin/invalid-utf8".to_string(), not_utf8),
        ]
    );
}

async fn large_values_round_trip(backend: &Backend) {
    let s = backend.open().await;
    let big: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    s.put("big/1", big.clone()).await.unwrap();
    s.put("big/2", big.clone()).await.unwrap();
    assert_eq!(s.get("big/1").await.unwrap().as_ref(), Some(&big));
    let all = s.scan_prefix("big/").await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|(_, v)| v == &big));
}

async fn concurrent_applies_all_land(backend: &Backend) {
    let s = backend.open().await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.apply(vec![
                    put(&format!("c/{i:03}/a"), format!("{i}a").as_bytes()),
                    put(&format!("c/{i:03}/b"), format!("{i}b").as_bytes()),
                ])
                .await
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task ran").expect("apply succeeded");
    }
    let all = s.scan_prefix("c/").await.unwrap();
    let want: Vec<(String, Vec<u8>)> = (0..200)
        .flat_map(|i| {
            [
                (format!("c/{i:03}/a"), format!("{i}a").into_bytes()),
                (format!("c/{i:03}/b"), format!("{i}b").into_bytes()),
            ]
        })
        .collect();
    assert_eq!(all, want);
}

async fn reopen_keeps_data(backend: &Backend) {
    let s = backend.open().await;
    s.apply(vec![put("r/1", b"one"), put("r/2", b"two")])
        .await
        .unwrap();
    s.delete("r/2").await.unwrap();
    drop(s);
    let s = backend.open().await;
    assert_eq!(
        s.scan_prefix("r/").await.unwrap(),
        vec![("r/1".to_string(), b"one".to_vec())]
    );
}

/// `get_many` answers like one `get` per key, in the keys' order, whether the value is in the
/// backend's durable part (written before a reopen) or only just written, deleted, or never
/// there; more keys than one round trip carries included.
async fn get_many_answers_each_key_in_order(backend: &Backend) {
    let s = backend.open().await;
    let old: Vec<Op> = (0..150)
        .map(|i| put(&format!("m/old/{i:03}"), format!("o{i}").as_bytes()))
        .collect();
    s.apply(old).await.unwrap();
    drop(s);
    let s = backend.open().await;
    let new: Vec<Op> = (0..150)
        .map(|i| put(&format!("m/new/*{i:03}"), format!("n{i}").as_bytes()))
        .collect();
    s.apply(new).await.unwrap();
    s.apply(vec![
        Op::Delete("m/old/007".to_string()),
        Op::Delete("m/new/*008".to_string()),
        put("m/old/009", b"rewritten"),
    ])
    .await
    .unwrap();
    let mut keys = Vec::new();
    for i in (0..150).rev() {
        keys.push(format!("m/new/*{i:03}"));
        keys.push(format!("m/old/{i:03}"));
        keys.push(format!("m/never/{i}"));
    }
    let got = s.get_many(&keys).await.unwrap();
    assert_eq!(got.len(), keys.len());
    for (key, value) in keys.iter().zip(&got) {
        assert_eq!(value, &s.get(key).await.unwrap(), "{key}");
    }
    let at = |k: &str| got[keys.iter().position(|x| x == k).unwrap()].clone();
    assert_eq!(at("m/old/010"), Some(b"o10".to_vec()));
    assert_eq!(at("m/new/*010"), Some(b"n10".to_vec()));
    assert_eq!(at("m/old/009"), Some(b"rewritten".to_vec()));
    assert_eq!(at("m/old/007"), None);
    assert_eq!(at("m/new/*008"), None);
    assert_eq!(at("m/never/3"), None);
    assert!(s.get_many(&[]).await.unwrap().is_empty());
}

async fn check_succeeds_when_healthy(backend: &Backend) {
    let s = backend.open().await;
    s.check().await.unwrap();
    assert!(["embedded", "redis"].contains(&s.kind()));
}

// ---- embedded only ----

#[tokio::test]
async fn embedded_directory_in_use_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let first = EmbeddedStore::open(dir.path()).unwrap();
    let err = EmbeddedStore::open(dir.path()).expect_err("second open must fail");
    let want = format!(
        "data directory {} is in use by another agent",
        dir.path().display()
    );
    assert_eq!(err, Error::Unavailable(want));
    // Once the first store is dropped the directory is free again, at once.
    drop(first);
    EmbeddedStore::open(dir.path()).expect("reopen after drop");
}

#[tokio::test]
async fn embedded_creates_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b/c");
    let s = EmbeddedStore::open(&nested).unwrap();
    s.put("k", b"v".to_vec()).await.unwrap();
    assert!(s.path().starts_with(&nested));
    assert!(s.path().is_file());
}

#[tokio::test]
async fn embedded_unusable_directory_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = EmbeddedStore::open(&file).expect_err("a file is no data directory");
    let Error::Unavailable(msg) = err else {
        panic!("want Unavailable, got {err:?}")
    };
    assert!(msg.contains(&file.display().to_string()), "{msg}");
}

// ---- Redis only ----

#[tokio::test]
async fn redis_node_prefixes_are_isolated() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let n1 = RedisStore::connect(&server.url(), "n1").await.unwrap();
    let n2 = RedisStore::connect(&server.url(), "n2").await.unwrap();
    let n = RedisStore::connect(&server.url(), "n").await.unwrap();
    for (s, v) in [(&n1, "1"), (&n2, "2"), (&n, "0")] {
        s.apply(vec![put("k", v.as_bytes()), put(&format!("only-{v}"), b"")])
            .await
            .unwrap();
    }
    for (s, v) in [(&n1, "1"), (&n2, "2"), (&n, "0")] {
        assert_eq!(s.get("k").await.unwrap(), Some(v.as_bytes().to_vec()));
        assert_eq!(
            s.scan_prefix("").await.unwrap(),
            vec![
                ("k".to_string(), v.as_bytes().to_vec()),
                (format!("only-{v}"), Vec::new()),
            ]
        );
    }
    n1.delete("k").await.unwrap();
    assert_eq!(n2.get("k").await.unwrap(), Some(b"2".to_vec()));
}

#[tokio::test]
async fn redis_rejects_a_node_prefix_that_could_overlap() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    for bad in ["", "a:b"] {
        let err = RedisStore::connect(&server.url(), bad).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{bad:?}: {err:?}");
    }
}

/// A prefix scan on Redis reads its prefix's range of the node's key index, not the whole
/// database: with 20,000 keys of another node beside them, scanning five keys costs one
/// `ZRANGEBYLEX` and no `SCAN` (which walks every key of every node, `COUNT` at a time).
#[tokio::test]
async fn redis_a_prefix_scan_reads_its_prefix_not_the_database() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let other = RedisStore::connect(&url, "other").await.unwrap();
    for chunk in 0..20 {
        let ops = (0..1000)
            .map(|i| put(&format!("u/busy/i{chunk}-{i}"), b"x"))
            .collect();
        other.apply(ops).await.unwrap();
    }
    let mine = RedisStore::connect(&url, "mine").await.unwrap();
    let ops = (0..5)
        .flat_map(|i| {
            [
                put(&format!("u/a/i{i}"), b"a"),
                put(&format!("u/b/i{i}"), b"b"),
            ]
        })
        .collect();
    mine.apply(ops).await.unwrap();
    let (scans, ranges) = (redis_calls(&url, "scan"), redis_calls(&url, "zrangebylex"));
    let got = mine.scan_prefix("u/a/").await.unwrap();
    let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["u/a/i0", "u/a/i1", "u/a/i2", "u/a/i3", "u/a/i4"]);
    assert_eq!(redis_calls(&url, "scan") - scans, 0, "SCANs for one prefix");
    assert_eq!(
        redis_calls(&url, "zrangebylex") - ranges,
        1,
        "ZRANGEBYLEX steps for five keys"
    );
    // A range of more keys than one step holds is read in steps, each after the last.
    let got = other.scan_prefix("u/busy/i1").await.unwrap();
    let want = 1000 + 10 * 1000; // i1-*, and i10-* to i19-*
    assert_eq!(got.len(), want);
    assert!(
        got.windows(2).all(|w| w[0].0 < w[1].0),
        "sorted, no repeats"
    );
}

/// A Redis database written before the key index existed (an earlier build, or 0.1.0) is
/// indexed when the store opens, also when a crash cut an earlier indexing short: every key
/// is found by prefix scans afterwards, and later writes and deletes keep the index exact.
#[tokio::test]
async fn redis_keys_written_without_the_index_are_indexed_when_the_store_opens() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let client = ::redis::Client::open(url.as_str()).expect("redis url");
    let mut con = client.get_connection().expect("connect to redis-server");
    // What an earlier build wrote: plain keys, no index; a neighbour's keys beside them; and
    // an index that a crash left half made (no completion mark).
    let mut pipe = ::redis::pipe();
    for i in 0..2500 {
        pipe.set(format!("chordctl:n1:u/old/i{i:04}"), b"v")
            .ignore();
    }
    pipe.set("chordctl:n1:svc/legacy", b"rec").ignore();
    pipe.set("chordctl:n2:u/old/theirs", b"v").ignore();
    pipe.zadd("chordctl:n1", "u/old/i0007", 0).ignore();
    let () = pipe.query(&mut con).expect("write the old layout");

    let store = RedisStore::connect(&url, "n1").await.unwrap();
    let old = store.scan_prefix("u/old/").await.unwrap();
    assert_eq!(old.len(), 2500, "every key written without the index");
    assert_eq!(old[0].0, "u/old/i0000");
    assert_eq!(old[2499].0, "u/old/i2499");
    assert_eq!(
        store.scan_prefix("svc/").await.unwrap(),
        vec![("svc/legacy".to_string(), b"rec".to_vec())]
    );
    // Later writes and deletes keep the index exact, in any order within a batch.
    store
        .apply(vec![
            Op::Delete("svc/legacy".into()),
            put("svc/new", b"n"),
            put("svc/gone", b"g"),
            Op::Delete("svc/gone".into()),
            Op::Delete("svc/back".into()),
            put("svc/back", b"b"),
        ])
        .await
        .unwrap();
    let keys = |entries: Vec<(String, Vec<u8>)>| -> Vec<String> {
        entries.into_iter().map(|(k, _)| k).collect()
    };
    assert_eq!(
        keys(store.scan_prefix("svc/").await.unwrap()),
        ["svc/back", "svc/new"]
    );
    // The index is complete now: opening again walks nothing.
    let scans = redis_calls(&url, "scan");
    let again = RedisStore::connect(&url, "n1").await.unwrap();
    assert_eq!(
        redis_calls(&url, "scan") - scans,
        0,
        "SCANs on the second open"
    );
    assert_eq!(again.scan_prefix("").await.unwrap().len(), 2502);
    // The neighbour, opened in turn, finds its own key and no other.
    let n2 = RedisStore::connect(&url, "n2").await.unwrap();
    assert_eq!(keys(n2.scan_prefix("").await.unwrap()), ["u/old/theirs"]);
}

/// `chordctl agent create` on `redis`, its stdout and stderr piped.
fn agent_on(redis: &RedisServer) -> Command {
    let url = redis.url();
    let local = "127.0.0.1:0";
    let mut cmd = procs::agent_command(None, local, local, &["--redis", &url]);
    cmd.stderr(Stdio::piped());
    cmd
}

/// With `appendfsync no` Redis leaves syncing its AOF to the OS, so a crash of its host can
/// lose acknowledged writes: the agent refuses to start, with one line that names the setting
/// and what to do, before it writes anything.
#[test]
fn an_agent_refuses_redis_with_appendfsync_no() {
    let Some(redis) = RedisServer::start_with_appendfsync("no") else {
        return;
    };
    let mut agent = procs::Reaped(agent_on(&redis).spawn().expect("run chordctl agent"));
    let status = procs::poll(Duration::from_secs(30), "the agent exits", || {
        agent
            .0
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "still running".to_string())
    });
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = agent.0.stdout.take() {
        out.read_to_string(&mut stdout).expect("read stdout");
    }
    if let Some(mut err) = agent.0.stderr.take() {
        err.read_to_string(&mut stderr).expect("read stderr");
    }
    assert_eq!(status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        line.contains(&redis.url())
            && line.contains("appendfsync=no")
            && line.contains("set appendfsync always"),
        "{line}"
    );
    assert!(stdout.is_empty(), "it must not serve: {stdout}");
    let client = ::redis::Client::open(redis.url()).expect("redis URL");
    let mut conn = client.get_connection().expect("connect to redis");
    let keys: i64 = ::redis::cmd("DBSIZE").query(&mut conn).expect("DBSIZE");
    assert_eq!(keys, 0, "the agent wrote to a Redis it refused");
}

/// With `appendfsync everysec` the agent starts, and warns that a crash of the Redis host can
/// lose about the last second of acknowledged writes.
#[test]
fn an_agent_on_redis_with_appendfsync_everysec_warns_what_can_be_lost() {
    let Some(redis) = RedisServer::start_with_appendfsync("everysec") else {
        return;
    };
    // Returns once the agent printed its address line: it started.
    let mut agent = procs::AgentProc::spawn(agent_on(&redis));
    let stderr = agent.child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let warning = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("appendfsync=everysec") => break line,
            Ok(line) => seen.push(line),
            Err(e) => panic!("no appendfsync warning ({e}); stderr: {seen:#?}"),
        }
    };
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("power loss or OS crash") && warning.contains("about the last second"),
        "{warning}"
    );
}

#[tokio::test]
async fn redis_down_at_start_is_unavailable_without_leaking_the_password() {
    let (_refusing, addr) = crate::support::testing::refused_addr();
    let port = addr.port();
    let url = format!("redis://:hunter2@127.0.0.1:{port}/");
    let started = Instant::now();
    let err = RedisStore::connect(&url, "n1").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let Error::Unavailable(msg) = err else {
        panic!("want Unavailable, got {err:?}")
    };
    assert!(msg.contains("cannot connect"), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(!msg.contains("hunter2"), "password leaked: {msg}");
}

/// Redis crashes and comes back: calls fail fast meanwhile, then the same store works again
/// and nothing acknowledged before the crash is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_fast_and_recovers_on_the_same_store() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let s = RedisStore::connect(&server.url(), "n1").await.unwrap();
    s.apply(vec![put("svc/a", b"1"), put("svc/b", b"2")])
        .await
        .unwrap();

    server.stop();
    // Each kind of call fails as unavailable, promptly, and keeps doing so while Redis is down.
    for _ in 0..3 {
        assert_all_unavailable(&s, &server.port().to_string()).await;
    }

    server.restart();
    let value = get_once_back(&s, "svc/a").await;
    assert_eq!(value, Some(b"1".to_vec()));
    s.put("svc/c", b"3".to_vec()).await.unwrap();
    let keys: Vec<String> = s
        .scan_prefix("svc/")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["svc/a", "svc/b", "svc/c"]);
}

/// A Redis that hangs (stopped, not dead) cannot hold calls longer than the call timeout, and
/// the same store works again once it resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_that_hangs_times_out_and_recovers() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = RedisStore::connect(&server.url(), "n1").await.unwrap();
    s.put("k", b"v".to_vec()).await.unwrap();
    server.pause();
    assert_all_unavailable(&s, "no answer within").await;
    server.resume();
    assert_eq!(get_once_back(&s, "k").await, Some(b"v".to_vec()));
}

/// `key`'s value, read from `s` as soon as it answers again: polls with a deadline and accepts
/// only retryable errors meanwhile.
async fn get_once_back(s: &RedisStore, key: &str) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match s.get(key).await {
            Ok(value) => return value,
            Err(e) if Instant::now() < deadline => {
                assert!(e.is_retryable(), "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the store did not recover within 20 s: {e}"),
        }
    }
}

/// Every Store call fails with Unavailable, a message saying so and naming `detail`, and
/// returns within a bound (the call timeout plus slack for a loaded machine).
async fn assert_all_unavailable(s: &RedisStore, detail: &str) {
    let bound = store::redis::CALL_TIMEOUT + Duration::from_secs(3);
    let calls: [(&str, BoxFuture<'_, chordctl::Result<()>>); 4] = [
        ("get", Box::pin(async { s.get("svc/a").await.map(|_| ()) })),
        ("put", Box::pin(s.put("svc/c", b"3".to_vec()))),
        (
            "scan_prefix",
            Box::pin(async { s.scan_prefix("svc/").await.map(|_| ()) }),
        ),
        ("check", Box::pin(s.check())),
    ];
    for (name, call) in calls {
        let started = Instant::now();
        let err = call.await.expect_err("Redis is unavailable");
        let took = started.elapsed();
        assert!(took < bound, "{name} took {took:?}");
        let Error::Unavailable(msg) = &err else {
            panic!("{name}: want Unavailable, got {err:?}")
        };
        assert!(
            msg.starts_with("store unavailable: redis "),
            "{name}: {msg}"
        );
        assert!(
            msg.contains(detail),
            "{name}: {msg} should mention {detail}"
        );
    }
}

/// Five agents in one ring (K = 3): the first four on the embedded store, the fifth on the
/// `redis-server` at `url`.
fn five_with_the_last_on_redis(url: &str) -> Vec<procs::AgentProc> {
    let first = procs::AgentProc::start(None, &[]);
    let seed = first.ring.clone();
    let mut agents = vec![first];
    for _ in 0..3 {
        agents.push(procs::AgentProc::start(Some(&seed), &[]));
    }
    agents.push(procs::AgentProc::start(Some(&seed), &["--redis", url]));
    agents
}

/// A copy a node no longer keeps goes back to its owner even while the owner of another such
/// copy cannot take one. Before, the first failure ended the node's hand-back round: an owner
/// whose store was down (here its `redis-server`) kept every copy after its own on the node,
/// to be handed back only once that store returned.
///
/// Five agents (K = 3), one of them on Redis. Agent `holder` is given copies of two services
/// it neither owns nor replicates: `a-…`, owned by the Redis agent, and `b-…`, owned by an
/// embedded one (copies are handed back in name order, so `a-…` comes first).
#[test]
fn a_copy_goes_back_to_its_owner_while_another_copys_owner_has_its_store_down() {
    use crate::support::http::call;
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let agents = five_with_the_last_on_redis(&url);
    let on_redis = 4;
    // A holder and two services it does not keep: one owned by the Redis agent, one by an
    // embedded agent.
    let find = |prefix: &str, want: &dyn Fn(&[usize]) -> bool| {
        (0..20_000)
            .map(|i| format!("{prefix}-{i}"))
            .find(|s| want(&procs::ring_order(&agents, s)))
    };
    // A node keeps the ranges of its K - 1 = 2 predecessors: the holder's copies of what its
    // first two successors own are ones it does not keep.
    let (holder, a, b) = (0..on_redis)
        .find_map(|holder| {
            let a = find("a-orphan", &|o| {
                o[0] == on_redis && !o[..3].contains(&holder)
            })?;
            let b = find("b-orphan", &|o| {
                o[0] != on_redis && !o[..3].contains(&holder)
            })?;
            Some((holder, a, b))
        })
        .expect("two services some embedded agent does not keep");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pool = chordctl::rpc::Pool::new(Duration::from_secs(5));
    let urls: Vec<String> = agents.iter().map(procs::AgentProc::url).collect();
    rt.block_on(async {
        procs::ring_of(&urls, 5).await;
        // One instance in each, through the first agent; then the holder is given a copy of
        // each (as a partition, a join or a replica set that moved on leaves one).
        let mut orphan = Vec::new();
        for service in [&a, &b] {
            let (st, body) = call(
                "PUT",
                &format!("{}/v1/services/{service}/instances/x", urls[0]),
                Some(serde_json::json!({"address": "h", "port": 1})),
            )
            .await;
            assert_eq!(st, 200, "{body}");
            let owner = &agents[procs::ring_order(&agents, service)[0]];
            let entries = procs::fetch_at(&pool, owner, vec![format!("u/{service}/x")]).await;
            assert_eq!(entries.len(), 1, "{service}/x at its owner");
            orphan.extend(entries);
        }
        // The Redis agent's store goes away (the agent stays on the ring); then the holder is
        // given both copies, so that a's cannot go back before the checks below. (b's may go
        // back at once: that is what the test waits for.)
        redis.stop();
        procs::handoff_to(&pool, &agents[holder], orphan).await;
        let held = async |service: &str| -> Result<bool, String> {
            let rec = procs::records_at(&pool, [&agents[holder]], service).await?;
            Ok(rec[0]
                .as_ref()
                .is_some_and(|r| r.unit_ids().next().is_some()))
        };
        assert!(
            held(&a).await.expect("read the holder"),
            "the holder has a's copy"
        );
        let dropped = async |service: &str, what: &str| {
            crate::support::eventually(what, Duration::from_secs(60), async || {
                match held(service).await? {
                    false => Ok(()),
                    true => Err(format!("the holder still has {service}")),
                }
            })
            .await
        };
        dropped(
            &b,
            "the holder hands b back and drops it while a's owner cannot take a",
        )
        .await;
        assert!(
            held(&a).await.expect("read the holder"),
            "a's copy stays while its owner cannot take it"
        );
        redis.restart();
        dropped(&a, "the holder hands a back once its owner's store is back").await;
    });
}

/// How many `command`s (lower case) the `redis-server` at `url` has answered since it started.
fn redis_calls(url: &str, command: &str) -> u64 {
    let client = ::redis::Client::open(url).expect("redis url");
    let mut con = client.get_connection().expect("connect to redis-server");
    let info: String = ::redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut con)
        .expect("INFO commandstats");
    let line = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Deleting a copy handed back to its owner checks that it is unchanged with one scan, not
/// one read per unit: a copy holds thousands of units, and on Redis each read was a round
/// trip (in a fault campaign, a node on Redis took over 3 s a hand-back round, while copies
/// of removed instances waited on it).
#[test]
fn a_handed_back_copy_is_dropped_without_a_store_read_per_unit() {
    use crate::support::http::call;
    const UNITS: usize = 1500;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let agents = five_with_the_last_on_redis(&url);
    let holder = 4;
    // A service the holder (on Redis) neither owns nor replicates.
    let service = (0..20_000)
        .map(|i| format!("dropped-{i}"))
        .find(|s| !procs::ring_order(&agents, s)[..3].contains(&holder))
        .expect("a service the holder does not keep");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pool = chordctl::rpc::Pool::new(Duration::from_secs(10));
    let urls: Vec<String> = agents.iter().map(procs::AgentProc::url).collect();
    rt.block_on(async {
        procs::ring_of(&urls, 5).await;
        let mut tasks = Vec::new();
        for part in 0..8 {
            let (base, service) = (urls[0].clone(), service.clone());
            tasks.push(tokio::spawn(async move {
                for i in (part..UNITS).step_by(8) {
                    let (st, body) = call(
                        "PUT",
                        &format!("{base}/v1/services/{service}/instances/i{i}"),
                        Some(serde_json::json!({"address": "h", "port": 1})),
                    )
                    .await;
                    assert_eq!(st, 200, "{body}");
                }
            }));
        }
        for t in tasks {
            t.await.expect("registrations");
        }
        let owner = &agents[procs::ring_order(&agents, &service)[0]];
        let keys: Vec<String> = (0..UNITS).map(|i| format!("u/{service}/i{i}")).collect();
        let entries = procs::fetch_at(&pool, owner, keys).await;
        assert_eq!(entries.len(), UNITS, "the owner's units");
        let before = redis_calls(&url, "get");
        procs::handoff_to(&pool, &agents[holder], entries).await;
        crate::support::eventually(
            "the holder hands the copy back and drops it",
            Duration::from_secs(60),
            async || {
                let rec = procs::records_at(&pool, [&agents[holder]], &service).await?;
                match rec[0]
                    .as_ref()
                    .is_some_and(|r| r.unit_ids().next().is_some())
                {
                    true => Err(format!("the holder still has {service}")),
                    false => Ok(()),
                }
            },
        )
        .await;
        let gets = redis_calls(&url, "get") - before;
        assert!(
            gets < UNITS as u64 / 3,
            "{gets} GETs on the holder's redis-server to drop a copy of {UNITS} units"
        );
    });
}
