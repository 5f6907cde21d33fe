//! Making a graph's shapes symbolic in the batch size.
//!
//! The forward is captured twice, at batch sizes `na` and `nb`. Both captures lower to graphs of
//! the same structure whose sizes differ only where they depend on the batch; each such size is
//! linear in the batch, so two samples give its [`Dim`]: `batch = (b - a) / (nb - na)`,
//! `fixed = a - batch * na`. Where the two graphs differ in anything else, the graph is kept at
//! the captured batch size ([`BatchMode::Fixed`]) with the reason.

use super::{BatchMode, Dim, Graph, Node, Op, SliceRange, ValueInfo, ValueKind};

/// Merges two captures of one forward at batch sizes `na != nb` into one batch-free graph, or
/// returns `a` fixed to batch `na` with the reason it could not be made free.
pub(crate) fn make_batch_free(a: Graph, b: &Graph, na: usize, nb: usize) -> Graph {
    match merge(&a, b, na, nb) {
        Ok(graph) => graph,
        Err(reason) => Graph {
            batch: BatchMode::Fixed { size: na, reason },
            ..a
        },
    }
}

/// The two sample points of every size.
struct Samples {
    na: i64,
    nb: i64,
}

impl Samples {
    fn dim(&self, a: Dim, b: Dim, what: &dyn Fn() -> String) -> Result<Dim, String> {
        if a == b {
            return Ok(a);
        }
        let (va, vb) = (a.fixed + a.batch * self.na, b.fixed + b.batch * self.nb);
        let (rise, run) = (vb - va, self.nb - self.na);
        if rise % run != 0 {
            return Err(format!(
                "{}: size {va} at batch {} but {vb} at batch {} is not linear in the batch",
                what(),
                self.na,
                self.nb
            ));
        }
        let batch = rise / run;
        Ok(Dim {
            batch,
            fixed: va - batch * self.na,
        })
    }

    fn dims(&self, a: &[Dim], b: &[Dim], what: &dyn Fn() -> String) -> Result<Vec<Dim>, String> {
        if a.len() != b.len() {
            return Err(format!("{}: rank differs between batch sizes", what()));
        }
        a.iter()
            .zip(b)
            .map(|(&x, &y)| self.dim(x, y, what))
            .collect()
    }

    fn value(&self, i: usize, a: &ValueInfo, b: &ValueInfo) -> Result<ValueInfo, String> {
        if a.dtype != b.dtype || a.kind != b.kind {
            return Err(format!("value %{i} differs between batch sizes"));
        }
        let shape = self.dims(&a.shape, &b.shape, &|| format!("value %{i}"))?;
        if matches!(a.kind, ValueKind::Constant | ValueKind::Parameter(_))
            && shape.iter().any(|d| !d.is_fixed())
        {
            return Err(format!(
                "value %{i} is data made inside the forward with a batch-dependent shape {:?}",
                a.shape.iter().map(|d| d.fixed).collect::<Vec<_>>()
            ));
        }
        Ok(ValueInfo { shape, ..a.clone() })
    }

    fn node(&self, a: &Node, b: &Node) -> Result<Node, String> {
        let what = || format!("node `{}`", a.name);
        if a.name != b.name || a.inputs != b.inputs || a.outputs != b.outputs {
            return Err(format!(
                "{} has a different structure at another batch size",
                what()
            ));
        }
        let op = match (&a.op, &b.op) {
            (Op::Reshape { shape: sa }, Op::Reshape { shape: sb }) => Op::Reshape {
                shape: self.dims(sa, sb, &what)?,
            },
            (Op::Slice { ranges: ra }, Op::Slice { ranges: rb }) if ra.len() == rb.len() => {
                let ranges = ra
                    .iter()
                    .zip(rb)
                    .map(|(x, y)| {
                        if x.step != y.step {
                            return Err(format!("{}: slice step depends on the batch", what()));
                        }
                        Ok(SliceRange {
                            start: self.dim(x.start, y.start, &what)?,
                            end: self.dim(x.end, y.end, &what)?,
                            step: x.step,
                        })
                    })
                    .collect::<Result<_, String>>()?;
                Op::Slice { ranges }
            }
            (x, y) if x == y => x.clone(),
            _ => {
                return Err(format!(
                    "{}: its attributes depend on the batch size",
                    what()
                ));
            }
        };
        Ok(Node { op, ..a.clone() })
    }
}

fn merge(a: &Graph, b: &Graph, na: usize, nb: usize) -> Result<Graph, String> {
    if na == nb {
        return Err(format!("captured at one batch size ({na}) only"));
    }
    if a.values.len() != b.values.len()
        || a.nodes.len() != b.nodes.len()
        || a.inputs != b.inputs
        || a.outputs != b.outputs
    {
        return Err(format!(
            "the forward records different graphs at batch sizes {na} ({} nodes) and {nb} ({} nodes)",
            a.nodes.len(),
            b.nodes.len()
        ));
    }
    let s = Samples {
        na: na as i64,
        nb: nb as i64,
    };
    let values = (a.values.iter().zip(&b.values).enumerate())
        .map(|(i, (x, y))| s.value(i, x, y))
        .collect::<Result<_, _>>()?;
    let nodes = a
        .nodes
        .iter()
        .zip(&b.nodes)
        .map(|(x, y)| s.node(x, y))
        .collect::<Result<_, _>>()?;
    Ok(Graph {
        values,
        nodes,
        batch: BatchMode::Free,
        ..a.clone()
    })
}
