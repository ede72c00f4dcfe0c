//! The member side of discovery: one node's state machine that registers,
//! heartbeats, follows the masters and keeps the live member view.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use crate::config::{Config, HostPort};

use super::masters::select_masters;
use super::member::Member;
use super::membership::{diff, merge_lists, MembershipChange};
use super::registry::{Departure, RegistryVersion, MAX_MEMBERS};
use super::service::{Reply, Request};

/// Most `discovery_addr` seeds accepted (a seed list is a handful of hosts;
/// the bound keeps the per-round fan-out small).
pub const MAX_SEEDS: usize = 64;

/// Largest `max_masters` accepted (the config key's own limit).
pub const MAX_MASTERS: usize = 64;

/// Severity of a [`Action::Log`] line; the runtime maps it onto `tracing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Detail for debugging discovery itself.
    Debug,
    /// Normal cluster events (joins, leaves, master changes).
    Info,
    /// Something the operator may need to fix (nothing answers, refused).
    Warn,
}

/// Something the agent wants done. The agent never performs IO itself; the
/// runtime executes actions and feeds results back through
/// [`MemberAgent::on_reply`] and [`MemberAgent::on_unreachable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `request` to the discovery service at `to` and report the reply
    /// (or the failure, including a timeout) back to the agent.
    Send {
        /// Discovery address (`host:meta_port`).
        to: HostPort,
        /// What to send.
        request: Request,
    },
    /// Write an operator log line.
    Log {
        /// Severity.
        level: LogLevel,
        /// The line, complete.
        message: String,
    },
    /// The live view changed; the directory layer re-shards and producers
    /// re-publish. `epoch` is [`MemberAgent::membership_epoch`].
    MembershipChanged {
        /// The new membership epoch.
        epoch: u64,
        /// Number of live members now.
        members: usize,
    },
    /// The master list changed (for metrics and for logging whether this
    /// host is a master).
    MastersChanged {
        /// The new masters, in priority order.
        masters: Vec<HostPort>,
    },
}

/// Where a [`MemberAgent`] is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Created, [`MemberAgent::start`] not called yet.
    Idle,
    /// Started, no master has accepted the registration yet; retrying.
    Bootstrapping,
    /// A master accepted the registration at least once. The agent stays
    /// here through master failures (it keeps its last view and retries).
    Joined,
    /// [`MemberAgent::shutdown`] was called; every input is ignored.
    Stopped,
}

/// Settings of a [`MemberAgent`], in milliseconds (units last in names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// `discovery_addr`: the head first, then more bootstrap seeds.
    pub seeds: Vec<HostPort>,
    /// `max_masters`.
    pub max_masters: usize,
    /// `heartbeat_interval`: period of heartbeats and bootstrap retries.
    pub heartbeat_interval_ms: u64,
    /// `member_ttl`: a master prunes a member silent this long, and a member
    /// treats a master silent this long as down.
    pub member_ttl_ms: u64,
    /// Least time between two "still waiting for discovery" lines.
    pub wait_log_interval_ms: u64,
}

/// Why an [`AgentConfig`] (or the node's own record) cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid discovery settings: {0}")]
pub struct AgentConfigError(pub String);

impl AgentConfig {
    /// Default for [`AgentConfig::wait_log_interval_ms`]: one line every 10 s
    /// says the node is alive and waiting, without flooding the log.
    pub const DEFAULT_WAIT_LOG_INTERVAL_MS: u64 = 10_000;

    /// The discovery settings of a parsed `extra_config`.
    pub fn from_config(config: &Config) -> AgentConfig {
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        AgentConfig {
            seeds: config.discovery_addr.clone(),
            max_masters: config.max_masters as usize,
            heartbeat_interval_ms: ms(config.heartbeat_interval()),
            member_ttl_ms: ms(config.member_ttl()),
            wait_log_interval_ms: Self::DEFAULT_WAIT_LOG_INTERVAL_MS,
        }
    }

    /// Checks the settings; the error says what to change.
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        let err = |text: String| Err(AgentConfigError(text));
        if self.seeds.is_empty() {
            return err("discovery_addr must list at least the discovery head (host:port)".into());
        }
        if self.seeds.len() > MAX_SEEDS {
            return err(format!(
                "discovery_addr lists {} seeds; list at most {MAX_SEEDS}",
                self.seeds.len()
            ));
        }
        let distinct: BTreeSet<&HostPort> = self.seeds.iter().collect();
        if distinct.len() != self.seeds.len() {
            return err("discovery_addr lists a seed more than once; list each once".into());
        }
        if !(1..=MAX_MASTERS).contains(&self.max_masters) {
            return err(format!(
                "max_masters must be 1..={MAX_MASTERS}, got {}",
                self.max_masters
            ));
        }
        if self.heartbeat_interval_ms == 0 {
            return err("heartbeat_interval must be at least 1 ms".into());
        }
        if self.member_ttl_ms <= self.heartbeat_interval_ms {
            return err(format!(
                "member_ttl ({} ms) must exceed heartbeat_interval ({} ms); use about 3 x \
                 heartbeat_interval",
                self.member_ttl_ms, self.heartbeat_interval_ms
            ));
        }
        if self.wait_log_interval_ms == 0 {
            return err("the wait log interval must be at least 1 ms".into());
        }
        Ok(())
    }
}

/// What the agent knows about one discovery address it talks to (a master,
/// the head, a seed, or a dead host it keeps probing).
#[derive(Debug, Clone, Default)]
struct Peer {
    /// Time of the oldest request sent since the last reply; `None` when
    /// every request was answered.
    silent_since_ms: Option<u64>,
    /// Silent for `member_ttl`: excluded from master selection, probed.
    dead: bool,
    /// Last probe while dead.
    last_probe_ms: Option<u64>,
    /// Registry instance last seen, to notice a master restart.
    instance: Option<u64>,
    /// A Register/Heartbeat was acknowledged since (re)contact.
    registered: bool,
    /// Last member list pulled from this master.
    list: Option<(RegistryVersion, Vec<Member>)>,
    /// When `list` was last known to be the master's current list (pulled,
    /// or a heartbeat's ack carried its version).
    list_confirmed_ms: u64,
    /// When it (re)entered this agent's master set.
    master_since_ms: Option<u64>,
    /// A master for at least `member_ttl`: every live member has had time to
    /// heartbeat to it, so its list is complete and may also remove members.
    settled: bool,
}

