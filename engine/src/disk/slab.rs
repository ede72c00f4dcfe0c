//! A shard's slab file on the host file system: creating or reopening it,
//! preallocating it, and rebuilding the index from its headers at start.
//!
//! This part runs once, on the shard thread before the shard serves, with
//! plain blocking `pread`/`pwrite`: the shard must know what its slab holds
//! before the first get, and nothing else is waiting on the thread yet. The
//! data path then goes through glommio's `DmaFile` (O_DIRECT, io_uring; see
//! `mod.rs`). The header block written here also keeps glommio's polled-I/O
//! probe honest: it misjudges an empty new file (see the toolchain notes).

use super::index::SlabIndex;
use super::layout::{self, Geometry, BLOCK};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// A slab file ready for the data path.
pub struct PreparedSlab {
    /// The file.
    pub path: PathBuf,
    /// Its random identity (in every header it wrote).
    pub instance: u64,
    /// What it holds.
    pub index: SlabIndex,
    /// Why the file could not be preallocated to its full size (not enough
    /// free space): the tier then writes nothing, rather than fill a file
    /// system it shares with others.
    pub preallocation_error: Option<io::Error>,
}

/// The slab file of shard `shard` under `dir`.
pub fn slab_path(dir: &Path, shard: usize) -> PathBuf {
    dir.join(format!("shard-{shard}.slab"))
}

/// Opens (or creates) the slab of shard `shard` under `dir` for `geometry`
/// and rebuilds its index. A file made for another geometry or shard count
/// is started empty: its pages were placed by another key-to-shard split.
pub fn prepare(dir: &Path, shard: usize, geometry: Geometry) -> io::Result<PreparedSlab> {
    let path = slab_path(dir, shard);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    let mut block = vec![0u8; BLOCK];
    let existing = match file.read_at(&mut block, 0) {
        Ok(n) if n == BLOCK => layout::decode_file_header(&block),
        _ => None,
    };
    let (instance, index) = match existing {
        Some((g, instance)) if g == geometry => {
            let index = rebuild(&file, geometry, instance)?;
            (instance, index)
        }
        other => {
            if let Some((g, _)) = other {
                tracing::warn!(
                    "disk tier: {} was made for {} segments of {} bytes and {} shards; starting it empty for {} segments of {} bytes and {} shards",
                    path.display(),
                    g.segments,
                    g.segment_bytes,
                    g.shards,
                    geometry.segments,
                    geometry.segment_bytes,
                    geometry.shards
                );
            }
            let instance = crate::cluster::random_u64();
            // Drop the old contents (new instance: their headers would not
            // count anyway) so a smaller disk_size really frees space.
            file.set_len(0)?;
            layout::encode_file_header(&mut block, &geometry, instance);
            file.write_all_at(&block, 0)?;
            file.sync_all()?;
            (instance, SlabIndex::new(geometry))
        }
    };
    // Also for a reopened file: one that could not be reserved last time
    // is still short.
    let preallocation_error = preallocate(&file, geometry.file_bytes()).err();
    drop_cache(&file);
    Ok(PreparedSlab {
        path,
        instance,
        index,
        preallocation_error,
    })
}

/// Reserves the file's blocks up front, so a write in the data path never
/// allocates and a too-small file system is found now, not mid-run. The
/// free space is checked first: a failing fallocate may fill the file
/// system for a moment (and leave blocks behind), which other tenants of a
/// shared disk would feel.
fn preallocate(file: &File, bytes: u64) -> io::Result<()> {
    let have = file.metadata()?.len();
    if have >= bytes {
        return Ok(());
    }
    if let Some(free) = free_bytes(file) {
        if free < bytes - have {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("{} more bytes needed, {free} free", bytes - have),
            ));
        }
    }
    // SAFETY: plain syscall on an open descriptor.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // A file system without fallocate: a sparse file of the right size
        // (a full disk then shows up as ENOSPC on a write).
        Some(libc::EOPNOTSUPP) => file.set_len(bytes),
        _ => {
            // Give back whatever the failed call did allocate.
            let _ = file.set_len(have.max(BLOCK as u64));
            Err(e)
        }
    }
}

/// Bytes an unprivileged writer may still allocate on the file's file system.
fn free_bytes(file: &File) -> Option<u64> {
    // SAFETY: statvfs is plain data; fstatvfs fills it or fails.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Rebuilds the index from the segment and slot headers.
fn rebuild(file: &File, g: Geometry, instance: u64) -> io::Result<SlabIndex> {
    let mut index = SlabIndex::new(g);
    let mut block = vec![0u8; BLOCK];
    let mut pages = Vec::new();
    for seg in 0..g.segments {
        if !read_block(file, g.segment_offset(seg), &mut block)? {
            continue;
        }
        let Some(slot_bytes) = layout::decode_segment_header(&block, instance) else {
            continue;
        };
        pages.clear();
        for i in 0..g.slots_per_segment(slot_bytes) {
            if !read_block(file, g.slot_offset(seg, i, slot_bytes), &mut block)? {
                break;
            }
            if let Some(h) = layout::decode_slot_header(&block, instance) {
                pages.push((i, h.key, h.len, h.seq));
            }
        }
        index.restore_segment(seg, slot_bytes, &pages);
    }
    Ok(index)
}

/// Reads one block; false past the end of a file that could not be
/// preallocated in full.
fn read_block(file: &File, at: u64, block: &mut [u8]) -> io::Result<bool> {
    let mut done = 0;
    while done < block.len() {
        match file.read_at(&mut block[done..], at + done as u64) {
            Ok(0) => return Ok(false),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The headers read at start went through the page cache; the data path
/// bypasses it, so drop them rather than keep stale copies around.
fn drop_cache(file: &File) {
    // SAFETY: advisory call on an open descriptor.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}
