//! The plan of a quantized program at one input shape (after tract's plan/state split): every
//! value's shape in runs of that shape, and where each `u8` value lives in the run's arena.
//!
//! Offsets come from the values' lifetimes: a value lives from the step that makes it to the
//! last step that reads it (both inclusive, so a step never writes over what it reads), and a
//! first-fit allocator gives each value the lowest offset free for its whole life. A reshape
//! that does not move bytes (a flatten of `[N, C, 1, 1]`, a reshape of 2-D rows) makes no
//! buffer: its output is its input's bytes. Plans are made once per input shape and cached by
//! the executor; nothing in a plan changes while runs use it.

use std::ops::Range;

use crate::graph::{RunShapes, ValueId, ValueShapes, broadcast_all, cat_shape, reshape_target};
use crate::kernels;
use crate::program::{QuantizedLayers, QuantizedProgram, Step};
use crate::{Error, Result};

/// Byte alignment of every buffer in the arena (a cache line).
const ALIGN: usize = 64;

/// The shapes and buffer offsets of runs of a program at one input shape.
pub(super) struct ShapePlan {
    /// The batch size of these runs.
    pub(super) batch: usize,
    /// Every value's shape in these runs (`None` where it has none, e.g. an unused copy).
    shapes: Vec<Option<Vec<usize>>>,
    /// The shape of each `u8` value's bytes: NHWC for 4-D values, the shape otherwise.
    physical: Vec<Option<Vec<usize>>>,
    /// The arena bytes of each quantized (`u8` or `u16`) value.
    slots: Vec<Option<Range<usize>>>,
    /// The arena size in bytes.
    pub(super) size: usize,
}

impl ShapePlan {
    /// Plans runs of `program` whose inputs have `input_shapes`: infers every value's shape
    /// step by step, then places the `u8` values.
    pub(super) fn new(
        program: &QuantizedProgram,
        layers: &QuantizedLayers,
        input_shapes: Vec<Vec<usize>>,
    ) -> Result<Self> {
        let mut shapes = RunShapes::new(program, input_shapes)?;
        for (i, step) in program.steps.iter().enumerate() {
            infer(program, layers, step, &mut shapes).map_err(|e| match e {
                Error::Shape {
                    context,
                    expected,
                    got,
                } => Error::Shape {
                    context: format!("step {i} ({}): {context}", step_kind(step)),
                    expected,
                    got,
                },
                other => other,
            })?;
        }
        let batch = shapes.batch();
        let values = program.values.len();
        let shapes: Vec<_> = (0..values)
            .map(|v| shapes.get(ValueId(v as u32)).ok())
            .collect();
        let physical = shapes.iter().map(|s| s.as_deref().map(physical)).collect();
        let mut plan = ShapePlan {
            batch,
            shapes,
            physical,
            slots: vec![None; values],
            size: 0,
        };
        plan.place(program);
        Ok(plan)
    }

