//! The fixed 24-byte frame header and the message kind numbers.
//!
//! The header is parsed by hand (not by rkyv) because it is what tells the
//! receiver how much to read and allocate: it must be checked against the
//! limits before a single byte of the rest of the frame is touched.

use std::fmt;

use super::error::WireError;
use super::{HEADER_BYTES, MAGIC, MAX_BULK_BYTES, MAX_META_BYTES, PROTOCOL_VERSION};

/// Message kind numbers. Part of the protocol: never renumber.
///
/// Ranges: `0x01..` session, `0x10..` discovery, `0x20..` directory, `0x30..`
/// data. `0` is never valid, so a zeroed buffer is rejected.
///
/// Replies: `Hello` -> `HelloAck`; `Register`, `Heartbeat`, `Deregister`,
/// `MembersRequest` -> `MembersReply` (the answering master's current view,
/// so every heartbeat also refreshes membership); `DirPut` -> `DirPutAck`;
/// `DirGet` -> `DirGetReply`; `DirDelete` -> `DirDeleteAck`; `DataRead` ->
/// `DataReadReply`; `DataPromote` -> `DataPromoteReply`; `RdmaConnect` -> `RdmaConnectReply`;
/// `DataValidate` -> `DataValidateReply`. Any request may
/// instead be answered with `Error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Kind {
    /// [`Hello`](super::Hello): first frame on every connection.
    Hello = 0x01,
    /// [`HelloAck`](super::HelloAck).
    HelloAck = 0x02,
    /// [`ErrorReply`](super::ErrorReply): the answer to a failed request.
    Error = 0x03,
    /// [`Register`](super::Register).
    Register = 0x10,
    /// [`Heartbeat`](super::Heartbeat).
    Heartbeat = 0x11,
    /// [`Deregister`](super::Deregister).
    Deregister = 0x12,
    /// [`MembersRequest`](super::MembersRequest).
    MembersRequest = 0x13,
    /// [`MembersReply`](super::MembersReply).
    MembersReply = 0x14,
    /// [`DirPut`](super::DirPut).
    DirPut = 0x20,
    /// [`DirPutAck`](super::DirPutAck).
    DirPutAck = 0x21,
    /// [`DirGet`](super::DirGet).
    DirGet = 0x22,
    /// [`DirGetReply`](super::DirGetReply).
    DirGetReply = 0x23,
    /// [`DirDelete`](super::DirDelete).
    DirDelete = 0x24,
    /// [`DirDeleteAck`](super::DirDeleteAck).
    DirDeleteAck = 0x25,
    /// [`DataRead`](super::DataRead).
    DataRead = 0x30,
    /// [`DataReadReply`](super::DataReadReply): the only kind with a bulk
    /// section.
    DataReadReply = 0x31,
    /// [`DataPromote`](super::DataPromote): bring pages back from the
    /// owner's disk tier into its pool.
    DataPromote = 0x32,
    /// [`DataPromoteReply`](super::DataPromoteReply).
    DataPromoteReply = 0x33,
    /// [`RdmaConnect`](super::RdmaConnect): open RDMA channels (QP exchange).
    RdmaConnect = 0x34,
    /// [`RdmaConnectReply`](super::RdmaConnectReply).
    RdmaConnectReply = 0x35,
    /// [`DataValidate`](super::DataValidate): re-check slots after RDMA READs.
    DataValidate = 0x36,
    /// [`DataValidateReply`](super::DataValidateReply).
    DataValidateReply = 0x37,
}

impl Kind {
    /// Every kind this version speaks, in numeric order.
    pub const ALL: [Kind; 22] = [
        Kind::Hello,
        Kind::HelloAck,
        Kind::Error,
        Kind::Register,
        Kind::Heartbeat,
        Kind::Deregister,
        Kind::MembersRequest,
        Kind::MembersReply,
        Kind::DirPut,
        Kind::DirPutAck,
        Kind::DirGet,
        Kind::DirGetReply,
        Kind::DirDelete,
        Kind::DirDeleteAck,
        Kind::DataRead,
        Kind::DataReadReply,
        Kind::DataPromote,
        Kind::DataPromoteReply,
        Kind::RdmaConnect,
        Kind::RdmaConnectReply,
        Kind::DataValidate,
        Kind::DataValidateReply,
    ];

