//! The verbs interface over libibverbs (rdma-sys), behind the `ibverbs`
//! cargo feature.
//!
//! Deliberately thin: each method is one or two verbs calls plus the
//! translation of a failure into a [`VerbsError`] naming the call and its
//! usual cause. Everything with logic (channels, batching, matching,
//! timeouts, registration rules) lives above the trait and is tested on the
//! software fabric. Nothing here has run against a real NIC: on the build
//! machines `ibv_get_device_list` returns NULL (no InfiniBand in the kernel),
//! which [`IbvProvider::devices`] reports as a clear error.

use super::verbs::{
    Access, Completion, CompletionQueue, DeviceInfo, MemoryRegion, MrKeys, Opcode, PortInfo,
    PostError, QpCaps, QpEndpoint, QpState, QueuePair, Verbs, VerbsError, VerbsProvider, WcStatus,
    WorkRequest,
};
use rdma_sys as sys;
use std::ffi::CStr;
use std::os::raw::{c_int, c_void};
use std::ptr;
use std::rc::Rc;

/// Most outstanding READs asked per QP (the usual HCA limit).
const MAX_RD_ATOMIC: i32 = 16;

/// The errno of the last failed call, as text.
fn os_error() -> String {
    std::io::Error::last_os_error().to_string()
}

/// Lists and opens the host's RDMA devices.
#[derive(Clone, Copy, Debug, Default)]
pub struct IbvProvider;

/// The device list, freed on drop.
struct DeviceList {
    list: *mut *mut sys::ibv_device,
    len: usize,
}

impl DeviceList {
    fn get() -> Result<DeviceList, VerbsError> {
        let mut n: c_int = 0;
        // SAFETY: plain FFI call; the result is checked for NULL.
        let list = unsafe { sys::ibv_get_device_list(&mut n) };
        if list.is_null() {
            // Where the kernel has no RDMA support this is NULL (errno
            // ENOSYS), not an empty list.
            return Err(VerbsError::new(
                "ibv_get_device_list",
                format!("returned NULL ({})", os_error()),
                "no RDMA device or no RDMA support in this kernel: check `ibv_devices`, rdma-core and the NIC driver",
            ));
        }
        Ok(DeviceList {
            list,
            len: n.max(0) as usize,
        })
    }

    fn iter(&self) -> impl Iterator<Item = *mut sys::ibv_device> + '_ {
        // SAFETY: the list holds `len` valid device pointers until freed.
        (0..self.len).map(move |i| unsafe { *self.list.add(i) })
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: obtained from ibv_get_device_list, freed once.
        unsafe { sys::ibv_free_device_list(self.list) };
    }
}

fn device_name(dev: *mut sys::ibv_device) -> String {
    // SAFETY: a listed device has a NUL-terminated name.
    unsafe { CStr::from_ptr(sys::ibv_get_device_name(dev)) }
        .to_string_lossy()
        .into_owned()
}

/// An opened device context and its protection domain, shared by every MR,
/// CQ and QP made from it so it is closed only after all of them.
struct Context {
    ctx: *mut sys::ibv_context,
    pd: *mut sys::ibv_pd,
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: both were created by open() and every user holds an Rc,
        // so nothing uses them any more.
        unsafe {
            sys::ibv_dealloc_pd(self.pd);
            sys::ibv_close_device(self.ctx);
        }
    }
}

fn query_port(ctx: *mut sys::ibv_context, port: u8) -> Result<sys::ibv_port_attr, VerbsError> {
    // SAFETY: a zeroed ibv_port_attr is a valid out-parameter.
    let mut attr: sys::ibv_port_attr = unsafe { std::mem::zeroed() };
    // SAFETY: ctx is an open context.
    let rc = unsafe { sys::___ibv_query_port(&mut *ctx, port, &mut attr) };
    if rc != 0 {
        return Err(VerbsError::new(
            "ibv_query_port",
            format!("port {port}: {}", std::io::Error::from_raw_os_error(rc)),
            "ib_port names no port of this device (ports start at 1)",
        ));
    }
    Ok(attr)
}

impl VerbsProvider for IbvProvider {
    type Device = IbvDevice;

