//! 16-bit activations (W8A16): a sensitive edge made 16-bit end to end — report, kernels equal
//! to the debug model on every path, a saved model reloading identical — and the accuracy it is
//! for; values an op without 16-bit kernels reads stay 8-bit and the report says why.

mod common;

use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::tensor::{Device, Tensor, TensorData};
use burn_quantize::Forward;
use burn_quantize::graph::Graph;
use burn_quantize::numeric::{Budget, Higher, sensitivity};
use burn_quantize::prepare::{PreparedModel, prepare};
use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};
use burn_quantize::quantized::{Domain, QuantizedModel, convert, convert_debug};
use burn_quantize::record::RecordParts;
use common::images_hw;

/// conv 3x3 -> conv 1x1 -> max pool 2x2.
#[derive(Module, Debug)]
struct Sensitive {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
}

impl Forward<4, 4> for Sensitive {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.pool.forward(self.conv2.forward(self.conv1.forward(x)))
    }
}

/// conv1's channel 0 spans 250 times the range of its other channels, so one 8-bit step of its
/// output (shared by all channels) is about the small channels' whole range; conv2 ignores
/// channel 0 and reads the small channels through weights 250 times larger.
fn sensitive(device: &Device) -> Sensitive {
    let mut model = Sensitive {
        conv1: Conv2dConfig::new([3, 8], [3, 3])
            .with_padding(PaddingConfig2d::Same)
            .with_bias(false)
            .init(device),
        conv2: Conv2dConfig::new([8, 4], [1, 1]).init(device),
        pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
    };
    // Seeded weights in [-0.5, 0.5] (Burn's initializers draw from a shared generator), scaled
    // per output and input channel.
    let rescale = |t: Tensor<4>, factor: &dyn Fn(usize, usize) -> f32| {
        let [o, i, h, w] = t.dims();
        let mut v: Vec<f32> = images_hw(1, (o * 100 + i) as u64, [1, o * i * h * w], device)
            .into_data()
            .iter::<f32>()
            .take(o * i * h * w)
            .map(|x| x / 4.0)
            .collect();
        for (k, x) in v.iter_mut().enumerate() {
            *x *= factor(k / (i * h * w), k / (h * w) % i);
        }
        Param::from_tensor(Tensor::from_data(TensorData::new(v, [o, i, h, w]), device))
    };
    let big = |c: usize| if c == 0 { 1.0 } else { 0.004 };
    model.conv1.weight = rescale(model.conv1.weight.val(), &|o, _| big(o));
    let ignore_0 = |i: usize| if i == 0 { 0.0 } else { 250.0 };
    model.conv2.weight = rescale(model.conv2.weight.val(), &|_, i| ignore_0(i));
    model.conv2.bias = None;
    model
}

fn calibrated(model: &Sensitive, qconfig: &QConfigMap, device: &Device) -> PreparedModel {
    let x = images_hw(8, 1, [12, 12], device);
    let graph = Graph::capture(model, &x.clone().narrow(0, 0, 2)).unwrap();
    prepare(&graph, qconfig)
        .unwrap()
        .calibrate(|m| {
            m.forward::<4, 4>(x.clone())?;
            Ok(())
        })
        .unwrap()
}

/// How many values of a program are 16-bit.
fn wide_values(program: &burn_quantize::quantized::QuantizedProgram) -> usize {
    (program.domains.iter())
        .filter(|d| matches!(d, Domain::Int16(_)))
        .count()
}

