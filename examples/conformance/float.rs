//! `conformance -- float`: our ResNet loaded from torchvision state dicts, captured, and run by
//! the float interpreter, against PyTorch's logits; and the interpreter against the eager model
//! at batch sizes 1, 2 and 7.

use std::path::Path;

use burn::tensor::{Device, Tensor};
use burn_quantize::Graph;
use burn_quantize::exec::FloatExecutor;

use crate::goldens::read_tensor;
use crate::resnets::{self, GoldenResNet};

/// The bar: max |ours - PyTorch| over the logits.
const MAX_ABS: f32 = 1e-4;

pub fn run(goldens: &Path) -> Result<bool, Box<dyn std::error::Error>> {
    let device = Device::flex();
    let images = read_tensor(&goldens.join("imagenet20.safetensors"), "images")?;
    let mut figures = Vec::new();
    let mut passed = true;
    for (name, config) in resnets::configs() {
        let GoldenResNet { model, dir, n_eval } =
            GoldenResNet::load(goldens, name, config, &device)?;
        let expected = read_tensor(&dir.join("golden.safetensors"), "float_logits")?;

        let graph = Graph::capture(&model, &images.first::<4>(2, &device))?;
        let float = FloatExecutor::new(&graph, &device)?;
        let ours: Tensor<2> = float.forward(images.first::<4>(n_eval, &device))?;
        let pytorch: Tensor<2> = expected.first(n_eval, &device);
        let vs_pytorch = max_abs(ours, pytorch);

        let mut vs_eager = Vec::new();
        for batch in [1, 2, 7] {
            let x: Tensor<4> = images.first(batch, &device);
            let interpreted: Tensor<2> = float.forward(x.clone())?;
            vs_eager.push((batch, max_abs(interpreted, model.forward(x))));
        }
        let eager_ok = vs_eager.iter().all(|&(_, d)| d <= MAX_ABS);
        passed &= vs_pytorch <= MAX_ABS && eager_ok;
        println!(
            "{name:<12} n_eval={n_eval} nodes={} max_abs_vs_pytorch={vs_pytorch:.3e} vs_eager {}",
            graph.nodes.len(),
            vs_eager
                .iter()
                .map(|(b, d)| format!("b{b}={d:.1e}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        figures.push(format!("{name} max_abs={vs_pytorch:.3e}"));
    }
    println!("float conformance: {}", figures.join(" "));
    Ok(passed)
}

fn max_abs(a: Tensor<2>, b: Tensor<2>) -> f32 {
    a.sub(b).abs().max().into_scalar()
}
