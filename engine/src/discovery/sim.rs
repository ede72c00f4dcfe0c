//! A tiny deterministic network for discovery tests (test-only).
//!
//! Hosts run one [`Service`] each and any number of nodes (ranks) with a
//! [`MemberAgent`]. Messages travel with a random latency drawn from a seeded
//! RNG; a message to a dead host comes back as "unreachable". Time is
//! simulated and jumps from event to event (deliveries, agent wake-ups,
//! registry expiry), so a minute of cluster life runs in microseconds and a
//! failing run replays exactly from its seed.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::HostPort;

use super::{
    Action, AgentConfig, LogLevel, Member, MemberAgent, Phase, Registry, Reply, Request, Service,
};

/// The meta port every simulated host uses.
pub const META_PORT: u16 = 31998;

/// How often simulated services prune expired members.
pub const EXPIRE_EVERY_MS: u64 = 100;

/// `host:31998`.
pub fn hp(host: &str) -> HostPort {
    HostPort {
        host: host.to_owned(),
        port: META_PORT,
    }
}

/// One operator log line, with who wrote it and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Simulated time.
    pub at_ms: u64,
    /// Writer.
    pub node_id: String,
    /// Severity.
    pub level: LogLevel,
    /// Text.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Addr {
    host: HostPort,
    node_id: String,
    incarnation: u64,
}

#[derive(Debug)]
enum Payload {
    Request {
        from: Addr,
        to: HostPort,
        request: Request,
    },
    Reply {
        to: Addr,
        from: HostPort,
        reply: Reply,
    },
    Unreachable {
        to: Addr,
        target: HostPort,
    },
}

struct SimHost {
    up: bool,
    service: Service,
    nodes: BTreeMap<String, MemberAgent>,
}

/// The simulated cluster.
pub struct Sim {
    now_ms: u64,
    rng: StdRng,
    config: AgentConfig,
    latency_max_ms: u64,
    hosts: BTreeMap<HostPort, SimHost>,
    inflight: BTreeMap<(u64, u64), Payload>,
    seq: u64,
    next_incarnation: u64,
    next_expire_ms: u64,
    logs: Vec<LogLine>,
}

impl Sim {
    /// An empty cluster whose nodes use `config`, messages taking
    /// 1..=`latency_max_ms` ms each way.
    pub fn new(seed: u64, config: AgentConfig, latency_max_ms: u64) -> Sim {
        assert!(latency_max_ms >= 1);
        Sim {
            now_ms: 0,
            rng: StdRng::seed_from_u64(seed),
            config,
            latency_max_ms,
            hosts: BTreeMap::new(),
            inflight: BTreeMap::new(),
            seq: 0,
            next_incarnation: 1,
            next_expire_ms: EXPIRE_EVERY_MS,
            logs: Vec::new(),
        }
    }

    /// Current simulated time.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// A uniformly random delay in `0..upper_ms`, from the run's seed.
    pub fn random_ms(&mut self, upper_ms: u64) -> u64 {
        self.rng.random_range(0..upper_ms.max(1))
    }

    /// Brings up a host (its discovery service, no nodes yet). Reviving a
    /// dead host gives it a fresh, empty registry, like a restart.
    pub fn up_host(&mut self, host: &HostPort) {
        let instance = self.rng.random::<u64>();
        let registry = Registry::new(instance, self.config.member_ttl_ms);
        self.hosts.insert(
            host.clone(),
            SimHost {
                up: true,
                service: Service::new(registry),
                nodes: BTreeMap::new(),
            },
        );
    }

    /// Kills a host: its service and all its nodes vanish without a word.
    pub fn kill_host(&mut self, host: &HostPort) {
        let h = self.hosts.get_mut(host).expect("known host");
        h.up = false;
        h.nodes.clear();
    }

    /// Starts a node on an up host; returns its incarnation (growing across
    /// the whole run, so a restart always has a larger one).
    pub fn start_node(&mut self, host: &HostPort, node_id: &str) -> u64 {
        let incarnation = self.next_incarnation;
        self.next_incarnation += 1;
        self.start_node_at(host, node_id, incarnation);
        incarnation
    }