    /// The kind with this number, or `None` for unknown and reserved numbers.
    pub fn from_u16(raw: u16) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| *k as u16 == raw)
    }

    /// The number on the wire.
    #[inline]
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// Whether frames of this kind may have a non-empty bulk section.
    #[inline]
    pub fn carries_bulk(self) -> bool {
        matches!(self, Kind::DataReadReply)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({:#04x})", self, *self as u16)
    }
}

/// A parsed, limit-checked frame header.
///
/// Holding one means: magic and version matched, the kind is known, and both
/// section lengths are within the limits, so reading `meta_len` then
/// `bulk_len` bytes is safe to attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the meta section holds.
    pub kind: Kind,
    /// Chosen by the requester; a reply carries the id of its request.
    pub request_id: u64,
    /// Bytes of the meta section that follows the header.
    pub meta_len: u32,
    /// Bytes of the bulk section that follows the meta section.
    pub bulk_len: u32,
}

impl FrameHeader {
    /// A header for a frame with these sections, checked against the limits
    /// (so a sender cannot produce a frame its peer would refuse).
    pub fn new(
        kind: Kind,
        request_id: u64,
        meta_len: u64,
        bulk_len: u64,
    ) -> Result<FrameHeader, WireError> {
        let meta_len = check_meta_len(meta_len)?;
        let bulk_len = check_bulk_len(kind, bulk_len)?;
        Ok(FrameHeader {
            kind,
            request_id,
            meta_len,
            bulk_len,
        })
    }

    /// Parses and checks a received header. Checks, in order: magic,
    /// version, kind, meta length, bulk length (and that only bulk-carrying
    /// kinds announce bulk).
    pub fn parse(bytes: &[u8; HEADER_BYTES]) -> Result<FrameHeader, WireError> {
        let magic = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if magic != MAGIC {
            return Err(WireError::BadMagic {
                found: magic,
                expected: MAGIC,
            });
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion { found: version });
        }
        let raw_kind = u16::from_le_bytes([bytes[6], bytes[7]]);
        let kind = Kind::from_u16(raw_kind).ok_or(WireError::UnknownKind(raw_kind))?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[8..16]);
        let request_id = u64::from_le_bytes(id);
        let meta_len = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
        let bulk_len = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
        check_meta_len(u64::from(meta_len))?;
        check_bulk_len(kind, u64::from(bulk_len))?;
        Ok(FrameHeader {
            kind,
            request_id,
            meta_len,
            bulk_len,
        })
    }

    /// The 24 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        out[6..8].copy_from_slice(&self.kind.as_u16().to_le_bytes());
        out[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        out[16..20].copy_from_slice(&self.meta_len.to_le_bytes());
        out[20..24].copy_from_slice(&self.bulk_len.to_le_bytes());
        out
    }

    /// Bytes of the whole frame: header, meta and bulk.
    #[inline]
    pub fn frame_len_bytes(&self) -> u64 {
        HEADER_BYTES as u64 + u64::from(self.meta_len) + u64::from(self.bulk_len)
    }

    /// `Ok` when this frame is of `kind`, [`WireError::KindMismatch`]
    /// otherwise: what a requester checks before decoding a reply.
    pub fn expect_kind(&self, kind: Kind) -> Result<(), WireError> {
        if self.kind == kind {
            Ok(())
        } else {
            Err(WireError::KindMismatch {
                expected: kind,
                found: self.kind,
            })
        }
    }
}

fn check_meta_len(len_bytes: u64) -> Result<u32, WireError> {
    if len_bytes > u64::from(MAX_META_BYTES) {
        return Err(WireError::MetaTooLarge {
            len_bytes,
            max_bytes: u64::from(MAX_META_BYTES),
        });
    }
    Ok(len_bytes as u32)
}

fn check_bulk_len(kind: Kind, len_bytes: u64) -> Result<u32, WireError> {
    if len_bytes > u64::from(MAX_BULK_BYTES) {
        return Err(WireError::BulkTooLarge {
            len_bytes,
            max_bytes: u64::from(MAX_BULK_BYTES),
        });
    }
    if len_bytes > 0 && !kind.carries_bulk() {
        return Err(WireError::UnexpectedBulk {
            kind,
            len_bytes: len_bytes as u32,
        });
    }
    Ok(len_bytes as u32)
}
