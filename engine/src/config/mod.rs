//! The `extra_config` JSON object, parsed and validated.
//!
//! SGLang passes `--hicache-storage-backend-extra-config '{...}'` to every
//! rank; this module turns that object into a typed [`Config`]. Key names and
//! defaults are those of the getting-started guide's "extra_config reference"
//! tables (seed 001), plus a few PeerCache additions listed in
//! [`PEERCACHE_KEYS`]. The user-facing reference is `docs/configuration.md`.
//!
//! Parsing is lenient about spelling of values (`"8gb"`, `"true"`, `"2.0"`)
//! and strict about meaning: a bad value fails fast with a [`ConfigError`]
//! that names the key, the value and what to write instead. Unknown keys are
//! not errors; they produce a warning (logged and kept in
//! [`Config::warnings`]) that suggests the closest known key.

pub mod addr;
mod error;
pub mod size;
pub mod suggest;
mod value;

#[cfg(test)]
mod tests;

use crate::discovery::MAX_NODE_ID_CHARS;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

pub use addr::{HostPort, DEFAULT_DISCOVERY_PORT};
pub use error::ConfigError;
pub use value::parse_bool_str;

use value::describe;

/// Keys from the seed documentation, in the order of its tables
/// (`device_names` comes from the multi-node demo, seed 000).
pub const SEED_KEYS: &[&str] = &[
    "backend_name",
    "module_path",
    "class_name",
    "discovery_addr",
    "mode",
    "write_policy",
    "role",
    "protocol",
    "device_name",
    "device_names",
    "ib_port",
    "gid_index",
    "max_channels_per_peer",
    "global_segment_size",
    "vnodes",
    "directory_replicas",
    "directory_read_cache_ttl",
    "max_masters",
    "disk_enabled",
    "disk_path",
    "disk_size",
    "metrics_enabled",
    "metrics_port",
    "metrics_bind_host",
    "metrics_dashboard",
    "meta_bind_host",
    "local_hostname",
    "rdma_bind_host",
    "rdma_port",
    "control_bind_host",
    "control_port",
    "node_id",
    "heartbeat_interval",
    "member_ttl",
];

/// Keys PeerCache adds to the seed's set: engine tuning, and the rank
/// description SGLang hands the backend in its storage config (the Python
/// layer copies those into the object; they may also be written by hand).
pub const PEERCACHE_KEYS: &[&str] = &[
    "shards",
    "local_rank",
    "tp_rank",
    "tp_size",
    "pp_rank",
    "pp_size",
    "is_mla_model",
    "model_name",
    "extra_backend_tag",
    "require_rdma",
    "pool_quarantine_ms",
    "prefault_pool",
    "shard_io_memory",
    "batch_wait_spin_us",
    "request_timeout_ms",
    "directory_refresh_interval",
];

/// Keys SGLang itself reads from the same `extra_config` object. They are
/// accepted without a warning and kept, uninterpreted, in
/// [`Config::sglang_passthrough`].
///
/// - `interface_v1`: the cache controller (`managers/cache_controller.py`)
///   uses the zero-copy `batch_get_v1`/`batch_set_v1` page functions for a
///   `dynamic` backend only when this is truthy.
/// - `prefetch_threshold`, `prefetch_timeout_base`,
///   `prefetch_timeout_per_ki_token`, `prefetch_timeout_max`,
///   `hicache_storage_pass_prefix_keys`: read (and popped) by
///   `HiRadixCache._parse_storage_backend_extra_config` (`mem_cache/hiradix_cache.py`).
/// - `tp_lcm_size`: popped by `HiCacheController._generate_storage_config`
///   for heterogeneous-TP head splitting.
pub const SGLANG_KEYS: &[&str] = &[
    "interface_v1",
    "prefetch_threshold",
    "prefetch_timeout_base",
    "prefetch_timeout_per_ki_token",
    "prefetch_timeout_max",
    "hicache_storage_pass_prefix_keys",
    "tp_lcm_size",
];

/// Granularity of the per-rank pool slice: [`Config::pool_bytes_per_rank`]
/// rounds down to a multiple of this.
pub const POOL_ALIGN_BYTES: u64 = 4096;

/// Where KV pages are written and served from (`mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each node publishes into its own pool; peers read from the producer.
    #[default]
    P2p,
    /// P2P plus dedicated storage servers in the same cluster; see
    /// `write_policy`. Parsed, then refused: no storage server in this build.
    Hybrid,
    /// Inference nodes are storage clients only: no local published pool.
    /// Parsed, then refused like `Hybrid`.
    Centralized,
}

/// Where a hybrid-mode write goes (`write_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WritePolicy {
    /// P2P publish into the local pool only.
    #[default]
    Local,
    /// RDMA WRITE to storage servers only.
    Storage,
    /// Both: a storage copy and a local copy.
    Both,
}

/// What this process is in the cluster (`role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Inferred from the process: an SGLang rank is `inference`.
    #[default]
    Auto,
    /// An SGLang rank (client).
    Inference,
    /// A KV storage server (`peercache-storage-server`). Parsed, then
    /// refused: no storage server in this build.
    Storage,
}

/// Data-plane transport (`protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// One-sided RDMA READ/WRITE. Falls back to TCP with a warning when no
    /// RDMA device is usable, unless [`Config::require_rdma`] is set.
    #[default]
    Rdma,
    /// TCP, for hosts without RDMA NICs.
    Tcp,
}

