//! The tensors of a record: what a model's layers write, what a (validated) program expects to
//! read, and the layers built from tensors that were checked against it. Nothing is allocated
//! from the program's sizes alone: a layer's buffers are the file's own bytes, decoded after
//! their type and shape matched what the program says.

use std::collections::BTreeMap;

use burn::module::{Param, ParamId};
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::graph::ValueShapes;
use crate::nn::{QConv2d, QDynamicLinear, QLayerSpec, QLinear, QWeights};
use crate::program::{DynamicLinearLayer, QuantizedLayers, QuantizedProgram};

/// A tensor of a record.
pub(super) struct RecordTensor {
    /// Its name (`convs.0.weight`, `floats.3`, ...).
    pub name: String,
    /// Its data.
    pub data: TensorData,
}

/// The tensors of `layers`, named as Burn names the module's parameters.
pub(super) fn of_layers(layers: &QuantizedLayers) -> Vec<RecordTensor> {
    let mut tensors = Vec::new();
    let mut push = |name: String, data: TensorData| tensors.push(RecordTensor { name, data });
    let convs =
        (layers.convs.iter()).map(|l| (l.weight.val().into_data(), &l.bias, &l.weight_scale));
    let linears =
        (layers.linears.iter()).map(|l| (l.weight.val().into_data(), &l.bias, &l.weight_scale));
    let prefixed = |kind: &'static str| move |(i, layer)| (format!("{kind}.{i}"), layer);
    let layers_of = (convs.enumerate().map(prefixed("convs")))
        .chain(linears.enumerate().map(prefixed("linears")));
    for (prefix, (weight, bias, scale)) in layers_of {
        push(format!("{prefix}.weight"), weight);
        push(format!("{prefix}.bias"), bias.val().into_data());
        push(format!("{prefix}.weight_scale"), scale.val().into_data());
    }
    for (i, l) in layers.dynamic_linears.iter().enumerate() {
        push(
            format!("dynamic_linears.{i}.weight"),
            l.weight.val().into_data(),
        );
        push(
            format!("dynamic_linears.{i}.weight_scale"),
            l.weight_scale.val().into_data(),
        );
        push(
            format!("dynamic_linears.{i}.bias"),
            l.bias.val().into_data(),
        );
    }
    for (i, p) in layers.floats.iter().enumerate() {
        push(format!("floats.{i}"), p.val().into_data());
    }
    tensors
}

/// Builds the layers of a validated `program` from the record's tensors, after checking that
/// the file holds exactly the tensors the program reads, each of the type and shape it says,
/// with weights in their range and finite, positive scales. The error names the tensor.
pub(super) fn layers(
    program: &QuantizedProgram,
    mut tensors: BTreeMap<String, TensorData>,
    device: &Device,
) -> Result<QuantizedLayers, String> {
    let mut take = |name: String, dtype: DType, shape: Vec<usize>| {
        let data = tensors
            .remove(&name)
            .ok_or_else(|| format!("tensor `{name}` is missing"))?;
        if data.dtype() != dtype || data.shape().as_slice() != shape.as_slice() {
            return Err(format!(
                "tensor `{name}` is {:?} {:?}; the program reads {dtype:?} {shape:?}",
                data.dtype(),
                data.shape().as_slice()
            ));
        }
        Ok((name, data))
    };
    let mut convs = Vec::new();
    for (i, l) in program.convs.iter().enumerate() {
        let g = l.geometry;
        let shape = vec![
            g.out_channels,
            g.in_channels / g.groups,
            g.kernel[0],
            g.kernel[1],
        ];
        let weights = weights(&mut take, &format!("convs.{i}"), shape, &l.spec)?;
        let layer = QConv2d::new(g, weights, l.spec.clone(), device);
        convs.push(layer.map_err(|e| format!("convolution `{}`: {e}", l.name))?);
    }
    let mut linears = Vec::new();
    for (i, l) in program.linears.iter().enumerate() {
        let shape = vec![l.out_features, l.in_features];
        let weights = weights(&mut take, &format!("linears.{i}"), shape, &l.spec)?;
        let layer = QLinear::new(
            l.out_features,
            l.in_features,
            weights,
            l.spec.clone(),
            device,
        );
        linears.push(layer.map_err(|e| format!("linear layer `{}`: {e}", l.name))?);
    }
    let mut dynamic_linears = Vec::new();
    for (i, l) in program.dynamic_linears.iter().enumerate() {
        let layer = dynamic_linear(&mut take, &format!("dynamic_linears.{i}"), l, device)
            .map_err(|e| format!("dynamic linear layer `{}`: {e}", l.name))?;
        dynamic_linears.push(layer);
    }
    let mut floats = Vec::new();
    for (i, &id) in program.float_params.iter().enumerate() {
        let n = program
            .shape_at(id, 1)
            .map_err(|e| e.to_string())?
            .iter()
            .product();
        let (_, data) = take(format!("floats.{i}"), DType::F32, vec![n])?;
        floats.push(Param::initialized(
            ParamId::new(),
            Tensor::from_data(data, device),
        ));
    }
    match tensors.keys().next() {
        Some(name) => Err(format!("tensor `{name}` is not read by the program")),
        None => Ok(QuantizedLayers {
            convs,
            linears,
            dynamic_linears,
            floats,
        }),
    }
}

