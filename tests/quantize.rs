//! The quantization pipeline: qconfig resolution, prepare, calibrate, convert, debug mode,
//! save/load, the one-call `quantize`, and the errors bad input gives.

mod common;

use std::collections::HashMap;

use burn::data::dataloader::DataLoader;
use burn::data::dataset::InMemDataset;
use burn::tensor::{Device, Tensor, TensorData};
use burn_quantize::exec::RunValue;
use burn_quantize::graph::ValueId;
use burn_quantize::models::{ResNet, ResNetConfig};
use burn_quantize::numeric::Comparison;
use burn_quantize::prepare::{Placement, PreparedModel, prepare};
use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};
use burn_quantize::quantized::{QuantizedModel, convert, convert_debug};
use burn_quantize::{Error, Graph, quantize};
use common::cosine;

fn device() -> Device {
    Device::flex()
}

/// A narrow ResNet-18 on 32x32 images with non-trivial BatchNorm statistics.
fn model(device: &Device) -> ResNet {
    ResNetConfig::resnet18(10).narrowed(8).init(device)
}

fn images(n: usize, seed: u64, device: &Device) -> Tensor<4> {
    common::images_hw(n, seed, [32, 32], device)
}

fn calibrated(model: &ResNet, qconfig: &QConfigMap, device: &Device) -> PreparedModel {
    let graph = Graph::capture(model, &images(2, 0, device)).unwrap();
    prepare(&graph, qconfig)
        .unwrap()
        .calibrate(|m| {
            for seed in 1..4 {
                m.forward::<4, 2>(images(8, seed, device))?;
            }
            Ok(())
        })
        .unwrap()
}

/// A model with 4-D output, captured, prepared with the x86 preset and calibrated on 4 images.
fn calibrated_x86<M: burn_quantize::Forward<4, 4>>(net: &M, device: &Device) -> PreparedModel {
    let graph = Graph::capture(net, &images(2, 0, device)).unwrap();
    prepare(&graph, &QConfigMap::global(QConfig::preset(Engine::X86)))
        .unwrap()
        .calibrate(|m| m.forward::<4, 4>(images(4, 1, device)).map(|_| ()))
        .unwrap()
}

#[test]
fn qconfig_map_resolves_globals_types_regexes_and_module_paths_with_parent_fallback() {
    let device = device();
    let graph = Graph::capture(&model(&device), &images(1, 0, &device)).unwrap();
    let qnnpack = QConfig::preset(Engine::Qnnpack);
    let map = QConfigMap::global(QConfig::preset(Engine::X86))
        .layer_type("Conv2d", qnnpack.clone())
        .module_regex(r"^layer3\.", None)
        .module("layer3.1", QConfig::preset(Engine::Fbgemm))
        .module("layer4", None)
        .module("layer4.1.conv2", QConfig::preset(Engine::X86))
        .module("fc", None);
    let resolved = map.resolve(&graph).unwrap();
    let by_name: HashMap<&str, Option<QConfig>> = graph
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .zip(resolved)
        .collect();
    assert_eq!(
        by_name["conv1"],
        Some(qnnpack.clone()),
        "layer type beats global"
    );
    assert_eq!(by_name["layer1.0.conv1"], Some(qnnpack.clone()));
    assert_eq!(by_name["layer3.0.conv1"], None, "regex beats layer type");
    assert_eq!(
        by_name["layer3.1.conv2"],
        Some(QConfig::preset(Engine::Fbgemm)),
        "module beats regex"
    );
    assert_eq!(
        by_name["layer4.0.conv1"], None,
        "a child falls back to its parent"
    );
    assert_eq!(
        by_name["layer4.1.conv2"],
        Some(QConfig::preset(Engine::X86)),
        "the longest path wins"
    );
    assert_eq!(by_name["fc"], None);
    // A functional add inside layer4.0 belongs to layer4.0.
    let add = graph.nodes.iter().find(|n| {
        n.op.kind() == "add"
            && graph.scopes()[graph.nodes.iter().position(|m| m.name == n.name).unwrap()]
                == "layer4.0"
    });
    assert!(add.is_some_and(|n| by_name[n.name.as_str()].is_none()));

    for (map, kind) in [
        (QConfigMap::global(None).module("layer9", None), "module"),
        (
            QConfigMap::global(None).module("layer1.0.conv", None),
            "module",
        ),
        (
            QConfigMap::global(None).layer_type("Conv3d", None),
            "layer_type",
        ),
        (
            QConfigMap::global(None).module_regex("^head", None),
            "module_regex",
        ),
        (
            QConfigMap::global(None).module_regex("(", None),
            "module_regex",
        ),
    ] {
        match map.resolve(&graph) {
            Err(Error::QConfigKey { kind: k, key, .. }) => assert_eq!(k, kind, "{key}"),
            other => panic!("expected a key error for {kind}, got {other:?}"),
        }
    }
}

