//! A deterministic software RDMA fabric: an in-memory "NIC" implementing
//! [`Verbs`] so the data plane can be tested without hardware.
//!
//! Every device, MR, CQ and QP lives in one [`Fabric`]. Work requests are
//! queued when posted and executed later, in post order per QP, when some CQ
//! is polled: each poll advances a logical clock by one tick (one tick is one
//! logical microsecond for [`FabricClock`]), so "time" is a count of polls and
//! a test never depends on the wall clock. A READ copies real bytes between
//! the addresses its MRs cover (both ends live in the test process) after the
//! checks a NIC makes: the responder QP must grant REMOTE_READ, the rkey must
//! name an MR of the responder's device with REMOTE_READ covering the remote
//! range (else status 10), and every local scatter entry must lie in an MR of
//! the requester's device with LOCAL_WRITE under the right lkey (else 4).
//!
//! Faults are drawn per work request from a seeded generator
//! ([`FaultPlan`]): remote access error (10), retry exceeded (12), RNR retry
//! exceeded (13), a lost completion, a refused post, and a slow peer (extra
//! ticks before execution). Completion delivery can be delayed by a seeded
//! number of ticks, which reorders completions across QPs and CQs; the
//! completions of one QP stay in order, as on RC hardware. A run replays
//! exactly from its seed.

use super::verbs::{
    Access, Completion, CompletionQueue, DeviceInfo, MemoryRegion, MrKeys, Opcode, PortInfo,
    PostError, QpCaps, QpEndpoint, QpState, QueuePair, Verbs, VerbsError, VerbsProvider, WcStatus,
    WorkRequest,
};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// Faults injected per work request, each as a rate in 1/1000.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// Completes with status 10 (remote access error).
    pub remote_access_per_mille: u16,
    /// Completes with status 12 (transport retry counter exceeded).
    pub retry_exceeded_per_mille: u16,
    /// Completes with status 13 (RNR retry counter exceeded).
    pub rnr_retry_per_mille: u16,
    /// Executes but its completion is never delivered.
    pub lost_completion_per_mille: u16,
    /// `ibv_post_send` refuses the request (send queue full).
    pub post_refusal_per_mille: u16,
    /// Requests to this device (the responder) wait `slow_ticks` more.
    pub slow_device: Option<String>,
    /// Extra ticks for requests to `slow_device`.
    pub slow_ticks: u64,
}

/// How the fabric delivers completions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FabricOptions {
    /// Seed of every random choice.
    pub seed: u64,
    /// Most extra ticks between a request's execution and the delivery of its
    /// completion (0: delivered in order, on the tick it executed).
    pub max_completion_delay_ticks: u64,
    /// Faults to inject.
    pub faults: FaultPlan,
    /// Whether `register_dmabuf` works (a GPUDirect-capable stack).
    pub dmabuf: bool,
}

impl Default for FabricOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            max_completion_delay_ticks: 0,
            faults: FaultPlan::default(),
            dmabuf: false,
        }
    }
}

/// What a READ is about to do, shown to the execution hook (a test uses it to
/// evict a page while its READ is in flight).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadEvent {
    /// Remote address read.
    pub remote_addr: u64,
    /// The rkey the READ used.
    pub rkey: u32,
    /// Bytes read.
    pub len: u64,
    /// Logical tick.
    pub tick: u64,
}

type Hook = Box<dyn FnMut(&ReadEvent) + Send>;

/// Counters of what the fabric did, for assertions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FabricCounters {
    /// `post_send` calls that posted at least one request.
    pub posts: u64,
    /// Work requests executed (any outcome).
    pub executed: u64,
    /// Completions delivered to CQs.
    pub completions: u64,
    /// Bytes moved by READ and WRITE.
    pub bytes: u64,
    /// QPs created.
    pub qps_created: u64,
}

/// SplitMix64: tiny, seedable, and enough for fault rolls; keeps the library
/// free of a random-number dependency.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn roll(&mut self, per_mille: u16) -> bool {
        per_mille > 0 && self.below(1000) < u64::from(per_mille)
    }
}