/// A parsed, validated `extra_config`.
///
/// Built only by [`Config::from_json`] / [`Config::from_value`], so every
/// instance satisfies the checks documented on the fields. Field names are
/// the `extra_config` keys; sizes are in bytes, durations in seconds (see the
/// [`Duration`] accessors).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    // --- Required by SGLang's dynamic-backend factory ---
    /// `backend_name`: name the dynamic factory logs (`"peercache"`). Not
    /// needed by Rust callers.
    pub backend_name: Option<String>,
    /// `module_path`: Python module the factory imports (`"peercache.store"`).
    pub module_path: Option<String>,
    /// `class_name`: class the factory instantiates (`"PeerCacheStore"`).
    pub class_name: Option<String>,
    /// `discovery_addr` (required): the bootstrap head, or a comma-separated
    /// seed list; the first entry is the pinned primary master. Entries
    /// without a port get [`DEFAULT_DISCOVERY_PORT`]. Never empty.
    pub discovery_addr: Vec<HostPort>,

    // --- Deployment mode ---
    /// `mode` (default `p2p`, the only mode this build runs).
    pub mode: Mode,
    /// `write_policy` (default `local`); only meaningful in hybrid mode,
    /// so anything else is ignored with a warning.
    pub write_policy: WritePolicy,
    /// `role` (default `auto`).
    pub role: Role,

    // --- RDMA / transport ---
    /// `protocol` (default `rdma`).
    pub protocol: Protocol,
    /// `device_name` (default `""` = first active device): one RDMA device.
    pub device_name: String,
    /// `device_names` (default empty): several RDMA devices to stripe over
    /// (multi-rail), given as `"mlx5_0,mlx5_1"` or a JSON list. No
    /// duplicates. Takes precedence over `device_name`; see
    /// [`Config::rdma_devices`].
    pub device_names: Vec<String>,
    /// `ib_port` (default 1): HCA port, 1..=255.
    pub ib_port: u8,
    /// `gid_index` (default 3): GID table index (RoCE v2 is typically 3).
    pub gid_index: u8,
    /// `max_channels_per_peer` (default 16, 1..=1024): concurrent data-plane
    /// channels (RDMA QP+CQ, or TCP connections) to one peer.
    pub max_channels_per_peer: u32,

    // --- Capacity / placement ---
    /// `global_segment_size` (default 4gb), bytes: published memory pool per
    /// node, sliced across `tp_size` ranks ([`Config::pool_bytes_per_rank`]).
    /// Never zero.
    pub global_segment_size: u64,
    /// `vnodes` (default 160, 1..=65536): virtual nodes per node on the
    /// consistent-hash ring.
    pub vnodes: u32,
    /// `directory_replicas` (default 2, 1..=64): owners per directory entry.
    pub directory_replicas: u32,
    /// `directory_read_cache_ttl` (default 0 = off), seconds, >= 0: how long
    /// resolved read locations are cached.
    pub directory_read_cache_ttl: f64,
    /// `max_masters` (default 3, 1..=64): discovery masters in the cluster.
    pub max_masters: u32,

    // --- Disk tier (L4) ---
    /// `disk_enabled` (default true): write every stored page through to a
    /// disk slab, from which pages the pool evicted are promoted back.
    pub disk_enabled: bool,
    /// `disk_path` (default `/data/peercache/`): data directory; each node
    /// uses a `node_id` subdirectory. Non-empty when the disk tier is on.
    pub disk_path: PathBuf,
    /// `disk_size` (default 100gb), bytes: disk capacity per node. Non-zero
    /// when the disk tier is on.
    pub disk_size: u64,

    // --- Monitoring ---
    /// `metrics_enabled` (default true): serve `/metrics` and the dashboard.
    pub metrics_enabled: bool,
    /// `metrics_port` (default 31997; 0 = any free port).
    pub metrics_port: u16,
    /// `metrics_bind_host` (default `0.0.0.0`).
    pub metrics_bind_host: String,
    /// `metrics_dashboard` (default true): serve the HTML dashboard at `/`.
    pub metrics_dashboard: bool,

    // --- Networking / identity ---
    /// `meta_bind_host` (default `0.0.0.0`): interface of the embedded
    /// discovery master. Its port is the head's (the first `discovery_addr`
    /// entry) on every host, so every entry of a seed list should carry
    /// that same port.
    pub meta_bind_host: String,
    /// `local_hostname` (default auto = `None`): address advertised to peers;
    /// `None` means the local IP that routes to `discovery_addr`.
    pub local_hostname: Option<String>,
    /// `rdma_bind_host` (default `0.0.0.0`): like `rdma_port`, accepted and
    /// without effect.
    pub rdma_bind_host: String,
    /// `rdma_port` (default 0): accepted for the seeds' configs; no effect
    /// (queue pairs connect over the control connection), warned when set.
    pub rdma_port: u16,
    /// `control_bind_host` (default `0.0.0.0`).
    pub control_bind_host: String,
    /// `control_port` (default 0 = auto-assign): control RPC port.
    pub control_port: u16,
    /// `node_id` (default auto = `None`): stable node identifier, also a
    /// directory name under `disk_path` (no `/`, not `.` or `..`, at most 128
    /// characters). `None`: generated from `local_hostname` and a random suffix.
    pub node_id: Option<String>,
    /// `heartbeat_interval` (default 2.0), seconds, > 0.
    pub heartbeat_interval: f64,
    /// `member_ttl` (default 6.0), seconds; greater than `heartbeat_interval`.
    pub member_ttl: f64,

    // --- PeerCache additions ---
    /// `shards` (default 0 = auto, at most 1024): shard threads (one per core)
    /// when there is no RDMA NIC; with NICs, one shard per local rail.
    pub shards: usize,
    /// `local_rank` (default `None` = `tp_rank`): index of this process among
    /// the PeerCache processes on the host, used to choose cores; see
    /// [`Config::local_rank`].
    pub local_rank: Option<usize>,
    /// `tp_rank` (default 0): tensor-parallel rank; less than `tp_size`.
    pub tp_rank: usize,
    /// `tp_size` (default 1, >= 1): tensor-parallel world size.
    pub tp_size: usize,
    /// `pp_rank` (default 0): pipeline-parallel rank; less than `pp_size`.
    pub pp_rank: usize,
    /// `pp_size` (default 1, >= 1): pipeline-parallel world size.
    pub pp_size: usize,
    /// `is_mla_model` (default false): KV is identical on every TP rank
    /// (MLA), so keys carry no TP suffix.
    pub is_mla_model: bool,
    /// `model_name` (default `""`): namespace that keeps two models' keys apart.
    pub model_name: String,
    /// `extra_backend_tag` (default `None`): further key namespace, e.g. a
    /// KV dtype or a deployment name.
    pub extra_backend_tag: Option<String>,
    /// `require_rdma` (default false): fail at start-up instead of falling
    /// back to TCP when no RDMA device is usable. Needs `protocol` `rdma`.
    pub require_rdma: bool,
    /// `pool_quarantine_ms` (default 200, at most 60000): how long an evicted
    /// pool slot waits before reuse, so in-flight one-sided reads of it end.
    pub pool_quarantine_ms: u64,
    /// `prefault_pool` (default true): touch every pool page at start-up so
    /// the first writes do not fault.
    pub prefault_pool: bool,
    /// `shard_io_memory` (default 1mb, 64kb..=1gb), bytes: glommio
    /// `io_memory` per shard.
    pub shard_io_memory: u64,
    /// `batch_wait_spin_us` (default 0, at most 10000): how long a caller
    /// spins waiting for its batch before it sleeps. Waking a sleeping thread
    /// costs tens of microseconds on some hosts; spinning saves that on hosts
    /// with spare cores, and only wastes a core where there are none.
    pub batch_wait_spin_us: u64,
    /// `request_timeout_ms` (default 2000, 10..=600000): how long one remote
    /// exchange may wait for its peer; a read gets the time its bytes take
    /// at a floor rate on top (see [`crate::net::deadline`]). A peer that
    /// does not answer within it is skipped for `member_ttl`.
    pub request_timeout_ms: u64,
    /// `directory_refresh_interval` (default 60, 0 = off), seconds: how
    /// often each shard re-sends the directory entries of the pages it
    /// holds, besides on every membership change. Entries can be lost in
    /// ways no change announces (a put that raced two views on its owner,
    /// another node's eviction deleting the entry of a page both nodes
    /// hold); this bounds how long such a page stays unfindable.
    pub directory_refresh_interval: f64,

    // --- Bookkeeping ---
    /// The [`SGLANG_KEYS`] present in the object, as given.
    #[serde(flatten)]
    pub sglang_passthrough: BTreeMap<String, Value>,
    /// Warnings produced while parsing (unknown keys with suggestions, keys
    /// without effect); each was also logged with `tracing::warn!`.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

