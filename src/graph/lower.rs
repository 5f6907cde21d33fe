//! Lowering: Burn's recorded operations (`burn_ir::OperationIr`) to our [`Graph`].
//!
//! The ops this crate understands become typed [`Op`]s; every other op is kept whole as an
//! [`Op::Fallback`] that Burn's own interpreter runs, so no model is rejected. Shapes are taken as
//! recorded (all fixed); [`make_batch_free`](super::make_batch_free) makes them symbolic.

use std::collections::{BTreeMap, HashMap};

use burn::tensor::TensorData;
use burn_ir::{
    ActivationOperationIr, BaseOperationIr, FloatOperationIr, IrVisitorMut, ModuleOperationIr,
    NumericOperationIr, OperationIr, PadModeIr, ScalarIr, TensorId, TensorIr,
};

use super::{
    BatchMode, BinaryOp, Conv2dAttrs, Dim, GRAPH_FORMAT_VERSION, Graph, ModuleRef, Node, Op,
    PadMode, ParamRef, Pool2dAttrs, ReduceOp, SliceRange, ValueId, ValueInfo, ValueKind,
};
use crate::{Error, Result};

/// What Burn recorded in one capture scope, with the parameter paths found in the module tree.
pub(crate) struct Recorded<'a> {
    /// Operations in execution order.
    pub operations: &'a [OperationIr],
    /// Declared runtime inputs.
    pub inputs: &'a [TensorId],
    /// Declared outputs.
    pub outputs: &'a [TensorId],
    /// Data of every initialized tensor (parameters, constants, the sample input).
    pub values: &'a BTreeMap<TensorId, TensorData>,
    /// Module path and layer type of each parameter tensor.
    pub params: &'a HashMap<TensorId, ParamRef>,
}

/// Lowers one capture to a graph with fixed shapes.
pub(crate) fn lower(rec: &Recorded<'_>) -> Result<Graph> {
    let mut builder = Builder {
        rec,
        ids: HashMap::new(),
        graph: Graph {
            version: GRAPH_FORMAT_VERSION,
            values: Vec::new(),
            nodes: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            tensors: BTreeMap::new(),
            batch: BatchMode::Free,
        },
        names: HashMap::new(),
    };
    for id in rec.inputs {
        let info = rec
            .operations
            .iter()
            .flat_map(|op| op.nodes())
            .find(|t| t.id == *id)
            .ok_or_else(|| Error::Capture(format!("graph input {id} is never used")))?;
        let value = builder.new_value(info, ValueKind::Input);
        builder.ids.insert(*id, value);
        builder.graph.inputs.push(value);
    }
    for op in rec.operations {
        builder.lower_op(op)?;
    }
    for id in rec.outputs {
        let value = *builder
            .ids
            .get(id)
            .ok_or_else(|| Error::Capture(format!("graph output {id} is never produced")))?;
        builder.graph.outputs.push(value);
    }
    builder.graph.validate()?;
    Ok(builder.graph)
}

struct Builder<'a> {
    rec: &'a Recorded<'a>,
    ids: HashMap<TensorId, ValueId>,
    graph: Graph,
    /// How many nodes of each kind were named so far, for `add_3`-style names.
    names: HashMap<String, usize>,
}

/// An op in our terms: the op, Burn's input tensors (in our input order) and outputs.
type Lowered<'o> = (Op, Vec<&'o TensorIr>, Vec<&'o TensorIr>);

