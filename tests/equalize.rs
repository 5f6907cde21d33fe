//! Cross-layer equalization: the float function is kept, channel ranges even out across each
//! pair, clamps are left alone, and per-tensor weight quantization gains from it.

mod common;

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use burn_quantize::Forward;
use burn_quantize::exec::FloatExecutor;
use burn_quantize::graph::{Graph, passes};
use burn_quantize::numeric::Comparison;
use burn_quantize::prepare::{PrepareOptions, prepare_with};
use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};
use burn_quantize::quantized::convert;

/// conv 3x3 -> ReLU -> depthwise 3x3 -> ReLU -> conv 1x1 -> ReLU6 -> conv 1x1 -> mean ->
/// linear -> ReLU -> linear.
#[derive(Module, Debug)]
struct Chain {
    conv1: Conv2d,
    depthwise: Conv2d,
    pointwise: Conv2d,
    project: Conv2d,
    fc1: Linear,
    fc2: Linear,
    relu: Relu,
}

impl Chain {
    /// The convolutions: the feature map before pooling.
    fn features(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.relu.forward(self.conv1.forward(x));
        let x = self.relu.forward(self.depthwise.forward(x));
        let x = self.pointwise.forward(x).clamp(0.0, 6.0);
        self.project.forward(x)
    }
}

impl Forward<4, 2> for Chain {
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.features(x).mean_dim(3).mean_dim(2);
        let x = self.relu.forward(self.fc1.forward(x.flatten::<2>(1, 3)));
        self.fc2.forward(x)
    }
}

/// The chain with conv1's output channels scaled by 2^-7 .. 2^7 and the depthwise weights by
/// the inverse: the same function as without, but channel ranges 10^4 apart in conv1.
fn chain(device: &Device) -> Chain {
    let same = PaddingConfig2d::Same;
    // Seeded: Burn's initializers share one generator across the tests running in parallel.
    let chain = Chain {
        conv1: Conv2dConfig::new([3, 8], [3, 3])
            .with_padding(same.clone())
            .init(device),
        depthwise: Conv2dConfig::new([8, 8], [3, 3])
            .with_groups(8)
            .with_padding(same)
            .init(device),
        pointwise: Conv2dConfig::new([8, 6], [1, 1]).init(device),
        project: Conv2dConfig::new([6, 4], [1, 1]).init(device),
        fc1: LinearConfig::new(4, 16).init(device),
        fc2: LinearConfig::new(16, 5).init(device),
        relu: Relu::new(),
    };
    let mut chain = common::seeded(chain, 1);
    let factor = |c: usize| 2f32.powi(2 * c as i32 - 7);
    let scale = |t: Tensor<4>, inverse: bool| {
        let [o, i, h, w] = t.dims();
        let mut v: Vec<f32> = t.into_data().try_to_vec().unwrap();
        for (k, x) in v.iter_mut().enumerate() {
            let f = factor(k / (i * h * w));
            *x = if inverse { *x / f } else { *x * f };
        }
        Tensor::from_data(TensorData::new(v, [o, i, h, w]), device)
    };
    chain.conv1.weight = Param::from_tensor(scale(chain.conv1.weight.val(), false));
    let bias = chain.conv1.bias.take().unwrap().val();
    let bias: Vec<f32> = bias.into_data().try_to_vec().unwrap();
    let bias: Vec<f32> = (bias.iter().enumerate())
        .map(|(c, b)| b * factor(c))
        .collect();
    chain.conv1.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(bias, [8]),
        device,
    )));
    chain.depthwise.weight = Param::from_tensor(scale(chain.depthwise.weight.val(), true));
    chain
}

fn images(n: usize, seed: u64, device: &Device) -> Tensor<4> {
    common::images_hw(n, seed, [12, 12], device)
}

/// The largest `|w|` per output channel of a conv weight, or per input channel (`by_input`).
fn conv_ranges(graph: &Graph, path: &str, by_input: bool) -> Vec<f32> {
    let w = graph.parameter(path).unwrap();
    let [o, i, h, wd] = w.shape()[..] else {
        panic!("{path} is not a conv weight")
    };
    let channels = if by_input { o.max(i) } else { o };
    let mut r = vec![0f32; channels];
    for (k, v) in w.iter::<f32>().enumerate() {
        // A depthwise weight [c, 1, kh, kw] reads input channel c with output channel c.
        let c = if by_input && i > 1 {
            (k / (h * wd)) % i
        } else {
            k / (i * h * wd)
        };
        r[c] = r[c].max(v.abs());
    }
    r
}

