//! Op coverage of the int8 engine: table-driven activations (standalone and fused into the conv
//! before them), int8 SE gating, mean pooling, scalar ops and pad, and free spatial sizes.

mod common;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation as act;
use burn::tensor::ops::PadMode;
use burn::tensor::{Device, Tensor};
use burn_quantize::kernels::QParams;
use burn_quantize::models::ResNetConfig;
use burn_quantize::prepare::{Int8Op, Placement, PreparedModel, prepare};
use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};
use burn_quantize::quantized::{QuantizedModel, Step, convert, convert_debug};
use burn_quantize::{Error, Forward, Graph};
use common::{cosine, images_hw};

fn device() -> Device {
    Device::flex()
}

fn conv(cin: usize, cout: usize, k: usize, device: &Device) -> Conv2d {
    let p = k / 2;
    Conv2dConfig::new([cin, cout], [k, k])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .init(device)
}

/// Captures at `size`, prepares with `engine`'s preset and calibrates on 3 batches.
fn calibrated<const DO: usize, M: Forward<4, DO>>(
    net: &M,
    size: [usize; 2],
    engine: Engine,
    device: &Device,
) -> PreparedModel {
    let graph = Graph::capture(net, &images_hw(2, 0, size, device)).unwrap();
    prepare(&graph, &QConfigMap::global(QConfig::preset(engine)))
        .unwrap()
        .calibrate(|m| {
            for seed in 1..4 {
                m.forward::<4, DO>(images_hw(4, seed, size, device))?;
            }
            Ok(())
        })
        .unwrap()
}

/// Every node in int8, or a failure listing the report.
fn assert_all_int8(qmodel: &QuantizedModel) {
    let (int8, float) = qmodel.report().counts();
    assert!(float == 0 && int8 > 0, "{}", qmodel.report());
}

/// An activation applied to two values: the output of conv `a` (its only reader, so the table
/// is fused into `a`) and the output of conv `c`, which `head` reads as well (a table step).
#[derive(Module, Debug)]
struct ActNet {
    a: Conv2d,
    c: Conv2d,
    head: Conv2d,
    #[module(skip)]
    which: usize,
}

