//! The debug model (`convert_debug`): the converted model computed in float, with fake
//! quantization at every quantized value, giving the same integers as the int8 model.
//!
//! PyTorch's debug/reference model is "close to" its int8 model. Here every quantized
//! convolution and linear layer is computed by Burn's float ops (in `f64`, on the integers the
//! kernels see, which is exact), and every quantization point applies the kernels' scalar
//! definition; so every quantized activation is bit-identical to the int8 model's, while none of
//! the kernels' packing, im2col or SIMD code runs. Its graph keeps the float weights by module
//! path, BatchNorm folded and fake-quantized (`s_w · q_w`).

use burn::tensor::{Tensor, TensorData};

use super::{QuantizedModel, convert};
use crate::Result;
use crate::capture::Tensors;
use crate::exec::{Arithmetic, RunValue};
use crate::graph::{Graph, ValueId};
use crate::nn::QWeights;
use crate::prepare::PreparedModel;

/// The debug model of a calibrated [`PreparedModel`].
#[derive(Debug)]
pub struct DebugModel {
    model: QuantizedModel,
    graph: Graph,
}

/// Converts a calibrated model into its debug model (see the module documentation).
pub fn convert_debug(prepared: &PreparedModel) -> Result<DebugModel> {
    let model = convert(prepared)?;
    let mut graph = prepared.graph().clone();
    for (layer, conv) in model.program.convs.iter().zip(&model.layers.convs) {
        let w = conv.weights()?;
        let weight = TensorData::new(w.dequantized(), conv.weight.val().dims().to_vec());
        set_layer(
            &mut graph,
            &layer.name,
            weight,
            &w,
            layer.spec.input.scale(),
        );
    }
    for (layer, linear) in model.program.linears.iter().zip(&model.layers.linears) {
        let w = linear.weights()?;
        let (outs, ins) = (layer.out_features, layer.in_features);
        let weight = TensorData::new(w.dequantized_linear_burn_layout(outs), [ins, outs]);
        set_layer(
            &mut graph,
            &layer.name,
            weight,
            &w,
            layer.spec.input.scale(),
        );
    }
    Ok(DebugModel { model, graph })
}

/// Gives node `name` its fake-quantized weight and bias (`b_i32 · s_x · s_w[c]`).
fn set_layer(graph: &mut Graph, name: &str, weight: TensorData, w: &QWeights, x_scale: f32) {
    let Some(node) = graph.nodes.iter().find(|n| n.name == name) else {
        return;
    };
    let ids: Vec<ValueId> = node.inputs[1..].to_vec();
    graph.tensors.insert(ids[0], weight);
    if let Some(&b) = ids.get(1) {
        let bias: Vec<f32> = w
            .bias
            .iter()
            .zip(&w.scales)
            .map(|(&b, &s)| b as f32 * (x_scale * s))
            .collect();
        let n = bias.len();
        graph.tensors.insert(b, TensorData::new(bias, [n]));
    }
}

impl DebugModel {
    /// The prepared float graph with BatchNorm folded and weights fake-quantized, parameters by
    /// module path (`graph().parameter("layer1.0.conv1.weight")`).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The int8 model it mirrors (its program and report).
    pub fn quantized(&self) -> &QuantizedModel {
        &self.model
    }

    /// Runs the model in float (see the module documentation).
    pub fn forward<const DI: usize, const DO: usize>(
        &self,
        input: Tensor<DI>,
    ) -> Result<Tensor<DO>> {
        self.run(input)
    }

    /// [`forward`](Self::forward) for models of several inputs or outputs (see
    /// [`QuantizedModel::try_run`]).
    pub fn run<I: Tensors, O: Tensors>(&self, inputs: I) -> Result<O> {
        self.model
            .run_with(inputs, Arithmetic::FloatReference, None)
    }

    /// Runs the model and shows every value to `tap`, as
    /// [`QuantizedModel::forward_observed`] does (same value ids, same integers).
    pub fn forward_observed<const DI: usize, const DO: usize>(
        &self,
        input: Tensor<DI>,
        tap: &mut dyn FnMut(ValueId, &RunValue) -> Result<()>,
    ) -> Result<Tensor<DO>> {
        self.model
            .run_with(input, Arithmetic::FloatReference, Some(tap))
    }
}
