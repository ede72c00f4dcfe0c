//! Page keys: namespacing, hashing and SGLang's per-rank component names.
//!
//! SGLang's HiCache hands a storage backend one string key per logical page
//! (a hex digest of the token prefix). A zero-copy backend stores each page as
//! one or two *components* (K, or K and V) whose names carry the tensor- and
//! pipeline-parallel rank, because every rank owns a different slice of the
//! page. [`RankKeys`] reproduces that naming exactly.
//!
//! PeerCache never stores the resulting strings. The directory and the pool are
//! indexed by a 128-bit [`KeyHash`] of the component name inside a
//! [`Namespace`] (model name plus optional `extra_backend_tag`), so that two
//! models, or two deployments that opted into separate tags, can share nodes
//! without ever aliasing each other's pages, and so that directory entries are
//! fixed-size.
//!
//! The hash is also the placement input: [`KeyHash::ring_point`] (high 64 bits)
//! picks the directory owners on the consistent-hash ring and
//! [`KeyHash::shard`] (low 64 bits) picks the core-local shard on a node. Using
//! disjoint halves of the digest keeps the two choices statistically
//! independent, so the keys one node owns still spread over all of its shards.

use std::fmt;
use std::fmt::Write as _;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3Default;

/// Domain-separation tag hashed in front of every key.
///
/// Versioned so that a future change to the namespace encoding produces
/// disjoint hashes instead of silently aliasing old entries.
const DOMAIN: &[u8] = b"peercache.key.v1";

/// Field terminator inside the hashed byte stream.
///
/// `0xFF` never occurs in well-formed UTF-8, and model names, tags and SGLang
/// keys are all Rust `&str`, so the terminator cannot be confused with content:
/// the encoding `DOMAIN 0xFF model 0xFF flag [tag 0xFF] key` is injective.
const SEP: u8 = 0xFF;

/// Flag byte recorded when no `extra_backend_tag` is configured.
const TAG_ABSENT: u8 = 0x00;

/// Flag byte recorded when an `extra_backend_tag` is configured (even an
/// empty one, which SGLang also treats as distinct from "no tag").
const TAG_PRESENT: u8 = 0x01;

/// 128-bit xxh3 digest of a namespaced component key.
///
/// This is what the directory, the published pool and the wire carry instead
/// of key strings: it is fixed-size, cheap to compare and to shard, and 128
/// bits make accidental collisions negligible even across billions of pages.
/// `Debug`/`Display` render it as 32 lowercase hex digits, and [`FromStr`]
/// parses that form back, so logs and tools can name a key unambiguously.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyHash(pub u128);

impl KeyHash {
    /// The 64 bits used to place the key on the consistent-hash ring.
    ///
    /// These are the high 64 bits of the digest; [`KeyHash::shard`] uses the
    /// low 64 bits, so ring ownership and intra-node shard choice do not
    /// correlate.
    #[inline]
    pub fn ring_point(self) -> u64 {
        (self.0 >> 64) as u64
    }

    /// The shard (in `0..n_shards`) that holds this key on its node.
    ///
    /// Uses the low 64 bits of the digest (disjoint from
    /// [`KeyHash::ring_point`]) reduced with a multiply-shift, which is
    /// unbiased enough for any realistic shard count and avoids a division on
    /// the hot path. `n_shards == 0` is treated as 1 so a misconfigured caller
    /// gets shard 0 rather than a panic in the data path.
    #[inline]
    pub fn shard(self, n_shards: usize) -> usize {
        let n = n_shards.max(1) as u128;
        let low = self.0 as u64 as u128;
        ((low * n) >> 64) as usize
    }

