//! Criterion benchmarks of the int8 kernels, one thread, every available path.
//!
//! ```text
//! cargo bench --bench kernels
//! ```
//!
//! Throughput is reported in multiply-accumulates (convs) or elements (other ops). For the
//! full ResNet-18 table with peaks and the Flex f32 baseline, run the `bench_kernels` example.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

use burn_quantize::kernels::{
    Conv2dGeometry, MaxPool2d, PackedConv2d, QParams, Requant, available_isas, qadd, qconv2d,
    qmax_pool2d, quantize, with_isa,
};
use rayon::ThreadPool;

/// Conv shapes from ResNet-18: name, in, out, kernel, stride, input size.
const CONVS: [(&str, usize, usize, usize, usize, usize); 4] = [
    ("conv1_7x7s2", 3, 64, 7, 2, 224),
    ("l1_3x3_64", 64, 64, 3, 1, 56),
    ("l2ds_1x1s2", 64, 128, 1, 2, 56),
    ("l4_3x3_512", 512, 512, 3, 1, 7),
];

fn one_thread() -> ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("1-thread pool")
}

fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn convs(c: &mut Criterion) {
    let pool = one_thread();
    let mut group = c.benchmark_group("qconv2d");
    for (name, cin, cout, k, stride, hw) in CONVS {
        let geometry = Conv2dGeometry {
            in_channels: cin,
            out_channels: cout,
            kernel: [k, k],
            stride: [stride, stride],
            padding: [k / 2; 4],
            dilation: [1, 1],
            groups: 1,
        };
        let weights: Vec<i8> = data(cout * cin * k * k, 1)
            .into_iter()
            .map(|v| v as i8)
            .collect();
        let packed = PackedConv2d::new(geometry, &weights, &vec![0; cout], 128).expect("conv");
        let requant = Requant::new(vec![1e-4], 0).with_relu();
        let (oh, ow) = packed.output_size(hw, hw).expect("output size");
        let input = data(hw * hw * cin, 2);
        let mut out = vec![0; oh * ow * cout];
        group.throughput(Throughput::Elements((oh * ow * cout * cin * k * k) as u64));
        for isa in available_isas() {
            group.bench_function(BenchmarkId::new(isa.name(), name), |b| {
                pool.install(|| {
                    with_isa(isa, || {
                        b.iter(|| qconv2d(&input, 1, hw, hw, &packed, &requant, &mut out))
                    })
                })
                .expect("available path")
            });
        }
    }
    group.finish();
}

fn elementwise(c: &mut Criterion) {
    let pool = one_thread();
    let qp = QParams::new(0.05, 100);
    let mut group = c.benchmark_group("elementwise");
    let x: Vec<f32> = data(224 * 224 * 3, 3)
        .into_iter()
        .map(|v| f32::from(v) / 50.0 - 2.0)
        .collect();
    let (a, b) = (data(56 * 56 * 64, 4), data(56 * 56 * 64, 5));
    let pool_in = data(112 * 112 * 64, 6);
    let max_pool = MaxPool2d {
        kernel: [3, 3],
        stride: [2, 2],
        padding: [1, 1],
        dilation: [1, 1],
        ceil_mode: false,
    };
    for isa in available_isas() {
        let run = |f: &mut (dyn FnMut() + Send)| pool.install(|| with_isa(isa, f)).expect("path");
        group.throughput(Throughput::Elements(x.len() as u64));
        group.bench_function(
            BenchmarkId::new("quantize_224x224x3", isa.name()),
            |bench| {
                let mut q = vec![0; x.len()];
                run(&mut || bench.iter(|| quantize(black_box(&x), qp, &mut q)))
            },
        );
        group.throughput(Throughput::Elements(a.len() as u64));
        group.bench_function(BenchmarkId::new("add_relu_56x56x64", isa.name()), |bench| {
            let mut out = vec![0; a.len()];
            run(&mut || bench.iter(|| qadd(black_box(&a), qp, &b, qp, qp, true, &mut out)))
        });
        group.throughput(Throughput::Elements(pool_in.len() as u64));
        group.bench_function(
            BenchmarkId::new("maxpool_3x3s2_112x112x64", isa.name()),
            |bench| {
                let mut out = vec![0; 56 * 56 * 64];
                run(&mut || {
                    bench.iter(|| {
                        qmax_pool2d(black_box(&pool_in), 1, 112, 112, 64, &max_pool, &mut out)
                    })
                })
            },
        );
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = convs, elementwise
}
criterion_main!(benches);
