//! Checks of a program read from a file, before anything is allocated from it: every id in
//! range and every value made before it is read, every size, stride, dilation, group count and
//! quantization parameter in bounds, every step's values in the domains it reads and writes.
//! What it cannot see without the tensors (their shapes) is checked by `record`; what needs a
//! run (shapes along the steps) by the executor's dry run at the recorded shapes.

use crate::graph::{Activation, BatchMode, BinaryOp, MAX_SIZE, ValueId, check_sizes};
use crate::kernels::{ActQParams, Conv2dGeometry, MAX_DYNAMIC_IN_FEATURES};
use crate::nn::QLayerSpec;
use crate::{Error, Result};

use super::{Domain, PROGRAM_FORMAT_VERSION, QuantizedProgram, Step};

/// The largest batch size a program fixed to one batch size may have.
const MAX_FIXED_BATCH: usize = 1 << 16;

/// The most axes a value may have.
const MAX_RANK: usize = 8;

impl QuantizedProgram {
    /// Checks that the program is well formed (see the module documentation); the error
    /// names the value, layer or step and the field.
    pub fn validate(&self) -> Result<()> {
        if self.version != PROGRAM_FORMAT_VERSION {
            return Err(invalid(format!(
                "program format version {}; this build reads {PROGRAM_FORMAT_VERSION}",
                self.version
            )));
        }
        self.check_values()?;
        for (i, l) in self.convs.iter().enumerate() {
            check_geometry(&l.geometry)
                .and_then(|()| check_spec(&l.spec))
                .map_err(|e| invalid(format!("convolution {i} `{}`: {e}", l.name)))?;
        }
        for (i, l) in self.linears.iter().enumerate() {
            check_features(l.out_features, l.in_features)
                .and_then(|()| check_spec(&l.spec))
                .map_err(|e| invalid(format!("linear layer {i} `{}`: {e}", l.name)))?;
        }
        for (i, l) in self.dynamic_linears.iter().enumerate() {
            check_features(l.out_features, l.in_features)
                .and_then(|()| match l.in_features <= MAX_DYNAMIC_IN_FEATURES {
                    true => Ok(()),
                    false => Err(format!("{} input features", l.in_features)),
                })
                .map_err(|e| invalid(format!("dynamic linear layer {i} `{}`: {e}", l.name)))?;
        }
        self.check_steps()
    }

    /// The batch size the recorded shapes are checked at: the fixed batch size of a program
    /// that only runs at one, else 1.
    pub(crate) fn recorded_batch(&self) -> usize {
        match self.batch {
            BatchMode::Fixed { size, .. } => size,
            BatchMode::Free => 1,
        }
    }

