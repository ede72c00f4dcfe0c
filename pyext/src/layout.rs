//! Where the pages of one SGLang host pool live, and what they are called.
//!
//! SGLang's host pools describe their zero-copy buffers through
//! `get_page_buffer_meta(indices)`: for each page, `E` (pointer, size)
//! entries (MHA page-first: K and V; MHA layer-first: K and V of every layer;
//! MLA: one latent buffer, or one per layer). In every layout SGLang ships,
//! entry `e` of the page that starts at token index `i` sits at
//! `base[e] + i * stride[e]`. The Python front end measures `base` and
//! `stride` once, when the pool is registered, by probing the pool's own
//! `get_page_buffer_meta` at three pages and checking that the map is affine
//! (see `peercache.store`). From then on a batch call hands Rust only the
//! keys and the host-index array, and this module computes every pointer:
//! no Python loop over pages, no per-page Python objects.
//!
//! The same module names the stored objects: entry `e` of page `key` is the
//! rank's component key (`{key}_{tp}_k`, `{key}_{tp}_v`, `{key}__k`, see
//! [`RankKeys`]) for component `e % C`, with `_p{e / C}` appended when a page
//! has several pieces per component (layer-first layouts). Pools other than
//! the KV pool (SGLang's v2 "extra" pools) name their objects after
//! `{key}.{pool}`, one component with `E` pieces, always per TP rank (their
//! state may be TP-sharded even in MLA models).

use peercache_engine::keys::RankKeys;
use std::fmt::Write;

/// Errors in a layout description, or in a batch that does not fit it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("a page layout needs at least one buffer entry per page")]
    NoEntries,
    #[error("bases, strides and sizes differ in length ({bases}, {strides}, {sizes})")]
    Mismatch {
        bases: usize,
        strides: usize,
        sizes: usize,
    },
    #[error("{entries} buffer entries per page cannot be split into {components} components")]
    Components { entries: usize, components: usize },
    #[error("page_size must be at least 1")]
    PageSize,
    #[error("{indices} host indices for {keys} keys: expected keys x page_size = {expected}")]
    IndexCount {
        indices: usize,
        keys: usize,
        expected: usize,
    },
    #[error("host index {index} of page {page} is outside the host pool (0..={max})")]
    IndexRange { index: i64, page: usize, max: u64 },
    #[error("host index {index} of page {page} is not the start of a host page (a multiple of page_size {page_size})")]
    IndexAlignment {
        index: i64,
        page: usize,
        page_size: usize,
    },
    #[error("the host indices of page {page} are not one run of consecutive tokens: token {token} is {found}, expected {expected}")]
    IndexGap {
        page: usize,
        token: usize,
        found: i64,
        expected: i64,
    },
    #[error("host page at index {index} appears twice in one batch (pages {first} and {second})")]
    IndexRepeated {
        index: i64,
        first: usize,
        second: usize,
    },
    #[error("{ptrs} pointers and {sizes} sizes for {keys} keys x {entries} entries per page")]
    MetaCount {
        ptrs: usize,
        sizes: usize,
        keys: usize,
        entries: usize,
    },
}

/// How one host pool's pages map to memory and to stored object names.
#[derive(Debug, Clone)]
pub struct PageLayout {
    bases: Vec<u64>,
    strides: Vec<u64>,
    sizes: Vec<usize>,
    /// Token indices per page: page `p` of a batch starts at `indices[p * page_size]`.
    page_size: usize,
    /// Largest valid first index of a page (pool size in tokens - page_size).
    max_index: u64,
    rank: RankKeys,
    /// Name of a non-KV pool; `None` for the KV pool.
    pool: Option<String>,
}

/// Pointers, sizes and object names of one batch, entry-major within a page.
#[derive(Debug, Default)]
pub struct ResolvedBatch {
    pub names: Vec<String>,
    pub addrs: Vec<usize>,
    pub lens: Vec<usize>,
}

impl PageLayout {
    /// A validated layout. `pool_tokens` is the host pool's size in tokens.
    pub fn new(
        bases: Vec<u64>,
        strides: Vec<u64>,
        sizes: Vec<usize>,
        page_size: usize,
        pool_tokens: u64,
        rank: RankKeys,
        pool: Option<String>,
    ) -> Result<Self, LayoutError> {
        if bases.is_empty() {
            return Err(LayoutError::NoEntries);
        }
        if bases.len() != strides.len() || bases.len() != sizes.len() {
            return Err(LayoutError::Mismatch {
                bases: bases.len(),
                strides: strides.len(),
                sizes: sizes.len(),
            });
        }
        if page_size == 0 {
            return Err(LayoutError::PageSize);
        }
        let layout = PageLayout {
            max_index: pool_tokens.saturating_sub(page_size as u64),
            bases,
            strides,
            sizes,
            page_size,
            rank,
            pool,
        };
        let (entries, components) = (layout.entries(), layout.components());
        if entries % components != 0 {
            return Err(LayoutError::Components {
                entries,
                components,
            });
        }
        Ok(layout)
    }

