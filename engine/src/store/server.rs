//! The serving half of a shard: requests from peers on this shard's listener.
//!
//! Each connection is one task. The first frame must be `Hello`; then the
//! peer sends requests, possibly several back to back (pipelined), and gets
//! one reply per request, in order, carrying the request's id. A malformed,
//! oversized, unexpected or unknown frame gets an `Error` reply when the
//! stream is still in sync, then the connection is closed with a logged
//! reason; nothing outside the named pool slots is ever read.
//!
//! Only the published pool can be read remotely: a `DataRead` names pool
//! offsets, each checked against this shard's slot table (live slot, same
//! generation, same length) before a byte is sent, and checked again after,
//! because the shard may evict a slot while its bytes are on the wire (the
//! memory stays mapped and quarantined, but the page is gone). A second
//! `DataReadReply` with the final statuses follows the bulk.
//!
//! No peer holds a connection forever: a connection must greet within the
//! request timeout, may then sit idle between requests for at most
//! [`IDLE_CONNECTION_TIMEOUT`], and a reader must take a `DataRead` reply
//! within the bound of a read of that size ([`crate::net::deadline`]). A
//! peer host that vanished without closing its sockets, or a reader that
//! stopped reading mid-reply, would otherwise keep a task and a socket here
//! (and the reply's send blocked) until the process exits.

use super::rdma_read::{to_endpoint, to_info};
use super::remote::to_location;
use super::shard::ShardStore;
use super::stats::ShardStats;
use crate::keys::KeyHash;
use crate::net::FramedConn;
use crate::pool::Location;
use crate::wire::{
    self, DataPromote, DataPromoteReply, DataRead, DataReadReply, DataValidate, DataValidateReply,
    DirDelete, DirDeleteAck, DirEntry, DirGet, DirGetReply, DirPut, DirPutAck, ErrorReply,
    FrameHeader, Hello, HelloAck, Kind, RdmaConnect, RdmaConnectReply, ReadItem, ReadStatus,
    WireError, WireMessage,
};
use glommio::net::TcpStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long a greeted connection may wait for its next request. Readers
/// keep idle channels to every peer they read from, so this is long; a
/// reader whose idle channel was closed meanwhile reconnects once on its
/// next request (see `exchange` in `remote.rs`).
pub(super) const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);

/// Kinds a peer may send after `Hello`.
fn is_request(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::DirPut
            | Kind::DirGet
            | Kind::DirDelete
            | Kind::DataRead
            | Kind::DataPromote
            | Kind::RdmaConnect
            | Kind::DataValidate
    )
}

/// Kinds a discovery client sends to a meta port, never to a shard.
fn is_discovery(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Register | Kind::Heartbeat | Kind::Deregister | Kind::MembersRequest
    )
}

/// A read item as a location in this shard's pool.
fn to_pool_location(it: &ReadItem) -> Location {
    Location {
        offset: it.offset,
        generation: it.generation,
        len: it.len,
    }
}

