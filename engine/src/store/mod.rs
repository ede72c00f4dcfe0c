//! The node store: one [`Node`] per SGLang rank (process).
//!
//! `Node::start` maps the published pool, places one shard per NIC (or per
//! configured core) through the numa crate, and starts the shard runtime. A
//! batch call hashes its keys in the caller's thread, groups the pages by the
//! shard that owns each key, submits one part per shard, and blocks once for
//! the whole batch. Pages of one shard never take a lock another shard uses.

mod lookups;
mod owed;
mod rdma_read;
mod remote;
mod server;
pub mod shard;
pub mod stats;
mod tiering;
mod views;

pub use shard::{BatchPart, Op, ShardIdentity, ShardStore, StoreJob};
pub use stats::{NodeStats, ShardStats};
pub use views::ViewMailbox;

use crate::cluster::{ClusterView, DiscoveryRuntime, MemberRoute};
use crate::config::Config;
use crate::directory::NodeRef;
use crate::discovery::Member;
use crate::keys::{KeyHash, Namespace};
use crate::metrics::{LatencyOp, LatencyRecorders, MetricsServer, MetricsSource, ServerOptions};
use crate::pool::{region, slots, PageBacking, PoolRegion, ShardPool};
use crate::runtime::{BatchCompletion, Runtime, RuntimeError, RuntimeOptions, ShardSite};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most pages in one batch call. SGLang's batches are at most a few thousand
/// pages; anything far larger is a caller bug, refused before any work starts.
pub const MAX_BATCH_PAGES: usize = 1 << 16;

/// Most shards with no NIC when `shards` is 0 (auto): enough to use the memory
/// bandwidth of a socket from one rank without crowding co-located ranks.
const AUTO_SHARDS_MAX: usize = 4;

/// How long a batch waits for room in a full shard queue before its pages of
/// that shard are reported as failed.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Page size assumed when sizing a shard's directory table up front (the
/// table grows past it on its own).
const DIRECTORY_SIZING_PAGE_BYTES: usize = 128 << 10;

/// A node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The published pool could not be mapped.
    #[error("cannot map the published pool of {bytes} bytes: {source}; lower global_segment_size or raise tp_size")]
    Pool {
        /// Requested size.
        bytes: u64,
        /// The OS error.
        source: std::io::Error,
    },
    /// The pool is too small for one 4 KiB slot per shard.
    #[error("published pool of {bytes} bytes is too small for {shards} shards; global_segment_size / tp_size must give each shard at least 4 KiB")]
    PoolTooSmall {
        /// Pool bytes per rank.
        bytes: u64,
        /// Shard count.
        shards: usize,
    },
    /// The shard runtime failed to start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Discovery could not start.
    #[error("discovery: {0}")]
    Discovery(String),
    /// `require_rdma` is set and RDMA cannot be used (the reason says why).
    #[error("RDMA transport unavailable ({0}) and require_rdma is true; fix the RDMA set-up (device_name / device_names, ib_port, gid_index, rdma-core) or set require_rdma to false to allow the TCP fallback")]
    RdmaRequired(String),
    /// Another running node on this host has the same `node_id`.
    #[error("node_id {node_id:?} is already used by another running node on this host ({dir} is locked by it); give every process its own node_id (PeerCacheStore appends -tp<rank> / -pp<rank> to a configured node_id when tp_size or pp_size > 1), or leave node_id unset to have one generated")]
    NodeIdInUse {
        /// The node id, rank suffixes included.
        node_id: String,
        /// Its disk directory.
        dir: String,
    },
    /// A shard could not listen for peers.
    #[error("cannot listen on {host}:{port} for peer requests: {reason}; check control_bind_host / control_port")]
    Listen {
        /// Bind host.
        host: String,
        /// Bind port (0 = any).
        port: u16,
        /// The OS error.
        reason: String,
    },
}

/// A batch call's arguments are malformed; nothing was done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The parallel arrays of a batch differ in length.
    #[error("batch arrays differ in length: {keys} keys, {addrs} pointers, {lens} lengths")]
    LengthMismatch {
        /// Number of keys.
        keys: usize,
        /// Number of pointers.
        addrs: usize,
        /// Number of lengths.
        lens: usize,
    },
    /// More pages than [`MAX_BATCH_PAGES`].
    #[error("batch of {0} pages exceeds the limit of {MAX_BATCH_PAGES}; split it")]
    TooLarge(usize),
}