struct DevState {
    name: String,
    active: bool,
    /// Active MTU of its port (`ibv_mtu`).
    mtu: u8,
    /// The number its next QP gets. QP numbers are per device, as on real
    /// NICs, and every device starts from the same one, so two rails of a
    /// node hand out the same numbers: code that keys QPs by number alone
    /// mixes up rails here as it would on hardware.
    next_qp_num: u32,
}

/// The first QP number of every device (numbers below it are reserved on
/// real hardware).
const FIRST_QP_NUM: u32 = 0x100;

struct MrState {
    dev: u32,
    addr: u64,
    len: usize,
    access: Access,
}

struct QpSlot {
    dev: u32,
    /// Its QP number on its device (what [`QpEndpoint::qp_num`] says).
    num: u32,
    cq: u32,
    psn: u32,
    state: QpState,
    access: Access,
    /// Internal id of the connected remote QP.
    remote: Option<u32>,
    /// Path MTU set at RTR (0 before).
    path_mtu: u8,
    caps: QpCaps,
    queued: usize,
    /// Tick at which its last queued request runs (keeps per-QP order).
    last_exec: u64,
    /// Tick at which its last completion becomes visible (completions of
    /// one QP are delivered in order).
    last_delivery: u64,
}

struct CqState {
    capacity: usize,
    /// (deliver at tick, sequence, completion): not visible yet.
    pending: Vec<(u64, u64, Completion)>,
    ready: VecDeque<Completion>,
    overrun: bool,
}

struct Queued {
    qpn: u32,
    exec_at: u64,
    wr: WorkRequest,
}

struct State {
    options: FabricOptions,
    rng: SplitMix64,
    tick: u64,
    seq: u64,
    next_id: u32,
    devices: HashMap<u32, DevState>,
    mrs: HashMap<u32, MrState>,
    /// Keyed by the fabric's internal id, unique across devices.
    qps: HashMap<u32, QpSlot>,
    /// (device, QP number on it) -> internal id of the QP.
    qp_ids: HashMap<(u32, u32), u32>,
    cqs: HashMap<u32, CqState>,
    queue: VecDeque<Queued>,
    hook: Option<Hook>,
    counters: FabricCounters,
}

/// The shared in-memory fabric (clone it freely: clones are handles).
#[derive(Clone)]
pub struct Fabric {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Fabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fabric").finish_non_exhaustive()
    }
}