    /// Big-endian byte form, for wire formats and on-disk records that want
    /// a stable byte order independent of the host.
    #[inline]
    pub fn to_be_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// Inverse of [`KeyHash::to_be_bytes`].
    #[inline]
    pub fn from_be_bytes(bytes: [u8; 16]) -> Self {
        KeyHash(u128::from_be_bytes(bytes))
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Error returned when text is not a 32-digit hex [`KeyHash`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key hash {input:?}: expected exactly 32 hex digits")]
pub struct ParseKeyHashError {
    /// The rejected input, echoed so the message says what was wrong.
    pub input: String,
}

impl FromStr for KeyHash {
    type Err = ParseKeyHashError;

    /// Parses the 32-hex-digit form produced by `Display`, so hashes copied
    /// from logs can be fed back to tools.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseKeyHashError {
            input: s.to_owned(),
        };
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        u128::from_str_radix(s, 16).map(KeyHash).map_err(|_| err())
    }
}

/// The isolation domain of a key: one model, optionally narrowed by SGLang's
/// `extra_backend_tag`.
///
/// SGLang's own backends isolate models by prepending
/// `"{extra_backend_tag}_{model_name}_"` to every key string; PeerCache gets
/// the same isolation (without the string building, and without the ambiguity
/// of `_` joins) by hashing an injective encoding of (model, tag) in front of
/// the key. The encoded prefix is fed to an xxh3 streaming state once at
/// construction; [`Namespace::hash`] clones that state and feeds only the key,
/// so hashing a page allocates nothing and does not re-hash the prefix.
#[derive(Clone)]
pub struct Namespace {
    model_name: String,
    extra_backend_tag: Option<String>,
    /// xxh3 state that has already absorbed the namespace prefix.
    prefixed: Xxh3Default,
}

impl Namespace {
    /// Builds the namespace for `model_name` and an optional
    /// `extra_backend_tag`.
    ///
    /// `None` and `Some("")` are different namespaces, matching SGLang, where
    /// an empty tag still changes the key prefix.
    pub fn new(model_name: &str, extra_backend_tag: Option<&str>) -> Self {
        let mut prefixed = Xxh3Default::new();
        prefixed.update(DOMAIN);
        prefixed.update(&[SEP]);
        prefixed.update(model_name.as_bytes());
        prefixed.update(&[SEP]);
        match extra_backend_tag {
            None => prefixed.update(&[TAG_ABSENT]),
            Some(tag) => {
                prefixed.update(&[TAG_PRESENT]);
                prefixed.update(tag.as_bytes());
                prefixed.update(&[SEP]);
            }
        }
        Namespace {
            model_name: model_name.to_owned(),
            extra_backend_tag: extra_backend_tag.map(str::to_owned),
            prefixed,
        }
    }

    /// The model name this namespace was built from (for logs and stats).
    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    /// The `extra_backend_tag` this namespace was built from, if any.
    pub fn extra_backend_tag(&self) -> Option<&str> {
        self.extra_backend_tag.as_deref()
    }

    /// xxh3-128 of the namespace prefix followed by `key`.
    ///
    /// Equivalent to one-shot xxh3-128 over the concatenated bytes (see
    /// [`Namespace::encoded_prefix`]), but computed by resuming a pre-fed
    /// streaming state: no allocation and no re-hashing of the prefix per key.
    #[inline]
    pub fn hash(&self, key: &str) -> KeyHash {
        let mut h = self.prefixed.clone();
        h.update(key.as_bytes());
        KeyHash(h.digest128())
    }

    /// Ring placement of `key` in this namespace; shorthand for
    /// `self.hash(key).ring_point()` for callers that only need routing.
    #[inline]
    pub fn ring_point(&self, key: &str) -> u64 {
        self.hash(key).ring_point()
    }

    /// The exact bytes hashed in front of every key.
    ///
    /// Exposed so other implementations (e.g. a Python tool) can reproduce
    /// [`Namespace::hash`] as `xxh3_128(encoded_prefix() + key)`; not used on
    /// the data path.
    pub fn encoded_prefix(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            DOMAIN.len()
                + self.model_name.len()
                + 4
                + self.extra_backend_tag.as_ref().map_or(0, String::len),
        );
        out.extend_from_slice(DOMAIN);
        out.push(SEP);
        out.extend_from_slice(self.model_name.as_bytes());
        out.push(SEP);
        match &self.extra_backend_tag {
            None => out.push(TAG_ABSENT),
            Some(tag) => {
                out.push(TAG_PRESENT);
                out.extend_from_slice(tag.as_bytes());
                out.push(SEP);
            }
        }
        out
    }

