//! Convert (PyTorch's `convert_fx`): a calibrated [`PreparedModel`] becomes an int8
//! [`QuantizedProgram`] and its [`QuantizedLayers`] (what
//! [`crate::quantized::QuantizedModel`] runs), whose int8 nodes are `QConv2d`/`QLinear` layers and int8 add/sub/mul, cat,
//! pool, clamp, pad, reshape and table steps, with quantize/dequantize steps at the float
//! boundaries. A pointwise function (hard-swish, sigmoid, GELU, ...) is a 256-entry table made
//! here by running its float body on the 256 values its input can take; when it is the only
//! reader of a conv or linear layer's output it is applied in that layer's requantization.
//! [`to_dynamic_program`] converts for dynamic quantization instead (no calibration).

mod dynamic;

use std::collections::HashMap;

use burn::module::{Param, ParamId};
use burn::tensor::{Device, Tensor, TensorData};

use crate::graph::{
    Activation, BinaryOp, Graph, LayerLayout, Node, Op, PadMode, ValueId, ValueInfo, ValueKind,
};
use crate::kernels::{self, ActQParams, QParams, Table, WideQParams};
use crate::nn::{QConv2d, QLayerSpec, QLinear, QWeights};
use crate::observe::{self, QDType};
use crate::ops::{float_values, pointwise};
use crate::prepare::{Int8Op, Placement, PreparedModel};
use crate::program::{
    ConvLayer, Domain, LinearLayer, NodeReport, PROGRAM_FORMAT_VERSION, QuantizedLayers,
    QuantizedProgram, Step,
};
use crate::qconfig::QConfig;
use crate::{Error, Result};

pub use dynamic::to_dynamic_program;

/// Converts a calibrated model to its int8 program and layers. Layer tensors are made on the
/// CPU device Burn picks by default.
pub fn to_program(prepared: &PreparedModel) -> Result<(QuantizedProgram, QuantizedLayers)> {
    prepared.check_calibrated()?;
    let graph = prepared.graph();
    let plan = prepared.plan();
    let activations = (prepared.observers().iter().zip(&plan.observed).enumerate())
        .map(|(k, (o, observed))| match plan.fixed.get(&k) {
            Some(&(scale, zero_point)) => Ok(ActQParams::U8(QParams::new(scale, zero_point))),
            None => activation_qparams(&o.qparams()?, &describe(graph, observed.value)),
        })
        .collect::<Result<Vec<_>>>()?;
    let mut b = Builder {
        graph,
        prepared,
        qparams_of: &prepared.plan().qparams_of,
        activations: &activations,
        values: graph.values.clone(),
        domains: vec![Domain::Float; graph.values.len()],
        steps: Vec::new(),
        int8_copy: HashMap::new(),
        float_copy: HashMap::new(),
        float_params: Vec::new(),
        placement: &plan.placement,
        fused: HashMap::new(),
        layers: QuantizedLayers {
            convs: Vec::new(),
            linears: Vec::new(),
            dynamic_linears: Vec::new(),
            floats: Vec::new(),
        },
        convs: Vec::new(),
        linears: Vec::new(),
        device: prepared.calibration_device().unwrap_or_default(),
    };
    let mut report = Vec::new();
    for ((node, placement), qconfig) in graph
        .nodes
        .iter()
        .zip(&plan.placement)
        .zip(prepared.qconfigs())
    {
        let fused_into = b.fused.get(&node.name).cloned();
        match (placement, qconfig) {
            _ if fused_into.is_some() => {}
            (Placement::Int8(op), Some(q)) => b.int8_node(node, *op, q)?,
            _ => b.float_node(node)?,
        }
        let mut op = match node.activation {
            Some(a) => format!("{}+{a}", node.op.kind()),
            None => node.op.kind(),
        };
        if let Some(layer) = fused_into {
            op = format!("{op} (fused into `{layer}`)");
        }
        let bits = (node.outputs.iter())
            .filter_map(|v| b.domains[v.index()].act_qparams())
            .map(|qp| qp.bits())
            .collect();
        let narrowed = node
            .outputs
            .iter()
            .find_map(|v| plan.narrowed.get(v).cloned());
        let weight_bits = match (placement, qconfig) {
            (Placement::Int8(Int8Op::Conv2d | Int8Op::Linear), Some(q)) => {
                Some(weight_bits(q, &node.name)?)
            }
            _ => None,
        };
        report.push(NodeReport {
            name: node.name.clone(),
            op,
            placement: placement.clone(),
            bits,
            weight_bits,
            narrowed,
        });
    }
    let outputs = graph.outputs.iter().map(|&v| b.float_version(v)).collect();
    let program = QuantizedProgram {
        version: PROGRAM_FORMAT_VERSION,
        values: b.values,
        domains: b.domains,
        steps: b.steps,
        inputs: graph.inputs.clone(),
        outputs,
        batch: graph.batch.clone(),
        float_params: b.float_params,
        convs: b.convs,
        linears: b.linears,
        dynamic_linears: Vec::new(),
        report,
    };
    Ok((program, b.layers))
}