#[test]
fn one_sensitive_edge_in_16_bits() {
    let device = Device::flex();
    let model = sensitive(&device);
    let native = QConfig::preset(Engine::Native);
    let all_8 = QConfigMap::global(native.clone());
    let edge_16 =
        QConfigMap::global(native.clone()).module("conv1", native.with_16bit_activations());
    let x = images_hw(6, 2, [12, 12], &device);

    let plain = convert(&calibrated(&model, &all_8, &device)).unwrap();
    let prepared = calibrated(&model, &edge_16, &device);
    let qmodel = convert(&prepared).unwrap();

    // conv1's output is 16-bit, and so is the model input conv1 quantizes on entry (a node's
    // qconfig also quantizes the float values it reads); conv2's output stays 8-bit.
    let report = qmodel.report();
    assert_eq!(report.int16_nodes(), 1, "{report}");
    let program = qmodel.program();
    let conv1 = program.report.iter().find(|r| r.name == "conv1").unwrap();
    assert_eq!(conv1.bits, vec![16]);
    assert_eq!(wide_values(program), 2, "{qmodel}");
    assert!(format!("{qmodel}").contains("u16["), "{qmodel}");

    // The accuracy it is for: the small channels survive conv1's output quantization (measured
    // 0.0 dB all 8-bit, 39.6 dB with the edge in 16 bits, where conv2's 8-bit output and the
    // small channels' ~260 levels of 65,536 bound it).
    let (db_8, db_16) = (
        common::output_sqnr(&model, &plain, &x),
        common::output_sqnr(&model, &qmodel, &x),
    );
    assert!(
        db_8 < 6.0 && db_16 > 37.0,
        "SQNR all 8-bit {db_8:.1} dB, edge in 16 bits {db_16:.1} dB"
    );

    // Every kernel path and the debug model give the same integers; saved and loaded, the
    // same program and outputs.
    let dir = std::env::temp_dir().join(format!("burn-quantize-wide-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("wide.bpk");
    common::assert_paths_match_debug_and_reload(&prepared, &qmodel, &x, &path);

    // A record of the previous program format (8-bit-only layer specs), sealed with valid
    // checksums, is refused by version.
    let mut parts = RecordParts::from_bytes(&std::fs::read(&path).unwrap()).unwrap();
    assert!(parts.program.contains(r#""version":3"#));
    parts.program = parts
        .program
        .replacen(r#""version":3"#, r#""version":2"#, 1);
    let err = QuantizedModel::from_bytes(&parts.to_bytes().unwrap(), &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("program format version 2"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn values_without_16_bit_kernels_stay_8_bit_and_the_report_says_why() {
    let device = Device::flex();
    let model = sensitive(&device);
    let qconfig = QConfigMap::global(QConfig::preset(Engine::Native).with_16bit_activations());
    let prepared = calibrated(&model, &qconfig, &device);
    let qmodel = convert(&prepared).unwrap();
    let program = qmodel.program();
    let report = |name: &str| program.report.iter().find(|r| r.name == name).unwrap();
    // The input (quantized from float) and conv1's output are 16-bit; conv2's output is read
    // by the max pool, which has no 16-bit kernel.
    assert_eq!(report("conv1").bits, vec![16]);
    assert_eq!(report("conv2").bits, vec![8]);
    let why = report("conv2").narrowed.clone().unwrap_or_default();
    assert!(
        why.contains("max_pool2d") && why.contains("16-bit"),
        "{why}"
    );
    assert_eq!(wide_values(program), 2, "{qmodel}");
    let x = images_hw(3, 4, [10, 14], &device);
    let expected: Tensor<4> = convert_debug(&prepared)
        .unwrap()
        .forward(x.clone())
        .unwrap();
    let got: Tensor<4> = qmodel.try_forward(x).unwrap();
    assert_eq!(got.into_data(), expected.into_data());
}

#[test]
fn sixteen_bit_histograms_are_refused() {
    let mut qconfig = QConfig::preset(Engine::Native);
    qconfig.activation.dtype = burn_quantize::observe::QDType::QUInt16;
    let device = Device::flex();
    let model = sensitive(&device);
    let x = images_hw(2, 1, [8, 8], &device);
    let graph = Graph::capture(&model, &x).unwrap();
    let err = prepare(&graph, &QConfigMap::global(qconfig))
        .unwrap_err()
        .to_string();
    assert!(err.contains("256 levels"), "{err}");
}

#[test]
fn auto_precision_moves_the_sensitive_edge_and_nothing_else() {
    let device = Device::flex();
    let model = sensitive(&device);
    let batches = vec![
        images_hw(4, 11, [12, 12], &device),
        images_hw(4, 12, [12, 12], &device),
    ];
    let choice = common::native_auto_precision(&model, &batches, Budget::Cosine(0.9999));
    let graph = Graph::capture(&model, &batches[0]).unwrap();
    let qconfig = QConfigMap::global(QConfig::preset(Engine::Native));
    assert!(choice.met, "{choice}");
    assert_eq!(choice.int16, vec!["conv1".to_string()], "{choice}");
    assert!(choice.float.is_empty(), "{choice}");
    assert!(choice.score.cosine >= 0.9999, "{choice}");
    // The map is an ordinary one: prepared again, it makes conv1's output 16-bit.
    let prepared = prepare(&graph, &choice.qconfig)
        .unwrap()
        .calibrate(|m| {
            for b in &batches {
                m.forward::<4, 4>(b.clone())?;
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(convert(&prepared).unwrap().report().int16_nodes(), 1);

    // Sensitivity: quantizing conv1 or conv2 alone (conv2 quantizes conv1's output on entry)
    // does the harm; keeping conv1's output at 16 bits recovers it, conv2's (read by the pool,
    // so 8-bit anyway) does not.
    let table = sensitivity::<4, 4>(&prepare(&graph, &qconfig).unwrap(), &batches).unwrap();
    let row = |name: &str| table.rows.iter().find(|r| r.node == name).unwrap();
    let mut harmful: Vec<&str> = table.rows[..2].iter().map(|r| r.node.as_str()).collect();
    harmful.sort();
    assert_eq!(harmful, ["conv1", "conv2"], "{table}");
    assert!(
        table.rows[..2]
            .iter()
            .all(|r| r.only_quantized.sqnr_db < 10.0),
        "{table}"
    );
    assert!(table.rows[2].only_quantized.sqnr_db > 40.0, "{table}");
    assert_eq!(row("conv1").higher, Higher::Int16);
    assert!(
        row("conv1").kept_higher.sqnr_db > table.all_quantized.sqnr_db + 30.0,
        "{table}"
    );
    assert!(
        row("conv2").kept_higher.sqnr_db < table.all_quantized.sqnr_db + 1.0,
        "{table}"
    );
    assert_eq!(table.rows.len(), 3, "{table}");
}

/// conv 3x3 -> conv 1x1 -> add (the first conv's output) -> conv 1x1: a residual block.
#[derive(Module, Debug)]
struct Residual {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
}

impl Forward<4, 4> for Residual {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let a = self.conv1.forward(x);
        let b = self.conv2.forward(a.clone());
        self.conv3.forward(b + a)
    }
}

fn residual(device: &Device) -> Residual {
    let mut model = Residual {
        conv1: Conv2dConfig::new([3, 8], [3, 3])
            .with_padding(PaddingConfig2d::Same)
            .init(device),
        conv2: Conv2dConfig::new([8, 8], [1, 1]).init(device),
        conv3: Conv2dConfig::new([8, 4], [1, 1]).init(device),
    };
    // Seeded weights (Burn's initializers draw from a shared generator).
    for (k, conv) in [&mut model.conv1, &mut model.conv2, &mut model.conv3]
        .into_iter()
        .enumerate()
    {
        let dims = conv.weight.val().dims();
        let n = dims.iter().product::<usize>();
        let v: Vec<f32> = images_hw(1, 50 + k as u64, [1, n], device)
            .into_data()
            .iter::<f32>()
            .take(n)
            .map(|x| x / 3.0)
            .collect();
        conv.weight = Param::from_tensor(Tensor::from_data(TensorData::new(v, dims), device));
    }
    model
}

/// The report's bits of the node named `name`, and of the one add.
fn bits(qmodel: &QuantizedModel, name: &str) -> (Vec<u8>, Vec<u8>) {
    let report = &qmodel.program().report;
    let of = |f: &dyn Fn(&burn_quantize::quantized::NodeReport) -> bool| {
        report
            .iter()
            .find(|r| f(r))
            .map(|r| r.bits.clone())
            .unwrap()
    };
    (of(&|r| r.name == name), of(&|r| r.op == "add"))
}

#[test]
fn residual_adds_read_and_write_16_bit_values() {
    let device = Device::flex();
    let model = residual(&device);
    let x = images_hw(6, 7, [12, 12], &device);
    let calibrated = |qconfig: &QConfigMap| {
        let graph = Graph::capture(&model, &x.clone().narrow(0, 0, 2)).unwrap();
        (prepare(&graph, qconfig).unwrap())
            .calibrate(|m| m.forward::<4, 4>(x.clone()).map(drop))
            .unwrap()
    };
    let dir = std::env::temp_dir().join(format!("burn-quantize-add16-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let native = QConfig::preset(Engine::Native);

    // Only conv2 at 16 bits: the add reads its 16-bit output beside conv1's 8-bit one and
    // writes 8 bits; conv2's output is not narrowed.
    let one =
        QConfigMap::global(native.clone()).module("conv2", native.clone().with_16bit_activations());
    let prepared = calibrated(&one);
    let qmodel = convert(&prepared).unwrap();
    assert_eq!(bits(&qmodel, "conv2"), (vec![16], vec![8]), "{qmodel}");
    assert_eq!(wide_values(qmodel.program()), 1, "{qmodel}");
    common::assert_paths_match_debug_and_reload(&prepared, &qmodel, &x, &dir.join("one.bpk"));

    // Everything at 16 bits, weights too: the add keeps 16 bits in and out, so nothing caps the
    // model at 8-bit accuracy (measured: all 8-bit 34.1 dB, all 16-bit 82.4 dB).
    let wide = native.with_16bit_activations().with_16bit_weights();
    let prepared = calibrated(&QConfigMap::global(wide));
    let qmodel = convert(&prepared).unwrap();
    assert_eq!(bits(&qmodel, "conv1"), (vec![16], vec![16]), "{qmodel}");
    assert!(
        qmodel.program().report.iter().all(|r| r.narrowed.is_none()),
        "{qmodel}"
    );
    common::assert_paths_match_debug_and_reload(&prepared, &qmodel, &x, &dir.join("all.bpk"));
    let all_8 = convert(&calibrated(&QConfigMap::global(QConfig::preset(
        Engine::Native,
    ))))
    .unwrap();
    let (db_8, db_16) = (
        common::output_sqnr(&model, &all_8, &x),
        common::output_sqnr(&model, &qmodel, &x),
    );
    assert!(
        db_8 < 40.0 && db_16 > 75.0,
        "SQNR 8-bit {db_8:.1} dB, 16-bit {db_16:.1} dB"
    );
    std::fs::remove_dir_all(&dir).ok();
}