    /// Buffer entries (stored objects) per page.
    pub fn entries(&self) -> usize {
        self.bases.len()
    }

    /// Bytes of one whole page (all entries).
    pub fn page_bytes(&self) -> usize {
        self.sizes.iter().sum()
    }

    /// Token indices per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    fn components(&self) -> usize {
        if self.pool.is_some() {
            1
        } else {
            self.rank.components()
        }
    }

    /// Writes the object name of entry `e` of page `key` into `out`.
    pub fn write_name(&self, key: &str, e: usize, scratch: &mut String, out: &mut String) {
        let c = self.components();
        let pieces = self.entries() / c;
        let (base, rank): (&str, RankKeys) = match &self.pool {
            None => (key, self.rank),
            Some(pool) => {
                scratch.clear();
                let _ = write!(scratch, "{key}.{pool}");
                // Extra pools (Mamba/KDA state, SWA, indexer) may be sharded
                // over TP even when the KV pool is MLA-replicated, and every
                // rank may back them up: always name them per TP rank, so two
                // ranks never share (and overwrite) one object. A replicated
                // pool then costs a miss on the other ranks, never wrong bytes.
                let per_rank = RankKeys {
                    is_mla: false,
                    ..self.rank
                };
                (scratch.as_str(), per_rank)
            }
        };
        rank.write_component_key(base, e % c, out);
        if pieces > 1 {
            let _ = write!(out, "_p{}", e / c);
        }
    }

    /// Every object name of `keys`, entry-major within a page.
    pub fn names<K: AsRef<str>>(&self, keys: &[K]) -> Vec<String> {
        let mut scratch = String::new();
        let mut names = Vec::with_capacity(keys.len() * self.entries());
        for key in keys {
            for e in 0..self.entries() {
                let mut name = String::with_capacity(key.as_ref().len() + 24);
                self.write_name(key.as_ref(), e, &mut scratch, &mut name);
                names.push(name);
            }
        }
        names
    }

    /// Names and buffer addresses of a batch from its host indices (SGLang's
    /// `host_indices`: `page_size` token indices per key, the first of each
    /// page locating it). The addresses are computed from the first index
    /// alone, which is right only for what SGLang's host pools hand out: a
    /// page-aligned run of consecutive tokens inside the pool, each page once
    /// per batch. All of that is checked, so no computed pointer leaves the
    /// host buffer the layout was probed on, straddles two host pages, or is
    /// written by two pages of one get at once.
    pub fn resolve<K: AsRef<str>>(
        &self,
        keys: &[K],
        indices: &[i64],
    ) -> Result<ResolvedBatch, LayoutError> {
        let expected = keys.len() * self.page_size;
        if indices.len() != expected {
            return Err(LayoutError::IndexCount {
                indices: indices.len(),
                keys: keys.len(),
                expected,
            });
        }
        let total = keys.len() * self.entries();
        let mut addrs = Vec::with_capacity(total);
        let mut lens = Vec::with_capacity(total);
        let mut starts: Vec<(i64, usize)> = Vec::with_capacity(keys.len());
        for (page, tokens) in indices.chunks_exact(self.page_size).enumerate() {
            let index = tokens[0];
            if index < 0 || index as u64 > self.max_index {
                return Err(LayoutError::IndexRange {
                    index,
                    page,
                    max: self.max_index,
                });
            }
            if !(index as u64).is_multiple_of(self.page_size as u64) {
                return Err(LayoutError::IndexAlignment {
                    index,
                    page,
                    page_size: self.page_size,
                });
            }
            for (token, &found) in tokens.iter().enumerate().skip(1) {
                let expected = index + token as i64;
                if found != expected {
                    return Err(LayoutError::IndexGap {
                        page,
                        token,
                        found,
                        expected,
                    });
                }
            }
            starts.push((index, page));
            for e in 0..self.entries() {
                addrs.push((self.bases[e] + index as u64 * self.strides[e]) as usize);
                lens.push(self.sizes[e]);
            }
        }
        starts.sort_unstable();
        if let Some(w) = starts.windows(2).find(|w| w[0].0 == w[1].0) {
            let (first, second) = (w[0].1.min(w[1].1), w[0].1.max(w[1].1));
            return Err(LayoutError::IndexRepeated {
                index: w[0].0,
                first,
                second,
            });
        }
        Ok(ResolvedBatch {
            names: self.names(keys),
            addrs,
            lens,
        })
    }

    /// Names and buffers of a batch whose pointers the pool listed itself
    /// (`get_page_buffer_meta` output, for pools whose map is not affine).
    pub fn resolve_listed<K: AsRef<str>>(
        &self,
        keys: &[K],
        ptrs: Vec<usize>,
        sizes: Vec<usize>,
    ) -> Result<ResolvedBatch, LayoutError> {
        let total = keys.len() * self.entries();
        if ptrs.len() != total || sizes.len() != total {
            return Err(LayoutError::MetaCount {
                ptrs: ptrs.len(),
                sizes: sizes.len(),
                keys: keys.len(),
                entries: self.entries(),
            });
        }
        Ok(ResolvedBatch {
            names: self.names(keys),
            addrs: ptrs,
            lens: sizes,
        })
    }

    /// Folds per-object flags into per-page flags: a page is done only when
    /// every one of its entries is.
    pub fn per_page(&self, flags: &[bool]) -> Vec<bool> {
        flags
            .chunks(self.entries())
            .map(|page| page.iter().all(|&f| f))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mha(tp_rank: u32) -> RankKeys {
        RankKeys::new(tp_rank, 2, 0, 1, false).unwrap()
    }

    fn mla() -> RankKeys {
        RankKeys::new(1, 2, 0, 1, true).unwrap()
    }

    #[test]
    fn page_first_mha_names_k_and_v_and_computes_addresses() {
        let l = PageLayout::new(
            vec![1000, 9000],
            vec![10, 10],
            vec![40, 40],
            4,
            64,
            mha(1),
            None,
        )
        .unwrap();
        let b = l.resolve(&["a", "b"], &[8, 9, 10, 11, 0, 1, 2, 3]).unwrap();
        assert_eq!(b.names, ["a_1_k", "a_1_v", "b_1_k", "b_1_v"]);
        assert_eq!(b.addrs, [1080, 9080, 1000, 9000]);
        assert_eq!(b.lens, [40, 40, 40, 40]);
        assert_eq!(l.per_page(&[true, true, true, false]), [true, false]);
    }

    #[test]
    fn layer_first_pages_have_one_piece_per_layer() {
        // MHA, 2 layers: entries k0 v0 k1 v1.
        let l = PageLayout::new(
            vec![0, 100, 50, 150],
            vec![1, 1, 1, 1],
            vec![4; 4],
            2,
            8,
            mha(0),
            None,
        )
        .unwrap();
        assert_eq!(
            l.names(&["x"]),
            ["x_0_k_p0", "x_0_v_p0", "x_0_k_p1", "x_0_v_p1"]
        );
        // MLA ignores the TP rank: every rank names the same objects.
        let m = PageLayout::new(vec![0], vec![1], vec![4], 2, 8, mla(), None).unwrap();
        assert_eq!(m.names(&["x"]), ["x__k"]);
    }

    #[test]
    fn extra_pools_are_named_after_the_pool() {
        let l = PageLayout::new(
            vec![0, 10],
            vec![1, 1],
            vec![4, 4],
            1,
            8,
            mha(0),
            Some("mamba".into()),
        )
        .unwrap();
        assert_eq!(l.names(&["x"]), ["x.mamba_0_k_p0", "x.mamba_0_k_p1"]);
        // Per TP rank even for an MLA model, whose KV objects are shared.
        let m =
            PageLayout::new(vec![0], vec![1], vec![4], 1, 8, mla(), Some("mamba".into())).unwrap();
        assert_eq!(m.names(&["x"]), ["x.mamba_1_k"]);
    }

    #[test]
    fn bad_batches_and_layouts_are_refused() {
        let l = PageLayout::new(vec![0, 0], vec![1, 1], vec![4, 4], 4, 16, mha(0), None).unwrap();
        assert!(matches!(
            l.resolve(&["a"], &[0, 1, 2]),
            Err(LayoutError::IndexCount { .. })
        ));
        // The last page may start at 12 (16 tokens, pages of 4); 13 would run off the end.
        assert!(l.resolve(&["a"], &[12, 13, 14, 15]).is_ok());
        assert!(matches!(
            l.resolve(&["a"], &[13, 14, 15, 16]),
            Err(LayoutError::IndexRange { .. })
        ));
        assert!(matches!(
            l.resolve(&["a"], &[-4, -3, -2, -1]),
            Err(LayoutError::IndexRange { .. })
        ));
        // Inside the pool but not a host page: it would straddle two pages.
        assert_eq!(
            l.resolve(&["a"], &[2, 3, 4, 5]).unwrap_err(),
            LayoutError::IndexAlignment {
                index: 2,
                page: 0,
                page_size: 4
            }
        );
        // The page's tokens are not where its first one says.
        assert_eq!(
            l.resolve(&["a", "b"], &[0, 1, 2, 3, 8, 9, 2, 11])
                .unwrap_err(),
            LayoutError::IndexGap {
                page: 1,
                token: 2,
                found: 2,
                expected: 10
            }
        );
        // Two pages of one batch on one host page.
        assert_eq!(
            l.resolve(&["a", "b", "c"], &[4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7])
                .unwrap_err(),
            LayoutError::IndexRepeated {
                index: 4,
                first: 0,
                second: 2
            }
        );
        assert_eq!(
            PageLayout::new(vec![0, 0, 0], vec![1; 3], vec![1; 3], 1, 4, mha(0), None).unwrap_err(),
            LayoutError::Components {
                entries: 3,
                components: 2
            }
        );
        assert!(l.resolve_listed(&["a"], vec![1], vec![1]).is_err());
    }
}
