//! Per-shard counters, summed when someone asks.
//!
//! Each shard owns one [`ShardStats`] and is its only writer, so an update is a
//! plain load + store on a cache line no other shard writes (no locked
//! read-modify-write, no sharing on the hot path). Readers (metrics scrapes,
//! tests) load every shard's values and add them up.

use std::sync::atomic::{AtomicU64, Ordering};

/// How a counter behaves, for exporters and for summing shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Only ever grows (a Prometheus counter); shards add up.
    Counter,
    /// Goes up and down (a Prometheus gauge); shards add up.
    Gauge,
    /// A code, or an amount every shard holds alike (a Prometheus gauge):
    /// adding codes of two shards would invent a code, and adding alike
    /// amounts would count one thing per shard, so a node reports the
    /// largest shard value.
    Status,
}

impl FieldKind {
    /// Combines one shard's value into a node total.
    #[inline]
    fn combine(self, total: u64, shard: u64) -> u64 {
        match self {
            FieldKind::Counter | FieldKind::Gauge => total.wrapping_add(shard),
            FieldKind::Status => total.max(shard),
        }
    }
}

/// One counter's name, kind and meaning (its doc comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldInfo {
    /// Field name, e.g. `read_hits`.
    pub name: &'static str,
    /// Counter, gauge or status.
    pub kind: FieldKind,
    /// The field's doc comment, used as the metric's help text.
    pub help: &'static str,
}

