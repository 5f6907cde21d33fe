//! Capture, lowering, the float interpreter and graph serialization.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2dConfig, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::tensor::activation::sigmoid;
use burn::tensor::module::conv2d;
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{Device, Distribution, Tensor};
use burn_quantize::exec::FloatExecutor;
use burn_quantize::graph::{BatchMode, Op, ValueKind};
use burn_quantize::models::{ResNet, ResNetConfig};
use burn_quantize::{Error, Forward, Graph};

/// Two conv+bn+relu branches in a `Vec`, concatenated, then functional ops.
#[derive(Module, Debug)]
struct Branch {
    conv: Conv2d,
    bn: BatchNorm,
    relu: Relu,
}

#[derive(Module, Debug)]
struct FunctionalNet {
    stem: Conv2d,
    branches: Vec<Branch>,
    kernel: Param<Tensor<4>>,
    head: Linear,
}

impl FunctionalNet {
    fn new(device: &Device) -> Self {
        let conv = |cin, cout| {
            Conv2dConfig::new([cin, cout], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        let branch = || Branch {
            conv: conv(4, 4),
            bn: BatchNormConfig::new(4).init(device),
            relu: Relu::new(),
        };
        FunctionalNet {
            stem: conv(3, 4),
            branches: vec![branch(), branch()],
            kernel: Param::from_tensor(Tensor::random(
                [4, 8, 2, 2],
                Distribution::Normal(0.0, 0.3),
                device,
            )),
            head: LinearConfig::new(4, 5).init(device),
        }
    }
}

impl Forward<4, 2> for FunctionalNet {
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let y = self.stem.forward(x);
        let outs = self
            .branches
            .iter()
            .map(|b| b.relu.forward(b.bn.forward(b.conv.forward(y.clone()))));
        let y = Tensor::cat(outs.collect(), 1);
        let y = conv2d(
            y,
            self.kernel.val(),
            None,
            ConvOptions::new([2, 2], [0, 0], [1, 1], 1),
        );
        let y = y.pad((1, 1, 1, 1), PadMode::Constant(0.0));
        let y = sigmoid(y)
            .mul_scalar(2.0)
            .add_scalar(0.5)
            .div_scalar(4.0)
            .sub_scalar(0.1);
        let y = y.mean_dim(3).mean_dim(2).flatten::<2>(1, 3);
        self.head.forward(y)
    }
}

/// The rest of the lowered ops: pools, activations, permutes, slices, matmul of activations.
#[derive(Module, Debug)]
struct MoreOpsNet {
    conv: Conv2d,
}

impl Forward<4, 2> for MoreOpsNet {
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let y = self.conv.forward(x).clamp(0.0, 6.0); // ReLU6
        let pooled = MaxPool2dConfig::new([2, 2]).init().forward(y.clone());
        let avg = AvgPool2dConfig::new([2, 2]).init().forward(y);
        let y = pooled.tanh() + burn::tensor::activation::gelu(avg); // [N, 4, 4, 4]
        let y = y.swap_dims(1, 3).permute([0, 2, 1, 3]); // [N, 4, 4, 4]
        let n = y.dims()[0];
        let y = y.slice([0..n, 1..4, 0..4, 0..3]); // [N, 3, 4, 3]
        let y = y.sum_dim(3).reshape([0, -1]); // [N, 12]
        let gram = y
            .clone()
            .unsqueeze_dim::<3>(2)
            .matmul(y.clone().unsqueeze_dim::<3>(1)); // [N, 12, 12]
        let y = burn::tensor::activation::softmax(gram.mean_dim(2).squeeze_dim::<2>(2), 1);
        y.clone().sub(burn::tensor::activation::relu(y.neg()))
    }
}

/// A model with an op the graph does not lower (`exp`, `abs`): kept as a fallback node.
#[derive(Module, Debug)]
struct ExpNet {
    head: Linear,
}

impl Forward<2, 2> for ExpNet {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.head.forward(x.exp().abs())
    }
}

fn device() -> Device {
    Device::flex()
}

fn max_abs<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    a.sub(b).abs().max().into_scalar()
}

fn trained(model: FunctionalNet, device: &Device) -> FunctionalNet {
    // Non-trivial BatchNorm statistics, so that folding bugs would show.
    let mut model = model;
    for b in &mut model.branches {
        b.bn.running_mean = burn::module::RunningState::new(Tensor::random(
            [4],
            Distribution::Normal(0.0, 0.5),
            device,
        ));
        b.bn.running_var = burn::module::RunningState::new(Tensor::random(
            [4],
            Distribution::Uniform(0.5, 2.0),
            device,
        ));
    }
    model
}

