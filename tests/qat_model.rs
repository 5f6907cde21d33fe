//! Quantization-aware training at the model level: `prepare_qat` on a captured residual CNN,
//! the fake-quantized forward against the converted int8 model and its debug model, and (with
//! `--features train`) straight-through gradients of a QAT model against finite differences.

mod common;

use burn::tensor::{Device, Tensor};
use burn_quantize::Graph;
use burn_quantize::kernels::{available_isas, with_isa};
use burn_quantize::models::fashion::{FashionNet, FashionNetConfig};
use burn_quantize::qat::prepare_qat;
use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};

fn small_net(device: &Device) -> FashionNet {
    let config = FashionNetConfig {
        stem: 8,
        stages: vec![(8, 1), (16, 1)],
        num_classes: 10,
    };
    common::seeded(config.init(device), 5)
}

fn images(n: usize, seed: u64, device: &Device) -> Tensor<4> {
    common::images_hw(n, seed, [16, 16], device).narrow(1, 0, 1)
}

fn floats<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn converted_qat_model_is_its_debug_model_and_close_to_the_fake_quantized_forward() {
    let device = Device::flex();
    let model = small_net(&device);
    let graph = Graph::capture(&model, &images(2, 1, &device)).unwrap();
    let qconfig = QConfigMap::global(QConfig::qat_preset(Engine::X86));
    let mut qat = prepare_qat(&graph, &qconfig, &device).unwrap();
    assert!(qat.convert().is_err(), "nothing observed yet");
    // BatchNorm with its running statistics from the start: the layers run folded.
    qat.freeze_bn();
    for seed in 0..4 {
        let _: Tensor<2> = qat.forward(images(4, 10 + seed, &device)).unwrap();
    }
    qat.freeze_observers();
    let x = images(8, 99, &device);
    let fake: Tensor<2> = qat.forward(x.clone()).unwrap();
    let float = model.forward(x.clone());
    let cos_float = common::cosine(fake.clone(), float);
    let qmodel = qat.convert().unwrap();
    let (int8, float_nodes) = qmodel.report().counts();
    assert_eq!(float_nodes, 0, "{}", qmodel.report());
    assert!(int8 > 0);
    let debug: Tensor<2> = qat.convert_debug().unwrap().forward(x.clone()).unwrap();
    let expected = floats(debug);
    for isa in available_isas() {
        let got: Tensor<2> = with_isa(isa, || qmodel.try_forward(x.clone()))
            .unwrap()
            .unwrap();
        assert_eq!(floats(got), expected, "{isa} vs the debug model");
    }
    // The training forward rounds in float (f32 sums, float bias, `x / s`), the int8 model
    // exactly (integer sums, integer bias, the kernels' requantization): most logits agree to
    // the bit, the rest by a rounding step or two.
    let fake = floats(fake);
    let same = fake.iter().zip(&expected).filter(|(a, b)| a == b).count();
    let cos =
        burn_quantize::numeric::Comparison::new(String::new(), String::new(), &fake, &expected)
            .cosine;
    assert!(cos > 0.9995, "fake-quantized forward vs int8: cosine {cos}");
    assert!(
        2 * same > fake.len(),
        "{same}/{} logits bit-identical",
        fake.len()
    );
    assert!(
        cos_float > 0.999,
        "fake-quantized forward vs float: cosine {cos_float}"
    );
}

/// `model`'s BatchNorm named `name` (its module path).
#[cfg(feature = "train")]
fn batch_norm_mut<'a>(model: &'a mut FashionNet, name: &str) -> &'a mut burn::nn::BatchNorm {
    let parts: Vec<&str> = name.split('.').collect();
    let conv_bn = match parts[..] {
        ["stem", "bn"] => &mut model.stem,
        ["blocks", block, layer, "bn"] => {
            let block = &mut model.blocks[block.parse::<usize>().unwrap()];
            match layer {
                "conv1" => &mut block.conv1,
                "conv2" => &mut block.conv2,
                _ => block.shortcut.as_mut().unwrap(),
            }
        }
        _ => panic!("no BatchNorm {name}"),
    };
    &mut conv_bn.bn
}

