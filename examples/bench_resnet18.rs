//! End-to-end ResNet-18 (224x224, seeded random weights) speed: the int8 model against Burn's
//! Flex f32 model, timed in the same process on the same thread pool.
//!
//! ```text
//! cargo run --release --example bench_resnet18 -- --threads 1 --batch 1
//! cargo run --release --example bench_resnet18 -- --threads 2 --batch 32
//! ```
//!
//! Prints medians; the last line is
//! `resnet18 int8 t<t> b<b>: <x> ms/img, flex f32 <y> ms/img, speedup <y/x>`.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use burn_quantize::convert::convert;
use burn_quantize::kernels::active_isa;
use burn_quantize::models::ResNetConfig;
use burn_quantize::prepare::prepare;
use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};
use burn_quantize::{Graph, Result};

fn main() -> Result<()> {
    let (mut threads, mut batch) = (1usize, 1usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|v| v.parse().ok());
        match (arg.as_str(), value) {
            ("--threads", Some(v)) => threads = v,
            ("--batch", Some(v)) => batch = v,
            _ => {
                eprintln!("usage: bench_resnet18 [--threads N] [--batch N]");
                std::process::exit(2);
            }
        }
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool");
    pool.install(|| run(threads, batch))
}

fn run(threads: usize, batch: usize) -> Result<()> {
    let device = Device::flex();
    device.seed(7);
    let model = ResNetConfig::resnet18(1000).init(&device);
    let calibration =
        Tensor::<4>::random([8, 3, 224, 224], Distribution::Normal(0.0, 1.0), &device);
    let graph = Graph::capture(&model, &calibration.clone().narrow(0, 0, 1))?;
    let mut prepared = prepare(&graph, &QConfigMap::global(QConfig::preset(Engine::X86)))?;
    let _: Tensor<2> = prepared.forward(calibration)?;
    let qmodel = convert(&prepared)?;

    let x = Tensor::<4>::random(
        [batch, 3, 224, 224],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let int8 = median_ms(if batch == 1 { 15 } else { 5 }, || {
        qmodel
            .forward::<4, 2>(x.clone())
            .expect("int8 forward")
            .into_data();
    });
    let float = median_ms(if batch == 1 { 5 } else { 3 }, || {
        model.forward(x.clone()).into_data();
    });
    let (int8, float) = (int8 / batch as f64, float / batch as f64);
    println!(
        "kernel path {:?}, {threads} thread(s), batch {batch}, medians",
        active_isa()
    );
    println!("| model     | ms/img |");
    println!("|-----------|--------|");
    println!("| int8      | {int8:>6.2} |");
    println!("| flex f32  | {float:>6.2} |");
    println!(
        "resnet18 int8 t{threads} b{batch}: {int8:.2} ms/img, flex f32 {float:.2} ms/img, speedup {:.2}",
        float / int8
    );
    Ok(())
}

/// Median wall time in ms of `runs` runs after one warm-up run.
fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}
