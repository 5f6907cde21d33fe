//! `conformance kernels --cases N`: N random cases (shapes, strides, dilations, groups,
//! paddings, parameters and data drawn from a seeded generator) over every int8 and wide
//! kernel, each run on every available path and compared byte for byte with the scalar path.
//! The scalar path itself is tested against naive references in `cargo test`; this is the
//! same property at scale, on the paths this CPU runs.

use std::collections::BTreeMap;

use burn_quantize::kernels::{
    self, AvgPool2d, CatInput, Conv2dGeometry, Isa, MaxPool2d, PackedConv2d, PackedLinear,
    PackedWide, PackedWideConv2d, QBinaryOp, QParams, QTensorRef, Requant, RequantWide, Table,
    available_isas, with_isa,
};
use rayon::ThreadPoolBuilder;

#[path = "../../tests/fuzzing/rng.rs"]
mod rng;
use rng::Rng;

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// An op of the sweep: its name and a generator of one random case.
type Op = (&'static str, fn(&mut Rng) -> Case);

/// The ops of the sweep, each a generator of one random case that runs on the current path.
const OPS: &[Op] = &[
    ("linear", linear),
    ("conv2d", conv),
    ("conv2d_grouped", grouped),
    ("conv2d_depthwise", depthwise),
    ("conv2d_wide", conv_wide),
    ("linear_wide", linear_wide),
    ("linear_dynamic", linear_dynamic),
    ("max_pool2d", max_pool),
    ("avg_pool2d", avg_pool),
    ("global_avg_pool", global_pool),
    ("binary", binary),
    ("cat", cat),
    ("table", table),
    ("pad", pad),
    ("quantize", quantize),
    ("dequantize", dequantize),
    ("requantize", requantize),
];

/// One case: runs on the current path and returns its output bytes.
type Case = Box<dyn Fn() -> burn_quantize::Result<Vec<u8>> + Sync>;

/// Runs `cases` random cases on every path; prints a line per op and, last,
/// `cases=<n> paths=<list> mismatches=<m>`. `Ok(true)` when every path matched scalar.
pub fn run(cases: u64, seed: u64) -> BoxResult<bool> {
    let paths = available_isas();
    let single = ThreadPoolBuilder::new().num_threads(1).build()?;
    let mut per_op: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut mismatches = 0u64;
    for case in 0..cases {
        let (name, make) = OPS[(case % OPS.len() as u64) as usize];
        let mut rng = Rng::new(seed, case);
        let run = make(&mut rng);
        let on = |isa: Isa| -> BoxResult<Vec<u8>> {
            let go = || with_isa(isa, &run);
            Ok(if case % 2 == 0 {
                single.install(go)
            } else {
                go()
            }??)
        };
        let expected = on(Isa::Scalar).map_err(|e| format!("{name} case {case}: {e}"))?;
        let entry = per_op.entry(name).or_default();
        entry.0 += 1;
        for &isa in paths.iter().filter(|&&isa| isa != Isa::Scalar) {
            if on(isa)? != expected {
                eprintln!("MISMATCH: {name} case {case} (seed {seed}) on {isa}");
                entry.1 += 1;
                mismatches += 1;
            }
        }
    }
    for (name, (n, bad)) in &per_op {
        println!("{name:<18} cases={n:<8} mismatches={bad}");
    }
    let names: Vec<_> = paths.iter().map(|isa| isa.name()).collect();
    println!(
        "cases={cases} paths={} mismatches={mismatches}",
        names.join(",")
    );
    Ok(mismatches == 0)
}

/// `n` random `i8`s.
fn i8s(rng: &mut Rng, n: usize) -> Vec<i8> {
    (0..n).map(|_| rng.next() as i8).collect()
}

/// `n` random `i32`s in `-max..=max`.
fn i32s(rng: &mut Rng, n: usize, max: i32) -> Vec<i32> {
    (0..n)
        .map(|_| (rng.next() % (2 * max as u64 + 1)) as i32 - max)
        .collect()
}

fn qparams(rng: &mut Rng) -> QParams {
    QParams::new(rng.f32(0.002, 0.2), rng.next() as u8)
}

/// Per-channel multipliers for sums of `k` products of bytes, and a random epilogue: a ReLU,
/// a table or neither.
fn requant(rng: &mut Rng, channels: usize, k: usize) -> Requant {
    let n = if rng.coin() { 1 } else { channels };
    let multipliers = (0..n)
        .map(|_| rng.f32(0.1, 3.0) / (k as f32 * 60.0))
        .collect();
    let requant = Requant::new(multipliers, rng.next() as u8);
    match rng.int(0, 2) {
        0 => requant.with_relu(),
        1 => requant.with_table(random_table(rng)),
        _ => requant,
    }
}

fn random_table(rng: &mut Rng) -> Table {
    Table::new(&rng.bytes(256)).expect("256 entries")
}

/// A geometry of `groups` groups with `per_in`/`per_out` channels each, a kernel of up to 5x5,
/// strides and dilations up to 3, and asymmetric padding up to 2.
fn geometry(rng: &mut Rng, groups: usize, per_in: usize, per_out: usize) -> Conv2dGeometry {
    Conv2dGeometry {
        in_channels: groups * per_in,
        out_channels: groups * per_out,
        kernel: [rng.int(1, 5), rng.int(1, 5)],
        stride: [rng.int(1, 3), rng.int(1, 3)],
        padding: [rng.int(0, 2), rng.int(0, 2), rng.int(0, 2), rng.int(0, 2)],
        dilation: [rng.int(1, 3), rng.int(1, 3)],
        groups,
    }
}

/// An image size at which `g` has at least one output, batch 1 to 3.
fn image(rng: &mut Rng, g: &Conv2dGeometry) -> [usize; 3] {
    let span = |a: usize| g.dilation[a] * (g.kernel[a] - 1) + 1;
    let h = span(0).max(1) + rng.int(0, 12);
    let w = span(1).max(1) + rng.int(0, 12);
    [rng.int(1, 3), h, w]
}

fn conv_case(rng: &mut Rng, g: Conv2dGeometry) -> Case {
    let [n, h, w] = image(rng, &g);
    let per_in = g.in_channels / g.groups;
    let weights = i8s(rng, g.out_channels * per_in * g.kernel[0] * g.kernel[1]);
    let bias = i32s(rng, g.out_channels, 5000);
    let zx = rng.next() as u8;
    let requant = requant(rng, g.out_channels, per_in * g.kernel[0] * g.kernel[1]);
    let x = rng.bytes(n * h * w * g.in_channels);
    Box::new(move || {
        let packed = PackedConv2d::new(g, &weights, &bias, zx)?;
        let (oh, ow) = packed.output_size(h, w)?;
        let mut out = vec![0; n * oh * ow * g.out_channels];
        kernels::qconv2d(&x, n, h, w, &packed, &requant, &mut out)?;
        Ok(out)
    })
}

fn conv(rng: &mut Rng) -> Case {
    let (i, o) = (rng.int(1, 40), rng.int(1, 40));
    let g = geometry(rng, 1, i, o);
    conv_case(rng, g)
}

fn grouped(rng: &mut Rng) -> Case {
    let (groups, i, o) = (rng.int(2, 4), rng.int(1, 12), rng.int(1, 12));
    let g = geometry(rng, groups, i, o);
    conv_case(rng, g)
}

fn depthwise(rng: &mut Rng) -> Case {
    let (c, multiplier) = (rng.int(1, 48), rng.int(1, 2));
    let g = geometry(rng, c, 1, multiplier);
    conv_case(rng, g)
}

fn linear(rng: &mut Rng) -> Case {
    let (rows, k, n) = (rng.int(1, 40), rng.int(1, 300), rng.int(1, 70));
    let (w, bias, zx) = (i8s(rng, n * k), i32s(rng, n, 20000), rng.next() as u8);
    let requant = requant(rng, n, k);
    let x = rng.bytes(rows * k);
    Box::new(move || {
        let packed = PackedLinear::new(&w, n, k, &bias, zx)?;
        let mut out = vec![0; rows * n];
        kernels::qlinear(&x, rows, &packed, &requant, &mut out)?;
        Ok(out)
    })
}

fn linear_dynamic(rng: &mut Rng) -> Case {
    let (rows, k, n) = (rng.int(1, 40), rng.int(1, 300), rng.int(1, 70));
    let w = i8s(rng, n * k);
    let scales: Vec<f32> = (0..n).map(|_| rng.f32(1e-4, 0.05)).collect();
    let bias: Vec<f32> = (0..n).map(|_| rng.f32(-1.0, 1.0)).collect();
    let (offset, spread) = (rng.f32(-3.0, 3.0), rng.f32(0.01, 4.0));
    let x: Vec<f32> = (0..rows * k)
        .map(|_| offset + rng.f32(-spread, spread))
        .collect();
    Box::new(move || {
        let packed = kernels::PackedDynamicLinear::new(&w, n, k, &scales, &bias)?;
        let mut out = vec![0f32; rows * n];
        kernels::qlinear_dynamic(&x, rows, &packed, &mut out)?;
        Ok(out.iter().flat_map(|v| v.to_le_bytes()).collect())
    })
}

/// Weights of 8, 12 or 16 bits (narrow range) as `i16`.
fn wide_weights(rng: &mut Rng, n: usize) -> Vec<i16> {
    let max = *rng.pick(&[127u64, 2047, 32767]);
    (0..n)
        .map(|_| ((rng.next() % (2 * max + 1)) as i64 - max as i64) as i16)
        .collect()
}

/// `u8` or `u16` input bytes, a zero point for them, and the wide requantization to `u8` or
/// `u16` outputs; `(input_is_u16, output_is_u16)` says which.
fn wide_io(
    rng: &mut Rng,
    values: usize,
    channels: usize,
    k: usize,
) -> (Vec<u16>, u16, RequantWide, [bool; 2]) {
    let io = [rng.coin(), rng.coin()];
    let input_max = if io[0] { u16::MAX } else { 255 };
    let x: Vec<u16> = (0..values)
        .map(|_| (rng.next() % (u64::from(input_max) + 1)) as u16)
        .collect();
    let zx = (rng.next() % (u64::from(input_max) + 1)) as u16;
    let qmax = if io[1] { u16::MAX } else { 255 };
    let n = if rng.coin() { 1 } else { channels };
    let scale = if io[0] { 256.0 } else { 1.0 } * k as f32 * 60.0 / f32::from(qmax) * 255.0;
    let multipliers = (0..n).map(|_| rng.f32(0.1, 3.0) / scale).collect();
    let requant = RequantWide::new(
        multipliers,
        (rng.next() % (u64::from(qmax) + 1)) as u16,
        qmax,
    );
    (x, zx, requant, io)
}

/// Runs `f` with the input as `u8` or `u16` and the output as `u8` or `u16` bytes.
macro_rules! wide_call {
    ($io:expr, $x:expr, $len:expr, |$input:ident, $out:ident| $call:expr) => {{
        let narrow: Vec<u8> = $x.iter().map(|&v| v as u8).collect();
        match $io {
            [false, false] => {
                let $input = &narrow[..];
                let mut o = vec![0u8; $len];
                {
                    let $out = &mut o[..];
                    $call?;
                }
                o
            }
            [false, true] => {
                let $input = &narrow[..];
                let mut o = vec![0u16; $len];
                {
                    let $out = &mut o[..];
                    $call?;
                }
                o.iter().flat_map(|v| v.to_le_bytes()).collect()
            }
            [true, false] => {
                let $input = &$x[..];
                let mut o = vec![0u8; $len];
                {
                    let $out = &mut o[..];
                    $call?;
                }
                o
            }
            [true, true] => {
                let $input = &$x[..];
                let mut o = vec![0u16; $len];
                {
                    let $out = &mut o[..];
                    $call?;
                }
                o.iter().flat_map(|v| v.to_le_bytes()).collect()
            }
        }
    }};
}

fn conv_wide(rng: &mut Rng) -> Case {
    let groups = [1, 1, 2, rng.int(1, 16)][rng.int(0, 3)];
    let (i, o) = if groups > 2 {
        (1, 1)
    } else {
        (rng.int(1, 20), rng.int(1, 20))
    };
    let g = geometry(rng, groups, i, o);
    let [n, h, w] = image(rng, &g);
    let weights = wide_weights(rng, g.out_channels * i * g.kernel[0] * g.kernel[1]);
    let bias = i32s(rng, g.out_channels, 5000);
    let (x, zx, requant, io) = wide_io(
        rng,
        n * h * w * g.in_channels,
        g.out_channels,
        i * g.kernel[0] * g.kernel[1],
    );
    Box::new(move || {
        let packed = PackedWideConv2d::new(g, &weights, &bias)?;
        let (oh, ow) = g.output_size(h, w)?;
        let len = n * oh * ow * g.out_channels;
        Ok(wide_call!(io, x, len, |input, out| kernels::qconv2d_wide(
            input,
            [n, h, w],
            zx,
            &packed,
            &requant,
            out
        )))
    })
}

fn linear_wide(rng: &mut Rng) -> Case {
    let (rows, k, n) = (rng.int(1, 24), rng.int(1, 200), rng.int(1, 50));
    let (w, bias) = (wide_weights(rng, n * k), i32s(rng, n, 20000));
    let (x, zx, requant, io) = wide_io(rng, rows * k, n, k);
    Box::new(move || {
        let packed = PackedWide::new(1, k, n, &bias, |_, o, i| w[o * k + i])?;
        Ok(wide_call!(io, x, rows * n, |input, out| {
            kernels::qlinear_wide(input, zx, &packed, &requant, out)
        }))
    })
}

/// An NHWC image `[n, h, w, c]` of random bytes with its sizes.
fn nhwc(rng: &mut Rng, min_hw: usize) -> ([usize; 4], Vec<u8>) {
    let dims = [
        rng.int(1, 3),
        rng.int(min_hw, min_hw + 14),
        rng.int(min_hw, min_hw + 14),
        rng.int(1, 70),
    ];
    let x = rng.bytes(dims.iter().product());
    (dims, x)
}

fn max_pool(rng: &mut Rng) -> Case {
    let kernel = [rng.int(1, 4), rng.int(1, 4)];
    let pool = MaxPool2d {
        kernel,
        stride: [rng.int(1, 3), rng.int(1, 3)],
        padding: [rng.int(0, kernel[0] / 2), rng.int(0, kernel[1] / 2)],
        dilation: [rng.int(1, 2), rng.int(1, 2)],
        ceil_mode: rng.coin(),
    };
    let ([n, h, w, c], x) = nhwc(rng, 7);
    Box::new(move || {
        let (oh, ow) = kernels::max_pool_output_size(h, w, &pool)?;
        let mut out = vec![0; n * oh * ow * c];
        kernels::qmax_pool2d(&x, n, h, w, c, &pool, &mut out)?;
        Ok(out)
    })
}

fn avg_pool(rng: &mut Rng) -> Case {
    let kernel = [rng.int(1, 4), rng.int(1, 4)];
    let pool = AvgPool2d {
        kernel,
        stride: [rng.int(1, 3), rng.int(1, 3)],
        padding: [rng.int(0, kernel[0] / 2), rng.int(0, kernel[1] / 2)],
        ceil_mode: rng.coin(),
        count_include_pad: rng.coin(),
    };
    let ([n, h, w, c], x) = nhwc(rng, 4);
    let (from, to) = (qparams(rng), qparams(rng));
    Box::new(move || {
        let (oh, ow) = kernels::avg_pool_output_size(h, w, &pool)?;
        let mut out = vec![0; n * oh * ow * c];
        kernels::qavg_pool2d(&x, n, h, w, c, &pool, from, to, &mut out)?;
        Ok(out)
    })
}

fn global_pool(rng: &mut Rng) -> Case {
    let ([n, h, w, c], x) = nhwc(rng, 1);
    let (from, to) = (qparams(rng), qparams(rng));
    Box::new(move || {
        let mut out = vec![0; n * c];
        kernels::qglobal_avg_pool(&x, n, h, w, c, from, to, &mut out)?;
        Ok(out)
    })
}

fn binary(rng: &mut Rng) -> Case {
    let op = *rng.pick(&[QBinaryOp::Add, QBinaryOp::Sub, QBinaryOp::Mul]);
    let shape: Vec<usize> = (0..rng.int(1, 4)).map(|_| rng.int(1, 12)).collect();
    // Each input keeps or broadcasts (size 1) every axis.
    let side = |rng: &mut Rng| -> Vec<usize> {
        shape
            .iter()
            .map(|&d| if rng.int(0, 3) == 0 { 1 } else { d })
            .collect()
    };
    let (sa, sb) = (side(rng), side(rng));
    let (a, b) = (
        rng.bytes(sa.iter().product()),
        rng.bytes(sb.iter().product()),
    );
    let (qa, qb, qy, relu) = (qparams(rng), qparams(rng), qparams(rng), rng.coin());
    Box::new(move || {
        let mut out = vec![0; shape.iter().product()];
        let a = QTensorRef {
            data: &a,
            shape: &sa,
            qparams: qa,
        };
        let b = QTensorRef {
            data: &b,
            shape: &sb,
            qparams: qb,
        };
        kernels::qbinary(op, a, b, &shape, qy, relu, &mut out)?;
        Ok(out)
    })
}

fn cat(rng: &mut Rng) -> Case {
    let pixels = rng.int(1, 300);
    let parts: Vec<(usize, QParams)> = (0..rng.int(1, 4))
        .map(|_| (rng.int(1, 40), qparams(rng)))
        .collect();
    let data: Vec<Vec<u8>> = parts.iter().map(|&(c, _)| rng.bytes(pixels * c)).collect();
    let out_qp = qparams(rng);
    Box::new(move || {
        let inputs: Vec<CatInput> = (parts.iter().zip(&data))
            .map(|(&(channels, qparams), data)| CatInput {
                data,
                channels,
                qparams,
            })
            .collect();
        let mut out = vec![0; pixels * parts.iter().map(|p| p.0).sum::<usize>()];
        kernels::qcat(&inputs, pixels, out_qp, &mut out)?;
        Ok(out)
    })
}

fn table(rng: &mut Rng) -> Case {
    let len = rng.int(1, 5000);
    let (table, x) = (random_table(rng), rng.bytes(len));
    Box::new(move || {
        let mut out = vec![0; x.len()];
        kernels::lookup(&x, &table, &mut out)?;
        Ok(out)
    })
}

fn pad(rng: &mut Rng) -> Case {
    let ([n, h, w, c], x) = nhwc(rng, 1);
    let padding = [rng.int(0, 3), rng.int(0, 3), rng.int(0, 3), rng.int(0, 3)];
    let value = rng.next() as u8;
    Box::new(move || {
        let [t, l, b, r] = padding;
        let mut out = vec![0; n * (h + t + b) * (w + l + r) * c];
        kernels::qpad_nhwc(&x, n, h, w, c, padding, value, &mut out)?;
        Ok(out)
    })
}

/// Floats around the range of `qp`, some of them NaN or infinite.
fn floats(rng: &mut Rng, n: usize, qp: QParams) -> Vec<f32> {
    let span = qp.scale * 300.0;
    (0..n)
        .map(|_| match rng.int(0, 60) {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => f32::NEG_INFINITY,
            _ => rng.f32(-span, span),
        })
        .collect()
}

fn quantize(rng: &mut Rng) -> Case {
    let ([n, h, w, c], _) = nhwc(rng, 1);
    let qp = qparams(rng);
    let x = floats(rng, n * h * w * c, qp);
    let nchw = rng.coin();
    Box::new(move || {
        let mut out = vec![0; x.len()];
        let finite = match nchw {
            true => kernels::quantize_nchw_to_nhwc(&x, n, c, h, w, qp, &mut out)?,
            false => kernels::quantize(&x, qp, &mut out)?,
        };
        out.push(u8::from(finite));
        Ok(out)
    })
}

fn dequantize(rng: &mut Rng) -> Case {
    let len = rng.int(1, 5000);
    let (x, qp) = (rng.bytes(len), qparams(rng));
    Box::new(move || {
        let mut out = vec![0f32; x.len()];
        kernels::dequantize(&x, qp, &mut out)?;
        Ok(out.iter().flat_map(|v| v.to_le_bytes()).collect())
    })
}

fn requantize(rng: &mut Rng) -> Case {
    let len = rng.int(1, 5000);
    let (x, from, to) = (rng.bytes(len), qparams(rng), qparams(rng));
    Box::new(move || {
        let mut out = vec![0; x.len()];
        kernels::requantize_u8(&x, from, to, &mut out)?;
        Ok(out)
    })
}
