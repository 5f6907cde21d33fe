//! Quickstart: PyTorch's static quantization tutorial, in Burn, on data and weights that ship in
//! the repo (`data/fashion-mnist/`: a small residual CNN trained by `train_fashion_mnist`, the
//! official 10k Fashion-MNIST test set, 1,000 calibration images from the training set).
//!
//! ```text
//! cargo run --release --example quickstart
//! ```
//!
//! 1. the float model: top-1/top-5 on the 10k test set, size, latency;
//! 2. capture, prepare with the x86 preset (`get_default_qconfig("x86")`), calibrate on the
//!    1,000 images through a Burn `DataLoader`, convert; print the quantized model and the
//!    conversion report;
//! 3. the int8 model and the debug model (float, fake-quantized): accuracy, size, latency;
//! 4. save, reload, evaluate again (bit-identical logits?);
//! 5. a comparison table, then one `key=value` line.
//!
//! Speed is measured as the tutorial's benchmark does: time per image at a fixed batch (50, the
//! tutorial's evaluation batch size; median of 5 runs); the latency at batch 1 (median over 200
//! test images) is shown too. Every model runs on the same images, in the same process and rayon
//! pool (same thread count), the float model on Burn's Flex device; the speedup in the last line
//! is float over int8 at batch 50.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::tensor::{Device, Int, Tensor};
use burn_quantize::data::fashion_mnist::{FashionMnist, FashionMnistBatcher};
use burn_quantize::models::fashion::FashionNet;
use burn_quantize::prepare::prepare;
use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};
use burn_quantize::quantized::{QuantizedModel, convert, convert_debug};
use burn_quantize::{Error, Graph, Result};

type Batch = (Tensor<4>, Tensor<1, Int>);
type Forward<'a> = Box<dyn Fn(Tensor<4>) -> Result<Tensor<2>> + 'a>;

const LATENCY_IMAGES: usize = 200;
const THROUGHPUT_BATCH: usize = 50;

/// Accuracy and speed of one model.
struct Row {
    name: &'static str,
    top1: f64,
    top5: f64,
    megabytes: Option<f64>,
    batch1_ms: f64,
    batched_ms: f64,
}

/// Top-1 and top-5 accuracy (percent) over the loader, and every logit in order.
fn evaluate(
    forward: &Forward<'_>,
    loader: &Arc<dyn DataLoader<Batch>>,
) -> Result<(f64, f64, Vec<f32>)> {
    let (mut top1, mut top5, mut n) = (0usize, 0usize, 0usize);
    let mut all = Vec::new();
    for batch in loader.iter() {
        let (images, labels) = batch.map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let logits: Vec<f32> = to_vec(forward(images)?)?;
        let labels: Vec<i64> = labels
            .into_data()
            .convert::<i64>()
            .try_to_vec()
            .map_err(|e| Error::InvalidArgument(format!("{e:?}")))?;
        for (row, &label) in logits.chunks(10).zip(&labels) {
            // The label's rank, ties going to the lower class index (as argmax): quantized
            // logits tie often, and a tie is not a hit unless argmax would pick the label.
            let (label, target) = (label as usize, row[label as usize]);
            let rank = (row.iter().enumerate())
                .filter(|&(j, &v)| v > target || (v == target && j < label))
                .count();
            top1 += usize::from(rank == 0);
            top5 += usize::from(rank < 5);
        }
        n += labels.len();
        all.extend(logits);
    }
    let pct = |k: usize| 100.0 * k as f64 / n as f64;
    Ok((pct(top1), pct(top5), all))
}

fn to_vec(t: Tensor<2>) -> Result<Vec<f32>> {
    t.into_data()
        .try_to_vec()
        .map_err(|e| Error::InvalidArgument(format!("{e:?}")))
}

/// Median milliseconds per image: at batch 1 over `singles`, and at a fixed batch.
fn speed(forward: &Forward<'_>, singles: &[Tensor<4>], batch: &Tensor<4>) -> Result<(f64, f64)> {
    let time = |x: &Tensor<4>| -> Result<f64> {
        let start = Instant::now();
        forward(x.clone())?.into_data();
        Ok(start.elapsed().as_secs_f64() * 1e3)
    };
    for x in singles.iter().take(10) {
        time(x)?;
    }
    let single: Vec<f64> = singles.iter().map(time).collect::<Result<_>>()?;
    let batched: Vec<f64> = (0..5).map(|_| time(batch)).collect::<Result<_>>()?;
    Ok((median(single), median(batched) / batch.dims()[0] as f64))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn megabytes(path: &Path) -> Result<f64> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(meta.len() as f64 / 1e6)
}

/// The test data every model is measured on.
struct Bench {
    /// The 10k test set, in batches of 500.
    loader: Arc<dyn DataLoader<Batch>>,
    /// The first test images, one per tensor, for batch-1 latency.
    singles: Vec<Tensor<4>>,
    /// The first test images as one batch, for the per-image time at a fixed batch.
    batch: Tensor<4>,
}

impl Bench {
    /// Evaluates and times one model; `file` is its saved form, whose size is reported.
    fn run(
        &self,
        name: &'static str,
        forward: Forward<'_>,
        file: Option<&Path>,
    ) -> Result<(Row, Vec<f32>)> {
        let start = Instant::now();
        let (top1, top5, logits) = evaluate(&forward, &self.loader)?;
        let (batch1_ms, batched_ms) = speed(&forward, &self.singles, &self.batch)?;
        println!(
            "{name}: top-1 {top1:.2}%, top-5 {top5:.2}%, {batched_ms:.3} ms/img at batch \
             {THROUGHPUT_BATCH}, {batch1_ms:.3} ms/img at batch 1 ({:.1} s)",
            start.elapsed().as_secs_f64()
        );
        let row = Row {
            name,
            top1,
            top5,
            megabytes: file.map(megabytes).transpose()?,
            batch1_ms,
            batched_ms,
        };
        Ok((row, logits))
    }
}

