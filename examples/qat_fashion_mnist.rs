//! Quantization-aware training of the quickstart's FashionNet: fine-tunes the committed float
//! model for one epoch on the Fashion-MNIST training set with fake quantization
//! ([`prepare_qat`]), converts it to int8 and compares it with post-training quantization of the
//! same model on the 10k test set.
//!
//! ```text
//! cargo run --release --features train --example qat_fashion_mnist -- \
//!     [--source /usr/share/datasets/fashion-mnist] [--split train] [--epochs 1] [--limit N] \
//!     [--lr 0.002]
//! ```
//!
//! `--source data/fashion-mnist --split calibration` trains on the 1,000 committed calibration
//! images instead (CI's smoke, which needs no package).
//!
//! The training set is the Debian package `dataset-fashion-mnist`. Recipe: SGD with momentum 0.9,
//! batch 64, the learning rate from `--lr` down to zero along a cosine, BatchNorm statistics
//! frozen after half the steps (PyTorch's `freeze_bn_stats`) and observers after 70% (its
//! `disable_observer`). PTQ uses
//! the x86 preset calibrated on the committed 1,000 calibration images, as the quickstart;
//! QAT starts from the same weights with PyTorch's x86 QAT qconfig. `convert_identical` says
//! whether the int8 model gives the debug model's (the exactly computed fake-quantized
//! forward's) outputs bit for bit on the whole test set. The last line:
//! `qat: float top1=<f> ptq top1=<p> qat top1=<q> convert_identical=yes`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::Dataset;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Int, Tensor};
use burn_quantize::data::fashion_mnist::{FashionMnist, FashionMnistBatcher, FashionMnistItem};
use burn_quantize::models::fashion::FashionNet;
use burn_quantize::prepare::prepare;
use burn_quantize::qat::{QatModel, prepare_qat};
use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};
use burn_quantize::quantized::{QuantizedModel, convert};
use burn_quantize::{Error, Graph, Result};

const BATCH: usize = 64;

type Batch = (Tensor<4>, Tensor<1, Int>);
/// Steps through the training set with this stride (coprime with its size): a fixed shuffle.
const STRIDE: usize = 7919;

struct Args {
    source: PathBuf,
    epochs: usize,
    limit: Option<usize>,
    lr: f64,
    split: String,
}

fn args() -> Result<Args> {
    let mut args = Args {
        source: "/usr/share/datasets/fashion-mnist".into(),
        epochs: 1,
        limit: None,
        lr: 0.002,
        split: "train".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| Error::InvalidArgument(format!("{flag} needs a value")))?;
        let bad = |e: String| Error::InvalidArgument(format!("{flag} {value}: {e}"));
        match flag.as_str() {
            "--source" => args.source = value.clone().into(),
            "--epochs" => args.epochs = value.parse().map_err(|e| bad(format!("{e}")))?,
            "--limit" => args.limit = Some(value.parse().map_err(|e| bad(format!("{e}")))?),
            "--lr" => args.lr = value.parse().map_err(|e| bad(format!("{e}")))?,
            "--split" => args.split = value.clone(),
            _ => return Err(Error::InvalidArgument(format!("unknown flag {flag}"))),
        }
    }
    Ok(args)
}

/// Top-1 accuracy (percent) of `forward` on `set`, and every logit, in batches of 500.
fn evaluate(
    set: &FashionMnist,
    device: &Device,
    mut forward: impl FnMut(Tensor<4>) -> Result<Tensor<2>>,
) -> Result<(f64, Vec<f32>)> {
    let items: Vec<FashionMnistItem> = (0..set.len()).filter_map(|i| set.item(i)).collect();
    let (mut correct, mut logits) = (0usize, Vec::new());
    for chunk in items.chunks(500) {
        let (images, labels) = FashionMnistBatcher.batch(chunk.to_vec(), device);
        let out = forward(images)?;
        let predicted = out.clone().argmax(1).flatten::<1>(0, 1);
        let hits: i64 = predicted.equal(labels).int().sum().into_scalar();
        correct += hits as usize;
        logits.extend(
            out.into_data()
                .try_to_vec::<f32>()
                .map_err(|e| Error::InvalidArgument(format!("logits: {e:?}")))?,
        );
    }
    Ok((100.0 * correct as f64 / set.len() as f64, logits))
}