/// One PeerCache node: the published pool and the shards that own it.
pub struct Node {
    node_id: String,
    /// When this process of the node started (ms since the epoch): its
    /// discovery incarnation.
    incarnation: u64,
    /// This process as directory entries name it (node id + incarnation).
    node_ref: NodeRef,
    endpoints: Vec<SocketAddr>,
    vnodes: u32,
    replicas: usize,
    wait_spin: Duration,
    namespace: Namespace,
    runtime: Arc<Runtime<StoreJob>>,
    /// Where membership views are posted for the shards (`views.rs`).
    views: Arc<ViewMailbox>,
    discovery: Option<DiscoveryRuntime>,
    pool_bytes_advertised: u64,
    /// The data-path transport chosen at start (see `crate::rdma::select`).
    transport: crate::rdma::Transport,
    stats: Vec<Arc<ShardStats>>,
    /// Batch-call latency, recorded by each calling thread.
    latency: Arc<LatencyRecorders>,
    /// Live members for the metrics (written by the membership callback).
    member_gauge: Arc<AtomicUsize>,
    /// The metrics HTTP server, when enabled and its port was free.
    metrics: Option<MetricsServer>,
    /// `shutdown` ran (it is idempotent; the disk flush runs once).
    shut_down: bool,
    /// The lock on this node's disk directory, released after every shard
    /// stopped (field order): until then no other node may remove the
    /// directory or start under the same `node_id`.
    _disk_claim: Option<Arc<crate::disk::claim::DirClaim>>,
    // Keeps the pool mapped for as long as any shard can touch it; dropped
    // after `runtime` (field order), i.e. after every shard thread joined.
    region: Arc<PoolRegion>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("namespace", &self.namespace)
            .field("runtime", &self.runtime)
            .field("region", &self.region)
            .finish()
    }
}

impl Node {
    /// Starts a node: maps and pre-faults the published pool, places and pins
    /// the shards, and returns once every shard is ready.
    pub fn start(config: Config) -> Result<Node, NodeError> {
        Self::start_with(config, &crate::rdma::RdmaSource::System)
    }