    /// Starts a node with the given incarnation, which may be lower than
    /// an earlier process of the same id had (its host's clock stepped
    /// back, or the id moved to a host whose clock lags).
    pub fn start_node_at(&mut self, host: &HostPort, node_id: &str, incarnation: u64) {
        let me = Member {
            node_id: node_id.to_owned(),
            host: host.host.clone(),
            meta_port: host.port,
            control_endpoints: vec![(host.host.clone(), 40_000)],
            shard_count: 1,
            incarnation,
            pool_bytes: 1 << 30,
        };
        let mut agent = MemberAgent::new(self.config.clone(), me).expect("valid agent");
        let actions = agent.start(self.now_ms);
        let h = self.hosts.get_mut(host).expect("known host");
        assert!(h.up, "start_node on a dead host");
        assert!(
            h.nodes.insert(node_id.to_owned(), agent).is_none(),
            "node {node_id} already running"
        );
        let addr = Addr {
            host: host.clone(),
            node_id: node_id.to_owned(),
            incarnation,
        };
        self.route(&addr, actions);
    }

    /// Kills one node without deregistering (a crash).
    pub fn crash_node(&mut self, host: &HostPort, node_id: &str) {
        let h = self.hosts.get_mut(host).expect("known host");
        h.nodes.remove(node_id).expect("running node");
    }

    /// Shuts one node down cleanly: its deregistrations are in flight when
    /// it is gone.
    pub fn stop_node(&mut self, host: &HostPort, node_id: &str) {
        let h = self.hosts.get_mut(host).expect("known host");
        let mut agent = h.nodes.remove(node_id).expect("running node");
        let actions = agent.shutdown(self.now_ms);
        assert_eq!(agent.phase(), Phase::Stopped);
        let addr = Addr {
            host: host.clone(),
            node_id: node_id.to_owned(),
            incarnation: agent.me().incarnation,
        };
        self.route(&addr, actions);
    }

    /// The agent of a running node.
    pub fn agent(&self, host: &HostPort, node_id: &str) -> &MemberAgent {
        &self.hosts[host].nodes[node_id]
    }

    /// The registry of a host's service.
    pub fn registry(&self, host: &HostPort) -> &Registry {
        self.hosts[host].service.registry()
    }

    /// Every running agent, in host then node order.
    pub fn agents(&self) -> impl Iterator<Item = &MemberAgent> {
        self.hosts.values().flat_map(|h| h.nodes.values())
    }

    /// Node ids of every running node.
    pub fn running_ids(&self) -> BTreeSet<String> {
        self.agents().map(|a| a.me().node_id.clone()).collect()
    }

    /// Every log line so far.
    pub fn logs(&self) -> &[LogLine] {
        &self.logs
    }

    /// Log lines containing `text`.
    pub fn logs_with(&self, text: &str) -> Vec<&LogLine> {
        self.logs
            .iter()
            .filter(|l| l.message.contains(text))
            .collect()
    }

    /// Runs until `deadline_ms`.
    pub fn run_until(&mut self, deadline_ms: u64) {
        while self.step(deadline_ms) {}
    }

    /// Runs for `duration_ms`.
    pub fn run_for(&mut self, duration_ms: u64) {
        self.run_until(self.now_ms + duration_ms);
    }

    /// Runs for `duration_ms`, calling `check` after every event.
    pub fn run_checked(&mut self, duration_ms: u64, mut check: impl FnMut(&Sim)) {
        let deadline = self.now_ms + duration_ms;
        while self.step(deadline) {
            check(self);
        }
    }