    /// One-shot reference implementation of [`Namespace::hash`], used by
    /// tests to pin the streaming path to the documented encoding.
    #[cfg(test)]
    fn hash_oneshot(&self, key: &str) -> KeyHash {
        let mut bytes = self.encoded_prefix();
        bytes.extend_from_slice(key.as_bytes());
        KeyHash(xxhash_rust::xxh3::xxh3_128(&bytes))
    }
}

impl PartialEq for Namespace {
    fn eq(&self, other: &Self) -> bool {
        self.model_name == other.model_name && self.extra_backend_tag == other.extra_backend_tag
    }
}

impl Eq for Namespace {}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Namespace")
            .field("model_name", &self.model_name)
            .field("extra_backend_tag", &self.extra_backend_tag)
            .finish()
    }
}

/// Component index of the K part of a page (the only component for MLA).
pub const COMPONENT_K: usize = 0;

/// Component index of the V part of a page (MHA only).
pub const COMPONENT_V: usize = 1;

/// Error returned by [`RankKeys::new`] for an impossible rank layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RankKeysError {
    /// `tp_size` or `pp_size` was zero.
    #[error("{what}_size must be at least 1 (got 0)")]
    ZeroSize {
        /// `"tp"` or `"pp"`.
        what: &'static str,
    },
    /// A rank was not below its group size.
    #[error("{what}_rank {rank} is out of range for {what}_size {size}; ranks are 0..{size}")]
    RankOutOfRange {
        /// `"tp"` or `"pp"`.
        what: &'static str,
        /// The rank given.
        rank: u32,
        /// The group size given.
        size: u32,
    },
}

/// Per-rank naming of the stored components of one logical page, exactly as
/// SGLang's zero-copy storage backends name them.
///
/// Convention (SGLang 0.5.x,
/// `python/sglang/srt/mem_cache/storage/mooncake_store/mooncake_store.py`,
/// `MooncakeStore.__init__` suffix setup, `_get_mla_buffer_meta`,
/// `_get_mha_buffer_meta`, `batch_exists`; the same scheme is mirrored by
/// other HiCache backends):
///
/// | layout | `pp_size == 1`                 | `pp_size > 1`                              |
/// |--------|--------------------------------|--------------------------------------------|
/// | MLA    | `{key}__k`                     | `{key}_{pp_rank}_k`                        |
/// | MHA    | `{key}_{tp_rank}_k`, `..._v`   | `{key}_{tp_rank}_{pp_rank}_k`, `..._v`     |
///
/// i.e. the key, `_`, a rank suffix (MHA: `tp` or `tp_pp`; MLA: empty or
/// `pp`), then `_k` / `_v`. MLA's latent cache is replicated across TP ranks,
/// so its single component carries no TP rank and every TP rank addresses the
/// same object; MHA shards heads over TP, so each rank has its own K and V.
/// Components are ordered K then V, matching the order in which SGLang's host
/// pool reports page buffers. SGLang's optional head-splitting mode
/// (`should_split_heads`, several virtual TP ranks per real rank) is not
/// modelled here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RankKeys {
    /// Tensor-parallel rank of this worker (`0..tp_size`).
    pub tp_rank: u32,
    /// Tensor-parallel group size; not part of the names (SGLang omits it),
    /// kept so callers can validate the rank and reason about MLA sharing.
    pub tp_size: u32,
    /// Pipeline-parallel rank of this worker (`0..pp_size`).
    pub pp_rank: u32,
    /// Pipeline-parallel group size; names gain a PP suffix only when > 1.
    pub pp_size: u32,
    /// Whether the model uses MLA (one shared latent component per page)
    /// rather than MHA (separate K and V per TP rank).
    pub is_mla: bool,
}

