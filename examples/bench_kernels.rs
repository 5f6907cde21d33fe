//! Int8 conv speed on ResNet-18's convolutions, per kernel path, against Burn's Flex f32 conv.
//!
//! ```text
//! cargo run --release --example bench_kernels [-- --batches 1,32] [--paths amx,avx512vnni]
//!     [--no-flex] [--input-bits 7]
//! ```
//!
//! Everything runs on one thread (a 1-thread rayon pool, which both our kernels and Flex use).
//! For each distinct conv shape, batch and available path (all but the emulated ones, or those
//! named by `--paths`) it prints the median time, GMAC/s, the percentage of that path's
//! measured instruction peak and the speedup over Flex on the same shape (`--no-flex` skips
//! Flex: its columns print NaN); the last line sums the 20 convolutions at batch 1 on the best
//! path.
//!
//! The input is random bytes with zero point 128; with `--input-bits 7` it is 7-bit (bytes and
//! zero point ≤ 127, what PyTorch's `x86`/`fbgemm` presets and ours under them produce), on
//! which the AVX2 path runs its `vpmaddubsw` kernel (its "% peak" is still against the
//! `vpmaddwd` peak, so it can pass 100 %).
//!
//! With `--depthwise` it times the depthwise convolutions of MobileNetV2, MobileNetV3-Large
//! and EfficientNet-Lite0 instead (see [`depthwise`]).

use std::time::{Duration, Instant};

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData};
use burn_quantize::kernels::{
    Conv2dGeometry, Isa, PackedConv2d, Requant, active_isa, available_isas, measure_peak_gmacs,
    qconv2d, with_isa,
};

/// One distinct ResNet-18 conv: channels, kernel, stride, padding, input size, occurrences.
struct Shape {
    name: &'static str,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    hw: usize,
    count: usize,
}

const fn shape(
    name: &'static str,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    hw: usize,
    count: usize,
) -> Shape {
    Shape {
        name,
        cin,
        cout,
        k,
        stride,
        pad: k / 2,
        hw,
        count,
    }
}

const RESNET18: [Shape; 11] = [
    shape("conv1 7x7/2 3->64", 3, 64, 7, 2, 224, 1),
    shape("l1 3x3 64", 64, 64, 3, 1, 56, 4),
    shape("l2.0 3x3/2 64->128", 64, 128, 3, 2, 56, 1),
    shape("l2 3x3 128", 128, 128, 3, 1, 28, 3),
    shape("l2.ds 1x1/2 64->128", 64, 128, 1, 2, 56, 1),
    shape("l3.0 3x3/2 128->256", 128, 256, 3, 2, 28, 1),
    shape("l3 3x3 256", 256, 256, 3, 1, 14, 3),
    shape("l3.ds 1x1/2 128->256", 128, 256, 1, 2, 28, 1),
    shape("l4.0 3x3/2 256->512", 256, 512, 3, 2, 14, 1),
    shape("l4 3x3 512", 512, 512, 3, 1, 7, 3),
    shape("l4.ds 1x1/2 256->512", 256, 512, 1, 2, 14, 1),
];

impl Shape {
    fn out_hw(&self) -> usize {
        (self.hw + 2 * self.pad - self.k) / self.stride + 1
    }

    fn gmacs(&self, batch: usize) -> f64 {
        (batch * self.out_hw().pow(2) * self.cout * self.cin * self.k * self.k) as f64 / 1e9
    }
}