/// A clean shutdown this agent learned from a master's list.
#[derive(Debug, Clone, Copy)]
struct Departed {
    /// The incarnation that left; it and older ones are out of the view.
    incarnation: u64,
    /// When the agent learned it (or learned a newer incarnation leaving).
    learned_ms: u64,
}

/// The client side of discovery for one node (one rank).
///
/// Sans-IO, in the manner of foca: inputs are method calls with the current
/// time in milliseconds, outputs are [`Action`]s. It:
/// - computes the masters with [`select_masters`] from its live view, the
///   pinned head and the hosts it found dead;
/// - registers with, and every `heartbeat_interval` heartbeats to, every
///   master, registering immediately with a newly chosen master (so a
///   promoted master is complete within one heartbeat);
/// - pulls a master's list whenever its acknowledged version differs from the
///   copy it holds, and keeps as its view the union of the masters' lists
///   (newest incarnation per node). A master counts as *settled* after being
///   a master for `member_ttl`; only settled lists can remove a member, so a
///   freshly promoted or restarted master, still filling up, never makes
///   live members flap out of the view. A *deregistration* a master reports
///   is different: it is positive news that the process left, so it removes
///   that member at once, from the union of every list the agent holds —
///   settled or not, answering or not (the leaver's own host may have been a
///   master whose service stopped with it);
/// - treats a master that has not answered for `member_ttl` as dead (the next
///   host takes its place) and probes it every `member_ttl`; the head takes
///   its first place back as soon as it answers;
/// - while no master answers, also asks every seed for members (any seed can
///   bootstrap a node) and logs at most once per `wait_log_interval_ms`;
///   it never elects itself from nothing, so a node started before the head
///   waits instead of forming a cluster of one.
///
/// Every change of the view increments [`MemberAgent::membership_epoch`] and
/// emits [`Action::MembershipChanged`] plus "member joined/left/restarted"
/// log lines.
#[derive(Debug, Clone)]
pub struct MemberAgent {
    config: AgentConfig,
    me: Member,
    phase: Phase,
    started_ms: u64,
    next_heartbeat_ms: u64,
    last_wait_log_ms: Option<u64>,
    last_reject_log_ms: Option<u64>,
    peers: BTreeMap<HostPort, Peer>,
    masters: Vec<HostPort>,
    view: Vec<Member>,
    hint: Vec<Member>,
    /// Departures reported by masters, by node id; at most [`MAX_MEMBERS`].
    /// Kept for `member_ttl`, and for as long as any list held still names
    /// the departed process (so a silent master's last list cannot bring it
    /// back once the answering masters forgot their tombstones).
    departed: BTreeMap<String, Departed>,
    epoch: u64,
}

impl MemberAgent {
    /// An idle agent for the node described by `me`.
    pub fn new(config: AgentConfig, me: Member) -> Result<MemberAgent, AgentConfigError> {
        config.validate()?;
        me.check()
            .map_err(|why| AgentConfigError(format!("this node's own record: expected {why}")))?;
        let peers = config
            .seeds
            .iter()
            .map(|seed| (seed.clone(), Peer::default()))
            .collect();
        Ok(MemberAgent {
            config,
            me,
            phase: Phase::Idle,
            started_ms: 0,
            next_heartbeat_ms: 0,
            last_wait_log_ms: None,
            last_reject_log_ms: None,
            peers,
            masters: Vec::new(),
            view: Vec::new(),
            hint: Vec::new(),
            departed: BTreeMap::new(),
            epoch: 0,
        })
    }

    /// Starts bootstrapping: registers with the head. Does nothing unless
    /// the agent is [`Phase::Idle`].
    pub fn start(&mut self, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if self.phase != Phase::Idle {
            return out;
        }
        self.phase = Phase::Bootstrapping;
        self.started_ms = now_ms;
        self.next_heartbeat_ms = now_ms.saturating_add(self.config.heartbeat_interval_ms);
        out.push(log(
            LogLevel::Info,
            format!(
                "discovery: node {} ({}) joining via head {} (seeds=[{}], max_masters={})",
                self.me.node_id,
                self.me.meta_addr(),
                self.head(),
                join(&self.config.seeds),
                self.config.max_masters
            ),
        ));
        // Masters go from none to [head]: recompute sends the Register.
        self.recompute(now_ms, &mut out);
        out
    }