#[test]
fn captures_functional_ops_and_nested_vec_modules_with_paths() {
    let device = device();
    let model = trained(FunctionalNet::new(&device), &device);
    let x = Tensor::<4>::random([2, 3, 8, 8], Distribution::Default, &device);
    let graph = Graph::capture(&model, &x).expect("capture");

    let paths = graph.parameter_paths();
    for expected in [
        "stem.weight",
        "stem.bias",
        "branches.0.conv.weight",
        "branches.1.conv.bias",
        "branches.1.bn.gamma",
        "branches.0.bn.running_var",
        "kernel",
        "head.weight",
        "head.bias",
    ] {
        assert!(
            paths.iter().any(|p| p == expected),
            "missing {expected} in {paths:?}"
        );
    }
    let layer_of = |path: &str| {
        graph.values.iter().find_map(|v| match &v.kind {
            ValueKind::Parameter(p) if p.path() == path => Some(p.layer.clone()),
            _ => None,
        })
    };
    assert_eq!(
        layer_of("branches.1.conv.weight").as_deref(),
        Some("Conv2d")
    );
    assert_eq!(
        layer_of("branches.0.bn.gamma").as_deref(),
        Some("BatchNorm")
    );
    assert_eq!(layer_of("head.weight").as_deref(), Some("Linear"));
    assert_eq!(layer_of("kernel").as_deref(), Some("FunctionalNet"));

    let kinds: Vec<String> = graph.nodes.iter().map(|n| n.op.kind()).collect();
    for kind in [
        "conv2d",
        "batch_norm",
        "relu",
        "cat",
        "pad",
        "sigmoid",
        "mul_scalar",
        "add_scalar",
        "div_scalar",
        "sub_scalar",
        "mean",
        "reshape",
        "linear",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} node in {kinds:?}"
        );
    }
    assert!(
        !kinds.iter().any(|k| k.starts_with("fallback")),
        "unexpected fallback in {kinds:?}"
    );
    assert!(
        !kinds.iter().any(|k| k == "matmul"),
        "linear not recognised: {kinds:?}"
    );
    let conv = graph
        .node("branches.1.conv")
        .expect("node named by module path");
    assert!(matches!(conv.op, Op::Conv2d(_)));
    assert_eq!(
        conv.module.as_ref().map(|m| m.layer.as_str()),
        Some("Conv2d")
    );

    let listing = graph.to_string();
    assert!(
        listing.contains("conv2d[stride=1x1 pad=1,1,1,1"),
        "{listing}"
    );
    assert!(listing.contains("branches.0.conv.weight"), "{listing}");
    assert!(listing.contains("[N, 8, 8, 8]"), "{listing}");

    let float = FloatExecutor::new(&graph, &device).expect("executor");
    let eager = model.forward(x.clone());
    let interpreted: Tensor<2> = float.forward(x).expect("run");
    assert_eq!(max_abs(eager, interpreted), 0.0);
}

#[test]
fn graph_runs_at_any_batch_size() {
    let device = device();
    let model = trained(FunctionalNet::new(&device), &device);
    let sample = Tensor::<4>::random([2, 3, 8, 8], Distribution::Default, &device);
    let graph = Graph::capture(&model, &sample).expect("capture");
    assert_eq!(graph.batch, BatchMode::Free);
    let float = FloatExecutor::new(&graph, &device).expect("executor");
    for n in [1, 2, 7] {
        let x = Tensor::<4>::random([n, 3, 8, 8], Distribution::Default, &device);
        let out: Tensor<2> = float.forward(x.clone()).expect("run");
        assert_eq!(out.dims(), [n, 5]);
        assert_eq!(max_abs(model.forward(x), out), 0.0, "batch {n}");
    }
}