/// Before `freeze_bn`, BatchNorm normalizes with the batch's statistics (as Burn's BatchNorm in
/// training, on the autodiff device) and updates its running statistics with momentum 0.1 and
/// the unbiased variance (PyTorch's rule); after it, the QAT model is the float model with those
/// running statistics.
#[cfg(feature = "train")]
#[test]
fn batch_norm_trains_with_batch_statistics_until_frozen() {
    use burn::module::{Module, RunningState};
    use burn_quantize::observe::{ObserverConfig, ObserverKind};
    let plain = Device::flex();
    let device = plain.clone().autodiff();
    let mut model = small_net(&plain);
    let training = model.clone().fork(&device);
    let graph = Graph::capture(&model, &images(2, 1, &plain)).unwrap();
    // Observers that take each batch's own range (a moving average of weight 1) before
    // fake-quantizing it: nothing is clamped, and the frozen forward is not quantized with the
    // (wider) ranges of the batch statistics' outputs. 16 bits where the plan allows.
    let qconfig = QConfigMap::global(QConfig {
        activation: ObserverConfig {
            kind: ObserverKind::MovingAverageMinMax {
                averaging_constant: 1.0,
            },
            ..ObserverConfig::min_max_16()
        },
        ..QConfig::preset(Engine::Native)
    });
    let mut qat = prepare_qat(&graph, &qconfig, &device).unwrap();
    // The stem, and two convolutions and a projection shortcut in each of the two blocks.
    assert_eq!(
        qat.batch_norm_layers().len(),
        7,
        "every conv has a BatchNorm"
    );
    let x = images(16, 3, &device);
    let fake: Tensor<2> = qat.forward(x.clone()).unwrap();
    let batch_statistics = training.forward(x.clone());
    let running_statistics = model.forward(x.clone().inner());
    let cos_train = common::cosine(fake.clone().inner(), batch_statistics.inner());
    let cos_eval = common::cosine(fake.inner(), running_statistics);
    assert!(
        cos_train > 0.9995,
        "vs BatchNorm on batch statistics: {cos_train}"
    );
    assert!(
        cos_eval < 0.99,
        "the two statistics should differ here: {cos_eval}"
    );

    // The stem's BatchNorm reads the stem convolution's output (running stats were 0 and 1).
    let stem = model
        .stem
        .conv
        .forward(x.clone().inner())
        .swap_dims(0, 1)
        .flatten::<2>(1, 3);
    let count = stem.dims()[1] as f32;
    let mean = stem.clone().mean_dim(1);
    let var = stem
        .sub(mean.clone())
        .powi_scalar(2)
        .sum_dim(1)
        .div_scalar(count - 1.0);
    let (name, qat_mean, qat_var) = qat.batch_norm_statistics()[0];
    assert_eq!(name, "stem.bn");
    let [mean, var] = [mean, var].map(|t| t.into_data().iter::<f32>().collect::<Vec<_>>());
    for c in 0..mean.len() {
        let expected = [0.1 * mean[c], 0.9 + 0.1 * var[c]];
        // What differs is the fake quantization of the input and weights (≤ 2e-5 and 1.2e-4
        // here); a momentum off by 0.01 would move them by 3e-4 and 6e-3.
        assert!(
            (qat_mean[c] - expected[0]).abs() < 5e-5,
            "mean {c}: {} vs {}",
            qat_mean[c],
            expected[0]
        );
        assert!(
            (qat_var[c] - expected[1]).abs() < 3e-4,
            "var {c}: {} vs {}",
            qat_var[c],
            expected[1]
        );
    }

    // Frozen: the float model with the QAT model's running statistics.
    qat.freeze_bn();
    for (name, mean, var) in qat.batch_norm_statistics() {
        let bn = batch_norm_mut(&mut model, name);
        let tensor = |v: &[f32]| {
            Tensor::<1>::from_data(burn::tensor::TensorData::new(v.to_vec(), [v.len()]), &plain)
        };
        bn.running_mean = RunningState::new(tensor(mean));
        bn.running_var = RunningState::new(tensor(var));
    }
    let x = images(16, 4, &device);
    let fake: Tensor<2> = qat.forward(x.clone()).unwrap();
    let cos = common::cosine(fake.inner(), model.forward(x.inner()));
    assert!(
        cos > 0.9999,
        "frozen vs the float model with its running statistics: {cos}"
    );
}