impl Builder<'_> {
    fn new_value(&mut self, t: &TensorIr, kind: ValueKind) -> ValueId {
        self.graph.add_value(ValueInfo {
            shape: t.shape.iter().map(|&d| Dim::fixed(d)).collect(),
            dtype: t.dtype,
            kind,
        })
    }

    /// The value of a tensor the op reads: known already, or a parameter or constant seen for
    /// the first time.
    fn input_value(&mut self, t: &TensorIr) -> Result<ValueId> {
        if let Some(&v) = self.ids.get(&t.id) {
            return Ok(v);
        }
        let data = self.rec.values.get(&t.id).ok_or_else(|| {
            Error::Capture(format!(
                "the forward reads tensor {} that it never made",
                t.id
            ))
        })?;
        let kind = match self.rec.params.get(&t.id) {
            Some(p) => ValueKind::Parameter(p.clone()),
            None => ValueKind::Constant,
        };
        let v = self.new_value(t, kind);
        self.graph.tensors.insert(v, data.clone());
        self.ids.insert(t.id, v);
        Ok(v)
    }

    fn lower_op(&mut self, op: &OperationIr) -> Result<()> {
        if matches!(op, OperationIr::Init(_) | OperationIr::Drop(_)) {
            return Ok(());
        }
        let (lowered, inputs, outputs) = match lower_known(op) {
            Some(l) => l,
            None => (
                Op::Fallback(Box::new(op.clone())),
                op.inputs().collect(),
                op.outputs().collect(),
            ),
        };
        let inputs = inputs
            .into_iter()
            .map(|t| self.input_value(t))
            .collect::<Result<Vec<_>>>()?;
        let outputs: Vec<ValueId> = outputs
            .into_iter()
            .map(|t| {
                let v = self.new_value(t, ValueKind::Activation);
                self.ids.insert(t.id, v);
                v
            })
            .collect();
        let op = match lowered {
            Op::Fallback(mut ir) => {
                ir.visit_mut(&mut RenameToValues { ids: &self.ids });
                Op::Fallback(ir)
            }
            other => other,
        };
        let module = inputs
            .iter()
            .find_map(|v| match &self.graph.value(*v).kind {
                ValueKind::Parameter(p) => Some(ModuleRef {
                    path: p.module.clone(),
                    layer: p.layer.clone(),
                }),
                _ => None,
            });
        let name = self.node_name(&op, module.as_ref());
        self.graph.nodes.push(Node {
            name,
            op,
            inputs,
            outputs,
            module,
            activation: None,
        });
        Ok(())
    }

    /// The layer's module path for the first node that uses its parameters, else `kind_k`.
    fn node_name(&mut self, op: &Op, module: Option<&ModuleRef>) -> String {
        if let Some(m) = module
            && !m.path.is_empty()
            && self.graph.nodes.iter().all(|n| n.name != m.path)
        {
            return m.path.clone();
        }
        let kind = op.kind().replace(':', "_").to_lowercase();
        let count = self.names.entry(kind.clone()).or_insert(0);
        *count += 1;
        format!("{kind}_{count}")
    }
}

/// Gives a fallback op our value ids as tensor ids and forgets its recorded shapes (they are
/// filled in from the graph's symbolic shapes when it runs).
struct RenameToValues<'a> {
    ids: &'a HashMap<TensorId, ValueId>,
}

impl IrVisitorMut for RenameToValues<'_> {
    fn visit_tensor_mut(&mut self, tensor: &mut TensorIr) {
        if let Some(v) = self.ids.get(&tensor.id) {
            tensor.id = TensorId::new(u64::from(v.0));
        }
        tensor.shape = burn::tensor::Shape::new([0; 0]);
    }
}

/// Lowers the ops we understand; `None` for the rest.
fn lower_known(op: &OperationIr) -> Option<Lowered<'_>> {
    match op {
        OperationIr::Module(m) => lower_module(m),
        OperationIr::Activation(a) => lower_activation(a),
        OperationIr::Float(_, FloatOperationIr::Matmul(m)) => {
            Some((Op::Matmul, vec![&m.lhs, &m.rhs], vec![&m.out]))
        }
        OperationIr::Float(_, FloatOperationIr::Tanh(u)) => {
            Some((Op::Tanh, vec![&u.input], vec![&u.out]))
        }
        OperationIr::NumericFloat(_, n) => lower_numeric(n),
        OperationIr::BaseFloat(b) => lower_base(b),
        _ => None,
    }
}