/// Median wall time of `f`, after one warm-up run: at least 3 runs and 0.3 s (one run if a
/// single run takes over a second).
fn median(mut f: impl FnMut()) -> Duration {
    let warm = Instant::now();
    f();
    let once = warm.elapsed();
    let (runs, budget) = if once > Duration::from_secs(1) {
        (1, Duration::ZERO)
    } else {
        (3, Duration::from_millis(300))
    };
    let (mut times, start) = (Vec::new(), Instant::now());
    while times.len() < runs || (start.elapsed() < budget && times.len() < 200) {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
}

/// Median time of the int8 conv on the current path.
fn int8_time(s: &Shape, batch: usize, rng: &mut Lcg) -> Duration {
    let geometry = Conv2dGeometry {
        in_channels: s.cin,
        out_channels: s.cout,
        kernel: [s.k, s.k],
        stride: [s.stride, s.stride],
        padding: [s.pad; 4],
        dilation: [1, 1],
        groups: 1,
    };
    let weights: Vec<i8> = (0..s.cout * s.cin * s.k * s.k)
        .map(|_| rng.next() as i8)
        .collect();
    let bias: Vec<i32> = (0..s.cout)
        .map(|_| (rng.next() % 20_000) as i32 - 10_000)
        .collect();
    let seven_bit = list_arg("--input-bits").is_some_and(|bits| bits == ["7"]);
    let (mask, zero_point) = if seven_bit { (0x7F, 64) } else { (0xFF, 128) };
    let packed = PackedConv2d::new(geometry, &weights, &bias, zero_point).expect("valid conv");
    let requant = Requant::new(vec![1e-4; s.cout], 0).with_relu();
    let input: Vec<u8> = (0..batch * s.hw * s.hw * s.cin)
        .map(|_| rng.next() as u8 & mask)
        .collect();
    let mut out = vec![0u8; batch * s.out_hw().pow(2) * s.cout];
    median(|| qconv2d(&input, batch, s.hw, s.hw, &packed, &requant, &mut out).expect("conv"))
}

/// Median time of Burn's Flex f32 conv on the same shape.
fn flex_time(s: &Shape, batch: usize, rng: &mut Lcg) -> Duration {
    let device = Device::flex();
    let mut data = |n: usize| {
        (0..n)
            .map(|_| rng.next() as f32 / u32::MAX as f32 - 0.5)
            .collect::<Vec<f32>>()
    };
    let x = Tensor::<4>::from_data(
        TensorData::new(
            data(batch * s.cin * s.hw * s.hw),
            [batch, s.cin, s.hw, s.hw],
        ),
        &device,
    );
    let w = Tensor::<4>::from_data(
        TensorData::new(data(s.cout * s.cin * s.k * s.k), [s.cout, s.cin, s.k, s.k]),
        &device,
    );
    let b = Tensor::<1>::from_data(TensorData::new(data(s.cout), [s.cout]), &device);
    let options = ConvOptions::new([s.stride; 2], [s.pad; 2], [1, 1], 1);
    median(|| {
        let y = conv2d(x.clone(), w.clone(), Some(b.clone()), options.clone());
        device.sync().expect("flex sync");
        drop(y);
    })
}

/// The comma-separated values after `flag` on the command line, if it is there.
fn list_arg(flag: &str) -> Option<Vec<String>> {
    let list = std::env::args().skip_while(|a| a != flag).nth(1)?;
    Some(list.split(',').map(str::to_string).collect())
}

fn main() {
    let batches: Vec<usize> = list_arg("--batches").map_or_else(
        || vec![1, 32],
        |list| {
            list.iter()
                .map(|b| b.parse().expect("batch size"))
                .collect()
        },
    );
    let wanted = list_arg("--paths").map(|names| {
        let paths = names
            .iter()
            .map(|name| Isa::from_name(name).expect("path name"));
        paths.collect::<Vec<_>>()
    });
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("1-thread pool");
    if std::env::args().any(|a| a == "--depthwise") {
        return pool.install(|| depthwise::run(&batches));
    }
    let paths: Vec<Isa> = available_isas()
        .into_iter()
        .filter(|isa| wanted.as_ref().map_or(!isa.emulated(), |w| w.contains(isa)))
        .collect();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "paths: {paths:?}; best: {}; load average: {}",
        active_isa(),
        load.trim()
    );
    let peaks: Vec<(Isa, Option<f64>)> = paths
        .iter()
        .map(|&isa| (isa, measure_peak_gmacs(isa).expect("available path")))
        .collect();
    for (isa, peak) in &peaks {
        match peak {
            Some(p) => println!("measured peak of {isa}: {p:.1} GMAC/s (1 core)"),
            None => println!("measured peak of {isa}: n/a (no SIMD instruction)"),
        }
    }
    println!(
        "{:<22} {:>5} {:<11} {:>10} {:>8} {:>7} {:>10} {:>8}",
        "conv", "batch", "path", "int8 ms", "GMAC/s", "% peak", "flex ms", "speedup"
    );
    let mut rng = Lcg(7);
    let (mut int8_sum, mut flex_sum) = (0.0, 0.0);
    pool.install(|| {
        for &batch in &batches {
            for s in &RESNET18 {
                let flex = if std::env::args().any(|a| a == "--no-flex") {
                    f64::NAN
                } else {
                    flex_time(s, batch, &mut rng).as_secs_f64()
                };
                for &(isa, peak) in &peaks {
                    let t = with_isa(isa, || int8_time(s, batch, &mut rng))
                        .expect("path")
                        .as_secs_f64();
                    let rate = s.gmacs(batch) / t;
                    let pct = peak.map_or("-".to_string(), |p| format!("{:.0}%", 100.0 * rate / p));
                    println!(
                        "{:<22} {batch:>5} {:<11} {:>10.3} {rate:>8.1} {pct:>7} {:>10.3} {:>7.2}x",
                        s.name,
                        isa.name(),
                        t * 1e3,
                        flex * 1e3,
                        flex / t
                    );
                    if batch == 1 && isa == active_isa() {
                        int8_sum += t * s.count as f64;
                        flex_sum += flex * s.count as f64;
                    }
                }
            }
        }
    });
    if batches.contains(&1) {
        println!(
            "resnet18 convs, 1 thread, batch 1: int8 {:.2} ms, flex f32 {:.2} ms, speedup {:.2}",
            int8_sum * 1e3,
            flex_sum * 1e3,
            flex_sum / int8_sum
        );
    }
}