#[test]
fn resnet_quantizes_close_to_float_and_reports_every_node() {
    let device = device();
    let model = model(&device);
    let qconfig = QConfigMap::global(QConfig::preset(Engine::X86)).module("fc", None);
    let prepared = calibrated(&model, &qconfig, &device);
    assert_eq!(prepared.batches_observed(), 3);
    let qmodel = convert(&prepared).unwrap();
    let x = images(6, 9, &device);
    let float: Tensor<2> = model.forward(x.clone());
    let int8: Tensor<2> = qmodel.try_forward(x).unwrap();
    let cos = cosine(float, int8);
    assert!(cos > 0.99, "cosine to float {cos}");

    let report = qmodel.program().report.clone();
    assert_eq!(report.len(), prepared.graph().nodes.len());
    let fc = report.iter().find(|r| r.name == "fc").unwrap();
    assert_eq!(fc.placement, Placement::Float("its qconfig is None".into()));
    let convs = report
        .iter()
        .filter(|r| r.op.starts_with("conv2d") && matches!(r.placement, Placement::Int8(_)))
        .count();
    assert_eq!(convs, 20);
    assert!(qmodel.report().to_string().contains("layer1.0.conv1"));
    assert!(qmodel.conv("layer2.0.downsample.conv").is_some());
}

#[test]
fn the_native_preset_uses_the_full_u8_range_and_is_closer_to_float_than_x86() {
    use burn_quantize::kernels::{QParams, dequantize, quantize};
    let device = device();
    let model = model(&device);
    let x = images(6, 9, &device);
    let values: Vec<f32> = x.clone().into_data().try_to_vec().unwrap();
    // The input's quantization under each preset, and the SQNR of `values` through it.
    let run = |engine| {
        let prepared = calibrated(
            &model,
            &QConfigMap::global(QConfig::preset(engine)),
            &device,
        );
        let qmodel = convert(&prepared).unwrap();
        let input = qmodel.program().steps.iter().find_map(|s| match s {
            burn_quantize::quantized::Step::Quantize { output, .. } => Some(*output),
            _ => None,
        });
        let qp: QParams = qmodel.program().qparams(input.unwrap()).unwrap();
        let (mut q, mut back) = (vec![0u8; values.len()], vec![0f32; values.len()]);
        quantize(&values, qp, &mut q).unwrap();
        dequantize(&q, qp, &mut back).unwrap();
        let sqnr = Comparison::new(String::new(), String::new(), &values, &back).sqnr_db;
        (qp.scale, sqnr)
    };
    let (x86_scale, x86_sqnr) = run(Engine::X86);
    let (native_scale, native_sqnr) = run(Engine::Native);
    // 8 bits instead of `reduce_range`'s 7: about half the step on the same data, so about 6 dB
    // more SQNR where the model's activations are quantized. (Whether the final logits of one
    // random model come out closer is not decided by this alone: weight noise is the same.)
    let ratio = native_scale / x86_scale;
    assert!((0.45..0.55).contains(&ratio), "scale ratio {ratio}");
    assert!(
        native_sqnr > x86_sqnr + 4.0,
        "input SQNR: native {native_sqnr:.2} dB vs x86 {x86_sqnr:.2} dB"
    );
}

/// Every value of a run, by id.
fn run_values(
    f: impl FnOnce(&mut dyn FnMut(ValueId, &RunValue) -> burn_quantize::Result<()>),
) -> HashMap<ValueId, RunValue> {
    let mut seen = HashMap::new();
    f(&mut |id, v| {
        seen.insert(id, v.clone());
        Ok(())
    });
    seen
}