    fn devices(&self, port: u8) -> Result<Vec<DeviceInfo>, VerbsError> {
        let list = DeviceList::get()?;
        let mut out = Vec::new();
        for dev in list.iter() {
            let name = device_name(dev);
            // SAFETY: dev is a listed device.
            let ctx = unsafe { sys::ibv_open_device(dev) };
            let active = !ctx.is_null()
                && query_port(ctx, port)
                    .is_ok_and(|a| a.state == sys::ibv_port_state::IBV_PORT_ACTIVE);
            if !ctx.is_null() {
                // SAFETY: opened just above.
                unsafe { sys::ibv_close_device(ctx) };
            }
            out.push(DeviceInfo { name, active });
        }
        Ok(out)
    }

    fn open(&self, name: Option<&str>, port: u8, gid_index: u8) -> Result<IbvDevice, VerbsError> {
        let list = DeviceList::get()?;
        if list.len == 0 {
            return Err(VerbsError::new(
                "ibv_get_device_list",
                "no devices",
                "no RDMA NIC is visible: check `ibv_devices` and the NIC driver",
            ));
        }
        let mut chosen = None;
        for dev in list.iter() {
            let dev_name = device_name(dev);
            if name.is_some_and(|n| n != dev_name) {
                continue;
            }
            // SAFETY: dev is a listed device.
            let ctx = unsafe { sys::ibv_open_device(dev) };
            if ctx.is_null() {
                if name.is_some() {
                    return Err(VerbsError::new(
                        "ibv_open_device",
                        format!("{dev_name}: {}", os_error()),
                        "no permission on /dev/infiniband/uverbs* or the provider library is missing",
                    ));
                }
                continue;
            }
            match query_port(ctx, port) {
                Ok(attr) if attr.state == sys::ibv_port_state::IBV_PORT_ACTIVE => {
                    chosen = Some((ctx, dev_name, attr));
                    break;
                }
                Ok(_) if name.is_none() => {
                    // SAFETY: opened above, not kept.
                    unsafe { sys::ibv_close_device(ctx) };
                }
                Ok(_) => {
                    // SAFETY: opened above, not kept.
                    unsafe { sys::ibv_close_device(ctx) };
                    return Err(VerbsError::new(
                        "ibv_query_port",
                        format!("port {port} of {dev_name} is not ACTIVE"),
                        "the link is down or ib_port is wrong: check `ibv_devinfo`",
                    ));
                }
                Err(e) => {
                    // SAFETY: opened above, not kept.
                    unsafe { sys::ibv_close_device(ctx) };
                    return Err(e);
                }
            }
        }
        let Some((ctx, dev_name, attr)) = chosen else {
            return Err(VerbsError::new(
                "ibv_open_device",
                match name {
                    Some(n) => format!("no device named {n}"),
                    None => format!("no device with port {port} ACTIVE"),
                },
                "device_name / device_names do not match `ibv_devices`, or every link is down",
            ));
        };
        // SAFETY: a zeroed ibv_gid is a valid out-parameter; ctx is open.
        let mut gid: sys::ibv_gid = unsafe { std::mem::zeroed() };
        let rc = unsafe { sys::ibv_query_gid(ctx, port, c_int::from(gid_index), &mut gid) };
        if rc != 0 {
            // SAFETY: opened above, not kept.
            unsafe { sys::ibv_close_device(ctx) };
            return Err(VerbsError::new(
                "ibv_query_gid",
                format!("{dev_name} port {port} index {gid_index}: {}", os_error()),
                "gid_index is outside the GID table: list it with `show_gids` (RoCEv2 is often 3)",
            ));
        }
        // READ depth the device allows per QP: a chain of READs is pipelined
        // up to this many outstanding, and asking for more fails RTR/RTS.
        // SAFETY: a zeroed ibv_device_attr is a valid out-parameter; ctx is open.
        let mut dev_attr: sys::ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { sys::ibv_query_device(ctx, &mut dev_attr) } != 0 {
            let detail = os_error();
            // SAFETY: opened above, not kept.
            unsafe { sys::ibv_close_device(ctx) };
            return Err(VerbsError::new(
                "ibv_query_device",
                format!("{dev_name}: {detail}"),
                "the driver is unhealthy: check `ibv_devinfo -v`",
            ));
        }
        let rd_atomic = dev_attr
            .max_qp_rd_atom
            .min(dev_attr.max_qp_init_rd_atom)
            .clamp(1, MAX_RD_ATOMIC) as u8;
        // SAFETY: ctx is open.
        let pd = unsafe { sys::ibv_alloc_pd(ctx) };
        if pd.is_null() {
            let detail = os_error();
            // SAFETY: opened above, not kept.
            unsafe { sys::ibv_close_device(ctx) };
            return Err(VerbsError::new(
                "ibv_alloc_pd",
                format!("{dev_name}: {detail}"),
                "the device ran out of resources or the driver is unhealthy",
            ));
        }
        Ok(IbvDevice {
            ctx: Rc::new(Context { ctx, pd }),
            name: dev_name,
            rd_atomic,
            port: PortInfo {
                port,
                lid: attr.lid,
                // SAFETY: every bit pattern of the union is a valid [u8; 16].
                gid: unsafe { gid.raw },
                gid_index,
                active_mtu: attr.active_mtu as u8,
            },
        })
    }
}