fn print_table(rows: &[Row]) {
    let float = &rows[0];
    println!(
        "| model    | top-1 % | top-5 % |    MB | ms/img, batch {THROUGHPUT_BATCH} | speedup | ms/img, batch 1 | speedup |"
    );
    println!(
        "|----------|--------:|--------:|------:|----------------:|--------:|----------------:|--------:|"
    );
    for r in rows {
        let mb = r.megabytes.map_or("-".to_string(), |m| format!("{m:.3}"));
        println!(
            "| {:<8} | {:>7.2} | {:>7.2} | {mb:>5} | {:>15.3} | {:>6.2}x | {:>15.3} | {:>6.2}x |",
            r.name,
            r.top1,
            r.top5,
            r.batched_ms,
            float.batched_ms / r.batched_ms,
            r.batch1_ms,
            float.batch1_ms / r.batch1_ms,
        );
    }
}

fn main() -> Result<()> {
    let started = Instant::now();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
    let device = Device::flex();
    let work: PathBuf =
        std::env::temp_dir().join(format!("burn-quantize-quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|source| Error::Io {
        path: work.clone(),
        source,
    })?;

    // The embedded default: weights, test set, calibration images.
    let model = FashionNet::load_weights(data.join("model.bpk"), &device)?;
    let test = FashionMnist::load_split(&data, "t10k")?;
    let calibration = FashionMnist::load_split(&data, "calibration")?;
    let bench = Bench {
        singles: (0..LATENCY_IMAGES)
            .filter_map(|i| test.item(i))
            .map(|item| FashionMnistBatcher::images(&[item], &device))
            .collect(),
        batch: {
            let items: Vec<_> = (0..THROUGHPUT_BATCH).filter_map(|i| test.item(i)).collect();
            FashionMnistBatcher::images(&items, &device)
        },
        loader: DataLoaderBuilder::new(FashionMnistBatcher)
            .batch_size(500)
            .build(test),
    };
    let calibration_loader: Arc<dyn DataLoader<Batch>> =
        DataLoaderBuilder::new(FashionMnistBatcher)
            .batch_size(30)
            .build(calibration);
    println!(
        "FashionNet (residual CNN, {} parameters), Fashion-MNIST test set of {} images, \
         {} rayon threads\n",
        burn::module::Module::num_params(&model),
        bench.loader.num_items(),
        rayon::current_num_threads()
    );

    // 1. The float model.
    let float_file = work.join("fashion_float.bpk");
    model.save_weights(&float_file)?;
    let (float_row, _) = bench.run(
        "float",
        Box::new(|x| Ok(model.forward(x))),
        Some(&float_file),
    )?;

    // 2. Capture, prepare (fold BatchNorm, fuse ReLUs, place observers), calibrate, convert.
    let qconfig = QConfigMap::global(QConfig::preset(Engine::X86));
    let start = Instant::now();
    let graph = Graph::capture(&model, &bench.singles[0])?;
    let mut prepared = prepare(&graph, &qconfig)?;
    prepared.calibrate_loader::<Batch, 4, 2>(calibration_loader.as_ref())?;
    let qmodel = convert(&prepared)?;
    let debug = convert_debug(&prepared)?;
    println!(
        "\nquantized with the x86 preset, calibrated on {} images in {} batches, in {:.1} s",
        calibration_loader.num_items(),
        prepared.batches_observed(),
        start.elapsed().as_secs_f64()
    );
    println!(
        "\nthe quantized model (BatchNorm folded, ReLUs fused, u8 values with their scale and zero point):\n{qmodel}"
    );
    println!("{}", qmodel.report());
    println!("{}", burn_quantize::prepare::op_coverage_table());

    // 3. The int8 model and the debug model; 4. save, reload, evaluate again.
    let int8_file = work.join("fashion_int8.bpk");
    qmodel.save(&int8_file)?;
    let (int8_row, int8_logits) = bench.run(
        "int8",
        Box::new(|x| qmodel.try_forward(x)),
        Some(&int8_file),
    )?;
    let (debug_row, _) = bench.run("debug", Box::new(|x| debug.forward(x)), None)?;
    let reloaded = QuantizedModel::load(&int8_file, &device)?;
    let (reloaded_row, reloaded_logits) = bench.run(
        "reloaded",
        Box::new(|x| reloaded.try_forward(x)),
        Some(&int8_file),
    )?;
    let identical = int8_logits == reloaded_logits;

    // 5. The comparison.
    let rows = [float_row, int8_row, debug_row, reloaded_row];
    println!();
    print_table(&rows);
    let (float, int8) = (&rows[0], &rows[1]);
    let size_ratio = int8.megabytes.unwrap_or(f64::NAN) / float.megabytes.unwrap_or(f64::NAN);
    let speedup = float.batched_ms / int8.batched_ms;
    println!(
        "\nspeedup = float / int8 time per image at batch {THROUGHPUT_BATCH} (at batch 1: {:.2}x); \
         sizes are the files written ({}); whole run {:.1} s",
        float.batch1_ms / int8.batch1_ms,
        work.display(),
        started.elapsed().as_secs_f64()
    );
    std::fs::remove_dir_all(&work).map_err(|source| Error::Io { path: work, source })?;
    println!(
        "quickstart: float top1={:.2} int8 top1={:.2} drop={:.2} size_ratio={size_ratio:.3} \
         speedup={speedup:.2} reload_identical={}",
        float.top1,
        int8.top1,
        float.top1 - int8.top1,
        if identical { "yes" } else { "no" }
    );
    Ok(())
}