    /// Value and domain tables of one length, shapes of bounded rank and size, valid
    /// quantization parameters, inputs and float parameters that exist.
    fn check_values(&self) -> Result<()> {
        if let BatchMode::Fixed { size, .. } = self.batch
            && !(1..=MAX_FIXED_BATCH).contains(&size)
        {
            return Err(invalid(format!("fixed batch size {size}")));
        }
        if self.domains.len() != self.values.len() {
            return Err(invalid(format!(
                "{} values but {} domains",
                self.values.len(),
                self.domains.len()
            )));
        }
        for (v, (info, domain)) in self.values.iter().zip(&self.domains).enumerate() {
            let bad = |e: String| invalid(format!("value %{v}: {e}"));
            if info.shape.len() > MAX_RANK {
                return Err(bad(format!("{} axes", info.shape.len())));
            }
            info.shape.iter().try_for_each(|d| d.check()).map_err(bad)?;
            let n = self.recorded_batch();
            let sizes: Option<Vec<usize>> = info.shape.iter().map(|d| d.at(n)).collect();
            elements(&sizes.ok_or_else(|| bad("a negative size".into()))?).map_err(bad)?;
            if let Some(qp) = domain.act_qparams() {
                check_qparams(qp).map_err(bad)?;
            }
        }
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return Err(invalid("a program without inputs or outputs".into()));
        }
        let ids = self
            .inputs
            .iter()
            .chain(&self.outputs)
            .chain(&self.float_params);
        if let Some(id) = ids.clone().find(|id| id.index() >= self.values.len()) {
            return Err(invalid(format!(
                "unknown value {id} among inputs, outputs, params"
            )));
        }
        match self
            .inputs
            .iter()
            .chain(&self.float_params)
            .find(|&&id| self.domain(id).is_quantized())
        {
            Some(id) => Err(invalid(format!(
                "input or float parameter {id} is not float"
            ))),
            None => Ok(()),
        }
    }

    /// Every step: ids in range, each value made once and before it is read, layers that
    /// exist, the domains the step reads and writes, its attributes in bounds.
    fn check_steps(&self) -> Result<()> {
        let mut ready = vec![false; self.values.len()];
        for &id in self.inputs.iter().chain(&self.float_params) {
            ready[id.index()] = true;
        }
        for (i, step) in self.steps.iter().enumerate() {
            let bad = |e: String| invalid(format!("step {i}: {e}"));
            for &id in step.inputs() {
                match ready.get(id.index()) {
                    Some(true) => {}
                    Some(false) => return Err(bad(format!("reads {id} before it is made"))),
                    None => return Err(bad(format!("reads unknown value {id}"))),
                }
            }
            for &id in step.outputs() {
                match ready.get_mut(id.index()) {
                    Some(made @ false) => *made = true,
                    Some(true) => return Err(bad(format!("makes {id}, which exists already"))),
                    None => return Err(bad(format!("makes unknown value {id}"))),
                }
            }
            self.check_step(step).map_err(bad)?;
        }
        match self.outputs.iter().find(|id| !ready[id.index()]) {
            Some(id) => Err(invalid(format!("output {id} is never made"))),
            None => Ok(()),
        }
    }

    /// One step's layer, domains and attributes (its ids are in range).
    fn check_step(&self, step: &Step) -> std::result::Result<(), String> {
        let (ins, outs) = (step.inputs(), step.outputs());
        let all_quantized = || match ins
            .iter()
            .chain(outs)
            .find(|&&id| !self.domain(id).is_quantized())
        {
            Some(id) => Err(format!("{id} is float")),
            None => Ok(()),
        };
        let all_float = || match ins
            .iter()
            .chain(outs)
            .find(|&&id| self.domain(id).is_quantized())
        {
            Some(id) => Err(format!(
                "{id} is an integer value; the step reads and makes floats"
            )),
            None => Ok(()),
        };
        // The executor runs these steps on `u8` values only.
        let all_8bit = || match ins
            .iter()
            .chain(outs)
            .find(|&&id| !matches!(self.domain(id), Domain::Int8(_)))
        {
            Some(id) => Err(format!(
                "{id} is not 8-bit; the step has only 8-bit kernels"
            )),
            None => Ok(()),
        };
        let domain_is = |id: ValueId, expected: Domain| match self.domain(id) {
            d if d == expected => Ok(()),
            d => Err(format!("{id} is {d:?}; the layer takes {expected:?}")),
        };
        match step {
            Step::Quantize { input, output } => self.float_and_integer(*input, *output),
            Step::Dequantize { input, output } => self.float_and_integer(*output, *input),
            Step::Conv2d {
                layer,
                input,
                output,
            }
            | Step::Linear {
                layer,
                input,
                output,
            } => {
                let spec = match step {
                    Step::Conv2d { .. } => self.convs.get(*layer).map(|l| &l.spec),
                    _ => self.linears.get(*layer).map(|l| &l.spec),
                };
                let spec = spec.ok_or_else(|| format!("layer {layer} does not exist"))?;
                domain_is(*input, Domain::of(spec.input))?;
                match (&spec.table, self.domain(*output)) {
                    // A fused table maps the requantized `u8` to the output's parameters.
                    (Some(_), Domain::Int8(_)) => Ok(()),
                    (Some(_), d) => Err(format!("{output} is {d:?}; a fused table makes u8")),
                    (None, _) => domain_is(*output, Domain::of(spec.output)),
                }
            }
            Step::DynamicLinear { layer, .. } => {
                if *layer >= self.dynamic_linears.len() {
                    return Err(format!("dynamic linear layer {layer} does not exist"));
                }
                all_float()
            }
            Step::Float(node) => {
                node.check_attrs()?;
                all_float()
            }
            Step::Pad { padding, .. } => {
                check_sizes("padding", padding, 0)?;
                all_8bit()
            }
            Step::MaxPool2d { pool, .. } => {
                let window = [pool.kernel, pool.stride, pool.dilation].concat();
                check_sizes("pool window", &window, 1)?;
                all_8bit()
            }
            Step::AvgPool2d { pool, .. } => {
                check_sizes("pool window", &[pool.kernel, pool.stride].concat(), 1)?;
                all_8bit()
            }
            Step::Clamp { min, max, .. } if min > max => Err(format!("clamp [{min}, {max}]")),
            Step::Cat { inputs, .. } if inputs.is_empty() => Err("cat of nothing".into()),
            Step::Clamp { .. } | Step::Reshape { .. } | Step::GlobalAvgPool { .. } => all_8bit(),
            Step::Binary {
                op: BinaryOp::Add | BinaryOp::Sub,
                ..
            } => all_quantized(),
            Step::Table { .. } | Step::Binary { .. } | Step::Cat { .. } => all_8bit(),
        }
    }

    /// `Ok` when `float` is a float value and `integer` an integer one.
    fn float_and_integer(
        &self,
        float: ValueId,
        integer: ValueId,
    ) -> std::result::Result<(), String> {
        match (self.domain(float), self.domain(integer)) {
            (Domain::Float, d) if d.is_quantized() => Ok(()),
            _ => Err(format!(
                "{float} and {integer} are not a float and an integer value"
            )),
        }
    }

    /// The domain of `id` (in range).
    fn domain(&self, id: ValueId) -> Domain {
        self.domains[id.index()]
    }
}