impl RankKeys {
    /// Validated constructor: rejects zero group sizes and out-of-range ranks,
    /// which would otherwise silently produce keys no other rank reads.
    pub fn new(
        tp_rank: u32,
        tp_size: u32,
        pp_rank: u32,
        pp_size: u32,
        is_mla: bool,
    ) -> Result<Self, RankKeysError> {
        for (what, rank, size) in [("tp", tp_rank, tp_size), ("pp", pp_rank, pp_size)] {
            if size == 0 {
                return Err(RankKeysError::ZeroSize { what });
            }
            if rank >= size {
                return Err(RankKeysError::RankOutOfRange { what, rank, size });
            }
        }
        Ok(RankKeys {
            tp_rank,
            tp_size,
            pp_rank,
            pp_size,
            is_mla,
        })
    }

    /// Number of stored components per logical page: 1 for MLA (K only),
    /// 2 for MHA (K and V). A page counts as present only if all are.
    #[inline]
    pub fn components(&self) -> usize {
        if self.is_mla {
            1
        } else {
            2
        }
    }

    /// Whether every TP rank names (and therefore stores) the same objects.
    ///
    /// True for MLA: the caller may let one TP rank write and the others
    /// only check existence, instead of publishing identical bytes N times.
    #[inline]
    pub fn shared_across_tp(&self) -> bool {
        self.is_mla
    }

    /// Writes the name of component `component` of page `key` into `out`,
    /// replacing its previous contents.
    ///
    /// Taking a caller-owned buffer lets a batch reuse one `String` for every
    /// page (hash it with [`Namespace::hash`] right after), so naming does
    /// not allocate per page once the buffer has grown to fit.
    ///
    /// # Panics
    ///
    /// If `component >= self.components()` (asking for V of an MLA page is a
    /// caller bug, not a data condition).
    pub fn write_component_key(&self, key: &str, component: usize, out: &mut String) {
        assert!(
            component < self.components(),
            "component {component} out of range: this layout has {} component(s) per page",
            self.components()
        );
        out.clear();
        out.push_str(key);
        out.push('_');
        // Writing integers into a String cannot fail.
        if self.is_mla {
            if self.pp_size > 1 {
                let _ = write!(out, "{}", self.pp_rank);
            }
        } else if self.pp_size > 1 {
            let _ = write!(out, "{}_{}", self.tp_rank, self.pp_rank);
        } else {
            let _ = write!(out, "{}", self.tp_rank);
        }
        out.push_str(if component == COMPONENT_K { "_k" } else { "_v" });
    }

