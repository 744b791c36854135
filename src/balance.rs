//! Server selection: smooth weighted round robin (nginx's algorithm) over a
//! tree of services, skipping servers that are down. Pure: no IO, no clocks
//! (the caller passes `now`), no shared state.
//!
//! Each worker owns one `Balancer` built from the snapshot, so selection is
//! deterministic for a given sequence of calls on that worker and needs no
//! locks. A `loadBalancer` service spreads over its servers by their weights; a
//! `weighted` service spreads over its child services by their weights, then
//! the child selects. A server is passed over when
//! - it was already tried during this connection's failover (nginx skips them
//!   the same way, so each server is tried at most once),
//! - the active health check says it is down (the caller's `up` view of the
//!   snapshot's `HealthState`), or
//! - this worker saw `EJECT_AFTER_FAILURES` dial failures in a row to it
//!   (passive ejection) less than `EJECT_COOLDOWN` ago.
//!
//! A weighted child is passed over when it has no server left to try; its
//! servers' active health counts there only when the weighted service has a
//! `healthCheck` (Traefik: without one, the children's status is not
//! propagated, so a child whose servers are all down is still chosen by
//! weight and that connection finds no server).
//!
//! Skipping never disturbs the rotation of the others. Passive ejection is a
//! preference, not a verdict: when every server left is ejected, they are
//! tried anyway (nginx never marks the only server of a group down, Envoy
//! has its panic threshold), so a service whose backend restarted is not
//! kept dark for a whole cool-down after it came back. An actively unhealthy
//! server is never picked (Traefik's behaviour).

use std::time::{Duration, Instant};

use crate::model::{Config, ServiceKind};

/// Index of a server in the flattened server list of a snapshot.
pub type ServerId = usize;

/// Dial failures in a row after which a worker passes a server over. One
/// refusal can be a backend restarting; three in a row are a dead server that
/// would otherwise cost every client a dial attempt.
pub const EJECT_AFTER_FAILURES: u32 = 3;
/// How long a passively ejected server is passed over before it gets one
/// connection again (and is ejected again at once if that one fails too).
/// Short, because active health checks, when configured, do the long-term job.
pub const EJECT_COOLDOWN: Duration = Duration::from_secs(5);

/// `(service index, server index within that service)` for every ServerId:
/// services in config order, each load balancer's servers in order. The
/// snapshot's `HealthState` uses the same numbering.
pub fn flatten(cfg: &Config) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (si, svc) in cfg.services.iter().enumerate() {
        if let ServiceKind::LoadBalancer(lb) = &svc.kind {
            out.extend((0..lb.servers.len()).map(|i| (si, i)));
        }
    }
    out
}

#[derive(Debug)]
struct Node {
    /// Children: server ids for a load balancer, service indices for weighted.
    children: Vec<usize>,
    weights: Vec<i64>,
    current: Vec<i64>,
    leaf: bool,
    /// Weighted node with `healthCheck`: children are judged by their
    /// servers' active health too, not only by what is left to try.
    health_aware: bool,
    /// A failover service (extension): only the first eligible child.
    failover: bool,
}

/// This worker's recent dial results for one server.
#[derive(Debug, Clone, Copy, Default)]
struct Passive {
    /// Dial failures since the last success.
    failures: u32,
    /// Passed over until then.
    ejected_until: Option<Instant>,
}

/// Per-worker selection state for every service of one snapshot.
#[derive(Debug)]
pub struct Balancer {
    nodes: Vec<Node>,
    /// `(service index, server index within that service)` for each ServerId.
    servers: Vec<(usize, usize)>,
    /// Passive ejection, indexed by ServerId.
    passive: Vec<Passive>,
}

impl Balancer {
    pub fn new(cfg: &Config) -> Balancer {
        let servers = flatten(cfg);
        let mut next_id = 0;
        let mut nodes = Vec::with_capacity(cfg.services.len());
        for svc in &cfg.services {
            let node = match &svc.kind {
                ServiceKind::LoadBalancer(lb) => {
                    let children: Vec<usize> = (next_id..next_id + lb.servers.len()).collect();
                    next_id += lb.servers.len();
                    Node {
                        current: vec![0; children.len()],
                        children,
                        weights: lb.servers.iter().map(|s| i64::from(s.weight)).collect(),
                        leaf: true,
                        health_aware: true,
                        failover: false,
                    }
                }
                ServiceKind::Weighted(ws) => Node {
                    children: ws.iter().map(|w| w.service).collect(),
                    weights: ws.iter().map(|w| i64::from(w.weight)).collect(),
                    current: vec![0; ws.len()],
                    leaf: false,
                    health_aware: svc.weighted_health_check,
                    failover: svc.failover,
                },
            };
            nodes.push(node);
        }
        Balancer::from_parts(nodes, servers)
    }

