//! Whole-cluster discovery scenarios on the simulated network.
//!
//! Every scenario runs under several RNG seeds (message latencies and node
//! start order differ); a failure names its seed, and rerunning that seed
//! replays it exactly. Times are simulated milliseconds, never wall clock.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::config::HostPort;

use super::sim::{hp, Sim, EXPIRE_EVERY_MS};
use super::{AgentConfig, LogLevel, Member, Phase};

const HB: u64 = 2_000;
const TTL: u64 = 6_000;
const LATENCY_MAX_MS: u64 = 20;
const RTT: u64 = 2 * LATENCY_MAX_MS;
const SEEDS: std::ops::Range<u64> = 0..8;

fn config(seeds: &[&str], max_masters: usize) -> AgentConfig {
    AgentConfig {
        seeds: seeds.iter().map(|s| hp(s)).collect(),
        max_masters,
        heartbeat_interval_ms: HB,
        member_ttl_ms: TTL,
        wait_log_interval_ms: AgentConfig::DEFAULT_WAIT_LOG_INTERVAL_MS,
    }
}

fn node(host: &str, rank: usize) -> String {
    format!("{host}-{rank}")
}

fn ids(members: &[Member]) -> BTreeSet<String> {
    members.iter().map(|m| m.node_id.clone()).collect()
}

fn hosts(names: &[&str]) -> Vec<HostPort> {
    names.iter().map(|n| hp(n)).collect()
}

/// Brings up `names` (services first), then starts `ranks` nodes per host in
/// a seed-shuffled order with random gaps, and lets the cluster settle.
fn cluster(seed: u64, seeds: &[&str], names: &[&str], ranks: usize, max_masters: usize) -> Sim {
    let mut sim = Sim::new(seed, config(seeds, max_masters), LATENCY_MAX_MS);
    start_nodes(&mut sim, seed, names, ranks);
    sim.run_for(3 * TTL);
    sim
}

/// Brings up `names` and starts `ranks` nodes per host in a seed-shuffled
/// order with random gaps of up to half a heartbeat; returns at once.
fn start_nodes(sim: &mut Sim, seed: u64, names: &[&str], ranks: usize) {
    for name in names {
        sim.up_host(&hp(name));
    }
    let mut order: Vec<(&str, usize)> = names
        .iter()
        .flat_map(|n| (0..ranks).map(move |r| (*n, r)))
        .collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x5eed));
    for (name, rank) in order {
        let gap = sim.random_ms(HB / 2);
        sim.run_for(gap);
        sim.start_node(&hp(name), &node(name, rank));
    }
}

/// Every running agent is joined, agrees on `masters`, and sees exactly the
/// running nodes; every master's registry holds exactly them.
fn assert_converged(sim: &Sim, masters: &[&str], ctx: &str) {
    let live = sim.running_ids();
    let expected = hosts(masters);
    for agent in sim.agents() {
        let id = &agent.me().node_id;
        assert_eq!(agent.phase(), Phase::Joined, "{ctx}: phase of {id}");
        assert_eq!(
            agent.masters(),
            expected.as_slice(),
            "{ctx}: masters of {id}"
        );
        assert_eq!(ids(agent.live_members()), live, "{ctx}: view of {id}");
    }
    for master in masters {
        assert_eq!(
            ids(&sim.registry(&hp(master)).members()),
            live,
            "{ctx}: registry of {master}"
        );
    }
}

fn all_masters_are(sim: &Sim, masters: &[HostPort]) -> bool {
    sim.agents().all(|a| a.masters() == masters)
}

/// A check for [`Sim::run_checked`]: the agents in `watch` (while running)
/// never lose any of `keep` from their view — membership must not flap while
/// masters change.
fn never_drops(watch: BTreeSet<String>, keep: BTreeSet<String>, ctx: String) -> impl FnMut(&Sim) {
    move |sim| {
        for agent in sim.agents().filter(|a| watch.contains(&a.me().node_id)) {
            let view = ids(agent.live_members());
            let missing: Vec<_> = keep.difference(&view).collect();
            assert!(
                missing.is_empty(),
                "{ctx}: at {} ms {} lost {missing:?} from its view",
                sim.now_ms(),
                agent.me().node_id
            );
        }
    }
}