/// A readable name for a value: the node that makes it, or the model input.
fn describe(graph: &Graph, value: ValueId) -> String {
    match graph.producer(value) {
        Some(i) => format!("the output of `{}`", graph.nodes[i].name),
        None => "the model input".into(),
    }
}

/// The kernels' `u8` or `u16` parameters from an activation observer's.
fn activation_qparams(qp: &observe::QParams, what: &str) -> Result<ActQParams> {
    let wide = qp.dtype == QDType::QUInt16;
    if !(qp.dtype == QDType::QUInt8 || wide) || qp.scale.len() != 1 {
        return Err(Error::Unsupported(format!(
            "activation quantization of {what}: the kernels take per-tensor u8 or u16 activations, got {:?} with {} scale(s)",
            qp.dtype,
            qp.scale.len()
        )));
    }
    let out_of_range = || {
        Error::InvalidArgument(format!(
            "zero point {} of {what} is outside the range of {:?}",
            qp.zero_point[0], qp.dtype
        ))
    };
    let (scale, z) = (qp.scale[0], qp.zero_point[0]);
    Ok(if wide {
        let z = u16::try_from(z).map_err(|_| out_of_range())?;
        ActQParams::U16(WideQParams::new(scale, z))
    } else {
        let z = u8::try_from(z).map_err(|_| out_of_range())?;
        ActQParams::U8(QParams::new(scale, z))
    })
}

struct Builder<'a> {
    graph: &'a Graph,
    /// The calibrated model: its bias-correction statistics.
    prepared: &'a PreparedModel,
    qparams_of: &'a HashMap<ValueId, usize>,
    activations: &'a [ActQParams],
    values: Vec<ValueInfo>,
    domains: Vec<Domain>,
    steps: Vec<Step>,
    /// The quantized copy of a float value.
    int8_copy: HashMap<ValueId, ValueId>,
    /// The float copy of a quantized value.
    float_copy: HashMap<ValueId, ValueId>,
    float_params: Vec<ValueId>,
    /// Where each node of the graph runs.
    placement: &'a [Placement],
    /// Pointwise nodes fused into the conv or linear layer before them: node name -> layer name.
    fused: HashMap<String, String>,
    layers: QuantizedLayers,
    convs: Vec<ConvLayer>,
    linears: Vec<LinearLayer>,
    device: Device,
}

