//! The verbs interface the RDMA data plane is written against.
//!
//! It is the small subset of libibverbs PeerCache needs: list and open a
//! device, one protection domain per opened device, memory regions with access
//! flags, completion queues, reliable-connected queue pairs with their state
//! transitions, posting chained READ/WRITE work requests with scatter lists,
//! and polling completions. Two implementations exist: [`super::fabric`] (a
//! deterministic in-memory NIC for tests) and, behind the `ibverbs` cargo
//! feature, `super::ibverbs` (rdma-sys). Everything above this module (rails,
//! channels, registration, the batched reader) is generic over [`Verbs`], so
//! the logic tested on the fabric is the logic that runs on a NIC.
//!
//! Numeric values (access flags, `ibv_wc_status` codes) are libibverbs' own, so
//! a status reported in `rdma_last_wc_status` means the same thing whichever
//! implementation produced it.

use std::fmt;

/// Memory region access rights (`enum ibv_access_flags` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Access(pub u32);

impl Access {
    /// The local NIC may write into the region (destination of a READ).
    pub const LOCAL_WRITE: Access = Access(1);
    /// Peers may WRITE into the region.
    pub const REMOTE_WRITE: Access = Access(1 << 1);
    /// Peers may READ the region (the published pool).
    pub const REMOTE_READ: Access = Access(1 << 2);

    /// Whether every right of `other` is granted.
    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, o: Access) -> Access {
        Access(self.0 | o.0)
    }
}

/// A completion status (`enum ibv_wc_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WcStatus(pub u32);

impl WcStatus {
    /// The work request completed.
    pub const SUCCESS: WcStatus = WcStatus(0);
    /// Local protection error: a scatter entry outside its MR or a wrong lkey.
    pub const LOC_PROT_ERR: WcStatus = WcStatus(4);
    /// Flushed: the QP entered the error state before this request ran.
    pub const WR_FLUSH_ERR: WcStatus = WcStatus(5);
    /// Remote access error: bad rkey, bounds, or the MR lacks the right.
    pub const REM_ACCESS_ERR: WcStatus = WcStatus(10);
    /// Transport retry counter exceeded (peer unreachable: GID, MTU, path).
    pub const RETRY_EXC_ERR: WcStatus = WcStatus(12);
    /// Receiver-not-ready retry counter exceeded.
    pub const RNR_RETRY_EXC_ERR: WcStatus = WcStatus(13);

    /// Whether the request completed successfully.
    pub fn is_success(self) -> bool {
        self == WcStatus::SUCCESS
    }

    /// The text `ibv_wc_status_str` prints for this code, so log lines read
    /// the same as rdma-core tools whichever implementation produced them.
    pub fn as_str(self) -> &'static str {
        const NAMES: [&str; 22] = [
            "success",
            "local length error",
            "local QP operation error",
            "local EE context operation error",
            "local protection error",
            "Work Request Flushed Error",
            "memory management operation error",
            "bad response error",
            "local access error",
            "remote invalid request error",
            "remote access error",
            "remote operation error",
            "transport retry counter exceeded",
            "RNR retry counter exceeded",
            "local RDD violation error",
            "remote invalid RD request",
            "aborted error",
            "invalid EE context number",
            "invalid EE context state",
            "fatal error",
            "response timeout error",
            "general error",
        ];
        NAMES.get(self.0 as usize).copied().unwrap_or("unknown")
    }
}

impl fmt::Display for WcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.as_str(), self.0)
    }
}

/// A device as listed, before it is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Kernel name, e.g. `mlx5_0` (what `device_name(s)` names).
    pub name: String,
    /// Whether port `ib_port` is ACTIVE (a link is up).
    pub active: bool,
}

/// What a QP needs to know about its port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// HCA port number (`ib_port`).
    pub port: u8,
    /// Local identifier (InfiniBand; 0 on RoCE, where the GID routes).
    pub lid: u16,
    /// The GID at `gid_index` (RoCEv2 address).
    pub gid: [u8; 16],
    /// `gid_index`: the source GID a QP's packets carry.
    pub gid_index: u8,
    /// Active path MTU as an `ibv_mtu` value (1 = 256 ... 5 = 4096).
    pub active_mtu: u8,
}