const FIVE: [&str; 5] = ["node-c", "node-a", "node-e", "node-b", "node-d"];

#[test]
fn four_ranks_on_one_host_elect_one_master() {
    for seed in SEEDS {
        let ctx = format!("seed {seed}");
        let sim = cluster(seed, &["10.0.0.1"], &["10.0.0.1"], 4, 3);
        assert_converged(&sim, &["10.0.0.1"], &ctx);
        assert_eq!(sim.running_ids().len(), 4, "{ctx}");
        for agent in sim.agents() {
            assert!(agent.is_master_host(), "{ctx}");
            assert!(agent.membership_epoch() >= 1, "{ctx}");
        }
        // Every rank logged the last join with the full count.
        assert!(!sim.logs_with("(4 members)").is_empty(), "{ctx}");
    }
}

#[test]
fn five_hosts_three_masters_are_head_plus_next_two_by_hostname() {
    for seed in SEEDS {
        let ctx = format!("seed {seed}");
        let sim = cluster(seed, &["node-c"], &FIVE, 2, 3);
        assert_converged(&sim, &["node-c", "node-a", "node-b"], &ctx);
        // Non-masters hold no registrations: nobody heartbeats to them.
        assert!(sim.registry(&hp("node-d")).is_empty(), "{ctx}");
        assert!(sim.registry(&hp("node-e")).is_empty(), "{ctx}");
        for agent in sim.agents() {
            let host = agent.me().host.as_str();
            let expect_master = ["node-c", "node-a", "node-b"].contains(&host);
            assert_eq!(agent.is_master_host(), expect_master, "{ctx}: {host}");
        }
    }
}

#[test]
fn dead_non_head_master_is_replaced_and_repopulated_within_one_heartbeat() {
    for seed in SEEDS {
        let ctx = format!("seed {seed}");
        let mut sim = cluster(seed, &["node-c"], &FIVE, 2, 3);
        let t0 = sim.now_ms();
        sim.kill_host(&hp("node-a"));
        let live = sim.running_ids();

        // Everyone moves to [head, b, d] once node-a has been silent for
        // member_ttl (or its members were pruned), and no live node flaps.
        let promoted = hosts(&["node-c", "node-b", "node-d"]);
        let mut no_flap = never_drops(live.clone(), live.clone(), ctx.clone());
        // node-d was never a master, so it starts empty; it must hold every
        // live member within one heartbeat of the promotion.
        let mut adopted_at = None;
        let mut full_at = None;
        sim.run_checked(2 * HB + TTL + 4 * RTT + EXPIRE_EVERY_MS, |s| {
            no_flap(s);
            if adopted_at.is_none() && all_masters_are(s, &promoted) {
                adopted_at = Some(s.now_ms());
            }
            if adopted_at.is_some()
                && full_at.is_none()
                && ids(&s.registry(&hp("node-d")).members()) == live
            {
                full_at = Some(s.now_ms());
            }
        });
        let adopted_at = adopted_at.unwrap_or_else(|| panic!("{ctx}: node-d never promoted"));
        assert!(adopted_at > t0, "{ctx}");
        assert!(
            adopted_at <= t0 + HB + TTL + 4 * RTT + EXPIRE_EVERY_MS,
            "{ctx}: promoted late"
        );
        let full_at = full_at.unwrap_or_else(|| panic!("{ctx}: node-d never repopulated"));
        assert!(
            full_at <= adopted_at + HB,
            "{ctx}: node-d not full within one heartbeat"
        );

        sim.run_for(2 * TTL);
        assert_converged(&sim, &["node-c", "node-b", "node-d"], &ctx);
        for agent in sim.agents() {
            assert!(
                sim.logs_with("member left: node-a-0")
                    .iter()
                    .any(|l| l.node_id == agent.me().node_id),
                "{ctx}: {} did not log node-a-0 leaving",
                agent.me().node_id
            );
        }
        assert!(
            !sim.logs_with("has not answered").is_empty(),
            "{ctx}: the dead master was never reported"
        );
    }
}

