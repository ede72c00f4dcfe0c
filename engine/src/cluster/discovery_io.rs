//! Runs discovery for one node: the sans-IO core of `crate::discovery` plus
//! sockets, clocks and threads.
//!
//! Two control-plane threads (nothing here is on the data path):
//! - **meta server**: serves this host's discovery service on
//!   `meta_bind_host:<port of discovery_addr's head>`. Several ranks of one
//!   host share that port: the first binds it; the others keep retrying every
//!   heartbeat and take over when the binder dies (its registry is soft state
//!   and refills within one heartbeat).
//! - **agent**: drives this node's [`MemberAgent`]: executes its actions
//!   (each request is one short blocking TCP exchange with timeouts, framed
//!   with `crate::wire`), feeds replies back, and reports membership changes.

use crate::config::{Config, HostPort};
use crate::discovery::{
    Action, AgentConfig, Departure, LogLevel, Member, MemberAgent, Registry, RegistryVersion,
    Reply, Request, Service,
};
use crate::wire::{
    self, Deregister, Endpoint, ErrorReply, Heartbeat, Kind, MemberInfo, MembersOutcome,
    MembersReply, MembersRequest, Register, WireError,
};
use rkyv::util::AlignedVec;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Connect timeout of one discovery request.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Read/write timeout of one discovery request.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest sleep of a discovery thread between checks of the stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Most discovery connections served at once by one meta server.
const MAX_META_CONNECTIONS: usize = 64;

/// Called with (membership epoch, live members) after every change.
pub type MembershipCallback = Box<dyn Fn(u64, &[Member]) + Send>;

struct Shared {
    stop: Arc<AtomicBool>,
    members: Mutex<Vec<Member>>,
    epoch: AtomicU64,
    serving_meta: AtomicBool,
}

/// Discovery of one node, running.
pub struct DiscoveryRuntime {
    shared: Arc<Shared>,
    agent: Option<JoinHandle<()>>,
    server: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DiscoveryRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoveryRuntime")
            .field("members", &self.member_count())
            .finish()
    }
}

/// Where the embedded discovery master listens: `meta_bind_host` (an IPv4
/// or IPv6 address, or a name, which is resolved here, its first IPv4
/// address preferred as the discovery head is usually given as one) on
/// `port`.
fn meta_bind_addr(host: &str, port: u16) -> Result<SocketAddr, String> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("meta_bind_host {host:?}: {e}"))?;
    super::address::preferred_bind_addr(addrs)
        .ok_or_else(|| format!("meta_bind_host {host:?}: the name has no address"))
}

impl DiscoveryRuntime {
    /// Starts discovery for `me`. `on_change` runs on the agent thread after
    /// every membership change.
    pub fn start(
        config: &Config,
        me: Member,
        on_change: MembershipCallback,
    ) -> Result<Self, String> {
        let agent_config = AgentConfig::from_config(config);
        let mut agent = MemberAgent::new(agent_config, me).map_err(|e| e.to_string())?;
        let shared = Arc::new(Shared {
            stop: Arc::new(AtomicBool::new(false)),
            members: Mutex::new(Vec::new()),
            epoch: AtomicU64::new(0),
            serving_meta: AtomicBool::new(false),
        });
        let meta_port = config.discovery_head().port;
        let bind = meta_bind_addr(&config.meta_bind_host, meta_port)?;
        // Written as seed 000 shows the line (a Python list), so operators'
        // greps for it match.
        let seeds: Vec<String> = config
            .discovery_addr
            .iter()
            .map(|h| format!("'{}:{}'", h.host, h.port))
            .collect();
        tracing::info!(
            "This host runs an embedded PeerCache discovery master on {bind} (seeds=[{}], max_masters={}).",
            seeds.join(", "),
            config.max_masters
        );
        let ttl_ms = config.member_ttl().as_millis() as u64;
        let retry = config.heartbeat_interval();
        let server_shared = Arc::clone(&shared);
        let server = std::thread::Builder::new()
            .name("peercache-meta".into())
            .spawn(move || meta_server(bind, ttl_ms, retry, server_shared))
            .map_err(|e| format!("cannot start the discovery server thread: {e}"))?;
        let agent_shared = Arc::clone(&shared);
        let started = Instant::now();
        let first = agent.start(0);
        let agent_thread = std::thread::Builder::new()
            .name("peercache-discovery".into())
            .spawn(move || agent_loop(&mut agent, started, first, &agent_shared, &on_change))
            .map_err(|e| format!("cannot start the discovery agent thread: {e}"))?;
        Ok(Self {
            shared,
            agent: Some(agent_thread),
            server: Some(server),
        })
    }