#[test]
fn equalization_keeps_the_float_function_and_evens_out_each_pair() {
    let device = Device::flex();
    let model = chain(&device);
    let x = images(3, 1, &device);
    let mut before = Graph::capture(&model, &x).unwrap();
    passes::fold_batch_norm(&mut before);
    passes::fuse_activations(&mut before);
    let mut after = before.clone();
    // conv1 -> depthwise, depthwise -> pointwise, fc1 -> fc2; not pointwise -> project (ReLU6).
    assert_eq!(passes::equalize_layers(&mut after), 3);

    let run = |g: &Graph| -> Vec<f32> {
        let y: Tensor<2> = FloatExecutor::new(g, &device)
            .unwrap()
            .forward(x.clone())
            .unwrap();
        y.into_data().try_to_vec().unwrap()
    };
    let (a, b) = (run(&before), run(&after));
    let largest = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
    assert!(
        worst <= 1e-5 * largest,
        "output moved by {worst} of {largest}"
    );

    // Ranges 10^4 apart before; after, each channel's range is the same on both sides.
    let spread = |r: &[f32]| {
        r.iter().cloned().fold(0f32, f32::max) / r.iter().cloned().fold(f32::MAX, f32::min)
    };
    assert!(spread(&conv_ranges(&before, "conv1.weight", false)) > 100.0);
    for (first, second) in [("conv1", "depthwise"), ("depthwise", "pointwise")] {
        let r1 = conv_ranges(&after, &format!("{first}.weight"), false);
        let r2 = conv_ranges(&after, &format!("{second}.weight"), true);
        for (c, (p, q)) in r1.iter().zip(&r2).enumerate() {
            assert!(
                (p - q).abs() <= 1e-3 * p,
                "{first}/{second} channel {c}: {p} vs {q}"
            );
        }
    }
    // The pair through a ReLU6 is left as it was.
    for path in ["project.weight", "pointwise.bias"] {
        assert_eq!(before.parameter(path), after.parameter(path), "{path}");
    }
    assert!(spread(&conv_ranges(&after, "conv1.weight", false)) < 30.0);
}

#[test]
fn equalization_lets_per_tensor_weights_fit_every_channel() {
    let device = Device::flex();
    let model = chain(&device);
    // The feature map (pooled class scores vary too little across these inputs to show it).
    let graph = Graph::capture_with(&model, Chain::features, &images(4, 0, &device)).unwrap();
    // QNNPACK's preset: one weight scale per tensor.
    let qconfig = QConfigMap::global(QConfig::preset(Engine::Qnnpack));
    let x = images(8, 99, &device);
    let float: Tensor<4> = FloatExecutor::new(&graph, &device)
        .unwrap()
        .forward(x.clone())
        .unwrap();
    let float: Vec<f32> = float.into_data().try_to_vec().unwrap();
    let sqnr = |equalize: bool| {
        let options = PrepareOptions::default().equalize(equalize);
        let prepared = prepare_with(&graph, &qconfig, &options)
            .unwrap()
            .calibrate(|m| {
                (0..4).try_for_each(|s| m.forward::<4, 4>(images(4, s, &device)).map(|_| ()))
            })
            .unwrap();
        let y: Tensor<4> = convert(&prepared).unwrap().try_forward(x.clone()).unwrap();
        let y: Vec<f32> = y.into_data().try_to_vec().unwrap();
        Comparison::new(String::new(), String::new(), &float, &y).sqnr_db
    };
    let (plain, equalized) = (sqnr(false), sqnr(true));
    println!("output SQNR per-tensor weights: {plain:.1} dB plain, {equalized:.1} dB equalized");
    // Measured 8.3 -> 44.2 dB (seed 1; seeds 1-8 give 4.0-12.5 dB plain, 37.2-45.5 dB
    // equalized, two of them below 40): the small channels of conv1 were lost to the scale of
    // the large ones; equalized, the feature map is as good as 8-bit layers get.
    assert!(
        equalized >= 38.0 && equalized >= plain + 15.0,
        "{plain:.1} dB -> {equalized:.1} dB"
    );
}

/// Mean over channels of |the channel's mean error| of `y` against `float`, both `[n, c, h, w]`.
fn mean_channel_shift(y: &[f32], float: &[f32], [n, c, h, w]: [usize; 4]) -> f64 {
    let mut shift = vec![0.0f64; c];
    for (k, (a, b)) in y.iter().zip(float).enumerate() {
        shift[(k / (h * w)) % c] += f64::from(a - b) / (n * h * w) as f64;
    }
    shift.iter().map(|s| s.abs()).sum::<f64>() / c as f64
}

#[test]
fn bias_correction_removes_the_mean_shift_of_per_tensor_weights() {
    let device = Device::flex();
    let conv = Conv2dConfig::new([16, 16], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&device);
    // Inputs with a mean of 1: rounding the weights shifts every channel by eps·E[x].
    let batch = || Tensor::<4>::random([8, 16, 12, 12], Distribution::Uniform(0.5, 1.5), &device);
    let forward = |m: &Conv2d, x: Tensor<4>| m.forward(x);
    let graph = Graph::capture_with(&conv, forward, &batch()).unwrap();
    let qconfig = QConfigMap::global(QConfig::preset(Engine::Qnnpack));
    let x = batch();
    let float: Tensor<4> = FloatExecutor::new(&graph, &device)
        .unwrap()
        .forward(x.clone())
        .unwrap();
    let dims = float.dims();
    let float: Vec<f32> = float.into_data().try_to_vec().unwrap();
    let shift = |correct: bool| {
        let options = PrepareOptions::default().bias_correction(correct);
        let prepared = prepare_with(&graph, &qconfig, &options)
            .unwrap()
            .calibrate(|m| (0..4).try_for_each(|_| m.forward::<4, 4>(batch()).map(|_| ())))
            .unwrap();
        let y: Tensor<4> = convert(&prepared).unwrap().try_forward(x.clone()).unwrap();
        mean_channel_shift(&y.into_data().try_to_vec().unwrap(), &float, dims)
    };
    let (plain, corrected) = (shift(false), shift(true));
    println!("mean |channel shift| per-tensor weights: {plain:.5} plain, {corrected:.5} corrected");
    // Seen: ~0.0015 -> ~0.0001; what is left is activation rounding and sampling.
    assert!(corrected <= 0.25 * plain, "{plain:.5} -> {corrected:.5}");
}
