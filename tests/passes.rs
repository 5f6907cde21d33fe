//! Graph passes: BatchNorm folding and activation fusion.

use burn::module::{Module, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::tensor::{Device, Distribution, Tensor};
use burn_quantize::Forward;
use burn_quantize::exec::FloatExecutor;
use burn_quantize::graph::{Activation, BinaryOp, Graph, Op, passes};

#[derive(Module, Debug)]
struct Block {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    relu: Relu,
    fc: Linear,
    fc_bn: BatchNorm,
}

impl Forward<4, 2> for Block {
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let y = self
            .relu
            .forward(self.bn1.forward(self.conv1.forward(x.clone())));
        let y = self.bn2.forward(self.conv2.forward(y)).clamp(0.0, 6.0); // conv+bn+relu6
        let branch = self.conv2.forward(y.clone()); // a conv read twice: not fused
        let z = self.relu.forward(y.clone() + branch.clone()); // add+relu
        let pooled = self
            .relu
            .forward(z.mean_dim(3).mean_dim(2).flatten::<2>(1, 3)); // relu after mean: not fused
        let out = self
            .relu
            .forward(self.fc_bn.forward(self.fc.forward(pooled))); // linear+bn+relu
        out + branch.mean_dim(3).mean_dim(2).flatten::<2>(1, 3)
    }
}

fn random_bn(channels: usize, device: &Device) -> BatchNorm {
    let mut bn = BatchNormConfig::new(channels).init(device);
    bn.gamma = burn::module::Param::from_tensor(Tensor::random(
        [channels],
        Distribution::Uniform(0.5, 1.5),
        device,
    ));
    bn.beta = burn::module::Param::from_tensor(Tensor::random(
        [channels],
        Distribution::Normal(0.0, 0.3),
        device,
    ));
    bn.running_mean = RunningState::new(Tensor::random(
        [channels],
        Distribution::Normal(0.0, 0.3),
        device,
    ));
    bn.running_var = RunningState::new(Tensor::random(
        [channels],
        Distribution::Uniform(0.3, 2.0),
        device,
    ));
    bn
}