/// One end of an RC connection, as exchanged over the control connection
/// before the QP can go to RTR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpEndpoint {
    /// Queue pair number.
    pub qp_num: u32,
    /// Initial packet sequence number of the sender (24 bits).
    pub psn: u32,
    /// Port LID (0 on RoCE).
    pub lid: u16,
    /// Port GID at the configured `gid_index`.
    pub gid: [u8; 16],
    /// The sender port's active MTU (`ibv_mtu`, 1 = 256 ... 5 = 4096).
    pub mtu: u8,
}

/// Queue pair states used by PeerCache (`enum ibv_qp_state` order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpState {
    /// Just created.
    Reset,
    /// Port and access set; can post receives.
    Init,
    /// Ready to receive: knows its peer.
    Rtr,
    /// Ready to send: work requests may be posted.
    Rts,
    /// A work request failed; everything outstanding is flushed.
    Error,
}

/// A local memory region as the NIC knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MrKeys {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub len: usize,
    /// Key for local scatter entries.
    pub lkey: u32,
    /// Key peers put in their work requests (meaningful with a REMOTE_* right).
    pub rkey: u32,
}

/// One scatter/gather entry (`struct ibv_sge`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sge {
    /// Local address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// lkey of the MR that covers `[addr, addr + len)`.
    pub lkey: u32,
}

/// One-sided operation of a work request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    /// Remote memory -> local scatter list.
    Read,
    /// Local scatter list -> remote memory.
    Write,
}

/// One send work request (`struct ibv_send_wr`, one-sided subset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkRequest {
    /// Returned in the completion; how the reader matches completions.
    pub wr_id: u64,
    /// READ or WRITE.
    pub opcode: Opcode,
    /// Local scatter list.
    pub sges: Vec<Sge>,
    /// Remote address.
    pub remote_addr: u64,
    /// Remote key.
    pub rkey: u32,
    /// Whether a successful completion is reported (`IBV_SEND_SIGNALED`).
    /// Failed requests always complete, signalled or not.
    pub signaled: bool,
}

/// One polled completion (`struct ibv_wc`, the fields PeerCache uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The request's `wr_id`.
    pub wr_id: u64,
    /// Outcome.
    pub status: WcStatus,
    /// Bytes transferred (valid on success).
    pub byte_len: u32,
}

/// Sizes of a queue pair's send queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpCaps {
    /// Most outstanding send work requests.
    pub max_send_wr: u32,
    /// Most scatter entries per request.
    pub max_send_sge: u32,
}

/// A verbs call failed. `call` names the libibverbs function (or the fabric's
/// equivalent) and `cause` says what usually causes it, so the message is
/// enough for an operator to act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{call} failed: {detail}; likely cause: {cause}")]
pub struct VerbsError {
    /// The verbs call, e.g. `ibv_reg_mr`.
    pub call: &'static str,
    /// What happened (errno text, state, ...).
    pub detail: String,
    /// The usual reason and what to check.
    pub cause: &'static str,
}

impl VerbsError {
    /// Builds an error.
    pub fn new(call: &'static str, detail: impl Into<String>, cause: &'static str) -> Self {
        Self {
            call,
            detail: detail.into(),
            cause,
        }
    }
}

/// A posted chain was refused at `index` (`bad_wr`): requests before it were
/// posted and will complete; it and those after it were not.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("posting work request {index} of the chain: {error}")]
pub struct PostError {
    /// Position of the first request not posted.
    pub index: usize,
    /// Why.
    pub error: VerbsError,
}

/// Lists and opens devices.
pub trait VerbsProvider {
    /// An opened device (with its protection domain).
    type Device: Verbs;

    /// Every RDMA device, with whether `port` is active.
    fn devices(&self, port: u8) -> Result<Vec<DeviceInfo>, VerbsError>;

    /// Opens `name` (or, with None, the first device whose `port` is active),
    /// allocates its protection domain and reads the GID at `gid_index`.
    fn open(&self, name: Option<&str>, port: u8, gid_index: u8)
        -> Result<Self::Device, VerbsError>;
}