    fn from_parts(nodes: Vec<Node>, servers: Vec<(usize, usize)>) -> Balancer {
        let passive = vec![Passive::default(); servers.len()];
        Balancer {
            nodes,
            servers,
            passive,
        }
    }

    /// `(service index, server index)` of a server id.
    pub fn server(&self, id: ServerId) -> (usize, usize) {
        self.servers[id]
    }

    /// Pick the next server of `service`, skipping the ids in `tried`, the
    /// servers `up` says are down, and (unless nothing else is left) the
    /// servers this worker ejected after repeated dial failures. `None` when
    /// no server with a non-zero weight is left.
    pub fn pick(
        &mut self,
        service: usize,
        tried: &[ServerId],
        up: &impl Fn(ServerId) -> bool,
        now: Instant,
    ) -> Option<ServerId> {
        let passive = &self.passive;
        let untried = |id: ServerId| !tried.contains(&id);
        let rested =
            |id: ServerId| untried(id) && passive[id].ejected_until.is_none_or(|t| now >= t);
        let usable = |id: ServerId| untried(id) && up(id);
        let fresh = |id: ServerId| rested(id) && up(id);
        let tests = Tests {
            fresh: &fresh,
            fresh_reach: &rested,
            usable: &usable,
            usable_reach: &untried,
        };
        pick_in(&mut self.nodes, service, &tests)
    }

    /// Record a dial result. Returns true when this failure ejects the server
    /// (the caller logs it once).
    pub fn dial_result(&mut self, id: ServerId, ok: bool, now: Instant) -> bool {
        let p = &mut self.passive[id];
        if ok {
            *p = Passive::default();
            return false;
        }
        p.failures = p.failures.saturating_add(1);
        // Still counting failures after a cool-down: one more failure ejects
        // again at once (the server is on probation until a dial succeeds).
        if p.failures >= EJECT_AFTER_FAILURES {
            let already = p.ejected_until.is_some_and(|t| now < t);
            p.ejected_until = Some(now + EJECT_COOLDOWN);
            return !already;
        }
        false
    }

    /// Whether this worker currently passes `id` over.
    pub fn ejected(&self, id: ServerId, now: Instant) -> bool {
        self.passive[id].ejected_until.is_some_and(|t| now < t)
    }
}

/// What a server must pass to be picked: the preferred test, and the last
/// resort when no child of a node passes it (ejected servers); each with a
/// `reach` form without the health verdicts, for children of a weighted node
/// that does not follow its children's health.
struct Tests<'t> {
    fresh: &'t dyn Fn(ServerId) -> bool,
    fresh_reach: &'t dyn Fn(ServerId) -> bool,
    usable: &'t dyn Fn(ServerId) -> bool,
    usable_reach: &'t dyn Fn(ServerId) -> bool,
}

/// Walk down from `service` to a server. At each node the children with a
/// server passing `fresh` are eligible, else those with one passing
/// `usable`. Preferring at every level is the same as preferring over the
/// whole tree: a child is eligible only if a server below it passes.
fn pick_in(nodes: &mut [Node], service: usize, t: &Tests<'_>) -> Option<ServerId> {
    // The config build step rejects cycles, so the depth is bounded by the
    // number of services.
    let mut node_idx = service;
    for _ in 0..=nodes.len() {
        let slot = {
            let node = &nodes[node_idx];
            let eligible_by = |ok: &dyn Fn(ServerId) -> bool, reach: &dyn Fn(ServerId) -> bool| {
                (0..node.children.len())
                    .map(|i| {
                        node.weights[i] > 0
                            && if node.leaf {
                                ok(node.children[i])
                            } else if node.health_aware {
                                has_candidate(nodes, node.children[i], ok, 0)
                            } else {
                                has_candidate(nodes, node.children[i], reach, 0)
                            }
                    })
                    .collect::<Vec<bool>>()
            };
            let mut eligible = eligible_by(t.fresh, t.fresh_reach);
            if !eligible.contains(&true) {
                eligible = eligible_by(t.usable, t.usable_reach);
            }
            if node.failover {
                // `service` while it has a server to give, else `fallback`.
                if let Some(first) = eligible.iter().position(|&e| e) {
                    eligible.iter_mut().skip(first + 1).for_each(|e| *e = false);
                }
            }
            smooth_pick(&mut nodes[node_idx], &eligible)?
        };
        let node = &nodes[node_idx];
        if node.leaf {
            return Some(node.children[slot]);
        }
        node_idx = node.children[slot];
    }
    None
}