#[test]
fn debug_model_gives_the_int8_models_integers_bit_for_bit() {
    let device = device();
    let model = model(&device);
    let prepared = calibrated(
        &model,
        &QConfigMap::global(QConfig::preset(Engine::Fbgemm)),
        &device,
    );
    let qmodel = convert(&prepared).unwrap();
    let debug = convert_debug(&prepared).unwrap();
    let x = images(5, 11, &device);
    let int8 = run_values(|tap| {
        qmodel.forward_observed::<4, 2>(x.clone(), tap).unwrap();
    });
    let float = run_values(|tap| {
        debug.forward_observed::<4, 2>(x.clone(), tap).unwrap();
    });
    let mut compared = 0;
    for (id, value) in &int8 {
        if let (RunValue::Int8(a), Some(RunValue::Int8(b))) = (value, float.get(id)) {
            assert_eq!(a, b, "value {id} differs");
            compared += 1;
        }
    }
    assert!(compared >= 30, "only {compared} int8 values compared");
    // Weights stay inspectable by module path, BatchNorm folded and fake-quantized.
    let w = debug.graph().parameter("layer1.0.conv1.weight").unwrap();
    let q = qmodel.conv("layer1.0.conv1").unwrap().weights().unwrap();
    let per_channel = q.weight.len() / q.scales.len();
    let expected: Vec<f32> = q
        .weight
        .iter()
        .enumerate()
        .map(|(k, &v)| f32::from(v) * q.scales[k / per_channel])
        .collect();
    assert_eq!(w.try_to_vec::<f32>().unwrap(), expected);
    assert!(
        debug
            .graph()
            .nodes
            .iter()
            .all(|n| n.op.kind() != "batch_norm")
    );
}