/// Kills the head of a converged five-host cluster (seeds: head, node-e) and
/// returns once every node has moved to [a, b, d].
fn cluster_without_head(seed: u64, ctx: &str) -> Sim {
    let mut sim = cluster(seed, &["node-c", "node-e"], &FIVE, 2, 3);
    sim.kill_host(&hp("node-c"));
    let live = sim.running_ids();
    let mut no_flap = never_drops(live.clone(), live, ctx.to_owned());
    let without_head = hosts(&["node-a", "node-b", "node-d"]);
    let mut moved = false;
    sim.run_checked(HB + TTL + 4 * RTT + EXPIRE_EVERY_MS, |s| {
        no_flap(s);
        moved |= all_masters_are(s, &without_head);
    });
    assert!(moved, "{ctx}: masters never moved off the dead head");
    sim
}

#[test]
fn head_death_keeps_membership_and_new_node_joins_through_second_seed() {
    for seed in SEEDS {
        let ctx = format!("seed {seed}");
        let mut sim = cluster_without_head(seed, &ctx);
        let survivors = sim.running_ids();

        // A brand-new node: its first seed (the head) is down.
        let t1 = sim.now_ms();
        sim.up_host(&hp("node-f"));
        sim.start_node(&hp("node-f"), "node-f-0");
        let mut no_flap = never_drops(survivors.clone(), survivors.clone(), ctx.clone());
        let mut joined_at = None;
        sim.run_checked(HB + 4 * RTT, |s| {
            no_flap(s);
            if joined_at.is_none() && s.agent(&hp("node-f"), "node-f-0").phase() == Phase::Joined {
                joined_at = Some(s.now_ms());
            }
        });
        let joined_at = joined_at.unwrap_or_else(|| panic!("{ctx}: node-f-0 never joined"));
        assert!(joined_at <= t1 + HB + 4 * RTT, "{ctx}");
        let joined = sim.logs_with("discovery: joined via");
        let line = joined
            .iter()
            .rfind(|l| l.node_id == "node-f-0")
            .unwrap_or_else(|| panic!("{ctx}: no join line"));
        assert!(
            !line.message.contains("via node-c"),
            "{ctx}: {}",
            line.message
        );

        // Everyone learns of node-f-0 within a heartbeat; after its own
        // member_ttl node-f-0 also drops the dead head from its masters.
        let live = sim.running_ids();
        let everyone_sees_f = sim.run_until_true(HB + 2 * RTT, |s| {
            s.agents()
                .all(|a| ids(a.live_members()).contains("node-f-0"))
        });
        assert!(everyone_sees_f.is_some(), "{ctx}: node-f-0 not seen by all");
        sim.run_checked(2 * TTL, never_drops(live.clone(), live, ctx.clone()));
        assert_converged(&sim, &["node-a", "node-b", "node-d"], &ctx);
        // node-e (the second seed) only referred; it never became a master.
        assert!(sim.registry(&hp("node-e")).is_empty(), "{ctx}");
    }
}

#[test]
fn single_master_head_death_does_not_flap_membership() {
    let names = ["node-c", "node-a", "node-b", "node-d"];
    for seed in SEEDS {
        let ctx = format!("seed {seed}");
        let mut sim = cluster(seed, &["node-c", "node-b"], &names, 2, 1);
        assert_converged(&sim, &["node-c"], &ctx);
        sim.kill_host(&hp("node-c"));
        let live = sim.running_ids();
        // The only registry is gone; node-a starts empty. Its partial list
        // must not remove anyone until every member had time to register.
        sim.run_checked(
            4 * TTL,
            never_drops(live.clone(), live.clone(), ctx.clone()),
        );
        assert_converged(&sim, &["node-a"], &ctx);
        for agent in sim.agents() {
            assert!(!ids(agent.live_members()).contains("node-c-0"), "{ctx}");
        }
    }
}

