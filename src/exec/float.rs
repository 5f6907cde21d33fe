//! The float interpreter: runs a [`Graph`] with Burn tensors on a Burn device.

use std::borrow::Borrow;
use std::collections::HashMap;

use burn::backend::ops::{BoolTensorOps, FloatTensorOps, IntTensorOps};
use burn::backend::{Dispatch, DispatchTensor, TensorMetadata};
use burn::tensor::{Device, Tensor};

use crate::graph::{Graph, Node, RunShapes, ValueId, ValueKind};
use crate::ops as float_ops;
use crate::{Error, Result};

/// Runs a [`Graph`] in float on one Burn device (NdArray, Flex, or any other; ops without a
/// lowering need Flex or NdArray), with the graph's parameters uploaded once.
///
/// ```no_run
/// # use burn::prelude::*;
/// # use burn_quantize::{Graph, exec::FloatExecutor, models::ResNet};
/// # let device = Device::default();
/// # let model = ResNet::resnet18(1000, &device);
/// # let images = Tensor::<4>::zeros([2, 3, 224, 224], &device);
/// let graph = Graph::capture(&model, &images)?;
/// let float = FloatExecutor::new(&graph, &device)?;
/// let logits: Tensor<2> = float.forward(images)?;   // what model.forward(images) returns
/// # Ok::<(), burn_quantize::Error>(())
/// ```
///
/// `G` is how it holds the graph: `&Graph` to borrow it, `Arc<Graph>` or `Graph` to own it.
pub struct FloatExecutor<G: Borrow<Graph>> {
    graph: G,
    device: Device,
    /// Parameters and constants, on the device.
    tensors: HashMap<ValueId, DispatchTensor>,
    /// For each node, the values it reads for the last time (freed after it runs).
    frees: Vec<Vec<ValueId>>,
}

impl<G: Borrow<Graph>> FloatExecutor<G> {
    /// Validates `graph` and uploads its parameters and constants to `device`.
    pub fn new(graph: G, device: &Device) -> Result<Self> {
        let frees = last_reads(graph.borrow());
        let tensors = upload(graph.borrow(), device)?;
        Ok(FloatExecutor {
            graph,
            device: device.clone(),
            tensors,
            frees,
        })
    }

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The graph it runs.
    pub fn graph(&self) -> &Graph {
        self.graph.borrow()
    }

    /// Runs the graph on one input of rank `DI` and returns its one output of rank `DO`.
    pub fn forward<const DI: usize, const DO: usize>(
        &self,
        input: Tensor<DI>,
    ) -> Result<Tensor<DO>> {
        let input = input.to_device(&self.device).into_dispatch();
        crate::ops::single_output(self.run(vec![input])?)
    }

    /// Runs the graph on its inputs (on this executor's device) and returns its outputs.
    pub fn run(&self, inputs: Vec<DispatchTensor>) -> Result<Vec<DispatchTensor>> {
        self.run_observed(inputs, &mut |_, _| Ok(()))
    }

    /// Runs the graph and shows every node's outputs to `observe` as they are computed (used by
    /// calibration and the numeric suite).
    pub fn run_observed(
        &self,
        inputs: Vec<DispatchTensor>,
        observe: &mut dyn FnMut(&Node, &[DispatchTensor]) -> Result<()>,
    ) -> Result<Vec<DispatchTensor>> {
        self.run_transformed(inputs, &HashMap::new(), &mut |node, args, run| {
            let outputs = run(node, args)?;
            observe(node, &outputs)?;
            Ok(outputs)
        })
    }

