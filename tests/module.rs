//! `QuantizedModel` as a Burn module: a field of a user's `#[derive(Module)]` model (a quantized
//! backbone under a float head), saved and loaded through Burn with the rest, mapped, moved to
//! another device; `forward` in Burn's style (panics) beside `try_forward` (a `Result`).

mod common;

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_quantize::models::{ResNet, ResNetConfig};
use burn_quantize::prepare::prepare;
use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};
use burn_quantize::quantized::{QuantizedModel, convert};
use burn_quantize::{Error, Graph};

/// A user's model: an int8 backbone and a float head.
#[derive(Module, Debug)]
struct Classifier {
    backbone: QuantizedModel,
    head: Linear,
}

impl Classifier {
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.head.forward(self.backbone.forward::<4, 2>(images))
    }
}

/// Sets every integer parameter (weights, biases) to zero.
struct ZeroInts;

impl ModuleMapper for ZeroInts {
    fn map_int<const D: usize>(&mut self, param: Param<Tensor<D, Int>>) -> Param<Tensor<D, Int>> {
        let zeros = param.val().zeros_like();
        Param::initialized(param.id, zeros)
    }
}

fn images(n: usize, seed: u64, device: &Device) -> Tensor<4> {
    common::images_hw(n, seed, [32, 32], device)
}

fn quantized_resnet(device: &Device) -> QuantizedModel {
    let model: ResNet = ResNetConfig::resnet18(10).narrowed(8).init(device);
    let graph = Graph::capture(&model, &images(2, 0, device)).unwrap();
    let qconfig = QConfigMap::global(QConfig::preset(Engine::X86)).module("layer4.1", None);
    let calibrated = prepare(&graph, &qconfig)
        .unwrap()
        .calibrate(|m| m.forward::<4, 2>(images(8, 1, device)).map(drop))
        .unwrap();
    convert(&calibrated).unwrap()
}

fn bytes<const D: usize>(t: Tensor<D>) -> TensorData {
    t.into_data()
}

#[test]
fn a_quantized_backbone_under_a_float_head_saves_and_loads_through_burn() {
    let device = Device::flex();
    let backbone = quantized_resnet(&device);
    let classifier = Classifier {
        backbone: backbone.clone(),
        head: LinearConfig::new(10, 3).init(&device),
    };
    let x = images(3, 7, &device);
    let expected = bytes(classifier.forward(x.clone()));

    // The backbone's layers are parameters of the user's model, by module path.
    let dir = std::env::temp_dir().join(format!("burn-quantize-module-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("classifier.bpk");
    classifier.clone().save_file(&path).unwrap();
    let file = burn_pack::Reader::from_file(&path).unwrap();
    let names = file.tensor_names();
    for name in [
        "backbone.convs.0.weight",
        "backbone.linears.0.bias",
        "head.weight",
    ] {
        assert!(names.contains(&name), "{name} not among {names:?}");
    }

    // A model of the same structure whose backbone weights are zeros and whose head is new:
    // loading the file gives the saved model's outputs, bit for bit.
    let skeleton = Classifier {
        backbone: backbone.clone().map(&mut ZeroInts),
        head: LinearConfig::new(10, 3).init(&device),
    };
    assert_ne!(bytes(skeleton.forward(x.clone())), expected);
    let loaded = skeleton.load_file(&path);
    assert_eq!(bytes(loaded.forward(x.clone())), expected);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn runs_on_the_inputs_device_and_moves_with_to_device() {
    let device = Device::flex();
    let qmodel = quantized_resnet(&device);
    let x = images(2, 3, &device);
    let expected = bytes(qmodel.forward::<4, 2>(x.clone()));
    #[allow(deprecated)] // the other CPU device of this build
    let other = Device::ndarray();
    let x_other = Tensor::<4>::from_data(x.to_data(), &other);
    // The int8 layers give the same bytes whatever the device; the float tail (layer4.1, fc)
    // runs on the input's device.
    let on_input: Tensor<2> = qmodel.forward(x_other.clone());
    assert_eq!(on_input.device(), other);
    let moved = qmodel.clone().to_device(&other);
    assert!(moved.devices().contains(&other), "{:?}", moved.devices());
    let after_move: Tensor<2> = moved.forward(x_other);
    assert_eq!(after_move.device(), other);
    let (a, b) = (bytes(on_input), bytes(after_move));
    assert_eq!(a, b);
    a.assert_approx_eq::<f32>(&expected, burn::tensor::Tolerance::absolute(1e-5));

    // Converted after calibrating on a device, the layers are made there.
    assert_eq!(qmodel.devices(), vec![device.clone()]);
    let calibrated_there = quantized_resnet(&other);
    assert_eq!(calibrated_there.devices(), vec![other]);
}

#[test]
fn forward_panics_on_bad_input_and_try_forward_returns_the_error() {
    let device = Device::flex();
    let qmodel = quantized_resnet(&device);
    let bad = Tensor::<4>::zeros([1, 5, 32, 32], &device);
    assert!(matches!(
        qmodel.try_forward::<4, 2>(bad.clone()),
        Err(Error::Shape { .. })
    ));
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        qmodel.forward::<4, 2>(bad);
    }))
    .unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(message.contains("5 channels into `conv1`"), "{message}");
}