    /// Advances time: declares silent masters dead, sends the heartbeat
    /// round when due, falls back to the seeds while no master answers, and
    /// probes dead hosts. Call it at [`MemberAgent::next_tick_ms`] (calling
    /// more often is harmless).
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.running() {
            return out;
        }
        let died = self.declare_dead(now_ms, &mut out);
        let settled = self.settle(now_ms);
        if died || settled {
            self.recompute(now_ms, &mut out);
        }
        let mut sent: BTreeSet<HostPort> = BTreeSet::new();
        if now_ms >= self.next_heartbeat_ms {
            self.next_heartbeat_ms = now_ms.saturating_add(self.config.heartbeat_interval_ms);
            // Judged before this round's sends: silent means the previous
            // round went unanswered.
            let no_master_answers = !self.masters.iter().any(|m| {
                self.peers
                    .get(m)
                    .is_some_and(|p| p.silent_since_ms.is_none())
            });
            for master in self.masters.clone() {
                let request = if self.peers.get(&master).is_some_and(|p| p.registered) {
                    Request::Heartbeat(self.me.clone())
                } else {
                    Request::Register(self.me.clone())
                };
                self.send(master.clone(), request, now_ms, &mut out);
                sent.insert(master);
            }
            if no_master_answers {
                for seed in self.config.seeds.clone() {
                    if sent.insert(seed.clone()) {
                        if let Some(peer) = self.peers.get_mut(&seed).filter(|p| p.dead) {
                            // Counts as this round's probe of a dead seed.
                            peer.last_probe_ms = Some(now_ms);
                        }
                        self.send(seed, Request::Members, now_ms, &mut out);
                    }
                }
                self.log_waiting(now_ms, &mut out);
            }
        }
        let ttl = self.config.member_ttl_ms;
        let due: Vec<HostPort> = self
            .peers
            .iter()
            .filter(|(addr, p)| {
                let probe_due = match p.last_probe_ms {
                    Some(t) => now_ms.saturating_sub(t) >= ttl,
                    None => true,
                };
                p.dead && probe_due && !sent.contains(*addr)
            })
            .map(|(addr, _)| addr.clone())
            .collect();
        for addr in due {
            if let Some(peer) = self.peers.get_mut(&addr) {
                peer.last_probe_ms = Some(now_ms);
            }
            self.send(addr, Request::Members, now_ms, &mut out);
        }
        out
    }

    /// Feeds the reply of the discovery service at `from` to a request this
    /// agent sent. Replies from addresses the agent no longer tracks are
    /// ignored (they answer a question nobody asks any more).
    pub fn on_reply(&mut self, from: &HostPort, reply: Reply, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.running() {
            return out;
        }
        let is_master = self.masters.contains(from);
        let Some(peer) = self.peers.get_mut(from) else {
            return out;
        };
        peer.silent_since_ms = None;
        if std::mem::replace(&mut peer.dead, false) {
            out.push(log(
                LogLevel::Info,
                format!("discovery: {from} answers again"),
            ));
        }
        if let Some(version) = reply.version() {
            if peer.instance.is_some_and(|i| i != version.instance) {
                // A restarted master: its registry started empty.
                peer.list = None;
                if is_master {
                    peer.master_since_ms = Some(now_ms);
                    peer.settled = false;
                }
                out.push(log(
                    LogLevel::Info,
                    format!(
                        "discovery: master {from} restarted; members repopulate it with their \
                         next heartbeat"
                    ),
                ));
            }
            peer.instance = Some(version.instance);
        }
        match reply {
            Reply::Ack { version } => {
                if is_master {
                    peer.registered = true;
                    let current = peer.list.as_ref().is_some_and(|(v, _)| *v == version);
                    if current {
                        peer.list_confirmed_ms = now_ms;
                    } else {
                        self.send(from.clone(), Request::Members, now_ms, &mut out);
                    }
                    if self.phase == Phase::Bootstrapping {
                        self.phase = Phase::Joined;
                        out.push(log(
                            LogLevel::Info,
                            format!(
                                "discovery: joined via {from} after {} ms (masters=[{}])",
                                now_ms.saturating_sub(self.started_ms),
                                join(&self.masters)
                            ),
                        ));
                    }
                }
            }
            Reply::Members {
                version,
                members,
                departed,
            } => {
                if members.len() > MAX_MEMBERS || departed.len() > MAX_MEMBERS {
                    out.push(oversized(from, members.len().max(departed.len())));
                } else {
                    // A fact whoever reports it and in whatever order the
                    // replies come: that process deregistered and never
                    // heartbeats again.
                    learn_departures(&mut self.departed, departed, now_ms);
                    if is_master {
                        // Replies may overtake each other: never go back to
                        // an older version of the same registry.
                        let older = peer.list.as_ref().is_some_and(|(held, _)| {
                            held.instance == version.instance && held.changes > version.changes
                        });
                        if !older {
                            peer.list = Some((version, members));
                            peer.list_confirmed_ms = now_ms;
                        }
                    } else {
                        self.hint = members;
                    }
                }
            }
            Reply::Referral { members } => {
                if members.len() > MAX_MEMBERS {
                    out.push(oversized(from, members.len()));
                } else {
                    self.hint = members;
                }
            }
            Reply::Rejected { reason } => {
                peer.registered = false;
                let quiet = self
                    .last_reject_log_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) < self.config.wait_log_interval_ms);
                if !quiet {
                    self.last_reject_log_ms = Some(now_ms);
                    out.push(log(
                        LogLevel::Warn,
                        format!(
                            "discovery: {from} refused node {}: {reason}",
                            self.me.node_id
                        ),
                    ));
                }
            }
        }
        self.settle(now_ms);
        self.recompute(now_ms, &mut out);
        out
    }

    /// Reports that a request to `to` failed (refused, reset, timed out).
    /// One failure is not fatal: the address counts as dead only once it has
    /// been silent for `member_ttl`.
    pub fn on_unreachable(&mut self, to: &HostPort, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.running() {
            return out;
        }
        let Some(peer) = self.peers.get_mut(to) else {
            return out;
        };
        peer.silent_since_ms.get_or_insert(now_ms);
        peer.registered = false;
        if self.declare_dead(now_ms, &mut out) {
            self.recompute(now_ms, &mut out);
        }
        out
    }

    /// Leaves cleanly: deregisters from every reachable master so peers drop
    /// this node at once instead of after `member_ttl`. Afterwards the agent
    /// is [`Phase::Stopped`] and ignores every input.
    pub fn shutdown(&mut self, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        let was_running = self.running();
        self.phase = Phase::Stopped;
        if !was_running {
            return out;
        }
        let targets: Vec<HostPort> = self
            .masters
            .iter()
            .filter(|m| self.peers.get(*m).is_some_and(|p| !p.dead))
            .cloned()
            .collect();
        for to in &targets {
            out.push(Action::Send {
                to: to.clone(),
                request: Request::Deregister {
                    node_id: self.me.node_id.clone(),
                    incarnation: self.me.incarnation,
                },
            });
        }
        out.push(log(
            LogLevel::Info,
            format!(
                "discovery: node {} leaving at {now_ms} ms; deregistered from [{}]",
                self.me.node_id,
                join(&targets)
            ),
        ));
        out
    }

    /// When the agent next needs [`MemberAgent::tick`] (ms): the next
    /// heartbeat round, a silent master reaching `member_ttl`, a master
    /// settling, or a dead host's next probe. `None` when not running.
    pub fn next_tick_ms(&self) -> Option<u64> {
        if !self.running() {
            return None;
        }
        let ttl = self.config.member_ttl_ms;
        let mut next = self.next_heartbeat_ms;
        for (addr, peer) in &self.peers {
            if peer.dead {
                next = next.min(peer.last_probe_ms.unwrap_or(0).saturating_add(ttl));
            } else if let Some(since) = peer.silent_since_ms {
                next = next.min(since.saturating_add(ttl));
            }
            if !peer.settled && self.masters.contains(addr) {
                if let Some(since) = peer.master_since_ms {
                    next = next.min(since.saturating_add(ttl));
                }
            }
        }
        Some(next)
    }

    /// The live members, sorted by node id (this node included once a master
    /// lists it). Kept through master outages: the last known view stays
    /// until a master says otherwise.
    pub fn live_members(&self) -> &[Member] {
        &self.view
    }

    /// Counts changes of [`MemberAgent::live_members`]; the directory layer
    /// compares it to decide when to re-shard and re-publish.
    pub fn membership_epoch(&self) -> u64 {
        self.epoch
    }

    /// The current masters, in priority order (head first when alive).
    pub fn masters(&self) -> &[HostPort] {
        &self.masters
    }

    /// Whether this node's own host is currently a master, i.e. whether the
    /// service on its meta port should expect registrations.
    pub fn is_master_host(&self) -> bool {
        self.masters.contains(&self.me.meta_addr())
    }

    /// Where the agent is in its life.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// This node's own record, as sent to masters.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// The settings the agent runs with.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    fn head(&self) -> &HostPort {
        &self.config.seeds[0]
    }

    fn running(&self) -> bool {
        matches!(self.phase, Phase::Bootstrapping | Phase::Joined)
    }

    fn send(&mut self, to: HostPort, request: Request, now_ms: u64, out: &mut Vec<Action>) {
        let peer = self.peers.entry(to.clone()).or_default();
        peer.silent_since_ms.get_or_insert(now_ms);
        out.push(Action::Send { to, request });
    }

    /// Marks addresses silent for `member_ttl` as dead; returns whether any
    /// did (the master set must be recomputed: a dead host is skipped).
    fn declare_dead(&mut self, now_ms: u64, out: &mut Vec<Action>) -> bool {
        let ttl = self.config.member_ttl_ms;
        let mut any_died = false;
        for (addr, peer) in self.peers.iter_mut() {
            let Some(since) = peer.silent_since_ms else {
                continue;
            };
            if peer.dead || now_ms.saturating_sub(since) < ttl {
                continue;
            }
            peer.dead = true;
            peer.registered = false;
            peer.last_probe_ms = Some(now_ms);
            any_died = true;
            if self.masters.contains(addr) {
                out.push(log(
                    LogLevel::Warn,
                    format!(
                        "discovery: master {addr} has not answered for {} ms (member_ttl); \
                         treating it as down until it answers again",
                        now_ms.saturating_sub(since)
                    ),
                ));
            } else {
                out.push(log(
                    LogLevel::Debug,
                    format!("discovery: seed {addr} is not answering"),
                ));
            }
        }
        any_died
    }

    /// Marks masters that have been masters for `member_ttl` as settled;
    /// returns whether any did (their lists may now remove members).
    fn settle(&mut self, now_ms: u64) -> bool {
        let ttl = self.config.member_ttl_ms;
        let mut any = false;
        for master in &self.masters {
            if let Some(peer) = self.peers.get_mut(master) {
                let ready = peer
                    .master_since_ms
                    .is_some_and(|since| now_ms.saturating_sub(since) >= ttl);
                if ready && !peer.settled {
                    peer.settled = true;
                    any = true;
                }
            }
        }
        any
    }

    fn log_waiting(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let interval = self.config.wait_log_interval_ms;
        if self
            .last_wait_log_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < interval)
        {
            return;
        }
        self.last_wait_log_ms = Some(now_ms);
        let head = self.head();
        let message = if self.phase == Phase::Bootstrapping {
            format!(
                "discovery: node {} still waiting for a discovery master after {} ms (head {head}, \
                 seeds=[{}]); retrying every {} ms. Check that the head is running, that TCP port \
                 {} is open between nodes, and that every node uses the same discovery_addr",
                self.me.node_id,
                now_ms.saturating_sub(self.started_ms),
                join(&self.config.seeds),
                self.config.heartbeat_interval_ms,
                head.port
            )
        } else {
            format!(
                "discovery: no discovery master answers (masters=[{}]); keeping the last \
                 membership ({} members) and retrying via seeds=[{}] every {} ms",
                join(&self.masters),
                self.view.len(),
                join(&self.config.seeds),
                self.config.heartbeat_interval_ms
            )
        };
        out.push(log(LogLevel::Warn, message));
    }

    /// Recomputes view and masters until they agree, then reports what
    /// changed. Converges: a newly chosen master has no list yet, so adding
    /// it never adds hosts, and dropping a demoted master's list can only
    /// remove hosts; the round bound is a safety net.
    fn recompute(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        self.forget_departures(now_ms);
        let old_view = self.view.clone();
        let old_masters = self.masters.clone();
        // Merge first: the masters are chosen from the hosts in the view, so
        // a list that just arrived must be in the view before selecting.
        let mut settled = false;
        for _ in 0..MAX_MASTERS + 2 {
            self.view = self.merged_view();
            let masters = self.select();
            if masters == self.masters {
                settled = true;
                break;
            }
            self.set_masters(masters, now_ms);
        }
        if !settled {
            // Not reached by the argument above; keep the view consistent
            // with the masters anyway.
            self.view = self.merged_view();
        }
        if self.masters_have_lists() {
            self.hint = Vec::new();
        }
        if self.masters != old_masters {
            out.push(log(
                LogLevel::Info,
                format!(
                    "discovery: masters=[{}] (was [{}])",
                    join(&self.masters),
                    join(&old_masters)
                ),
            ));
            out.push(Action::MastersChanged {
                masters: self.masters.clone(),
            });
            for master in self.masters.clone() {
                if !old_masters.contains(&master) {
                    self.send(master, Request::Register(self.me.clone()), now_ms, out);
                }
            }
        }
        if self.view != old_view {
            self.epoch += 1;
            let count = self.view.len();
            for change in diff(&old_view, &self.view) {
                let message = match change {
                    MembershipChange::Joined(m) => {
                        format!("member joined: {} ({count} members)", m.node_id)
                    }
                    MembershipChange::Left(m) => {
                        format!("member left: {} ({count} members)", m.node_id)
                    }
                    MembershipChange::Restarted { old, new } => format!(
                        "member restarted: {} (incarnation {} -> {}, {count} members)",
                        new.node_id, old.incarnation, new.incarnation
                    ),
                    MembershipChange::Updated(m) => {
                        format!("member updated: {} ({count} members)", m.node_id)
                    }
                };
                out.push(log(LogLevel::Info, message));
            }
            out.push(Action::MembershipChanged {
                epoch: self.epoch,
                members: count,
            });
        }
        self.forget_peers();
    }

    fn masters_have_lists(&self) -> bool {
        self.masters
            .iter()
            .any(|m| self.peers.get(m).is_some_and(|p| p.list.is_some()))
    }

    fn select(&self) -> Vec<HostPort> {
        let mut known: BTreeSet<HostPort> = self.view.iter().map(Member::meta_addr).collect();
        if !self.masters_have_lists() {
            // Bootstrapping through a seed: its referral names the hosts.
            known.extend(self.hint.iter().map(Member::meta_addr));
        }
        let dead: BTreeSet<HostPort> = self
            .peers
            .iter()
            .filter(|(_, p)| p.dead)
            .map(|(addr, _)| addr.clone())
            .collect();
        select_masters(self.head(), &known, &dead, self.config.max_masters)
    }

    fn set_masters(&mut self, masters: Vec<HostPort>, now_ms: u64) {
        for old in &self.masters {
            if !masters.contains(old) {
                if let Some(peer) = self.peers.get_mut(old) {
                    peer.list = None;
                    peer.master_since_ms = None;
                    peer.settled = false;
                    peer.registered = false;
                }
            }
        }
        for new in &masters {
            if !self.masters.contains(new) {
                let peer = self.peers.entry(new.clone()).or_default();
                peer.master_since_ms = Some(now_ms);
                peer.settled = false;
                peer.registered = false;
            }
        }
        self.masters = masters;
    }

    /// The union of the masters' lists without the departed members; see
    /// the type docs for why only settled masters may remove members that
    /// are merely absent from their lists.
    fn merged_view(&self) -> Vec<Member> {
        let mut merged = self.union_of_lists();
        merged.retain(|m| !self.has_departed(m));
        merged.truncate(MAX_MEMBERS);
        merged
    }

    /// Whether a master reported this member's process as deregistered.
    fn has_departed(&self, member: &Member) -> bool {
        self.departed
            .get(&member.node_id)
            .is_some_and(|d| d.incarnation >= member.incarnation)
    }

    /// The union of the masters' lists, newest incarnation per node; while
    /// no master is settled, the current view is part of it.
    fn union_of_lists(&self) -> Vec<Member> {
        let mut settled: Vec<&[Member]> = Vec::new();
        let mut warming: Vec<&[Member]> = Vec::new();
        for master in &self.masters {
            if let Some(peer) = self.peers.get(master) {
                if let Some((_, list)) = &peer.list {
                    if peer.settled {
                        settled.push(list);
                    } else {
                        warming.push(list);
                    }
                }
            }
        }
        if settled.is_empty() && warming.is_empty() {
            return self.view.clone();
        }
        let mut lists: Vec<&[Member]> = Vec::with_capacity(settled.len() + warming.len() + 1);
        if settled.is_empty() {
            lists.push(&self.view);
        }
        lists.extend(settled);
        lists.extend(warming);
        merge_lists(lists)
    }

    /// Forgets departures learned more than `member_ttl` ago that no list
    /// held from before still names (with that incarnation or an older
    /// one). The masters keep a tombstone for `member_ttl` and prune the
    /// departed node by then anyway, so only a list held from before (a
    /// silent master's) could name the departed process again, and it keeps
    /// the departure alive. A list confirmed current two `member_ttl` after
    /// the departure was learned does not: its master had dropped that
    /// process by then, so a process of this id it lists is a newer one,
    /// even with a lower incarnation (its clock stepped back), and hiding it
    /// would hide it for good.
    fn forget_departures(&mut self, now_ms: u64) {
        if self.departed.is_empty() {
            return;
        }
        let ttl = self.config.member_ttl_ms;
        // Per node id, the incarnation each held list names, with when that
        // list was last confirmed current.
        let mut listed: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
        for peer in self.peers.values() {
            let Some((_, list)) = &peer.list else {
                continue;
            };
            for member in list {
                listed
                    .entry(member.node_id.as_str())
                    .or_default()
                    .push((member.incarnation, peer.list_confirmed_ms));
            }
        }
        self.departed.retain(|node_id, d| {
            let recent = now_ms.saturating_sub(d.learned_ms) <= ttl;
            let from_before = d.learned_ms.saturating_add(2 * ttl);
            let still_listed = listed.get(node_id.as_str()).is_some_and(|seen| {
                seen.iter()
                    .any(|&(inc, at)| inc <= d.incarnation && at <= from_before)
            });
            recent || still_listed
        });
    }

    /// Drops state about addresses that no longer matter, keeping seeds,
    /// masters, and dead hosts that still have live members (to probe them).
    /// Bounds the table by seeds + masters + hosts.
    fn forget_peers(&mut self) {
        let known: BTreeSet<HostPort> = self.view.iter().map(Member::meta_addr).collect();
        let seeds = &self.config.seeds;
        let masters = &self.masters;
        self.peers.retain(|addr, peer| {
            seeds.contains(addr) || masters.contains(addr) || (peer.dead && known.contains(addr))
        });
    }
}