/// An opened RDMA device with its protection domain.
pub struct IbvDevice {
    ctx: Rc<Context>,
    name: String,
    /// Outstanding READs per QP, as the device allows (at most 16).
    rd_atomic: u8,
    port: PortInfo,
}

impl std::fmt::Debug for IbvDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IbvDevice")
            .field("name", &self.name)
            .finish()
    }
}

fn mr_result(
    mr: *mut sys::ibv_mr,
    call: &'static str,
    ctx: &Rc<Context>,
) -> Result<IbvMr, VerbsError> {
    if mr.is_null() {
        return Err(VerbsError::new(
            call,
            os_error(),
            "memlock limit too low (`ulimit -l unlimited`), memory not mapped, or access flags the device refuses",
        ));
    }
    Ok(IbvMr {
        mr,
        _ctx: Rc::clone(ctx),
    })
}

impl Verbs for IbvDevice {
    type Mr = IbvMr;
    type Cq = IbvCq;
    type Qp = IbvQp;

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
    ) -> Result<IbvMr, VerbsError> {
        let mr = sys::ibv_reg_mr(self.ctx.pd, addr as *mut c_void, len, access.0 as c_int);
        mr_result(mr, "ibv_reg_mr", &self.ctx)
    }

    fn register_dmabuf(
        &self,
        fd: i32,
        offset: u64,
        len: usize,
        iova: u64,
        access: Access,
    ) -> Result<IbvMr, VerbsError> {
        // SAFETY: the kernel validates fd, offset and length against the
        // dmabuf; the PD is alive.
        let mr = unsafe {
            sys::ibv_reg_dmabuf_mr(self.ctx.pd, offset, len, iova, fd, access.0 as c_int)
        };
        mr_result(mr, "ibv_reg_dmabuf_mr", &self.ctx)
    }

    fn create_cq(&self, entries: u32) -> Result<IbvCq, VerbsError> {
        // SAFETY: the context is open; no completion channel is used (polled).
        let cq = unsafe {
            sys::ibv_create_cq(
                self.ctx.ctx,
                entries as c_int,
                ptr::null_mut(),
                ptr::null_mut(),
                0,
            )
        };
        if cq.is_null() {
            return Err(VerbsError::new(
                "ibv_create_cq",
                format!("{entries} entries: {}", os_error()),
                "more CQ entries than the device allows, or memlock too low",
            ));
        }
        Ok(IbvCq {
            cq,
            _ctx: Rc::clone(&self.ctx),
        })
    }

    fn create_qp(&self, cq: &IbvCq, caps: QpCaps) -> Result<IbvQp, VerbsError> {
        // SAFETY: zeroed init attrs are valid; the fields used are set below.
        let mut attr: sys::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        attr.send_cq = cq.cq;
        attr.recv_cq = cq.cq;
        attr.qp_type = sys::ibv_qp_type::IBV_QPT_RC;
        attr.sq_sig_all = 0; // selective signalling
        attr.cap.max_send_wr = caps.max_send_wr;
        attr.cap.max_send_sge = caps.max_send_sge;
        attr.cap.max_recv_wr = 1;
        attr.cap.max_recv_sge = 1;
        // SAFETY: the PD and CQ are alive.
        let qp = unsafe { sys::ibv_create_qp(self.ctx.pd, &mut attr) };
        if qp.is_null() {
            return Err(VerbsError::new(
                "ibv_create_qp",
                format!("max_send_wr {}: {}", caps.max_send_wr, os_error()),
                "queue sizes above the device limits (`ibv_devinfo -v`) or memlock too low",
            ));
        }
        // A random initial PSN, as the verbs examples do, so a stale packet
        // of an earlier QP with the same number is not accepted.
        let psn = (crate::cluster::random_u64() & 0x00ff_ffff) as u32;
        Ok(IbvQp {
            qp,
            psn,
            port: self.port,
            rd_atomic: self.rd_atomic,
            state: QpState::Reset,
            _ctx: Rc::clone(&self.ctx),
        })
    }
}