/// Output and input feature counts of a linear layer: positive, and a weight matrix of them
/// within the size bound.
fn check_features(out_features: usize, in_features: usize) -> std::result::Result<(), String> {
    check_sizes("features", &[out_features, in_features], 1)
        .and_then(|()| elements(&[out_features, in_features]).map(drop))
}

fn invalid(what: String) -> Error {
    Error::InvalidGraph(what)
}

/// The number of elements of `shape`; `Err` above [`MAX_SIZE`].
fn elements(shape: &[usize]) -> std::result::Result<usize, String> {
    (shape.iter())
        .try_fold(1usize, |n, &d| n.checked_mul(d).filter(|&n| n <= MAX_SIZE))
        .ok_or_else(|| format!("shape {shape:?} has more than {MAX_SIZE} elements"))
}

/// Sizes at least 1 (padding 0), groups dividing the channels, a weight tensor of bounded size.
fn check_geometry(g: &Conv2dGeometry) -> std::result::Result<(), String> {
    g.check().map_err(|e| e.to_string())?;
    check_sizes(
        "channels, kernel, stride, dilation",
        &[
            [g.in_channels, g.out_channels].as_slice(),
            &g.kernel,
            &g.stride,
            &g.dilation,
        ]
        .concat(),
        1,
    )?;
    check_sizes("padding", &g.padding, 0)?;
    elements(&[
        g.out_channels,
        g.in_channels / g.groups,
        g.kernel[0],
        g.kernel[1],
    ])
    .map(drop)
}

/// Valid activation parameters, weight width and fused activation.
fn check_spec(spec: &QLayerSpec) -> std::result::Result<(), String> {
    check_qparams(spec.input)?;
    check_qparams(spec.output)?;
    spec.weight_dtype().map_err(|e| e.to_string())?;
    match spec.activation {
        Some(Activation::Clamp { min, max })
            if !(min.is_finite() && max.is_finite() && min <= max) =>
        {
            Err(format!("fused clamp [{min}, {max}]"))
        }
        _ if spec.table.is_some() && spec.is_wide() => {
            Err("a table fused into a wide layer".into())
        }
        _ => Ok(()),
    }
}

/// A finite, positive scale (and, for its reciprocal, a normal one).
fn check_qparams(qp: ActQParams) -> std::result::Result<(), String> {
    let scale = qp.scale();
    if scale.is_normal() && scale > 0.0 {
        Ok(())
    } else {
        Err(format!("quantization scale {scale}"))
    }
}
