//! Memory registration rules of one rail.
//!
//! - The published pool is registered once per rail with REMOTE_READ only:
//!   peers may read it, nobody may write it remotely.
//! - SGLang's host buffer (the destination of READs) is registered with
//!   LOCAL_WRITE only, so no peer can ever read or write it.
//! - A destination outside every registered region (a caller that passed a
//!   buffer PeerCache was never told about, e.g. SGLang's per-page dummy
//!   tensors with `interface_v1` off) is registered on demand, rounded out
//!   to whole 4 KiB pages, for the one READ batch that needs it, and
//!   deregistered when that batch is finished (its QPs idle or destroyed).
//!   It is never cached across batches: such a buffer may be freed after the
//!   call and its addresses reused by new memory, while an MR keeps pinning
//!   the physical pages it was registered on. A cached MR found by address
//!   would then land a later READ in the old pages, and the call would report
//!   a hit for a destination that never got the bytes. Each on-demand
//!   registration is counted (`rdma_local_reg_misses`); the gauge
//!   `rdma_lazy_local_mrs` is how many are alive now (held by batches in
//!   flight). A growing miss count means the host pool was not registered up
//!   front. A batch may hold at most [`MAX_LAZY_MRS`] of them; past that its
//!   pages are misses rather than an unbounded pile of pinned memory.
//! - GPU memory is registered through `ibv_reg_dmabuf_mr` when the buffer
//!   exposes a dmabuf fd, else as a plain MR of the device address (which
//!   needs nvidia-peermem); a failure names the GPUDirect prerequisite.

use super::verbs::{Access, MemoryRegion, MrKeys, Verbs, VerbsError};
use crate::store::ShardStats;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Granularity of lazy registrations.
const LAZY_ALIGN_BYTES: u64 = 4096;

/// Most on-demand MRs one READ batch may hold (each pins memory and uses a
/// NIC translation entry).
pub const MAX_LAZY_MRS: usize = 1024;

/// A registration failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    /// The verbs call failed.
    #[error(transparent)]
    Verbs(#[from] VerbsError),
    /// GPU memory could not be registered.
    #[error("cannot register GPU buffer of {len} bytes at {addr:#x}: {source}; GPUDirect RDMA needs a GPUDirect-capable NIC and driver, and either a dmabuf-capable stack (kernel >= 5.12, rdma-core >= 34, the GPU driver exporting dmabuf) or the nvidia-peermem module loaded")]
    Gpu {
        /// Device address.
        addr: u64,
        /// Length.
        len: usize,
        /// The verbs error.
        source: VerbsError,
    },
    /// A destination has no registration (its on-demand one failed).
    #[error(
        "the destination is in no registered buffer and could not be registered for this batch"
    )]
    NotRegistered,
    /// One batch needed more on-demand registrations than allowed.
    #[error("{MAX_LAZY_MRS} destinations of one batch were already registered on demand; register the host KV pool up front (register_mem_pool_host)")]
    TooManyLazy,
}

/// A GPU buffer to register as a READ destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuBuffer {
    /// Device virtual address.
    pub addr: u64,
    /// Length in bytes.
    pub len: usize,
    /// dmabuf fd and offset of the buffer in it, when the allocator exports one.
    pub dmabuf: Option<(i32, u64)>,
}

/// The MRs of one rail registered up front.
pub struct Registry<V: Verbs> {
    pool: Option<V::Mr>,
    /// Host and GPU buffers registered up front, by start address.
    local: BTreeMap<u64, V::Mr>,
    stats: Arc<ShardStats>,
}

impl<V: Verbs> std::fmt::Debug for Registry<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("local", &self.local.len())
            .finish()
    }
}

/// The on-demand registrations of one READ batch, deregistered when it is
/// dropped. The batch drops it after its chains (declared after them), so
/// no READ still posted uses one of these MRs.
pub struct LazyRegions<V: Verbs> {
    /// Registered destinations, by start address (never overlapping).
    map: BTreeMap<u64, V::Mr>,
    /// The rail's stats, whose `rdma_lazy_local_mrs` counts these while alive.
    stats: Option<Arc<ShardStats>>,
}

impl<V: Verbs> Default for LazyRegions<V> {
    fn default() -> Self {
        Self {
            map: BTreeMap::new(),
            stats: None,
        }
    }
}

impl<V: Verbs> LazyRegions<V> {
    /// MRs held now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<V: Verbs> Drop for LazyRegions<V> {
    fn drop(&mut self) {
        if let Some(stats) = &self.stats {
            let gauge = &stats.rdma_lazy_local_mrs;
            let now = gauge.load(std::sync::atomic::Ordering::Relaxed);
            ShardStats::set(gauge, now.saturating_sub(self.len() as u64));
        }
    }
}

/// The MR in `map` covering `[addr, addr + len)`, if any.
fn covering<M: MemoryRegion>(map: &BTreeMap<u64, M>, addr: u64, len: u64) -> Option<MrKeys> {
    // Only the region starting last at or below `addr` is looked at. A
    // batch's on-demand regions never overlap (they are merged before they
    // are registered); if a caller registers overlapping buffers up front, a
    // lookup may miss one and register on demand, which costs an MR but is
    // never wrong.
    let (_, mr) = map.range(..=addr).next_back()?;
    let k = mr.keys();
    (addr + len <= k.addr + k.len as u64).then_some(k)
}

