//! Encoding frames into byte buffers, decoding meta sections, and blocking
//! helpers that move frames over `std::io` readers and writers.
//!
//! Encoding appends to a caller-owned `Vec<u8>` so that a connection reuses one
//! buffer, several frames can be pipelined into one `write`, and the bulk
//! section can follow from the caller's own memory (e.g. with `writev`)
//! without being copied into the frame buffer.

use std::io::{self, IoSlice, Read, Write};

use rkyv::ser::{Positional, Writer};
use rkyv::util::AlignedVec;
use rkyv::{Archive, Archived};

use super::error::WireError;
use super::frame::{FrameHeader, Kind};
use super::{HEADER_BYTES, MAX_BATCH_ITEMS, META_ALIGN_BYTES};

pub(super) mod sealed {
    /// Only the messages of this module are [`super::WireMessage`]s.
    pub trait Sealed {}
}

/// A message that travels as the meta section of a frame of kind
/// [`Self::KIND`]. Implemented by every message struct of this module (and only
/// by them).
pub trait WireMessage: Archive + Sized + sealed::Sealed {
    /// The kind number frames of this message carry.
    const KIND: Kind;

    /// Length of the longest list in the message (0 when it has none); must
    /// not exceed [`MAX_BATCH_ITEMS`].
    fn max_list_len(&self) -> usize;

    /// [`Self::max_list_len`] of the archived form.
    fn archived_max_list_len(archived: &Archived<Self>) -> usize;

    /// Appends the rkyv archive of `self` to `out`; positions inside the
    /// archive are relative to where it starts, so it can follow a header.
    #[doc(hidden)]
    fn serialize_meta(&self, out: &mut Vec<u8>) -> Result<(), WireError>;

    /// Validates `meta` as an archive of `Self` (no limit checks).
    #[doc(hidden)]
    fn access_meta(meta: &[u8]) -> Result<&Archived<Self>, WireError>;

    /// Deserializes an already validated archive.
    #[doc(hidden)]
    fn deserialize_archived(archived: &Archived<Self>) -> Result<Self, WireError>;
}

/// An rkyv writer that appends to a `Vec<u8>` and reports positions relative
/// to where it started, so the archive it produces is self-contained even
/// though it lands after the frame header in the same buffer.
pub(super) struct MetaWriter<'a> {
    out: &'a mut Vec<u8>,
    base: usize,
}

impl<'a> MetaWriter<'a> {
    /// A writer appending to `out` from its current end.
    pub(super) fn new(out: &'a mut Vec<u8>) -> Self {
        let base = out.len();
        MetaWriter { out, base }
    }
}

impl Positional for MetaWriter<'_> {
    fn pos(&self) -> usize {
        self.out.len() - self.base
    }
}

impl<E> Writer<E> for MetaWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.out.extend_from_slice(bytes);
        Ok(())
    }
}

