//! Dynamic quantization of a BERT-base-shaped transformer encoder (PyTorch's
//! `quantize_dynamic` on BERT): a stack of Burn `TransformerEncoder` layers (768 features, 12
//! heads, a 3072-wide GELU feed-forward block, post-LayerNorm) with seeded weights, on
//! `[batch 8, sequence 128, 768]` inputs.
//!
//! ```text
//! cargo run --release --example dynamic_transformer [-- --layers 12 --batch 8 --seq 128 --threads 1 --rounds 5]
//! ```
//!
//! Captures the forward, makes every Linear layer dynamic int8 (`quantize_dynamic`), and
//! compares with the float model run on Burn's Flex device: the output cosine, and speed as
//! medians of interleaved rounds (float, int8, float, ...) in one rayon pool of `--threads`
//! threads. The last line is
//! `dynamic: layers=<Linear layers> int8_linears=<of them int8> cos_vs_float=<c> speedup=<float/int8>`.

use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use burn_quantize::models::transformer::{Encoder, bert_base};
use burn_quantize::numeric::Comparison;
use burn_quantize::program::{Int8Op, Placement};
use burn_quantize::qconfig::DynamicConfig;
use burn_quantize::{Graph, graph::Op, kernels::active_isa, quantize_dynamic};

const USAGE: &str =
    "usage: dynamic_transformer [--layers N] [--batch N] [--seq N] [--threads N] [--rounds N]";

/// The command line.
struct Args {
    layers: usize,
    batch: usize,
    seq: usize,
    threads: usize,
    rounds: usize,
}

impl Args {
    /// Parses the command line; exits with the usage on anything unknown.
    fn parse() -> Args {
        let mut args = Args {
            layers: 12,
            batch: 8,
            seq: 128,
            threads: 1,
            rounds: 5,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|&v| v > 0);
            let slot = match flag.as_str() {
                "--layers" => &mut args.layers,
                "--batch" => &mut args.batch,
                "--seq" => &mut args.seq,
                "--threads" => &mut args.threads,
                "--rounds" => &mut args.rounds,
                _ => usage(),
            };
            *slot = value.unwrap_or_else(|| usage());
        }
        args
    }
}

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2)
}

/// Deterministic token features `[n, seq, 768]`, roughly unit-variance as embeddings after
/// LayerNorm are.
fn tokens(n: usize, seq: usize, device: &Device) -> Tensor<3> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let values: Vec<f32> = (0..n * seq * 768)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // The sum of two uniforms: a triangular distribution of variance 1.
            let u = |s: u64| (s & 0xFF_FFFF) as f32 / (1u64 << 24) as f32;
            (u(state) + u(state >> 24) - 1.0) * 6f32.sqrt()
        })
        .collect();
    Tensor::from_data(TensorData::new(values, [n, seq, 768]), device)
}

fn time_ms(f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64() * 1e3
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() -> burn_quantize::Result<()> {
    let args = Args::parse();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .expect("rayon pool");
    pool.install(|| run(&args))
}

fn run(args: &Args) -> burn_quantize::Result<()> {
    let device = Device::flex();
    device.seed(7);
    let model = Encoder::new(&bert_base(args.layers), &device);
    let x = tokens(args.batch, args.seq, &device);
    println!(
        "BERT-base-shaped encoder: {} layers, input [{}, {}, 768], {} thread(s), kernel path {}",
        args.layers,
        args.batch,
        args.seq,
        args.threads,
        active_isa()
    );

    let start = Instant::now();
    let qmodel = quantize_dynamic(&model, &x, &DynamicConfig::default())?;
    println!("quantize_dynamic: {:.1} s", start.elapsed().as_secs_f64());
    let graph = Graph::capture(&model, &x)?;
    let linears = (graph.nodes.iter())
        .filter(|n| matches!(n.op, Op::Linear))
        .count();
    let report = &qmodel.program().report;
    let int8 = (report.iter())
        .filter(|r| r.placement == Placement::Int8(Int8Op::DynamicLinear))
        .count();
    let (_, float_nodes) = qmodel.report().counts();
    println!("{linears} Linear layers, {int8} dynamic int8, {float_nodes} other nodes in float");

    let float: Tensor<3> = model.forward(x.clone());
    let quantized: Tensor<3> = qmodel.try_forward(x.clone())?;
    let values = |t: Tensor<3>| t.into_data().try_to_vec::<f32>().expect("f32 output");
    let comparison = Comparison::new(
        "float".into(),
        "dynamic".into(),
        &values(float),
        &values(quantized),
    );
    println!(
        "output: cosine {:.6}, SQNR {:.2} dB",
        comparison.cosine, comparison.sqnr_db
    );

    let (mut float_ms, mut int8_ms) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        float_ms.push(time_ms(|| drop(model.forward(x.clone()).into_data())));
        int8_ms.push(time_ms(|| {
            drop(qmodel.forward::<3, 3>(x.clone()).into_data())
        }));
    }
    let (f, q) = (median(float_ms), median(int8_ms));
    println!("| model          | ms/batch (median of {}) |", args.rounds);
    println!("|----------------|---------:|");
    println!("| float (Flex)   | {f:8.1} |");
    println!("| dynamic int8   | {q:8.1} |");
    println!(
        "dynamic: layers={linears} int8_linears={int8} cos_vs_float={:.6} speedup={:.2}",
        comparison.cosine,
        f / q
    );
    Ok(())
}
