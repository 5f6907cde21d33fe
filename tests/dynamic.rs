//! Dynamic quantization of a Burn transformer encoder (attention, LayerNorm, GELU, residuals)
//! captured through the normal path: every Linear layer int8, the rest float, outputs close to
//! the float model at any batch size, records that load back to the same outputs, and the
//! qconfig's `None` entries kept in float.

mod common;

use burn::nn::transformer::TransformerEncoderConfig;
use burn::tensor::{Device, Tensor, TensorData};
use burn_quantize::graph::Op;
use burn_quantize::models::transformer::Encoder;
use burn_quantize::program::{Int8Op, Placement};
use burn_quantize::qconfig::{DynamicConfig, Engine, QConfig, QConfigMap};
use burn_quantize::quantized::QuantizedModel;
use burn_quantize::{Error, Graph, quantize_dynamic};

const FEATURES: usize = 64;

fn encoder(device: &Device) -> Encoder {
    let config = TransformerEncoderConfig::new(FEATURES, 256, 4, 2).with_dropout(0.0);
    common::seeded(Encoder::new(&config, device), 3)
}

/// Deterministic token features `[n, seq, FEATURES]`, a different offset per token.
fn tokens(n: usize, seq: usize, seed: u64, device: &Device) -> Tensor<3> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let values: Vec<f32> = (0..n * seq * FEATURES)
        .map(|k| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
            (unit * 2.0 - 1.0) * 1.5 + ((k / FEATURES) % 5) as f32 * 0.2
        })
        .collect();
    Tensor::from_data(TensorData::new(values, [n, seq, FEATURES]), device)
}

fn dynamic_nodes(qmodel: &QuantizedModel) -> Vec<String> {
    (qmodel.program().report.iter())
        .filter(|r| r.placement == Placement::Int8(Int8Op::DynamicLinear))
        .map(|r| r.name.clone())
        .collect()
}

#[test]
fn every_linear_of_an_encoder_runs_dynamic_int8_close_to_float() {
    let device = Device::flex();
    let model = encoder(&device);
    let sample = tokens(2, 12, 1, &device);
    let graph = Graph::capture(&model, &sample).unwrap();
    let linears: Vec<String> = (graph.nodes.iter())
        .filter(|n| n.op == Op::Linear)
        .map(|n| n.name.clone())
        .collect();
    // Per layer: query, key, value and output projections, two feed-forward layers.
    assert_eq!(linears.len(), 12, "{linears:?}");
    let qmodel = quantize_dynamic(&model, &sample, &DynamicConfig::default()).unwrap();
    assert_eq!(dynamic_nodes(&qmodel), linears);
    assert_eq!(qmodel.layers().dynamic_linears.len(), 12);
    let (int8, float) = qmodel.report().counts();
    assert_eq!((int8, float), (12, graph.nodes.len() - 12));
    for (n, seed) in [(2, 1), (5, 2), (1, 3)] {
        let x = tokens(n, 12, seed, &device);
        let got: Tensor<3> = qmodel.try_forward(x.clone()).unwrap();
        let cos = common::cosine(got, model.forward(x));
        assert!(cos > 0.9998, "batch {n}: cosine {cos}");
    }
}

#[test]
fn a_dynamic_model_loads_back_with_identical_outputs() {
    let device = Device::flex();
    let model = encoder(&device);
    let sample = tokens(2, 12, 4, &device);
    let qmodel = quantize_dynamic(&model, &sample, &DynamicConfig::default()).unwrap();
    let bytes = qmodel.to_bytes().unwrap();
    let loaded = QuantizedModel::from_bytes(&bytes, &device).unwrap();
    assert_eq!(loaded.program(), qmodel.program());
    let x = tokens(3, 12, 5, &device);
    let a: Tensor<3> = qmodel.try_forward(x.clone()).unwrap();
    let b: Tensor<3> = loaded.try_forward(x).unwrap();
    assert_eq!(a.into_data(), b.into_data());
    // A changed weight byte is caught by the checksum.
    let mut tampered = bytes.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 0x10;
    assert!(QuantizedModel::from_bytes(&tampered, &device).is_err());
}

