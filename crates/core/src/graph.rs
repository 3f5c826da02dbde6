//! The resource graph: one node per resource instance, an edge from each dependency to
//! its dependent; topological order, cycle detection with the cycle's path, DOT output.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use petgraph::Direction;
use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use crate::{Address, Resource};

/// Why a set of resources does not form a DAG.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// A resource depends on an address that no resource has.
    #[error("`{from}` depends on `{to}`, which is not defined")]
    UnknownDependency {
        /// The dependent.
        from: Address,
        /// The missing dependency.
        to: Address,
    },
    /// The dependencies go round in a circle. The path starts and ends at the same node.
    #[error("dependency cycle: {}", display_path(.0))]
    Cycle(Vec<Address>),
}

fn display_path(path: &[Address]) -> String {
    path.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// A DAG of resource instances; edges point from a dependency to its dependent (the
/// order of creation).
#[derive(Debug, Clone, Default)]
pub struct ResourceGraph {
    graph: DiGraph<Address, ()>,
    index: HashMap<Address, NodeIndex>,
    order: Vec<NodeIndex>,
}

impl ResourceGraph {
    /// Build the graph of `resources`, with edges from references and `depends_on`.
    pub fn build(resources: &[Resource]) -> Result<Self, GraphError> {
        Self::from_edges(
            resources
                .iter()
                .map(|r| (r.address.clone(), r.dependencies())),
        )
    }

    /// Build a graph from (node, its dependencies) pairs. Every dependency must be a node.
    pub fn from_edges(
        nodes: impl IntoIterator<Item = (Address, Vec<Address>)>,
    ) -> Result<Self, GraphError> {
        let nodes: Vec<(Address, Vec<Address>)> = nodes.into_iter().collect();
        let mut graph = DiGraph::with_capacity(nodes.len(), nodes.len());
        let mut index = HashMap::with_capacity(nodes.len());
        for (a, _) in &nodes {
            let i = graph.add_node(a.clone());
            index.insert(a.clone(), i);
        }
        // `add_edge` after de-duplicating per node: `update_edge` scans the source's
        // edges on every call, quadratic for a network with 10,000 machines.
        let mut seen = HashSet::new();
        for (a, deps) in &nodes {
            let to = index[a];
            seen.clear();
            for d in deps {
                let from = *index.get(d).ok_or_else(|| GraphError::UnknownDependency {
                    from: a.clone(),
                    to: d.clone(),
                })?;
                if seen.insert(from) {
                    graph.add_edge(from, to, ());
                }
            }
        }
        let order = match toposort(&graph, None) {
            Ok(order) => order,
            Err(_) => return Err(GraphError::Cycle(find_cycle(&graph))),
        };
        Ok(ResourceGraph {
            graph,
            index,
            order,
        })
    }

    /// Number of resources.
    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    /// True when there are no resources.
    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// Addresses in an order where every dependency comes before its dependents.
    pub fn topo_order(&self) -> impl Iterator<Item = &Address> {
        self.order.iter().map(|i| &self.graph[*i])
    }

    /// The direct dependencies of `a`.
    pub fn dependencies(&self, a: &Address) -> Vec<&Address> {
        self.neighbors(a, Direction::Incoming)
    }

    /// The direct dependents of `a`.
    pub fn dependents(&self, a: &Address) -> Vec<&Address> {
        self.neighbors(a, Direction::Outgoing)
    }

    fn neighbors(&self, a: &Address, dir: Direction) -> Vec<&Address> {
        match self.index.get(a) {
            Some(i) => {
                let mut v: Vec<&Address> = self
                    .graph
                    .neighbors_directed(*i, dir)
                    .map(|n| &self.graph[n])
                    .collect();
                v.sort();
                v
            }
            None => Vec::new(),
        }
    }

    /// The graph in Graphviz DOT: arrows point from what is created first.
    pub fn to_dot(&self, name: &str) -> String {
        self.to_dot_styled(name, &|_| None)
    }

    /// Graphviz source with node attributes from `style` (`fillcolor`, `label`...:
    /// written as given after the node's name), for pictures that colour roles and mark
    /// planned actions.
    pub fn to_dot_styled(&self, name: &str, style: &dyn Fn(&Address) -> Option<String>) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "digraph \"{}\" {{", name.replace('"', "'"));
        let _ = writeln!(out, "  rankdir = \"LR\";");
        let _ = writeln!(out, "  node [shape = box];");
        let mut nodes: Vec<&Address> = self.graph.node_weights().collect();
        nodes.sort();
        for n in nodes {
            match style(n) {
                Some(attrs) => {
                    let _ = writeln!(out, "  \"{n}\" [{attrs}];");
                }
                None => {
                    let _ = writeln!(out, "  \"{n}\";");
                }
            }
        }
        let mut edges: Vec<(&Address, &Address)> = self
            .graph
            .edge_references()
            .map(|e| (&self.graph[e.source()], &self.graph[e.target()]))
            .collect();
        edges.sort();
        for (a, b) in edges {
            let _ = writeln!(out, "  \"{a}\" -> \"{b}\";");
        }
        out.push_str("}\n");
        out
    }
}