macro_rules! stats {
    ($( $(#[doc = $doc:literal])* $kind:ident $name:ident ),* $(,)?) => {
        /// Live counters of one shard (single writer: the shard thread).
        #[derive(Debug, Default)]
        #[repr(align(128))]
        pub struct ShardStats {
            $( $(#[doc = $doc])* pub $name: AtomicU64, )*
        }

        /// A snapshot of counters, for one shard or summed over a node.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct NodeStats {
            $( $(#[doc = $doc])* pub $name: u64, )*
        }

        impl ShardStats {
            /// Copies the current values.
            pub fn snapshot(&self) -> NodeStats {
                NodeStats { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
        }

        impl NodeStats {
            /// Every counter with its name, in declaration order (for
            /// exporters: Python dicts, metrics, benchmark JSON).
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![ $( (stringify!($name), self.$name), )* ]
            }

            /// Name, kind and meaning of every counter, in the order of
            /// [`NodeStats::fields`].
            pub const INFO: &'static [FieldInfo] = &[
                $( FieldInfo {
                    name: stringify!($name),
                    kind: FieldKind::$kind,
                    help: concat!($($doc),*),
                }, )*
            ];
        }

        impl std::ops::AddAssign for NodeStats {
            /// Adds a shard's snapshot (a `Status` keeps the larger code).
            fn add_assign(&mut self, o: NodeStats) {
                $( self.$name = FieldKind::$kind.combine(self.$name, o.$name); )*
            }
        }
    };
}

stats! {
    /// Pages offered to `batch_set`.
    Counter write_requests,
    /// Pages `batch_set` could not store (page too large, too many size classes, queue full).
    Counter write_failures,
    /// Payload bytes copied into the pool.
    Counter bytes_written,
    /// Pages asked for by `batch_get`.
    Counter read_requests,
    /// Pages `batch_get` delivered.
    Counter read_hits,
    /// Pages `batch_get` did not find.
    Counter read_misses,
    /// Hits served from this node's own pool.
    Counter read_local_hits,
    /// Hits read from another node's pool over the network.
    Counter read_remote_hits,
    /// Pages found but not delivered: wrong destination length, or a remote
    /// transfer that failed and whose retry did not recover it (also misses).
    Counter read_failures,
    /// Payload bytes delivered by `batch_get`.
    Counter bytes_read,
    /// Remote exchanges (directory or data) that failed or timed out.
    Counter remote_failures,
    /// Pages `batch_set` stored locally but no directory owner accepted (so no
    /// other node can find them; reported as failed).
    Counter directory_put_failures,
    /// Directory entries re-published after a membership change or by the
    /// periodic refresh.
    Counter directory_republishes,
    /// Directory lookups a get skipped thanks to a location resolved by the
    /// preceding exists (or the read cache).
    Counter directory_lookups_saved,
    /// Keys peers looked up in this node's directory (`DirGet`). A lookup a
    /// node can answer from its own replica never reaches a peer.
    Counter directory_lookups_served,
    /// `DirGet` requests this node sent to peers' directories. Lookups of
    /// batches running at the same time share one request per owner shard
    /// when requests to it are already in flight.
    Counter directory_requests_sent,
    /// Channels to peers opened.
    Counter channels_opened,
    /// Channels dropped after a failed exchange.
    Counter channel_discards,
    /// Channel leases that gave up (all channels busy, or connect failed).
    Counter lease_failures,
    /// Exchanges not tried because their peer did not answer a recent one
    /// (connect failed, no reply in time, connection cut off): skipped for
    /// `member_ttl`, or until the peer leaves the membership.
    Counter unreachable_skips,
    /// Directory entries this shard holds for the cluster.
    Gauge directory_entries,
    /// Malformed or unexpected frames received (connection closed).
    Counter protocol_errors,
    /// Replies a peer did not take in time (a `DataRead` reply within the
    /// bound of a read of its size, any other within the request timeout):
    /// the connection was closed (a peer that stopped reading, or a link
    /// far below 10^8 bytes/s).
    Counter server_send_timeouts,
    /// Pages peers asked this node for under a location a previous process
    /// of its node id published (a restart): refused, a miss for the peer.
    Counter stale_node_reads,
    /// Pages probed by `batch_exists`.
    Counter exists_requests,
    /// Pages `batch_exists` found.
    Counter exists_pages_found,
    /// Pages resident in the pool now.
    Gauge pool_keys,
    /// Payload bytes resident in the pool now.
    Gauge pool_bytes_used,
    /// Bytes the pool can hold.
    Gauge pool_capacity_bytes,
    /// Bytes of the caller's host buffers (SGLang's host KV pool) registered
    /// with the node; every shard registers each one. 0: none was handed
    /// over, so RDMA READs register their destinations lazily.
    Status host_buffer_bytes,
    /// Pages evicted from the pool by LRU.
    Counter evictions,
    /// Pool slots reused before their quarantine ran out (pool too small for the write rate).
    Counter quarantine_early_reuses,
    /// Pool segments moved from one page size class to another.
    Counter segment_steals,
    /// Hits served from this node's disk tier (promoted into the pool on the way).
    Counter read_disk_hits,
    /// Pages promoted from the disk tier back into the pool (local gets, exists warming, peers' DataPromote).
    Counter promotes,
    /// Pages resident on the disk tier now.
    Gauge disk_keys,
    /// Payload bytes resident on the disk tier now.
    Gauge disk_bytes_used,
    /// Bytes the disk tier can hold (the slab files' size).
    Gauge disk_capacity_bytes,
    /// Pages written to the disk tier.
    Counter disk_writes,
    /// Pages evicted from the disk tier by LRU.
    Counter disk_evictions,
    /// Disk writes dropped: queue full, page evicted from the pool before its write ran, no room, or writes stopped.
    Counter disk_write_drops,
    /// Disk writes that failed with an I/O error other than ENOSPC.
    Counter disk_write_errors,
    /// Pages on disk whose checksum or header did not match on read: dropped, never returned.
    Counter disk_corrupt_pages,
    /// Local gets whose disk reads did not finish within the request
    /// timeout (`request_timeout_ms`): those pages were misses.
    Counter disk_read_timeouts,
    /// 1 when this shard stopped writing to disk (ENOSPC, or the slab could not be opened).
    Status disk_writes_stopped,
    // The RDMA data path's counters (rdma.md). They exist on every node so
    // the metric names operators alert on are the same whatever the
    // transport; a node reading over TCP keeps them at 0.
    /// RDMA READs that did not complete in time (0 over TCP).
    Counter rdma_read_timeouts,
    /// RDMA channels (QP + CQ) dropped after an error (0 over TCP).
    Counter rdma_channel_discards,
    /// RDMA READs that completed with an error status (0 over TCP).
    Counter rdma_read_wc_errors,
    /// The last error `ibv_wc_status` of an RDMA READ, 0 when none (0 over TCP).
    Status rdma_last_wc_status,
    /// READs whose local destination was outside every registered MR (0 over TCP).
    Counter rdma_local_reg_misses,
    /// RDMA work requests the NIC refused to post (0 over TCP).
    Counter rdma_post_failures,
    /// RDMA channel leases that gave up (0 over TCP).
    Counter rdma_lease_failures,
    /// RDMA devices (rails) this shard reads through (0 over TCP).
    Gauge rdma_rails,
    /// Local memory regions registered on demand for destinations outside the pool (0 over TCP).
    Gauge rdma_lazy_local_mrs,
}

impl ShardStats {
    /// Adds `n` to a counter. Only the owning shard may call this.
    #[inline]
    pub fn bump(counter: &AtomicU64, n: u64) {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Sets a gauge. Only the owning shard may call this.
    #[inline]
    pub fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }
}