impl Builder<'_> {
    /// The quantization parameters of `value` (8 or 16 bits).
    fn act_qparams(&self, value: ValueId) -> Result<ActQParams> {
        let k = self.qparams_of.get(&value).ok_or_else(|| {
            Error::InvalidGraph(format!(
                "{} is read by an int8 node but has no observer",
                describe(self.graph, value)
            ))
        })?;
        Ok(self.activations[*k])
    }

    /// The `u8` parameters of `value`, which the plan keeps at 8 bits.
    fn qparams(&self, value: ValueId) -> Result<QParams> {
        self.act_qparams(value)?.as_u8().ok_or_else(|| {
            Error::InvalidGraph(format!(
                "{} is 16-bit but read by an op without 16-bit kernels",
                describe(self.graph, value)
            ))
        })
    }

    fn copy_of(&mut self, value: ValueId, domain: Domain) -> ValueId {
        self.values.push(ValueInfo {
            kind: ValueKind::Activation,
            ..self.values[value.index()].clone()
        });
        self.domains.push(domain);
        ValueId((self.values.len() - 1) as u32)
    }

    /// `value` as a quantized value: itself, or a quantized copy of the float value.
    fn int8_version(&mut self, value: ValueId) -> Result<ValueId> {
        if self.domains[value.index()].is_quantized() {
            return Ok(value);
        }
        if let Some(&copy) = self.int8_copy.get(&value) {
            return Ok(copy);
        }
        let copy = self.copy_of(value, Domain::of(self.act_qparams(value)?));
        self.steps.push(Step::Quantize {
            input: value,
            output: copy,
        });
        self.int8_copy.insert(value, copy);
        Ok(copy)
    }

    /// `value` as a float value: itself, or a dequantized copy of the quantized value.
    fn float_version(&mut self, value: ValueId) -> ValueId {
        if !self.domains[value.index()].is_quantized() {
            return value;
        }
        *self.float_copy.entry(value).or_insert_with(|| {
            self.values.push(ValueInfo {
                kind: ValueKind::Activation,
                ..self.values[value.index()].clone()
            });
            self.domains.push(Domain::Float);
            let copy = ValueId((self.values.len() - 1) as u32);
            self.steps.push(Step::Dequantize {
                input: value,
                output: copy,
            });
            copy
        })
    }

    fn float_node(&mut self, node: &Node) -> Result<()> {
        let mut node = node.clone();
        let params = (&mut self.float_params, &mut self.layers.floats);
        push_float_params(self.graph, &node, params, &self.device);
        for input in &mut node.inputs {
            if !self.graph.tensors.contains_key(input) {
                *input = self.float_version(*input);
            }
        }
        self.steps.push(Step::Float(node));
        Ok(())
    }

    /// Adds the step of a node that runs in int8 (and its layer, for conv and linear nodes).
    fn int8_node(&mut self, node: &Node, op: Int8Op, qconfig: &QConfig) -> Result<()> {
        let output = node.outputs[0];
        let out_qp = self.act_qparams(output)?;
        self.domains[output.index()] = Domain::of(out_qp);
        let input = self.int8_version(node.inputs[0])?;
        let step = match (op, &node.op) {
            (Int8Op::Conv2d | Int8Op::Linear, _) => {
                let mut spec = QLayerSpec {
                    input: self.act_qparams(node.inputs[0])?,
                    output: out_qp,
                    activation: node.activation,
                    table: None,
                    weight_bits: weight_bits(qconfig, &node.name)?,
                };
                let mut output = output;
                if !spec.is_wide()
                    && let Some((table, out)) = self.fusable_table(node)?
                {
                    spec.table = Some(table);
                    output = out;
                }
                self.layer_step(node, op, spec, qconfig, [input, output])?
            }
            (Int8Op::Binary(op), _) => self.binary_step(node, op, input)?,
            (Int8Op::Pad | Int8Op::Clamp, _) => {
                self.constant_step(node, op, self.qparams(output)?, input)?
            }
            _ => {
                let qparams = [self.qparams(node.inputs[0])?, self.qparams(output)?];
                self.value_step(node, op, qparams, input)?
            }
        };
        self.steps.push(step);
        Ok(())
    }

    /// The step and layer of a conv or linear node reading `input` and writing `output`.
    fn layer_step(
        &mut self,
        node: &Node,
        op: Int8Op,
        spec: QLayerSpec,
        qconfig: &QConfig,
        [input, output]: [ValueId; 2],
    ) -> Result<Step> {
        let (weight, bias) = self.layer_data(node)?;
        let shape = self.graph.tensors[&node.inputs[1]].shape().to_vec();
        let x_scale = spec.input.scale();
        match (op, &node.op) {
            (Int8Op::Conv2d, Op::Conv2d(_)) => {
                let geometry = LayerLayout::from_weight(&node.op, &shape)
                    .ok_or_else(|| Error::Unsupported(format!("conv2d weight of shape {shape:?}")))?
                    .geometry;
                let w = self.layer_weights(node, &weight, &shape, bias, x_scale, qconfig)?;
                let layer = QConv2d::new(geometry, w, spec.clone(), &self.device)?;
                self.layers.convs.push(layer);
                let name = node.name.clone();
                self.convs.push(ConvLayer {
                    name,
                    geometry,
                    spec,
                });
                let layer = self.layers.convs.len() - 1;
                Ok(Step::Conv2d {
                    layer,
                    input,
                    output,
                })
            }
            (Int8Op::Linear, Op::Linear) => {
                let (inputs, outputs) = (shape[0], shape[1]);
                let transposed = to_out_in(&weight, inputs, outputs);
                let shape = [outputs, inputs];
                let w = self.layer_weights(node, &transposed, &shape, bias, x_scale, qconfig)?;
                let layer = QLinear::new(outputs, inputs, w, spec.clone(), &self.device)?;
                self.layers.linears.push(layer);
                self.linears.push(LinearLayer {
                    name: node.name.clone(),
                    out_features: outputs,
                    in_features: inputs,
                    spec,
                });
                let layer = self.layers.linears.len() - 1;
                Ok(Step::Linear {
                    layer,
                    input,
                    output,
                })
            }
            (op, other) => Err(mismatch(node, op, other)),
        }
    }

    /// The step of a pad or clamp node, its constants quantized with `out_qp`.
    fn constant_step(
        &mut self,
        node: &Node,
        op: Int8Op,
        out_qp: QParams,
        input: ValueId,
    ) -> Result<Step> {
        let output = node.outputs[0];
        let quantized = |values: &[f64]| -> Result<Vec<u8>> {
            let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
            let mut q = vec![0u8; values.len()];
            kernels::quantize(&values, out_qp, &mut q)?;
            Ok(q)
        };
        match (op, &node.op) {
            (
                Int8Op::Pad,
                Op::Pad {
                    padding: p,
                    mode: PadMode::Constant(v),
                },
            ) => Ok(Step::Pad {
                padding: [p[2].0, p[3].0, p[2].1, p[3].1],
                value: quantized(&[*v])?[0],
                input,
                output,
            }),
            (Int8Op::Clamp, Op::Relu) => Ok(Step::Clamp {
                input,
                output,
                min: out_qp.zero_point,
                max: 255,
            }),
            (
                Int8Op::Clamp,
                Op::Clamp {
                    min: Some(lo),
                    max: Some(hi),
                },
            ) => {
                let q = quantized(&[*lo, *hi])?;
                Ok(Step::Clamp {
                    input,
                    output,
                    min: q[0],
                    max: q[1],
                })
            }
            (op, other) => Err(mismatch(node, op, other)),
        }
    }

    /// The step of a binary node (8- or 16-bit values: the executor reads each value's width).
    fn binary_step(&mut self, node: &Node, op: BinaryOp, input: ValueId) -> Result<Step> {
        let other = self.int8_version(node.inputs[1])?;
        let relu = match node.activation {
            None => false,
            Some(Activation::Relu) => true,
            Some(act) => {
                return Err(Error::Unsupported(format!(
                    "{act} fused into {} `{}`",
                    op.name(),
                    node.name
                )));
            }
        };
        Ok(Step::Binary {
            op,
            inputs: [input, other],
            output: node.outputs[0],
            relu,
        })
    }

    /// The step of a table, cat, pooling or reshape node.
    fn value_step(
        &mut self,
        node: &Node,
        op: Int8Op,
        [in_qp, out_qp]: [QParams; 2],
        input: ValueId,
    ) -> Result<Step> {
        let output = node.outputs[0];
        Ok(match (op, &node.op) {
            (Int8Op::Table, Op::Pointwise { name, body }) => Step::Table {
                name: name.clone(),
                table: self.table(body, node.inputs[0], in_qp, out_qp)?,
                input,
                output,
            },
            (Int8Op::Cat, _) => {
                let inputs = (node.inputs.iter())
                    .map(|&v| self.int8_version(v))
                    .collect::<Result<_>>()?;
                Step::Cat { inputs, output }
            }
            (Int8Op::MaxPool2d, Op::MaxPool2d(p)) => Step::MaxPool2d {
                pool: p.max_pool(),
                input,
                output,
            },
            (
                Int8Op::AvgPool2d,
                Op::AvgPool2d {
                    pool: p,
                    count_include_pad,
                },
            ) => Step::AvgPool2d {
                pool: p.avg_pool(*count_include_pad),
                input,
                output,
            },
            (Int8Op::GlobalAvgPool, _) => Step::GlobalAvgPool { input, output },
            (Int8Op::Reshape, _) => Step::Reshape { input, output },
            (op, other) => return Err(mismatch(node, op, other)),
        })
    }

    /// The table of the pointwise node that is the only reader of conv or linear `node`'s
    /// output, with that node's output value, when the pointwise node runs in int8: it is then
    /// applied in the layer's requantization and the pointwise node makes no step.
    fn fusable_table(&mut self, node: &Node) -> Result<Option<(Table, ValueId)>> {
        let x = node.outputs[0];
        let [reader] = self.graph.consumers(x)[..] else {
            return Ok(None);
        };
        let next = &self.graph.nodes[reader];
        let (Op::Pointwise { body, .. }, Placement::Int8(Int8Op::Table)) =
            (&next.op, &self.placement[reader])
        else {
            return Ok(None);
        };
        if self.graph.outputs.contains(&x) {
            return Ok(None);
        }
        let y = next.outputs[0];
        let (in_qp, out_qp) = (self.qparams(x)?, self.qparams(y)?);
        let table = self.table(body, x, in_qp, out_qp)?;
        self.domains[y.index()] = Domain::Int8(out_qp);
        self.fused.insert(next.name.clone(), node.name.clone());
        Ok(Some((table, y)))
    }

    /// The `u8 -> u8` table of a pointwise body reading `input`: the body run in float on the
    /// 256 dequantized inputs, its results quantized with `out_qp`.
    fn table(
        &self,
        body: &[Node],
        input: ValueId,
        in_qp: QParams,
        out_qp: QParams,
    ) -> Result<Table> {
        let codes: Vec<u8> = (0..=255).collect();
        let mut x = vec![0f32; 256];
        kernels::dequantize(&codes, in_qp, &mut x)?;
        let x = Tensor::<1>::from_data(TensorData::new(x, [256]), &self.device).into_dispatch();
        let y = pointwise(body, input, x, 1, &self.device)?;
        let mut table = vec![0u8; 256];
        kernels::quantize(&float_values::<f32>(y)?, out_qp, &mut table)?;
        Table::new(&table)
    }

    /// A layer's weights `[out, ...]` and bias quantized; with bias correction on, the bias
    /// first lowered by the mean output shift the weight rounding causes on the calibration
    /// data (see `prepare::PrepareOptions::bias_correction`).
    fn layer_weights(
        &self,
        node: &Node,
        weight: &[f32],
        shape: &[usize],
        bias: Option<Vec<f32>>,
        x_scale: f32,
        qconfig: &QConfig,
    ) -> Result<QWeights> {
        let name = &node.name;
        let quantized = quantize_weights(weight, shape, bias.as_deref(), x_scale, qconfig, name)?;
        let Some(means) = self.prepared.input_means(name) else {
            return Ok(quantized);
        };
        let per_channel = weight.len() / shape[0];
        let error: Vec<f32> = (weight.iter().zip(&quantized.weight).enumerate())
            .map(|(k, (&w, &q))| f32::from(q) * quantized.scales[k / per_channel] - w)
            .collect();
        let shift = means.shift(&error)?;
        let bias: Vec<f32> = match bias {
            Some(bias) => bias.iter().zip(&shift).map(|(b, s)| b - s).collect(),
            None => shift.iter().map(|s| -s).collect(),
        };
        quantize_weights(weight, shape, Some(&bias), x_scale, qconfig, name)
    }

    /// The float weight and optional bias of a conv or linear node.
    fn layer_data(&self, node: &Node) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let data = |k: usize| {
            node.inputs
                .get(k)
                .and_then(|v| self.graph.tensors.get(v))
                .map(|d| d.iter::<f32>().collect())
        };
        let weight = data(1).ok_or_else(|| {
            Error::InvalidGraph(format!("layer `{}` has no weight data", node.name))
        })?;
        Ok((weight, data(2)))
    }
}

