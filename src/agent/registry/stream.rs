//! Replication streams: the owner's changes go to each replica through one stream per replica,
//! not one message per group.
//!
//! Every group an owner commits (one per service, see `writes.rs`) is queued on the stream of
//! each of its replicas. A stream has at most [`IN_FLIGHT`] messages outstanding; what is
//! queued while they are out leaves in the next message, all of it (up to [`BATCH_ENTRIES`]
//! entries). Under load the groups of many services travel together — one RPC frame, one merge
//! and one store batch (one fsync) at the replica for all of them — and a lone write is sent at
//! once, without waiting for company. Messages of one stream may overlap in flight; what they
//! carry is merged by version (`registry/unit.rs`), so the order in which they land does not
//! change the result.
//!
//! When a message fails (the replica is down, leaving, or too slow), every group queued behind
//! it fails at once with the same error: each writer counts one confirmation less, as if its
//! own message had failed, and the replica's copy is repaired by anti-entropy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::{guard, Registry, TRANSFER_CHUNK};
use crate::registry::ops::{Entry, RegistryRequest};
use crate::ring::NodeRef;
use crate::Result;

/// Messages a stream has outstanding at once: two keeps the link busy while the next batch
/// gathers.
const IN_FLIGHT: usize = 2;

/// Most entries in one message (more than one group's worth is cut at a group's end; a group
/// larger than this goes alone).
const BATCH_ENTRIES: usize = TRANSFER_CHUNK;

/// One group waiting to be sent, and its writer's answer.
struct Queued {
    entries: Arc<Vec<Entry>>,
    done: oneshot::Sender<Result<()>>,
}

/// The stream to one replica.
#[derive(Default)]
struct Stream {
    queued: Vec<Queued>,
    in_flight: usize,
}

impl Stream {
    /// The next message's groups: queued groups from the oldest, while they fit in
    /// [`BATCH_ENTRIES`] (always at least one).
    fn next_batch(&mut self) -> Vec<Queued> {
        let mut entries = 0;
        let mut n = 0;
        for q in &self.queued {
            if n > 0 && entries + q.entries.len() > BATCH_ENTRIES {
                break;
            }
            entries += q.entries.len();
            n += 1;
        }
        self.queued.drain(..n).collect()
    }
}

/// The streams to this node's replicas, by ring address.
#[derive(Default)]
pub(super) struct Streams {
    by_peer: Mutex<HashMap<String, Arc<Mutex<Stream>>>>,
}

impl Registry {
    /// Queue `entries` on the stream to `node`; the receiver gets whether `node` stored them.
    pub(super) fn stream_to(
        self: &Arc<Self>,
        node: &NodeRef,
        entries: Arc<Vec<Entry>>,
    ) -> oneshot::Receiver<Result<()>> {
        let (done, answer) = oneshot::channel();
        self.ring.metrics().stream_group();
        let stream = guard(&self.streams.by_peer)
            .entry(node.addr.clone())
            .or_default()
            .clone();
        let batch = {
            let mut s = guard(&stream);
            s.queued.push(Queued { entries, done });
            if s.in_flight >= IN_FLIGHT {
                None
            } else {
                s.in_flight += 1;
                Some(s.next_batch())
            }
        };
        if let Some(batch) = batch {
            let me = self.clone();
            let node = node.clone();
            tokio::spawn(async move { me.send_stream(node, stream, batch).await });
        }
        answer
    }

    /// Send `batch` to `node`, then whatever queued meanwhile, until the stream is empty.
    async fn send_stream(
        self: Arc<Self>,
        node: NodeRef,
        stream: Arc<Mutex<Stream>>,
        mut batch: Vec<Queued>,
    ) {
        loop {
            let entries: Vec<Entry> = batch
                .iter()
                .flat_map(|q| q.entries.iter().cloned())
                .collect();
            self.ring.metrics().stream_message();
            let sent = self
                .call(&node, RegistryRequest::Handoff { entries })
                .await
                .map(|_| ());
            let failed = sent.as_ref().err().cloned();
            if failed.is_some() {
                self.mark_unsynced();
            }
            for q in batch {
                let _ = q.done.send(sent.clone());
            }
            let next = {
                let mut s = guard(&stream);
                if let Some(e) = failed {
                    // Behind a failed message: fail now rather than try the same peer again.
                    for q in s.queued.drain(..) {
                        let _ = q.done.send(Err(e.clone()));
                    }
                }
                if s.queued.is_empty() {
                    s.in_flight -= 1;
                    None
                } else {
                    Some(s.next_batch())
                }
            };
            match next {
                Some(b) => batch = b,
                None => break,
            }
        }
        // An idle stream leaves the map (peers come and go); a writer that still holds it
        // starts its own message, so nothing queued is stranded.
        let mut peers = guard(&self.streams.by_peer);
        if let Some(s) = peers.get(&node.addr) {
            let idle = Arc::ptr_eq(s, &stream) && {
                let s = guard(s);
                s.in_flight == 0 && s.queued.is_empty()
            };
            if idle {
                peers.remove(&node.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(n: usize) -> (Queued, oneshot::Receiver<Result<()>>) {
        let (done, rx) = oneshot::channel();
        let entries = (0..n)
            .map(|i| Entry {
                key: format!("k{i}"),
                value: vec![],
            })
            .collect();
        (
            Queued {
                entries: Arc::new(entries),
                done,
            },
            rx,
        )
    }

    #[test]
    fn a_batch_takes_queued_groups_in_order_up_to_the_entry_limit() {
        let mut s = Stream::default();
        let mut rxs = Vec::new();
        for n in [10, 20, BATCH_ENTRIES - 30, 1, 5] {
            let (q, rx) = queued(n);
            s.queued.push(q);
            rxs.push(rx);
        }
        let first = s.next_batch();
        assert_eq!(
            first.iter().map(|q| q.entries.len()).collect::<Vec<_>>(),
            vec![10, 20, BATCH_ENTRIES - 30]
        );
        let second = s.next_batch();
        assert_eq!(
            second.iter().map(|q| q.entries.len()).collect::<Vec<_>>(),
            vec![1, 5]
        );
        assert!(s.queued.is_empty());
    }

    #[test]
    fn a_group_larger_than_the_limit_goes_alone() {
        let mut s = Stream::default();
        let (big, _a) = queued(BATCH_ENTRIES + 7);
        let (small, _b) = queued(1);
        s.queued.push(big);
        s.queued.push(small);
        assert_eq!(s.next_batch().len(), 1);
        assert_eq!(s.next_batch().len(), 1);
    }
}