    /// All component names of page `key`, K first.
    ///
    /// Allocates one `String` per component; meant for tests and tools, the
    /// data path uses [`RankKeys::write_component_key`].
    pub fn component_keys(&self, key: &str) -> Vec<String> {
        (0..self.components())
            .map(|c| {
                let mut s = String::with_capacity(key.len() + 16);
                self.write_component_key(key, c, &mut s);
                s
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rk(tp_rank: u32, tp_size: u32, pp_rank: u32, pp_size: u32, is_mla: bool) -> RankKeys {
        RankKeys::new(tp_rank, tp_size, pp_rank, pp_size, is_mla).unwrap()
    }

    #[test]
    fn hash_is_deterministic_and_matches_documented_encoding() {
        let ns = Namespace::new("deepseek-ai/DeepSeek-V3", Some("prod"));
        let again = Namespace::new("deepseek-ai/DeepSeek-V3", Some("prod"));
        for key in ["", "a", "0123456789abcdef", &"x".repeat(1000)] {
            assert_eq!(ns.hash(key), ns.hash(key));
            assert_eq!(ns.hash(key), again.hash(key));
            // Streaming resume == one-shot over the documented byte encoding.
            assert_eq!(ns.hash(key), ns.hash_oneshot(key));
        }
        assert_eq!(ns, again);
    }

    #[test]
    fn hash_differs_across_models_and_tags() {
        let key = "3f2a9c0d";
        let namespaces = [
            Namespace::new("model-a", None),
            Namespace::new("model-b", None),
            Namespace::new("model-a", Some("")),
            Namespace::new("model-a", Some("t1")),
            Namespace::new("model-a", Some("t2")),
            Namespace::new("model-b", Some("t1")),
        ];
        let hashes: Vec<KeyHash> = namespaces.iter().map(|n| n.hash(key)).collect();
        for i in 0..hashes.len() {
            for j in i + 1..hashes.len() {
                assert_ne!(
                    hashes[i], hashes[j],
                    "{:?} vs {:?}",
                    namespaces[i], namespaces[j]
                );
            }
        }
    }

    #[test]
    fn prefix_boundaries_are_unambiguous() {
        // Moving bytes between model and key must change the hash.
        assert_ne!(
            Namespace::new("a", None).hash("bc"),
            Namespace::new("ab", None).hash("c")
        );
        // Moving bytes between model and tag, or tag and key, too.
        assert_ne!(
            Namespace::new("a", Some("bc")).hash("k"),
            Namespace::new("ab", Some("c")).hash("k")
        );
        assert_ne!(
            Namespace::new("m", Some("a")).hash("bc"),
            Namespace::new("m", Some("ab")).hash("c")
        );
        // A tag is not confusable with a key that starts with the tag bytes.
        assert_ne!(
            Namespace::new("m", Some("t")).hash("k"),
            Namespace::new("m", None).hash("tk")
        );
        // SGLang-style "_" joins would make these collide; ours must not.
        assert_ne!(
            Namespace::new("a_b", None).hash("c"),
            Namespace::new("a", Some("b")).hash("c")
        );
    }

    #[test]
    fn keyhash_formats_as_32_hex_and_round_trips() {
        let h = KeyHash(0xabc);
        assert_eq!(h.to_string(), "00000000000000000000000000000abc");
        assert_eq!(format!("{h:?}"), h.to_string());
        let real = Namespace::new("m", None).hash("k");
        assert_eq!(real.to_string().len(), 32);
        assert_eq!(real.to_string().parse::<KeyHash>().unwrap(), real);
        assert_eq!(KeyHash::from_be_bytes(real.to_be_bytes()), real);
        assert!("abc".parse::<KeyHash>().is_err());
        assert!("+0000000000000000000000000000abc"
            .parse::<KeyHash>()
            .is_err());
        assert!("g0000000000000000000000000000abc"
            .parse::<KeyHash>()
            .is_err());
    }

    #[test]
    fn ring_point_and_shard_use_disjoint_bits() {
        let h = KeyHash((0x1111_2222_3333_4444u128 << 64) | 0xffff_ffff_ffff_ffff);
        assert_eq!(h.ring_point(), 0x1111_2222_3333_4444);
        assert_eq!(h.shard(8), 7); // low bits all ones -> last shard
        let h2 = KeyHash(0x1111_2222_3333_4444u128 << 64);
        assert_eq!(h2.shard(8), 0); // same ring point, different shard
        assert_eq!(h.shard(1), 0);
        assert_eq!(h.shard(0), 0);
        let ns = Namespace::new("m", None);
        assert_eq!(ns.ring_point("k"), ns.hash("k").ring_point());
    }

    #[test]
    fn mla_component_names() {
        let r = rk(0, 1, 0, 1, true);
        assert_eq!(r.components(), 1);
        assert!(r.shared_across_tp());
        assert_eq!(r.component_keys("abc"), vec!["abc__k"]);
        // All TP ranks share the MLA component.
        for tp in 0..4 {
            assert_eq!(rk(tp, 4, 0, 1, true).component_keys("abc"), vec!["abc__k"]);
        }
    }

    #[test]
    fn mha_component_names_per_tp_rank() {
        for tp in 0..4u32 {
            let r = rk(tp, 4, 0, 1, false);
            assert_eq!(r.components(), 2);
            assert!(!r.shared_across_tp());
            assert_eq!(
                r.component_keys("abc"),
                vec![format!("abc_{tp}_k"), format!("abc_{tp}_v")]
            );
        }
    }

    #[test]
    fn pipeline_parallel_suffixes() {
        assert_eq!(
            rk(3, 4, 1, 2, false).component_keys("abc"),
            vec!["abc_3_1_k", "abc_3_1_v"]
        );
        assert_eq!(
            rk(0, 4, 0, 2, false).component_keys("abc"),
            vec!["abc_0_0_k", "abc_0_0_v"]
        );
        assert_eq!(rk(2, 4, 1, 2, true).component_keys("abc"), vec!["abc_1_k"]);
        assert_eq!(rk(0, 1, 0, 3, true).component_keys("abc"), vec!["abc_0_k"]);
    }

    #[test]
    fn write_component_key_reuses_buffer() {
        let r = rk(1, 2, 0, 1, false);
        let mut buf = String::with_capacity(64);
        let cap = buf.capacity();
        r.write_component_key("longer-key-first", COMPONENT_V, &mut buf);
        assert_eq!(buf, "longer-key-first_1_v");
        r.write_component_key("k", COMPONENT_K, &mut buf);
        assert_eq!(buf, "k_1_k"); // cleared, not appended
        assert_eq!(buf.capacity(), cap);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn mla_has_no_v_component() {
        let mut buf = String::new();
        rk(0, 1, 0, 1, true).write_component_key("k", COMPONENT_V, &mut buf);
    }

    #[test]
    fn rank_layout_is_validated() {
        assert_eq!(
            RankKeys::new(0, 0, 0, 1, false),
            Err(RankKeysError::ZeroSize { what: "tp" })
        );
        assert_eq!(
            RankKeys::new(2, 2, 0, 1, false),
            Err(RankKeysError::RankOutOfRange {
                what: "tp",
                rank: 2,
                size: 2
            })
        );
        assert_eq!(
            RankKeys::new(0, 1, 1, 1, true),
            Err(RankKeysError::RankOutOfRange {
                what: "pp",
                rank: 1,
                size: 1
            })
        );
        assert!(RankKeys::new(3, 4, 1, 2, false).is_ok());
    }

    const N_KEYS: usize = 100_000;
    const N_SHARDS: usize = 8;

    /// 100k SGLang-like keys (hex digests of a counter) in one namespace.
    fn sample_hashes() -> Vec<KeyHash> {
        let ns = Namespace::new("Qwen/Qwen3-8B", None);
        (0..N_KEYS as u64)
            .map(|i| {
                ns.hash(&format!(
                    "{:016x}{:016x}",
                    i,
                    i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ))
            })
            .collect()
    }

    #[test]
    fn shard_spread_is_uniform() {
        // Expected 12_500 per shard; binomial sd ~= 105. Tolerance +-5%
        // (+-625, ~6 sd): a real bias (e.g. using few bits) fails, noise
        // cannot.
        let mut counts = [0usize; N_SHARDS];
        for h in sample_hashes() {
            counts[h.shard(N_SHARDS)] += 1;
        }
        let expected = N_KEYS / N_SHARDS;
        for (s, &c) in counts.iter().enumerate() {
            let dev = (c as f64 - expected as f64).abs() / expected as f64;
            assert!(
                dev < 0.05,
                "shard {s} has {c} keys, expected ~{expected}: {counts:?}"
            );
        }
    }

    #[test]
    fn shard_is_independent_of_ring_point() {
        // Bucket ring_point into 8 arcs (top 3 bits) and cross with the
        // shard: if the two were correlated some of the 64 cells would be
        // nearly empty. Expected 1_562.5 per cell, sd ~= 39; tolerance +-20%
        // (~8 sd) per cell, plus a chi-squared bound (63 dof: mean 63,
        // sd ~11; 150 is ~8 sd above the mean).
        let mut cells = [[0usize; N_SHARDS]; 8];
        for h in sample_hashes() {
            cells[(h.ring_point() >> 61) as usize][h.shard(N_SHARDS)] += 1;
        }
        let expected = N_KEYS as f64 / 64.0;
        let mut chi2 = 0.0;
        for row in &cells {
            for &c in row {
                let d = c as f64 - expected;
                assert!(
                    d.abs() / expected < 0.20,
                    "cell {c} vs expected {expected}: {cells:?}"
                );
                chi2 += d * d / expected;
            }
        }
        assert!(chi2 < 150.0, "chi-squared {chi2} too large: {cells:?}");
    }
}