/// An opened device and its protection domain. Every MR, CQ and QP of a rail
/// comes from one `Verbs` value, because a READ may only use MRs of its QP's
/// protection domain.
pub trait Verbs {
    /// A registered memory region; deregistered on drop.
    type Mr: MemoryRegion;
    /// A completion queue; destroyed on drop.
    type Cq: CompletionQueue;
    /// A reliable-connected queue pair; destroyed on drop (which stops any
    /// DMA it still had outstanding).
    type Qp: QueuePair;

    /// Device name.
    fn name(&self) -> &str;

    /// The port the device was opened on.
    fn port(&self) -> PortInfo;

    /// Registers `[addr, addr + len)` with `access`.
    ///
    /// # Safety
    /// The memory must stay mapped until the returned MR is dropped, and no
    /// work request may use it after that.
    unsafe fn register(
        &self,
        addr: *mut u8,
        len: usize,
        access: Access,
    ) -> Result<Self::Mr, VerbsError>;

    /// Registers device memory exported as a dmabuf (`ibv_reg_dmabuf_mr`):
    /// `len` bytes at `offset` in the dmabuf `fd`, mapped at `iova`.
    fn register_dmabuf(
        &self,
        fd: i32,
        offset: u64,
        len: usize,
        iova: u64,
        access: Access,
    ) -> Result<Self::Mr, VerbsError>;

    /// Creates a completion queue with room for `entries` completions.
    fn create_cq(&self, entries: u32) -> Result<Self::Cq, VerbsError>;

    /// Creates an RC queue pair (state RESET) whose sends complete on `cq`.
    fn create_qp(&self, cq: &Self::Cq, caps: QpCaps) -> Result<Self::Qp, VerbsError>;
}

/// A registered memory region.
pub trait MemoryRegion {
    /// Address, length and keys.
    fn keys(&self) -> MrKeys;
}

/// A completion queue.
pub trait CompletionQueue {
    /// Appends up to `max` available completions to `out`; returns how many.
    fn poll(&self, out: &mut Vec<Completion>, max: usize) -> Result<usize, VerbsError>;
}

/// A reliable-connected queue pair.
pub trait QueuePair {
    /// This end, to send to the peer (qp_num, psn, lid, gid).
    fn endpoint(&self) -> QpEndpoint;

    /// Current state.
    fn state(&self) -> QpState;

    /// RESET -> INIT: binds the port and the remote rights this QP grants.
    fn to_init(&mut self, access: Access) -> Result<(), VerbsError>;

    /// INIT -> RTR: connects to `remote` with the path MTU `mtu` (`ibv_mtu`).
    fn to_rtr(&mut self, remote: &QpEndpoint, mtu: u8) -> Result<(), VerbsError>;

    /// RTR -> RTS: ready to post sends.
    fn to_rts(&mut self) -> Result<(), VerbsError>;

    /// Posts a chain of work requests with one doorbell.
    fn post_send(&mut self, chain: &[WorkRequest]) -> Result<(), PostError>;
}

/// Brings a fresh QP to RTS against `remote` (RESET -> INIT -> RTR -> RTS).
/// `access` is what the QP lets its peer do: a reader's (requester) QP grants
/// nothing, the data node's (responder) QP grants REMOTE_READ; the MRs then
/// decide which memory a READ may touch. The path MTU is the smaller of
/// this port's (`mtu`) and the peer's: both ends must use the same, or
/// every READ retries out (hosts on one fabric with different MTUs).
pub fn connect_qp<Q: QueuePair>(
    qp: &mut Q,
    access: Access,
    remote: &QpEndpoint,
    mtu: u8,
) -> Result<(), VerbsError> {
    qp.to_init(access)?;
    qp.to_rtr(remote, path_mtu(mtu, remote.mtu))?;
    qp.to_rts()
}

/// The path MTU two ports of active MTUs `local` and `remote` agree on
/// (`remote` 0: not told, use `local`).
pub fn path_mtu(local: u8, remote: u8) -> u8 {
    if remote == 0 {
        local
    } else {
        local.min(remote)
    }
}