fn model(device: &Device) -> Block {
    let conv = |bias: bool| {
        Conv2dConfig::new([4, 4], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_bias(bias)
            .init(device)
    };
    Block {
        conv1: conv(true),
        bn1: random_bn(4, device),
        conv2: conv(false),
        bn2: random_bn(4, device),
        relu: Relu::new(),
        fc: LinearConfig::new(4, 4).init(device),
        fc_bn: random_bn(4, device),
    }
}

fn values(graph: &Graph, path: &str) -> Vec<f32> {
    graph
        .parameter(path)
        .unwrap_or_else(|| panic!("no parameter {path}"))
        .iter::<f32>()
        .collect()
}

#[test]
fn batch_norm_folds_into_conv_and_linear_exactly_as_pytorch_computes_it() {
    let device = Device::flex();
    let model = model(&device);
    let x = Tensor::<4>::random([2, 4, 6, 6], Distribution::Default, &device);
    let original = Graph::capture(&model, &x).unwrap();
    let mut folded = original.clone();
    assert_eq!(passes::fold_batch_norm(&mut folded), 3);
    assert!(
        !folded
            .nodes
            .iter()
            .any(|n| matches!(n.op, Op::BatchNorm { .. }))
    );

    // PyTorch's fuse_conv_bn_weights, element by element in f32.
    let bn = |name: &str| {
        ["gamma", "beta", "running_mean", "running_var"]
            .map(|p| values(&original, &format!("{name}.{p}")))
    };
    let [gamma, beta, mean, var] = bn("bn1");
    let rsqrt: Vec<f32> = var.iter().map(|v| 1.0 / (v + 1e-5f32).sqrt()).collect();
    let (w, b) = (
        values(&original, "conv1.weight"),
        values(&original, "conv1.bias"),
    );
    let expected_w: Vec<f32> = w
        .iter()
        .enumerate()
        .map(|(k, w)| w * (gamma[k / 36] * rsqrt[k / 36]))
        .collect();
    let expected_b: Vec<f32> = (0..4)
        .map(|c| (b[c] - mean[c]) * rsqrt[c] * gamma[c] + beta[c])
        .collect();
    assert_eq!(values(&folded, "conv1.weight"), expected_w);
    assert_eq!(values(&folded, "conv1.bias"), expected_b);

    // A conv without bias gets one; the linear layer's [in, out] weight is scaled per column.
    let [gamma, beta, mean, var] = bn("bn2");
    let rsqrt: Vec<f32> = var.iter().map(|v| 1.0 / (v + 1e-5f32).sqrt()).collect();
    let expected_b: Vec<f32> = (0..4)
        .map(|c| (0.0 - mean[c]) * rsqrt[c] * gamma[c] + beta[c])
        .collect();
    assert_eq!(values(&folded, "conv2.bias"), expected_b);
    let [gamma, _, _, var] = bn("fc_bn");
    let rsqrt: Vec<f32> = var.iter().map(|v| 1.0 / (v + 1e-5f32).sqrt()).collect();
    let w = values(&original, "fc.weight");
    let expected_w: Vec<f32> = w
        .iter()
        .enumerate()
        .map(|(k, w)| w * (gamma[k % 4] * rsqrt[k % 4]))
        .collect();
    assert_eq!(values(&folded, "fc.weight"), expected_w);

    // The folded graph computes the same function up to float rounding.
    let x = Tensor::<4>::random([3, 4, 6, 6], Distribution::Default, &device);
    let a: Tensor<2> = FloatExecutor::new(&original, &device)
        .unwrap()
        .forward(x.clone())
        .unwrap();
    let b: Tensor<2> = FloatExecutor::new(&folded, &device)
        .unwrap()
        .forward(x)
        .unwrap();
    let scale: f32 = a.clone().abs().max().into_scalar();
    let diff: f32 = (a - b).abs().max().into_scalar();
    assert!(
        diff <= 1e-5 * scale.max(1.0),
        "diff {diff} at scale {scale}"
    );
}

#[test]
fn activations_fuse_into_conv_linear_and_add_only_where_safe() {
    let device = Device::flex();
    let model = model(&device);
    let x = Tensor::<4>::random([2, 4, 6, 6], Distribution::Default, &device);
    let mut graph = Graph::capture(&model, &x).unwrap();
    let reference = graph.clone();
    passes::fold_batch_norm(&mut graph);
    let fused = passes::fuse_activations(&mut graph);
    assert_eq!(fused, 4, "{graph}");

    let act = |name: &str| {
        graph
            .node(name)
            .unwrap_or_else(|| panic!("no node {name}\n{graph}"))
            .activation
    };
    assert_eq!(act("conv1"), Some(Activation::Relu));
    assert_eq!(act("conv2"), Some(Activation::Clamp { min: 0.0, max: 6.0 }));
    assert_eq!(act("fc"), Some(Activation::Relu));
    let add = graph
        .nodes
        .iter()
        .find(|n| n.op == Op::Binary(BinaryOp::Add) && n.activation.is_some());
    assert_eq!(add.map(|n| n.activation), Some(Some(Activation::Relu)));
    // The second use of conv2 has no activation; the relu after the mean stays a node.
    assert!(
        graph
            .nodes
            .iter()
            .any(|n| matches!(n.op, Op::Conv2d(_)) && n.activation.is_none())
    );
    assert_eq!(graph.nodes.iter().filter(|n| n.op == Op::Relu).count(), 1);
    assert!(graph.to_string().contains("conv2d+relu6["), "{graph}");

    let x = Tensor::<4>::random([3, 4, 6, 6], Distribution::Default, &device);
    let a: Tensor<2> = FloatExecutor::new(&reference, &device)
        .unwrap()
        .forward(x.clone())
        .unwrap();
    let b: Tensor<2> = FloatExecutor::new(&graph, &device)
        .unwrap()
        .forward(x)
        .unwrap();
    let diff: f32 = (a.clone() - b).abs().max().into_scalar();
    let scale: f32 = a.abs().max().into_scalar();
    assert!(diff <= 1e-5 * scale.max(1.0), "diff {diff}");
}