/// Makes the parameters and constants `node` reads float parameters of the model (each once:
/// `ids` lists those made already, `floats` holds their tensors, flattened).
fn push_float_params(
    graph: &Graph,
    node: &Node,
    (ids, floats): (&mut Vec<ValueId>, &mut Vec<Param<Tensor<1>>>),
    device: &Device,
) {
    for input in &node.inputs {
        if let Some(data) = graph.tensors.get(input)
            && !ids.contains(input)
        {
            let values: Vec<f32> = data.iter::<f32>().collect();
            let n = values.len();
            let tensor = Tensor::<1>::from_data(TensorData::new(values, [n]), device);
            floats.push(Param::initialized(ParamId::new(), tensor));
            ids.push(*input);
        }
    }
}

/// Burn's linear weight `[in, out]` in PyTorch's and the kernels' layout `[out, in]`.
fn to_out_in(weight: &[f32], inputs: usize, outputs: usize) -> Vec<f32> {
    (0..outputs * inputs)
        .map(|k| weight[(k % inputs) * outputs + k / inputs])
        .collect()
}

/// The error of a node whose plan does not fit its op.
fn mismatch(node: &Node, op: Int8Op, other: &Op) -> Error {
    Error::InvalidGraph(format!(
        "node `{}`: {op:?} planned for op {}",
        node.name,
        other.kind()
    ))
}

