//! Quickstart: capture a ResNet's forward into burn-quantize's op graph and run it with the
//! float interpreter.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```
//!
//! This is the foundation stage of the tutorial: the int8 pipeline (calibrate, convert, int8
//! kernels) and the embedded Fashion-MNIST model are listed at the end as coming next.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use burn_quantize::exec::FloatExecutor;
use burn_quantize::models::ResNetConfig;
use burn_quantize::{Graph, Result};

fn main() -> Result<()> {
    let device = Device::flex();
    let model = ResNetConfig::resnet18(10).init(&device);
    let images = Tensor::<4>::random([8, 3, 64, 64], Distribution::Default, &device);

    let start = Instant::now();
    let graph = Graph::capture(&model, &images.clone().narrow(0, 0, 2))?;
    let capture_ms = start.elapsed().as_secs_f64() * 1e3;
    let listing = graph.to_string();
    let lines: Vec<&str> = listing.lines().collect();
    println!(
        "captured ResNet-18 in {capture_ms:.0} ms: {} nodes, {} parameters",
        graph.nodes.len(),
        graph.parameter_paths().len()
    );
    for line in lines.iter().take(8) {
        println!("{line}");
    }
    println!("  ... ({} more lines)", lines.len().saturating_sub(8));

    let float = FloatExecutor::new(&graph, &device)?;
    let eager_ms = median_ms(|| {
        model.forward(images.clone()).into_data();
    });
    let graph_ms = median_ms(|| {
        float
            .forward::<4, 2>(images.clone())
            .expect("run")
            .into_data();
    });
    let diff: f32 = (model.forward(images.clone()) - float.forward::<4, 2>(images)?)
        .abs()
        .max()
        .into_scalar();

    println!();
    println!("| stage                        | status       |");
    println!("|------------------------------|--------------|");
    println!("| capture -> graph (batch-free)| done         |");
    println!("| float interpreter            | done         |");
    println!("| int8 kernels                 | coming next  |");
    println!("| calibrate + convert          | coming next  |");
    println!("| Fashion-MNIST model          | coming next  |");
    println!();
    println!(
        "eager {eager_ms:.1} ms / batch of 8, graph interpreter {graph_ms:.1} ms (64x64 images, Flex)"
    );
    println!(
        "quickstart: nodes={} max_abs_vs_eager={diff:.1e} eager_ms={eager_ms:.1} interpreter_ms={graph_ms:.1}",
        graph.nodes.len()
    );
    Ok(())
}

/// Median wall time of five runs, in milliseconds.
fn median_ms(mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[2]
}
