//! Routing: every registry operation goes to its service's owner, found by a ring lookup (or
//! a recent one), retried while ownership settles; reads fall back to replicas when the owner
//! does not answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{guard, Registry, LIST_CACHE_TTL, ROUTE_CACHE_MAX, ROUTE_CACHE_TTL, ROUTE_DEADLINE};
use crate::registry::ops::{gvip_id, RawJson, RegistryRequest, RegistryResponse, WriteOp};
use crate::registry::{Policy, Record, ServiceSummary};
use crate::ring::{Id, LookupResult, NodeRef};
use crate::rpc::{CallError, Request, Response};
use crate::{Error, Result};

impl Registry {
    /// Send `req` to the owner of `key_id`, retrying while ownership settles.
    pub(super) async fn route(
        self: &Arc<Self>,
        key_id: Id,
        req: RegistryRequest,
    ) -> Result<RegistryResponse> {
        let started = Instant::now();
        let mut last = Error::routing("no owner found");
        while started.elapsed() < ROUTE_DEADLINE {
            match self.try_route(key_id, &req).await {
                Ok(r) => return Ok(r),
                // Only routing problems (ownership settling, an unreachable owner) are worth
                // retrying; anything else (bad input, a store outage at the owner) is the answer.
                Err(e @ Error::Routing(_)) => last = e,
                Err(e) => return Err(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(last)
    }

    async fn try_route(
        self: &Arc<Self>,
        key_id: Id,
        req: &RegistryRequest,
    ) -> Result<RegistryResponse> {
        // This node owns the key (its predecessor is known, or it is alone): no lookup.
        if self.owns(&key_id) {
            // The request stays here for a retry; the write takes a copy of its operation,
            // which shares the registration rather than copying it.
            if let RegistryRequest::Write { service, op } = req {
                return self.apply(service, key_id, op.clone()).await;
            }
            return self.handle_local(req.clone()).await;
        }
        // The owner found by a recent lookup: one RPC. A routing failure (the node no longer
        // owns the key, or does not answer) drops the entry and falls through to a lookup.
        if let Some(owner) = self.cached_owner(&key_id) {
            match self.call(&owner, req.clone()).await {
                Err(Error::Routing(_)) => {
                    guard(&self.routes).remove(&key_id);
                }
                answer => return answer,
            }
        }
        let found = self.ring.lookup(key_id).await?;
        let owner = found.owner().clone();
        if owner.id == self.ring.me().id {
            return self.handle_local(req.clone()).await;
        }
        self.cache_route(key_id, &found);
        match self.call(&owner, req.clone()).await {
            // The owner does not answer: a read is served by the next replica that does.
            Err(Error::Routing(why))
                if matches!(
                    req,
                    RegistryRequest::Read { .. } | RegistryRequest::Discover { .. }
                ) =>
            {
                let (RegistryRequest::Read { service } | RegistryRequest::Discover { service, .. }) =
                    req
                else {
                    return Err(Error::Routing(why));
                };
                let chain = found.replica_chain(self.replicas);
                for node in chain.iter().skip(1) {
                    let r = RegistryRequest::ReadReplica {
                        service: service.clone(),
                    };
                    let answer = if node.id == self.ring.me().id {
                        self.handle_local(r).await
                    } else {
                        self.call(node, r).await
                    };
                    if let Ok(answer) = answer {
                        return match (req, answer) {
                            (
                                RegistryRequest::Discover { healthy, tag, .. },
                                RegistryResponse::Record(Some(rec)),
                            ) => Ok(RegistryResponse::discover_answer(
                                &rec,
                                *healthy,
                                tag.as_deref(),
                            )),
                            (RegistryRequest::Discover { .. }, _) => {
                                Err(Error::not_found(format!("service {service} not found")))
                            }
                            (_, answer) => Ok(answer),
                        };
                    }
                }
                Err(Error::Routing(why))
            }
            other => other,
        }
    }

    /// The owner of `key` from a lookup made less than [`ROUTE_CACHE_TTL`] ago.
    pub(super) fn cached_owner(&self, key: &Id) -> Option<NodeRef> {
        let mut routes = guard(&self.routes);
        match routes.get(key) {
            Some((at, found)) if at.elapsed() < ROUTE_CACHE_TTL => Some(found.owner().clone()),
            Some(_) => {
                routes.remove(key);
                None
            }
            None => None,
        }
    }

    pub(super) fn cache_route(&self, key: Id, found: &LookupResult) {
        let mut routes = guard(&self.routes);
        if routes.len() >= ROUTE_CACHE_MAX {
            routes.retain(|_, (at, _)| at.elapsed() < ROUTE_CACHE_TTL);
        }
        if routes.len() < ROUTE_CACHE_MAX {
            routes.insert(key, (Instant::now(), found.clone()));
        }
    }

    /// Call `node` with a registry request.
    pub async fn call(&self, node: &NodeRef, req: RegistryRequest) -> Result<RegistryResponse> {
        self.call_within(node, req, self.ring.pool().timeout())
            .await
    }

    /// [`Registry::call`] waiting at most `timeout` (a long poll waits longer than a call).
    pub(super) async fn call_within(
        &self,
        node: &NodeRef,
        req: RegistryRequest,
        timeout: Duration,
    ) -> Result<RegistryResponse> {
        match self
            .ring
            .pool()
            .call_with_timeout(&node.addr, Request::Registry(req), timeout)
            .await
        {
            Ok(Response::Registry(answer)) => Ok(answer),
            Ok(Response::Error(e)) => Err(e),
            Ok(other) => Err(Error::internal(format!("unexpected answer {other:?}"))),
            Err(e @ CallError::Timeout(..)) => {
                // Slow is not dead: a long fsync, or a write waiting on a dead replica, must
                // not reshape the ring. The ring's own probe decides, at once (a black hole
                // is dropped before the caller's retry routes to it again).
                self.ring.probe(node).await;
                Err(Error::routing(e.to_string()))
            }
            Err(e) => {
                // Refused, broken or unauthenticated: the peer is gone (or not one of us).
                // One at its cap of connections is alive.
                if e.means_peer_down() {
                    self.ring.with(|c| c.suspect(&node.id));
                }
                Err(Error::routing(e.to_string()))
            }
        }
    }

    /// Apply a write to `service` at its owner.
    pub async fn write(self: &Arc<Self>, service: &str, op: WriteOp) -> Result<RegistryResponse> {
        let req = RegistryRequest::Write {
            service: service.to_string(),
            op,
        };
        self.route(Id::of_key(service), req).await
    }

    /// Read `service`'s record from its owner.
    pub async fn read(self: &Arc<Self>, service: &str) -> Result<Option<Record>> {
        let req = RegistryRequest::Read {
            service: service.to_string(),
        };
        match self.route(Id::of_key(service), req).await? {
            RegistryResponse::Record(r) => Ok(r),
            other => Err(Error::internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// The discover answer for `service` (`{"service", "instances"}`, filtered), the
    /// service's change index and whether it is in panic, made at the owner and passed on as
    /// JSON text: through a non-owner this costs one RPC and no record decoding.
    pub async fn discover_json(
        self: &Arc<Self>,
        service: &str,
        healthy: bool,
        tag: Option<&str>,
    ) -> Result<(RawJson, u64, bool)> {
        let req = RegistryRequest::Discover {
            service: service.to_string(),
            healthy,
            tag: tag.map(str::to_string),
        };
        match self.route(Id::of_key(service), req).await {
            Ok(RegistryResponse::Json { json, index }) => Ok((json, index, false)),
            Ok(RegistryResponse::PanicJson { json, index }) => Ok((json, index, true)),
            Ok(other) => Err(Error::internal(format!("unexpected answer {other:?}"))),
            Err(e) => Err(e),
        }
    }

    /// `service`'s health policy, from its owner (`None`: no such service).
    pub async fn policy(self: &Arc<Self>, service: &str) -> Result<Option<Policy>> {
        let req = RegistryRequest::Policy {
            service: service.to_string(),
        };
        match self.route(Id::of_key(service), req).await? {
            RegistryResponse::Policy(p) => Ok(p),
            other => Err(Error::internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// The service holding `gvip`, from the claim's owner.
    pub async fn resolve_gvip(self: &Arc<Self>, gvip: &str) -> Result<Option<String>> {
        let id = gvip_id(gvip);
        let req = RegistryRequest::ResolveGvip {
            gvip: gvip.to_string(),
        };
        match self.route(id, req).await? {
            RegistryResponse::Service(s) => Ok(s),
            other => Err(Error::internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// Every service on the ring with its instances counted by state: ask every node for what
    /// it owns.
    /// The answer is reused for [`LIST_CACHE_TTL`], and callers that arrive while one walk
    /// is under way wait for it: a burst of `GET /v1/services` walks the ring once, not once
    /// per request.
    pub async fn list(self: &Arc<Self>) -> Result<Vec<ServiceSummary>> {
        let mut listed = self.listed.lock().await;
        if let Some((at, list)) = listed.as_ref() {
            if at.elapsed() < LIST_CACHE_TTL {
                return Ok(list.clone());
            }
        }
        let list = self.walk_list().await?;
        *listed = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// Ask every node of the ring for the records of its range as the walk found it (from the
    /// node before it): a node that knows a newer predecessor than the walk does, or that
    /// took a joiner's range and is now its successor, still answers for the whole range from
    /// what it holds. A node that cannot answer (still taking its range over after a join, or
    /// gone without the ring knowing yet) is stood in for by its successors, which hold its
    /// range: the first handed it over or keeps the copy it had as owner, the next K−2 keep
    /// replicas. Only a range nobody holding it answers for fails the list. (With K = 1 a
    /// node gone leaves its successor answering with nothing of its range: its services
    /// are missing from the list, as they are from discover.)
    async fn walk_list(self: &Arc<Self>) -> Result<Vec<ServiceSummary>> {
        let nodes = self.ring.walk(100_000).await?;
        let n = nodes.len();
        let mut all: BTreeMap<String, ServiceSummary> = BTreeMap::new();
        for (i, (node, _, _)) in nodes.iter().enumerate() {
            let before = &nodes[(i + n - 1) % n].0;
            let req = RegistryRequest::ListRange {
                from: before.id,
                to: node.id,
            };
            let list = match self.ask(node, req.clone()).await {
                Ok(list) => list,
                Err(e) => {
                    // Only successors that hold the range: the first (it handed the range to
                    // a joiner, or keeps the first copy), and the others that keep copies.
                    let holders = self.replicas.saturating_sub(1).max(1);
                    let mut stood_in = None;
                    for j in 1..n.min(1 + holders) {
                        if let Ok(list) = self.ask(&nodes[(i + j) % n].0, req.clone()).await {
                            stood_in = Some(list);
                            break;
                        }
                    }
                    match stood_in {
                        Some(list) => list,
                        // An agent of an earlier build answers that it cannot read ListRange;
                        // one that did not answer at all is not asked again.
                        None if !matches!(e, Error::Routing(_)) => self
                            .ask(node, RegistryRequest::ListOwned)
                            .await
                            .map_err(|_| e)?,
                        None => return Err(e),
                    }
                }
            };
            for s in list {
                all.insert(s.service.clone(), s);
            }
        }
        Ok(all.into_values().collect())
    }

    /// The summaries `node` answers `req` with (this node answers itself).
    async fn ask(
        self: &Arc<Self>,
        node: &NodeRef,
        req: RegistryRequest,
    ) -> Result<Vec<ServiceSummary>> {
        let got = if node.id == self.ring.me().id {
            self.handle_local(req).await?
        } else {
            self.call(node, req).await?
        };
        match got {
            RegistryResponse::Summaries(list) => Ok(list),
            other => Err(Error::internal(format!("unexpected answer {other:?}"))),
        }
    }
}