/// The width of the weights `qconfig` gives layer `name`: 8 (`QInt8`), 12 (`QInt12`) or 16
/// (`QInt16`).
fn weight_bits(qconfig: &QConfig, name: &str) -> Result<u8> {
    match qconfig.weight.dtype {
        QDType::QInt8 => Ok(8),
        QDType::QInt12 => Ok(12),
        QDType::QInt16 => Ok(16),
        other => Err(Error::Unsupported(format!(
            "weights of `{name}`: the kernels take signed weights (QInt8, QInt12 or QInt16), the qconfig gives {other:?}"
        ))),
    }
}

/// A layer's weight scale per output channel from its qconfig's weight observer (symmetric:
/// zero point 0), and the observer's integer range.
fn observe_weights(
    weight: &[f32],
    shape: &[usize],
    qconfig: &QConfig,
    name: &str,
) -> Result<(Vec<f32>, [i32; 2])> {
    let mut observer = qconfig.weight.build()?;
    observer.observe(weight, shape).map_err(|e| match e {
        Error::NonFinite { .. } => Error::NonFinite {
            context: format!("the weights of `{name}`"),
        },
        other => other,
    })?;
    let qp = observer.qparams()?;
    if qp.zero_point.iter().any(|&z| z != 0) {
        return Err(Error::Unsupported(format!(
            "weights of `{name}`: the kernels take symmetric weights (zero point 0), the qconfig gives {:?}",
            qconfig.weight.scheme
        )));
    }
    let scales = match qp.scale.len() {
        1 => vec![qp.scale[0]; shape[0]],
        _ => qp.scale,
    };
    Ok((scales, [qp.quant_min, qp.quant_max]))
}

