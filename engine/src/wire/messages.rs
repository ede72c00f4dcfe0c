//! Every message of protocol version 1, one struct per [`Kind`].
//!
//! One struct per kind (rather than one archived enum) so that a receiver that
//! knows what it expects validates and reads exactly that type in place, and a
//! directory or data server never deserializes its hot-path requests. The
//! owned [`Message`] enum is there for code that dispatches on the kind
//! (control connections, tests, tools) and can afford the allocation.
//!
//! All strings and lists are bytecheck-validated (UTF-8, bounds) before use,
//! and every list is bounded by [`MAX_BATCH_ITEMS`](super::MAX_BATCH_ITEMS).

use rkyv::{Archive, Deserialize, Serialize};

use super::codec::{decode_owned, encode_frame, WireMessage};
use super::error::WireError;
use super::frame::{FrameHeader, Kind};
use crate::keys::KeyHash;
use crate::pool::Location;

/// What a connection is for, declared in its [`Hello`].
///
/// Lets a server refuse, say, data reads on its discovery port, and lets
/// transports keep bulk traffic off the connections that carry small
/// latency-sensitive control requests.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq))]
#[repr(u8)]
pub enum Purpose {
    /// Directory traffic between shards.
    Control = 0,
    /// Page reads (bulk traffic).
    Data = 1,
    /// Membership: register, heartbeat, members.
    Discovery = 2,
}

impl From<&ArchivedPurpose> for Purpose {
    fn from(archived: &ArchivedPurpose) -> Purpose {
        match archived {
            ArchivedPurpose::Control => Purpose::Control,
            ArchivedPurpose::Data => Purpose::Data,
            ArchivedPurpose::Discovery => Purpose::Discovery,
        }
    }
}

/// First frame on every connection, from the side that opened it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Hello {
    /// The version the sender speaks (also in every frame header; repeated
    /// here so the answering side can log it with the sender's name).
    pub protocol_version: u16,
    /// The sender's node id.
    pub node_id: String,
    /// What the connection will carry.
    pub purpose: Purpose,
}

/// Accepts a [`Hello`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct HelloAck {
    /// The answering node's id, so the opener can detect that an address now
    /// belongs to another node.
    pub node_id: String,
}

/// The answer to any request that failed (kind [`Kind::Error`]).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ErrorReply {
    /// One of [`error_code`](super::error_code).
    pub code: u16,
    /// A sentence for the operator's log.
    pub message: String,
}

/// A TCP endpoint as advertised by a node.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug))]
pub struct Endpoint {
    /// Advertised IP address (or host name).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// One cluster member as discovery knows it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MemberInfo {
    /// The member's node id (the ring member name).
    pub node_id: String,
    /// Advertised IP address.
    pub host: String,
    /// Discovery (meta) port on `host`.
    pub meta_port: u16,
    /// One control/data endpoint per shard, in shard order.
    pub control_endpoints: Vec<Endpoint>,
    /// Number of shards (equals `control_endpoints.len()` when well formed).
    pub shard_count: u16,
    /// Start time or nonce: distinguishes a restarted node from its previous
    /// life, whose pool contents and directory entries are gone.
    pub incarnation: u64,
    /// Bytes of the member's published pool.
    pub pool_bytes: u64,
}

/// Joins the cluster (sent to a master; answered with [`MembersReply`]).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Register {
    /// Who is joining.
    pub member: MemberInfo,
}

/// Keeps a registration alive (soft state; answered with [`MembersReply`]).
///
/// Carries the whole record, not just the id: a master that was just
/// promoted or restarted (empty registry) rebuilds its list from heartbeats
/// alone, within one heartbeat interval.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Heartbeat {
    /// The member, as in [`Register`].
    pub member: MemberInfo,
}

/// Leaves the cluster cleanly (answered with [`MembersReply`]).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Deregister {
    /// The leaving member's node id.
    pub node_id: String,
    /// The incarnation that is leaving, so a late deregistration from a
    /// previous life cannot remove a member that has since restarted.
    pub incarnation: u64,
}

/// Asks a master for the current membership.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MembersRequest;