/// Depthwise layers: GMAC/s per layer, path, batch and arithmetic (exact or fbgemm's).
mod depthwise {
    use burn_quantize::kernels::{
        Conv2dGeometry, PackedConv2d, Requant, available_isas, qconv2d, with_isa,
    };

    use super::{Lcg, median};

    /// `(model, channels, kernel, stride, input size)`: the distinct depthwise shapes.
    const LAYERS: [(&str, usize, usize, usize, usize); 14] = [
        ("v2", 32, 3, 1, 112),
        ("v2", 96, 3, 2, 112),
        ("v2", 144, 3, 1, 56),
        ("v2", 192, 3, 1, 28),
        ("v2", 384, 3, 1, 14),
        ("v2", 576, 3, 2, 14),
        ("v2", 960, 3, 1, 7),
        ("v3", 72, 5, 2, 56),
        ("v3", 120, 5, 1, 28),
        ("v3", 200, 3, 1, 14),
        ("v3", 960, 5, 1, 7),
        ("lite0", 144, 5, 2, 56),
        ("lite0", 480, 5, 1, 14),
        ("lite0", 1152, 3, 1, 7),
    ];

    /// Prints one line per layer, batch, path and arithmetic.
    pub(super) fn run(batches: &[usize]) {
        println!(
            "{:<24} {:>5} {:<11} {:<7} {:>9} {:>7}",
            "depthwise", "batch", "path", "mode", "ms", "GMAC/s"
        );
        let mut rng = Lcg(11);
        for &batch in batches {
            for (model, c, k, stride, hw) in LAYERS {
                let g = Conv2dGeometry {
                    in_channels: c,
                    out_channels: c,
                    kernel: [k, k],
                    stride: [stride; 2],
                    padding: [k / 2; 4],
                    dilation: [1, 1],
                    groups: c,
                };
                let weights: Vec<i8> = (0..c * k * k).map(|_| rng.next() as i8).collect();
                let exact = PackedConv2d::new(g, &weights, &vec![100; c], 128).expect("dw");
                let fbgemm = exact.clone().emulate_fbgemm_depthwise();
                let requant = Requant::new(vec![1e-3; c], 0).with_relu();
                let input: Vec<u8> = (0..batch * hw * hw * c).map(|_| rng.next() as u8).collect();
                let (oh, ow) = exact.output_size(hw, hw).expect("size");
                let mut out = vec![0u8; batch * oh * ow * c];
                let gmacs = (batch * oh * ow * c * k * k) as f64 / 1e9;
                let name = format!("{model} {c}ch {k}x{k}/{stride} {hw}");
                for isa in available_isas().into_iter().filter(|isa| !isa.emulated()) {
                    for (mode, packed) in [("exact", &exact), ("fbgemm", &fbgemm)] {
                        let t = with_isa(isa, || {
                            median(|| {
                                qconv2d(&input, batch, hw, hw, packed, &requant, &mut out)
                                    .expect("conv")
                            })
                        })
                        .expect("path")
                        .as_secs_f64();
                        println!(
                            "{name:<24} {batch:>5} {:<11} {mode:<7} {:>9.3} {:>7.1}",
                            isa.name(),
                            t * 1e3,
                            gmacs / t
                        );
                    }
                }
            }
        }
    }
}