#[test]
fn every_lowered_op_matches_eager_on_flex_and_ndarray() {
    #[allow(deprecated)] // NdArray is deprecated in Burn 0.22, but still a device users have
    let devices = [Device::flex(), Device::ndarray()];
    for device in devices {
        let model = MoreOpsNet {
            conv: Conv2dConfig::new([3, 4], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(&device),
        };
        let sample = Tensor::<4>::random([2, 3, 8, 8], Distribution::Default, &device);
        let graph = Graph::capture(&model, &sample).expect("capture");
        let kinds: Vec<String> = graph.nodes.iter().map(|n| n.op.kind()).collect();
        for kind in [
            "clamp",
            "max_pool2d",
            "avg_pool2d",
            "tanh",
            "gelu",
            "permute",
            "slice",
            "sum",
            "matmul",
            "softmax",
            "relu",
            "sub",
            "reshape",
        ] {
            assert!(
                kinds.iter().any(|k| k == kind),
                "no {kind} node in {kinds:?}"
            );
        }
        let float = FloatExecutor::new(&graph, &device).expect("executor");
        for n in [1, 5] {
            let x = Tensor::<4>::random([n, 3, 8, 8], Distribution::Default, &device);
            let out: Tensor<2> = float.forward(x.clone()).expect("run");
            assert_eq!(max_abs(model.forward(x), out), 0.0, "batch {n}");
        }
        let model = trained(FunctionalNet::new(&device), &device);
        let graph = Graph::capture(&model, &sample).expect("capture");
        let x = Tensor::<4>::random([3, 3, 8, 8], Distribution::Default, &device);
        let out: Tensor<2> = FloatExecutor::new(&graph, &device)
            .unwrap()
            .forward(x.clone())
            .unwrap();
        assert_eq!(max_abs(model.forward(x), out), 0.0);
    }
}

#[test]
fn unlowered_ops_run_as_fallback_nodes() {
    #[allow(deprecated)] // NdArray is deprecated in Burn 0.22, but still a device users have
    let devices = [Device::flex(), Device::ndarray()];
    for device in devices {
        let model = ExpNet {
            head: LinearConfig::new(6, 3).init(&device),
        };
        let sample = Tensor::<2>::random([4, 6], Distribution::Default, &device);
        let graph = Graph::capture(&model, &sample).expect("capture");
        let fallbacks: Vec<String> = graph
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Fallback(_)))
            .map(|n| n.op.kind())
            .collect();
        assert_eq!(fallbacks, ["fallback:Exp", "fallback:Abs"]);
        let float = FloatExecutor::new(&graph, &device).expect("executor");
        for n in [1, 3] {
            let x = Tensor::<2>::random([n, 6], Distribution::Default, &device);
            let out: Tensor<2> = float.forward(x.clone()).expect("run");
            assert_eq!(max_abs(model.forward(x), out), 0.0);
        }
    }
}

#[test]
fn graph_survives_a_serde_round_trip() {
    let device = device();
    let model = ResNetConfig::resnet18(10).narrowed(8).init(&device);
    let sample = Tensor::<4>::random([2, 3, 32, 32], Distribution::Default, &device);
    let graph = Graph::capture(&model, &sample).expect("capture");
    let json = graph.to_json().expect("to json");
    let back = Graph::from_json(&json).expect("from json");
    assert_eq!(back, graph);
    let x = Tensor::<4>::random([3, 3, 32, 32], Distribution::Default, &device);
    let a: Tensor<2> = FloatExecutor::new(&graph, &device)
        .unwrap()
        .forward(x.clone())
        .unwrap();
    let b: Tensor<2> = FloatExecutor::new(&back, &device)
        .unwrap()
        .forward(x)
        .unwrap();
    assert_eq!(max_abs(a, b), 0.0);

    let mut old = back.clone();
    old.version += 1;
    assert!(matches!(
        Graph::from_json(&old.to_json().unwrap()),
        Err(Error::InvalidGraph(_))
    ));
    assert!(Graph::from_json("{\"version\": 1").is_err());
}

#[test]
fn capture_leaves_the_model_usable_and_names_resnet_layers() {
    let device = device();
    let model: ResNet = ResNetConfig::resnet18(10).narrowed(8).init(&device);
    let x = Tensor::<4>::random([1, 3, 32, 32], Distribution::Default, &device);
    let before = model.forward(x.clone());
    let graph = Graph::capture(&model, &x).expect("capture");
    let after = model.forward(x);
    assert_eq!(max_abs(before, after), 0.0);
    assert!(graph.node("layer2.0.downsample.conv").is_some());
    assert!(graph.node("fc").is_some_and(|n| n.op == Op::Linear));
    let convs = graph
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Conv2d(_)))
        .count();
    assert_eq!(convs, 20);
}

#[test]
fn wrong_input_shapes_are_errors() {
    let device = device();
    let model = FunctionalNet::new(&device);
    let sample = Tensor::<4>::random([2, 3, 8, 8], Distribution::Default, &device);
    let graph = Graph::capture(&model, &sample).expect("capture");
    let float = FloatExecutor::new(&graph, &device).expect("executor");
    let bad = Tensor::<4>::zeros([2, 4, 8, 8], &device);
    match float.forward::<4, 2>(bad) {
        Err(Error::Shape { got, .. }) => assert!(got.contains("[2, 4, 8, 8]"), "{got}"),
        other => panic!("expected a shape error, got {:?}", other.map(|t| t.dims())),
    }
    assert!(matches!(
        float.forward::<4, 3>(sample),
        Err(Error::Shape { .. })
    ));
    // A sample the forward cannot take is an error from capture, not a panic.
    let wrong = Tensor::<4>::zeros([2, 5, 8, 8], &device);
    assert!(matches!(
        Graph::capture(&model, &wrong),
        Err(Error::Capture(_))
    ));
}
