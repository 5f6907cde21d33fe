//! Bad input through the public API, as a table: every case must give the error kind it names,
//! with a message that names the shape, key, path or tensor involved, and none may panic.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use burn::data::dataloader::DataLoader;
use burn::data::dataset::{Dataset, DatasetError, InMemDataset};
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::{Device, Tensor, TensorData};
use burn_quantize::models::{ResNet, ResNetConfig};
use burn_quantize::prepare::prepare;
use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};
use burn_quantize::quantized::{QuantizedModel, convert};
use burn_quantize::record::RecordParts;
use burn_quantize::{Error, Forward, Graph, quantize};
use serde_json::{Value, json};

fn images(n: usize, seed: u64, device: &Device) -> Tensor<4> {
    common::images_hw(n, seed, [32, 32], device)
}

/// `images` with `value` at one position.
fn images_with(value: f32, device: &Device) -> Tensor<4> {
    let mut x: Vec<f32> = images(2, 1, device)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    x[100] = value;
    Tensor::from_data(TensorData::new(x, [2, 3, 32, 32]), device)
}

/// The error kind, as a word.
fn kind(e: &Error) -> &'static str {
    match e {
        Error::Shape { .. } => "Shape",
        Error::InvalidArgument(_) => "InvalidArgument",
        Error::QConfigKey { .. } => "QConfigKey",
        Error::Calibration(_) => "Calibration",
        Error::NonFinite { .. } => "NonFinite",
        Error::IsaUnavailable(_) => "IsaUnavailable",
        Error::Capture(_) => "Capture",
        Error::Unsupported(_) => "Unsupported",
        Error::InvalidGraph(_) => "InvalidGraph",
        Error::Io { .. } => "Io",
        Error::BadFile { .. } => "BadFile",
        Error::Weights { .. } => "Weights",
    }
}

/// Images of which the third cannot be read.
struct FailingImages;

impl Dataset<Vec<f32>> for FailingImages {
    fn get(&self, index: usize) -> Result<Vec<f32>, DatasetError> {
        match index {
            2 => Err(DatasetError::new(std::io::Error::other(
                "disk gone at image 2",
            ))),
            _ => Ok(vec![0.5; 3 * 32 * 32]),
        }
    }

    fn len(&self) -> usize {
        4
    }
}

fn loader<D: Dataset<Vec<f32>> + 'static>(dataset: D) -> std::sync::Arc<dyn DataLoader<Tensor<4>>> {
    common::image_loader(dataset, 2)
}

/// A 3x3 convolution without padding: a 1x1 image is too small for it.
#[derive(Module, Debug)]
struct Unpadded {
    conv: Conv2d,
}

impl Forward<4, 4> for Unpadded {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv.forward(x)
    }
}

/// A forward that panics on inputs with other than 3 channels.
#[derive(Module, Debug)]
struct Picky {
    conv: Conv2d,
}

impl Forward<4, 4> for Picky {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        assert_eq!(x.dims()[1], 3, "three channels please");
        self.conv.forward(x)
    }
}

/// What the cases share: a quantized narrow ResNet-18, its calibrated model and its record.
struct Fixture {
    device: Device,
    model: ResNet,
    graph: Graph,
    qmodel: QuantizedModel,
    record: Vec<u8>,
    dir: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let device = Device::flex();
        let model = ResNetConfig::resnet18(10).narrowed(8).init(&device);
        let graph = Graph::capture(&model, &images(2, 0, &device)).unwrap();
        let qconfig = QConfigMap::global(QConfig::preset(Engine::X86));
        let calibrated = prepare(&graph, &qconfig)
            .unwrap()
            .calibrate(|m| m.forward::<4, 2>(images(8, 1, &device)).map(drop))
            .unwrap();
        let qmodel = convert(&calibrated).unwrap();
        let record = qmodel.to_bytes().unwrap();
        let dir = std::env::temp_dir().join(format!("burn-quantize-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Fixture {
            device,
            model,
            graph,
            qmodel,
            record,
            dir,
        }
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn load(&self, path: &Path) -> Result<(), Error> {
        QuantizedModel::load(path, &self.device).map(drop)
    }

    /// Loads the record with its program edited by `edit` and the checksums written again.
    fn crafted(&self, edit: impl FnOnce(&mut Value)) -> Result<(), Error> {
        let mut parts = RecordParts::from_bytes(&self.record).unwrap();
        let mut program: Value = serde_json::from_str(&parts.program).unwrap();
        edit(&mut program);
        parts.program = program.to_string();
        QuantizedModel::from_bytes(&parts.to_bytes().unwrap(), &self.device).map(drop)
    }

    /// Loads the record with its tensors edited by `edit` and the checksums written again.
    fn retensored(&self, edit: impl FnOnce(&mut Vec<(String, TensorData)>)) -> Result<(), Error> {
        let mut parts = RecordParts::from_bytes(&self.record).unwrap();
        edit(&mut parts.tensors);
        QuantizedModel::from_bytes(&parts.to_bytes().unwrap(), &self.device).map(drop)
    }

    fn run<const D: usize, const O: usize>(&self, x: Tensor<D>) -> Result<(), Error> {
        self.qmodel.try_forward::<D, O>(x).map(drop)
    }
}

type Case<'a> = (
    &'static str,
    &'static str,
    &'static str,
    Box<dyn FnOnce() -> Result<(), Error> + 'a>,
);