    /// [`Node::start`] with RDMA devices from `rdma` (the host's, or a
    /// software fabric shared by several nodes of one process).
    pub fn start_with(config: Config, rdma: &crate::rdma::RdmaSource) -> Result<Node, NodeError> {
        // First, before any memory is mapped: a node that must not fall
        // back to TCP fails here with the reason.
        let (transport, rdma_factory) =
            crate::rdma::select(&config, rdma).map_err(NodeError::RdmaRequired)?;
        let config_devices = config.rdma_devices();
        let require_rdma = config.require_rdma;
        let topology = peercache_numa::Topology::detect();
        let sysfs = peercache_numa::Sysfs::system();
        // With an explicit `shards` the NICs do not decide the shard count.
        let devices = if config.shards > 0 {
            Vec::new()
        } else {
            config.rdma_devices()
        };
        let shards_without_nic = if config.shards > 0 {
            config.shards
        } else {
            topology.all_cpus().len().clamp(1, AUTO_SHARDS_MAX)
        };
        let placements = peercache_numa::place_shards(
            &topology,
            &sysfs,
            &devices,
            shards_without_nic,
            config.local_rank(),
        );
        let sites: Vec<ShardSite> = placements
            .into_iter()
            .map(|p| ShardSite {
                cpu: Some(p.cpu),
                numa_node: p.numa_node,
                device: p.device,
            })
            .collect();
        let shard_count = sites.len().max(1);
        let sites = if sites.is_empty() {
            vec![ShardSite::default()]
        } else {
            sites
        };

        let pool_bytes = config.pool_bytes_per_rank();
        if pool_bytes < (shard_count * region::SLOT_ALIGN_BYTES) as u64 {
            return Err(NodeError::PoolTooSmall {
                bytes: pool_bytes,
                shards: shard_count,
            });
        }
        let region =
            PoolRegion::allocate(pool_bytes as usize).map_err(|source| NodeError::Pool {
                bytes: pool_bytes,
                source,
            })?;
        let region = Arc::new(region);
        let ranges = region.split(shard_count);
        let stats: Vec<Arc<ShardStats>> = (0..shard_count)
            .map(|_| Arc::new(ShardStats::default()))
            .collect();

        let host = crate::cluster::advertised_host(&config);
        let node_id = config
            .rank_node_id()
            .unwrap_or_else(|| format!("{host}-{:04x}", crate::cluster::random_u64() & 0xffff));
        // This process's incarnation: discovery keeps the newest per node id,
        // and directory entries name (node id, incarnation), so nothing a
        // previous process of this id published can be read from this one.
        let incarnation = next_incarnation();
        let node_ref = NodeRef::of(&node_id, incarnation);
        let node_disk =
            crate::disk::prepare_node_dir(&config, &node_id, shard_count).map_err(|in_use| {
                NodeError::NodeIdInUse {
                    node_id: node_id.clone(),
                    dir: in_use.dir.display().to_string(),
                }
            })?;
        let disk_claim = node_disk.as_ref().and_then(|nd| nd.claim.clone());
        let bound_ports: Arc<Mutex<Vec<u16>>> = Arc::new(Mutex::new(vec![0; shard_count]));
        let base_addr = region.base() as usize;
        let quarantine = config.pool_quarantine();
        let prefault = config.prefault_pool;
        let shard_stats = stats.clone();
        let (bind_host, base_port) = (config.control_bind_host.clone(), config.control_port);
        let ports = Arc::clone(&bound_ports);
        let replicas = config.directory_replicas as usize;
        let identity = ShardIdentity {
            node_id: node_id.clone(),
            node_ref,
            shard: 0,
            max_channels_per_peer: config.max_channels_per_peer as usize,
            request_timeout: config.request_timeout(),
            unreachable_skip: config.member_ttl(),
            read_cache_ttl: config.directory_read_cache_ttl(),
            directory_refresh: config.directory_refresh_interval(),
            views: Arc::new(ViewMailbox::default()),
        };
        let views = Arc::clone(&identity.views);
        let make = move |ctx: &crate::runtime::ShardContext| {
            // A fixed control_port gives shard i the port control_port + i.
            let port = if base_port == 0 {
                0
            } else {
                base_port.saturating_add(ctx.index as u16)
            };
            let listener = shard::listen(&bind_host, port)
                .map_err(|e| format!("listen on {bind_host}:{port}: {e}"))?;
            let bound = listener
                .local_addr()
                .map_err(|e| format!("listener address: {e}"))?;
            ports.lock().expect("start-up only")[ctx.index] = bound.port();
            let (offset, len) = ranges[ctx.index];
            let ptr = (base_addr + offset) as *mut u8;
            if let Some(node) = ctx.site.numa_node {
                // SAFETY: [ptr, ptr+len) is this shard's mapped, unused range.
                unsafe { peercache_numa::bind_memory(ptr, len, node) };
            }
            if prefault {
                // SAFETY: this range of the region belongs to this shard alone
                // and is not in use yet.
                unsafe { region::prefault(ptr, len) };
            }
            // SAFETY: the region outlives the runtime (Node field order) and
            // only this shard writes this range.
            let pool = unsafe {
                ShardPool::new(
                    ptr,
                    offset as u64,
                    len,
                    slots::default_segment_bytes(len),
                    quarantine,
                )
            };
            let directory_hint = (len / DIRECTORY_SIZING_PAGE_BYTES).max(1024) * replicas;
            let id = ShardIdentity {
                shard: ctx.index as u16,
                ..identity.clone()
            };
            let stats = Arc::clone(&shard_stats[ctx.index]);
            let rdma = match &rdma_factory {
                None => None,
                Some(factory) => {
                    // A shard placed by its NIC owns that NIC's rail;
                    // otherwise every configured device is one of its rails.
                    let names = match &ctx.site.device {
                        Some(d) => vec![d.clone()],
                        None => config_devices.clone(),
                    };
                    let opened = factory(&names, Arc::clone(&stats)).and_then(|mut rdma| {
                        // SAFETY: the range stays mapped while the shard
                        // runs, and the shard closes its rails when it stops.
                        unsafe { rdma.register_pool(ptr, offset as u64, len) }?;
                        Ok(rdma)
                    });
                    match opened {
                        Ok(rdma) => Some(rdma),
                        Err(e) if require_rdma => {
                            return Err(format!(
                            "RDMA rails of shard {} did not open ({e}) and require_rdma is true",
                            ctx.index
                        ))
                        }
                        Err(e) => {
                            tracing::warn!(
                                "shard {}: RDMA rails did not open ({e}); this shard reads over TCP",
                                ctx.index
                            );
                            None
                        }
                    }
                }
            };
            // A slab that cannot be opened costs this shard its disk tier,
            // never the node.
            let disk = node_disk.as_ref().and_then(|nd| {
                crate::disk::DiskTier::open(nd, ctx.index, Arc::clone(&stats))
                    .map_err(|e| {
                        tracing::warn!(
                            "disk tier: shard {}: cannot open its slab in {}: {e}; this shard serves from memory only",
                            ctx.index,
                            nd.dir.display()
                        )
                    })
                    .ok()
            });
            Ok(ShardStore::new(
                id,
                pool,
                directory_hint,
                Some(listener),
                stats,
                disk,
                rdma,
            ))
        };
        let options = RuntimeOptions {
            io_memory_bytes: config.shard_io_memory as usize,
            ..RuntimeOptions::default()
        };
        let runtime = Runtime::start(sites, options, make).map_err(|e| match e {
            RuntimeError::ShardStart { reason, .. } if reason.starts_with("listen") => {
                NodeError::Listen {
                    host: config.control_bind_host.clone(),
                    port: config.control_port,
                    reason,
                }
            }
            other => NodeError::Runtime(other),
        })?;
        let endpoints: Vec<SocketAddr> = bound_ports
            .lock()
            .expect("shards started")
            .iter()
            .map(|&port| SocketAddr::new(host, port))
            .collect();

        let cpus: Vec<String> = runtime
            .contexts()
            .iter()
            .map(|c| match (c.site.cpu, c.pinned) {
                (Some(cpu), true) => cpu.to_string(),
                (Some(cpu), false) => format!("{cpu}(unpinned)"),
                (None, _) => "-".into(),
            })
            .collect();
        tracing::info!(
            "PeerCache node started: node={node_id} shards={shard_count} cpus=[{}] control=[{}] pool={} bytes ({}) model={:?}",
            cpus.join(","),
            endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(","),
            region.len_bytes(),
            match region.backing() {
                PageBacking::HugeTlb => "2 MiB huge pages",
                PageBacking::TransparentHuge => "transparent huge pages",
                PageBacking::Normal => "4 KiB pages",
            },
            config.model_name,
        );
        let latency = LatencyRecorders::new();
        let member_gauge = Arc::new(AtomicUsize::new(1));
        let metrics = if config.metrics_enabled {
            let source = Arc::new(MetricsSource {
                node_id: node_id.clone(),
                shards: stats.clone(),
                latency: Arc::clone(&latency),
                members: Arc::clone(&member_gauge),
            });
            let options = ServerOptions {
                host: config.metrics_bind_host.clone(),
                port: config.metrics_port,
                dashboard: config.metrics_dashboard,
            };
            MetricsServer::start(&options, source)
        } else {
            None
        };
        Ok(Node {
            node_id,
            incarnation,
            node_ref,
            endpoints,
            vnodes: config.vnodes,
            replicas,
            wait_spin: Duration::from_micros(config.batch_wait_spin_us),
            namespace: Namespace::new(&config.model_name, config.extra_backend_tag.as_deref()),
            runtime: Arc::new(runtime),
            views,
            discovery: None,
            pool_bytes_advertised: pool_bytes,
            transport,
            stats,
            latency,
            member_gauge,
            metrics,
            shut_down: false,
            _disk_claim: disk_claim,
            region,
        })
    }

