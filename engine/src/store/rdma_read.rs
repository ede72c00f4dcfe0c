//! Remote reads over RDMA: the shard's side of `rdma::shard`.
//!
//! For each data shard a batch reads from, the reader:
//! 1. makes sure it has connected channels: it reserves QPs for what idle
//!    channels do not cover and sends their endpoints in one `RdmaConnect`
//!    per rail on the control connection; the data shard answers with its
//!    responder QPs and its pool's address and rkey on that rail;
//! 2. posts the pages as chained one-sided READs straight into the
//!    destinations, and polls them with a yield to the executor between
//!    polls (other tasks of the shard keep running);
//! 3. asks the data shard, in one `DataValidate`, whether every page that
//!    landed is still the page its location named: an owner that evicted
//!    and reused a slot while the READ was in flight bumped its generation,
//!    so such a page is a miss, never wrong bytes.
//!
//! A data shard without RDMA (it answers `rails: 0`) is read over TCP
//! (`DataRead`) until the next membership change; one whose QP exchange
//! fails, for the next 30 s. READ errors and timeouts are misses (and read
//! failures), counted by the reader.

use super::remote::{expect_reply, DataReads, PageRead};
use super::shard::{PeerRdma, ShardStore};
use crate::rdma::rail::RemotePool;
use crate::rdma::reader::ReadItem;
use crate::rdma::verbs::QpEndpoint;
use crate::wire::{
    DataValidate, DataValidateReply, QpInfo, RdmaConnect, RdmaConnectReply, ReadStatus,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Polls without finding a settled batch before the shard naps instead of
/// spinning (a real NIC completes a READ batch in microseconds; a slow peer
/// should not cost a whole core).
const SPIN_POLLS: u32 = 256;
/// The nap.
const POLL_NAP: Duration = Duration::from_micros(50);
/// How long a data shard whose QP exchange failed is read over TCP before
/// RDMA is tried again.
const RDMA_RETRY: Duration = Duration::from_secs(30);

pub(super) fn to_info(ep: &QpEndpoint) -> QpInfo {
    QpInfo {
        qp_num: ep.qp_num,
        psn: ep.psn,
        lid: ep.lid,
        gid: ep.gid,
        mtu: ep.mtu,
    }
}

pub(super) fn to_endpoint(info: &QpInfo) -> QpEndpoint {
    QpEndpoint {
        qp_num: info.qp_num,
        psn: info.psn,
        lid: info.lid,
        gid: info.gid,
        mtu: info.mtu,
    }
}

impl ShardStore {
    /// Reads `reads` with RDMA READs; `None` when this data shard is to be
    /// read over TCP instead (no RDMA on either side, or the QP exchange
    /// failed).
    pub(super) async fn read_pages_rdma(&self, reads: &DataReads) -> Option<Vec<PageRead>> {
        let rdma = self.rdma.as_ref()?;
        let n = reads.targets.len();
        let pools = self.rdma_channels(reads.endpoint, n).await?;
        let items: Vec<ReadItem> = reads
            .targets
            .iter()
            .map(|&(addr, _, _, loc)| ReadItem {
                location: loc.pool_location(),
                dst: addr as *mut u8,
            })
            .collect();
        let ep = reads.endpoint;
        // SAFETY: the batch's caller vouched for each destination and blocks
        // until this part completes, which is after `finish` below.
        let batch = unsafe { rdma.borrow_mut().post(&ep, &pools, &items) };
        let mut idle_polls = 0u32;
        while !rdma.borrow_mut().poll(batch, &ep) {
            idle_polls += 1;
            if idle_polls < SPIN_POLLS {
                glommio::executor().yield_now().await;
            } else {
                glommio::timer::sleep(POLL_NAP).await;
            }
        }
        let landed = rdma.borrow_mut().finish(batch, &ep, &items);
        Some(self.validate(ep, reads, landed).await)
    }

    /// The data shard's pools per rail, after making sure enough connected
    /// channels exist for a batch of `pages` (None: read it over TCP).
    async fn rdma_channels(&self, ep: SocketAddr, pages: usize) -> Option<Vec<RemotePool>> {
        let rdma = self.rdma.as_ref()?;
        let known = self.rdma_peers.borrow().get(&ep).cloned();
        // Rails pair by index: a batch stripes over the rails both ends
        // have (learnt from the first answer).
        let (mut rails, mut pools) = match known {
            Some(PeerRdma::TcpOnly) => return None,
            Some(PeerRdma::TcpUntil(t)) if Instant::now() < t => return None,
            Some(PeerRdma::Pools(p)) => (p.len(), p),
            // Unknown, or the retry delay is over: connect every rail.
            _ => (rdma.borrow().rails(), Vec::new()),
        };
        let mut rail = 0;
        while rail < rails {
            // Rail r carries pages r, r+rails, ...; chains of at most one
            // send queue each.
            let share = pages / rails + usize::from(rail < pages % rails);
            let depth = rdma.borrow().send_depth(rail);
            let missing = rdma.borrow().missing_for(&ep, rail, share.div_ceil(depth));
            if missing == 0 && rail < pools.len() {
                rail += 1;
                continue;
            }
            let reserved = rdma.borrow_mut().reserve(&ep, rail, missing);
            let local = match reserved {
                Ok(local) => local,
                Err(e) => {
                    // Every channel busy: this rail's pages will be misses
                    // (counted as lease failures), not a reason to drop
                    // RDMA for this peer.
                    self.log_error(Instant::now(), format_args!("RDMA to {ep}: {e}"));
                    Vec::new()
                }
            };
            if local.is_empty() && rail < pools.len() {
                rail += 1; // nothing new to connect, and the pool is known
                continue;
            }
            // Numbered with the live list it carries, at the same moment.
            self.rdma_connect_seq.set(self.rdma_connect_seq.get() + 1);
            let request = RdmaConnect {
                node: self.node_ref.0,
                shard: self.id.shard,
                rail: rail as u16,
                seq: self.rdma_connect_seq.get(),
                live: rdma.borrow().live_qps(&ep, rail),
                endpoints: local.iter().map(to_info).collect(),
            };
            let reply = self
                .exchange(ep, self.id.request_timeout, async |conn| {
                    let id = conn.next_id();
                    conn.send(&request, id, &[]).await?;
                    expect_reply::<RdmaConnectReply>(conn, id).await
                })
                .await;
            let reply = match reply {
                Ok(r) if r.rails > 0 => r,
                other => {
                    rdma.borrow_mut().abandon(&ep, rail, &local);
                    let state = match other {
                        // A node on TCP: no point asking again.
                        Ok(_) => PeerRdma::TcpOnly,
                        Err(e) => {
                            self.log_error(
                                Instant::now(),
                                format_args!("RDMA QP exchange with {ep} failed ({e}); reading it over TCP for {RDMA_RETRY:?}"),
                            );
                            PeerRdma::TcpUntil(Instant::now() + RDMA_RETRY)
                        }
                    };
                    self.rdma_peers.borrow_mut().insert(ep, state);
                    return None;
                }
            };
            let remote: Vec<QpEndpoint> = reply.endpoints.iter().map(to_endpoint).collect();
            if let Err(e) = rdma.borrow_mut().complete(&ep, rail, &local, &remote) {
                self.log_error(Instant::now(), format_args!("RDMA to {ep}: {e}"));
            }
            rails = rails.min(usize::from(reply.rails));
            let pool = RemotePool {
                addr: reply.pool_addr,
                rkey: reply.pool_rkey,
            };
            match pools.get_mut(rail) {
                Some(p) => *p = pool,
                None => pools.push(pool),
            }
            rail += 1;
        }
        pools.truncate(rails);
        self.rdma_peers
            .borrow_mut()
            .insert(ep, PeerRdma::Pools(pools.clone()));
        Some(pools)
    }

    /// The post-READ generation check: one `DataValidate` for the pages that
    /// landed. A failed exchange makes them all misses.
    async fn validate(
        &self,
        ep: SocketAddr,
        reads: &DataReads,
        landed: Vec<bool>,
    ) -> Vec<PageRead> {
        // A READ that did not land (completion error, timeout, never posted)
        // is a failed transfer whatever the slot holds.
        let mut outcome: Vec<PageRead> = landed
            .iter()
            .map(|&l| if l { PageRead::Gone } else { PageRead::Failed })
            .collect();
        let positions: Vec<usize> = (0..landed.len()).filter(|&i| landed[i]).collect();
        if positions.is_empty() {
            return outcome;
        }
        let request = DataValidate {
            node: reads.request.node,
            items: positions.iter().map(|&i| reads.request.items[i]).collect(),
        };
        let reply = self
            .exchange(ep, self.id.request_timeout, async |conn| {
                let id = conn.next_id();
                conn.send(&request, id, &[]).await?;
                expect_reply::<DataValidateReply>(conn, id).await
            })
            .await;
        match reply {
            Ok(reply) if reply.status.len() == positions.len() => {
                for (&i, &status) in positions.iter().zip(&reply.status) {
                    if status == ReadStatus::Ok as u8 {
                        outcome[i] = PageRead::Delivered;
                    }
                }
            }
            // Bytes that cannot be confirmed are never reported as a page.
            _ => positions
                .iter()
                .for_each(|&i| outcome[i] = PageRead::Failed),
        }
        outcome
    }
}
