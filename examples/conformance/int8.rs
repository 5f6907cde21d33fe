//! `conformance -- int8`: ResNet-18 and the narrow ResNet quantized with the fbgemm and x86
//! presets, calibrated on all 20 golden images, against PyTorch FX's float and int8 logits; the
//! record's size against the float model's burnpack; and a save/reload round trip. A third row
//! per model quantizes with fbgemm after cross-layer equalization, a fourth with equalization
//! and bias correction; neither may lower the agreement with the float model.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use burn_quantize::Graph;
use burn_quantize::prepare::{PrepareOptions, prepare_with};
use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};
use burn_quantize::quantized::{QuantizedModel, convert};

use crate::cosine;
use crate::goldens::read_tensor;
use crate::resnets::{self, GoldenResNet};

/// Bars from the issue: PyTorch's own int8 reaches 0.9994 against its float on this golden.
const MIN_COS_VS_FLOAT: f64 = 0.999;
const MIN_COS_VS_PYTORCH: f64 = 0.998;
const MAX_SIZE_RATIO: f64 = 0.27;
/// With cross-layer equalization: ResNet-18 fbgemm reaches 0.99945 without it.
const MIN_COS_VS_FLOAT_EQUALIZED: f64 = 0.99944;

pub fn run(goldens: &Path) -> Result<bool, Box<dyn std::error::Error>> {
    let device = Device::flex();
    let images = read_tensor(&goldens.join("imagenet20.safetensors"), "images")?;
    let calibration: Tensor<4> = images.first(20, &device);
    let scratch = std::env::temp_dir().join(format!("burn-quantize-int8-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let mut passed = true;
    let mut last = String::new();
    println!(
        "{:<12} {:<12} {:>13} {:>15} {:>10} {:>10} {:>7}",
        "model", "engine", "cos_vs_float", "cos_vs_pytorch", "top1_agree", "size_ratio", "reload"
    );
    // resnet18 last: its figures make the last line.
    for (name, config) in resnets::configs().into_iter().rev() {
        let GoldenResNet { model, dir, n_eval } =
            GoldenResNet::load(goldens, name, config, &device)?;
        let golden = dir.join("golden.safetensors");
        let float = read_tensor(&golden, "float_logits")?.values;
        let float_path = scratch.join(format!("{name}_f32.bpk"));
        model.clone().save_file(&float_path)?;
        let float_size = std::fs::metadata(&float_path)?.len() as f64;

        let graph = Graph::capture(&model, &images.first::<4>(2, &device))?;
        for (engine, key, equalize, correct) in [
            (Engine::Fbgemm, "int8_fbgemm_logits", false, false),
            (Engine::X86, "int8_x86_logits", false, false),
            (Engine::Fbgemm, "int8_fbgemm_logits", true, false),
            (Engine::Fbgemm, "int8_fbgemm_logits", true, true),
        ] {
            let qconfig = QConfigMap::global(QConfig::preset(engine));
            let options = PrepareOptions::default()
                .equalize(equalize)
                .bias_correction(correct);
            let mut prepared = prepare_with(&graph, &qconfig, &options)?;
            let _: Tensor<2> = prepared.forward(calibration.clone())?;
            let qmodel = convert(&prepared)?;
            let x: Tensor<4> = images.first(n_eval, &device);
            let ours: Vec<f32> = qmodel
                .try_forward::<4, 2>(x.clone())?
                .into_data()
                .try_to_vec()?;
            let pytorch = read_tensor(&golden, key)?.values;
            let classes = ours.len() / n_eval;

            let label = format!(
                "{engine:?}{}{}",
                if equalize { "+eq" } else { "" },
                if correct { "+bc" } else { "" }
            );
            let path = scratch.join(format!("{name}_{label}.bpk"));
            qmodel.save(&path)?;
            let size_ratio = std::fs::metadata(&path)?.len() as f64 / float_size;
            let reloaded: Vec<f32> = QuantizedModel::load(&path, &device)?
                .try_forward::<4, 2>(x)?
                .into_data()
                .try_to_vec()?;
            let reload_identical = reloaded == ours;

            let cos_float = cosine(&ours, &float[..ours.len()]);
            let cos_pytorch = cosine(&ours, &pytorch[..ours.len()]);
            let agree = (0..n_eval)
                .filter(|&i| {
                    argmax(&ours[i * classes..][..classes])
                        == argmax(&float[i * classes..][..classes])
                })
                .count() as f64
                / n_eval as f64;
            let min_cos_float = if equalize && name == "resnet18" {
                MIN_COS_VS_FLOAT_EQUALIZED
            } else {
                MIN_COS_VS_FLOAT
            };
            passed &= cos_float >= min_cos_float
                && cos_pytorch >= MIN_COS_VS_PYTORCH
                && size_ratio <= MAX_SIZE_RATIO
                && reload_identical;
            let yes = if reload_identical { "yes" } else { "no" };
            println!(
                "{name:<12} {label:<12} {cos_float:>13.5} {cos_pytorch:>15.5} {agree:>10.3} {size_ratio:>10.4} {yes:>7}"
            );
            if name == "resnet18" && engine == Engine::Fbgemm && !equalize {
                last = format!(
                    "int8 conformance: resnet18 cos_vs_float={cos_float:.5} cos_vs_pytorch_fbgemm={cos_pytorch:.5} \
                     top1_agree={agree:.3} size_ratio={size_ratio:.4} reload_identical={yes}"
                );
            }
        }
    }
    std::fs::remove_dir_all(&scratch)?;
    println!("{last}");
    Ok(passed)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}