    /// Starts a node and joins the cluster: runs this host's embedded
    /// discovery master on the meta port (shared with co-located ranks),
    /// registers with the masters and keeps every shard's membership view
    /// current. A node started before the discovery head waits and retries,
    /// logging periodically, instead of failing.
    pub fn start_cluster(config: Config) -> Result<Node, NodeError> {
        Self::start_cluster_with(config, &crate::rdma::RdmaSource::System)
    }

    /// [`Node::start_cluster`] with RDMA devices from `rdma`.
    pub fn start_cluster_with(
        config: Config,
        rdma: &crate::rdma::RdmaSource,
    ) -> Result<Node, NodeError> {
        let mut node = Node::start_with(config.clone(), rdma)?;
        let host = node
            .endpoints
            .first()
            .map(|e| e.ip().to_string())
            .unwrap_or_default();
        let incarnation = node.incarnation;
        let me = Member {
            node_id: node.node_id.clone(),
            host: host.clone(),
            meta_port: config.discovery_head().port,
            control_endpoints: node
                .endpoints
                .iter()
                .map(|e| (e.ip().to_string(), e.port()))
                .collect(),
            shard_count: node.shards() as u32,
            incarnation,
            pool_bytes: node.pool_bytes_advertised,
        };
        let runtime = Arc::clone(&node.runtime);
        let views = Arc::clone(&node.views);
        let (self_id, vnodes, replicas) = (node.node_id.clone(), node.vnodes, node.replicas);
        let replicas_config = config.clone();
        let warned_below = AtomicUsize::new(usize::MAX);
        let member_gauge = Arc::clone(&node.member_gauge);
        let on_change: crate::cluster::MembershipCallback = Box::new(move |epoch, members| {
            // Allowed, but say so once per member count: fewer copies than
            // configured means one more node loss can drop entries. A node
            // alone (starting up, or a one-node cluster) is not worth a warning.
            member_gauge.store(members.len(), Ordering::Relaxed);
            let warning = (members.len() > 1)
                .then(|| replicas_config.replicas_warning(members.len()))
                .flatten();
            if let Some(warning) = warning {
                if warned_below.swap(members.len(), Ordering::Relaxed) != members.len() {
                    tracing::warn!("{warning}");
                }
            }
            let routes = members.iter().filter_map(route_of).collect();
            let view = ClusterView::new(epoch, &self_id, routes, vnodes, replicas);
            deliver_membership(&runtime, &views, Arc::new(view));
        });
        let discovery =
            DiscoveryRuntime::start(&config, me, on_change).map_err(NodeError::Discovery)?;
        let head = config.discovery_head();
        match &node.transport {
            crate::rdma::Transport::TcpFallback(reason) => {
                tracing::warn!("RDMA transport unavailable ({reason}); using TCP fallback")
            }
            crate::rdma::Transport::Tcp => {
                tracing::info!("protocol=tcp: pages travel over TCP (functional testing only)")
            }
            crate::rdma::Transport::Rdma(devices) => {
                tracing::info!("RDMA data path on {}", devices.join(","))
            }
        }
        // As seed 000 shows it: `rdma=<ip>:<port>`, where peers set up RDMA
        // channels (the QP exchange rides the control connection), and the
        // devices at the end; `rdma=unavailable` on TCP.
        let (rdma_state, devices) = match &node.transport {
            crate::rdma::Transport::Rdma(devices) => (
                node.endpoints
                    .first()
                    .map_or_else(String::new, |e| e.to_string()),
                format!(" devices={}", devices.join(",")),
            ),
            _ => ("unavailable".to_owned(), String::new()),
        };
        tracing::info!(
            "PeerCacheStore up: node={} rdma={rdma_state} control={} discovery={}:{}{devices}",
            node.node_id,
            node.endpoints
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(","),
            head.host,
            head.port
        );
        // The published pool as RDMA registers it (or would, on TCP). This is
        // deliberately not the `registered MRs` line: seed 000 has the operator
        // look for that one to confirm SGLang handed over its host pool, so it
        // is logged only when that happens (`register_host_buffer`).
        match &node.transport {
            crate::rdma::Transport::Rdma(_) => tracing::info!(
                "PeerCacheStore published pool: pool={} bytes on {} rail(s) (REMOTE_READ); no host buffer registered yet",
                node.pool_bytes(),
                node.stats().rdma_rails
            ),
            _ => tracing::info!(
                "PeerCacheStore published pool: pool={} bytes (RDMA unavailable: nothing is registered with a NIC); no host buffer registered yet",
                node.pool_bytes()
            ),
        }
        node.discovery = Some(discovery);
        Ok(node)
    }