/// Appends one frame (header and meta section) carrying `msg` to `out` and
/// returns its header. The caller sends `bulk_len` bytes of bulk right after
/// it, from wherever they live.
///
/// Enforces the same limits a receiver does (batch size, meta and bulk
/// length, bulk only on bulk-carrying kinds), so we never send a frame our
/// peer must refuse. On error `out` is left as it was.
pub fn encode_frame<T: WireMessage>(
    msg: &T,
    request_id: u64,
    bulk_len: u64,
    out: &mut Vec<u8>,
) -> Result<FrameHeader, WireError> {
    let items = msg.max_list_len();
    if items > MAX_BATCH_ITEMS {
        return Err(WireError::BatchTooLarge { items });
    }
    // Fail on the bulk length before spending time on serialization.
    FrameHeader::new(T::KIND, request_id, 0, bulk_len)?;
    let start = out.len();
    out.resize(start + HEADER_BYTES, 0);
    let header = msg.serialize_meta(out).and_then(|()| {
        let meta_len = (out.len() - start - HEADER_BYTES) as u64;
        FrameHeader::new(T::KIND, request_id, meta_len, bulk_len)
    });
    match header {
        Ok(header) => {
            out[start..start + HEADER_BYTES].copy_from_slice(&header.to_bytes());
            Ok(header)
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Validates `meta` as the meta section of a `T` frame and returns the
/// archived message, read in place.
///
/// `meta` must start on a [`META_ALIGN_BYTES`] boundary (what
/// [`read_frame`] into an [`AlignedVec`] gives); otherwise this fails with
/// [`WireError::MisalignedMeta`]. Checks bytecheck validity (bounds, UTF-8,
/// enum tags, bools) and that no list exceeds [`MAX_BATCH_ITEMS`]. The caller
/// checks that the header's kind is `T::KIND` ([`FrameHeader::expect_kind`]).
pub fn decode_meta<T: WireMessage>(meta: &[u8]) -> Result<&Archived<T>, WireError> {
    if !meta.is_empty() && (meta.as_ptr() as usize) & (META_ALIGN_BYTES - 1) != 0 {
        return Err(WireError::MisalignedMeta);
    }
    let archived = T::access_meta(meta)?;
    let items = T::archived_max_list_len(archived);
    if items > MAX_BATCH_ITEMS {
        return Err(WireError::BatchTooLarge { items });
    }
    Ok(archived)
}

/// [`decode_meta`], then deserializes into an owned `T`.
pub fn decode_owned<T: WireMessage>(meta: &[u8]) -> Result<T, WireError> {
    T::deserialize_archived(decode_meta::<T>(meta)?)
}

/// Reads one frame's header and meta section from `reader` into `meta`
/// (replacing its contents) and returns the header. The bulk section, if
/// any, is left in the stream for the caller to read into its own
/// destinations ([`BulkPlan`](super::BulkPlan)) or to skip
/// ([`discard_bulk`]).
///
/// The header is checked against every limit before `meta` grows. End of
/// stream exactly at a frame boundary is [`WireError::Closed`]; anywhere else
/// it is [`WireError::Truncated`].
pub fn read_frame<R: Read + ?Sized>(
    reader: &mut R,
    meta: &mut AlignedVec,
) -> Result<FrameHeader, WireError> {
    let mut bytes = [0u8; HEADER_BYTES];
    let mut got = 0usize;
    while got < HEADER_BYTES {
        match reader.read(&mut bytes[got..]) {
            Ok(0) if got == 0 => return Err(WireError::Closed),
            Ok(0) => {
                return Err(WireError::Truncated {
                    section: "header",
                    got_bytes: got as u64,
                    expected_bytes: HEADER_BYTES as u64,
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let header = FrameHeader::parse(&bytes)?;
    meta.clear();
    let total = header.meta_len as usize;
    while meta.len() < total {
        let from = meta.len();
        let to = meta_step_end(from, total);
        meta.resize(to, 0);
        read_section(
            reader,
            &mut meta.as_mut_slice()[from..to],
            "meta",
            from as u64,
            total as u64,
        )?;
    }
    Ok(header)
}

/// First step, in bytes, of a meta buffer that grows as its bytes arrive.
const META_STEP_BYTES: usize = 64 << 10;

/// Where the next read of a meta section should end when `from` of its
/// `total` bytes have arrived: the buffer doubles as bytes come, from 64 KiB.
/// A header may announce up to 16 MiB of meta before a byte of it is sent;
/// growing with what arrives keeps a peer that announces much and sends
/// little from costing that allocation (a frame reader never resizes a meta
/// buffer to the announced length up front).
pub(crate) fn meta_step_end(from: usize, total: usize) -> usize {
    total.min(from.max(META_STEP_BYTES / 2) * 2)
}

/// Fills `buf` from `reader`. `already` bytes of the `total`-byte section were
/// read before; both only feed the [`WireError::Truncated`] message.
pub(super) fn read_section<R: Read + ?Sized>(
    reader: &mut R,
    buf: &mut [u8],
    section: &'static str,
    already: u64,
    total: u64,
) -> Result<(), WireError> {
    let mut got = 0usize;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(WireError::Truncated {
                    section,
                    got_bytes: already + got as u64,
                    expected_bytes: total,
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads and drops `len_bytes` of bulk: keeps a connection in sync after
/// refusing a frame's contents (see [`WireError::stream_in_sync`]).
pub fn discard_bulk<R: Read + ?Sized>(reader: &mut R, len_bytes: u32) -> Result<(), WireError> {
    let total = u64::from(len_bytes);
    let copied = io::copy(&mut reader.take(total), &mut io::sink())?;
    if copied < total {
        return Err(WireError::Truncated {
            section: "bulk",
            got_bytes: copied,
            expected_bytes: total,
        });
    }
    Ok(())
}

/// Most slices handed to one `write_vectored` call (well under `IOV_MAX`).
const IOV_BATCH: usize = 64;

/// Encodes `msg` into `scratch` (cleared first) and writes it followed by the
/// `bulk` slices, gathered with vectored writes so that page bytes are never
/// copied into the frame buffer. `bulk_len` is the sum of the slice lengths.
pub fn write_frame<W: Write + ?Sized, T: WireMessage>(
    writer: &mut W,
    msg: &T,
    request_id: u64,
    bulk: &[&[u8]],
    scratch: &mut Vec<u8>,
) -> Result<FrameHeader, WireError> {
    let bulk_len = bulk
        .iter()
        .fold(0u64, |sum, s| sum.saturating_add(s.len() as u64));
    scratch.clear();
    let header = encode_frame(msg, request_id, bulk_len, scratch)?;
    write_all_gathered(writer, scratch, bulk)?;
    Ok(header)
}

/// Writes `head` then every slice of `rest`, completely, `IOV_BATCH` slices
/// per system call at most.
fn write_all_gathered<W: Write + ?Sized>(
    writer: &mut W,
    head: &[u8],
    rest: &[&[u8]],
) -> io::Result<()> {
    // Slice `i` is `head` for 0 and `rest[i - 1]` after.
    let slice = |i: usize| if i == 0 { head } else { rest[i - 1] };
    let count = rest.len() + 1;
    let (mut idx, mut off) = (0usize, 0usize);
    while idx < count {
        if off == slice(idx).len() {
            idx += 1;
            off = 0;
            continue;
        }
        let mut iov = [IoSlice::new(&[]); IOV_BATCH];
        iov[0] = IoSlice::new(&slice(idx)[off..]);
        let mut n = 1;
        while n < IOV_BATCH && idx + n < count {
            iov[n] = IoSlice::new(slice(idx + n));
            n += 1;
        }
        let mut written = match writer.write_vectored(&iov[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(w) => w,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while written > 0 && idx < count {
            let left = slice(idx).len() - off;
            if written >= left {
                written -= left;
                idx += 1;
                off = 0;
            } else {
                off += written;
                written = 0;
            }
        }
    }
    Ok(())
}