type Activation = (&'static str, fn(Tensor<4>) -> Tensor<4>, fn(f64) -> f64);

fn activations() -> Vec<Activation> {
    fn erf(x: f64) -> f64 {
        // Abramowitz-Stegun 7.1.26 is too coarse; integrate exp(-t^2) by Simpson instead.
        let n = 2000;
        let h = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let sum: f64 = (0..=n)
            .map(|i| {
                let w = if i == 0 || i == n {
                    1.0
                } else if i % 2 == 1 {
                    4.0
                } else {
                    2.0
                };
                w * f(i as f64 * h)
            })
            .sum();
        sum * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    let hardsigmoid = |x: f64| (x / 6.0 + 0.5).clamp(0.0, 1.0);
    vec![
        ("sigmoid", act::sigmoid, sigmoid),
        (
            "hardsigmoid",
            |x| act::hard_sigmoid(x, 1.0 / 6.0, 0.5),
            hardsigmoid,
        ),
        ("hardswish", act::hard_swish, |x| {
            x * (x / 6.0 + 0.5).clamp(0.0, 1.0)
        }),
        ("silu", act::silu, |x| x / (1.0 + (-x).exp())),
        ("tanh", act::tanh, f64::tanh),
        ("gelu", act::gelu, |x| {
            0.5 * x * (1.0 + erf(x / 2f64.sqrt()))
        }),
        ("gelu_tanh", act::gelu_approximate, |x| {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
        }),
        (
            "leaky_relu",
            |x| act::leaky_relu(x, 0.1),
            |x| if x < 0.0 { 0.1 * x } else { x },
        ),
        (
            "elu",
            |x| act::elu(x, 1.0),
            |x| if x <= 0.0 { x.exp() - 1.0 } else { x },
        ),
        (
            "scalar ops",
            |x| {
                x.mul_scalar(0.5)
                    .add_scalar(0.25)
                    .sub_scalar(1.0)
                    .div_scalar(2.0)
            },
            |x| (x * 0.5 + 0.25 - 1.0) / 2.0,
        ),
    ]
}

impl Forward<4, 4> for ActNet {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let f = activations()[self.which].1;
        let fused = f(self.a.forward(x.clone()));
        let y = self.c.forward(x);
        let standalone = f(y.clone());
        self.head
            .forward(Tensor::cat(vec![fused, standalone, y], 1))
    }
}

/// `u8` -> `u8` as the float function would map it: `quantize(f(dequantize(q)))`, in `f64`.
fn expected_code(f: fn(f64) -> f64, q: u8, from: QParams, to: QParams) -> i32 {
    let x = f64::from(from.scale) * (f64::from(q) - f64::from(from.zero_point));
    let y = f(x) / f64::from(to.scale) + f64::from(to.zero_point);
    y.round().clamp(0.0, 255.0) as i32
}

#[test]
fn every_table_activation_runs_in_int8_matches_the_debug_model_and_float_within_one_step() {
    let device = device();
    for (which, (name, _, reference)) in activations().into_iter().enumerate() {
        let net = ActNet {
            a: conv(3, 4, 3, &device),
            c: conv(3, 4, 1, &device),
            head: conv(12, 5, 3, &device),
            which,
        };
        let prepared = calibrated(&net, [12, 12], Engine::X86, &device);
        let qmodel = convert(&prepared).unwrap();
        assert_all_int8(&qmodel);
        let program = qmodel.program();
        // The two tables: one fused into conv `a`, one a step of its own.
        let fused = program.convs.iter().find(|c| c.name == "a").unwrap();
        let fused_table = fused.spec.table.clone().expect("table fused into `a`");
        let fused_out = program.steps.iter().find_map(|s| match s {
            Step::Conv2d { layer, output, .. } if program.convs[*layer].name == "a" => {
                Some(*output)
            }
            _ => None,
        });
        let mut tables = vec![(
            fused_table,
            fused.spec.output.as_u8().unwrap(),
            program.qparams(fused_out.unwrap()).unwrap(),
        )];
        for step in &program.steps {
            if let Step::Table {
                table,
                input,
                output,
                ..
            } = step
            {
                let (from, to) = (program.qparams(*input), program.qparams(*output));
                tables.push((table.clone(), from.unwrap(), to.unwrap()));
            }
        }
        assert_eq!(tables.len(), 2, "{name}: {}", qmodel);
        for (table, from, to) in &tables {
            for q in 0..=255u8 {
                let want = expected_code(reference, q, *from, *to);
                let got = i32::from(table.get(q));
                assert!(
                    (got - want).abs() <= 1,
                    "{name}: table[{q}] = {got}, float gives {want}"
                );
            }
        }
        let x = images_hw(3, 9, [12, 12], &device);
        let int8: Tensor<4> = qmodel.try_forward(x.clone()).unwrap();
        let debug: Tensor<4> = convert_debug(&prepared)
            .unwrap()
            .forward(x.clone())
            .unwrap();
        assert_eq!(
            int8.clone().into_data(),
            debug.into_data(),
            "{name}: int8 vs debug"
        );
        let cos = cosine(Forward::forward(&net, x), int8);
        assert!(cos > 0.999, "{name}: cosine vs float {cos}");
    }
}

/// A model written outside the library: conv branches concatenated, functional pad, GELU, max
/// pooling, a squeeze-excitation gate `y * sigmoid(linear(relu(linear(mean(y)))))`, a residual
/// add, scalar ops and a hard-swish.
#[derive(Module, Debug)]
struct SeNet {
    stem: Conv2d,
    left: Conv2d,
    right: Conv2d,
    fc1: Linear,
    fc2: Linear,
    mix: Conv2d,
    head: Conv2d,
}

impl Forward<4, 4> for SeNet {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        use burn::nn::pool::MaxPool2dConfig;
        let y = act::gelu(self.stem.forward(x));
        let y = y.pad((1, 1, 1, 1), PadMode::Constant(0.0));
        let y = MaxPool2dConfig::new([3, 3]).init().forward(y);
        let left = act::silu(self.left.forward(y.clone()));
        let right = act::relu(self.right.forward(y));
        let y = Tensor::cat(vec![left, right], 1);
        let [n, c, _, _] = y.dims();
        let s = y.clone().mean_dims(&[2, 3]).reshape([n, c]);
        let s = act::sigmoid(self.fc2.forward(act::relu(self.fc1.forward(s))));
        let gated = y.clone() * s.reshape([n, c, 1, 1]);
        let y = self.mix.forward(gated) + y;
        let y = act::hard_swish(y.mul_scalar(0.5).add_scalar(0.1));
        self.head.forward(y)
    }
}

fn se_net(device: &Device) -> SeNet {
    SeNet {
        stem: conv(3, 8, 3, device),
        left: conv(8, 8, 3, device),
        right: conv(8, 8, 1, device),
        fc1: LinearConfig::new(16, 4).init(device),
        fc2: LinearConfig::new(4, 16).init(device),
        mix: conv(16, 16, 1, device),
        head: conv(16, 6, 3, device),
    }
}