    /// Live cluster members as discovery last saw them (1 for a node started
    /// without discovery).
    pub fn members(&self) -> usize {
        self.discovery.as_ref().map_or(1, |d| d.member_count())
    }

    /// Where the metrics server listens (the real port when `metrics_port`
    /// is 0); None when metrics are disabled or the port was taken.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::addr)
    }

    /// The data-path transport chosen at start.
    pub fn transport(&self) -> &crate::rdma::Transport {
        &self.transport
    }

    /// This node's id (`node_id`, or generated from the advertised host).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Where each shard listens for peers, as advertised to them.
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    /// This node as the data path of its peers needs to know it.
    pub fn route(&self) -> MemberRoute {
        MemberRoute {
            node_id: self.node_id.clone(),
            node_ref: self.node_ref,
            shard_endpoints: self.endpoints.clone(),
        }
    }

    /// Installs a new membership (normally called by discovery on every
    /// change). Each shard drops directory entries of departed nodes and
    /// entries it no longer owns, and re-publishes its pages to their owners.
    /// Never waits for a shard: each takes the view before its next job.
    pub fn set_membership(&self, epoch: u64, members: Vec<MemberRoute>) {
        let view = ClusterView::new(epoch, &self.node_id, members, self.vnodes, self.replicas);
        deliver_membership(&self.runtime, &self.views, Arc::new(view));
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.runtime.shards()
    }

    /// Where each shard runs (core, NUMA node, device) and whether it got pinned.
    pub fn shard_contexts(&self) -> &[crate::runtime::ShardContext] {
        self.runtime.contexts()
    }

    /// The key namespace (model name and backend tag).
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// Size of the published pool in bytes.
    pub fn pool_bytes(&self) -> usize {
        self.region.len_bytes()
    }

    /// Stores pages: `keys[i]` -> the `lens[i]` bytes at `srcs[i]`. Returns one
    /// flag per page (false: not stored, e.g. larger than a pool segment). A key
    /// already present is left as it is (keys name page contents).
    ///
    /// # Safety
    /// Each `srcs[i]` must be valid for reads of `lens[i]` bytes for the whole
    /// call (a null pointer is reported as a failed page).
    pub unsafe fn batch_set<K: AsRef<str>>(
        &self,
        keys: &[K],
        srcs: &[*const u8],
        lens: &[usize],
    ) -> Result<Vec<bool>, BatchError> {
        let addrs: Vec<usize> = srcs.iter().map(|&p| p as usize).collect();
        self.run(Op::Set, keys, &addrs, lens)
    }

    /// Copies pages into `dsts[i]` (exactly `lens[i]` bytes, which must equal
    /// the stored page's length). Returns one flag per page; a miss is `false`.
    ///
    /// # Safety
    /// Each `dsts[i]` must be valid for writes of `lens[i]` bytes for the whole
    /// call and must not overlap another destination of the batch.
    pub unsafe fn batch_get<K: AsRef<str>>(
        &self,
        keys: &[K],
        dsts: &[*mut u8],
        lens: &[usize],
    ) -> Result<Vec<bool>, BatchError> {
        let addrs: Vec<usize> = dsts.iter().map(|&p| p as usize).collect();
        self.run(Op::Get, keys, &addrs, lens)
    }

    /// Safe form of [`Node::batch_set`] over byte slices.
    pub fn batch_set_pages<K: AsRef<str>>(
        &self,
        keys: &[K],
        pages: &[&[u8]],
    ) -> Result<Vec<bool>, BatchError> {
        let srcs: Vec<*const u8> = pages.iter().map(|p| p.as_ptr()).collect();
        let lens: Vec<usize> = pages.iter().map(|p| p.len()).collect();
        // SAFETY: the slices are borrowed for the whole call.
        unsafe { self.batch_set(keys, &srcs, &lens) }
    }

    /// Safe form of [`Node::batch_get`] into mutable byte slices.
    pub fn batch_get_into<K: AsRef<str>>(
        &self,
        keys: &[K],
        dsts: &mut [&mut [u8]],
    ) -> Result<Vec<bool>, BatchError> {
        let ptrs: Vec<*mut u8> = dsts.iter_mut().map(|d| d.as_mut_ptr()).collect();
        let lens: Vec<usize> = dsts.iter().map(|d| d.len()).collect();
        // SAFETY: distinct &mut slices, borrowed for the whole call.
        unsafe { self.batch_get(keys, &ptrs, &lens) }
    }

    /// Length of the longest prefix of `keys` whose pages are all present.
    pub fn batch_exists<K: AsRef<str>>(&self, keys: &[K]) -> Result<usize, BatchError> {
        let found = self.batch_exists_each(keys)?;
        Ok(found.iter().position(|&f| !f).unwrap_or(found.len()))
    }

    /// Whether each page of `keys` is present, one flag per key (for callers
    /// that need more than the longest prefix, e.g. SGLang's trailing-pages
    /// hit policy). Same cost as [`Node::batch_exists`]: every key is probed.
    pub fn batch_exists_each<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<bool>, BatchError> {
        self.run(Op::Exists, keys, &[], &[])
    }

    /// Drops every page of this node's pool.
    pub fn clear(&self) {
        let done = BatchCompletion::new(self.shards());
        for shard in 0..self.shards() {
            if let Err((e, _)) = self
                .runtime
                .submit(shard, StoreJob::Clear(&done), SUBMIT_TIMEOUT)
            {
                tracing::warn!("clear: shard {shard} not cleared: {e}");
                done.part_done();
            }
        }
        done.wait();
    }

    /// Registers a caller's buffer that pages are read into (SGLang's host KV
    /// pool) with every rail, LOCAL_WRITE only: a peer can never access it.
    /// Without it a READ destination is registered lazily (counted in
    /// `rdma_local_reg_misses`). Returns how many rails registered it (0 when
    /// the node does not run on RDMA).
    ///
    /// # Safety
    /// `[addr, addr+len)` must stay mapped for the life of the node.
    pub unsafe fn register_host_buffer(&self, addr: usize, len: usize) -> Result<u64, String> {
        let done = BatchCompletion::new(self.shards());
        let errors = Mutex::new(Vec::new());
        for shard in 0..self.shards() {
            let job = StoreJob::RegisterHostBuffer {
                addr,
                len,
                errors: &errors,
                done: &done,
            };
            if let Err((e, _)) = self.runtime.submit(shard, job, SUBMIT_TIMEOUT) {
                errors
                    .lock()
                    .expect("not poisoned")
                    .push(format!("shard {shard}: {e}"));
                done.part_done();
            }
        }
        done.wait();
        let errors = errors.into_inner().expect("not poisoned");
        if errors.is_empty() {
            let rails = self.stats().rdma_rails;
            // The line seed 000 has the operator look for once SGLang handed
            // over its host pool.
            if rails > 0 {
                tracing::info!(
                    "PeerCacheStore registered MRs: recv={len} bytes, pool={} bytes on {rails} rail(s) (recv LOCAL_WRITE, pool REMOTE_READ)",
                    self.pool_bytes()
                );
            } else {
                tracing::info!(
                    "PeerCacheStore registered MRs: recv={len} bytes, pool={} bytes (RDMA unavailable: nothing is registered with a NIC; these are what RDMA would register)",
                    self.pool_bytes()
                );
            }
            Ok(rails)
        } else {
            Err(format!(
                "registering the host buffer ({len} bytes at {addr:#x}) with the NIC failed: {}",
                errors.join("; ")
            ))
        }
    }

    /// Waits until every shard has written its queued disk writes and synced
    /// its slab (a no-op without the disk tier). `shutdown` calls it, so a
    /// clean stop keeps every page that reached the write queue.
    pub fn flush_disk(&self) {
        let done = BatchCompletion::new(self.shards());
        for shard in 0..self.shards() {
            if let Err((e, _)) =
                self.runtime
                    .submit(shard, StoreJob::DiskFlush(&done), SUBMIT_TIMEOUT)
            {
                tracing::warn!("disk flush: shard {shard} not flushed: {e}");
                done.part_done();
            }
        }
        done.wait();
    }

    /// Counters summed over every shard.
    pub fn stats(&self) -> NodeStats {
        let mut total = NodeStats::default();
        for s in &self.stats {
            total += s.snapshot();
        }
        total
    }

    /// Counters of each shard.
    pub fn shard_stats(&self) -> Vec<NodeStats> {
        self.stats.iter().map(|s| s.snapshot()).collect()
    }

    /// For a child forked (without exec) from this node's process, where the
    /// node's threads do not exist, so it can be neither used nor shut down:
    /// leaks the node, after closing the child's copy of the disk
    /// directory's lock (flock belongs to the open file, so the copy would
    /// keep the directory locked after the parent is gone, and a restart
    /// under this `node_id` would be refused while the child lives).
    pub fn forget_in_fork(self) {
        if let Some(claim) = &self._disk_claim {
            claim.close_in_fork();
        }
        std::mem::forget(self);
    }

    /// Leaves the cluster (deregisters from discovery), then stops every
    /// shard after the work already queued and joins them. Idempotent.
    pub fn shutdown(&mut self) {
        // Metrics first: a scrape of a node that is leaving would report a
        // member count already out of date.
        if let Some(mut metrics) = self.metrics.take() {
            metrics.stop();
        }
        if let Some(mut discovery) = self.discovery.take() {
            discovery.shutdown();
        }
        if !self.shut_down {
            self.shut_down = true;
            self.flush_disk();
        }
        self.runtime.shutdown();
    }

    fn run<K: AsRef<str>>(
        &self,
        op: Op,
        keys: &[K],
        addrs: &[usize],
        lens: &[usize],
    ) -> Result<Vec<bool>, BatchError> {
        let n = keys.len();
        if op != Op::Exists && (addrs.len() != n || lens.len() != n) {
            return Err(BatchError::LengthMismatch {
                keys: n,
                addrs: addrs.len(),
                lens: lens.len(),
            });
        }
        if n > MAX_BATCH_PAGES {
            return Err(BatchError::TooLarge(n));
        }
        let mut results = vec![false; n];
        if n == 0 {
            return Ok(results);
        }
        let started = Instant::now();
        let shards = self.shards();
        let hashes: Vec<KeyHash> = keys
            .iter()
            .map(|k| self.namespace.hash(k.as_ref()))
            .collect();
        // Group positions by shard (counting sort): order[starts[s]..starts[s+1]]
        // are the positions shard s owns, in batch order.
        let mut starts = vec![0u32; shards + 1];
        for h in &hashes {
            starts[h.shard(shards) + 1] += 1;
        }
        for s in 0..shards {
            starts[s + 1] += starts[s];
        }
        let mut fill = starts.clone();
        let mut order = vec![0u32; n];
        for (i, h) in hashes.iter().enumerate() {
            let s = h.shard(shards);
            order[fill[s] as usize] = i as u32;
            fill[s] += 1;
        }
        let parts = (0..shards).filter(|&s| starts[s + 1] > starts[s]).count();
        let done = BatchCompletion::new(parts);
        // One "asked a peer" flag per shard, written only by that shard.
        let mut remote = vec![false; shards];
        let remote_flags = remote.as_mut_ptr();
        for shard in 0..shards {
            let (from, to) = (starts[shard] as usize, starts[shard + 1] as usize);
            if from == to {
                continue;
            }
            let part = BatchPart {
                op,
                indices: order[from..].as_ptr(),
                count: to - from,
                hashes: hashes.as_ptr(),
                addrs: addrs.as_ptr(),
                lens: lens.as_ptr(),
                results: results.as_mut_ptr(),
                remote: remote_flags.wrapping_add(shard),
                done: &done,
                owed: None,
            };
            if let Err((e, job)) = self
                .runtime
                .submit(shard, StoreJob::Batch(part), SUBMIT_TIMEOUT)
            {
                // Those pages stay `false`: a miss, never an error into SGLang.
                tracing::warn!(
                    "{op:?}: {} pages of shard {shard} not processed: {e}",
                    to - from
                );
                drop(job); // the part's drop marks it done
            }
        }
        done.wait_spinning(self.wait_spin);
        let timed = match op {
            Op::Set => LatencyOp::Set,
            Op::Exists => LatencyOp::Exists,
            Op::Get if remote.contains(&true) => LatencyOp::GetRemote,
            Op::Get => LatencyOp::GetLocal,
        };
        self.latency.record(timed, started.elapsed());
        Ok(results)
    }
}