impl<V: Verbs> Registry<V> {
    /// An empty registry counting into `stats`.
    pub fn new(stats: Arc<ShardStats>) -> Self {
        Self {
            pool: None,
            local: BTreeMap::new(),
            stats,
        }
    }

    /// Registers the published pool with REMOTE_READ only; returns the keys
    /// peers need (rkey, base address).
    ///
    /// # Safety
    /// The pool must stay mapped for the life of the registry.
    pub unsafe fn register_pool(
        &mut self,
        dev: &V,
        addr: *mut u8,
        len: usize,
    ) -> Result<MrKeys, RegistrationError> {
        let mr = dev.register(addr, len, Access::REMOTE_READ)?;
        let keys = mr.keys();
        self.pool = Some(mr);
        Ok(keys)
    }

    /// The pool's keys, once registered.
    pub fn pool_keys(&self) -> Option<MrKeys> {
        self.pool.as_ref().map(|m| m.keys())
    }

    /// Registers a host buffer as a READ destination: LOCAL_WRITE only, so
    /// peers can neither read nor write it.
    ///
    /// # Safety
    /// The buffer must stay mapped for the life of the registry.
    pub unsafe fn register_host_buffer(
        &mut self,
        dev: &V,
        addr: *mut u8,
        len: usize,
    ) -> Result<MrKeys, RegistrationError> {
        let mr = dev.register(addr, len, Access::LOCAL_WRITE)?;
        let keys = mr.keys();
        self.local.insert(keys.addr, mr);
        Ok(keys)
    }

    /// Registers GPU memory as a READ destination (LOCAL_WRITE only):
    /// dmabuf when the buffer has an fd, else a plain MR of the device
    /// address (nvidia-peermem).
    pub fn register_gpu_buffer(
        &mut self,
        dev: &V,
        gpu: GpuBuffer,
    ) -> Result<MrKeys, RegistrationError> {
        let result = match gpu.dmabuf {
            Some((fd, offset)) => {
                dev.register_dmabuf(fd, offset, gpu.len, gpu.addr, Access::LOCAL_WRITE)
            }
            // SAFETY: a device address is not host memory the process could
            // unmap under the NIC; the GPU driver (nvidia-peermem) pins it,
            // or the call fails.
            None => unsafe { dev.register(gpu.addr as *mut u8, gpu.len, Access::LOCAL_WRITE) },
        };
        let mr = result.map_err(|source| RegistrationError::Gpu {
            addr: gpu.addr,
            len: gpu.len,
            source,
        })?;
        let keys = mr.keys();
        self.local.insert(keys.addr, mr);
        Ok(keys)
    }

    /// Registers, for one READ batch, the destinations among `ranges`
    /// (address, length) that no buffer registered up front covers: rounded
    /// out to whole 4 KiB pages, overlapping or touching ones merged, each
    /// merged region registered once and held by `lazy`. Each such
    /// destination counts in `rdma_local_reg_misses`. Returns the first
    /// failure; the destinations it left unregistered get no lkey (misses).
    ///
    /// # Safety
    /// Each destination must be mapped memory that stays mapped while
    /// `lazy` lives (the caller's batch contract).
    pub unsafe fn register_destinations(
        &mut self,
        dev: &V,
        ranges: &[(u64, u64)],
        lazy: &mut LazyRegions<V>,
    ) -> Result<(), RegistrationError> {
        let mut wanted: Vec<(u64, u64)> = Vec::new();
        for &(addr, len) in ranges {
            if covering(&self.local, addr, len).is_some()
                || covering(&lazy.map, addr, len).is_some()
            {
                continue;
            }
            ShardStats::bump(&self.stats.rdma_local_reg_misses, 1);
            let start = addr / LAZY_ALIGN_BYTES * LAZY_ALIGN_BYTES;
            let end = (addr + len).div_ceil(LAZY_ALIGN_BYTES) * LAZY_ALIGN_BYTES;
            wanted.push((start, end));
        }
        // One MR per run of overlapping or touching destinations: a stray
        // buffer read page by page costs one registration per batch.
        wanted.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(wanted.len());
        for (start, end) in wanted {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        let mut first_error = None;
        for (start, end) in merged {
            if lazy.len() >= MAX_LAZY_MRS {
                first_error.get_or_insert(RegistrationError::TooManyLazy);
                break;
            }
            match dev.register(
                start as *mut u8,
                (end - start) as usize,
                Access::LOCAL_WRITE,
            ) {
                Ok(mr) => {
                    lazy.map.insert(start, mr);
                    let stats = lazy.stats.get_or_insert_with(|| Arc::clone(&self.stats));
                    ShardStats::bump(&stats.rdma_lazy_local_mrs, 1);
                }
                Err(e) => {
                    first_error.get_or_insert(e.into());
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The lkey for a READ into `[addr, addr + len)`: a buffer registered up
    /// front, or one `lazy` holds (see [`Registry::register_destinations`]).
    pub fn lkey_for(
        &self,
        addr: u64,
        len: u64,
        lazy: &LazyRegions<V>,
    ) -> Result<u32, RegistrationError> {
        covering(&self.local, addr, len)
            .or_else(|| covering(&lazy.map, addr, len))
            .map(|k| k.lkey)
            .ok_or(RegistrationError::NotRegistered)
    }
}