fn lower_module(op: &ModuleOperationIr) -> Option<Lowered<'_>> {
    Some(match op {
        ModuleOperationIr::Conv2d(c) => {
            let o = &c.options;
            let attrs = Conv2dAttrs {
                stride: o.stride,
                padding: [
                    o.padding[0].0,
                    o.padding[1].0,
                    o.padding[0].1,
                    o.padding[1].1,
                ],
                dilation: o.dilation,
                groups: o.groups,
            };
            let mut inputs = vec![&c.x, &c.weight];
            inputs.extend(c.bias.as_ref());
            (Op::Conv2d(attrs), inputs, vec![&c.out])
        }
        ModuleOperationIr::BatchNorm(b) => (
            Op::BatchNorm {
                epsilon: b.epsilon.elem(),
            },
            vec![&b.x, &b.gamma, &b.beta, &b.mean, &b.variance],
            vec![&b.out],
        ),
        ModuleOperationIr::Linear(l) => {
            let mut inputs = vec![&l.x, &l.weight];
            inputs.extend(l.bias.as_ref());
            (Op::Linear, inputs, vec![&l.out])
        }
        ModuleOperationIr::MaxPool2d(p) => (
            Op::MaxPool2d(Pool2dAttrs {
                kernel: p.kernel_size,
                stride: p.stride,
                padding: p.padding,
                dilation: p.dilation,
                ceil_mode: p.ceil_mode,
            }),
            vec![&p.x],
            vec![&p.out],
        ),
        ModuleOperationIr::AvgPool2d(p) => (
            Op::AvgPool2d {
                pool: Pool2dAttrs {
                    kernel: p.kernel_size,
                    stride: p.stride,
                    padding: p.padding,
                    dilation: [1, 1],
                    ceil_mode: p.ceil_mode,
                },
                count_include_pad: p.count_include_pad,
            },
            vec![&p.x],
            vec![&p.out],
        ),
        ModuleOperationIr::AdaptiveAvgPool2d(p) => (
            Op::AdaptiveAvgPool2d {
                output: p.output_size,
            },
            vec![&p.x],
            vec![&p.out],
        ),
        _ => return None,
    })
}

fn lower_activation(op: &ActivationOperationIr) -> Option<Lowered<'_>> {
    Some(match op {
        ActivationOperationIr::Relu(u) => (Op::Relu, vec![&u.input], vec![&u.out]),
        ActivationOperationIr::Gelu(u) => (Op::Gelu, vec![&u.input], vec![&u.out]),
        ActivationOperationIr::Sigmoid(u) => (Op::Sigmoid, vec![&u.input], vec![&u.out]),
        ActivationOperationIr::Softmax(d) => {
            (Op::Softmax { axis: d.axis }, vec![&d.input], vec![&d.out])
        }
        _ => return None,
    })
}