#[test]
fn saved_models_reload_bit_identical_and_bad_files_are_errors() {
    let device = device();
    let model = model(&device);
    let qconfig = QConfigMap::global(QConfig::preset(Engine::X86)).module("layer4.1", None);
    let qmodel = convert(&calibrated(&model, &qconfig, &device)).unwrap();
    let dir = std::env::temp_dir().join(format!("burn-quantize-record-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.bpk");
    qmodel.save(&path).unwrap();
    let again = QuantizedModel::load(&path, &device).unwrap();
    let x = images(3, 5, &device);
    let a: Tensor<2> = qmodel.try_forward(x.clone()).unwrap();
    let b: Tensor<2> = again.try_forward(x).unwrap();
    assert_eq!(a.into_data(), b.into_data());
    assert_eq!(again.program(), qmodel.program());

    let bytes = std::fs::read(&path).unwrap();
    let write = |name: &str, content: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p
    };
    let truncated = write("truncated.bpk", &bytes[..bytes.len() * 2 / 3]);
    let header_only = write("header.bpk", &bytes[..40.min(bytes.len())]);
    let mut flipped = bytes.clone();
    for b in flipped[8..64].iter_mut() {
        *b ^= 0x5a;
    }
    let corrupt = write("corrupt.bpk", &flipped);
    let text = write("text.bpk", b"not a model");
    let other_version = {
        let program = serde_json::to_string(qmodel.program()).unwrap();
        let needle = "\"burn_quantize.record_version\"";
        assert!(!program.contains(needle));
        let mut v = bytes.clone();
        // The version is stored as text "2" right after its key in the metadata.
        let at = find(&v, b"burn_quantize.record_version").expect("version key in the file");
        let one = find(&v[at..], b"2").map(|i| at + i).unwrap();
        v[one] = b'7';
        write("version.bpk", &v)
    };
    for bad in [&truncated, &header_only, &corrupt, &text, &other_version] {
        match QuantizedModel::load(bad, &device) {
            Err(Error::BadFile { path, reason }) => assert_eq!(&path, bad, "{reason}"),
            Err(other) => panic!("{}: expected BadFile, got {other}", bad.display()),
            Ok(_) => panic!("{} loaded", bad.display()),
        }
    }
    assert!(matches!(
        QuantizedModel::load(dir.join("missing.bpk"), &device),
        Err(Error::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn loader(items: Vec<Vec<f32>>) -> std::sync::Arc<dyn DataLoader<Tensor<4>>> {
    common::image_loader(InMemDataset::new(items), 4)
}

#[test]
fn quantize_in_one_call_over_a_data_loader() {
    let device = device();
    let model = model(&device);
    let items: Vec<Vec<f32>> = (0..10)
        .map(|i| {
            images(1, 100 + i, &device)
                .into_data()
                .try_to_vec()
                .unwrap()
        })
        .collect();
    let qmodel = quantize(
        &model,
        &QConfigMap::global(QConfig::preset(Engine::X86)),
        loader(items).as_ref(),
    )
    .unwrap();
    let x = images(4, 3, &device);
    let cos = cosine(model.forward(x.clone()), qmodel.try_forward(x).unwrap());
    assert!(cos > 0.99, "{cos}");
}

#[test]
fn bad_input_gives_errors_not_panics() {
    let device = device();
    let model = model(&device);
    let qconfig = QConfigMap::global(QConfig::preset(Engine::X86));
    let graph = Graph::capture(&model, &images(2, 0, &device)).unwrap();

    // Empty calibration data.
    let empty = prepare(&graph, &qconfig).unwrap().calibrate(|_| Ok(()));
    assert!(matches!(empty, Err(Error::Calibration(_))));
    assert!(matches!(
        quantize(&model, &qconfig, loader(Vec::new()).as_ref()),
        Err(Error::Calibration(_))
    ));
    let mut prepared = prepare(&graph, &qconfig).unwrap();
    assert!(matches!(convert(&prepared), Err(Error::Calibration(_))));

    // Non-finite calibration input.
    let mut nan = images(2, 1, &device)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    nan[17] = f32::NAN;
    let nan = Tensor::<4>::from_data(TensorData::new(nan, [2, 3, 32, 32]), &device);
    match prepared.forward::<4, 2>(nan) {
        Err(Error::NonFinite { context }) => assert!(context.contains("input"), "{context}"),
        other => panic!("expected NonFinite, got {:?}", other.map(|t| t.dims())),
    }

    // Wrong input shapes, to calibration and to the quantized model.
    assert!(matches!(
        prepared.forward::<4, 2>(Tensor::zeros([2, 4, 32, 32], &device)),
        Err(Error::Shape { .. })
    ));
    prepared.forward::<4, 2>(images(2, 2, &device)).unwrap();
    let qmodel = convert(&prepared).unwrap();
    // Any height and width runs (shapes are inferred per run); a wrong channel count does not.
    qmodel
        .try_forward::<4, 2>(Tensor::zeros([1, 3, 31, 32], &device))
        .unwrap();
    match qmodel.try_forward::<4, 2>(Tensor::zeros([1, 4, 32, 32], &device)) {
        Err(Error::Shape { context, got, .. }) => {
            assert!(
                context.contains("conv1") || got.contains("conv1"),
                "{context} {got}"
            )
        }
        other => panic!("expected a shape error, got {:?}", other.map(|t| t.dims())),
    }
    assert!(matches!(
        qmodel.try_forward::<4, 3>(images(1, 2, &device)),
        Err(Error::Shape { .. })
    ));

    // An unknown qconfig key.
    let unknown = QConfigMap::global(None).module("encoder", None);
    assert!(matches!(
        prepare(&graph, &unknown),
        Err(Error::QConfigKey { .. })
    ));
}

/// conv -> softmax over channels (no int8 kernel) -> conv.
#[derive(burn::module::Module, Debug)]
struct ExpNet {
    a: burn::nn::conv::Conv2d,
    b: burn::nn::conv::Conv2d,
}

impl burn_quantize::Forward<4, 4> for ExpNet {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.b
            .forward(burn::tensor::activation::softmax(self.a.forward(x), 1))
    }
}

#[test]
fn ops_without_int8_kernels_run_in_float_and_are_reported() {
    let device = device();
    let conv = |cin, cout| burn::nn::conv::Conv2dConfig::new([cin, cout], [3, 3]).init(&device);
    let net = ExpNet {
        a: conv(3, 4),
        b: conv(4, 5),
    };
    let prepared = calibrated_x86(&net, &device);
    let qmodel = convert(&prepared).unwrap();
    let report = &qmodel.program().report;
    let exp = report
        .iter()
        .find(|r| r.op == "softmax")
        .expect("the softmax node");
    assert!(
        matches!(&exp.placement, Placement::Float(why) if why.contains("no int8 kernel")),
        "{exp:?}"
    );
    assert!(
        report
            .iter()
            .filter(|r| matches!(r.placement, Placement::Int8(_)))
            .count()
            >= 2
    );
    let x = images(3, 2, &device);
    let float: Tensor<4> = burn_quantize::Forward::forward(&net, x.clone());
    let int8: Tensor<4> = qmodel.try_forward(x).unwrap();
    assert_eq!(int8.dims(), [3, 5, 28, 28]);
    let cos = cosine::<2>(float.flatten(1, 3), int8.flatten(1, 3));
    assert!(cos > 0.99, "{cos}");
}

#[test]
fn float_regions_between_int8_regions_are_dequantized_and_requantized() {
    let device = device();
    let model = model(&device);
    // Keep layer2 in float: int8 flows into float and back.
    let qconfig = QConfigMap::global(QConfig::preset(Engine::X86)).module("layer2", None);
    let prepared = calibrated(&model, &qconfig, &device);
    let qmodel = convert(&prepared).unwrap();
    let (int8, float) = qmodel.report().counts();
    assert!(int8 > 0 && float > 0, "{int8} int8, {float} float");
    let x = images(2, 4, &device);
    let cos = cosine(model.forward(x.clone()), qmodel.try_forward(x).unwrap());
    assert!(cos > 0.99, "{cos}");
}

#[test]
fn numeric_suite_compares_float_and_int8_layer_by_layer() {
    use burn_quantize::numeric::{compare_activations, compare_weights};
    let device = device();
    let model = common::seeded(model(&device), 11);
    let prepared = calibrated(
        &model,
        &QConfigMap::global(QConfig::preset(Engine::X86)),
        &device,
    );
    let qmodel = convert(&prepared).unwrap();
    let layers = compare_activations::<4, 2>(&prepared, &qmodel, images(2, 21, &device)).unwrap();
    // Every int8 node's output is compared: 20 convs, 8 adds, pools, the classifier.
    assert!(layers.len() >= 30, "{}", layers.len());
    assert!(layers.iter().any(|l| l.node == "layer1.0.conv1"));
    // Each output against the float model's (errors add up with depth). The weights are seeded
    // (not drawn from Burn's generator, which parallel tests share), so the figures are the
    // same on every run: 37.89 dB at conv1, the worst layer 24.23 dB (layer4.1.conv2), every
    // cosine >= 0.99821, the mean 31.12 dB.
    let first = layers.iter().find(|l| l.node == "conv1").unwrap();
    assert!(first.sqnr_db > 37.5, "{first}");
    for layer in &layers {
        assert!(layer.sqnr_db > 23.5 && layer.cosine > 0.998, "{layer}");
    }
    let mean = layers.iter().map(|l| l.sqnr_db).sum::<f64>() / layers.len() as f64;
    assert!(mean > 30.8, "mean SQNR {mean:.1} dB");
    let weights = compare_weights(&prepared, &qmodel).unwrap();
    assert_eq!(weights.len(), 21);
    assert!(
        // Per-channel 8-bit weights of uniform seeded weights: 47.65 dB and more.
        weights.iter().all(|w| w.sqnr_db > 47.5),
        "{:?}",
        weights.iter().map(|w| w.sqnr_db).collect::<Vec<_>>()
    );

    let same = Comparison::new("x".into(), "op".into(), &[1.0, -2.0], &[1.0, -2.0]);
    assert_eq!((same.sqnr_db, same.max_abs), (f64::INFINITY, 0.0));
    let off = Comparison::new("x".into(), "op".into(), &[3.0, 4.0], &[3.0, 3.0]);
    assert!((off.sqnr_db - 10.0 * 25f64.log10()).abs() < 1e-12 && off.max_abs == 1.0);
}

/// Branches joined by cat, a ReLU6, pools, a standalone ReLU and a flatten of a 4x4 map.
#[derive(burn::module::Module, Debug)]
struct BranchNet {
    stem: burn::nn::conv::Conv2d,
    left: burn::nn::conv::Conv2d,
    right: burn::nn::conv::Conv2d,
    head: burn::nn::Linear,
}

impl burn_quantize::Forward<4, 2> for BranchNet {
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        use burn::nn::pool::{AvgPool2dConfig, MaxPool2dConfig};
        let y = self.stem.forward(x).clamp(0.0, 6.0);
        let left = burn::tensor::activation::relu(self.left.forward(y.clone()));
        let pooled = MaxPool2dConfig::new([3, 3])
            .with_strides([1, 1])
            .with_padding(burn::nn::PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init()
            .forward(y);
        let right = self.right.forward(pooled);
        let y = Tensor::cat(vec![left, right], 1);
        let y = AvgPool2dConfig::new([2, 2])
            .with_strides([2, 2])
            .init()
            .forward(y);
        let y = burn::tensor::activation::relu(y);
        self.head.forward(y.flatten(1, 3))
    }
}

#[test]
fn cat_pools_clamps_and_flatten_run_in_int8_close_to_float_and_match_the_debug_model() {
    let device = device();
    let conv = |cin, cout| {
        burn::nn::conv::Conv2dConfig::new([cin, cout], [3, 3])
            .with_stride([2, 2])
            .with_padding(burn::nn::PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&device)
    };
    let net = BranchNet {
        stem: conv(3, 8),
        left: burn::nn::conv::Conv2dConfig::new([8, 4], [1, 1]).init(&device),
        right: burn::nn::conv::Conv2dConfig::new([8, 4], [3, 3])
            .with_padding(burn::nn::PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&device),
        head: burn::nn::LinearConfig::new(8 * 8 * 8, 10).init(&device),
    };
    let graph = Graph::capture(&net, &images(2, 0, &device)).unwrap();
    // The evaluated images are among the calibration data, so the bound below measures the
    // int8 arithmetic, not how well 24 noise images cover the range of a random head's logits
    // (an unseen image can fall outside the calibrated output range and be clipped).
    let x = images(4, 7, &device);
    let prepared = prepare(
        &graph,
        &QConfigMap::global(QConfig::preset(Engine::Qnnpack)),
    )
    .unwrap()
    .calibrate(|m| {
        for seed in 1..4 {
            m.forward::<4, 2>(images(8, seed, &device))?;
        }
        m.forward::<4, 2>(x.clone())?;
        Ok(())
    })
    .unwrap();
    let qmodel = convert(&prepared).unwrap();
    let int8_ops: Vec<String> = qmodel
        .program()
        .report
        .iter()
        .filter_map(|r| match &r.placement {
            Placement::Int8(op) => Some(format!("{op:?}")),
            Placement::Float(_) => None,
        })
        .collect();
    for op in [
        "Conv2d",
        "Cat",
        "MaxPool2d",
        "AvgPool2d",
        "Clamp",
        "Reshape",
        "Linear",
    ] {
        assert!(
            int8_ops.iter().any(|o| o == op),
            "{op} not in int8: {int8_ops:?}\n{}",
            qmodel.report()
        );
    }
    let float: Tensor<2> = burn_quantize::Forward::forward(&net, x.clone());
    let cos = cosine(float, qmodel.try_forward(x.clone()).unwrap());
    assert!(cos > 0.998, "{cos}");
    let debug = convert_debug(&prepared).unwrap();
    let a: Tensor<2> = qmodel.try_forward(x.clone()).unwrap();
    let b: Tensor<2> = debug.forward(x).unwrap();
    assert_eq!(a.into_data(), b.into_data());
}

/// A convolution and ReLU6.
#[derive(burn::module::Module, Debug)]
struct ConvRelu6 {
    conv: burn::nn::conv::Conv2d,
}

impl burn_quantize::Forward<4, 4> for ConvRelu6 {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv.forward(x).clamp(0.0, 6.0)
    }
}

#[test]
fn channels_with_tiny_weights_keep_their_bias() {
    // Trained networks have near-dead channels: tiny weights (their observer's scale is tiny) and
    // a bias, which alone makes the output; the integer bias must not overflow and wrap.
    let device = device();
    let mut conv = burn::nn::conv::Conv2dConfig::new([3, 4], [3, 3]).init(&device);
    let mask = Tensor::<1>::from_floats([1.0, 1e-4, 1e-4, 1.0], &device).reshape([4, 1, 1, 1]);
    conv.weight = burn::module::Param::from_tensor(conv.weight.val() * mask);
    conv.bias = Some(burn::module::Param::from_tensor(Tensor::from_floats(
        [0.1, 30.0, -50.0, 0.2],
        &device,
    )));
    let net = ConvRelu6 { conv };
    let prepared = calibrated_x86(&net, &device);
    let qmodel = convert(&prepared).unwrap();
    let debug = convert_debug(&prepared).unwrap();
    let x = images(3, 2, &device);
    let float: Vec<f32> = burn_quantize::Forward::forward(&net, x.clone())
        .into_data()
        .try_to_vec()
        .unwrap();
    let step = qmodel.program().convs[0].spec.output.scale();
    for out in [
        qmodel.try_forward::<4, 4>(x.clone()).unwrap(),
        debug.forward::<4, 4>(x).unwrap(),
    ] {
        let out: Vec<f32> = out.into_data().try_to_vec().unwrap();
        let plane = out.len() / 3 / 4;
        for (i, (f, q)) in float.iter().zip(&out).enumerate() {
            let channel = i / plane % 4;
            if channel == 1 || channel == 2 {
                // Constant channels: 6.0 and 0.0, within half a step.
                assert!(
                    (f - q).abs() <= step / 2.0,
                    "channel {channel}: {q} for {f}"
                );
            } else {
                assert!((f - q).abs() < 0.1, "channel {channel}: {q} for {f}");
            }
        }
    }
}

/// The bytes of a model's output.
fn output_bytes(qmodel: &QuantizedModel, x: Tensor<4>) -> Vec<f32> {
    let y: Tensor<2> = qmodel.try_forward(x).unwrap();
    y.into_data().try_to_vec().unwrap()
}

#[test]
fn arena_runs_of_two_models_interleaved_from_threads_and_at_new_shapes_match_fresh_runs() {
    use rayon::prelude::*;
    let device = device();
    let net = model(&device);
    let x86 = QConfigMap::global(QConfig::preset(Engine::X86));
    // The second model has a float region: dequantize and quantize steps around `layer2`.
    let prepared = [
        calibrated(&net, &x86, &device),
        calibrated(&net, &x86.clone().module("layer2", None), &device),
    ];
    let inputs: Vec<Tensor<4>> = [(1, [32, 32]), (3, [32, 32]), (2, [40, 24]), (1, [16, 16])]
        .into_iter()
        .enumerate()
        .map(|(seed, (n, hw))| common::images_hw(n, seed as u64, hw, &device))
        .collect();
    // Expected: each input on a freshly converted model (empty plan cache, new arena).
    let fresh: Vec<Vec<Vec<f32>>> = (prepared.iter())
        .map(|p| {
            (inputs.iter())
                .map(|x| output_bytes(&convert(p).unwrap(), x.clone()))
                .collect()
        })
        .collect();
    let models = [
        convert(&prepared[0]).unwrap(),
        convert(&prepared[1]).unwrap(),
    ];
    // Serial runs at changing sizes and batches, twice over, on the same models.
    for _ in 0..2 {
        for (k, x) in inputs.iter().enumerate().rev() {
            for m in 0..2 {
                assert_eq!(
                    output_bytes(&models[m], x.clone()),
                    fresh[m][k],
                    "model {m} input {k}"
                );
            }
        }
    }
    // Every (model, input) pair three times, from scoped threads and from rayon, interleaved.
    let jobs: Vec<(usize, usize)> = (0..3 * 2 * inputs.len())
        .map(|j| (j % 2, (j / 2) % inputs.len()))
        .collect();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (models, inputs, fresh, jobs) = (&models, &inputs, &fresh, &jobs);
            s.spawn(move || {
                for &(m, k) in jobs.iter().skip(t).step_by(4) {
                    assert_eq!(output_bytes(&models[m], inputs[k].clone()), fresh[m][k]);
                }
            });
        }
    });
    jobs.par_iter().for_each(|&(m, k)| {
        assert_eq!(output_bytes(&models[m], inputs[k].clone()), fresh[m][k]);
    });
}