    /// Checks a program's recorded shapes along its steps: a plan at the recorded input shapes
    /// (at [`QuantizedProgram::recorded_batch`]) must infer every value a step makes with the
    /// shape recorded for it.
    pub(super) fn check_recorded(
        program: &QuantizedProgram,
        layers: &QuantizedLayers,
    ) -> Result<()> {
        let n = program.recorded_batch();
        let inputs = (program.inputs.iter())
            .map(|&id| program.shape_at(id, n))
            .collect::<Result<Vec<_>>>()?;
        let plan = ShapePlan::new(program, layers, inputs)?;
        for (i, step) in program.steps.iter().enumerate() {
            for &id in step.outputs() {
                let (recorded, inferred) = (program.shape_at(id, n)?, plan.shape(id)?);
                if recorded != inferred {
                    return Err(Error::Shape {
                        context: format!("value {id} made by step {i} ({})", step_kind(step)),
                        expected: format!("{recorded:?} as recorded"),
                        got: format!("{inferred:?}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// The shape of value `id` in these runs.
    pub(super) fn shape(&self, id: ValueId) -> Result<&[usize]> {
        self.shapes
            .get(id.index())
            .and_then(Option::as_deref)
            .ok_or_else(|| Error::InvalidGraph(format!("value {id} has no shape in this run")))
    }

    /// The shape of value `id`'s bytes (NHWC for 4-D values).
    pub(super) fn physical(&self, id: ValueId) -> Result<&[usize]> {
        self.physical
            .get(id.index())
            .and_then(Option::as_deref)
            .ok_or_else(|| Error::InvalidGraph(format!("value {id} has no shape in this run")))
    }

    /// The arena bytes of `u8` value `id`.
    pub(super) fn slot(&self, id: ValueId) -> Result<Range<usize>> {
        self.slots
            .get(id.index())
            .cloned()
            .flatten()
            .ok_or_else(|| Error::InvalidGraph(format!("value {id} is not an int8 value here")))
    }

    /// Gives every `u8` value its arena bytes (see the module documentation).
    fn place(&mut self, program: &QuantizedProgram) {
        let n = program.values.len();
        // Each u8 value's buffer owner (itself, or the input of a reshape that moves no
        // bytes), and the owners' lifetimes in steps.
        let mut owner: Vec<usize> = (0..n).collect();
        let mut life: Vec<Option<(usize, usize)>> = vec![None; n];
        for (i, step) in program.steps.iter().enumerate() {
            for id in step.inputs() {
                if let Some((_, end)) = &mut life[owner[id.index()]] {
                    *end = i;
                }
            }
            for &id in step.outputs() {
                if !program.domains[id.index()].is_quantized() {
                    continue;
                }
                match step {
                    Step::Reshape { input, .. } if self.moves_no_bytes(*input, id) => {
                        owner[id.index()] = owner[input.index()];
                    }
                    _ => life[id.index()] = Some((i, i)),
                }
            }
        }
        let mut placed: Vec<(usize, usize, Range<usize>)> = Vec::new();
        let mut own: Vec<Option<Range<usize>>> = vec![None; n];
        for (v, lived) in life.iter().enumerate() {
            let Some((start, end)) = *lived else { continue };
            let elements: usize = self.shapes[v].as_ref().map_or(0, |s| s.iter().product());
            let len = elements * program.domains[v].bytes();
            let offset = first_fit(&placed, start, end, len);
            self.size = self.size.max(offset + len);
            placed.push((start, end, offset..offset + len));
            own[v] = Some(offset..offset + len);
        }
        for v in 0..n {
            if program.domains[v].is_quantized() {
                self.slots[v] = own[owner[v]].clone();
            }
        }
    }

    /// Whether a reshape from `input` to `output` keeps every byte where it is: both values'
    /// bytes are in NCHW element order (not 4-D, or 4-D with one channel or one pixel).
    pub(super) fn moves_no_bytes(&self, input: ValueId, output: ValueId) -> bool {
        let nchw_order = |id: ValueId| match self.shapes[id.index()].as_deref() {
            Some(&[_, c, h, w]) => c == 1 || h * w == 1,
            Some(_) => true,
            None => false,
        };
        nchw_order(input) && nchw_order(output)
    }
}

/// The lowest offset (a multiple of [`ALIGN`]) where `len` bytes are free from step `start`
/// to step `end`, given the buffers already placed.
fn first_fit(
    placed: &[(usize, usize, Range<usize>)],
    start: usize,
    end: usize,
    len: usize,
) -> usize {
    let mut busy: Vec<&Range<usize>> = placed
        .iter()
        .filter(|(s, e, _)| *s <= end && start <= *e)
        .map(|(_, _, r)| r)
        .collect();
    busy.sort_by_key(|r| r.start);
    let mut offset = 0;
    for r in busy {
        if offset + len <= r.start {
            break;
        }
        offset = offset.max(r.end.next_multiple_of(ALIGN));
    }
    offset
}

/// The shape of a value's bytes: NHWC for a 4-D (NCHW) value, the shape itself otherwise.
fn physical(shape: &[usize]) -> Vec<usize> {
    match *shape {
        [n, c, h, w] => vec![n, h, w, c],
        _ => shape.to_vec(),
    }
}

/// A step's name in errors.
fn step_kind(step: &Step) -> String {
    match step {
        Step::Float(node) => format!("float node `{}`", node.name),
        other => format!("{other:?}")
            .split([' ', '{', '('])
            .next()
            .unwrap_or("")
            .to_lowercase(),
    }
}

type Shapes<'a> = RunShapes<'a, QuantizedProgram>;

/// Infers and records the shape of what `step` makes in this run.
fn infer(
    program: &QuantizedProgram,
    layers: &QuantizedLayers,
    step: &Step,
    shapes: &mut Shapes,
) -> Result<()> {
    let shape = |id: &ValueId| shapes.get(*id);
    let (output, out) = match step {
        Step::Float(node) => return shapes.infer(node),
        Step::Quantize { input, output }
        | Step::Dequantize { input, output }
        | Step::Clamp { input, output, .. }
        | Step::Table { input, output, .. } => (*output, shape(input)?),
        Step::Conv2d {
            layer,
            input,
            output,
        } => {
            let [n, c, h, w] = image4(shapes, *input)?;
            let g = layers.convs[*layer].geometry;
            if c != g.in_channels {
                return Err(bad(format!(
                    "{c} channels into `{}`, which takes {}",
                    program.convs[*layer].name, g.in_channels
                )));
            }
            let (oh, ow) = g.output_size(h, w)?;
            (*output, vec![n, g.out_channels, oh, ow])
        }
        Step::Linear {
            layer,
            input,
            output,
        } => {
            let x = shape(input)?;
            let l = &program.linears[*layer];
            if x.len() != 2 || x[1] != l.in_features {
                return Err(bad(format!(
                    "{x:?} into `{}`, which takes {} features",
                    l.name, l.in_features
                )));
            }
            (*output, vec![x[0], l.out_features])
        }
        Step::DynamicLinear {
            layer,
            input,
            output,
        } => {
            let mut x = shape(input)?;
            let l = &program.dynamic_linears[*layer];
            match x.last_mut() {
                Some(features) if *features == l.in_features => *features = l.out_features,
                _ => {
                    return Err(bad(format!(
                        "{x:?} into `{}`, which takes {} features",
                        l.name, l.in_features
                    )));
                }
            }
            (*output, x)
        }
        Step::Binary { inputs, output, .. } => {
            let both = vec![shape(&inputs[0])?, shape(&inputs[1])?];
            (*output, broadcast_all(&both).map_err(bad)?)
        }
        Step::Cat { inputs, output } => {
            let all = inputs.iter().map(shape).collect::<Result<Vec<_>>>()?;
            (*output, cat_shape(&all, 1).map_err(bad)?)
        }
        other => image_step_shape(other, shapes)?,
    };
    shapes.set(output, out);
    Ok(())
}

/// The output and its shape of a pooling, pad or reshape step.
fn image_step_shape(step: &Step, shapes: &Shapes) -> Result<(ValueId, Vec<usize>)> {
    Ok(match step {
        Step::MaxPool2d {
            pool,
            input,
            output,
        } => {
            let [n, c, h, w] = image4(shapes, *input)?;
            let (oh, ow) = kernels::max_pool_output_size(h, w, pool)?;
            (*output, vec![n, c, oh, ow])
        }
        Step::AvgPool2d {
            pool,
            input,
            output,
        } => {
            let [n, c, h, w] = image4(shapes, *input)?;
            let (oh, ow) = kernels::avg_pool_output_size(h, w, pool)?;
            (*output, vec![n, c, oh, ow])
        }
        Step::GlobalAvgPool { input, output } => {
            let [n, c, _, _] = image4(shapes, *input)?;
            (*output, vec![n, c, 1, 1])
        }
        Step::Pad {
            padding: [t, l, b, r],
            input,
            output,
            ..
        } => {
            let [n, c, h, w] = image4(shapes, *input)?;
            (*output, vec![n, c, h + t + b, w + l + r])
        }
        Step::Reshape { input, output } => {
            let (rec_in, rec_out) = (shapes.recorded(*input)?, shapes.recorded(*output)?);
            let target = reshape_target(&rec_in, &rec_out, &shapes.get(*input)?).map_err(bad)?;
            (*output, target)
        }
        other => {
            return Err(Error::InvalidGraph(format!(
                "no shape rule for step {}",
                step_kind(other)
            )));
        }
    })
}

/// A shape error about a step's input.
fn bad(got: String) -> Error {
    Error::Shape {
        context: "input".into(),
        expected: "a shape the step accepts".into(),
        got,
    }
}

/// `[n, c, h, w]` of a 4-D value.
fn image4(shapes: &Shapes, id: ValueId) -> Result<[usize; 4]> {
    let s = shapes.get(id)?;
    <[usize; 4]>::try_from(s.as_slice()).map_err(|_| bad(format!("{s:?}, not 4-D")))
}
