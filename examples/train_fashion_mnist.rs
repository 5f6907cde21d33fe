//! Trains the quickstart's embedded default: the small residual CNN
//! ([`FashionNet`](burn_quantize::models::fashion::FashionNet)) on the full Fashion-MNIST training
//! set, in Burn (Flex with autodiff), and writes what the quickstart needs into
//! `data/fashion-mnist/`: the weights, the official 10k test set and a 1,000-image calibration
//! subset drawn (seeded) from the training set.
//!
//! ```text
//! cargo run --release --features train --example train_fashion_mnist -- \
//!     [--source /usr/share/datasets/fashion-mnist] [--out data/fashion-mnist] \
//!     [--epochs 12] [--limit N]
//! ```
//!
//! `--limit N` trains on the first N training images only (a quick try; the calibration subset is
//! still drawn from all of them). The source is the Debian package `dataset-fashion-mnist` (MIT). Recipe: SGD with Nesterov
//! momentum 0.9, weight decay 5e-4, batch 128, one-cycle learning rate (linear warm-up to 0.1
//! over the first epoch, cosine to zero), random shifts of up to 2 pixels and horizontal flips.
//! Test accuracy is printed after every epoch.

use std::path::PathBuf;
use std::time::Instant;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Int, Tensor};
use burn_quantize::data::fashion_mnist::{
    FashionMnist, FashionMnistBatcher, FashionMnistItem, SIDE,
};
use burn_quantize::models::fashion::FashionNet;
use burn_quantize::{Error, Result};

const BATCH: usize = 128;
const PEAK_LR: f64 = 0.1;
const CALIBRATION_IMAGES: usize = 1000;
const SEED: u64 = 2024;

struct Args {
    source: PathBuf,
    out: PathBuf,
    epochs: usize,
    limit: Option<usize>,
}

fn args() -> Result<Args> {
    let mut args = Args {
        source: "/usr/share/datasets/fashion-mnist".into(),
        out: "data/fashion-mnist".into(),
        epochs: 12,
        limit: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| Error::InvalidArgument(format!("{flag} needs a value")))?;
        let number = || {
            value
                .parse::<usize>()
                .map_err(|e| Error::InvalidArgument(format!("{flag} {value}: {e}")))
        };
        match flag.as_str() {
            "--source" => args.source = value.clone().into(),
            "--out" => args.out = value.clone().into(),
            "--epochs" => args.epochs = number()?,
            "--limit" => args.limit = Some(number()?),
            _ => return Err(Error::InvalidArgument(format!("unknown flag {flag}"))),
        }
    }
    Ok(args)
}

/// SplitMix64: a small seeded generator for shuffling, augmentation and the subset.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffle(&mut self, v: &mut [usize]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// A random shift of up to two pixels each way (zero fill) and a horizontal flip half the time.
fn augment(item: &FashionMnistItem, rng: &mut Rng) -> FashionMnistItem {
    let (dy, dx) = (rng.below(5) as isize - 2, rng.below(5) as isize - 2);
    let flip = rng.below(2) == 1;
    let side = SIDE as isize;
    let mut pixels = vec![0u8; SIDE * SIDE];
    for y in 0..side {
        for x in 0..side {
            let (sy, sx) = (y + dy, if flip { side - 1 - x } else { x } + dx);
            if (0..side).contains(&sy) && (0..side).contains(&sx) {
                pixels[(y * side + x) as usize] = item.pixels[(sy * side + sx) as usize];
            }
        }
    }
    FashionMnistItem {
        pixels,
        label: item.label,
    }
}