#[test]
fn batches_run_in_chunks_give_the_bytes_of_whole_batches_and_of_the_debug_model() {
    use rayon::prelude::*;
    let device = device();
    let net = model(&device);
    let x86 = QConfigMap::global(QConfig::preset(Engine::X86));
    let prepared = calibrated(&net, &x86, &device);
    let debug = convert_debug(&prepared).unwrap();
    let mut whole = convert(&prepared).unwrap();
    whole.set_batch_chunk_bytes(None);
    assert!(!whole.chunks_batches());
    // A budget of one byte: every image is a chunk of its own.
    let mut chunked = convert(&prepared).unwrap();
    chunked.set_batch_chunk_bytes(Some(1));
    assert!(
        chunked.chunks_batches(),
        "an all-int8 CNN works image by image"
    );
    // A budget of a few images' arena: chunks of several images and a shorter last one.
    let mut few = convert(&prepared).unwrap();
    few.set_batch_chunk_bytes(Some(3 * 32 * 32 * 64));
    for (seed, (n, hw)) in [(7, [32, 32]), (5, [40, 24]), (2, [16, 16])]
        .into_iter()
        .enumerate()
    {
        let x = common::images_hw(n, seed as u64, hw, &device);
        let expected = output_bytes(&whole, x.clone());
        let reference: Tensor<2> = debug.forward(x.clone()).unwrap();
        let reference: Vec<f32> = reference.into_data().try_to_vec().unwrap();
        assert_eq!(expected, reference, "batch {n}: kernels vs debug model");
        assert_eq!(
            output_bytes(&chunked, x.clone()),
            expected,
            "batch {n}, chunks of 1"
        );
        assert_eq!(
            output_bytes(&few, x.clone()),
            expected,
            "batch {n}, chunks of a few"
        );
        // Chunked runs from several rayon workers at once.
        (0..4).into_par_iter().for_each(|_| {
            assert_eq!(output_bytes(&chunked, x.clone()), expected);
        });
    }
    // A float region (dequantize, a float layer through Burn, quantize) runs batches whole.
    let mixed = convert(&calibrated(&net, &x86.module("layer2", None), &device)).unwrap();
    assert!(!mixed.chunks_batches());
}