/// Two inputs (an image and a feature vector) and two outputs (logits and a feature map).
#[derive(Module, Debug)]
struct TwoByTwo {
    a: burn::nn::conv::Conv2d,
    b: burn::nn::conv::Conv2d,
    fc: Linear,
    side: Linear,
}

impl TwoByTwo {
    fn new(device: &Device) -> Self {
        let conv = |i, o| {
            burn::nn::conv::Conv2dConfig::new([i, o], [3, 3])
                .with_padding(burn::nn::PaddingConfig2d::Same)
                .init(device)
        };
        TwoByTwo {
            a: conv(3, 8),
            b: conv(8, 8),
            fc: LinearConfig::new(8, 4).init(device),
            side: LinearConfig::new(5, 4).init(device),
        }
    }

    fn forward(&self, image: Tensor<4>, extra: Tensor<2>) -> (Tensor<2>, Tensor<4>) {
        let x = burn::tensor::activation::relu(self.a.forward(image));
        let y = self.b.forward(x.clone());
        let pooled = y.clone().mean_dim(3).mean_dim(2).flatten::<2>(1, 3);
        (self.fc.forward(pooled) + self.side.forward(extra), y + x)
    }
}

type Inputs = (Tensor<4>, Tensor<2>);
type Outputs = (Tensor<2>, Tensor<4>);

fn two_inputs(n: usize, seed: u64, device: &Device) -> Inputs {
    let extra = images(n, seed + 100, device).slice([0..n, 0..1, 0..1, 0..5]);
    (images(n, seed, device), extra.reshape([n, 5]))
}

#[test]
fn a_model_with_two_inputs_and_two_outputs_is_quantized_run_and_saved() {
    let device = Device::flex();
    // Seeded: Burn's initializers share one generator across the tests running in parallel.
    let model = common::seeded(TwoByTwo::new(&device), 1);
    let forward = |m: &TwoByTwo, (image, extra): Inputs| m.forward(image, extra);
    let graph = Graph::capture_with(&model, forward, &two_inputs(2, 0, &device)).unwrap();
    assert_eq!((graph.inputs.len(), graph.outputs.len()), (2, 2));
    let calibrated = prepare(&graph, &QConfigMap::global(QConfig::preset(Engine::X86)))
        .unwrap()
        .calibrate(|m| {
            for seed in 1..4 {
                m.run::<Inputs, Outputs>(two_inputs(8, seed, &device))?;
            }
            Ok(())
        })
        .unwrap();
    let qmodel = convert(&calibrated).unwrap();
    let (_, float) = qmodel.report().counts();
    assert_eq!(float, 0, "{}", qmodel.report());

    // At another batch size, close to the float model, equal to the debug model.
    let x = two_inputs(3, 9, &device);
    let (logits, features) = model.forward(x.0.clone(), x.1.clone());
    let (q_logits, q_features): Outputs = qmodel.run(x.clone());
    for (cos, what) in [
        (common::cosine(logits, q_logits.clone()), "logits"),
        (common::cosine(features, q_features.clone()), "features"),
    ] {
        assert!(cos > 0.999, "{what}: cosine {cos}");
    }
    let debug = burn_quantize::quantized::convert_debug(&calibrated).unwrap();
    let (d_logits, d_features): Outputs = debug.run(x.clone()).unwrap();
    assert_eq!(bytes(d_logits), bytes(q_logits.clone()));
    assert_eq!(bytes(d_features), bytes(q_features.clone()));

    // Saved and loaded: the same outputs; a wrong number of inputs or outputs is an error.
    let again = QuantizedModel::from_bytes(&qmodel.to_bytes().unwrap(), &device).unwrap();
    let (r_logits, r_features): Outputs = again.run(x.clone());
    assert_eq!(bytes(r_logits), bytes(q_logits));
    assert_eq!(bytes(r_features), bytes(q_features));
    assert!(matches!(
        qmodel.try_forward::<4, 2>(x.0.clone()),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        qmodel.try_run::<Inputs, Tensor<2>>(x),
        Err(Error::Shape { .. })
    ));
}