impl Config {
    /// Parses the `extra_config` JSON text (an object).
    pub fn from_json(text: &str) -> Result<Config, ConfigError> {
        let value: Value = serde_json::from_str(text).map_err(|e| ConfigError::Json {
            reason: e.to_string(),
        })?;
        Config::from_value(&value)
    }

    /// Parses an `extra_config` object already decoded from JSON.
    pub fn from_value(value: &Value) -> Result<Config, ConfigError> {
        let Value::Object(map) = value else {
            return Err(ConfigError::NotAnObject {
                got: describe(value),
            });
        };
        let mut reader = Reader::new(map);
        let mut config = reader.read_all()?;
        config.warnings = reader.finish(&config);
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        Ok(config)
    }

    /// This configuration as an `extra_config` object: every key with its
    /// effective value (sizes in bytes, durations in seconds, `null` for
    /// "auto"). [`Config::from_value`] reads it back to an equal `Config`.
    /// Used for benchmark metadata.
    pub fn to_json_value(&self) -> Value {
        serde_json::to_value(self).expect("Config serializes to JSON: all floats are finite")
    }

    /// This rank's slice of the published pool: `global_segment_size /
    /// tp_size`, rounded down to a multiple of [`POOL_ALIGN_BYTES`]. Never
    /// zero in a `Config` that parsed.
    pub fn pool_bytes_per_rank(&self) -> u64 {
        let per_rank = self.global_segment_size / self.tp_size as u64;
        per_rank - per_rank % POOL_ALIGN_BYTES
    }