    /// Live members as last seen (this node included once it joined).
    pub fn members(&self) -> Vec<Member> {
        self.shared
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Number of live members.
    pub fn member_count(&self) -> usize {
        self.shared
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Whether this process currently serves the host's meta port.
    pub fn serving_meta(&self) -> bool {
        self.shared.serving_meta.load(Ordering::Relaxed)
    }

    /// Deregisters from the masters (bounded by the request timeouts) and
    /// stops both threads. Idempotent.
    pub fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for handle in [self.agent.take(), self.server.take()]
            .into_iter()
            .flatten()
        {
            let _ = handle.join();
        }
    }
}

impl Drop for DiscoveryRuntime {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Runs a dedicated discovery host (`peercache-meta`): this host's
/// discovery service on `bind`, with no node of its own, until `stop` is set.
/// Members prune after `member_ttl`; `retry` is how often to retry binding
/// while another process holds the port.
pub fn run_standalone_meta(
    bind: SocketAddr,
    member_ttl: Duration,
    retry: Duration,
    stop: Arc<AtomicBool>,
) {
    let shared = Arc::new(Shared {
        stop,
        members: Mutex::new(Vec::new()),
        epoch: AtomicU64::new(0),
        serving_meta: AtomicBool::new(false),
    });
    meta_server(bind, member_ttl.as_millis() as u64, retry, shared);
}

fn now_ms(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

fn agent_loop(
    agent: &mut MemberAgent,
    started: Instant,
    first: Vec<Action>,
    shared: &Shared,
    on_change: &MembershipCallback,
) {
    let mut actions = first;
    loop {
        while !actions.is_empty() {
            let mut next = Vec::new();
            for action in actions {
                next.extend(execute(agent, action, started, shared, on_change));
            }
            actions = next;
        }
        if shared.stop.load(Ordering::SeqCst) {
            // Clean shutdown: deregister from every master, then stop.
            let mut actions = agent.shutdown(now_ms(started));
            while !actions.is_empty() {
                let mut next = Vec::new();
                for action in actions {
                    next.extend(execute(agent, action, started, shared, on_change));
                }
                actions = next;
            }
            return;
        }
        let now = now_ms(started);
        let wait = agent
            .next_tick_ms()
            .map_or(POLL_INTERVAL.as_millis() as u64, |t| t.saturating_sub(now));
        std::thread::sleep(Duration::from_millis(
            wait.min(POLL_INTERVAL.as_millis() as u64),
        ));
        actions = agent.tick(now_ms(started));
    }
}

fn execute(
    agent: &mut MemberAgent,
    action: Action,
    started: Instant,
    shared: &Shared,
    on_change: &MembershipCallback,
) -> Vec<Action> {
    match action {
        Action::Send { to, request } => match request_once(&to, &request) {
            Ok(reply) => agent.on_reply(&to, reply, now_ms(started)),
            Err(e) => {
                tracing::debug!("discovery request to {}:{} failed: {e}", to.host, to.port);
                agent.on_unreachable(&to, now_ms(started))
            }
        },
        Action::Log { level, message } => {
            match level {
                LogLevel::Debug => tracing::debug!("{message}"),
                LogLevel::Info => tracing::info!("{message}"),
                LogLevel::Warn => tracing::warn!("{message}"),
            }
            Vec::new()
        }
        Action::MembershipChanged { epoch, .. } => {
            let members = agent.live_members().to_vec();
            *shared.members.lock().unwrap_or_else(|p| p.into_inner()) = members.clone();
            shared.epoch.store(epoch, Ordering::SeqCst);
            on_change(epoch, &members);
            Vec::new()
        }
        Action::MastersChanged { masters } => {
            let list: Vec<String> = masters
                .iter()
                .map(|m| format!("{}:{}", m.host, m.port))
                .collect();
            tracing::info!("discovery masters: {}", list.join(", "));
            Vec::new()
        }
    }
}

/// One discovery exchange: connect, send, read the reply, close.
fn request_once(to: &HostPort, request: &Request) -> Result<Reply, String> {
    let addr = (to.host.as_str(), to.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve: {e}"))?
        .next()
        .ok_or("resolve: no address")?;
    let mut stream =
        TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut scratch = Vec::new();
    let sent = match request {
        Request::Register(m) => wire::write_frame(
            &mut stream,
            &Register { member: to_info(m) },
            1,
            &[],
            &mut scratch,
        ),
        Request::Heartbeat(m) => wire::write_frame(
            &mut stream,
            &Heartbeat { member: to_info(m) },
            1,
            &[],
            &mut scratch,
        ),
        Request::Deregister {
            node_id,
            incarnation,
        } => wire::write_frame(
            &mut stream,
            &Deregister {
                node_id: node_id.clone(),
                incarnation: *incarnation,
            },
            1,
            &[],
            &mut scratch,
        ),
        Request::Members => wire::write_frame(&mut stream, &MembersRequest, 1, &[], &mut scratch),
    };
    sent.map_err(|e| format!("send: {e}"))?;
    let mut meta = AlignedVec::new();
    let header = wire::read_frame(&mut stream, &mut meta).map_err(|e| format!("reply: {e}"))?;
    if header.kind == Kind::Error {
        // Something answered that is not a discovery service (a shard's
        // control port, say): its reason is for the operator, who would
        // otherwise only see this node waiting for a master.
        let why = wire::decode_owned::<ErrorReply>(meta.as_slice())
            .map_or_else(|e| format!("an unreadable error ({e})"), |r| r.message);
        static REFUSALS: std::sync::OnceLock<Mutex<crate::logging::RateLimiter>> =
            std::sync::OnceLock::new();
        let limiter = REFUSALS
            .get_or_init(|| Mutex::new(crate::logging::RateLimiter::new(Duration::from_secs(10))));
        let shown = limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(Instant::now());
        if shown.is_some() {
            tracing::warn!(
                "discovery request to {}:{} was refused: {why}",
                to.host,
                to.port
            );
        }
        return Err(format!("refused: {why}"));
    }
    header
        .expect_kind(Kind::MembersReply)
        .map_err(|e| e.to_string())?;
    let reply = wire::decode_owned::<MembersReply>(meta.as_slice()).map_err(|e| e.to_string())?;
    from_wire_reply(reply)
}

fn meta_server(bind: SocketAddr, ttl_ms: u64, retry: Duration, shared: Arc<Shared>) {
    let started = Instant::now();
    let service = Arc::new(Mutex::new(Service::new(Registry::new(
        super::random_u64(),
        ttl_ms,
    ))));
    let mut announced_wait = false;
    let listener = loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        match TcpListener::bind(bind) {
            Ok(l) => break l,
            Err(e) => {
                if !announced_wait {
                    tracing::info!(
                        "discovery port {bind} is served by another process on this host ({e}); will take over if it stops"
                    );
                    announced_wait = true;
                }
                sleep_unless_stopped(retry, &shared);
            }
        }
    };
    // After `listener`, so dropped (unregistered) before it closes.
    let _closed_in_children = {
        use std::os::fd::AsRawFd;
        crate::fork::close_in_children(listener.as_raw_fd(), "discovery listener")
    };
    if announced_wait {
        tracing::info!("took over the discovery port {bind}");
    }
    shared.serving_meta.store(true, Ordering::Relaxed);
    if listener.set_nonblocking(true).is_err() {
        tracing::warn!("discovery listener on {bind} cannot be made non-blocking; stopping it");
        return;
    }
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // A burst of connections past the cap (a large cluster's heartbeats, a
    // peer that connects in a loop) logs once per interval, not per refusal.
    let mut refusals = crate::logging::RateLimiter::new(Duration::from_secs(10));
    let mut last_expire = Instant::now();
    while !shared.stop.load(Ordering::SeqCst) {
        if last_expire.elapsed() >= Duration::from_millis(200) {
            let gone = service
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .expire(now_ms(started));
            for node in gone {
                tracing::info!("discovery: pruned silent member {node}");
            }
            last_expire = Instant::now();
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if active.load(Ordering::SeqCst) >= MAX_META_CONNECTIONS {
                    if let Some(suppressed) = refusals.check(Instant::now()) {
                        tracing::warn!(
                            "discovery: refusing {peer}: {MAX_META_CONNECTIONS} connections already open ({suppressed} similar refusals not logged)"
                        );
                    }
                    continue;
                }
                active.fetch_add(1, Ordering::SeqCst);
                let (service, conn_shared, conn_active) = (
                    Arc::clone(&service),
                    Arc::clone(&shared),
                    Arc::clone(&active),
                );
                let spawned = std::thread::Builder::new()
                    .name("peercache-meta-conn".into())
                    .spawn(move || {
                        if let Err(e) =
                            serve_meta_connection(stream, &service, &conn_shared, started)
                        {
                            tracing::debug!("discovery connection from {peer}: {e}");
                        }
                        conn_active.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(POLL_INTERVAL / 5)
            }
            Err(e) => {
                tracing::warn!("discovery accept on {bind}: {e}");
                std::thread::sleep(POLL_INTERVAL);
            }
        }
    }
}

fn sleep_unless_stopped(total: Duration, shared: &Shared) {
    let deadline = Instant::now() + total;
    while Instant::now() < deadline && !shared.stop.load(Ordering::SeqCst) {
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Serves the requests of one connection (normally exactly one).
fn serve_meta_connection(
    mut stream: TcpStream,
    service: &Mutex<Service>,
    shared: &Shared,
    started: Instant,
) -> Result<(), WireError> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut meta = AlignedVec::new();
    let mut scratch = Vec::new();
    loop {
        let header = match wire::read_frame(&mut stream, &mut meta) {
            Ok(h) => h,
            Err(WireError::Closed) => return Ok(()),
            Err(e) => return Err(e),
        };
        let request = match header.kind {
            Kind::Register => {
                Request::Register(from_info(wire::decode_owned::<Register>(&meta)?.member))
            }
            Kind::Heartbeat => {
                Request::Heartbeat(from_info(wire::decode_owned::<Heartbeat>(&meta)?.member))
            }
            Kind::Deregister => {
                let d = wire::decode_owned::<Deregister>(&meta)?;
                Request::Deregister {
                    node_id: d.node_id,
                    incarnation: d.incarnation,
                }
            }
            Kind::MembersRequest => Request::Members,
            other => {
                let reply = wire::ErrorReply {
                    code: wire::error_code::BAD_REQUEST,
                    message: format!("{other} is not a discovery request"),
                };
                wire::write_frame(&mut stream, &reply, header.request_id, &[], &mut scratch)?;
                return Ok(());
            }
        };
        let local_view = shared
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let reply = service.lock().unwrap_or_else(|p| p.into_inner()).handle(
            request,
            now_ms(started),
            &local_view,
        );
        wire::write_frame(
            &mut stream,
            &to_wire_reply(reply),
            header.request_id,
            &[],
            &mut scratch,
        )?;
    }
}

fn to_info(m: &Member) -> MemberInfo {
    MemberInfo {
        node_id: m.node_id.clone(),
        host: m.host.clone(),
        meta_port: m.meta_port,
        control_endpoints: m
            .control_endpoints
            .iter()
            .map(|(host, port)| Endpoint {
                host: host.clone(),
                port: *port,
            })
            .collect(),
        shard_count: u16::try_from(m.shard_count).unwrap_or(u16::MAX),
        incarnation: m.incarnation,
        pool_bytes: m.pool_bytes,
    }
}

fn from_info(m: MemberInfo) -> Member {
    Member {
        node_id: m.node_id,
        host: m.host,
        meta_port: m.meta_port,
        control_endpoints: m
            .control_endpoints
            .into_iter()
            .map(|e| (e.host, e.port))
            .collect(),
        shard_count: u32::from(m.shard_count),
        incarnation: m.incarnation,
        pool_bytes: m.pool_bytes,
    }
}

fn to_wire_reply(reply: Reply) -> MembersReply {
    let mut departures = Vec::new();
    let (outcome, version, members, reason) = match reply {
        Reply::Ack { version } => (
            MembersOutcome::Ack,
            Some(version),
            Vec::new(),
            String::new(),
        ),
        Reply::Members {
            version,
            members,
            departed,
        } => {
            departures = departed;
            (
                MembersOutcome::Members,
                Some(version),
                members,
                String::new(),
            )
        }
        Reply::Referral { members } => (MembersOutcome::Referral, None, members, String::new()),
        Reply::Rejected { reason } => (MembersOutcome::Rejected, None, Vec::new(), reason),
    };
    let version = version.unwrap_or(RegistryVersion {
        instance: 0,
        changes: 0,
    });
    MembersReply {
        outcome: outcome as u8,
        registry_instance: version.instance,
        registry_changes: version.changes,
        members: members.iter().map(to_info).collect(),
        departed: departures
            .into_iter()
            .map(|d| Deregister {
                node_id: d.node_id,
                incarnation: d.incarnation,
            })
            .collect(),
        reason,
    }
}

fn from_wire_reply(reply: MembersReply) -> Result<Reply, String> {
    let version = RegistryVersion {
        instance: reply.registry_instance,
        changes: reply.registry_changes,
    };
    let members = || reply.members.iter().cloned().map(from_info).collect();
    Ok(match MembersOutcome::from_u8(reply.outcome) {
        Some(MembersOutcome::Ack) => Reply::Ack { version },
        Some(MembersOutcome::Members) => Reply::Members {
            version,
            members: members(),
            departed: reply
                .departed
                .iter()
                .map(|d| Departure {
                    node_id: d.node_id.clone(),
                    incarnation: d.incarnation,
                })
                .collect(),
        },
        Some(MembersOutcome::Referral) => Reply::Referral { members: members() },
        Some(MembersOutcome::Rejected) => Reply::Rejected {
            reason: reply.reason,
        },
        None => return Err(format!("unknown discovery outcome {}", reply.outcome)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A discovery request to a shard's control port (a discovery_addr
    /// naming the wrong port) fails with the shard's reason, not as an
    /// unreadable reply.
    #[test]
    fn a_request_to_a_control_port_fails_with_the_shards_reason() {
        let config = crate::config::Config::from_json(
            r#"{"discovery_addr":"127.0.0.1:1","global_segment_size":"16mb","shards":1,
                "control_bind_host":"127.0.0.1","disk_enabled":false,"metrics_enabled":false,
                "prefault_pool":false}"#,
        )
        .unwrap();
        let node = crate::store::Node::start(config).unwrap();
        let shard = node.endpoints()[0];
        let to = HostPort {
            host: shard.ip().to_string(),
            port: shard.port(),
        };
        let err = request_once(&to, &Request::Members).unwrap_err();
        assert!(
            err.starts_with("refused: ") && err.contains("is a discovery request"),
            "{err}"
        );
    }

    /// The meta bind host takes what the other bind keys take: IPv4, IPv6
    /// and names (`localhost` comes from /etc/hosts; no query leaves the
    /// machine).
    #[test]
    fn meta_bind_host_takes_addresses_of_both_families_and_names() {
        let at = |host: &str| meta_bind_addr(host, 31998).unwrap().to_string();
        assert_eq!(at("127.0.0.1"), "127.0.0.1:31998");
        assert_eq!(at("0.0.0.0"), "0.0.0.0:31998");
        assert_eq!(at("::"), "[::]:31998");
        let named = meta_bind_addr("localhost", 31998).unwrap();
        assert!(named.ip().is_loopback() && named.port() == 31998, "{named}");
    }

    #[test]
    fn members_replies_keep_their_departures_on_the_wire() {
        let member = Member {
            node_id: "a".to_owned(),
            host: "10.0.0.1".to_owned(),
            meta_port: 31998,
            control_endpoints: vec![("10.0.0.1".to_owned(), 40_000)],
            shard_count: 1,
            incarnation: 3,
            pool_bytes: 4096,
        };
        let reply = Reply::Members {
            version: RegistryVersion {
                instance: 9,
                changes: 4,
            },
            members: vec![member],
            departed: vec![Departure {
                node_id: "b".to_owned(),
                incarnation: 2,
            }],
        };
        let wire_reply = to_wire_reply(reply.clone());
        assert_eq!(wire_reply.departed.len(), 1);
        assert_eq!(from_wire_reply(wire_reply), Ok(reply));
    }
}