/// A registered memory region.
pub struct IbvMr {
    mr: *mut sys::ibv_mr,
    _ctx: Rc<Context>,
}

impl MemoryRegion for IbvMr {
    fn keys(&self) -> MrKeys {
        // SAFETY: the MR is registered until drop.
        let mr = unsafe { &*self.mr };
        MrKeys {
            addr: mr.addr as u64,
            len: mr.length,
            lkey: mr.lkey,
            rkey: mr.rkey,
        }
    }
}

impl Drop for IbvMr {
    fn drop(&mut self) {
        // SAFETY: registered by us, deregistered once.
        let rc = unsafe { sys::ibv_dereg_mr(self.mr) };
        if rc != 0 {
            tracing::error!(
                "ibv_dereg_mr failed: {}; the memory stays pinned",
                std::io::Error::from_raw_os_error(rc)
            );
        }
    }
}

/// A completion queue.
pub struct IbvCq {
    cq: *mut sys::ibv_cq,
    _ctx: Rc<Context>,
}

impl CompletionQueue for IbvCq {
    fn poll(&self, out: &mut Vec<Completion>, max: usize) -> Result<usize, VerbsError> {
        const BATCH: usize = 32;
        // SAFETY: a zeroed ibv_wc is a valid out-parameter.
        let mut wcs: [sys::ibv_wc; BATCH] = unsafe { std::mem::zeroed() };
        let want = max.min(BATCH) as c_int;
        // SAFETY: the CQ is alive and wcs has room for `want` entries.
        let n = unsafe { sys::ibv_poll_cq(&mut *self.cq, want, &mut wcs[0]) };
        if n < 0 {
            return Err(VerbsError::new(
                "ibv_poll_cq",
                format!("returned {n}"),
                "the CQ overran (more outstanding signalled requests than entries) or the device failed",
            ));
        }
        for wc in &wcs[..n as usize] {
            out.push(Completion {
                wr_id: wc.wr_id,
                status: WcStatus(wc.status),
                byte_len: wc.byte_len,
            });
        }
        Ok(n as usize)
    }
}

impl Drop for IbvCq {
    fn drop(&mut self) {
        // SAFETY: created by us; every QP using it is destroyed first
        // (channel field order).
        let rc = unsafe { sys::ibv_destroy_cq(self.cq) };
        if rc != 0 {
            tracing::error!(
                "ibv_destroy_cq failed: {}",
                std::io::Error::from_raw_os_error(rc)
            );
        }
    }
}

/// A reliable-connected queue pair.
pub struct IbvQp {
    qp: *mut sys::ibv_qp,
    psn: u32,
    port: PortInfo,
    rd_atomic: u8,
    state: QpState,
    _ctx: Rc<Context>,
}

impl IbvQp {
    fn modify(
        &mut self,
        attr: &mut sys::ibv_qp_attr,
        mask: sys::ibv_qp_attr_mask,
        call: &'static str,
        cause: &'static str,
        to: QpState,
    ) -> Result<(), VerbsError> {
        // SAFETY: the QP is alive; attr holds every field `mask` names.
        let rc = unsafe { sys::ibv_modify_qp(self.qp, attr, mask.0 as c_int) };
        if rc != 0 {
            self.state = QpState::Error;
            return Err(VerbsError::new(
                call,
                std::io::Error::from_raw_os_error(rc).to_string(),
                cause,
            ));
        }
        self.state = to;
        Ok(())
    }
}