/// Records the departures a discovery service reported, keeping the newest
/// incarnation per node and at most [`MAX_MEMBERS`] entries (the oldest
/// learned is forgotten first).
fn learn_departures(known: &mut BTreeMap<String, Departed>, reported: Vec<Departure>, now_ms: u64) {
    for Departure {
        node_id,
        incarnation,
    } in reported
    {
        if let Some(held) = known.get_mut(&node_id) {
            if incarnation > held.incarnation {
                *held = Departed {
                    incarnation,
                    learned_ms: now_ms,
                };
            }
            continue;
        }
        if known.len() >= MAX_MEMBERS {
            let oldest = known
                .iter()
                .min_by_key(|(_, d)| d.learned_ms)
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                known.remove(&id);
            }
        }
        known.insert(
            node_id,
            Departed {
                incarnation,
                learned_ms: now_ms,
            },
        );
    }
}

fn log(level: LogLevel, message: String) -> Action {
    Action::Log { level, message }
}

fn oversized(from: &HostPort, len: usize) -> Action {
    log(
        LogLevel::Warn,
        format!(
            "discovery: ignoring a member list of {len} entries from {from} (limit {MAX_MEMBERS})"
        ),
    )
}

fn join(hosts: &[HostPort]) -> String {
    hosts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: u64 = 2_000;
    const TTL: u64 = 6_000;

    fn hp(host: &str) -> HostPort {
        HostPort {
            host: host.to_owned(),
            port: 31998,
        }
    }

    fn member(id: &str, host: &str, incarnation: u64) -> Member {
        Member {
            node_id: id.to_owned(),
            host: host.to_owned(),
            meta_port: 31998,
            control_endpoints: vec![(host.to_owned(), 40_000)],
            shard_count: 1,
            incarnation,
            pool_bytes: 1 << 20,
        }
    }

    fn config(seeds: &[&str], max_masters: usize) -> AgentConfig {
        AgentConfig {
            seeds: seeds.iter().map(|s| hp(s)).collect(),
            max_masters,
            heartbeat_interval_ms: HB,
            member_ttl_ms: TTL,
            wait_log_interval_ms: 10_000,
        }
    }

    fn agent(seeds: &[&str], max_masters: usize) -> MemberAgent {
        MemberAgent::new(config(seeds, max_masters), member("me", "h-me", 1)).unwrap()
    }

    fn version(instance: u64, changes: u64) -> RegistryVersion {
        RegistryVersion { instance, changes }
    }

    /// The (destination, request) pairs among `actions`.
    fn sends(actions: &[Action]) -> Vec<(HostPort, Request)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { to, request } => Some((to.clone(), request.clone())),
                _ => None,
            })
            .collect()
    }

    fn logs(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Log { message, .. } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    fn is_register(r: &Request) -> bool {
        matches!(r, Request::Register(m) if m.node_id == "me")
    }

    #[test]
    fn start_registers_with_the_head_only() {
        let mut a = agent(&["head", "seed2"], 3);
        assert_eq!(a.phase(), Phase::Idle);
        assert_eq!(a.next_tick_ms(), None);
        let out = a.start(0);
        let s = sends(&out);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, hp("head"));
        assert!(is_register(&s[0].1));
        assert!(out.contains(&Action::MastersChanged {
            masters: vec![hp("head")]
        }));
        assert_eq!(a.phase(), Phase::Bootstrapping);
        assert_eq!(a.next_tick_ms(), Some(HB));
        assert!(a.start(1).is_empty(), "start is idempotent");
        assert!(
            a.tick(HB - 1).is_empty(),
            "nothing due before the heartbeat"
        );
    }

    #[test]
    fn ack_and_list_join_and_bump_the_epoch_once_per_change() {
        let mut a = agent(&["head"], 3);
        a.start(0);
        let out = a.on_reply(
            &hp("head"),
            Reply::Ack {
                version: version(9, 1),
            },
            5,
        );
        assert_eq!(a.phase(), Phase::Joined);
        assert_eq!(sends(&out), vec![(hp("head"), Request::Members)]);
        assert!(logs(&out)[0].starts_with("discovery: joined via head:31998"));

        let list = vec![member("me", "h-me", 1), member("x", "head", 1)];
        let out = a.on_reply(
            &hp("head"),
            Reply::Members {
                version: version(9, 1),
                members: list.clone(),
                departed: Vec::new(),
            },
            10,
        );
        assert_eq!(a.live_members(), list.as_slice());
        assert_eq!(a.membership_epoch(), 1);
        assert!(out.contains(&Action::MembershipChanged {
            epoch: 1,
            members: 2
        }));
        assert!(logs(&out).contains(&"member joined: x (2 members)".to_owned()));
        // Both hosts are masters now; the new one gets a Register at once.
        assert_eq!(a.masters(), &[hp("head"), hp("h-me")]);
        assert!(a.is_master_host());
        assert!(sends(&out)
            .iter()
            .any(|(to, r)| *to == hp("h-me") && is_register(r)));

        // Heartbeat round: registered masters get heartbeats.
        let out = a.tick(HB);
        let s = sends(&out);
        assert!(s
            .iter()
            .any(|(to, r)| *to == hp("head") && matches!(r, Request::Heartbeat(_))));
        // An unchanged version does not trigger a pull; a changed one does.
        let out = a.on_reply(
            &hp("head"),
            Reply::Ack {
                version: version(9, 1),
            },
            HB + 5,
        );
        assert!(sends(&out).is_empty());
        let out = a.on_reply(
            &hp("head"),
            Reply::Ack {
                version: version(9, 2),
            },
            HB + 6,
        );
        assert_eq!(sends(&out), vec![(hp("head"), Request::Members)]);
        // The same list again is not a change.
        a.on_reply(
            &hp("head"),
            Reply::Members {
                version: version(9, 2),
                members: list,
                departed: Vec::new(),
            },
            HB + 7,
        );
        assert_eq!(a.membership_epoch(), 1);
    }

    #[test]
    fn silent_head_falls_back_to_seeds_and_logs_at_most_every_interval() {
        let mut a = agent(&["head", "seed2"], 3);
        a.start(0);
        let out = a.on_unreachable(&hp("head"), 3);
        assert!(sends(&out).is_empty(), "one failure is not death");
        assert_eq!(a.masters(), &[hp("head")]);

        let mut waits = Vec::new();
        let mut all = Vec::new();
        let mut now = 0;
        while now < 30_000 {
            now = a.next_tick_ms().unwrap();
            assert!(now > 0);
            let out = a.tick(now);
            for line in logs(&out) {
                if line.contains("still waiting") {
                    waits.push(now);
                }
            }
            all.extend(out);
            // Nothing ever answers.
            for (to, _) in sends(&all) {
                a.on_unreachable(&to, now + 1);
            }
            all.clear();
        }
        assert_eq!(waits, vec![HB, HB + 10_000, HB + 20_000]);
        assert_eq!(a.phase(), Phase::Bootstrapping);
        assert!(a.masters().is_empty(), "the dead head is no master");
        assert!(a.live_members().is_empty());
    }

    #[test]
    fn seed_referral_finds_the_masters() {
        let mut a = agent(&["head", "seed2"], 3);
        a.start(0);
        let out = a.tick(HB);
        let s = sends(&out);
        assert!(s.contains(&(hp("seed2"), Request::Members)), "{s:?}");
        let referral = vec![member("p", "seed2", 1), member("q", "h3", 1)];
        let out = a.on_reply(&hp("seed2"), Reply::Referral { members: referral }, HB + 5);
        assert_eq!(a.masters(), &[hp("head"), hp("h3"), hp("seed2")]);
        let registered: Vec<HostPort> = sends(&out)
            .into_iter()
            .filter(|(_, r)| is_register(r))
            .map(|(to, _)| to)
            .collect();
        assert_eq!(registered, vec![hp("h3"), hp("seed2")]);
        // A referral is a hint, not a membership view.
        assert!(a.live_members().is_empty());
        let out = a.on_reply(
            &hp("h3"),
            Reply::Ack {
                version: version(1, 3),
            },
            HB + 9,
        );
        assert_eq!(a.phase(), Phase::Joined);
        assert!(logs(&out)[0].contains("joined via h3:31998"));
    }

    /// Answers `actions` as live services would, except for hosts in
    /// `down` (no answer at all), until nothing more is sent. Every live
    /// service holds `list` at version (7, 1).
    fn serve(
        a: &mut MemberAgent,
        actions: Vec<Action>,
        down: &[HostPort],
        list: &[Member],
        now: u64,
    ) -> Vec<Action> {
        let mut all = actions.clone();
        let mut pending = actions;
        for _ in 0..16 {
            let mut next = Vec::new();
            for (to, request) in sends(&pending) {
                if down.contains(&to) {
                    continue;
                }
                let reply = match request {
                    Request::Members => Reply::Members {
                        version: version(7, 1),
                        members: list.to_vec(),
                        departed: Vec::new(),
                    },
                    _ => Reply::Ack {
                        version: version(7, 1),
                    },
                };
                next.extend(a.on_reply(&to, reply, now));
            }
            if next.is_empty() {
                return all;
            }
            all.extend(next.iter().cloned());
            pending = next;
        }
        panic!("the agent keeps sending");
    }

    #[test]
    fn dead_master_is_replaced_probed_and_restored() {
        let list = vec![member("me", "h-me", 1), member("z", "h-z", 1)];
        let mut a = agent(&["head"], 2);
        let out = a.start(0);
        serve(&mut a, out, &[], &list, 1);
        assert_eq!(a.phase(), Phase::Joined);
        assert_eq!(a.masters(), &[hp("head"), hp("h-me")]);
        assert_eq!(a.live_members(), list.as_slice());
        // The head stops answering from the round at HB on.
        let down = [hp("head")];
        let mut now = 1;
        let mut promoted_at = None;
        let mut dead_log = false;
        while promoted_at.is_none() && now < 4 * TTL {
            now = a.next_tick_ms().unwrap();
            let out = a.tick(now);
            let out = serve(&mut a, out, &down, &list, now);
            dead_log |= logs(&out).iter().any(|l| l.contains("has not answered"));
            if a.masters() == [hp("h-me"), hp("h-z")] {
                promoted_at = Some(now);
            }
        }
        // Silent from the round at HB: dead member_ttl later.
        assert_eq!(promoted_at, Some(HB + TTL), "next host promoted");
        assert!(dead_log);
        assert_eq!(a.live_members(), list.as_slice(), "membership kept");
        // Probed every member_ttl; when it answers it is first again.
        let mut probes = Vec::new();
        while now < HB + 3 * TTL {
            now = a.next_tick_ms().unwrap();
            let out = a.tick(now);
            if sends(&out).contains(&(hp("head"), Request::Members)) {
                probes.push(now);
            }
            serve(&mut a, out, &down, &list, now);
        }
        assert_eq!(probes, vec![HB + 2 * TTL, HB + 3 * TTL]);
        let out = a.on_reply(
            &hp("head"),
            Reply::Members {
                version: version(2, 0),
                members: Vec::new(),
                departed: Vec::new(),
            },
            now + 3,
        );
        assert_eq!(a.masters(), &[hp("head"), hp("h-me")]);
        let l = logs(&out);
        assert!(
            l.iter().any(|x| x.contains("head:31998 answers again")),
            "{l:?}"
        );
        assert!(sends(&out)
            .iter()
            .any(|(to, r)| *to == hp("head") && is_register(r)));
        // The returning head's empty list removes nobody.
        assert_eq!(a.live_members(), list.as_slice());
    }

    #[test]
    fn restarted_master_is_noticed_and_warms_up_again() {
        let list = vec![member("me", "h-me", 1)];
        let mut a = agent(&["head"], 1);
        let out = a.start(0);
        serve(&mut a, out, &[], &list, 1);
        let epoch = a.membership_epoch();
        // Its registry comes back empty under a new instance.
        let out = a.on_reply(
            &hp("head"),
            Reply::Ack {
                version: version(8, 0),
            },
            10,
        );
        assert!(logs(&out)
            .iter()
            .any(|l| l.contains("master head:31998 restarted")));
        assert_eq!(sends(&out), vec![(hp("head"), Request::Members)]);
        a.on_reply(
            &hp("head"),
            Reply::Members {
                version: version(8, 0),
                members: Vec::new(),
                departed: Vec::new(),
            },
            11,
        );
        assert_eq!(
            a.live_members(),
            list.as_slice(),
            "a warming master removes nobody"
        );
        assert_eq!(a.membership_epoch(), epoch);
        // Once settled (member_ttl later), its list is authoritative.
        a.tick(10 + TTL);
        assert!(a.live_members().is_empty());
        assert_eq!(a.membership_epoch(), epoch + 1);
    }

    fn departure(id: &str, incarnation: u64) -> Departure {
        Departure {
            node_id: id.to_owned(),
            incarnation,
        }
    }

    fn listing(version: RegistryVersion, members: &[Member], departed: &[Departure]) -> Reply {
        Reply::Members {
            version,
            members: members.to_vec(),
            departed: departed.to_vec(),
        }
    }

    #[test]
    fn reported_departures_remove_members_from_unsettled_and_silent_lists() {
        let me = member("me", "h-me", 1);
        let x = member("x", "head", 1);
        let y = member("y", "h-y", 1);
        let mut a = agent(&["head"], 3);
        let out = a.start(0);
        serve(&mut a, out, &[], &[me.clone(), x.clone(), y.clone()], 1);
        assert_eq!(a.masters(), &[hp("head"), hp("h-me"), hp("h-y")]);
        assert_eq!(a.live_members(), [me.clone(), x.clone(), y.clone()]);

        // x, the only rank on the head, leaves: the head's service stops
        // with it (its last list still names x), and no master is settled.
        // One answering master reporting the deregistration is enough.
        let out = a.on_reply(
            &hp("h-y"),
            listing(
                version(7, 2),
                &[me.clone(), y.clone()],
                &[departure("x", 1)],
            ),
            100,
        );
        assert_eq!(a.live_members(), [me.clone(), y.clone()]);
        assert!(logs(&out).contains(&"member left: x (2 members)".to_owned()));
        // Absence alone still removes nobody from an unsettled master.
        a.on_reply(
            &hp("h-me"),
            listing(version(7, 2), std::slice::from_ref(&me), &[]),
            110,
        );
        assert_eq!(a.live_members(), [me.clone(), y.clone()]);
        a.on_reply(
            &hp("h-me"),
            listing(
                version(7, 3),
                &[me.clone(), y.clone()],
                &[departure("x", 1)],
            ),
            120,
        );

        // member_ttl later the masters forgot their tombstones and list a
        // newcomer; the head's last list (it is not declared dead yet) must
        // not bring x back.
        let z = member("z", "h-y", 1);
        let now = 200 + TTL;
        let fresh = [me.clone(), y.clone(), z.clone()];
        a.on_reply(&hp("h-y"), listing(version(7, 4), &fresh, &[]), now);
        a.on_reply(&hp("h-me"), listing(version(7, 4), &fresh, &[]), now);
        assert_eq!(a.masters(), &[hp("head"), hp("h-me"), hp("h-y")]);
        assert_eq!(a.live_members(), fresh);
        assert!(
            a.departed.contains_key("x"),
            "still named by the head's list"
        );

        // A restarted x (larger incarnation) is a new process: welcome.
        let x2 = member("x", "head", 2);
        let back = [me.clone(), x2.clone(), y.clone(), z.clone()];
        a.on_reply(&hp("h-y"), listing(version(7, 5), &back, &[]), now + 1);
        assert_eq!(a.live_members(), back);
        a.on_reply(&hp("h-y"), listing(version(7, 6), &fresh, &[]), now + 2);
        a.on_reply(&hp("h-me"), listing(version(7, 6), &fresh, &[]), now + 2);

        // Once the silent head is declared dead its list goes, and with it
        // the last reason to remember the departure.
        while a.masters().contains(&hp("head")) {
            let t = a.next_tick_ms().unwrap();
            let out = a.tick(t);
            for (to, _) in sends(&out) {
                if to == hp("head") {
                    a.on_unreachable(&to, t + 1);
                } else {
                    a.on_reply(
                        &to,
                        Reply::Ack {
                            version: version(7, 6),
                        },
                        t + 1,
                    );
                }
            }
            assert!(t < now + 3 * TTL, "the head is never declared dead");
        }
        assert_eq!(a.masters(), &[hp("h-me"), hp("h-y")]);
        assert_eq!(a.live_members(), fresh);
        assert!(a.departed.is_empty(), "{:?}", a.departed);
    }

    #[test]
    fn shutdown_deregisters_and_then_ignores_everything() {
        let mut a = agent(&["head"], 3);
        a.start(0);
        a.on_reply(
            &hp("head"),
            Reply::Ack {
                version: version(1, 1),
            },
            1,
        );
        let out = a.shutdown(5);
        assert_eq!(
            sends(&out),
            vec![(
                hp("head"),
                Request::Deregister {
                    node_id: "me".to_owned(),
                    incarnation: 1
                }
            )]
        );
        assert_eq!(a.phase(), Phase::Stopped);
        assert_eq!(a.next_tick_ms(), None);
        assert!(a.tick(100_000).is_empty());
        assert!(a
            .on_reply(
                &hp("head"),
                Reply::Ack {
                    version: version(1, 2)
                },
                6
            )
            .is_empty());
        assert!(a.on_unreachable(&hp("head"), 7).is_empty());
        assert!(a.shutdown(8).is_empty());
        // Shutting down before starting sends nothing.
        let mut idle = agent(&["head"], 3);
        assert!(idle.shutdown(0).is_empty());
        assert!(idle.start(1).is_empty());
    }

    #[test]
    fn rejections_and_oversized_lists_are_logged_not_trusted() {
        let mut a = agent(&["head"], 3);
        a.start(0);
        let out = a.on_reply(
            &hp("head"),
            Reply::Rejected {
                reason: "full".to_owned(),
            },
            1,
        );
        assert!(logs(&out)[0].contains("refused node me: full"));
        assert_eq!(a.phase(), Phase::Bootstrapping);
        let again = a.on_reply(
            &hp("head"),
            Reply::Rejected {
                reason: "full".to_owned(),
            },
            2,
        );
        assert!(logs(&again).is_empty(), "rate limited");
        let huge = vec![member("x", "head", 1); MAX_MEMBERS + 1];
        let out = a.on_reply(
            &hp("head"),
            Reply::Members {
                version: version(1, 1),
                members: huge,
                departed: Vec::new(),
            },
            3,
        );
        assert!(logs(&out)[0].contains("ignoring a member list of 4097"));
        assert!(a.live_members().is_empty());
        // Replies from addresses the agent never talked to are ignored.
        assert!(a
            .on_reply(
                &hp("stranger"),
                Reply::Ack {
                    version: version(1, 1)
                },
                4
            )
            .is_empty());
    }

    #[test]
    fn config_errors_say_what_to_change() {
        let mut c = config(&["head"], 3);
        assert!(c.validate().is_ok());
        c.seeds.clear();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("discovery head"));
        c = config(&["a", "a"], 3);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("more than once"));
        c = config(&["a"], 0);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_masters"));
        c = config(&["a"], 3);
        c.member_ttl_ms = c.heartbeat_interval_ms;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("3 x heartbeat_interval"));
        c = config(&["a"], 3);
        c.heartbeat_interval_ms = 0;
        assert!(c.validate().is_err());
        let mut bad = member("me", "h", 1);
        bad.shard_count = 0;
        let err = MemberAgent::new(config(&["a"], 3), bad).unwrap_err();
        assert!(err.to_string().contains("shard_count"), "{err}");
    }

    #[test]
    fn from_config_takes_the_discovery_keys() {
        let config = Config::from_json(
            r#"{"backend_name":"peercache","module_path":"peercache.store",
                "class_name":"PeerCacheStore","discovery_addr":"10.0.0.1:7000,10.0.0.2",
                "max_masters":2,"heartbeat_interval":0.5,"member_ttl":1.5}"#,
        )
        .expect("valid config");
        let c = AgentConfig::from_config(&config);
        assert_eq!(
            c.seeds,
            vec![
                HostPort {
                    host: "10.0.0.1".to_owned(),
                    port: 7000
                },
                HostPort {
                    host: "10.0.0.2".to_owned(),
                    port: 31998
                }
            ]
        );
        assert_eq!(c.max_masters, 2);
        assert_eq!(c.heartbeat_interval_ms, 500);
        assert_eq!(c.member_ttl_ms, 1_500);
        assert!(c.validate().is_ok());
    }
}