/// Weights `[out, ...]` rounded with a scale per output channel as fbgemm's `Quantize`
/// (non-legacy) does: `round_half_even(w · (1 / s)) + 0`, clamped to `[qmin, qmax]`.
fn round_weights(weight: &[f32], scales: &[f32], [qmin, qmax]: [i32; 2]) -> Vec<i16> {
    let per_channel = weight.len() / scales.len().max(1);
    (weight.iter().enumerate())
        .map(|(k, &w)| {
            let inv = 1.0 / scales[k / per_channel];
            (w * inv).round_ties_even().clamp(qmin as f32, qmax as f32) as i16
        })
        .collect()
}

/// Quantizes a layer's float weights `[out, ...]` with its qconfig's weight observer (its
/// signed type was checked with the layer's spec, [`weight_bits`]) and its bias to `i32` with
/// scale `s_x·s_w[c]`.
fn quantize_weights(
    weight: &[f32],
    shape: &[usize],
    bias: Option<&[f32]>,
    x_scale: f32,
    qconfig: &QConfig,
    name: &str,
) -> Result<QWeights> {
    let (observed, range) = observe_weights(weight, shape, qconfig, name)?;
    let bias = bias
        .map(<[f32]>::to_vec)
        .unwrap_or_else(|| vec![0.0; shape[0]]);
    // A channel with (nearly) zero weights and a bias would overflow the integer bias.
    let scales = kernels::bias_safe_weight_scales(&bias, x_scale, &observed);
    Ok(QWeights {
        weight: round_weights(weight, &scales, range),
        bias: kernels::quantize_bias(&bias, x_scale, &scales),
        scales,
    })
}