impl QueuePair for IbvQp {
    fn endpoint(&self) -> QpEndpoint {
        QpEndpoint {
            // SAFETY: the QP is alive.
            qp_num: unsafe { (*self.qp).qp_num },
            psn: self.psn,
            lid: self.port.lid,
            gid: self.port.gid,
            mtu: self.port.active_mtu,
        }
    }

    fn state(&self) -> QpState {
        self.state
    }

    fn to_init(&mut self, access: Access) -> Result<(), VerbsError> {
        use sys::ibv_qp_attr_mask as m;
        // SAFETY: zeroed attrs are valid.
        let mut attr: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = sys::ibv_qp_state::IBV_QPS_INIT;
        attr.pkey_index = 0;
        attr.port_num = self.port.port;
        attr.qp_access_flags = access.0;
        self.modify(
            &mut attr,
            m::IBV_QP_STATE | m::IBV_QP_PKEY_INDEX | m::IBV_QP_PORT | m::IBV_QP_ACCESS_FLAGS,
            "ibv_modify_qp(INIT)",
            "ib_port is wrong or the QP is not in RESET",
            QpState::Init,
        )
    }

    fn to_rtr(&mut self, remote: &QpEndpoint, mtu: u8) -> Result<(), VerbsError> {
        use sys::ibv_qp_attr_mask as m;
        // SAFETY: zeroed attrs are valid.
        let mut attr: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = sys::ibv_qp_state::IBV_QPS_RTR;
        attr.path_mtu = u32::from(mtu.min(self.port.active_mtu));
        attr.dest_qp_num = remote.qp_num;
        attr.rq_psn = remote.psn;
        // Outstanding READs this QP serves for its peer (the device's limit,
        // at most 16): what keeps the peer's chain of READs pipelined.
        attr.max_dest_rd_atomic = self.rd_atomic;
        attr.min_rnr_timer = 12;
        attr.ah_attr.dlid = remote.lid;
        attr.ah_attr.port_num = self.port.port;
        // RoCE routes by GID: always send a GRH with the peer's GID.
        attr.ah_attr.is_global = 1;
        attr.ah_attr.grh.dgid.raw = remote.gid;
        attr.ah_attr.grh.hop_limit = 64;
        attr.ah_attr.grh.sgid_index = self.port.gid_index;
        self.modify(
            &mut attr,
            m::IBV_QP_STATE
                | m::IBV_QP_AV
                | m::IBV_QP_PATH_MTU
                | m::IBV_QP_DEST_QPN
                | m::IBV_QP_RQ_PSN
                | m::IBV_QP_MAX_DEST_RD_ATOMIC
                | m::IBV_QP_MIN_RNR_TIMER,
            "ibv_modify_qp(RTR)",
            "the peer's QP info or our gid_index is wrong (RoCEv2 needs the GID index of the RoCEv2 entry, see `show_gids`)",
            QpState::Rtr,
        )
    }

    fn to_rts(&mut self) -> Result<(), VerbsError> {
        use sys::ibv_qp_attr_mask as m;
        // SAFETY: zeroed attrs are valid.
        let mut attr: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = sys::ibv_qp_state::IBV_QPS_RTS;
        attr.sq_psn = self.psn;
        attr.timeout = 14; // 4.096 us * 2^14 ~ 67 ms per retry
        attr.retry_cnt = 7;
        attr.rnr_retry = 7;
        attr.max_rd_atomic = self.rd_atomic;
        self.modify(
            &mut attr,
            m::IBV_QP_STATE
                | m::IBV_QP_SQ_PSN
                | m::IBV_QP_TIMEOUT
                | m::IBV_QP_RETRY_CNT
                | m::IBV_QP_RNR_RETRY
                | m::IBV_QP_MAX_QP_RD_ATOMIC,
            "ibv_modify_qp(RTS)",
            "the device refused the timeout/retry attributes or the QP is not in RTR",
            QpState::Rts,
        )
    }