#[test]
fn non_finite_inputs_are_errors_naming_the_input_unless_allowed() {
    use burn_quantize::quantized::NonFinite;
    let device = device();
    let model = model(&device);
    let qconfig = QConfigMap::global(QConfig::preset(Engine::X86));
    let mut qmodel = convert(&calibrated(&model, &qconfig, &device)).unwrap();
    assert_eq!(qmodel.non_finite(), NonFinite::Error);
    let clean = images(3, 5, &device)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    for (at, bad) in [
        (0, f32::NAN),
        (3 * 32 * 32 * 2 + 17, f32::INFINITY),
        (9000, -f32::INFINITY),
    ] {
        let mut values = clean.clone();
        values[at] = bad;
        let x = Tensor::<4>::from_data(TensorData::new(values, [3, 3, 32, 32]), &device);
        match qmodel.try_forward::<4, 2>(x.clone()) {
            Err(Error::NonFinite { context }) => {
                assert!(context.contains("model input 0"), "{context}")
            }
            other => panic!(
                "{bad} at {at}: expected NonFinite, got {:?}",
                other.map(|t| t.dims())
            ),
        }
        // Opted out: quantized as PyTorch does, and the run goes on.
        qmodel.set_non_finite(NonFinite::Quantize);
        let out: Tensor<2> = qmodel.try_forward(x).unwrap();
        assert!(out.into_data().iter::<f32>().all(f32::is_finite));
        qmodel.set_non_finite(NonFinite::Error);
    }
    let x = Tensor::<4>::from_data(TensorData::new(clean, [3, 3, 32, 32]), &device);
    assert!(qmodel.try_forward::<4, 2>(x).is_ok());
}
