use crate::registration::Registration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GraphError {
    #[error("plugin dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("plugin {0} is registered twice")]
    Duplicate(String),
    #[error("plugin {0}: \"*\" must be its only requirement")]
    BadWildcard(String),
}

/// Orders registrations so each comes after the plugins of the types it requires: depth-first,
/// in registration order, as containerd does. Disabled plugins (by URI) are dropped before the
/// graph is built, so they neither start nor appear anywhere.
pub fn graph(
    registrations: Vec<Registration>,
    disabled: &[String],
) -> Result<Vec<Registration>, GraphError> {
    let regs: Vec<Registration> = registrations
        .into_iter()
        .filter(|r| !disabled.contains(&r.uri()))
        .collect();
    for (i, r) in regs.iter().enumerate() {
        if regs[..i].iter().any(|o| o.uri() == r.uri()) {
            return Err(GraphError::Duplicate(r.uri()));
        }
        if r.requires.iter().any(|t| t == "*") && r.requires.len() != 1 {
            return Err(GraphError::BadWildcard(r.uri()));
        }
    }
    let mut edges: Vec<Vec<usize>> = regs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut deps = Vec::new();
            for t in &r.requires {
                for (j, other) in regs.iter().enumerate() {
                    if j != i && &other.plugin_type == t && !deps.contains(&j) {
                        deps.push(j);
                    }
                }
            }
            deps
        })
        .collect();
    // `*` means every plugin that does not itself need this one (which would be a cycle
    // containerd never intends): those start first.
    let explicit = edges.clone();
    for (w, r) in regs.iter().enumerate() {
        if r.requires.iter().any(|t| t == "*") {
            for (x, other) in regs.iter().enumerate() {
                let wildcard = other.requires.iter().any(|t| t == "*");
                if x != w && !wildcard && !reaches(&explicit, x, w) {
                    edges[w].push(x);
                }
            }
        }
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Visiting,
        Done,
    }
    let mut marks = vec![Mark::New; regs.len()];
    let mut order = Vec::with_capacity(regs.len());
    let mut stack = Vec::new();

    fn visit(
        n: usize,
        edges: &[Vec<usize>],
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
        order: &mut Vec<usize>,
        regs: &[Registration],
    ) -> Result<(), GraphError> {
        match marks[n] {
            Mark::Done => return Ok(()),
            Mark::Visiting => {
                let start = stack.iter().position(|&s| s == n).unwrap_or(0);
                let mut cycle: Vec<String> =
                    stack[start..].iter().map(|&s| regs[s].uri()).collect();
                cycle.push(regs[n].uri());
                return Err(GraphError::Cycle(cycle));
            }
            Mark::New => {}
        }
        marks[n] = Mark::Visiting;
        stack.push(n);
        for &d in &edges[n] {
            visit(d, edges, marks, stack, order, regs)?;
        }
        stack.pop();
        marks[n] = Mark::Done;
        order.push(n);
        Ok(())
    }

    for n in 0..regs.len() {
        visit(n, &edges, &mut marks, &mut stack, &mut order, &regs)?;
    }
    let mut slots: Vec<Option<Registration>> = regs.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

/// Whether `from` depends on `to`, directly or not.
fn reaches(edges: &[Vec<usize>], from: usize, to: usize) -> bool {
    let mut seen = vec![false; edges.len()];
    let mut todo = vec![from];
    while let Some(n) = todo.pop() {
        if n == to {
            return true;
        }
        if !std::mem::replace(&mut seen[n], true) {
            todo.extend(&edges[n]);
        }
    }
    false
}