#[test]
fn returning_head_is_pinned_first_again() {
    for seed in SEEDS {
        let ctx = format!("seed {seed}");
        let mut sim = cluster_without_head(seed, &ctx);
        sim.run_for(TTL);
        assert_converged(&sim, &["node-a", "node-b", "node-d"], &ctx);
        let survivors = sim.running_ids();

        let revived_at = sim.now_ms();
        sim.up_host(&hp("node-c"));
        sim.start_node(&hp("node-c"), "node-c-0");
        sim.start_node(&hp("node-c"), "node-c-1");
        let pinned = hosts(&["node-c", "node-a", "node-b"]);
        // Dead masters are probed every member_ttl; the head answers and
        // takes its first place back.
        let mut no_flap = never_drops(survivors.clone(), survivors.clone(), ctx.clone());
        let mut back_at = None;
        let mut full_at = None;
        sim.run_checked(TTL + 3 * HB + 4 * RTT, |s| {
            no_flap(s);
            if back_at.is_none() && all_masters_are(s, &pinned) {
                back_at = Some(s.now_ms());
            }
            if back_at.is_some() && full_at.is_none() {
                let live = s.running_ids();
                if ids(&s.registry(&hp("node-c")).members()) == live {
                    full_at = Some(s.now_ms());
                }
            }
        });
        let back_at = back_at.unwrap_or_else(|| panic!("{ctx}: head not pinned again"));
        assert!(
            back_at <= revived_at + TTL + 2 * HB + 4 * RTT,
            "{ctx}: head pinned late"
        );
        let full_at = full_at.unwrap_or_else(|| panic!("{ctx}: head not repopulated"));
        assert!(full_at <= back_at + HB, "{ctx}: head repopulated late");
        assert!(
            !sim.logs_with("node-c:31998 answers again").is_empty(),
            "{ctx}"
        );

        // node-d is demoted: nobody heartbeats to it, so its registry drains
        // by member_ttl (soft state, nothing to clean up).
        sim.run_for(TTL + HB);
        assert_converged(&sim, &["node-c", "node-a", "node-b"], &ctx);
        assert!(sim.registry(&hp("node-d")).is_empty(), "{ctx}");
    }
}

fn three_hosts(seed: u64) -> Sim {
    cluster(seed, &["node-a"], &["node-a", "node-b", "node-c"], 2, 3)
}

#[test]
fn silent_node_is_pruned_after_member_ttl() {
    let masters = hosts(&["node-a", "node-b", "node-c"]);
    for seed in SEEDS {
        let ctx = format!("seed {seed}");
        let mut sim = three_hosts(seed);
        assert_converged(&sim, &["node-a", "node-b", "node-c"], &ctx);
        sim.crash_node(&hp("node-b"), "node-b-1");
        // Heartbeats sent just before the crash may still land; the clock
        // starts at the last one each master received.
        let mut last_seen: BTreeMap<usize, u64> = BTreeMap::new();
        let mut gone_at: BTreeMap<usize, u64> = BTreeMap::new();
        sim.run_checked(TTL + HB, |s| {
            for (i, m) in masters.iter().enumerate() {
                match s.registry(m).last_seen_ms("node-b-1") {
                    Some(seen) => {
                        last_seen.insert(i, seen);
                    }
                    None => {
                        gone_at.entry(i).or_insert(s.now_ms());
                    }
                }
            }
        });
        for (i, seen) in &last_seen {
            let gone = gone_at[i];
            assert!(
                gone > seen + TTL,
                "{ctx}: pruned early at {gone} (seen {seen})"
            );
            assert!(
                gone <= seen + TTL + EXPIRE_EVERY_MS,
                "{ctx}: pruned late at {gone}"
            );
        }
        // Each peer drops it at its next heartbeat after the prune (the
        // acknowledged version changed, so it pulls the list).
        let pruned = *gone_at.values().max().expect("three masters");
        sim.run_for(HB);
        let left = sim.logs_with("member left: node-b-1 (5 members)");
        assert!(
            left.iter().all(|l| l.at_ms <= pruned + HB + 2 * RTT),
            "{ctx}: {left:?} (pruned by {pruned})"
        );
        let writers: BTreeSet<&str> = left.iter().map(|l| l.node_id.as_str()).collect();
        assert_eq!(writers.len(), 5, "{ctx}: {writers:?}");
    }
}

