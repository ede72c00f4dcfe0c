//! Receiving a [`DataReadReply`](super::DataReadReply)'s pages straight into
//! the caller's destination buffers.
//!
//! The bulk section is raw bytes: nothing in it says where one page ends. Its
//! layout follows from the (validated) reply statuses and from the request we
//! sent, so before one bulk byte is read [`BulkPlan::new`] proves that the
//! peer's numbers agree with ours: one status per requested item, every OK
//! item exactly as long as its destination, and `bulk_len` equal to the sum of
//! the OK lengths. A lying or buggy peer is therefore caught while the stream
//! is still in sync, and can never make us write past a destination.

use std::io::Read;
use std::marker::PhantomData;

use super::codec::read_section;
use super::error::WireError;
use super::frame::{FrameHeader, Kind};
use super::messages::{ArchivedDataReadReply, ReadItem, ReadStatus};

/// A caller's destination for one item's bytes.
///
/// Either borrowed from a slice ([`BulkDest::from_slice`], safe) or built from
/// a raw pointer into memory the caller manages, such as an SGLang host
/// buffer ([`BulkDest::from_raw`], unsafe).
#[derive(Debug)]
pub struct BulkDest<'a> {
    ptr: *mut u8,
    len: usize,
    _borrow: PhantomData<&'a mut [u8]>,
}

impl<'a> BulkDest<'a> {
    /// A destination that borrows `slice` for as long as it lives.
    pub fn from_slice(slice: &'a mut [u8]) -> Self {
        BulkDest {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            _borrow: PhantomData,
        }
    }

    /// A destination of `len` bytes at `ptr`.
    ///
    /// # Safety
    /// For as long as the returned value (or a [`BulkPlan`] holding it) is
    /// alive, `ptr` must be valid for writes of `len` bytes, and nothing else
    /// may read or write those bytes; destinations of one plan must not
    /// overlap. `ptr` may be null or dangling only when `len` is 0.
    pub unsafe fn from_raw(ptr: *mut u8, len: usize) -> Self {
        BulkDest {
            ptr,
            len,
            _borrow: PhantomData,
        }
    }

    /// Bytes this destination holds.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length destination.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start of the destination, for callers that receive the bulk with their
    /// own (e.g. asynchronous) reads following [`BulkPlan::segments`].
    #[inline]
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr
    }
}

/// One stretch of the bulk section: the bytes of item `item`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BulkSegment {
    /// Index of the item (and of its destination).
    pub item: usize,
    /// Where the stretch starts inside the bulk section.
    pub bulk_offset_bytes: u64,
    /// Its length (equal to the item's and the destination's).
    pub len_bytes: usize,
}

/// A checked layout of a [`DataReadReply`](super::DataReadReply)'s bulk
/// section over the caller's destinations. See the module documentation.
#[derive(Debug)]
pub struct BulkPlan<'p, 'a> {
    status: &'p [u8],
    dests: &'p mut [BulkDest<'a>],
    bulk_len_bytes: u64,
}

impl<'p, 'a> BulkPlan<'p, 'a> {
    /// Checks the reply against the request and the destinations.
    ///
    /// `header` and `reply` are the received frame's header and validated
    /// meta; `items` is the request we sent; `dests[i]` receives item `i`.
    /// Fails, without touching the stream, when the header is not a
    /// `DataReadReply`, the three lists differ in length, a status code is
    /// unknown, an OK item's length differs from its destination's, or
    /// `bulk_len` is not the sum of the OK lengths.
    pub fn new(
        header: &FrameHeader,
        reply: &'p ArchivedDataReadReply,
        items: &[ReadItem],
        dests: &'p mut [BulkDest<'a>],
    ) -> Result<Self, WireError> {
        header.expect_kind(Kind::DataReadReply)?;
        let status: &'p [u8] = reply.status.as_slice();
        if status.len() != items.len() || status.len() != dests.len() {
            return Err(WireError::ItemCountMismatch {
                statuses: status.len(),
                items: items.len(),
                destinations: dests.len(),
            });
        }
        let mut expected_bytes = 0u64;
        for (i, (&code, (item, dest))) in status
            .iter()
            .zip(items.iter().zip(dests.iter()))
            .enumerate()
        {
            let status =
                ReadStatus::from_code(code).ok_or(WireError::UnknownStatus { item: i, code })?;
            if status != ReadStatus::Ok {
                continue;
            }
            if item.len as usize != dest.len {
                return Err(WireError::DestinationLenMismatch {
                    item: i,
                    item_len_bytes: u64::from(item.len),
                    dest_len_bytes: dest.len as u64,
                });
            }
            expected_bytes += u64::from(item.len);
        }
        let bulk_len_bytes = u64::from(header.bulk_len);
        if bulk_len_bytes != expected_bytes {
            return Err(WireError::BulkLenMismatch {
                bulk_len_bytes,
                expected_bytes,
            });
        }
        Ok(BulkPlan {
            status,
            dests,
            bulk_len_bytes,
        })
    }

    /// Bytes of the bulk section (the sum of the OK items' lengths).
    #[inline]
    pub fn bulk_len_bytes(&self) -> u64 {
        self.bulk_len_bytes
    }

    /// The status of item `item`; `None` past the end. (Every code was
    /// checked to be known by [`BulkPlan::new`].)
    pub fn status(&self, item: usize) -> Option<ReadStatus> {
        self.status
            .get(item)
            .copied()
            .and_then(ReadStatus::from_code)
    }

    /// The bulk section's stretches in the order they arrive: one per OK
    /// item, in item order.
    pub fn segments(&self) -> impl Iterator<Item = BulkSegment> + '_ {
        let mut offset = 0u64;
        self.status
            .iter()
            .zip(self.dests.iter())
            .enumerate()
            .filter(|(_, (&code, _))| code == ReadStatus::Ok.code())
            .map(move |(item, (_, dest))| {
                let segment = BulkSegment {
                    item,
                    bulk_offset_bytes: offset,
                    len_bytes: dest.len,
                };
                offset += dest.len as u64;
                segment
            })
    }

    /// Reads the whole bulk section from `reader` straight into the
    /// destinations. On error some destinations may hold partial data and
    /// the connection is out of sync.
    pub fn read_from<R: Read + ?Sized>(self, reader: &mut R) -> Result<(), WireError> {
        let mut already = 0u64;
        for (&code, dest) in self.status.iter().zip(self.dests.iter_mut()) {
            if code != ReadStatus::Ok.code() || dest.len == 0 {
                continue;
            }
            // SAFETY: `dest` is valid for writes of `dest.len` bytes and not
            // aliased while it lives: by the borrow in `from_slice`, by the
            // caller's contract in `from_raw`. `len > 0`, so `ptr` is non-null.
            let buf = unsafe { std::slice::from_raw_parts_mut(dest.ptr, dest.len) };
            read_section(reader, buf, "bulk", already, self.bulk_len_bytes)?;
            already += dest.len as u64;
        }
        Ok(())
    }
}