impl ShardStore {
    /// Serves one peer connection until it closes or misbehaves.
    pub(super) async fn serve(self: Rc<Self>, stream: TcpStream) {
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        let _ = stream.set_nodelay(true);
        let mut conn = FramedConn::new(stream);
        let mut greeted = false;
        loop {
            let wait = if greeted {
                IDLE_CONNECTION_TIMEOUT
            } else {
                self.id.request_timeout
            };
            let received = glommio::timer::timeout(wait, async { Ok(conn.recv().await) }).await;
            let header = match received {
                Ok(Ok(h)) => h,
                Ok(Err(WireError::Closed)) => return,
                Ok(Err(e)) => return self.refuse(&mut conn, &peer, 0, e).await,
                Err(_) => {
                    tracing::debug!(
                        "shard {}: closing connection from {peer}: no {} within {wait:?}",
                        self.id.shard,
                        if greeted { "request" } else { "Hello" }
                    );
                    return;
                }
            };
            let result = match header.kind {
                Kind::Hello => self.on_hello(&mut conn, &header).await,
                kind if !greeted || !is_request(kind) => {
                    let why = if is_discovery(kind) {
                        // A discovery client dialled a shard: its
                        // discovery_addr names this control port, or this
                        // shard took the meta port before the meta server
                        // could bind it (a discovery port in the ephemeral
                        // range, handed to a shard's port-0 listener).
                        format!(
                            "{kind} is a discovery request, and this is a shard's control port; \
                             point discovery_addr at the meta port, and keep that port below the \
                             ephemeral range (net.ipv4.ip_local_port_range)"
                        )
                    } else if greeted {
                        format!("{kind} is not a request this server answers")
                    } else {
                        format!("expected Hello, got {kind}")
                    };
                    return self.reject(&mut conn, &peer, &header, why).await;
                }
                Kind::DirPut => self.on_dir_put(&mut conn, &header).await,
                Kind::DirGet => self.on_dir_get(&mut conn, &header).await,
                Kind::DirDelete => self.on_dir_delete(&mut conn, &header).await,
                Kind::DataRead => self.on_data_read(&mut conn, &header).await,
                Kind::DataPromote => self.on_data_promote(&mut conn, &header).await,
                Kind::RdmaConnect => self.on_rdma_connect(&mut conn, &header).await,
                Kind::DataValidate => self.on_data_validate(&mut conn, &header).await,
                _ => unreachable!("is_request lists exactly the kinds handled above"),
            };
            match result {
                Ok(()) => greeted = true,
                Err(e) => return self.refuse(&mut conn, &peer, header.request_id, e).await,
            }
        }
    }

    /// Answers a well-formed frame this server does not accept with an
    /// `Error` (when no bulk follows it, the stream is still in sync), then
    /// drops the connection.
    async fn reject(
        &self,
        conn: &mut FramedConn<TcpStream>,
        peer: &str,
        header: &FrameHeader,
        why: String,
    ) {
        ShardStats::bump(&self.stats.protocol_errors, 1);
        self.log_error(
            Instant::now(),
            format_args!("closing connection from {peer}: {why}"),
        );
        if header.bulk_len == 0 {
            let reply = ErrorReply {
                code: wire::error_code::BAD_REQUEST,
                message: why,
            };
            let _ = self.reply(conn, &reply, header.request_id).await;
        }
    }

    /// Tells the peer why (when the stream still allows a reply), counts,
    /// logs and drops the connection.
    async fn refuse(
        &self,
        conn: &mut FramedConn<TcpStream>,
        peer: &str,
        request_id: u64,
        e: WireError,
    ) {
        ShardStats::bump(&self.stats.protocol_errors, 1);
        self.log_error(
            Instant::now(),
            format_args!("closing connection from {peer}: {e}"),
        );
        if e.stream_in_sync() {
            let reply = ErrorReply {
                code: e.code(),
                message: e.to_string(),
            };
            let _ = self.reply(conn, &reply, request_id).await;
        }
    }