/// A new incarnation: the time in ms, and above every one this process gave
/// before, so two nodes of one id started in the same millisecond (tests
/// restart nodes in-process) still differ. Across processes the clock does
/// the ordering discovery relies on (newest incarnation wins).
fn next_incarnation() -> u64 {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// Posts `view` for every shard and pushes each a wake-up, never waiting.
fn deliver_membership(runtime: &Runtime<StoreJob>, views: &ViewMailbox, view: Arc<ClusterView>) {
    let (epoch, number) = (view.epoch(), views.post(view));
    for shard in 0..runtime.shards() {
        // Only a wake-up for an idle shard, so it never waits: a shard whose
        // inbox is full has jobs to handle, and takes the view before the
        // first of them (`views.rs`).
        match runtime.submit(shard, StoreJob::Membership, Duration::ZERO) {
            Ok(()) | Err((RuntimeError::ShuttingDown, _)) => {}
            Err((e, _)) => tracing::debug!(
                "membership epoch {epoch} (view {number}): no wake-up for shard {shard} ({e}); it takes the view before its next job"
            ),
        }
    }
}

/// A discovery record as a data-path route (None when its endpoints are not
/// IP:port, which discovery's own checks should already have refused).
fn route_of(m: &Member) -> Option<MemberRoute> {
    let endpoints: Option<Vec<SocketAddr>> = m
        .control_endpoints
        .iter()
        .map(|(host, port)| {
            host.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, *port))
        })
        .collect();
    Some(MemberRoute {
        node_id: m.node_id.clone(),
        node_ref: NodeRef::of(&m.node_id, m.incarnation),
        shard_endpoints: endpoints?,
    })
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod slow_peer_tests;
#[cfg(test)]
mod tests;