    fn post_send(&mut self, chain: &[WorkRequest]) -> Result<(), PostError> {
        if chain.is_empty() {
            return Ok(());
        }
        let mut sges: Vec<sys::ibv_sge> =
            Vec::with_capacity(chain.iter().map(|w| w.sges.len()).sum());
        for wr in chain {
            for s in &wr.sges {
                sges.push(sys::ibv_sge {
                    addr: s.addr,
                    length: s.len,
                    lkey: s.lkey,
                });
            }
        }
        // SAFETY: a zeroed ibv_send_wr is valid (null pointers, zero flags).
        let mut wrs: Vec<sys::ibv_send_wr> = (0..chain.len())
            .map(|_| unsafe { std::mem::zeroed() })
            .collect();
        let mut sge_at = 0;
        for (i, wr) in chain.iter().enumerate() {
            let w = &mut wrs[i];
            w.wr_id = wr.wr_id;
            w.sg_list = if wr.sges.is_empty() {
                ptr::null_mut()
            } else {
                // SAFETY: in bounds; `sges` is not resized after this.
                unsafe { sges.as_mut_ptr().add(sge_at) }
            };
            w.num_sge = wr.sges.len() as c_int;
            sge_at += wr.sges.len();
            w.opcode = match wr.opcode {
                Opcode::Read => sys::ibv_wr_opcode::IBV_WR_RDMA_READ,
                Opcode::Write => sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE,
            };
            w.send_flags = if wr.signaled {
                sys::ibv_send_flags::IBV_SEND_SIGNALED.0
            } else {
                0
            };
            w.wr.rdma = sys::rdma_t {
                remote_addr: wr.remote_addr,
                rkey: wr.rkey,
            };
        }
        // Link the chain: one doorbell for the whole batch.
        for i in 0..wrs.len() - 1 {
            let next: *mut sys::ibv_send_wr = &mut wrs[i + 1];
            wrs[i].next = next;
        }
        let mut bad: *mut sys::ibv_send_wr = ptr::null_mut();
        let first: *mut sys::ibv_send_wr = &mut wrs[0];
        // SAFETY: the QP is alive; the chain and its scatter lists live
        // until the call returns (the NIC copies WQEs at post time).
        let rc = unsafe { sys::ibv_post_send(&mut *self.qp, &mut *first, &mut bad) };
        if rc == 0 {
            return Ok(());
        }
        let index = if bad.is_null() {
            0
        } else {
            // SAFETY: bad points into wrs.
            unsafe { bad.offset_from(first) }.max(0) as usize
        };
        Err(PostError {
            index,
            error: VerbsError::new(
                "ibv_post_send",
                std::io::Error::from_raw_os_error(rc).to_string(),
                "send queue full (more outstanding READs than max_send_wr) or the QP left RTS after an error",
            ),
        })
    }
}

impl Drop for IbvQp {
    fn drop(&mut self) {
        // SAFETY: created by us; destroying it stops its outstanding DMA.
        let rc = unsafe { sys::ibv_destroy_qp(self.qp) };
        if rc != 0 {
            // What the timeout and halt paths rely on did not happen: say
            // so loudly, since READs of this QP may still land.
            tracing::error!(
                "ibv_destroy_qp failed: {}; READs posted on it may still complete",
                std::io::Error::from_raw_os_error(rc)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The feature compiles and links against libibverbs, and the device
    /// listing runs. On machines without RDMA support the answer is the
    /// documented "no device" error; on a host with a NIC, a device list.
    #[test]
    fn device_listing_links_and_reports_no_device_clearly() {
        match IbvProvider.devices(1) {
            Ok(list) => {
                for d in list {
                    assert!(!d.name.is_empty());
                }
            }
            Err(e) => {
                assert_eq!(e.call, "ibv_get_device_list", "{e}");
                assert!(e.to_string().contains("ibv_devices"), "{e}");
            }
        }
        if let Err(e) = IbvProvider.open(Some("no_such_device_0"), 1, 3) {
            assert!(
                e.call == "ibv_get_device_list" || e.call == "ibv_open_device",
                "{e}"
            );
        } else {
            panic!("a device that does not exist cannot open");
        }
    }
}