/// A path round one cycle of `graph` (first node repeated at the end).
fn find_cycle(graph: &DiGraph<Address, ()>) -> Vec<Address> {
    // A strongly connected component with more than one node, or a self-loop, holds a
    // cycle; walk inside it until a node repeats.
    for scc in tarjan_scc(graph) {
        let self_loop = scc.len() == 1 && graph.contains_edge(scc[0], scc[0]);
        if scc.len() < 2 && !self_loop {
            continue;
        }
        let mut members: Vec<NodeIndex> = scc.clone();
        members.sort_by(|a, b| graph[*a].cmp(&graph[*b]));
        let start = members[0];
        let mut path = vec![start];
        let mut cur = start;
        loop {
            let mut next: Vec<NodeIndex> = graph
                .neighbors_directed(cur, Direction::Outgoing)
                .filter(|n| scc.contains(n))
                .collect();
            next.sort_by(|a, b| graph[*a].cmp(&graph[*b]));
            let Some(&n) = next.first() else { break };
            if let Some(pos) = path.iter().position(|p| *p == n) {
                let mut cycle: Vec<Address> =
                    path[pos..].iter().map(|i| graph[*i].clone()).collect();
                cycle.push(graph[n].clone());
                return cycle;
            }
            path.push(n);
            cur = n;
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Address {
        s.parse().expect("address")
    }

    #[test]
    fn orders_dependencies_first() {
        let g = ResourceGraph::from_edges([
            (
                a("machine.w[0]"),
                vec![a("machine.c[0]"), a("network.main")],
            ),
            (a("machine.c[0]"), vec![a("network.main")]),
            (a("network.main"), vec![]),
        ])
        .expect("dag");
        let order: Vec<String> = g.topo_order().map(ToString::to_string).collect();
        assert_eq!(order, vec!["network.main", "machine.c[0]", "machine.w[0]"]);
        assert_eq!(g.dependents(&a("network.main")).len(), 2);
    }

    #[test]
    fn reports_cycle_path() {
        let err = ResourceGraph::from_edges([
            (a("machine.a"), vec![a("machine.b")]),
            (a("machine.b"), vec![a("machine.c")]),
            (a("machine.c"), vec![a("machine.a")]),
            (a("network.n"), vec![]),
        ])
        .expect_err("cycle");
        assert_eq!(
            err.to_string(),
            "dependency cycle: machine.a -> machine.c -> machine.b -> machine.a"
        );
    }

    #[test]
    fn reports_self_loop() {
        let err =
            ResourceGraph::from_edges([(a("machine.a"), vec![a("machine.a")])]).expect_err("cycle");
        assert_eq!(err, GraphError::Cycle(vec![a("machine.a"), a("machine.a")]));
    }

    #[test]
    fn unknown_dependency() {
        let err = ResourceGraph::from_edges([(a("machine.a"), vec![a("network.x")])])
            .expect_err("unknown");
        assert!(matches!(err, GraphError::UnknownDependency { .. }));
    }

    #[test]
    fn dot_lists_edges() {
        let g = ResourceGraph::from_edges([
            (a("machine.w[0]"), vec![a("network.main")]),
            (a("network.main"), vec![]),
        ])
        .expect("dag");
        assert!(
            g.to_dot("demo")
                .contains("\"network.main\" -> \"machine.w[0]\";")
        );
    }
}