/// One-cycle schedule: linear warm-up over `warmup` steps, then cosine to zero.
fn learning_rate(step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        PEAK_LR * (step + 1) as f64 / warmup as f64
    } else {
        let t = (step - warmup) as f64 / (total - warmup).max(1) as f64;
        PEAK_LR * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// Top-1 accuracy (percent) of `model` on `set`, in batches of 500 on the plain device.
fn accuracy(model: &FashionNet, set: &FashionMnist, device: &Device) -> f64 {
    let model = model.valid();
    let mut correct = 0usize;
    let items: Vec<FashionMnistItem> = (0..set.len()).filter_map(|i| set.item(i)).collect();
    for chunk in items.chunks(500) {
        let (images, labels): (Tensor<4>, Tensor<1, Int>) =
            FashionMnistBatcher.batch(chunk.to_vec(), device);
        let predicted = model.forward(images).argmax(1).flatten::<1>(0, 1);
        let hits: i64 = predicted.equal(labels).int().sum().into_scalar();
        correct += hits as usize;
    }
    100.0 * correct as f64 / set.len() as f64
}

fn main() -> Result<()> {
    let args = args()?;
    let device = Device::flex();
    let train_device = device.clone().autodiff();
    device.seed(SEED);
    let full = FashionMnist::load_split(&args.source, "train")?;
    let test = FashionMnist::load_split(&args.source, "t10k")?;
    let mut rng = Rng(SEED);
    let mut order: Vec<usize> = (0..full.len()).collect();
    rng.shuffle(&mut order);
    let calibration = full.subset(&order[..CALIBRATION_IMAGES])?;
    let train_items: Vec<FashionMnistItem> = (0..args.limit.unwrap_or(full.len()).min(full.len()))
        .filter_map(|i| full.item(i))
        .collect();

    let mut model = FashionNet::new(&train_device);
    println!(
        "FashionNet: {} parameters; {} training images, {} test images, {} epochs, batch {BATCH}",
        model.num_params(),
        train_items.len(),
        test.len(),
        args.epochs
    );
    let mut optimizer = SgdConfig::new()
        .with_momentum(Some(
            MomentumConfig::new()
                .with_dampening(0.0)
                .with_nesterov(true),
        ))
        .with_weight_decay(Some(WeightDecayConfig::new(5e-4)))
        .init();
    let loss_fn = CrossEntropyLossConfig::new().init(&train_device);
    let steps_per_epoch = train_items.len().div_ceil(BATCH);
    let total = steps_per_epoch * args.epochs;
    let mut step = 0;
    let start = Instant::now();
    let mut indices: Vec<usize> = (0..train_items.len()).collect();
    for epoch in 1..=args.epochs {
        rng.shuffle(&mut indices);
        let mut loss_sum = 0.0;
        for chunk in indices.chunks(BATCH) {
            let batch: Vec<FashionMnistItem> = chunk
                .iter()
                .map(|&i| augment(&train_items[i], &mut rng))
                .collect();
            let (images, labels) = FashionMnistBatcher.batch(batch, &train_device);
            let loss = loss_fn.forward(model.forward(images), labels);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            loss_sum += f64::from(loss.into_scalar::<f32>());
            let lr = learning_rate(step, steps_per_epoch, total);
            model = optimizer.step(lr, model, grads);
            step += 1;
        }
        println!(
            "epoch {epoch:>2}/{}: train loss {:.4}, test top-1 {:.2}%, {:.0} s",
            args.epochs,
            loss_sum / steps_per_epoch as f64,
            accuracy(&model, &test, &device),
            start.elapsed().as_secs_f64()
        );
    }

    let final_accuracy = accuracy(&model, &test, &device);
    std::fs::create_dir_all(&args.out).map_err(|source| Error::Io {
        path: args.out.clone(),
        source,
    })?;
    let weights = args.out.join("model.bpk");
    model.save_weights(&weights)?;
    let reloaded = FashionNet::load_weights(&weights, &device)?;
    let reloaded_accuracy = accuracy(&reloaded, &test, &device);
    if reloaded_accuracy != final_accuracy {
        return Err(Error::Weights {
            path: weights,
            reason: format!(
                "reloaded they give {reloaded_accuracy:.2}%, the trained model {final_accuracy:.2}%"
            ),
        });
    }
    for name in ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        let (from, to) = (args.source.join(name), args.out.join(name));
        std::fs::copy(&from, &to).map_err(|source| Error::Io { path: to, source })?;
    }
    calibration.save_split(&args.out, "calibration")?;
    println!(
        "wrote {}: weights, t10k test set, {CALIBRATION_IMAGES}-image calibration subset",
        args.out.display()
    );
    println!(
        "train_fashion_mnist: test top1={final_accuracy:.2} epochs={} seconds={:.0}",
        args.epochs,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