#[test]
fn clean_shutdown_deregisters_immediately() {
    let masters = hosts(&["node-a", "node-b", "node-c"]);
    for seed in SEEDS {
        let ctx = format!("seed {seed}");
        let mut sim = three_hosts(seed);
        let t0 = sim.now_ms();
        sim.stop_node(&hp("node-b"), "node-b-1");
        sim.run_for(LATENCY_MAX_MS);
        for m in &masters {
            assert!(sim.registry(m).get("node-b-1").is_none(), "{ctx}: {m}");
        }
        // Peers notice at their next heartbeat, far sooner than member_ttl.
        let noticed = sim.run_until_true(HB + 2 * RTT, |s| {
            s.agents()
                .all(|a| !ids(a.live_members()).contains("node-b-1"))
        });
        assert!(noticed.is_some_and(|t| t <= t0 + HB + 3 * RTT), "{ctx}");
        assert!(!sim.logs_with("node-b-1 leaving").is_empty(), "{ctx}");
        assert_eq!(sim.logs_with("member left: node-b-1").len(), 5, "{ctx}");
    }
}

/// A check for [`Sim::run_checked`]: no running agent lists `gone` (a node
/// that left cleanly) in its view any more.
fn never_returns(gone: String, ctx: String) -> impl FnMut(&Sim) {
    move |sim| {
        for agent in sim.agents() {
            assert!(
                !ids(agent.live_members()).contains(&gone),
                "{ctx}: at {} ms {} lists {gone} again",
                sim.now_ms(),
                agent.me().node_id
            );
        }
    }
}

/// Runs until no running agent lists `gone`, at most `limit_ms`; returns
/// the time that first held.
fn dropped_by_all(sim: &mut Sim, gone: &str, limit_ms: u64) -> Option<u64> {
    sim.run_until_true(limit_ms, |s| {
        s.agents().all(|a| !ids(a.live_members()).contains(gone))
    })
}

#[test]
fn clean_shutdown_right_after_start_is_seen_within_a_heartbeat() {
    // A long member_ttl: no master has been one for member_ttl (settled)
    // when the node leaves, so unsettled masters' lists must already honour
    // a deregistration; pruning cannot be what removes it.
    const LONG_TTL: u64 = 30_000;
    let names = ["node-a", "node-b", "node-c"];
    for seed in SEEDS {
        let ctx = format!("seed {seed}");
        let mut cfg = config(&["node-a"], 3);
        cfg.member_ttl_ms = LONG_TTL;
        let mut sim = Sim::new(seed, cfg, LATENCY_MAX_MS);
        start_nodes(&mut sim, seed, &names, 2);
        let everyone = sim.running_ids();
        let formed = sim
            .run_until_true(3 * HB, |s| {
                s.agents().all(|a| ids(a.live_members()) == everyone)
            })
            .unwrap_or_else(|| panic!("{ctx}: the cluster never formed"));
        assert!(formed + HB + 3 * RTT < LONG_TTL, "{ctx}: formed late");

        let t0 = sim.now_ms();
        sim.stop_node(&hp("node-b"), "node-b-1");
        let noticed = dropped_by_all(&mut sim, "node-b-1", HB + 3 * RTT);
        assert!(
            noticed.is_some_and(|t| t <= t0 + HB + 3 * RTT),
            "{ctx}: node-b-1 still listed one heartbeat after leaving"
        );
        assert_eq!(sim.logs_with("member left: node-b-1").len(), 5, "{ctx}");

        // The masters settle later on: nobody flaps, nobody brings the
        // leaver back, and the views end where they are.
        let live = sim.running_ids();
        let mut no_flap = never_drops(live.clone(), live, ctx.clone());
        let mut gone = never_returns("node-b-1".to_owned(), ctx.clone());
        sim.run_checked(LONG_TTL + 2 * HB, |s| {
            no_flap(s);
            gone(s);
        });
        assert_eq!(sim.logs_with("member left: node-b-1").len(), 5, "{ctx}");
        assert_eq!(sim.logs_with("member left").len(), 5, "{ctx}");
        assert_converged(&sim, &names, &ctx);
    }
}