    /// `heartbeat_interval` as a [`Duration`].
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs_f64(self.heartbeat_interval)
    }

    /// `member_ttl` as a [`Duration`].
    pub fn member_ttl(&self) -> Duration {
        Duration::from_secs_f64(self.member_ttl)
    }

    /// `request_timeout_ms` as a [`Duration`].
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// `directory_refresh_interval` as a [`Duration`] (zero = off).
    pub fn directory_refresh_interval(&self) -> Duration {
        Duration::from_secs_f64(self.directory_refresh_interval)
    }

    /// `directory_read_cache_ttl` as a [`Duration`] (zero = cache off).
    pub fn directory_read_cache_ttl(&self) -> Duration {
        Duration::from_secs_f64(self.directory_read_cache_ttl)
    }

    /// `pool_quarantine_ms` as a [`Duration`].
    pub fn pool_quarantine(&self) -> Duration {
        Duration::from_millis(self.pool_quarantine_ms)
    }

    /// The RDMA devices to open: `device_names` when set, else
    /// `[device_name]` when that is non-empty, else none (meaning: the first
    /// active device).
    pub fn rdma_devices(&self) -> Vec<String> {
        if !self.device_names.is_empty() {
            self.device_names.clone()
        } else if !self.device_name.is_empty() {
            vec![self.device_name.clone()]
        } else {
            Vec::new()
        }
    }

    /// The configured `node_id` of this process: with several TP or PP
    /// ranks, `-tp<tp_rank>` (when `tp_size` > 1) and `-pp<pp_rank>` (when
    /// `pp_size` > 1) are appended. SGLang gives every rank the same
    /// extra_config, so the ranks of one server would otherwise all claim
    /// one identity (discovery keeps only the newest, and the disk tier's
    /// directory would be shared). `None` when the id is to be generated.
    pub fn rank_node_id(&self) -> Option<String> {
        let mut id = self.node_id.clone()?;
        if self.tp_size > 1 {
            id.push_str(&format!("-tp{}", self.tp_rank));
        }
        if self.pp_size > 1 {
            id.push_str(&format!("-pp{}", self.pp_rank));
        }
        Some(id)
    }

    /// The effective local rank: `local_rank` if given, else `tp_rank`.
    pub fn local_rank(&self) -> usize {
        self.local_rank.unwrap_or(self.tp_rank)
    }

    /// The pinned discovery head (the first `discovery_addr` entry).
    pub fn discovery_head(&self) -> &HostPort {
        &self.discovery_addr[0]
    }

    /// The warning to log when the cluster has fewer live members than
    /// `directory_replicas`, or `None` when it has enough.
    pub fn replicas_warning(&self, member_count: usize) -> Option<String> {
        let replicas = self.directory_replicas as usize;
        (replicas > member_count).then(|| {
            format!(
                "directory_replicas ({replicas}) exceeds live members ({member_count}): \
                 entries get {member_count} copies"
            )
        })
    }
}

/// Reads known keys out of the object, remembering which it has seen.
struct Reader<'a> {
    map: &'a Map<String, Value>,
    seen: BTreeSet<&'static str>,
}

/// The `expected ...` text for an integer range.
fn int_range_text(min: i128, max: i128) -> String {
    format!("an integer from {min} to {max} (a JSON number or a numeric string)")
}

/// `"a", "b" or "c"` for a choice list.
fn choice_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

impl<'a> Reader<'a> {
    fn new(map: &'a Map<String, Value>) -> Self {
        Reader {
            map,
            seen: BTreeSet::new(),
        }
    }

    /// The value of `key`, `None` when absent or `null` (= default).
    fn value(&mut self, key: &'static str) -> Option<&'a Value> {
        debug_assert!(
            SEED_KEYS.contains(&key) || PEERCACHE_KEYS.contains(&key),
            "{key} is not listed in SEED_KEYS or PEERCACHE_KEYS"
        );
        self.seen.insert(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn invalid(key: &str, value: &Value, expected: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_owned(),
            got: describe(value),
            expected: expected.into(),
        }
    }

    fn opt_string(&mut self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
            Some(v) => Err(Self::invalid(key, v, "a string")),
        }
    }

    fn string(&mut self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        Ok(self.opt_string(key)?.unwrap_or_else(|| default.to_owned()))
    }

    /// A string where `""` and `"auto"` (any case) mean `None`.
    fn auto_string(&mut self, key: &'static str) -> Result<Option<String>, ConfigError> {
        Ok(self
            .opt_string(key)?
            .filter(|s| !s.is_empty() && !s.eq_ignore_ascii_case("auto")))
    }

    fn host(&mut self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        let Some(v) = self.value(key) else {
            return Ok(default.to_owned());
        };
        let Value::String(s) = v else {
            return Err(Self::invalid(
                key,
                v,
                "a host name or IP address as a string, e.g. \"0.0.0.0\"",
            ));
        };
        let host = s.trim();
        addr::validate_host(host).map_err(|why| Self::invalid(key, v, why))?;
        Ok(host.to_owned())
    }

    fn boolean(&mut self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.value(key) {
            None => Ok(default),
            Some(v) => value::as_bool(v).ok_or_else(|| {
                Self::invalid(
                    key,
                    v,
                    "true or false (also \"true\"/\"false\", \"yes\"/\"no\", \"on\"/\"off\", 1/0)",
                )
            }),
        }
    }

    fn int<T: TryFrom<i128>>(
        &mut self,
        key: &'static str,
        default: T,
        min: i128,
        max: i128,
    ) -> Result<T, ConfigError> {
        let Some(v) = self.value(key) else {
            return Ok(default);
        };
        value::as_int(v)
            .filter(|n| (min..=max).contains(n))
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| Self::invalid(key, v, int_range_text(min, max)))
    }