/// Straight-through gradients of a two-layer QAT model, against central differences of the
/// function they are the gradient of: the model with every fake quantizer replaced by its
/// straight-through surrogate at the current point (the identity plus the current rounding
/// offset where the value is inside the quantized range, a constant where it is clamped).
#[cfg(feature = "train")]
mod gradients {
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig, Relu};
    use burn::tensor::{Device, Tensor, TensorData};
    use burn_quantize::observe::{ObserverConfig, QParams};
    use burn_quantize::qat::{QatModel, prepare_qat};
    use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};
    use burn_quantize::{Forward, Graph};

    #[derive(Module, Debug)]
    struct Mlp {
        fc1: Linear,
        relu: Relu,
        fc2: Linear,
    }

    impl Forward<2, 2> for Mlp {
        fn forward(&self, x: Tensor<2>) -> Tensor<2> {
            self.fc2.forward(self.relu.forward(self.fc1.forward(x)))
        }
    }

    fn uniform(n: usize, seed: u64, half_width: f32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * half_width
            })
            .collect()
    }

    fn tensor(values: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    /// `(fq(v), inside)` of one value with per-channel parameters `qp` at channel `c`.
    fn fq(v: f64, qp: &QParams, c: usize) -> (f64, bool) {
        let (s, z) = (qp.scale[c], qp.zero_point[c] as f32);
        let q = (v as f32 * (1.0 / s)).round_ties_even() + z;
        let inside = q >= qp.quant_min as f32 && q <= qp.quant_max as f32;
        let q = q.clamp(qp.quant_min as f32, qp.quant_max as f32);
        (f64::from((q - z) * s), inside)
    }

    /// The surrogate of `v` around `v0`: `v + (fq(v0) − v0)` inside, `fq(v0)` where clamped.
    fn surrogate(v: f64, v0: f64, qp: &QParams, c: usize) -> f64 {
        let (q0, inside) = fq(v0, qp, c);
        if inside { v + (q0 - v0) } else { q0 }
    }

    /// Rows of `a [rows, k]` times `w [k, n]` (Burn's linear layout) plus `b`.
    fn linear(a: &[f64], w: &[f64], b: &[f64], k: usize) -> Vec<f64> {
        let n = b.len();
        let rows = a.len() / k;
        let mut out = vec![0.0; rows * n];
        for r in 0..rows {
            for j in 0..n {
                out[r * n + j] = b[j] + (0..k).map(|i| a[r * k + i] * w[i * n + j]).sum::<f64>();
            }
        }
        out
    }

    struct Point {
        /// fc1.weight, fc1.bias, fc2.weight, fc2.bias, as the model holds them.
        params: [Vec<f64>; 4],
        /// Quantization parameters of the input, fc1's (ReLU) output and fc2's output.
        acts: [QParams; 3],
        /// Of fc1's and fc2's weights, per output channel.
        weights: [QParams; 2],
    }

    /// `Σ g·y` of the surrogate model at `theta`, linearised around `at`.
    fn loss(theta: &[Vec<f64>; 4], at: &Point, x: &[f64], g: &[f64], dims: [usize; 3]) -> f64 {
        let [inp, hid, _] = dims;
        let x: Vec<f64> = x.iter().map(|&v| fq(v, &at.acts[0], 0).0).collect();
        let weight = |t: usize, w: &[f64], outs: usize| -> Vec<f64> {
            let (w0, qp) = (&at.params[t], &at.weights[t / 2]);
            (w.iter().enumerate())
                .map(|(k, &v)| surrogate(v, w0[k], qp, k % outs))
                .collect()
        };
        let w1 = weight(0, &theta[0], hid);
        let h0: Vec<f64> = linear(&x, &weight(0, &at.params[0], hid), &at.params[1], inp);
        let h: Vec<f64> = (linear(&x, &w1, &theta[1], inp).iter().zip(&h0))
            .map(|(&v, &v0)| surrogate(v.max(0.0), v0.max(0.0), &at.acts[1], 0))
            .collect();
        let h0: Vec<f64> = h0
            .iter()
            .map(|&v| fq(v.max(0.0), &at.acts[1], 0).0)
            .collect();
        let y0 = linear(&h0, &weight(2, &at.params[2], dims[2]), &at.params[3], hid);
        let y = linear(&h, &weight(2, &theta[2], dims[2]), &theta[3], hid);
        (y.iter().zip(&y0).zip(g))
            .map(|((&v, &v0), &gk)| gk * surrogate(v, v0, &at.acts[2], 0))
            .sum()
    }

    fn qparams_of(qat: &QatModel, value: burn_quantize::graph::ValueId) -> QParams {
        let k = (qat.plan().observed.iter())
            .position(|o| o.value == value)
            .expect("an observed value");
        qat.fake_quantizers()[k].qparams().unwrap()
    }

    fn weight_qparams(w: &[f64], [inputs, outputs]: [usize; 2]) -> QParams {
        // The observer sees the weight as [out, in].
        let out_in: Vec<f32> = (0..outputs * inputs)
            .map(|k| w[(k % inputs) * outputs + k / inputs] as f32)
            .collect();
        let mut observer = ObserverConfig::per_channel_symmetric_weight()
            .build()
            .unwrap();
        observer.observe(&out_in, &[outputs, inputs]).unwrap();
        observer.qparams().unwrap()
    }

    #[test]
    fn qat_model_gradients_are_the_straight_through_surrogates() {
        let dims @ [inp, hid, out] = [4usize, 6, 3];
        let plain = Device::flex();
        let device = plain.clone().autodiff();
        let model = super::common::seeded(
            Mlp {
                fc1: LinearConfig::new(inp, hid).init(&plain),
                relu: Relu::new(),
                fc2: LinearConfig::new(hid, out).init(&plain),
            },
            7,
        );
        let rows = 8;
        let graph = Graph::capture(
            &model,
            &tensor(uniform(rows * inp, 1, 1.0), [rows, inp], &plain),
        )
        .unwrap();
        let qconfig = QConfigMap::global(QConfig::qat_preset(Engine::Native));
        let mut qat = prepare_qat(&graph, &qconfig, &device).unwrap();
        for seed in 2..5 {
            let _: Tensor<2> = qat
                .forward(tensor(uniform(rows * inp, seed, 1.0), [rows, inp], &device))
                .unwrap();
        }
        qat.freeze_observers();
        // Wider than what was observed: some inputs and outputs are clamped.
        let x = uniform(rows * inp, 9, 2.0);
        let g = uniform(rows * out, 10, 1.0);
        let y: Tensor<2> = qat
            .forward(tensor(x.clone(), [rows, inp], &device))
            .unwrap();
        let grads = y
            .mul(tensor(g.clone(), [rows, out], &device))
            .sum()
            .backward();

        let nodes = &qat.graph().nodes;
        assert_eq!(nodes.len(), 2, "fc1 with its ReLU fused, fc2");
        let ids = [
            nodes[0].inputs[1],
            nodes[0].inputs[2],
            nodes[1].inputs[1],
            nodes[1].inputs[2],
        ];
        let slot = |id| qat.parameter_ids().iter().position(|&p| p == id).unwrap();
        let values =
            |t: Tensor<1>| -> Vec<f64> { t.into_data().iter::<f32>().map(f64::from).collect() };
        let params = ids.map(|id| values(qat.params().tensors[slot(id)].val()));
        let auto = ids.map(|id| values(qat.params().tensors[slot(id)].val().grad(&grads).unwrap()));
        let at = Point {
            acts: [graph_input(&qat), nodes[0].outputs[0], nodes[1].outputs[0]]
                .map(|v| qparams_of(&qat, v)),
            weights: [
                weight_qparams(&params[0], [inp, hid]),
                weight_qparams(&params[2], [hid, out]),
            ],
            params,
        };
        let x: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let g: Vec<f64> = g.iter().map(|&v| f64::from(v)).collect();
        let clamped_inputs = x.iter().filter(|&&v| !fq(v, &at.acts[0], 0).1).count();
        assert!(clamped_inputs > 0, "the test should clamp some inputs");
        let h = 1e-4;
        let mut zeros = 0;
        for t in 0..4 {
            for k in 0..at.params[t].len() {
                let (mut up, mut down) = (at.params.clone(), at.params.clone());
                up[t][k] += h;
                down[t][k] -= h;
                let expected =
                    (loss(&up, &at, &x, &g, dims) - loss(&down, &at, &x, &g, dims)) / (2.0 * h);
                let got = auto[t][k];
                zeros += usize::from(expected == 0.0);
                assert!(
                    (got - expected).abs() <= 1e-4 + 1e-3 * expected.abs(),
                    "parameter {t}[{k}]: autodiff {got}, finite differences {expected}"
                );
            }
        }
        println!("{zeros} zero gradients");
    }

    fn graph_input(qat: &QatModel) -> burn_quantize::graph::ValueId {
        qat.graph().inputs[0]
    }
}