/// A discovery service's answer to any discovery request.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MembersReply {
    /// What the answer is: [`MembersOutcome`] as a byte.
    pub outcome: u8,
    /// Random id of the answering registry's lifetime (`Ack` and `Members`).
    pub registry_instance: u64,
    /// Changes the registry has seen (`Ack` and `Members`): lets a member
    /// skip re-fetching a list it already holds.
    pub registry_changes: u64,
    /// The live members (`Members`), or the answering host's own view
    /// (`Referral`); empty otherwise.
    pub members: Vec<MemberInfo>,
    /// The clean shutdowns the registry still remembers (`Members`; within
    /// `member_ttl`), as the deregistrations that caused them: members drop
    /// these processes at once even if another master still lists them.
    /// Empty otherwise.
    pub departed: Vec<Deregister>,
    /// Why the request was refused (`Rejected`); empty otherwise.
    pub reason: String,
}

/// The kinds of [`MembersReply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MembersOutcome {
    /// Register / heartbeat / deregister accepted.
    Ack = 0,
    /// The registry's member list.
    Members = 1,
    /// Not a master (empty registry): the co-located member's view instead.
    Referral = 2,
    /// Refused; see `reason`.
    Rejected = 3,
}

impl MembersOutcome {
    /// The outcome with this code, `None` for codes this version does not know.
    pub fn from_u8(code: u8) -> Option<Self> {
        [Self::Ack, Self::Members, Self::Referral, Self::Rejected]
            .into_iter()
            .find(|o| *o as u8 == code)
    }
}

/// One directory entry: where the page of `key` lives.
///
/// Fields are ordered largest-alignment first so the archived form has no
/// interior padding: `ArchivedDirEntry` is **48 bytes** (16 key + 3 × 8 +
/// 4 + 2 + 1, padded to 8), which leaves the in-memory directory room inside
/// its 64-byte-per-entry budget. `Option<DirEntry>` archives to 56 bytes.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq))]
pub struct DirEntry {
    /// [`KeyHash::to_be_bytes`] of the page key.
    pub key: [u8; 16],
    /// [`node_hash`] of the producer's node id.
    pub node: u64,
    /// Byte offset of the page in the producer's pool.
    pub offset: u64,
    /// Slot generation the page was written with.
    pub generation: u64,
    /// Page length in bytes.
    pub len: u32,
    /// Producer shard that owns the slot.
    pub shard: u16,
    /// False once the page was evicted from the pool to the disk slab (a read
    /// then has to ask for a promotion).
    pub resident: bool,
}

impl DirEntry {
    /// An entry for `key` stored by node `node` (see [`node_hash`]) in shard
    /// `shard` at `location`.
    pub fn new(key: KeyHash, node: u64, shard: u16, location: Location, resident: bool) -> Self {
        DirEntry {
            key: key.to_be_bytes(),
            node,
            offset: location.offset,
            generation: location.generation,
            len: location.len,
            shard,
            resident,
        }
    }

    /// The page key.
    #[inline]
    pub fn key_hash(&self) -> KeyHash {
        KeyHash::from_be_bytes(self.key)
    }

    /// Where the page lives in the producer's pool.
    #[inline]
    pub fn location(&self) -> Location {
        Location {
            offset: self.offset,
            generation: self.generation,
            len: self.len,
        }
    }
}

impl From<&ArchivedDirEntry> for DirEntry {
    fn from(a: &ArchivedDirEntry) -> DirEntry {
        DirEntry {
            key: a.key,
            node: a.node.to_native(),
            offset: a.offset.to_native(),
            generation: a.generation.to_native(),
            len: a.len.to_native(),
            shard: a.shard.to_native(),
            resident: a.resident,
        }
    }
}

impl ArchivedDirEntry {
    /// The page key.
    #[inline]
    pub fn key_hash(&self) -> KeyHash {
        KeyHash::from_be_bytes(self.key)
    }
}

/// Publishes entries to a directory owner (answered with [`DirPutAck`]).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DirPut {
    /// Entries to insert or overwrite.
    pub entries: Vec<DirEntry>,
}

/// Answers [`DirPut`].
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DirPutAck {
    /// Entries stored.
    pub stored: u32,
}

/// Looks keys up (answered with [`DirGetReply`]).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DirGet {
    /// [`KeyHash::to_be_bytes`] of each key.
    pub keys: Vec<[u8; 16]>,
}

/// Answers [`DirGet`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DirGetReply {
    /// One per requested key, in request order; `None` for a miss.
    pub entries: Vec<Option<DirEntry>>,
}

/// Removes entries (answered with [`DirDeleteAck`]).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DirDelete {
    /// Only entries stored by this node ([`node_hash`]) are removed, so a
    /// producer never deletes a newer entry another node published.
    pub node: u64,
    /// [`KeyHash::to_be_bytes`] of each key.
    pub keys: Vec<[u8; 16]>,
}