fn tensor_named<'t>(tensors: &'t mut [(String, TensorData)], name: &str) -> &'t mut TensorData {
    &mut tensors.iter_mut().find(|(n, _)| n == name).unwrap().1
}

fn cases(f: &Fixture) -> Vec<Case<'_>> {
    let d = &f.device;
    let x86 = || QConfigMap::global(QConfig::preset(Engine::X86));
    let v1 = {
        let mut b = f.record.clone();
        let key = b"burn_quantize.record_version";
        let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len();
        let two = at + b[at..].iter().position(|&c| c == b'2').unwrap();
        b[two] = b'1';
        b
    };
    let mut flipped = f.record.clone();
    flipped[8..40].iter_mut().for_each(|b| *b ^= 0x5a);
    let mut shifted = f.record.clone();
    let tail = shifted.len() - 3072;
    shifted[tail..].rotate_left(1);
    let mut program_byte = f.record.clone();
    let at = program_byte
        .windows(9)
        .position(|w| w == b"\"version\"")
        .unwrap();
    program_byte[at + 10] = b'4';
    vec![
        // Inference input.
        (
            "wrong rank",
            "Shape",
            "[3, 32, 32]",
            Box::new(move || f.run::<3, 2>(Tensor::zeros([3, 32, 32], d))),
        ),
        (
            "wrong channels",
            "Shape",
            "conv1",
            Box::new(move || f.run::<4, 2>(Tensor::zeros([1, 4, 32, 32], d))),
        ),
        (
            "wrong output rank",
            "Shape",
            "rank",
            Box::new(move || f.run::<4, 3>(images(1, 2, d))),
        ),
        (
            "batch 0",
            "Shape",
            "[0, 3, 32, 32]",
            Box::new(move || f.run::<4, 2>(Tensor::zeros([0, 3, 32, 32], d))),
        ),
        (
            "1x1 image into an unpadded 3x3 conv",
            "Shape",
            "1x1",
            Box::new(move || {
                let net = Unpadded {
                    conv: Conv2dConfig::new([3, 4], [3, 3]).init(d),
                };
                let graph = Graph::capture(&net, &images(1, 0, d))?;
                let q = convert(
                    &prepare(&graph, &x86())?
                        .calibrate(|m| m.forward::<4, 4>(images(2, 1, d)).map(drop))?,
                )?;
                q.try_forward::<4, 4>(Tensor::zeros([1, 3, 1, 1], d))
                    .map(drop)
            }),
        ),
        (
            "NaN input",
            "NonFinite",
            "model input 0",
            Box::new(move || f.run::<4, 2>(images_with(f32::NAN, d))),
        ),
        (
            "infinite input",
            "NonFinite",
            "shape [2, 3, 32, 32]",
            Box::new(move || f.run::<4, 2>(images_with(f32::INFINITY, d))),
        ),
        // Calibration.
        (
            "NaN calibration",
            "NonFinite",
            "input",
            Box::new(move || {
                prepare(&f.graph, &x86())?
                    .calibrate(|m| m.forward::<4, 2>(images_with(f32::NAN, d)).map(drop))
                    .map(drop)
            }),
        ),
        (
            "infinite calibration",
            "NonFinite",
            "input",
            Box::new(move || {
                prepare(&f.graph, &x86())?
                    .calibrate(|m| {
                        m.forward::<4, 2>(images_with(f32::NEG_INFINITY, d))
                            .map(drop)
                    })
                    .map(drop)
            }),
        ),
        (
            "calibration of wrong shape",
            "Shape",
            "[2, 4, 32, 32]",
            Box::new(move || {
                prepare(&f.graph, &x86())?
                    .calibrate(|m| {
                        m.forward::<4, 2>(Tensor::zeros([2, 4, 32, 32], d))
                            .map(drop)
                    })
                    .map(drop)
            }),
        ),
        (
            "no calibration",
            "Calibration",
            "calibrat",
            Box::new(move || convert(&prepare(&f.graph, &x86())?).map(drop)),
        ),
        (
            "empty loader",
            "Calibration",
            "no batch",
            Box::new(move || {
                quantize(
                    &f.model,
                    &x86(),
                    loader(InMemDataset::new(Vec::new())).as_ref(),
                )
                .map(drop)
            }),
        ),
        (
            "failing loader",
            "Calibration",
            "disk gone at image 2",
            Box::new(move || quantize(&f.model, &x86(), loader(FailingImages).as_ref()).map(drop)),
        ),
        // QConfig keys.
        (
            "unknown module path",
            "QConfigKey",
            "encoder",
            Box::new(move || prepare(&f.graph, &x86().module("encoder", None)).map(drop)),
        ),
        (
            "regex matching nothing",
            "QConfigKey",
            "^head",
            Box::new(move || prepare(&f.graph, &x86().module_regex("^head", None)).map(drop)),
        ),
        (
            "invalid regex",
            "QConfigKey",
            "layer[",
            Box::new(move || prepare(&f.graph, &x86().module_regex("layer[", None)).map(drop)),
        ),
        (
            "unknown layer type",
            "QConfigKey",
            "Conv3d",
            Box::new(move || prepare(&f.graph, &x86().layer_type("Conv3d", None)).map(drop)),
        ),
        // Capture and weights.
        (
            "forward that panics in capture",
            "Capture",
            "three channels please",
            Box::new(move || {
                let net = Picky {
                    conv: Conv2dConfig::new([3, 4], [3, 3]).init(d),
                };
                Graph::capture(&net, &Tensor::zeros([1, 2, 8, 8], d)).map(drop)
            }),
        ),
        (
            "wrong .pth for the model",
            "Weights",
            "conv1.weight",
            Box::new(move || {
                let path =
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/small_sequential.pth");
                ResNetConfig::resnet18(10)
                    .init(d)
                    .load_pytorch(path)
                    .map(drop)
            }),
        ),
        (
            "text as .pth",
            "Weights",
            "not_a.pth",
            Box::new(move || {
                ResNetConfig::resnet18(10)
                    .init(d)
                    .load_pytorch(f.file("not_a.pth", b"hello"))
                    .map(drop)
            }),
        ),
        // Record files.
        (
            "missing record",
            "Io",
            "missing.bpk",
            Box::new(move || f.load(&f.dir.join("missing.bpk"))),
        ),
        (
            "directory as record",
            "BadFile",
            "not a file",
            Box::new(move || f.load(&f.dir)),
        ),
        (
            "empty record",
            "BadFile",
            "empty.bpk",
            Box::new(move || f.load(&f.file("empty.bpk", b""))),
        ),
        (
            "truncated record",
            "BadFile",
            "truncated.bpk",
            Box::new(move || f.load(&f.file("truncated.bpk", &f.record[..f.record.len() / 2]))),
        ),
        (
            "corrupt header",
            "BadFile",
            "corrupt.bpk",
            Box::new(move || f.load(&f.file("corrupt.bpk", &flipped))),
        ),
        (
            "text as record",
            "BadFile",
            "burnpack",
            Box::new(move || f.load(&f.file("text.bpk", b"not a model at all"))),
        ),
        (
            "record format version 1",
            "BadFile",
            "version 1 has no checksums",
            Box::new(move || f.load(&f.file("v1.bpk", &v1))),
        ),
        (
            "altered tensor bytes",
            "BadFile",
            "does not match its checksum",
            Box::new(move || f.load(&f.file("shifted.bpk", &shifted))),
        ),
        (
            "altered program byte",
            "BadFile",
            "the program does not match its checksum",
            Box::new(move || f.load(&f.file("program.bpk", &program_byte))),
        ),
        // Crafted records: edited and sealed with valid checksums.
        (
            "stride 0",
            "BadFile",
            "stride",
            Box::new(move || f.crafted(|p| p["convs"][0]["geometry"]["stride"] = json!([0, 0]))),
        ),
        (
            "dilation 0",
            "BadFile",
            "dilation",
            Box::new(move || f.crafted(|p| p["convs"][1]["geometry"]["dilation"] = json!([1, 0]))),
        ),
        (
            "groups not dividing",
            "BadFile",
            "groups",
            Box::new(move || f.crafted(|p| p["convs"][0]["geometry"]["groups"] = json!(5))),
        ),
        (
            "huge channel count",
            "BadFile",
            "convolution 0",
            Box::new(move || {
                f.crafted(|p| p["convs"][0]["geometry"]["out_channels"] = json!(1u64 << 40))
            }),
        ),
        (
            "kernel unlike its tensor",
            "BadFile",
            "convs.0.weight",
            Box::new(move || f.crafted(|p| p["convs"][0]["geometry"]["kernel"] = json!([5, 5]))),
        ),
        (
            "9-bit weights",
            "BadFile",
            "9-bit",
            Box::new(move || f.crafted(|p| p["convs"][2]["spec"]["weight_bits"] = json!(9))),
        ),
        (
            "zero activation scale",
            "BadFile",
            "scale 0",
            Box::new(move || {
                f.crafted(|p| {
                    let domains = p["domains"].as_array_mut().unwrap();
                    let int8 = domains
                        .iter_mut()
                        .find(|d| d.get("Int8").is_some())
                        .unwrap();
                    int8["Int8"]["scale"] = json!(0.0);
                })
            }),
        ),
        (
            "step reading an unknown value",
            "BadFile",
            "unknown value %999999",
            Box::new(move || {
                f.crafted(|p| {
                    p["steps"][1]["Conv2d"]["input"] = json!(999999);
                })
            }),
        ),
        (
            "16-bit values through an 8-bit-only step",
            "BadFile",
            "not 8-bit",
            Box::new(move || {
                // The float output quantized to 16 bits, clamped, dequantized: consistent
                // domains and shapes, but the executor clamps only `u8` values.
                f.crafted(|p| {
                    let output = p["outputs"][0].as_u64().unwrap();
                    let info = p["values"][output as usize].clone();
                    let n = p["values"].as_array().unwrap().len() as u64;
                    for _ in 0..3 {
                        p["values"].as_array_mut().unwrap().push(info.clone());
                    }
                    let wide = json!({"Int16": {"scale": 0.01, "zero_point": 100}});
                    let domains = p["domains"].as_array_mut().unwrap();
                    domains.extend([wide.clone(), wide, json!("Float")]);
                    p["steps"].as_array_mut().unwrap().extend([
                        json!({"Quantize": {"input": output, "output": n}}),
                        json!({"Clamp": {"input": n, "output": n + 1, "min": 0, "max": 255}}),
                        json!({"Dequantize": {"input": n + 1, "output": n + 2}}),
                    ]);
                    p["outputs"] = json!([n + 2]);
                })
            }),
        ),
        (
            "step using a missing layer",
            "BadFile",
            "layer 4000",
            Box::new(move || f.crafted(|p| p["steps"][1]["Conv2d"]["layer"] = json!(4000))),
        ),
        (
            "value read before it is made",
            "BadFile",
            "before it is made",
            Box::new(move || {
                f.crafted(|p| {
                    let steps = p["steps"].as_array_mut().unwrap();
                    steps.swap(1, 2);
                })
            }),
        ),
        (
            "recorded shape unlike the steps",
            "BadFile",
            "as recorded",
            Box::new(move || {
                f.crafted(|p| {
                    let out = p["steps"][1]["Conv2d"]["output"].as_u64().unwrap() as usize;
                    p["values"][out]["shape"][1]["fixed"] = json!(7);
                })
            }),
        ),
        (
            "extra tensor",
            "BadFile",
            "`floats.9` is not read",
            Box::new(move || {
                f.retensored(|t| {
                    t.push(("floats.9".into(), TensorData::new(vec![1f32], [1])));
                })
            }),
        ),
        (
            "missing tensor",
            "BadFile",
            "`convs.3.bias` is missing",
            Box::new(move || f.retensored(|t| t.retain(|(n, _)| n != "convs.3.bias"))),
        ),
        (
            "tensor of another type",
            "BadFile",
            "`convs.2.bias` is F32",
            Box::new(move || {
                f.retensored(|t| {
                    let bias = tensor_named(t, "convs.2.bias");
                    *bias = TensorData::from_bytes_vec(
                        bias.as_bytes().to_vec(),
                        bias.shape().to_vec(),
                        burn::tensor::DType::F32,
                    );
                })
            }),
        ),
        (
            "NaN weight scale",
            "BadFile",
            "`convs.1.weight_scale` holds the weight scale NaN",
            Box::new(move || {
                f.retensored(|t| {
                    let scale = tensor_named(t, "convs.1.weight_scale");
                    let mut s: Vec<f32> = scale.try_to_vec::<f32>().unwrap();
                    s[0] = f32::NAN;
                    *scale = TensorData::new(s, [scale.shape()[0]]);
                })
            }),
        ),
    ]
}

#[test]
fn bad_input_gives_a_clear_error_of_the_right_kind_and_never_panics() {
    let f = Fixture::new();
    let cases = cases(&f);
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    let total = cases.len();
    for (name, expected, needle, case) in cases {
        match catch_unwind(AssertUnwindSafe(case)) {
            Err(_) => failures.push(format!("{name}: panicked")),
            Ok(Ok(())) => failures.push(format!("{name}: no error")),
            Ok(Err(e)) if kind(&e) != expected || !e.to_string().contains(needle) => {
                failures.push(format!(
                    "{name}: expected {expected} naming `{needle}`, got {}: {e}",
                    kind(&e)
                ))
            }
            Ok(Err(e)) => println!("{name:<36} {e}"),
        }
    }
    std::fs::remove_dir_all(&f.dir).ok();
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
