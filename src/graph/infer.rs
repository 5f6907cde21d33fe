//! Run-time shapes: the concrete shape of every value of one run, inferred op by op from the
//! shapes of that run's inputs.
//!
//! A graph is captured at one input size. Its recorded shapes ([`Dim`]) are symbolic in the
//! batch size only; every other size (height, width, a sequence length) is free: each run infers
//! its values' shapes from its inputs, as the ops themselves would, so a graph captured at
//! 224x224 runs at 160x160 or 256x192. Where an op cannot say what its output would be at
//! another size (an op we do not lower and that is not element-wise), its recorded shape is used.
//!
//! A reshape is re-derived from what it did at capture: the target axes that copied an input
//! axis (a prefix or suffix of equal sizes) copy it again, and a single remaining target axis
//! takes what is left (a flatten, `reshape([n, -1])`); more than one remaining axis keeps the
//! recorded sizes. A model that really fixes a size therefore fails at the node that fixes it,
//! with an error naming that node, and still runs at the captured size.

use std::collections::HashMap;

use super::{LayerLayout, Node, Op, ValueId, ValueShapes};
use crate::{Error, Result};

/// The concrete shapes of one run of a program over values (a graph or a quantized program).
pub(crate) struct RunShapes<'a, P: ValueShapes + ?Sized> {
    program: &'a P,
    n: usize,
    shapes: HashMap<ValueId, Vec<usize>>,
}

impl<'a, P: ValueShapes + ?Sized> RunShapes<'a, P> {
    /// Starts a run whose inputs have `input_shapes`: checks their ranks and finds the batch
    /// size (see [`ValueShapes::batch_size_of`]).
    pub(crate) fn new(program: &'a P, input_shapes: Vec<Vec<usize>>) -> Result<Self> {
        let n = program.batch_size_of(&input_shapes)?;
        let shapes = program
            .input_ids()
            .iter()
            .copied()
            .zip(input_shapes)
            .collect();
        Ok(RunShapes { program, n, shapes })
    }

    /// The batch size of the run.
    pub(crate) fn batch(&self) -> usize {
        self.n
    }

    /// The shape of `id` in this run: inferred or set for activations, recorded for
    /// parameters and constants.
    pub(crate) fn get(&self, id: ValueId) -> Result<Vec<usize>> {
        match self.shapes.get(&id) {
            Some(shape) => Ok(shape.clone()),
            None => self.program.shape_at(id, self.n),
        }
    }

    /// Records the shape of `id`.
    pub(crate) fn set(&mut self, id: ValueId, shape: Vec<usize>) {
        self.shapes.insert(id, shape);
    }

    /// The recorded (capture-time) shape of `id` at this run's batch size.
    pub(crate) fn recorded(&self, id: ValueId) -> Result<Vec<usize>> {
        self.program.shape_at(id, self.n)
    }

    /// Infers and records the shapes of `node`'s outputs from its inputs' shapes.
    pub(crate) fn infer(&mut self, node: &Node) -> Result<()> {
        let shapes = self.node_outputs(node).map_err(|why| {
            let inputs: Vec<String> = (node.inputs.iter())
                .map(|&id| self.get(id).map_or("?".into(), |s| format!("{s:?}")))
                .collect();
            Error::Shape {
                context: format!("node `{}` ({})", node.name, node.op.kind()),
                expected: "inputs the op accepts".into(),
                got: format!("inputs {}: {why}", inputs.join(", ")),
            }
        })?;
        for (&id, shape) in node.outputs.iter().zip(shapes) {
            self.set(id, shape);
        }
        Ok(())
    }