/// Post-training quantization with the x86 preset, calibrated on the committed images.
fn ptq(graph: &Graph, data: &Path) -> Result<QuantizedModel> {
    let calibration = FashionMnist::load_split(data, "calibration")?;
    let loader: Arc<dyn DataLoader<Batch>> = DataLoaderBuilder::new(FashionMnistBatcher)
        .batch_size(30)
        .build(calibration);
    let mut prepared = prepare(graph, &QConfigMap::global(QConfig::preset(Engine::X86)))?;
    prepared.calibrate_loader::<Batch, 4, 2>(loader.as_ref())?;
    convert(&prepared)
}

/// One or more epochs of QAT over `train`; returns the mean loss of the last epoch.
fn train(
    qat: &mut QatModel,
    train: &[FashionMnistItem],
    args: &Args,
    device: &Device,
) -> Result<f64> {
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut optimizer = SgdConfig::new()
        .with_momentum(Some(MomentumConfig::new().with_dampening(0.0)))
        .init();
    let steps_per_epoch = train.len().div_ceil(BATCH);
    let total = steps_per_epoch * args.epochs;
    let freeze_bn_at = total / 2;
    let freeze_at = (total * 7 / 10).max(1);
    let order: Vec<usize> = (0..train.len())
        .map(|i| (i * STRIDE) % train.len())
        .collect();
    let (mut step, mut loss_sum) = (0, 0.0);
    let start = Instant::now();
    for epoch in 1..=args.epochs {
        loss_sum = 0.0;
        for chunk in order.chunks(BATCH) {
            if step == freeze_bn_at {
                qat.freeze_bn();
            }
            if step == freeze_at {
                qat.freeze_observers();
            }
            let batch: Vec<FashionMnistItem> = chunk.iter().map(|&i| train[i].clone()).collect();
            let (images, labels) = FashionMnistBatcher.batch(batch, device);
            let loss = loss_fn.forward(qat.forward(images)?, labels);
            let grads = GradientsParams::from_grads(loss.backward(), qat.params());
            loss_sum += f64::from(loss.into_scalar::<f32>());
            let t = step as f64 / total as f64;
            let lr = args.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
            qat.update(|params| optimizer.step(lr, params, grads))?;
            step += 1;
            if step % 100 == 0 {
                println!(
                    "epoch {epoch} step {step}/{total}: loss {:.4}, {:.0} s",
                    loss_sum / (step - (epoch - 1) * steps_per_epoch) as f64,
                    start.elapsed().as_secs_f64()
                );
            }
        }
    }
    Ok(loss_sum / steps_per_epoch as f64)
}

fn main() -> Result<()> {
    let args = args()?;
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
    let device = Device::flex();
    let train_device = device.clone().autodiff();
    let model = FashionNet::load_weights(data.join("model.bpk"), &device)?;
    let test = FashionMnist::load_split(&data, "t10k")?;
    let full = FashionMnist::load_split(&args.source, &args.split)?;
    let train_items: Vec<FashionMnistItem> = (0..args.limit.unwrap_or(full.len()).min(full.len()))
        .filter_map(|i| full.item(i))
        .collect();

    let (float_top1, _) = evaluate(&test, &device, |x| Ok(model.forward(x)))?;
    let sample = FashionMnistBatcher::images(&train_items[..1], &device);
    let graph = Graph::capture(&model, &sample)?;
    let ptq_model = ptq(&graph, &data)?;
    let (ptq_top1, _) = evaluate(&test, &device, |x| ptq_model.try_forward(x))?;
    println!("float top-1 {float_top1:.2}%, PTQ (x86 preset) top-1 {ptq_top1:.2}%");

    let qconfig = QConfigMap::global(QConfig::qat_preset(Engine::X86));
    let mut qat = prepare_qat(&graph, &qconfig, &train_device)?;
    println!(
        "QAT: {} images, {} epoch(s), batch {BATCH}, lr {}: {:?}",
        train_items.len(),
        args.epochs,
        args.lr,
        qat
    );
    let loss = train(&mut qat, &train_items, &args, &train_device)?;
    let qmodel = qat.convert()?;
    let debug = qat.convert_debug()?;
    let (qat_top1, int8_logits) = evaluate(&test, &device, |x| qmodel.try_forward(x))?;
    let (_, debug_logits) = evaluate(&test, &device, |x| debug.forward(x))?;
    let identical = int8_logits == debug_logits;
    println!("last epoch's loss {loss:.4}; QAT int8 top-1 {qat_top1:.2}%");
    println!(
        "qat: float top1={float_top1:.2} ptq top1={ptq_top1:.2} qat top1={qat_top1:.2} convert_identical={}",
        if identical { "yes" } else { "no" }
    );
    Ok(())
}