    /// Sends `msg` (no bulk) in answer to `request_id`, bounded by the
    /// request timeout. A peer that stopped reading with its socket buffers
    /// full would otherwise keep this task, its socket and the reply here
    /// until the process exits; on timeout the connection is dropped.
    async fn reply<T: WireMessage>(
        &self,
        conn: &mut FramedConn<TcpStream>,
        msg: &T,
        request_id: u64,
    ) -> Result<(), WireError> {
        let mut send = std::pin::pin!(conn.send(msg, request_id, &[]));
        // Nearly every reply fits the socket buffer and is sent at the first
        // poll: only one that is not pays for a timer (this is the path of
        // every directory answer).
        if let Some(sent) = futures_lite::future::poll_once(send.as_mut()).await {
            return sent;
        }
        let bound = self.id.request_timeout;
        let sent = glommio::timer::timeout(bound, async { Ok(send.await) }).await;
        sent.unwrap_or_else(|_| {
            ShardStats::bump(&self.stats.server_send_timeouts, 1);
            Err(WireError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the peer did not take a {} reply within {bound:?}", T::KIND),
            )))
        })
    }

    async fn on_hello(
        &self,
        conn: &mut FramedConn<TcpStream>,
        h: &FrameHeader,
    ) -> Result<(), WireError> {
        let hello = wire::decode_owned::<Hello>(conn.meta())?;
        if hello.protocol_version != wire::PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion {
                found: hello.protocol_version,
            });
        }
        let ack = HelloAck {
            node_id: self.id.node_id.clone(),
        };
        self.reply(conn, &ack, h.request_id).await
    }

    async fn on_dir_put(
        &self,
        conn: &mut FramedConn<TcpStream>,
        h: &FrameHeader,
    ) -> Result<(), WireError> {
        let request = wire::decode_owned::<DirPut>(conn.meta())?;
        #[cfg(test)]
        if let Some(stall) = super::slow_peer_tests::dir_put_stall_for(&request) {
            glommio::timer::sleep(stall).await;
        }
        let mut stored = 0u32;
        {
            let mut dir = self.directory.borrow_mut();
            for e in &request.entries {
                // A declined offer counts as stored: the owner holds a
                // better entry for the page.
                if dir.offer(e.key_hash(), to_location(e)).is_ok() {
                    stored += 1;
                }
            }
        }
        ShardStats::set(
            &self.stats.directory_entries,
            self.directory.borrow().len() as u64,
        );
        self.reply(conn, &DirPutAck { stored }, h.request_id).await
    }

    async fn on_dir_get(
        &self,
        conn: &mut FramedConn<TcpStream>,
        h: &FrameHeader,
    ) -> Result<(), WireError> {
        let request = wire::decode_owned::<DirGet>(conn.meta())?;
        ShardStats::bump(
            &self.stats.directory_lookups_served,
            request.keys.len() as u64,
        );
        let entries: Vec<Option<DirEntry>> = {
            let dir = self.directory.borrow();
            request
                .keys
                .iter()
                .map(|&k| {
                    let key = KeyHash::from_be_bytes(k);
                    dir.get(key).map(|loc| {
                        DirEntry::new(
                            key,
                            loc.node.0,
                            loc.shard,
                            loc.pool_location(),
                            loc.resident,
                        )
                    })
                })
                .collect()
        };
        self.reply(conn, &DirGetReply { entries }, h.request_id)
            .await
    }

    async fn on_dir_delete(
        &self,
        conn: &mut FramedConn<TcpStream>,
        h: &FrameHeader,
    ) -> Result<(), WireError> {
        let request = wire::decode_owned::<DirDelete>(conn.meta())?;
        let keys: Vec<KeyHash> = request
            .keys
            .iter()
            .map(|&k| KeyHash::from_be_bytes(k))
            .collect();
        let deleted = self
            .directory
            .borrow_mut()
            .remove_many_if_node(&keys, crate::directory::NodeRef(request.node));
        let ack = DirDeleteAck {
            deleted: deleted as u32,
        };
        self.reply(conn, &ack, h.request_id).await
    }

    async fn on_data_read(
        &self,
        conn: &mut FramedConn<TcpStream>,
        h: &FrameHeader,
    ) -> Result<(), WireError> {
        let request = wire::decode_owned::<DataRead>(conn.meta())?;
        #[cfg(test)]
        if let Some(stall) = super::slow_peer_tests::data_read_stall_for(&self.id.node_id) {
            glommio::timer::sleep(stall).await;
        }
        let locations: Vec<Location> = request.items.iter().map(to_pool_location).collect();
        let (status, pages) = self.check_slots(request.node, &locations);
        let bulk: Vec<&[u8]> = pages
            .iter()
            // SAFETY: each pointer is a live slot of this shard's pool of
            // `len` bytes; the pool stays mapped for the node's lifetime.
            .map(|&(ptr, len)| unsafe { std::slice::from_raw_parts(ptr, len) })
            .collect();
        let bytes: u64 = bulk.iter().map(|b| b.len() as u64).sum();
        let bound = self.id.read_timeout(bytes);
        let reply = DataReadReply { status };
        // The same bound as `reply`'s, scaled to the bytes.
        let sent = glommio::timer::timeout(bound, async {
            Ok(conn.send(&reply, h.request_id, &bulk).await)
        })
        .await;
        match sent {
            Ok(done) => done?,
            Err(_) => {
                ShardStats::bump(&self.stats.server_send_timeouts, 1);
                return Err(WireError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the reader did not take a {bytes}-byte reply within {bound:?}"),
                )));
            }
        }
        // Re-check after sending: the final word on each page.
        let (status, _) = self.check_slots(request.node, &locations);
        self.reply(conn, &DataReadReply { status }, h.request_id)
            .await?;
        Ok(())
    }

    /// Creates a responder QP (REMOTE_READ) per reader QP on the requested
    /// rail and answers with them and this shard's pool on that rail;
    /// `rails: 0` when this shard has no RDMA data path.
    async fn on_rdma_connect(
        &self,
        conn: &mut FramedConn<TcpStream>,
        h: &FrameHeader,
    ) -> Result<(), WireError> {
        let request = wire::decode_owned::<RdmaConnect>(conn.meta())?;
        let reply = match &self.rdma {
            None => Ok(RdmaConnectReply::default()),
            Some(rdma) => {
                let mut rdma = rdma.borrow_mut();
                let rail = usize::from(request.rail);
                let remote: Vec<_> = request.endpoints.iter().map(to_endpoint).collect();
                rdma.accept(
                    (request.node, request.shard),
                    rail,
                    request.seq,
                    &request.live,
                    &remote,
                )
                .and_then(|endpoints| {
                    let pool = rdma
                        .local_pool(rail)
                        .ok_or_else(|| format!("the pool is not registered on rail {rail}"))?;
                    Ok(RdmaConnectReply {
                        rails: rdma.rails() as u16,
                        endpoints: endpoints.iter().map(to_info).collect(),
                        pool_addr: pool.addr,
                        pool_rkey: pool.rkey,
                    })
                })
            }
        };
        match reply {
            Ok(reply) => self.reply(conn, &reply, h.request_id).await,
            // The request was well formed: say why and keep the connection.
            Err(e) => {
                let reply = ErrorReply {
                    code: wire::error_code::UNAVAILABLE,
                    message: format!("RDMA connect: {e}"),
                };
                self.reply(conn, &reply, h.request_id).await
            }
        }
    }

    /// Answers whether each location still names the page it did (the
    /// post-READ generation check of an RDMA reader).
    async fn on_data_validate(
        &self,
        conn: &mut FramedConn<TcpStream>,
        h: &FrameHeader,
    ) -> Result<(), WireError> {
        let request = wire::decode_owned::<DataValidate>(conn.meta())?;
        let locations: Vec<Location> = request.items.iter().map(to_pool_location).collect();
        let (status, _) = self.check_slots(request.node, &locations);
        self.reply(conn, &DataValidateReply { status }, h.request_id)
            .await
    }

    /// Promotes the requested pages from this shard's disk tier into its pool
    /// and answers with their fresh resident entries (see `tiering.rs`).
    async fn on_data_promote(
        self: &Rc<Self>,
        conn: &mut FramedConn<TcpStream>,
        h: &FrameHeader,
    ) -> Result<(), WireError> {
        let request = wire::decode_owned::<DataPromote>(conn.meta())?;
        let keys: Vec<KeyHash> = request
            .keys
            .iter()
            .map(|&k| KeyHash::from_be_bytes(k))
            .collect();
        let locations = self.promote_many(&keys).await;
        let entries = keys
            .iter()
            .zip(locations)
            .map(|(&key, l)| l.map(|l| DirEntry::new(key, self.node_ref.0, self.id.shard, l, true)))
            .collect();
        self.publish_pool_gauges();
        self.reply(conn, &DataPromoteReply { entries }, h.request_id)
            .await
    }

    /// Status of each location published by `node`, and the bytes of the
    /// valid ones, in order. Locations another process of this node id
    /// published (another incarnation) are all stale: this pool's slots and
    /// generations started afresh, so they could name other pages.
    fn check_slots(&self, node: u64, locations: &[Location]) -> (Vec<u8>, Vec<(*const u8, usize)>) {
        if node != self.node_ref.0 {
            ShardStats::bump(&self.stats.stale_node_reads, locations.len() as u64);
            return (
                vec![ReadStatus::StaleGeneration as u8; locations.len()],
                Vec::new(),
            );
        }
        let pool = self.pool.borrow();
        let mut status = Vec::with_capacity(locations.len());
        let mut pages = Vec::with_capacity(locations.len());
        for &loc in locations {
            match pool.validate(loc) {
                Some(ptr) => {
                    status.push(ReadStatus::Ok as u8);
                    pages.push((ptr, loc.len as usize));
                }
                None => status.push(ReadStatus::StaleGeneration as u8),
            }
        }
        (status, pages)
    }
}