    fn node_outputs(&self, node: &Node) -> std::result::Result<Vec<Vec<usize>>, String> {
        let inputs = (node.inputs.iter())
            .map(|&id| self.get(id).map_err(|e| e.to_string()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let recorded = |ids: &[ValueId]| {
            ids.iter()
                .map(|&id| self.recorded(id).map_err(|e| e.to_string()))
                .collect::<std::result::Result<Vec<_>, _>>()
        };
        if let Op::Fallback(_) = &node.op {
            // Element-wise at capture (output = broadcast of the inputs): element-wise now.
            let (rec_in, rec_out) = (recorded(&node.inputs)?, recorded(&node.outputs)?);
            let elementwise = rec_out.len() == 1
                && !rec_in.is_empty()
                && broadcast_all(&rec_in).as_ref() == Ok(&rec_out[0]);
            return Ok(match elementwise {
                true => vec![broadcast_all(&inputs)?],
                false => rec_out,
            });
        }
        let out = match &node.op {
            Op::Reshape { .. } => {
                let rec_in = self.recorded(node.inputs[0]).map_err(|e| e.to_string())?;
                let rec_out = self.recorded(node.outputs[0]).map_err(|e| e.to_string())?;
                reshape_target(&rec_in, &rec_out, &inputs[0])?
            }
            Op::Slice { ranges } => {
                let rec_in = self.recorded(node.inputs[0]).map_err(|e| e.to_string())?;
                slice(&inputs[0], &rec_in, ranges, self.n)?
            }
            op => output_shape(op, &inputs)?,
        };
        Ok(vec![out])
    }
}

/// The output shape of a lowered op (not a reshape or fallback) from its inputs' shapes.
fn output_shape(op: &Op, inputs: &[Vec<usize>]) -> std::result::Result<Vec<usize>, String> {
    let x = inputs.first().ok_or("no input")?;
    let image = || -> std::result::Result<[usize; 4], String> {
        <[usize; 4]>::try_from(x.as_slice()).map_err(|_| format!("{x:?} is not a 4-D image"))
    };
    Ok(match op {
        Op::Conv2d(_) => {
            let [n, c, h, w] = image()?;
            let weight = inputs.get(1).ok_or("no weight")?;
            let geometry = LayerLayout::from_weight(op, weight)
                .ok_or_else(|| format!("a conv2d weight of shape {weight:?}"))?
                .geometry;
            if c != geometry.in_channels {
                return Err(format!(
                    "an input with {c} channels; the weight takes {}",
                    geometry.in_channels
                ));
            }
            let (oh, ow) = geometry.output_size(h, w).map_err(|e| e.to_string())?;
            vectors(
                inputs.get(2..).unwrap_or(&[]),
                geometry.out_channels,
                "conv2d bias",
            )?;
            vec![n, geometry.out_channels, oh, ow]
        }
        Op::BatchNorm { .. } => {
            let channels = *x.get(1).ok_or_else(|| format!("batch norm of {x:?}"))?;
            vectors(
                inputs.get(1..).unwrap_or(&[]),
                channels,
                "batch norm parameter",
            )?;
            x.clone()
        }
        Op::Linear => {
            let weight = inputs.get(1).ok_or("no weight")?;
            let &[ins, outs] = weight.as_slice() else {
                return Err(format!("a linear weight of shape {weight:?}"));
            };
            let last = x.last().copied().ok_or("a scalar input")?;
            if last != ins {
                return Err(format!("{last} input features; the weight takes {ins}"));
            }
            vectors(inputs.get(2..).unwrap_or(&[]), outs, "linear bias")?;
            let mut out = x.clone();
            *out.last_mut().expect("not empty") = outs;
            out
        }
        Op::Matmul => matmul(x, inputs.get(1).ok_or("no second input")?)?,
        Op::Binary(_) => broadcast_all(inputs)?,
        Op::Cat { axis } => cat_shape(inputs, *axis)?,
        Op::MaxPool2d(p) => {
            let [n, c, h, w] = image()?;
            let (oh, ow) = crate::kernels::max_pool_output_size(h, w, &p.max_pool())
                .map_err(|e| e.to_string())?;
            vec![n, c, oh, ow]
        }
        Op::AvgPool2d {
            pool: p,
            count_include_pad,
        } => {
            let [n, c, h, w] = image()?;
            let pool = p.avg_pool(*count_include_pad);
            let (oh, ow) =
                crate::kernels::avg_pool_output_size(h, w, &pool).map_err(|e| e.to_string())?;
            vec![n, c, oh, ow]
        }
        Op::AdaptiveAvgPool2d { output } => {
            let [n, c, _, _] = image()?;
            vec![n, c, output[0], output[1]]
        }
        Op::Reduce { axes: None, .. } => vec![1],
        Op::Reduce {
            axes: Some(axes), ..
        } => {
            let mut out = x.clone();
            for &a in axes {
                *out.get_mut(a).ok_or(format!("axis {a} of {x:?}"))? = 1;
            }
            out
        }
        Op::Permute { axes } => (axes.iter())
            .map(|&a| x.get(a).copied().ok_or(format!("axis {a} of {x:?}")))
            .collect::<std::result::Result<_, _>>()?,
        Op::Pad { padding, .. } => {
            let skip = x
                .len()
                .checked_sub(padding.len())
                .ok_or("more pads than axes")?;
            let mut out = x.clone();
            for (size, (before, after)) in out[skip..].iter_mut().zip(padding) {
                *size += before + after;
            }
            out
        }
        // Element-wise on their first input.
        _ => x.clone(),
    })
}

/// `Err` unless every shape in `shapes` is `[len]` (a per-channel vector).
fn vectors(shapes: &[Vec<usize>], len: usize, what: &str) -> std::result::Result<(), String> {
    match shapes.iter().find(|s| s.as_slice() != [len]) {
        Some(s) => Err(format!(
            "a {what} of shape {s:?}; the layer has {len} channels"
        )),
        None => Ok(()),
    }
}

/// NumPy broadcasting of several shapes (aligned at the last axis).
pub(crate) fn broadcast_all(shapes: &[Vec<usize>]) -> std::result::Result<Vec<usize>, String> {
    let rank = shapes.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for shape in shapes {
        let skip = rank - shape.len();
        for (o, &s) in out[skip..].iter_mut().zip(shape) {
            if *o == 1 {
                *o = s;
            } else if s != 1 && s != *o {
                return Err(format!("shapes {shapes:?} do not broadcast"));
            }
        }
    }
    Ok(out)
}

fn matmul(a: &[usize], b: &[usize]) -> std::result::Result<Vec<usize>, String> {
    if a.len() < 2 || b.len() < 2 {
        return Err(format!("matmul of {a:?} and {b:?}"));
    }
    let (ra, rb) = (a.len() - 2, b.len() - 2);
    if a[ra + 1] != b[rb] {
        return Err(format!("matmul of {a:?} and {b:?}: inner sizes differ"));
    }
    let mut out = broadcast_all(&[a[..ra].to_vec(), b[..rb].to_vec()])?;
    out.extend([a[ra], b[rb + 1]]);
    Ok(out)
}

pub(crate) fn cat_shape(
    inputs: &[Vec<usize>],
    axis: usize,
) -> std::result::Result<Vec<usize>, String> {
    let mut out = inputs[0].clone();
    if axis >= out.len() {
        return Err(format!("axis {axis} of {out:?}"));
    }
    out[axis] = 0;
    for shape in inputs {
        let same =
            shape.len() == out.len() && (0..out.len()).all(|a| a == axis || shape[a] == out[a]);
        if !same {
            return Err(format!("cat along axis {axis} of {inputs:?}"));
        }
        out[axis] += shape[axis];
    }
    Ok(out)
}

/// A slice keeps its recorded ranges (at batch size `n`), except that an axis it took whole
/// (start 0, step 1, to the recorded end) is taken whole at every size.
pub(crate) fn slice(
    x: &[usize],
    recorded: &[usize],
    ranges: &[super::SliceRange],
    n: usize,
) -> std::result::Result<Vec<usize>, String> {
    if ranges.len() != x.len() || recorded.len() != x.len() {
        return Err(format!("{} slice ranges for {x:?}", ranges.len()));
    }
    (x.iter().zip(recorded).zip(ranges))
        .map(|((&size, &rec), r)| {
            let (start, end) = (r.start.at(n).unwrap_or(0), r.end.at(n).unwrap_or(0));
            let whole = start == 0 && r.step == 1 && end == rec;
            match whole {
                true => Ok(size),
                false if end <= size && start <= end => {
                    Ok((end - start).div_ceil(r.step.unsigned_abs()))
                }
                false => Err(format!("slice {start}..{end} of an axis of size {size}")),
            }
        })
        .collect()
}

/// The target shape of a reshape at run time (see the module documentation).
pub(crate) fn reshape_target(
    rec_in: &[usize],
    rec_out: &[usize],
    run_in: &[usize],
) -> std::result::Result<Vec<usize>, String> {
    if rec_in == run_in {
        return Ok(rec_out.to_vec());
    }
    let total: usize = run_in.iter().product();
    let mut out: Vec<Option<usize>> = vec![None; rec_out.len()];
    let (mut front, mut back) = (0, 0);
    while front < rec_out.len().min(rec_in.len()) && rec_out[front] == rec_in[front] {
        out[front] = Some(run_in[front]);
        front += 1;
    }
    while back < (rec_out.len() - front).min(rec_in.len() - front)
        && rec_out[rec_out.len() - 1 - back] == rec_in[rec_in.len() - 1 - back]
    {
        out[rec_out.len() - 1 - back] = Some(run_in[run_in.len() - 1 - back]);
        back += 1;
    }
    let open: Vec<usize> = (0..out.len()).filter(|&i| out[i].is_none()).collect();
    if let [one] = open[..] {
        let known: usize = out.iter().flatten().product();
        if known > 0 && total.is_multiple_of(known) {
            out[one] = Some(total / known);
        }
    }
    let shape: Vec<usize> = (out.iter().zip(rec_out))
        .map(|(o, &r)| o.unwrap_or(r))
        .collect();
    if shape.iter().product::<usize>() != total || run_in.len() != rec_in.len() {
        return Err(format!(
            "a reshape to {rec_out:?} recorded for an input of {rec_in:?}; the input is now \
             {run_in:?}, which does not fit: the model fixes its input size here \
             (it runs at the captured size)"
        ));
    }
    Ok(shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Dim;

    #[test]
    fn reshape_follows_flattens_and_keeps_literal_sizes() {
        // flatten(1) of [N, C, H, W]
        let r = reshape_target(&[2, 8, 4, 4], &[2, 128], &[2, 8, 5, 3]);
        assert_eq!(r, Ok(vec![2, 120]));
        // [N, C, 1, 1] -> [N, C] stays as it is at any spatial size before a global pool.
        assert_eq!(
            reshape_target(&[2, 8, 1, 1], &[2, 8], &[3, 8, 1, 1]),
            Ok(vec![3, 8])
        );
        // flatten(2): [N, C, H*W]
        assert_eq!(
            reshape_target(&[2, 8, 4, 4], &[2, 8, 16], &[2, 8, 6, 4]),
            Ok(vec![2, 8, 24])
        );
        // A literal split into two axes cannot follow a new size: an error.
        assert!(reshape_target(&[2, 8, 4, 4], &[2, 8, 2, 8], &[2, 8, 6, 4]).is_err());
    }

    #[test]
    fn broadcasting_and_slices() {
        assert_eq!(
            broadcast_all(&[vec![2, 3, 4, 4], vec![2, 3, 1, 1]]),
            Ok(vec![2, 3, 4, 4])
        );
        assert_eq!(broadcast_all(&[vec![4], vec![2, 3, 1]]), Ok(vec![2, 3, 4]));
        assert!(broadcast_all(&[vec![2, 3], vec![2, 4]]).is_err());
        let whole = super::super::SliceRange {
            start: Dim::fixed(0),
            end: Dim::fixed(7),
            step: 1,
        };
        let part = super::super::SliceRange {
            start: Dim::fixed(1),
            end: Dim::fixed(5),
            step: 2,
        };
        assert_eq!(slice(&[9, 9], &[7, 9], &[whole, part], 1), Ok(vec![9, 2]));
        assert!(slice(&[9, 3], &[7, 9], &[whole, part], 1).is_err());
    }
}