impl Fabric {
    /// An empty fabric.
    pub fn new(options: FabricOptions) -> Fabric {
        let rng = SplitMix64(options.seed);
        Fabric {
            state: Arc::new(Mutex::new(State {
                options,
                rng,
                tick: 0,
                seq: 0,
                next_id: 1,
                devices: HashMap::new(),
                mrs: HashMap::new(),
                qps: HashMap::new(),
                qp_ids: HashMap::new(),
                cqs: HashMap::new(),
                queue: VecDeque::new(),
                hook: None,
                counters: FabricCounters::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in a test hook poisons the lock; the state is still usable
        // for the assertions that follow, so take it anyway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a device (a NIC of some simulated host) whose port has an
    /// active MTU of 4096.
    pub fn add_device(&self, name: &str, active: bool) {
        self.add_device_with_mtu(name, active, 5);
    }

    /// Adds a device whose port has active MTU `mtu` (`ibv_mtu`). READs
    /// between two QPs whose path MTUs differ retry out, as on a fabric
    /// where one end drops the other's packets.
    pub fn add_device_with_mtu(&self, name: &str, active: bool, mtu: u8) {
        let mut s = self.lock();
        let id = s.alloc_id();
        s.devices.insert(
            id,
            DevState {
                name: name.to_owned(),
                active,
                mtu,
                next_qp_num: FIRST_QP_NUM,
            },
        );
    }

    /// A provider listing and opening this fabric's devices.
    pub fn provider(&self) -> FabricProvider {
        FabricProvider {
            fabric: self.clone(),
        }
    }

    /// Sets the hook run just before each READ copies its bytes.
    pub fn on_read(&self, hook: impl FnMut(&ReadEvent) + Send + 'static) {
        self.lock().hook = Some(Box::new(hook));
    }

    /// Replaces the fault plan (e.g. a fault starting mid-test).
    pub fn set_faults(&self, faults: FaultPlan) {
        self.lock().options.faults = faults;
    }

    /// What the fabric did so far.
    pub fn counters(&self) -> FabricCounters {
        self.lock().counters
    }

    /// QPs that exist now (created and not yet destroyed), on every device.
    pub fn live_qps(&self) -> usize {
        self.lock().qps.len()
    }

    /// Memory regions registered now, on every device.
    pub fn live_mrs(&self) -> usize {
        self.lock().mrs.len()
    }

    /// Current logical tick.
    pub fn tick(&self) -> u64 {
        self.lock().tick
    }

    /// Work requests queued and not executed yet.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Advances the clock `ticks` times, executing what is due.
    pub fn advance(&self, ticks: u64) {
        let mut s = self.lock();
        for _ in 0..ticks {
            s.step();
        }
    }

    /// The logical clock of this fabric, for timeouts in tests.
    pub fn clock(&self) -> FabricClock {
        FabricClock {
            fabric: self.clone(),
        }
    }
}

impl State {
    fn alloc_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn port_of(&self, dev: u32, gid_index: u8) -> PortInfo {
        let mut gid = [0u8; 16];
        gid[10] = 0xff;
        gid[11] = 0xff;
        gid[12..].copy_from_slice(&dev.to_be_bytes());
        PortInfo {
            port: 1,
            lid: dev as u16,
            gid,
            gid_index,
            active_mtu: self.devices.get(&dev).map_or(5, |d| d.mtu),
        }
    }

    /// One tick: run every request due, then make due completions visible.
    fn step(&mut self) {
        self.tick += 1;
        let tick = self.tick;
        // Per-QP order holds because a QP's requests have non-decreasing
        // exec_at and the queue is scanned in post order.
        let mut i = 0;
        while i < self.queue.len() {
            if self.queue[i].exec_at <= tick {
                let q = self.queue.remove(i).expect("index in range");
                self.execute(q);
            } else {
                i += 1;
            }
        }
        for cq in self.cqs.values_mut() {
            if cq.pending.is_empty() {
                continue;
            }
            cq.pending.sort_by_key(|&(at, seq, _)| (at, seq));
            let due = cq.pending.partition_point(|&(at, _, _)| at <= tick);
            for (_, _, c) in cq.pending.drain(..due) {
                cq.ready.push_back(c);
            }
        }
    }

    fn complete(&mut self, qpn: u32, cq: u32, c: Completion) {
        let delay = self.rng.below(self.options.max_completion_delay_ticks + 1);
        let mut at = self.tick + delay;
        if let Some(qp) = self.qps.get_mut(&qpn) {
            at = at.max(qp.last_delivery);
            qp.last_delivery = at;
        }
        let seq = self.seq;
        self.seq += 1;
        if let Some(cq) = self.cqs.get_mut(&cq) {
            if cq.pending.len() + cq.ready.len() >= cq.capacity {
                cq.overrun = true;
            } else {
                cq.pending.push((at, seq, c));
            }
            self.counters.completions += 1;
        }
    }

    fn execute(&mut self, q: Queued) {
        self.counters.executed += 1;
        let Some(qp) = self.qps.get_mut(&q.qpn) else {
            return; // destroyed: its requests die with it
        };
        qp.queued -= 1;
        let (cq, state, dev, remote, mtu) = (qp.cq, qp.state, qp.dev, qp.remote, qp.path_mtu);
        let wr = q.wr;
        let status = if state == QpState::Error {
            WcStatus::WR_FLUSH_ERR
        } else {
            self.run(dev, remote, mtu, &wr)
        };
        let lost = status.is_success() && {
            let p = self.options.faults.lost_completion_per_mille;
            self.rng.roll(p)
        };
        if !status.is_success() {
            if let Some(qp) = self.qps.get_mut(&q.qpn) {
                qp.state = QpState::Error;
            }
        }
        // Errors always complete; successes only when signalled.
        if !lost && (wr.signaled || !status.is_success()) {
            let byte_len = wr.sges.iter().map(|s| s.len).sum();
            self.complete(
                q.qpn,
                cq,
                Completion {
                    wr_id: wr.wr_id,
                    status,
                    byte_len,
                },
            );
        }
    }

    /// Checks and performs one READ/WRITE; returns its completion status.
    fn run(&mut self, dev: u32, remote: Option<u32>, path_mtu: u8, wr: &WorkRequest) -> WcStatus {
        let f = self.options.faults.clone();
        if self.rng.roll(f.retry_exceeded_per_mille) {
            return WcStatus::RETRY_EXC_ERR;
        }
        if self.rng.roll(f.rnr_retry_per_mille) {
            return WcStatus::RNR_RETRY_EXC_ERR;
        }
        if self.rng.roll(f.remote_access_per_mille) {
            return WcStatus::REM_ACCESS_ERR;
        }
        // The responder must exist, be connected and still be up: a peer
        // that vanished never acknowledges, so the requester retries out.
        let Some(peer) = remote.and_then(|r| self.qps.get(&r)) else {
            return WcStatus::RETRY_EXC_ERR;
        };
        if !matches!(peer.state, QpState::Rtr | QpState::Rts) {
            return WcStatus::RETRY_EXC_ERR;
        }
        // Packets sized for another path MTU are dropped: no answer ever
        // arrives, and the requester retries out.
        if peer.path_mtu != path_mtu {
            return WcStatus::RETRY_EXC_ERR;
        }
        let (needed_qp, needed_mr, local_right) = match wr.opcode {
            Opcode::Read => (
                Access::REMOTE_READ,
                Access::REMOTE_READ,
                Access::LOCAL_WRITE,
            ),
            Opcode::Write => (
                Access::REMOTE_WRITE,
                Access::REMOTE_WRITE,
                Access::default(),
            ),
        };
        if !peer.access.contains(needed_qp) {
            return WcStatus::REM_ACCESS_ERR;
        }
        let peer_dev = peer.dev;
        let total: u64 = wr.sges.iter().map(|s| u64::from(s.len)).sum();
        let remote_ok = self.mrs.get(&wr.rkey).is_some_and(|mr| {
            mr.dev == peer_dev
                && mr.access.contains(needed_mr)
                && wr.remote_addr >= mr.addr
                && wr.remote_addr + total <= mr.addr + mr.len as u64
        });
        if !remote_ok {
            return WcStatus::REM_ACCESS_ERR;
        }
        for sge in &wr.sges {
            let ok = self.mrs.get(&sge.lkey).is_some_and(|mr| {
                mr.dev == dev
                    && mr.access.contains(local_right)
                    && sge.addr >= mr.addr
                    && sge.addr + u64::from(sge.len) <= mr.addr + mr.len as u64
            });
            if !ok {
                return WcStatus::LOC_PROT_ERR;
            }
        }
        if wr.opcode == Opcode::Read {
            let event = ReadEvent {
                remote_addr: wr.remote_addr,
                rkey: wr.rkey,
                len: total,
                tick: self.tick,
            };
            if let Some(hook) = self.hook.as_mut() {
                hook(&event);
            }
        }
        let mut remote_at = wr.remote_addr;
        for sge in &wr.sges {
            let (src, dst) = match wr.opcode {
                Opcode::Read => (remote_at, sge.addr),
                Opcode::Write => (sge.addr, remote_at),
            };
            // SAFETY: both ranges were checked to lie inside registered MRs,
            // whose registration contract keeps them mapped; `copy` tolerates
            // overlap.
            unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, sge.len as usize) };
            remote_at += u64::from(sge.len);
        }
        self.counters.bytes += total;
        WcStatus::SUCCESS
    }
}

/// Lists and opens the fabric's devices.
#[derive(Clone, Debug)]
pub struct FabricProvider {
    fabric: Fabric,
}

impl VerbsProvider for FabricProvider {
    type Device = FabricDevice;

    fn devices(&self, _port: u8) -> Result<Vec<DeviceInfo>, VerbsError> {
        let s = self.fabric.lock();
        let mut list: Vec<(u32, DeviceInfo)> = s
            .devices
            .iter()
            .map(|(&id, d)| {
                (
                    id,
                    DeviceInfo {
                        name: d.name.clone(),
                        active: d.active,
                    },
                )
            })
            .collect();
        list.sort_by_key(|&(id, _)| id);
        Ok(list.into_iter().map(|(_, d)| d).collect())
    }

    fn open(
        &self,
        name: Option<&str>,
        port: u8,
        gid_index: u8,
    ) -> Result<FabricDevice, VerbsError> {
        let s = self.fabric.lock();
        let mut ids: Vec<u32> = s.devices.keys().copied().collect();
        ids.sort_unstable();
        let found = ids.into_iter().find(|id| {
            let d = &s.devices[id];
            match name {
                Some(n) => d.name == n,
                None => d.active,
            }
        });
        let Some(id) = found else {
            return Err(VerbsError::new(
                "ibv_open_device",
                format!("no fabric device {}", name.unwrap_or("with an active port")),
                "device_name does not name a device of this fabric",
            ));
        };
        if !s.devices[&id].active {
            return Err(VerbsError::new(
                "ibv_query_port",
                format!("port {port} of {} is down", s.devices[&id].name),
                "the link is down: check cabling and `ibv_devinfo`",
            ));
        }
        Ok(FabricDevice {
            fabric: self.fabric.clone(),
            id,
            name: s.devices[&id].name.clone(),
            port: s.port_of(id, gid_index),
        })
    }
}

/// An opened fabric device (and its protection domain).
#[derive(Clone, Debug)]
pub struct FabricDevice {
    fabric: Fabric,
    id: u32,
    name: String,
    port: PortInfo,
}

impl Verbs for FabricDevice {
    type Mr = FabricMr;
    type Cq = FabricCq;
    type Qp = FabricQp;

    fn name(&self) -> &str {
        &self.name
    }

    fn port(&self) -> PortInfo {
        self.port
    }

    unsafe fn register(
        &self,
        addr: *mut u8,
        len: usize,
        access: Access,
    ) -> Result<FabricMr, VerbsError> {
        if addr.is_null() || len == 0 {
            return Err(VerbsError::new(
                "ibv_reg_mr",
                format!("address {addr:?}, {len} bytes"),
                "a null or empty buffer cannot be registered",
            ));
        }
        if access.contains(Access::REMOTE_WRITE) && !access.contains(Access::LOCAL_WRITE) {
            // The same rule libibverbs enforces (EINVAL).
            return Err(VerbsError::new(
                "ibv_reg_mr",
                "REMOTE_WRITE without LOCAL_WRITE",
                "remote write access requires local write access",
            ));
        }
        let mut s = self.fabric.lock();
        let key = s.alloc_id();
        s.mrs.insert(
            key,
            MrState {
                dev: self.id,
                addr: addr as u64,
                len,
                access,
            },
        );
        Ok(FabricMr {
            fabric: self.fabric.clone(),
            keys: MrKeys {
                addr: addr as u64,
                len,
                lkey: key,
                rkey: key,
            },
        })
    }

    fn register_dmabuf(
        &self,
        fd: i32,
        _offset: u64,
        len: usize,
        iova: u64,
        access: Access,
    ) -> Result<FabricMr, VerbsError> {
        let dmabuf = self.fabric.lock().options.dmabuf;
        if !dmabuf || fd < 0 {
            return Err(VerbsError::new(
                "ibv_reg_dmabuf_mr",
                format!("fd {fd}: operation not supported"),
                "the NIC driver or kernel lacks dmabuf support",
            ));
        }
        // The fabric treats the device memory as host memory at `iova`.
        // SAFETY: fabric tests pass a host buffer's address as the iova.
        unsafe { self.register(iova as *mut u8, len, access) }
    }

    fn create_cq(&self, entries: u32) -> Result<FabricCq, VerbsError> {
        let mut s = self.fabric.lock();
        let id = s.alloc_id();
        s.cqs.insert(
            id,
            CqState {
                capacity: entries.max(1) as usize,
                pending: Vec::new(),
                ready: VecDeque::new(),
                overrun: false,
            },
        );
        Ok(FabricCq {
            fabric: self.fabric.clone(),
            id,
        })
    }

    fn create_qp(&self, cq: &FabricCq, caps: QpCaps) -> Result<FabricQp, VerbsError> {
        let mut s = self.fabric.lock();
        let qpn = s.alloc_id();
        let dev = s
            .devices
            .get_mut(&self.id)
            .expect("device of an open context");
        let num = dev.next_qp_num;
        dev.next_qp_num += 1;
        let psn = (s.rng.next() & 0x00ff_ffff) as u32;
        s.counters.qps_created += 1;
        s.qp_ids.insert((self.id, num), qpn);
        s.qps.insert(
            qpn,
            QpSlot {
                dev: self.id,
                num,
                cq: cq.id,
                psn,
                state: QpState::Reset,
                access: Access::default(),
                remote: None,
                path_mtu: 0,
                caps,
                queued: 0,
                last_exec: 0,
                last_delivery: 0,
            },
        );
        Ok(FabricQp {
            fabric: self.fabric.clone(),
            qpn,
            endpoint: QpEndpoint {
                qp_num: num,
                psn,
                lid: self.port.lid,
                gid: self.port.gid,
                mtu: self.port.active_mtu,
            },
        })
    }
}

/// A fabric memory region; deregistered on drop.
#[derive(Debug)]
pub struct FabricMr {
    fabric: Fabric,
    keys: MrKeys,
}

impl MemoryRegion for FabricMr {
    fn keys(&self) -> MrKeys {
        self.keys
    }
}

impl Drop for FabricMr {
    fn drop(&mut self) {
        self.fabric.lock().mrs.remove(&self.keys.lkey);
    }
}

/// A fabric completion queue. Polling it advances the fabric by one tick.
#[derive(Debug)]
pub struct FabricCq {
    fabric: Fabric,
    id: u32,
}

impl CompletionQueue for FabricCq {
    fn poll(&self, out: &mut Vec<Completion>, max: usize) -> Result<usize, VerbsError> {
        let mut s = self.fabric.lock();
        s.step();
        let cq = s
            .cqs
            .get_mut(&self.id)
            .expect("CQ alive while its handle is");
        if cq.overrun {
            return Err(VerbsError::new(
                "ibv_poll_cq",
                "completion queue overrun",
                "more outstanding signalled requests than CQ entries",
            ));
        }
        let n = max.min(cq.ready.len());
        out.extend(cq.ready.drain(..n));
        Ok(n)
    }
}

impl Drop for FabricCq {
    fn drop(&mut self) {
        self.fabric.lock().cqs.remove(&self.id);
    }
}

/// A fabric RC queue pair; destroying it drops its queued requests (no DMA
/// happens after destroy, as on a NIC).
#[derive(Debug)]
pub struct FabricQp {
    fabric: Fabric,
    qpn: u32,
    endpoint: QpEndpoint,
}

impl FabricQp {
    fn transition(&self, from: QpState, to: QpState, call: &'static str) -> Result<(), VerbsError> {
        let mut s = self.fabric.lock();
        let qp = s
            .qps
            .get_mut(&self.qpn)
            .expect("QP alive while its handle is");
        if qp.state != from {
            return Err(VerbsError::new(
                call,
                format!("QP {} is {:?}, expected {from:?}", self.qpn, qp.state),
                "queue pair transitions must go RESET -> INIT -> RTR -> RTS",
            ));
        }
        qp.state = to;
        Ok(())
    }
}

impl QueuePair for FabricQp {
    fn endpoint(&self) -> QpEndpoint {
        self.endpoint
    }

    fn state(&self) -> QpState {
        self.fabric.lock().qps[&self.qpn].state
    }

    fn to_init(&mut self, access: Access) -> Result<(), VerbsError> {
        self.transition(QpState::Reset, QpState::Init, "ibv_modify_qp(INIT)")?;
        self.fabric
            .lock()
            .qps
            .get_mut(&self.qpn)
            .expect("QP alive")
            .access = access;
        Ok(())
    }

    fn to_rtr(&mut self, remote: &QpEndpoint, mtu: u8) -> Result<(), VerbsError> {
        let remote_id = {
            let s = self.fabric.lock();
            // The GID names the device, and the number a QP on it.
            let remote_id = s
                .devices
                .keys()
                .find(|&&dev| s.port_of(dev, 0).gid == remote.gid)
                .and_then(|&dev| s.qp_ids.get(&(dev, remote.qp_num)).copied())
                .filter(|id| s.qps[id].psn == remote.psn);
            let Some(remote_id) = remote_id else {
                return Err(VerbsError::new(
                    "ibv_modify_qp(RTR)",
                    format!("no QP {} at the given GID/PSN", remote.qp_num),
                    "the peer's QP info (qp_num, psn, gid) is stale or wrong",
                ));
            };
            remote_id
        };
        self.transition(QpState::Init, QpState::Rtr, "ibv_modify_qp(RTR)")?;
        let mut s = self.fabric.lock();
        let qp = s.qps.get_mut(&self.qpn).expect("QP alive");
        qp.remote = Some(remote_id);
        // As a NIC does: never above the port's own.
        qp.path_mtu = mtu.min(self.endpoint.mtu);
        Ok(())
    }

    fn to_rts(&mut self) -> Result<(), VerbsError> {
        self.transition(QpState::Rtr, QpState::Rts, "ibv_modify_qp(RTS)")
    }

    fn post_send(&mut self, chain: &[WorkRequest]) -> Result<(), PostError> {
        let mut s = self.fabric.lock();
        let tick = s.tick;
        let refusal = s.options.faults.post_refusal_per_mille;
        let (slow_dev, slow_ticks) = (
            s.options.faults.slow_device.clone(),
            s.options.faults.slow_ticks,
        );
        let remote_dev = {
            let qp = &s.qps[&self.qpn];
            qp.remote.and_then(|r| s.qps.get(&r)).map(|r| r.dev)
        };
        let slow = match (&slow_dev, remote_dev) {
            (Some(name), Some(dev)) => s.devices.get(&dev).is_some_and(|d| &d.name == name),
            _ => false,
        };
        let mut posted = 0;
        for (index, wr) in chain.iter().enumerate() {
            let qp = &s.qps[&self.qpn];
            let refuse = if qp.state != QpState::Rts {
                Some(VerbsError::new(
                    "ibv_post_send",
                    format!("QP {} is {:?}", self.qpn, qp.state),
                    "the QP is not in RTS (never connected, or in error after a failed request)",
                ))
            } else if qp.queued >= qp.caps.max_send_wr as usize {
                Some(VerbsError::new(
                    "ibv_post_send",
                    "ENOMEM: send queue full",
                    "more outstanding requests than max_send_wr",
                ))
            } else if wr.sges.len() > qp.caps.max_send_sge as usize {
                Some(VerbsError::new(
                    "ibv_post_send",
                    "EINVAL: too many scatter entries",
                    "more scatter entries than max_send_sge",
                ))
            } else if s.rng.roll(refusal) {
                Some(VerbsError::new(
                    "ibv_post_send",
                    "ENOMEM: send queue full (injected)",
                    "more outstanding requests than max_send_wr",
                ))
            } else {
                None
            };
            if let Some(error) = refuse {
                if posted > 0 {
                    s.counters.posts += 1;
                }
                return Err(PostError { index, error });
            }
            let delay = if slow { slow_ticks } else { 0 };
            let qp = s.qps.get_mut(&self.qpn).expect("QP alive");
            // Run no earlier than the next tick, and never before an
            // earlier request of this QP (RC executes in order).
            let exec_at = (tick + 1 + delay).max(qp.last_exec);
            qp.last_exec = exec_at;
            qp.queued += 1;
            s.queue.push_back(Queued {
                qpn: self.qpn,
                exec_at,
                wr: wr.clone(),
            });
            posted += 1;
        }
        if posted > 0 {
            s.counters.posts += 1;
        }
        Ok(())
    }
}

impl Drop for FabricQp {
    fn drop(&mut self) {
        let mut s = self.fabric.lock();
        if let Some(slot) = s.qps.remove(&self.qpn) {
            s.qp_ids.remove(&(slot.dev, slot.num));
        }
        let qpn = self.qpn;
        s.queue.retain(|q| q.qpn != qpn);
    }
}

/// The fabric's logical clock: one tick is one microsecond, so a reader's
/// timeout in tests is a number of polls, never wall-clock time.
#[derive(Clone, Debug)]
pub struct FabricClock {
    fabric: Fabric,
}

impl super::reader::Clock for FabricClock {
    fn now_us(&self) -> u64 {
        self.fabric.tick()
    }
}