fn lower_numeric(op: &NumericOperationIr) -> Option<Lowered<'_>> {
    use NumericOperationIr as N;
    fn binary(kind: BinaryOp, b: &burn_ir::BinaryOpIr) -> Lowered<'_> {
        (Op::Binary(kind), vec![&b.lhs, &b.rhs], vec![&b.out])
    }
    fn scalar(kind: BinaryOp, s: &burn_ir::ScalarOpIr) -> Lowered<'_> {
        (
            Op::Scalar {
                op: kind,
                value: s.rhs,
            },
            vec![&s.lhs],
            vec![&s.out],
        )
    }
    fn clamp<'o>(
        min: Option<&ScalarIr>,
        max: Option<&ScalarIr>,
        t: &'o TensorIr,
        out: &'o TensorIr,
    ) -> Lowered<'o> {
        let bound = |s: Option<&ScalarIr>| s.map(|s| s.elem::<f64>());
        (
            Op::Clamp {
                min: bound(min),
                max: bound(max),
            },
            vec![t],
            vec![out],
        )
    }
    fn reduce(op: ReduceOp, axes: Option<Vec<usize>>, r: &burn_ir::ReduceOpIr) -> Lowered<'_> {
        (Op::Reduce { op, axes }, vec![&r.input], vec![&r.out])
    }
    fn reduce_dim(op: ReduceOp, r: &burn_ir::ReduceDimOpIr) -> Lowered<'_> {
        (
            Op::Reduce {
                op,
                axes: Some(vec![r.axis]),
            },
            vec![&r.input],
            vec![&r.out],
        )
    }
    Some(match op {
        N::Add(b) => binary(BinaryOp::Add, b),
        N::Sub(b) => binary(BinaryOp::Sub, b),
        N::Mul(b) => binary(BinaryOp::Mul, b),
        N::Div(b) => binary(BinaryOp::Div, b),
        N::AddScalar(s) => scalar(BinaryOp::Add, s),
        N::SubScalar(s) => scalar(BinaryOp::Sub, s),
        N::MulScalar(s) => scalar(BinaryOp::Mul, s),
        N::DivScalar(s) => scalar(BinaryOp::Div, s),
        N::Clamp(c) => clamp(Some(&c.min), Some(&c.max), &c.tensor, &c.out),
        N::ClampMin(s) => clamp(Some(&s.rhs), None, &s.lhs, &s.out),
        N::ClampMax(s) => clamp(None, Some(&s.rhs), &s.lhs, &s.out),
        N::Mean(r) => reduce(ReduceOp::Mean, None, r),
        N::Sum(r) => reduce(ReduceOp::Sum, None, r),
        N::MeanDim(r) => reduce_dim(ReduceOp::Mean, r),
        N::SumDim(r) => reduce_dim(ReduceOp::Sum, r),
        N::SumDims(r) => (
            Op::Reduce {
                op: ReduceOp::Sum,
                axes: Some(r.axes.clone()),
            },
            vec![&r.input],
            vec![&r.out],
        ),
        N::Pad(p) => {
            let mode = match p.mode {
                PadModeIr::Constant(v) => PadMode::Constant(v.elem()),
                PadModeIr::Reflect => PadMode::Reflect,
                PadModeIr::Edge => PadMode::Edge,
            };
            (
                Op::Pad {
                    padding: p.padding.clone(),
                    mode,
                },
                vec![&p.input],
                vec![&p.out],
            )
        }
        _ => return None,
    })
}

fn lower_base(op: &BaseOperationIr) -> Option<Lowered<'_>> {
    Some(match op {
        BaseOperationIr::Reshape(r) => (
            Op::Reshape {
                shape: r.out.shape.iter().map(|&d| Dim::fixed(d)).collect(),
            },
            vec![&r.input],
            vec![&r.out],
        ),
        BaseOperationIr::Permute(p) => (
            Op::Permute {
                axes: p.axes.clone(),
            },
            vec![&p.input],
            vec![&p.out],
        ),
        BaseOperationIr::SwapDims(s) => {
            let mut axes: Vec<usize> = (0..s.input.shape.num_dims()).collect();
            axes.swap(s.dim1, s.dim2);
            (Op::Permute { axes }, vec![&s.input], vec![&s.out])
        }
        BaseOperationIr::Cat(c) => (
            Op::Cat { axis: c.dim },
            c.tensors.iter().collect(),
            vec![&c.out],
        ),
        BaseOperationIr::Slice(s) => {
            // Axes past the recorded ranges are taken whole.
            let ranges = s
                .tensor
                .shape
                .iter()
                .enumerate()
                .map(|(axis, &size)| match s.ranges.get(axis) {
                    Some(r) => {
                        let range = r.to_range(size);
                        SliceRange {
                            start: Dim::fixed(range.start),
                            end: Dim::fixed(range.end),
                            step: r.step,
                        }
                    }
                    None => SliceRange {
                        start: Dim::fixed(0),
                        end: Dim::fixed(size),
                        step: 1,
                    },
                })
                .collect();
            (Op::Slice { ranges }, vec![&s.tensor], vec![&s.out])
        }
        _ => return None,
    })
}