/// Answers [`DirDelete`].
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DirDeleteAck {
    /// Entries actually removed.
    pub deleted: u32,
}

/// One page to read from a data node's pool (archived: 24 bytes).
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq))]
pub struct ReadItem {
    /// Byte offset in the pool.
    pub offset: u64,
    /// Generation the reader expects; the server refuses a slot that has
    /// moved on ([`ReadStatus::StaleGeneration`]).
    pub generation: u64,
    /// Bytes to read.
    pub len: u32,
}

impl From<Location> for ReadItem {
    fn from(l: Location) -> ReadItem {
        ReadItem {
            offset: l.offset,
            generation: l.generation,
            len: l.len,
        }
    }
}

impl From<&ArchivedReadItem> for ReadItem {
    fn from(a: &ArchivedReadItem) -> ReadItem {
        ReadItem {
            offset: a.offset.to_native(),
            generation: a.generation.to_native(),
            len: a.len.to_native(),
        }
    }
}

/// Reads pages (answered with [`DataReadReply`]).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DataRead {
    /// The node the locations were published by: its [`DirEntry::node`],
    /// which names one process lifetime of a node id. A process of another
    /// lifetime (the node restarted, even behind the same endpoint) answers
    /// every item [`ReadStatus::StaleGeneration`]: its slots and generations
    /// start afresh, so the old ones could name other pages.
    pub node: u64,
    /// Pages to read, in the order their bytes should come back.
    pub items: Vec<ReadItem>,
}

/// Answers [`DataRead`]. Its bulk section is the concatenation of the bytes of
/// the items whose status is [`ReadStatus::Ok`], in item order, so
/// `bulk_len` is the sum of their lengths (checked by
/// [`BulkPlan`](super::BulkPlan)).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DataReadReply {
    /// One [`ReadStatus`] code per requested item, in request order.
    pub status: Vec<u8>,
}

/// One end of an RDMA RC connection (see `rdma::verbs::QpEndpoint`).
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct QpInfo {
    /// Queue pair number.
    pub qp_num: u32,
    /// Initial packet sequence number (24 bits).
    pub psn: u32,
    /// Port LID (0 on RoCE).
    pub lid: u16,
    /// Port GID at the sender's `gid_index`.
    pub gid: [u8; 16],
    /// The sender port's active MTU (`ibv_mtu`): both ends of a channel
    /// use the smaller of the two.
    pub mtu: u8,
}

/// Opens RDMA channels to a data shard on one rail (answered with
/// [`RdmaConnectReply`]): the reader's new QPs, for each of which the data
/// shard creates a responder QP granting REMOTE_READ and connects it back.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RdmaConnect {
    /// [`node_hash`] of the reader's node id.
    pub node: u64,
    /// The reader's shard.
    pub shard: u16,
    /// Rail index (rails pair by index across nodes).
    pub rail: u16,
    /// Numbers the reader shard's connects, growing: connects travel on
    /// separate connections and may arrive out of order, and only the
    /// newest `live` list is applied.
    pub seq: u64,
    /// Every QP the reader still has to this shard on this rail, the new
    /// ones included: the data shard drops its responder QPs for any other
    /// (channels the reader discarded).
    pub live: Vec<u32>,
    /// The reader's new QPs.
    pub endpoints: Vec<QpInfo>,
}

/// Answers [`RdmaConnect`]. `rails == 0` means the data shard has no RDMA
/// data path (it runs on TCP): read it over TCP.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RdmaConnectReply {
    /// Rails the data shard has.
    pub rails: u16,
    /// Its responder QP for each requested endpoint, in request order.
    pub endpoints: Vec<QpInfo>,
    /// Address that pool offsets (`ReadItem::offset`) are relative to.
    pub pool_addr: u64,
    /// rkey of the pool's memory region on the requested rail.
    pub pool_rkey: u32,
}

/// Asks a data shard whether pages are still what their locations name
/// (answered with [`DataValidateReply`]). A reader sends it after its RDMA
/// READs landed: a slot evicted and reused meanwhile is a miss.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DataValidate {
    /// The node the locations were published by, checked as for
    /// [`DataRead::node`].
    pub node: u64,
    /// Locations to check.
    pub items: Vec<ReadItem>,
}

/// Answers [`DataValidate`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DataValidateReply {
    /// One [`ReadStatus`] code per item, in request order.
    pub status: Vec<u8>,
}