type Take<'a> = dyn FnMut(String, DType, Vec<usize>) -> Result<(String, TensorData), String> + 'a;

/// The weights, biases and scales of layer `prefix`, whose weights have `shape`.
fn weights(
    take: &mut Take,
    prefix: &str,
    shape: Vec<usize>,
    spec: &QLayerSpec,
) -> Result<QWeights, String> {
    let channels = shape[0];
    let dtype = spec.weight_dtype().map_err(|e| e.to_string())?;
    let (name, weight) = take(format!("{prefix}.weight"), dtype, shape)?;
    let weight: Vec<i16> = weight.iter::<i16>().collect();
    let limit = match spec.weight_bits {
        12 => 2047,
        _ => 32767,
    };
    if let Some(w) = weight.iter().find(|w| w.unsigned_abs() > limit) {
        return Err(format!(
            "tensor `{name}` holds {w}, outside the range of {}-bit weights",
            spec.weight_bits
        ));
    }
    let (_, bias) = take(format!("{prefix}.bias"), DType::I32, vec![channels])?;
    let (name, scales) = take(format!("{prefix}.weight_scale"), DType::F32, vec![channels])?;
    let scales: Vec<f32> = scales.iter::<f32>().collect();
    if let Some(s) = scales.iter().find(|s| !(s.is_normal() && **s > 0.0)) {
        return Err(format!("tensor `{name}` holds the weight scale {s}"));
    }
    Ok(QWeights {
        weight,
        bias: bias.iter::<i32>().collect(),
        scales,
    })
}

/// Dynamic linear layer `prefix` of shape `layer`: `i8` weights, finite positive scales and
/// finite biases (checked when it packs).
fn dynamic_linear(
    take: &mut Take,
    prefix: &str,
    layer: &DynamicLinearLayer,
    device: &Device,
) -> Result<QDynamicLinear, String> {
    let (out_features, in_features) = (layer.out_features, layer.in_features);
    let shape = vec![out_features, in_features];
    let (_, weight) = take(format!("{prefix}.weight"), DType::I8, shape)?;
    let (_, scales) = take(
        format!("{prefix}.weight_scale"),
        DType::F32,
        vec![out_features],
    )?;
    let (_, bias) = take(format!("{prefix}.bias"), DType::F32, vec![out_features])?;
    QDynamicLinear::new(
        out_features,
        in_features,
        weight.iter::<i8>().collect(),
        scales.iter::<f32>().collect(),
        bias.iter::<f32>().collect(),
        device,
    )
    .map_err(|e| e.to_string())
}