#[test]
fn a_model_with_se_gating_gelu_pad_and_scalar_ops_has_no_float_node() {
    let device = device();
    let net = se_net(&device);
    let prepared = calibrated(&net, [16, 16], Engine::X86, &device);
    let qmodel = convert(&prepared).unwrap();
    assert_all_int8(&qmodel);
    let x = images_hw(2, 5, [16, 16], &device);
    let int8: Tensor<4> = qmodel.try_forward(x.clone()).unwrap();
    let debug: Tensor<4> = convert_debug(&prepared)
        .unwrap()
        .forward(x.clone())
        .unwrap();
    assert_eq!(int8.clone().into_data(), debug.into_data());
    let cos = cosine(Forward::forward(&net, x), int8);
    assert!(cos > 0.99, "cosine vs float {cos}");
}

#[test]
fn a_resnet_captured_at_224_runs_at_160_and_288_equal_to_the_debug_model() {
    let device = device();
    let net = ResNetConfig::resnet18(10).narrowed(8).init(&device);
    let prepared = calibrated(&net, [224, 224], Engine::X86, &device);
    let (qmodel, debug) = (
        convert(&prepared).unwrap(),
        convert_debug(&prepared).unwrap(),
    );
    for size in [[160, 160], [288, 288], [256, 192]] {
        let x = images_hw(2, 3, size, &device);
        let int8: Tensor<2> = qmodel.try_forward(x.clone()).unwrap();
        let reference: Tensor<2> = debug.forward(x.clone()).unwrap();
        assert_eq!(int8.clone().into_data(), reference.into_data(), "{size:?}");
        let cos = cosine(net.forward(x), int8);
        assert!(cos > 0.99, "{size:?}: cosine vs float {cos}");
    }
    // The SE model too, at sizes it was not captured at.
    let net = se_net(&device);
    let prepared = calibrated(&net, [16, 16], Engine::X86, &device);
    let (qmodel, debug) = (
        convert(&prepared).unwrap(),
        convert_debug(&prepared).unwrap(),
    );
    for size in [[24, 20], [9, 13]] {
        let x = images_hw(1, 4, size, &device);
        let int8: Tensor<4> = qmodel.try_forward(x.clone()).unwrap();
        assert_eq!(int8.dims(), Forward::forward(&net, x.clone()).dims());
        let reference: Tensor<4> = debug.forward(x).unwrap();
        assert_eq!(int8.into_data(), reference.into_data(), "{size:?}");
    }
}

/// A reshape to literal sizes that only fit the captured input.
#[derive(Module, Debug)]
struct FixedNet {
    conv: Conv2d,
}

impl Forward<4, 4> for FixedNet {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, _, _, _] = x.dims();
        self.conv.forward(x).reshape([n, 4, 32, 2])
    }
}

#[test]
fn a_model_that_fixes_its_size_errors_at_the_node_that_fixes_it() {
    let device = device();
    let net = FixedNet {
        conv: conv(3, 4, 3, &device),
    };
    let prepared = calibrated(&net, [8, 8], Engine::X86, &device);
    let qmodel = convert(&prepared).unwrap();
    let ok: Tensor<4> = qmodel
        .try_forward(images_hw(1, 1, [8, 8], &device))
        .unwrap();
    assert_eq!(ok.dims(), [1, 4, 32, 2]);
    let err = qmodel
        .try_forward::<4, 4>(images_hw(1, 1, [10, 8], &device))
        .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    assert!(err.to_string().contains("reshape"), "{err}");
    // The float graph says the same.
    let graph = Graph::capture(&net, &images_hw(2, 0, [8, 8], &device)).unwrap();
    let float = burn_quantize::exec::FloatExecutor::new(&graph, &device).unwrap();
    let err = float
        .forward::<4, 4>(images_hw(1, 1, [10, 8], &device))
        .unwrap_err();
    assert!(err.to_string().contains("reshape_1"), "{err}");
}

/// Normalisation inside the forward, on the float input.
#[derive(Module, Debug)]
struct Normalizing {
    conv: Conv2d,
}

impl Forward<4, 4> for Normalizing {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv.forward(x.mul_scalar(2.0).sub_scalar(1.0))
    }
}

#[test]
fn a_pointwise_function_of_a_float_value_stays_float() {
    let device = device();
    let net = Normalizing {
        conv: conv(3, 4, 3, &device),
    };
    let qmodel = convert(&calibrated(&net, [8, 8], Engine::X86, &device)).unwrap();
    let report = &qmodel.program().report;
    assert_eq!(report.len(), 2, "{}", qmodel.report());
    assert_eq!(report[0].op, "mul_scalar+sub_scalar");
    assert!(
        matches!(&report[0].placement, Placement::Float(why) if why.contains("input is float")),
        "{}",
        qmodel.report()
    );
    assert_eq!(report[1].placement, Placement::Int8(Int8Op::Conv2d));
}