/// Asks a data shard to bring pages back from its disk tier into its pool
/// (answered with [`DataPromoteReply`]). A reader sends it for directory
/// entries marked non-resident, then reads the fresh locations with a
/// [`DataRead`]: promotion stays the owner's decision (it alone can evict to
/// make room) and the read path stays the one that checks generations.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DataPromote {
    /// [`KeyHash::to_be_bytes`] of each key.
    pub keys: Vec<[u8; 16]>,
}

/// Answers [`DataPromote`]: per key, in request order, the page's resident
/// entry on the answering node, or `None` when it holds the page neither in
/// memory nor (intact) on disk.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DataPromoteReply {
    /// One per requested key.
    pub entries: Vec<Option<DirEntry>>,
}

/// Per-item outcome of a [`DataRead`]. Codes are part of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReadStatus {
    /// The bytes follow in the bulk section.
    Ok = 0,
    /// The slot was reused since the location was published: a miss.
    StaleGeneration = 1,
    /// Nothing is stored at that offset.
    NotFound = 2,
    /// Offset or length fall outside the pool or the slot.
    BadRange = 3,
    /// The page was evicted to the disk slab; ask for a promotion.
    NotResident = 4,
    /// The server failed to read the page.
    Internal = 5,
}

impl ReadStatus {
    /// The status with this code, `None` for codes this version does not know.
    pub fn from_code(code: u8) -> Option<ReadStatus> {
        Some(match code {
            0 => ReadStatus::Ok,
            1 => ReadStatus::StaleGeneration,
            2 => ReadStatus::NotFound,
            3 => ReadStatus::BadRange,
            4 => ReadStatus::NotResident,
            5 => ReadStatus::Internal,
            _ => return None,
        })
    }