#[test]
fn the_qconfig_keeps_layers_mapped_to_none_in_float() {
    let device = Device::flex();
    let model = encoder(&device);
    let sample = tokens(1, 12, 6, &device);
    let qconfig = QConfigMap::global(QConfig::preset(Engine::X86)).module("encoder.layers.1", None);
    let qmodel = quantize_dynamic(&model, &sample, &DynamicConfig::new(qconfig)).unwrap();
    let int8 = dynamic_nodes(&qmodel);
    assert_eq!(int8.len(), 6, "{int8:?}");
    assert!(
        int8.iter()
            .all(|name| name.starts_with("encoder.layers.0.")),
        "{int8:?}"
    );
    // Captured from a sample of one, it runs at any batch size.
    let x = tokens(3, 12, 7, &device);
    let cos = common::cosine(
        qmodel.try_forward::<3, 3>(x.clone()).unwrap(),
        model.forward(x),
    );
    assert!(cos > 0.9998, "cosine {cos}");
    let unknown = QConfigMap::global(QConfig::preset(Engine::X86)).module("decoder", None);
    let err = quantize_dynamic(&model, &sample, &DynamicConfig::new(unknown)).unwrap_err();
    assert!(matches!(err, Error::QConfigKey { .. }), "{err}");
}

/// `x · W` by a constant matrix (not a Linear layer), then a ReLU.
#[derive(burn::module::Module, Debug)]
struct Projection {
    weight: burn::module::Param<Tensor<2>>,
}

impl burn_quantize::Forward<2, 2> for Projection {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        burn::tensor::activation::relu(x.matmul(self.weight.val()))
    }
}

#[test]
fn a_matmul_by_a_constant_matrix_runs_dynamic_and_bad_inputs_are_errors() {
    let device = Device::flex();
    let values: Vec<f32> = (0..FEATURES * 8)
        .map(|k| ((k * 37 % 101) as f32 - 50.0) / 200.0)
        .collect();
    let weight = Tensor::from_data(TensorData::new(values, [FEATURES, 8]), &device);
    let model = Projection {
        weight: burn::module::Param::from_tensor(weight),
    };
    let x = tokens(4, 1, 8, &device).reshape([4, FEATURES]);
    let qmodel = quantize_dynamic(&model, &x, &DynamicConfig::default()).unwrap();
    assert_eq!(dynamic_nodes(&qmodel).len(), 1, "{}", qmodel.report());
    let cos = common::cosine(
        qmodel.try_forward::<2, 2>(x.clone()).unwrap(),
        burn_quantize::Forward::forward(&model, x),
    );
    assert!(cos > 0.9999, "cosine {cos}");
    let wrong = Tensor::<2>::zeros([4, FEATURES + 1], &device);
    let err = qmodel.try_forward::<2, 2>(wrong).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let nan = Tensor::<2>::full([4, FEATURES], f32::NAN, &device);
    let err = qmodel.try_forward::<2, 2>(nan).unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err}");
}

/// A record whose float BatchNorm step reads a parameter of the wrong length (what the record
/// fuzzer found: a dynamic model keeps BatchNorm in float) is refused with an error, not a
/// panic in Burn's reshape.
#[test]
fn a_float_batch_norm_reading_a_parameter_of_another_length_is_an_error() {
    use burn_quantize::models::ResNetConfig;
    use burn_quantize::record::RecordParts;
    let device = Device::flex();
    let resnet = common::seeded(ResNetConfig::resnet18(10).narrowed(8).init(&device), 9);
    let x = common::images_hw(1, 1, [32, 32], &device);
    let qmodel = quantize_dynamic(&resnet, &x, &DynamicConfig::default()).unwrap();
    let mut parts = RecordParts::from_bytes(&qmodel.to_bytes().unwrap()).unwrap();
    let program = qmodel.program();
    let (bn, conv) = (program.steps.iter())
        .find_map(|s| match s {
            burn_quantize::program::Step::Float(n) if n.op.kind() == "batch_norm" => Some(n),
            _ => None,
        })
        .and_then(|bn| {
            let conv = program.steps.iter().find_map(|s| match s {
                burn_quantize::program::Step::Float(n) if n.outputs[0] == bn.inputs[0] => Some(n),
                _ => None,
            })?;
            Some((bn, conv))
        })
        .expect("a convolution followed by a float batch norm");
    let (gamma, weight) = (bn.inputs[1].0, conv.inputs[1].0);
    let from = format!("\"inputs\":[{},{gamma},", bn.inputs[0].0);
    let to = format!("\"inputs\":[{},{weight},", bn.inputs[0].0);
    assert!(parts.program.contains(&from), "{from}");
    parts.program = parts.program.replacen(&from, &to, 1);
    let bytes = parts.to_bytes().unwrap();
    let result = std::panic::catch_unwind(|| {
        QuantizedModel::from_bytes(&bytes, &device)
            .and_then(|m| m.try_forward::<4, 2>(x.clone()).map(drop))
    });
    let err = result.expect("no panic").unwrap_err();
    assert!(err.to_string().contains("batch norm parameter"), "{err}");
}
