//! Server selection: smooth weighted round robin (nginx's algorithm) over a
//! tree of services. Pure: no IO, no clocks, no shared state.
//!
//! Each worker owns one `Balancer` built from the snapshot, so selection is
//! deterministic for a given sequence of calls on that worker and needs no
//! locks. A `loadBalancer` service spreads over its servers by their weights; a
//! `weighted` service spreads over its child services by their weights, then
//! the child selects. During one connection's failover the servers already
//! tried are skipped (nginx skips them the same way), so each server is tried
//! at most once and the rotation of the others is not disturbed by the skip.

use crate::model::{Config, ServiceKind};

/// Index of a server in the flattened server list of a snapshot.
pub type ServerId = usize;

#[derive(Debug)]
struct Node {
    /// Children: server ids for a load balancer, service indices for weighted.
    children: Vec<usize>,
    weights: Vec<i64>,
    current: Vec<i64>,
    leaf: bool,
}

/// Per-worker selection state for every service of one snapshot.
#[derive(Debug)]
pub struct Balancer {
    nodes: Vec<Node>,
    /// `(service index, server index within that service)` for each ServerId.
    servers: Vec<(usize, usize)>,
}

impl Balancer {
    pub fn new(cfg: &Config) -> Balancer {
        let mut servers = Vec::new();
        let mut nodes = Vec::with_capacity(cfg.services.len());
        for (si, svc) in cfg.services.iter().enumerate() {
            let node = match &svc.kind {
                ServiceKind::LoadBalancer(lb) => {
                    let mut children = Vec::with_capacity(lb.servers.len());
                    let mut weights = Vec::with_capacity(lb.servers.len());
                    for (i, s) in lb.servers.iter().enumerate() {
                        children.push(servers.len());
                        servers.push((si, i));
                        weights.push(i64::from(s.weight));
                    }
                    Node {
                        current: vec![0; children.len()],
                        children,
                        weights,
                        leaf: true,
                    }
                }
                ServiceKind::Weighted(ws) => Node {
                    children: ws.iter().map(|w| w.service).collect(),
                    weights: ws.iter().map(|w| i64::from(w.weight)).collect(),
                    current: vec![0; ws.len()],
                    leaf: false,
                },
            };
            nodes.push(node);
        }
        Balancer { nodes, servers }
    }

    /// `(service index, server index)` of a server id.
    pub fn server(&self, id: ServerId) -> (usize, usize) {
        self.servers[id]
    }

    /// Pick the next server of `service`, skipping the ids in `tried`.
    /// `None` when every server with a non-zero weight was tried.
    pub fn pick(&mut self, service: usize, tried: &[ServerId]) -> Option<ServerId> {
        // The config build step rejects cycles, so the depth is bounded by the
        // number of services.
        let mut node_idx = service;
        for _ in 0..=self.nodes.len() {
            let slot = {
                let eligible: Vec<bool> = {
                    let node = &self.nodes[node_idx];
                    (0..node.children.len())
                        .map(|i| {
                            node.weights[i] > 0
                                && if node.leaf {
                                    !tried.contains(&node.children[i])
                                } else {
                                    self.has_candidate(node.children[i], tried, 0)
                                }
                        })
                        .collect()
                };
                smooth_pick(&mut self.nodes[node_idx], &eligible)?
            };
            let node = &self.nodes[node_idx];
            if node.leaf {
                return Some(node.children[slot]);
            }
            node_idx = node.children[slot];
        }
        None
    }

    fn has_candidate(&self, service: usize, tried: &[ServerId], depth: usize) -> bool {
        if depth > self.nodes.len() {
            return false;
        }
        let node = &self.nodes[service];
        node.children.iter().zip(&node.weights).any(|(&c, &w)| {
            w > 0
                && if node.leaf {
                    !tried.contains(&c)
                } else {
                    self.has_candidate(c, tried, depth + 1)
                }
        })
    }
}

/// nginx `ngx_http_upstream_get_peer`: every eligible child gains its weight,
/// the one with the highest current value wins and loses the total. Over a
/// cycle each child is chosen `weight` times, spread out (5:1:1 gives
/// a a b a c a a).
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
        }
    }

    #[test]
    fn smooth_sequence_5_1_1_matches_nginx() {
        let mut b = Balancer {
            nodes: vec![lb_node(&[5, 1, 1], 0)],
            servers: vec![(0, 0), (0, 1), (0, 2)],
        };
        let seq: Vec<usize> = (0..14).map(|_| b.pick(0, &[]).unwrap()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn skips_tried_and_zero_weight() {
        let mut b = Balancer {
            nodes: vec![lb_node(&[1, 0, 1], 0)],
            servers: vec![(0, 0), (0, 1), (0, 2)],
        };
        assert_eq!(b.pick(0, &[0]), Some(2));
        assert_eq!(b.pick(0, &[0, 2]), None);
    }

    #[test]
    fn weighted_tree_splits_90_10() {
        let mut b = Balancer {
            nodes: vec![
                Node {
                    children: vec![1, 2],
                    weights: vec![90, 10],
                    current: vec![0, 0],
                    leaf: false,
                },
                lb_node(&[1], 0),
                lb_node(&[1], 1),
            ],
            servers: vec![(1, 0), (2, 0)],
        };
        let mut counts = [0; 2];
        for _ in 0..1000 {
            counts[b.pick(0, &[]).unwrap()] += 1;
        }
        assert_eq!(counts, [900, 100]);
        // A child whose only server was tried is skipped.
        assert_eq!(b.pick(0, &[0]), Some(1));
        assert_eq!(b.pick(0, &[0, 1]), None);
    }
}