    /// The byte on the wire.
    #[inline]
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// The 64-bit node identity used in [`DirEntry::node`] and
/// [`DirDelete::node`]: see [`NodeRef::of`](crate::directory::NodeRef::of).
#[inline]
pub fn node_hash(node_id: &str, incarnation: u64) -> u64 {
    crate::directory::NodeRef::of(node_id, incarnation).0
}

/// Implements [`WireMessage`] for a message struct. `$own` and `$arch` give the
/// length of its longest list, on the owned and on the archived form.
macro_rules! wire_message {
    ($ty:ident, $kind:ident, |$s:ident| $own:expr, |$a:ident| $arch:expr) => {
        impl super::codec::sealed::Sealed for $ty {}

        impl WireMessage for $ty {
            const KIND: Kind = Kind::$kind;

            fn max_list_len(&self) -> usize {
                let $s = self;
                $own
            }

            fn archived_max_list_len(archived: &<Self as Archive>::Archived) -> usize {
                let $a = archived;
                $arch
            }

            fn serialize_meta(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
                let writer = super::codec::MetaWriter::new(out);
                rkyv::api::high::to_bytes_in::<_, rkyv::rancor::BoxedError>(self, writer)
                    .map(|_| ())
                    .map_err(|e| WireError::Encode {
                        kind: Kind::$kind,
                        detail: e.to_string(),
                    })
            }

            fn access_meta(meta: &[u8]) -> Result<&<Self as Archive>::Archived, WireError> {
                rkyv::access::<<Self as Archive>::Archived, rkyv::rancor::BoxedError>(meta)
                    .map_err(|e| WireError::InvalidArchive(format!("{} meta: {e}", Kind::$kind)))
            }

            fn deserialize_archived(
                archived: &<Self as Archive>::Archived,
            ) -> Result<Self, WireError> {
                rkyv::deserialize::<Self, rkyv::rancor::BoxedError>(archived)
                    .map_err(|e| WireError::InvalidArchive(format!("{} meta: {e}", Kind::$kind)))
            }
        }
    };
}

wire_message!(Hello, Hello, |_m| 0, |_a| 0);
wire_message!(HelloAck, HelloAck, |_m| 0, |_a| 0);
wire_message!(ErrorReply, Error, |_m| 0, |_a| 0);
wire_message!(
    Register,
    Register,
    |m| m.member.control_endpoints.len(),
    |a| a.member.control_endpoints.len()
);
wire_message!(
    Heartbeat,
    Heartbeat,
    |m| m.member.control_endpoints.len(),
    |a| a.member.control_endpoints.len()
);
wire_message!(Deregister, Deregister, |_m| 0, |_a| 0);
wire_message!(MembersRequest, MembersRequest, |_m| 0, |_a| 0);
wire_message!(
    MembersReply,
    MembersReply,
    |m| {
        let endpoints = m.members.iter().map(|x| x.control_endpoints.len()).max();
        m.members
            .len()
            .max(m.departed.len())
            .max(endpoints.unwrap_or(0))
    },
    |a| {
        let endpoints = a.members.iter().map(|x| x.control_endpoints.len()).max();
        a.members
            .len()
            .max(a.departed.len())
            .max(endpoints.unwrap_or(0))
    }
);
wire_message!(DirPut, DirPut, |m| m.entries.len(), |a| a.entries.len());
wire_message!(DirPutAck, DirPutAck, |_m| 0, |_a| 0);
wire_message!(DirGet, DirGet, |m| m.keys.len(), |a| a.keys.len());
wire_message!(DirGetReply, DirGetReply, |m| m.entries.len(), |a| a
    .entries
    .len());
wire_message!(DirDelete, DirDelete, |m| m.keys.len(), |a| a.keys.len());
wire_message!(DirDeleteAck, DirDeleteAck, |_m| 0, |_a| 0);
wire_message!(DataRead, DataRead, |m| m.items.len(), |a| a.items.len());
wire_message!(DataReadReply, DataReadReply, |m| m.status.len(), |a| a
    .status
    .len());
wire_message!(DataPromote, DataPromote, |m| m.keys.len(), |a| a.keys.len());
wire_message!(
    DataPromoteReply,
    DataPromoteReply,
    |m| m.entries.len(),
    |a| a.entries.len()
);
wire_message!(
    RdmaConnect,
    RdmaConnect,
    |m| m.live.len().max(m.endpoints.len()),
    |a| a.live.len().max(a.endpoints.len())
);
wire_message!(
    RdmaConnectReply,
    RdmaConnectReply,
    |m| m.endpoints.len(),
    |a| a.endpoints.len()
);
wire_message!(DataValidate, DataValidate, |m| m.items.len(), |a| a
    .items
    .len());
wire_message!(
    DataValidateReply,
    DataValidateReply,
    |m| m.status.len(),
    |a| a.status.len()
);

/// Builds the owned [`Message`] enum over every kind.
macro_rules! message_enum {
    ($($variant:ident($ty:ident)),* $(,)?) => {
        /// Any message of this protocol version, owned.
        ///
        /// For code that dispatches on the kind and can afford to deserialize
        /// (control connections, tools, tests). Hot paths decode the one type
        /// they expect in place with [`decode_meta`](super::decode_meta).
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Message {
            $(
                #[doc = concat!("A [`", stringify!($ty), "`].")]
                $variant($ty),
            )*
        }

        impl Message {
            /// The kind number this message travels under.
            pub fn kind(&self) -> Kind {
                match self {
                    $(Message::$variant(_) => Kind::$variant,)*
                }
            }

            /// Validates and deserializes the meta section of a frame whose
            /// header is `header` (the meta must be aligned, see
            /// [`decode_meta`](super::decode_meta)).
            pub fn decode(header: &FrameHeader, meta: &[u8]) -> Result<Message, WireError> {
                match header.kind {
                    $(Kind::$variant => decode_owned::<$ty>(meta).map(Message::$variant),)*
                }
            }

            /// Appends a frame carrying this message to `out`, like
            /// [`encode_frame`](super::encode_frame).
            pub fn encode(
                &self,
                request_id: u64,
                bulk_len: u64,
                out: &mut Vec<u8>,
            ) -> Result<FrameHeader, WireError> {
                match self {
                    $(Message::$variant(m) => encode_frame(m, request_id, bulk_len, out),)*
                }
            }
        }

        $(
            impl From<$ty> for Message {
                fn from(m: $ty) -> Message {
                    Message::$variant(m)
                }
            }
        )*
    };
}

message_enum!(
    Hello(Hello),
    HelloAck(HelloAck),
    Error(ErrorReply),
    Register(Register),
    Heartbeat(Heartbeat),
    Deregister(Deregister),
    MembersRequest(MembersRequest),
    MembersReply(MembersReply),
    DirPut(DirPut),
    DirPutAck(DirPutAck),
    DirGet(DirGet),
    DirGetReply(DirGetReply),
    DirDelete(DirDelete),
    DirDeleteAck(DirDeleteAck),
    DataRead(DataRead),
    DataReadReply(DataReadReply),
    DataPromote(DataPromote),
    DataPromoteReply(DataPromoteReply),
    RdmaConnect(RdmaConnect),
    RdmaConnectReply(RdmaConnectReply),
    DataValidate(DataValidate),
    DataValidateReply(DataValidateReply),
);