#[test]
fn clean_shutdown_of_a_master_hosts_only_rank_is_seen_within_a_heartbeat() {
    let names = ["node-a", "node-b", "node-c"];
    // The leaver's host runs no other rank, so its discovery service stops
    // with it, and everyone keeps that master's last list (still naming the
    // leaver) until they declare it dead member_ttl later: first a plain
    // master, then the pinned head.
    let cases = [
        ("node-c", ["node-a", "node-b", "node-d"]),
        ("node-a", ["node-b", "node-c", "node-d"]),
    ];
    for (leaver_host, masters_after) in cases {
        for seed in SEEDS {
            let ctx = format!("seed {seed}, leaver on {leaver_host}");
            let mut sim = cluster(seed, &["node-a", "node-b"], &names, 1, 3);
            assert_converged(&sim, &names, &ctx);

            let leaver = node(leaver_host, 0);
            let t0 = sim.now_ms();
            sim.stop_node(&hp(leaver_host), &leaver);
            sim.kill_host(&hp(leaver_host));
            let noticed = dropped_by_all(&mut sim, &leaver, HB + 3 * RTT);
            assert!(
                noticed.is_some_and(|t| t <= t0 + HB + 3 * RTT),
                "{ctx}: {leaver} still listed one heartbeat after leaving"
            );
            assert_eq!(
                sim.logs_with(&format!("member left: {leaver}")).len(),
                2,
                "{ctx}"
            );

            // A node joins as the masters forget their tombstones, so
            // everyone pulls lists that no longer report the departure;
            // nobody brings the leaver back, and nobody live flaps.
            let live = sim.running_ids();
            let mut no_flap = never_drops(live.clone(), live, ctx.clone());
            let mut gone = never_returns(leaver.clone(), ctx.clone());
            let join_at = t0 + TTL - HB + 3 * EXPIRE_EVERY_MS / 2;
            sim.run_checked(join_at - sim.now_ms(), |s| {
                no_flap(s);
                gone(s);
            });
            sim.up_host(&hp("node-d"));
            sim.start_node(&hp("node-d"), "node-d-0");
            sim.run_checked(4 * TTL, |s| {
                no_flap(s);
                gone(s);
            });
            assert_eq!(
                sim.logs_with(&format!("member left: {leaver}")).len(),
                2,
                "{ctx}: {leaver} came back"
            );
            assert_converged(&sim, &masters_after, &ctx);
        }
    }
}

#[test]
fn restarted_node_replaces_its_old_record() {
    let masters = hosts(&["node-a", "node-b", "node-c"]);
    for seed in SEEDS {
        let ctx = format!("seed {seed}");
        let mut sim = three_hosts(seed);
        let old = sim.agent(&hp("node-b"), "node-b-1").me().incarnation;
        let epochs: BTreeMap<String, u64> = sim
            .agents()
            .map(|a| (a.me().node_id.clone(), a.membership_epoch()))
            .collect();
        // Crash and come straight back, long before member_ttl.
        sim.crash_node(&hp("node-b"), "node-b-1");
        let new = sim.start_node(&hp("node-b"), "node-b-1");
        assert!(new > old);
        let has_new = |members: &[Member]| {
            members
                .iter()
                .filter(|m| m.node_id == "node-b-1")
                .map(|m| m.incarnation)
                .collect::<Vec<_>>()
                == vec![new]
        };
        let done = sim.run_until_true(HB + 4 * RTT, |s| {
            masters.iter().all(|m| has_new(&s.registry(m).members()))
                && s.agents().all(|a| has_new(a.live_members()))
        });
        assert!(done.is_some(), "{ctx}: new incarnation not everywhere");
        for (id, epoch) in &epochs {
            if id != "node-b-1" {
                let agent = sim.agents().find(|a| &a.me().node_id == id).expect("runs");
                assert!(agent.membership_epoch() > *epoch, "{ctx}: {id}");
            }
        }
        let restarted = sim.logs_with(&format!(
            "member restarted: node-b-1 (incarnation {old} -> {new}"
        ));
        assert_eq!(restarted.len(), 5, "{ctx}");
        assert!(sim.logs_with("member left: node-b-1").is_empty(), "{ctx}");
        sim.run_for(2 * TTL);
        assert_converged(&sim, &["node-a", "node-b", "node-c"], &ctx);
    }
}