    /// Runs until `done` holds (checked after every event), at most
    /// `limit_ms`; returns the time it first held.
    pub fn run_until_true(
        &mut self,
        limit_ms: u64,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<u64> {
        let deadline = self.now_ms + limit_ms;
        if done(self) {
            return Some(self.now_ms);
        }
        while self.step(deadline) {
            if done(self) {
                return Some(self.now_ms);
            }
        }
        None
    }

    /// Processes the earliest batch of events at or before `deadline_ms`;
    /// returns false (time set to the deadline) when there is none.
    fn step(&mut self, deadline_ms: u64) -> bool {
        let next_message = self.inflight.keys().next().map(|(at, _)| *at);
        let next_tick = self.agents().filter_map(MemberAgent::next_tick_ms).min();
        let next = [Some(self.next_expire_ms), next_message, next_tick]
            .into_iter()
            .flatten()
            .min()
            .expect("expiry is always scheduled");
        if next > deadline_ms {
            self.now_ms = deadline_ms;
            return false;
        }
        let now = next.max(self.now_ms);
        self.now_ms = now;
        while let Some(entry) = self.inflight.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let payload = entry.remove();
            self.deliver(payload);
        }
        let due: Vec<Addr> = self
            .hosts
            .iter()
            .flat_map(|(host, h)| {
                h.nodes
                    .iter()
                    .filter(move |(_, agent)| agent.next_tick_ms().is_some_and(|t| t <= now))
                    .map(move |(id, agent)| Addr {
                        host: host.clone(),
                        node_id: id.clone(),
                        incarnation: agent.me().incarnation,
                    })
            })
            .collect();
        for addr in due {
            let agent = self.node_mut(&addr).expect("due node runs");
            let actions = agent.tick(now);
            let next = agent.next_tick_ms().expect("running");
            assert!(next > now, "agent {} would spin at {now} ms", addr.node_id);
            self.route(&addr, actions);
        }
        if now >= self.next_expire_ms {
            self.next_expire_ms = now + EXPIRE_EVERY_MS;
            for h in self.hosts.values_mut().filter(|h| h.up) {
                h.service.expire(now);
            }
        }
        true
    }

    fn node_mut(&mut self, addr: &Addr) -> Option<&mut MemberAgent> {
        let h = self.hosts.get_mut(&addr.host)?;
        let agent = h.nodes.get_mut(&addr.node_id)?;
        (agent.me().incarnation == addr.incarnation).then_some(agent)
    }

    fn schedule(&mut self, payload: Payload) {
        let latency = self.rng.random_range(1..=self.latency_max_ms);
        self.seq += 1;
        self.inflight
            .insert((self.now_ms + latency, self.seq), payload);
    }

    fn deliver(&mut self, payload: Payload) {
        let now = self.now_ms;
        match payload {
            Payload::Request { from, to, request } => match self.hosts.get_mut(&to) {
                Some(h) if h.up => {
                    let local_view = h
                        .nodes
                        .values()
                        .next()
                        .map(|a| a.live_members().to_vec())
                        .unwrap_or_default();
                    let reply = h.service.handle(request, now, &local_view);
                    self.schedule(Payload::Reply {
                        to: from,
                        from: to,
                        reply,
                    });
                }
                _ => self.schedule(Payload::Unreachable {
                    to: from,
                    target: to,
                }),
            },
            Payload::Reply { to, from, reply } => {
                if let Some(agent) = self.node_mut(&to) {
                    let actions = agent.on_reply(&from, reply, now);
                    self.route(&to, actions);
                }
            }
            Payload::Unreachable { to, target } => {
                if let Some(agent) = self.node_mut(&to) {
                    let actions = agent.on_unreachable(&target, now);
                    self.route(&to, actions);
                }
            }
        }
    }

    fn route(&mut self, from: &Addr, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { to, request } => self.schedule(Payload::Request {
                    from: from.clone(),
                    to,
                    request,
                }),
                Action::Log { level, message } => self.logs.push(LogLine {
                    at_ms: self.now_ms,
                    node_id: from.node_id.clone(),
                    level,
                    message,
                }),
                Action::MembershipChanged { .. } | Action::MastersChanged { .. } => {}
            }
        }
    }
}