    fn opt_int(&mut self, key: &'static str, max: i128) -> Result<Option<usize>, ConfigError> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::String(s))
                if s.trim().is_empty() || s.trim().eq_ignore_ascii_case("auto") =>
            {
                Ok(None)
            }
            Some(_) => self.int(key, 0usize, 0, max).map(Some),
        }
    }

    fn port(
        &mut self,
        key: &'static str,
        default: u16,
        zero_means: &str,
    ) -> Result<u16, ConfigError> {
        let Some(v) = self.value(key) else {
            return Ok(default);
        };
        value::as_int(v)
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| {
                Self::invalid(
                    key,
                    v,
                    format!("a port number from 0 to 65535 (0 = {zero_means})"),
                )
            })
    }

    fn size(&mut self, key: &'static str, default: u64) -> Result<u64, ConfigError> {
        const SYNTAX: &str =
            "a size: bytes as an integer, or a string like \"8gb\", \"512mb\", \"1.5GiB\" (1kb = 1024)";
        let Some(v) = self.value(key) else {
            return Ok(default);
        };
        match v {
            Value::Number(_) => value::as_int(v)
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| Self::invalid(key, v, SYNTAX)),
            Value::String(s) => {
                size::parse_size(s).map_err(|why| Self::invalid(key, v, why.to_string()))
            }
            _ => Err(Self::invalid(key, v, SYNTAX)),
        }
    }

    fn seconds(
        &mut self,
        key: &'static str,
        default: f64,
        zero_ok: bool,
    ) -> Result<f64, ConfigError> {
        const MAX_SECONDS: f64 = 86_400.0;
        let Some(v) = self.value(key) else {
            return Ok(default);
        };
        let lower = if zero_ok { "0 or more" } else { "more than 0" };
        value::as_seconds(v)
            .filter(|&s| (if zero_ok { s >= 0.0 } else { s > 0.0 }) && s <= MAX_SECONDS)
            .ok_or_else(|| {
                Self::invalid(
                    key,
                    v,
                    format!(
                        "a number of seconds, {lower} and at most {MAX_SECONDS} (e.g. 2.0 or \"2.0\")"
                    ),
                )
            })
    }

    fn choice<T: Copy>(
        &mut self,
        key: &'static str,
        default: T,
        choices: &[(&'static str, T)],
    ) -> Result<T, ConfigError> {
        let Some(v) = self.value(key) else {
            return Ok(default);
        };
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        if let Value::String(s) = v {
            let wanted = s.trim().to_ascii_lowercase();
            if let Some((_, choice)) = choices.iter().find(|(name, _)| *name == wanted) {
                return Ok(*choice);
            }
            if let Some(near) = suggest::closest(&wanted, names.iter().copied()) {
                return Err(Self::invalid(
                    key,
                    v,
                    format!("{} (did you mean \"{near}\"?)", choice_list(&names)),
                ));
            }
        }
        Err(Self::invalid(key, v, choice_list(&names)))
    }

    /// A list of names given as a comma-separated string or a JSON list of
    /// strings; empty entries, bad characters and duplicates are errors.
    fn name_list(&mut self, key: &'static str) -> Result<Vec<String>, ConfigError> {
        const EXPECTED: &str =
            "device names as a comma-separated string (\"mlx5_0,mlx5_1\") or a JSON list of strings";
        let Some(v) = self.value(key) else {
            return Ok(Vec::new());
        };
        let items: Vec<String> = match v {
            Value::String(s) if s.trim().is_empty() => return Ok(Vec::new()),
            Value::String(s) => s.split(',').map(|item| item.trim().to_owned()).collect(),
            Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.trim().to_owned()),
                    _ => Err(Self::invalid(key, v, EXPECTED)),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(Self::invalid(key, v, EXPECTED)),
        };
        let mut seen = BTreeSet::new();
        for item in &items {
            if item.is_empty() {
                return Err(Self::invalid(
                    key,
                    v,
                    format!("{EXPECTED}, without empty entries"),
                ));
            }
            if let Err(why) = check_device_name(item) {
                return Err(Self::invalid(key, v, why));
            }
            if !seen.insert(item.as_str()) {
                return Err(Self::invalid(
                    key,
                    v,
                    format!("each device once; \"{item}\" is listed twice"),
                ));
            }
        }
        Ok(items)
    }

    fn discovery_addr(&mut self) -> Result<Vec<HostPort>, ConfigError> {
        const KEY: &str = "discovery_addr";
        const EXPECTED: &str = "the discovery head as \"host:port\" (port defaults to 31998) or a \
             comma-separated seed list like \"10.0.0.1:31998,10.0.0.2:31998\"";
        let Some(v) = self.value(KEY) else {
            let typo = self
                .map
                .keys()
                .filter(|k| !is_accepted_key(k))
                .find(|k| suggest::closest(k, [KEY]).is_some())
                .map(|k| format!(" (found \"{k}\": a typo?)"))
                .unwrap_or_default();
            return Err(ConfigError::Missing {
                key: KEY.to_owned(),
                hint: format!(
                    "set it to the discovery head's host:port, the same on every node, e.g. \
                     \"10.0.0.1:31998\"{typo}"
                ),
            });
        };
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Array(items) if items.iter().all(Value::is_string) => items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
            _ => return Err(Self::invalid(KEY, v, EXPECTED)),
        };
        addr::parse_host_list(&text, DEFAULT_DISCOVERY_PORT)
            .map_err(|why| Self::invalid(KEY, v, format!("{EXPECTED}; {why}")))
    }

    /// Reads every known key and checks the cross-key rules.
    fn read_all(&mut self) -> Result<Config, ConfigError> {
        let backend_name = self.opt_string("backend_name")?;
        let module_path = self.opt_string("module_path")?;
        let class_name = self.opt_string("class_name")?;
        let discovery_addr = self.discovery_addr()?;

        let mode = self.choice(
            "mode",
            Mode::P2p,
            &[
                ("p2p", Mode::P2p),
                ("hybrid", Mode::Hybrid),
                ("centralized", Mode::Centralized),
            ],
        )?;
        let write_policy = self.choice(
            "write_policy",
            WritePolicy::Local,
            &[
                ("local", WritePolicy::Local),
                ("storage", WritePolicy::Storage),
                ("both", WritePolicy::Both),
            ],
        )?;
        let role = self.choice(
            "role",
            Role::Auto,
            &[
                ("auto", Role::Auto),
                ("inference", Role::Inference),
                ("storage", Role::Storage),
            ],
        )?;

        let protocol = self.choice(
            "protocol",
            Protocol::Rdma,
            &[("rdma", Protocol::Rdma), ("tcp", Protocol::Tcp)],
        )?;
        let device_name = self.string("device_name", "")?;
        if !device_name.is_empty() {
            if let Err(why) = check_device_name(&device_name) {
                let v = self.map["device_name"].clone();
                return Err(Self::invalid(
                    "device_name",
                    &v,
                    format!("{why}, or \"\" for the first active device"),
                ));
            }
        }
        let device_names = self.name_list("device_names")?;
        let ib_port = self.int("ib_port", 1u8, 1, 255)?;
        let gid_index = self.int("gid_index", 3u8, 0, 255)?;
        let max_channels_per_peer = self.int("max_channels_per_peer", 16u32, 1, 1024)?;

        let global_segment_size = self.size("global_segment_size", 4 * size::GIB)?;
        let vnodes = self.int("vnodes", 160u32, 1, 65_536)?;
        let directory_replicas = self.int("directory_replicas", 2u32, 1, 64)?;
        let directory_read_cache_ttl = self.seconds("directory_read_cache_ttl", 0.0, true)?;
        let max_masters = self.int("max_masters", 3u32, 1, 64)?;

        let disk_enabled = self.boolean("disk_enabled", true)?;
        let disk_path = PathBuf::from(self.string("disk_path", "/data/peercache/")?);
        let disk_size = self.size("disk_size", 100 * size::GIB)?;

        let metrics_enabled = self.boolean("metrics_enabled", true)?;
        let metrics_port = self.port("metrics_port", 31997, "any free port")?;
        let metrics_bind_host = self.host("metrics_bind_host", "0.0.0.0")?;
        let metrics_dashboard = self.boolean("metrics_dashboard", true)?;

        let meta_bind_host = self.host("meta_bind_host", "0.0.0.0")?;
        let local_hostname = self.auto_string("local_hostname")?;
        if let Some(host) = &local_hostname {
            if let Err(why) = addr::validate_host(host) {
                let v = self.map["local_hostname"].clone();
                return Err(Self::invalid(
                    "local_hostname",
                    &v,
                    format!("{why}, or \"auto\""),
                ));
            }
        }
        let rdma_bind_host = self.host("rdma_bind_host", "0.0.0.0")?;
        let rdma_port = self.port("rdma_port", 0, "auto-assign")?;
        let control_bind_host = self.host("control_bind_host", "0.0.0.0")?;
        let control_port = self.port("control_port", 0, "auto-assign")?;
        let node_id = self.auto_string("node_id")?;
        if let Some(id) = &node_id {
            if let Err(why) = check_node_id(id) {
                let v = self.map["node_id"].clone();
                return Err(Self::invalid("node_id", &v, why));
            }
        }
        let heartbeat_interval = self.seconds("heartbeat_interval", 2.0, false)?;
        let member_ttl = self.seconds("member_ttl", 6.0, false)?;

        let shards = self.int("shards", 0usize, 0, 1024)?;
        let local_rank = self.opt_int("local_rank", 4095)?;
        let tp_rank = self.int("tp_rank", 0usize, 0, 4095)?;
        let tp_size = self.int("tp_size", 1usize, 1, 4096)?;
        let pp_rank = self.int("pp_rank", 0usize, 0, 4095)?;
        let pp_size = self.int("pp_size", 1usize, 1, 4096)?;
        let is_mla_model = self.boolean("is_mla_model", false)?;
        let model_name = self.string("model_name", "")?;
        let extra_backend_tag = self
            .opt_string("extra_backend_tag")?
            .filter(|s| !s.is_empty());
        let require_rdma = self.boolean("require_rdma", false)?;
        let pool_quarantine_ms = self.int("pool_quarantine_ms", 200u64, 0, 60_000)?;
        let prefault_pool = self.boolean("prefault_pool", true)?;
        let shard_io_memory = self.size("shard_io_memory", size::MIB)?;
        let batch_wait_spin_us = self.int("batch_wait_spin_us", 0u64, 0, 10_000)?;
        let request_timeout_ms = self.int("request_timeout_ms", 2000u64, 10, 600_000)?;
        let directory_refresh_interval = self.seconds("directory_refresh_interval", 60.0, true)?;

        let sglang_passthrough = self
            .map
            .iter()
            .filter(|(k, v)| SGLANG_KEYS.contains(&k.as_str()) && !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();

        let config = Config {
            backend_name,
            module_path,
            class_name,
            discovery_addr,
            mode,
            write_policy,
            role,
            protocol,
            device_name,
            device_names,
            ib_port,
            gid_index,
            max_channels_per_peer,
            global_segment_size,
            vnodes,
            directory_replicas,
            directory_read_cache_ttl,
            max_masters,
            disk_enabled,
            disk_path,
            disk_size,
            metrics_enabled,
            metrics_port,
            metrics_bind_host,
            metrics_dashboard,
            meta_bind_host,
            local_hostname,
            rdma_bind_host,
            rdma_port,
            control_bind_host,
            control_port,
            node_id,
            heartbeat_interval,
            member_ttl,
            shards,
            local_rank,
            tp_rank,
            tp_size,
            pp_rank,
            pp_size,
            is_mla_model,
            model_name,
            extra_backend_tag,
            require_rdma,
            pool_quarantine_ms,
            prefault_pool,
            batch_wait_spin_us,
            request_timeout_ms,
            directory_refresh_interval,
            shard_io_memory,
            sglang_passthrough,
            warnings: Vec::new(),
        };
        self.check(&config)?;
        Ok(config)
    }

    /// Single-key checks that depend on other keys, and cross-key rules.
    fn check(&self, c: &Config) -> Result<(), ConfigError> {
        let given = |key: &str| self.map.get(key).cloned().unwrap_or(Value::Null);
        // Seed 001's hybrid and centralized modes write to dedicated storage
        // servers (`peercache-storage-server`), which this build does not
        // have: refusing here beats running plain P2P under a mode the
        // operator did not ask for.
        if c.mode != Mode::P2p {
            return Err(Self::invalid(
                "mode",
                &given("mode"),
                "\"p2p\" (the default): modes \"hybrid\" and \"centralized\" need dedicated \
                 storage servers (peercache-storage-server), which this build does not include",
            ));
        }
        if c.role == Role::Storage {
            return Err(Self::invalid(
                "role",
                &given("role"),
                "\"auto\" or \"inference\": a storage server (peercache-storage-server) is not \
                 part of this build",
            ));
        }
        if c.global_segment_size == 0 {
            return Err(Self::invalid(
                "global_segment_size",
                &given("global_segment_size"),
                "a non-zero pool size such as \"4gb\"",
            ));
        }
        if c.disk_enabled && c.disk_size == 0 {
            return Err(Self::invalid(
                "disk_size",
                &given("disk_size"),
                "a non-zero disk capacity such as \"100gb\", or set \"disk_enabled\": false",
            ));
        }
        if c.disk_enabled && c.disk_path.as_os_str().is_empty() {
            return Err(Self::invalid(
                "disk_path",
                &given("disk_path"),
                "a directory such as \"/data/peercache/\", or set \"disk_enabled\": false",
            ));
        }
        if c.shard_io_memory < 64 * size::KIB || c.shard_io_memory > size::GIB {
            return Err(Self::invalid(
                "shard_io_memory",
                &given("shard_io_memory"),
                "a size from \"64kb\" to \"1gb\" (default \"1mb\")",
            ));
        }
        if c.member_ttl <= c.heartbeat_interval {
            return Err(ConfigError::Conflict {
                key: "member_ttl".to_owned(),
                other: "heartbeat_interval".to_owned(),
                problem: format!(
                    "member_ttl ({}) must exceed heartbeat_interval ({}); set member_ttl to about \
                     3 x heartbeat_interval, e.g. {}",
                    c.member_ttl,
                    c.heartbeat_interval,
                    c.heartbeat_interval * 3.0
                ),
            });
        }
        if c.tp_rank >= c.tp_size {
            return Err(ConfigError::Conflict {
                key: "tp_rank".to_owned(),
                other: "tp_size".to_owned(),
                problem: format!(
                    "tp_rank ({}) must be less than tp_size ({}); ranks count from 0",
                    c.tp_rank, c.tp_size
                ),
            });
        }
        if c.pp_rank >= c.pp_size {
            return Err(ConfigError::Conflict {
                key: "pp_rank".to_owned(),
                other: "pp_size".to_owned(),
                problem: format!(
                    "pp_rank ({}) must be less than pp_size ({}); ranks count from 0",
                    c.pp_rank, c.pp_size
                ),
            });
        }
        if let Some(id) = c.rank_node_id() {
            let chars = id.chars().count();
            if chars > MAX_NODE_ID_CHARS {
                return Err(ConfigError::Conflict {
                    key: "node_id".to_owned(),
                    other: "tp_rank".to_owned(),
                    problem: format!(
                        "with its rank suffix the node id is {id:?}, {chars} characters; \
                         at most {MAX_NODE_ID_CHARS} are allowed, so shorten node_id"
                    ),
                });
            }
        }
        if c.pool_bytes_per_rank() == 0 {
            return Err(ConfigError::Conflict {
                key: "global_segment_size".to_owned(),
                other: "tp_size".to_owned(),
                problem: format!(
                    "global_segment_size ({} bytes) split over tp_size ({}) ranks leaves less than \
                     {POOL_ALIGN_BYTES} bytes per rank; raise global_segment_size, e.g. \"4gb\"",
                    c.global_segment_size, c.tp_size
                ),
            });
        }
        if c.require_rdma && c.protocol == Protocol::Tcp {
            return Err(ConfigError::Conflict {
                key: "require_rdma".to_owned(),
                other: "protocol".to_owned(),
                problem: "require_rdma is true but protocol is \"tcp\"; set protocol to \"rdma\" \
                          or drop require_rdma"
                    .to_owned(),
            });
        }
        Ok(())
    }

    /// The warnings for this object: unknown keys (with suggestions) and
    /// keys that have no effect.
    fn finish(&self, c: &Config) -> Vec<String> {
        let mut warnings = Vec::new();
        let accepted = || {
            SEED_KEYS
                .iter()
                .chain(PEERCACHE_KEYS)
                .chain(SGLANG_KEYS)
                .copied()
        };
        for key in self.map.keys() {
            if self.seen.contains(key.as_str()) || SGLANG_KEYS.contains(&key.as_str()) {
                continue;
            }
            let warning = match suggest::closest(key, accepted()) {
                Some(near) => format!(
                    "extra_config key \"{key}\" is not a PeerCache setting and is ignored; \
                     did you mean \"{near}\"?"
                ),
                None => format!(
                    "extra_config key \"{key}\" is not a PeerCache setting and is ignored \
                     (see docs/configuration.md for the keys)"
                ),
            };
            warnings.push(warning);
        }
        let mut seen_addrs = BTreeSet::new();
        for entry in &c.discovery_addr {
            if !seen_addrs.insert(entry) {
                warnings.push(format!(
                    "extra_config key \"discovery_addr\" lists {entry} more than once; the \
                     duplicate is harmless but can be removed"
                ));
            }
            if addr::looks_like_placeholder(&entry.host) {
                warnings.push(format!(
                    "extra_config key \"discovery_addr\": \"{}\" looks like a placeholder from \
                     the docs; replace it with the discovery head's IP address",
                    entry.host
                ));
            }
        }
        if c.write_policy != WritePolicy::Local {
            warnings.push(format!(
                "extra_config key \"write_policy\" ({}) only applies with \"mode\": \"hybrid\", \
                 which this build does not include; it is ignored and pages are published \
                 into the local pool",
                serde_json::to_string(&c.write_policy).unwrap_or_default(),
            ));
        }
        // RDMA queue pairs are connected through the control connection, so
        // there is no RDMA bootstrap listener for these two keys to move.
        for (key, set) in [
            ("rdma_port", c.rdma_port != 0),
            ("rdma_bind_host", c.rdma_bind_host != "0.0.0.0"),
        ] {
            if set {
                warnings.push(format!(
                    "extra_config key \"{key}\" has no effect: RDMA queue pairs are connected \
                     over the control connection (control_bind_host / control_port), so there \
                     is no separate RDMA bootstrap port; it is ignored"
                ));
            }
        }
        if !c.device_names.is_empty()
            && !c.device_name.is_empty()
            && !c.device_names.contains(&c.device_name)
        {
            warnings.push(format!(
                "extra_config key \"device_name\" (\"{}\") is ignored because \"device_names\" \
                 is set; list every device in device_names",
                c.device_name
            ));
        }
        if c.member_ttl < 2.0 * c.heartbeat_interval {
            warnings.push(format!(
                "extra_config key \"member_ttl\" ({}) is under two heartbeat intervals ({}): a \
                 single late heartbeat will drop a live node; about 3 x heartbeat_interval is safer",
                c.member_ttl, c.heartbeat_interval
            ));
        }
        warnings
    }
}

/// Whether `key` is one this module reads or deliberately passes through.
fn is_accepted_key(key: &str) -> bool {
    SEED_KEYS.contains(&key) || PEERCACHE_KEYS.contains(&key) || SGLANG_KEYS.contains(&key)
}

/// An RDMA device name: non-empty, letters, digits, `_`, `-`, `.`.
fn check_device_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "an RDMA device name such as \"mlx5_0\" (letters, digits, '_', '-', '.'; \
             \"{name}\" is not one)"
        ))
    }
}

/// A node id: usable as one directory name.
fn check_node_id(id: &str) -> Result<(), String> {
    if id == "." || id == ".." || id.contains('/') || id.contains('\0') {
        return Err("a node id usable as a directory name: no '/', not \".\" or \"..\"".to_owned());
    }
    if id.chars().count() > MAX_NODE_ID_CHARS {
        return Err(format!(
            "a node id of at most {MAX_NODE_ID_CHARS} characters"
        ));
    }
    if id.chars().any(char::is_whitespace) {
        return Err("a node id without spaces".to_owned());
    }
    Ok(())
}