    /// Runs the graph with some parameters replaced (`params`, by value id: trainable tensors
    /// in quantization-aware training) and every node run by `step`, which gets the node, its
    /// arguments and the float interpreter's way of running a node, and may change any of
    /// them or the outputs (fake quantization, BatchNorm with batch statistics).
    pub(crate) fn run_transformed(
        &self,
        inputs: Vec<DispatchTensor>,
        params: &HashMap<ValueId, DispatchTensor>,
        step: &mut NodeStep<'_>,
    ) -> Result<Vec<DispatchTensor>> {
        let graph = self.graph.borrow();
        let mut shapes =
            RunShapes::new(graph, inputs.iter().map(|t| t.shape().to_vec()).collect())?;
        let n = shapes.batch();
        let mut live: HashMap<ValueId, DispatchTensor> =
            graph.inputs.iter().copied().zip(inputs).collect();
        let value = |live: &HashMap<ValueId, DispatchTensor>, id: ValueId| {
            live.get(&id)
                .or_else(|| params.get(&id))
                .or_else(|| self.tensors.get(&id))
                .cloned()
                .ok_or_else(|| {
                    Error::InvalidGraph(format!("value {id} is read but was never made"))
                })
        };
        for (node, frees) in graph.nodes.iter().zip(&self.frees) {
            let args = (node.inputs.iter())
                .map(|id| value(&live, *id))
                .collect::<Result<Vec<_>>>()?;
            shapes.infer(node)?;
            let run = |node: &Node, args| {
                float_ops::run_node(node, args, &|id| shapes.get(id), n, &self.device)
            };
            let outputs = step(node, args, &run)?;
            check_outputs(node, &outputs, &shapes)?;
            live.extend(node.outputs.iter().copied().zip(outputs));
            for id in frees {
                live.remove(id);
            }
        }
        graph.outputs.iter().map(|id| value(&live, *id)).collect()
    }
}

/// Every output has the shape inferred for this run (a check of the inference, and of ops
/// that Burn's interpreter ran).
fn check_outputs(node: &Node, outputs: &[DispatchTensor], shapes: &RunShapes<Graph>) -> Result<()> {
    if outputs.len() != node.outputs.len() {
        return Err(Error::InvalidGraph(format!(
            "node `{}` made {} outputs, the graph expects {}",
            node.name,
            outputs.len(),
            node.outputs.len()
        )));
    }
    for (&id, t) in node.outputs.iter().zip(outputs) {
        let expected = shapes.get(id)?;
        let got = t.shape().to_vec();
        if got != expected {
            return Err(Error::Shape {
                context: format!("output {id} of node `{}`", node.name),
                expected: format!("{expected:?}"),
                got: format!("{got:?}"),
            });
        }
    }
    Ok(())
}

type B = Dispatch;

/// Runs a node on its arguments (the float interpreter's op).
pub(crate) type RunNode<'a> =
    dyn Fn(&Node, Vec<DispatchTensor>) -> Result<Vec<DispatchTensor>> + 'a;

/// How [`FloatExecutor::run_transformed`] runs each node: the node, its arguments, and
/// [`RunNode`].
pub(crate) type NodeStep<'a> =
    dyn FnMut(&Node, Vec<DispatchTensor>, &RunNode<'_>) -> Result<Vec<DispatchTensor>> + 'a;

/// Validates `graph` and uploads its parameters and constants to `device`.
fn upload(graph: &Graph, device: &Device) -> Result<HashMap<ValueId, DispatchTensor>> {
    graph.validate()?;
    let dev = device.as_dispatch();
    graph
        .tensors
        .iter()
        .map(|(&id, data)| {
            let dtype = data.dtype();
            let tensor = if dtype.is_float() {
                B::float_from_data(data.clone(), dev)
            } else if dtype.is_int() || dtype.is_uint() {
                B::int_from_data(data.clone(), dev)
            } else if dtype.is_bool() {
                B::bool_from_data(data.clone(), dev)
            } else {
                return Err(Error::Unsupported(format!(
                    "constant {id} of type {dtype:?}"
                )));
            };
            Ok((id, tensor))
        })
        .collect()
}

/// For each node, the activations it is the last reader of (graph outputs are never freed).
fn last_reads(graph: &Graph) -> Vec<Vec<ValueId>> {
    let mut last: HashMap<ValueId, usize> = HashMap::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        for &id in &node.inputs {
            if matches!(
                graph.value(id).kind,
                ValueKind::Activation | ValueKind::Input
            ) {
                last.insert(id, i);
            }
        }
    }
    let mut frees = vec![Vec::new(); graph.nodes.len()];
    for (id, i) in last {
        if !graph.outputs.contains(&id) {
            frees[i].push(id);
        }
    }
    frees
}