#[test]
fn a_node_back_with_a_lower_incarnation_after_a_clean_stop_is_listed_again() {
    let masters = hosts(&["node-a", "node-b", "node-c"]);
    for seed in SEEDS {
        let ctx = format!("seed {seed}");
        let mut sim = three_hosts(seed);
        sim.stop_node(&hp("node-b"), "node-b-1");
        sim.run_for(HB);
        // Its clock stepped back: the new process has a lower incarnation
        // than the one that deregistered. The masters refuse it while their
        // tombstone lasts (member_ttl), then take it.
        sim.start_node_at(&hp("node-b"), "node-b-1", 0);
        let listed = |members: &[Member]| members.iter().any(|m| m.node_id == "node-b-1");
        let back = sim.run_until_true(4 * TTL, |s| {
            masters.iter().all(|m| listed(&s.registry(m).members()))
                && s.agents().all(|a| listed(a.live_members()))
        });
        assert!(back.is_some(), "{ctx}: node-b-1 hidden from some view");
        sim.run_for(2 * TTL);
        assert!(sim.agents().all(|a| listed(a.live_members())), "{ctx}");
    }
}

#[test]
fn node_started_before_the_head_waits_logs_and_joins_when_it_appears() {
    for seed in SEEDS {
        let ctx = format!("seed {seed}");
        let mut sim = Sim::new(seed, config(&["node-a"], 3), LATENCY_MAX_MS);
        sim.up_host(&hp("node-b"));
        sim.start_node(&hp("node-b"), "node-b-0");
        // No self-election: node-b waits instead of forming a cluster of one.
        sim.run_checked(35_000, |s| {
            let agent = s.agent(&hp("node-b"), "node-b-0");
            assert_eq!(agent.phase(), Phase::Bootstrapping, "{ctx}");
            assert!(agent.live_members().is_empty(), "{ctx}");
            assert!(!agent.masters().contains(&hp("node-b")), "{ctx}");
            assert!(s.registry(&hp("node-b")).is_empty(), "{ctx}");
        });
        let waits = sim.logs_with("still waiting for a discovery master");
        let times: Vec<u64> = waits.iter().map(|l| l.at_ms).collect();
        assert_eq!(
            times,
            vec![HB, HB + 10_000, HB + 20_000, HB + 30_000],
            "{ctx}"
        );
        assert!(waits.iter().all(|l| l.level == LogLevel::Warn), "{ctx}");
        assert!(waits[0].message.contains("port 31998"), "{ctx}");

        // A dedicated discovery head (no ranks of its own) comes up.
        let t1 = sim.now_ms();
        sim.up_host(&hp("node-a"));
        let joined = sim.run_until_true(HB + 4 * RTT, |s| {
            s.agent(&hp("node-b"), "node-b-0").phase() == Phase::Joined
        });
        assert!(joined.is_some_and(|t| t <= t1 + HB + 4 * RTT), "{ctx}");
        sim.run_for(2 * TTL);
        assert_converged(&sim, &["node-a", "node-b"], &ctx);
        assert_eq!(
            sim.logs_with("still waiting").len(),
            4,
            "{ctx}: logged after joining"
        );
    }
}

#[test]
fn same_seed_replays_the_same_history() {
    let run = |seed| {
        let mut sim = cluster_without_head(seed, "replay");
        sim.up_host(&hp("node-f"));
        sim.start_node(&hp("node-f"), "node-f-0");
        sim.run_for(TTL);
        sim.logs().to_vec()
    };
    assert_eq!(run(3), run(3));
}