fn has_candidate(
    nodes: &[Node],
    service: usize,
    ok: &dyn Fn(ServerId) -> bool,
    depth: usize,
) -> bool {
    if depth > nodes.len() {
        return false;
    }
    let node = &nodes[service];
    node.children.iter().zip(&node.weights).any(|(&c, &w)| {
        w > 0
            && if node.leaf {
                ok(c)
            } else {
                has_candidate(nodes, c, ok, depth + 1)
            }
    })
}

/// nginx `ngx_http_upstream_get_peer`: every eligible child gains its weight,
/// the one with the highest current value wins and loses the total. Over a
/// cycle each child is chosen `weight` times, spread out (5:1:1 gives
/// a a b a c a a). Nothing changes when no child is eligible.
fn smooth_pick(node: &mut Node, eligible: &[bool]) -> Option<usize> {
    let mut total = 0i64;
    let mut best: Option<usize> = None;
    for (i, _) in eligible.iter().enumerate().filter(|(_, &ok)| ok) {
        node.current[i] += node.weights[i];
        total += node.weights[i];
        match best {
            Some(b) if node.current[b] >= node.current[i] => {}
            _ => best = Some(i),
        }
    }
    let b = best?;
    node.current[b] -= total;
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb_node(weights: &[i64], first_id: usize) -> Node {
        Node {
            children: (first_id..first_id + weights.len()).collect(),
            weights: weights.to_vec(),
            current: vec![0; weights.len()],
            leaf: true,
            health_aware: true,
            failover: false,
        }
    }

    fn all_up(_: ServerId) -> bool {
        true
    }

    /// One load balancer over servers 0..n with these weights.
    fn one_lb(weights: &[i64]) -> Balancer {
        Balancer::from_parts(
            vec![lb_node(weights, 0)],
            (0..weights.len()).map(|i| (0, i)).collect(),
        )
    }

    fn tree_90_10() -> Balancer {
        tree_90_10_health(true)
    }

    /// `health_aware`: the weighted root has a `healthCheck`.
    fn tree_90_10_health(health_aware: bool) -> Balancer {
        Balancer::from_parts(
            vec![
                Node {
                    children: vec![1, 2],
                    weights: vec![90, 10],
                    current: vec![0, 0],
                    leaf: false,
                    health_aware,
                    failover: false,
                },
                lb_node(&[1], 0),
                lb_node(&[1], 1),
            ],
            vec![(1, 0), (2, 0)],
        )
    }

    #[test]
    fn smooth_sequence_5_1_1_matches_nginx() {
        let mut b = one_lb(&[5, 1, 1]);
        let now = Instant::now();
        let seq: Vec<usize> = (0..14)
            .map(|_| b.pick(0, &[], &all_up, now).unwrap())
            .collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn skips_tried_and_zero_weight() {
        let mut b = one_lb(&[1, 0, 1]);
        let now = Instant::now();
        assert_eq!(b.pick(0, &[0], &all_up, now), Some(2));
        assert_eq!(b.pick(0, &[0, 2], &all_up, now), None);
    }

    #[test]
    fn weighted_tree_splits_90_10() {
        let mut b = tree_90_10();
        let now = Instant::now();
        let mut counts = [0; 2];
        for _ in 0..1000 {
            counts[b.pick(0, &[], &all_up, now).unwrap()] += 1;
        }
        assert_eq!(counts, [900, 100]);
        // A child whose only server was tried is skipped.
        assert_eq!(b.pick(0, &[0], &all_up, now), Some(1));
        assert_eq!(b.pick(0, &[0, 1], &all_up, now), None);
    }

    #[test]
    fn unhealthy_is_skipped_like_tried_and_keeps_the_others_order() {
        // 5:1:1 with server 1 down: the others keep nginx's smooth 5:1 order
        // (a a a b a a, the sequence of weights 5 and 1), exactly as if
        // server 1 had weight 0.
        let mut down = one_lb(&[5, 1, 1]);
        let mut zero = one_lb(&[5, 0, 1]);
        let now = Instant::now();
        let up = |id: ServerId| id != 1;
        let a: Vec<usize> = (0..12)
            .map(|_| down.pick(0, &[], &up, now).unwrap())
            .collect();
        let b: Vec<usize> = (0..12)
            .map(|_| zero.pick(0, &[], &all_up, now).unwrap())
            .collect();
        assert_eq!(a, b);
        assert_eq!(a, vec![0, 0, 0, 2, 0, 0, 0, 0, 0, 2, 0, 0]);
        // Down and tried together leave nothing; down servers are never a
        // last resort.
        assert_eq!(down.pick(0, &[0, 2], &up, now), None);
        let none_up = |_: ServerId| false;
        assert_eq!(down.pick(0, &[], &none_up, now), None);
    }

    #[test]
    fn unhealthy_child_service_is_skipped_in_a_weighted_tree() {
        let mut b = tree_90_10();
        let now = Instant::now();
        let up = |id: ServerId| id != 0;
        for _ in 0..20 {
            assert_eq!(b.pick(0, &[], &up, now), Some(1));
        }
        // Back up: the split resumes.
        let mut counts = [0; 2];
        for _ in 0..1000 {
            counts[b.pick(0, &[], &all_up, now).unwrap()] += 1;
        }
        assert_eq!(counts, [900, 100]);
    }

    #[test]
    fn without_a_weighted_health_check_a_down_child_is_still_chosen_by_weight() {
        // Traefik: no status propagation, so the 90:10 split goes on and the
        // connections that land on the down child find no server.
        let mut b = tree_90_10_health(false);
        let now = Instant::now();
        let up = |id: ServerId| id != 0;
        let picks: Vec<Option<ServerId>> = (0..10).map(|_| b.pick(0, &[], &up, now)).collect();
        assert_eq!(picks.iter().filter(|p| p.is_none()).count(), 9);
        assert_eq!(picks.iter().filter(|p| **p == Some(1)).count(), 1);
        // Failover after dial failures still moves to the other child.
        assert_eq!(b.pick(0, &[0], &all_up, now), Some(1));
    }

    #[test]
    fn passive_ejection_after_three_failures_in_a_row_for_the_cooldown() {
        let mut b = one_lb(&[1, 1]);
        let t0 = Instant::now();
        // Failures interrupted by a success do not eject.
        assert!(!b.dial_result(0, false, t0));
        assert!(!b.dial_result(0, false, t0));
        assert!(!b.dial_result(0, true, t0));
        assert!(!b.dial_result(0, false, t0));
        assert!(!b.dial_result(0, false, t0));
        assert!(!b.ejected(0, t0));
        // The third in a row ejects (reported once).
        assert!(b.dial_result(0, false, t0));
        assert!(b.ejected(0, t0));
        assert!(!b.dial_result(0, false, t0));
        // During the cool-down only server 1 is picked.
        let during = t0 + EJECT_COOLDOWN - Duration::from_millis(1);
        for _ in 0..10 {
            assert_eq!(b.pick(0, &[], &all_up, during), Some(1));
        }
        // After it, server 0 is back in the rotation, on probation: one more
        // failure ejects it again at once.
        let after = t0 + EJECT_COOLDOWN;
        assert!(!b.ejected(0, after));
        let seq: Vec<usize> = (0..4)
            .map(|_| b.pick(0, &[], &all_up, after).unwrap())
            .collect();
        assert_eq!(seq.iter().filter(|&&id| id == 0).count(), 2);
        assert!(b.dial_result(0, false, after));
        assert!(b.ejected(0, after));
        // A success clears everything.
        b.dial_result(0, true, after);
        assert!(!b.ejected(0, after));
    }

    #[test]
    fn ejected_servers_are_a_last_resort_but_down_ones_are_not() {
        let mut b = one_lb(&[1, 1]);
        let now = Instant::now();
        for id in [0, 1] {
            for _ in 0..EJECT_AFTER_FAILURES {
                b.dial_result(id, false, now);
            }
            assert!(b.ejected(id, now));
        }
        // Both ejected: both are still tried, each once.
        let first = b.pick(0, &[], &all_up, now).unwrap();
        let second = b.pick(0, &[first], &all_up, now).unwrap();
        assert_ne!(first, second);
        assert_eq!(b.pick(0, &[first, second], &all_up, now), None);
        // One ejected, the other actively down: nothing.
        let only_0 = |id: ServerId| id == 0;
        assert_eq!(b.pick(0, &[0], &only_0, now), None);
        // One ejected, one fresh: only the fresh one.
        let mut c = one_lb(&[1, 1]);
        for _ in 0..EJECT_AFTER_FAILURES {
            c.dial_result(0, false, now);
        }
        for _ in 0..5 {
            assert_eq!(c.pick(0, &[], &all_up, now), Some(1));
        }
    }
}
