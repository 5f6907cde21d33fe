//! Broadcasting add/sub/mul (add/sub also with 16-bit inputs or output), constant padding, table lookups and tables fused into conv/linear
//! epilogues: every available path at 1 and 2 threads against plain scalar references written
//! here from the documented formulas; against float within one output step; bad inputs are
//! errors.

mod kernels_common;

use burn_quantize::kernels::{
    Conv2dGeometry, PackedConv2d, PackedLinear, QBinaryOp, QParams, QTensorRef, Requant, Table,
    WideInput, WideOutput, WideQParams, WideTensorRef, lookup, lookup_in_place, qadd, qbinary,
    qbinary_wide, qconv2d, qlinear, qpad_nhwc,
};
use kernels_common::{Rng, check_all_paths, geometry};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// References
// ---------------------------------------------------------------------------------------------

/// `round_half_even(v) + z` clamped to `[lo, 255]` (no `NaN` reaches it here).
fn finish(v: f32, z: u8, lo: u8) -> u8 {
    let q = v.round_ties_even() + f32::from(z);
    q.clamp(f32::from(lo), 255.0) as u8
}

/// The add/sub formula: `a' = fma(s_a, q_a, s_a·(−z_a))`, `b'` likewise, `c = a' ± b'`, ReLU,
/// `round(c·(1/s_y)) + z_y` clamped to `0..=255`.
fn add_sub_ref(op: QBinaryOp, a: u8, b: u8, qps: [QParams; 3], relu: bool) -> u8 {
    let [qa, qb, qy] = qps;
    let dq = |q: u8, p: QParams| {
        p.scale
            .mul_add(f32::from(q), p.scale * -f32::from(p.zero_point))
    };
    let c = match op {
        QBinaryOp::Add => dq(a, qa) + dq(b, qb),
        QBinaryOp::Sub => dq(a, qa) - dq(b, qb),
        QBinaryOp::Mul => unreachable!("not an add or sub"),
    };
    let c = if relu { c.max(0.0) } else { c };
    finish(c * (1.0 / qy.scale), qy.zero_point, 0)
}

/// PyTorch's `quantized::mul`: `(q_a − z_a)·(q_b − z_b)` in `i32`, times
/// `m = f32(s_a·s_b/s_y in f64)` in `f32`, rounded half to even, `+ z_y`, clamped.
fn mul_ref(a: u8, b: u8, [qa, qb, qy]: [QParams; 3], relu: bool) -> u8 {
    let acc = (i32::from(a) - i32::from(qa.zero_point)) * (i32::from(b) - i32::from(qb.zero_point));
    let m = ((f64::from(qa.scale) * f64::from(qb.scale)) / f64::from(qy.scale)) as f32;
    let lo = if relu { qy.zero_point } else { 0 };
    finish(acc as f32 * m, qy.zero_point, lo)
}

fn op_ref(op: QBinaryOp, a: u8, b: u8, qps: [QParams; 3], relu: bool) -> u8 {
    match op {
        QBinaryOp::Mul => mul_ref(a, b, qps, relu),
        _ => add_sub_ref(op, a, b, qps, relu),
    }
}

/// The op in `f64` on dequantized values, quantized with exact rounding.
fn op_f64(op: QBinaryOp, a: u8, b: u8, [qa, qb, qy]: [QParams; 3], relu: bool) -> u8 {
    let dq = |q: u8, p: QParams| f64::from(p.scale) * (f64::from(q) - f64::from(p.zero_point));
    let (x, y) = (dq(a, qa), dq(b, qb));
    let c = match op {
        QBinaryOp::Add => x + y,
        QBinaryOp::Sub => x - y,
        QBinaryOp::Mul => x * y,
    };
    let c = if relu { c.max(0.0) } else { c };
    (c / f64::from(qy.scale) + f64::from(qy.zero_point))
        .round_ties_even()
        .clamp(0.0, 255.0) as u8
}

/// The flat index in a tensor of shape `shape` (dims equal to `out`'s or 1) of output element
/// `flat`: NumPy broadcasting by direct multi-index arithmetic.
fn broadcast_index(flat: usize, out: &[usize], shape: &[usize]) -> usize {
    let (mut rest, mut index, mut stride) = (flat, 0, 1);
    for (&o, &d) in out.iter().zip(shape).rev() {
        let i = rest % o;
        rest /= o;
        if d != 1 {
            index += i * stride;
        }
        stride *= d;
    }
    index
}

/// A whole broadcast op by the reference `f`.
fn broadcast_ref<A: Copy, B: Copy, O>(
    (a, a_shape): (&[A], &[usize]),
    (b, b_shape): (&[B], &[usize]),
    out: &[usize],
    f: impl Fn(A, B) -> O,
) -> Vec<O> {
    let n: usize = out.iter().product();
    (0..n)
        .map(|i| {
            f(
                a[broadcast_index(i, out, a_shape)],
                b[broadcast_index(i, out, b_shape)],
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Binary ops
// ---------------------------------------------------------------------------------------------

fn qparams() -> impl Strategy<Value = QParams> {
    (1e-3f32..0.5, any::<u8>()).prop_map(|(s, z)| QParams::new(s, z))
}

fn ops() -> impl Strategy<Value = QBinaryOp> {
    prop::sample::select(vec![QBinaryOp::Add, QBinaryOp::Sub, QBinaryOp::Mul])
}

/// Output shapes of rank 2–4 (an occasionally long last dimension) and for each input a mask of
/// broadcast dimensions.
fn broadcast_shapes() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, Vec<usize>)> {
    (2usize..=4)
        .prop_flat_map(|rank| {
            (
                prop::collection::vec(1usize..7, rank),
                prop_oneof![Just(1usize), 1usize..80],
                prop::collection::vec(prop::bool::weighted(0.35), rank),
                prop::collection::vec(prop::bool::weighted(0.35), rank),
            )
        })
        .prop_map(|(mut out, last, mask_a, mask_b)| {
            *out.last_mut().expect("rank >= 2") *= last;
            let input = |mask: Vec<bool>| {
                out.iter()
                    .zip(mask)
                    .map(|(&d, bcast)| if bcast { 1 } else { d })
                    .collect()
            };
            (input(mask_a), input(mask_b), out.clone())
        })
}

/// Runs `op` through [`qbinary`] on every path and thread count and compares with the scalar
/// reference; then compares the reference with the float computation (within one step).
fn check_binary(op: QBinaryOp, shapes: [&[usize]; 3], qps: [QParams; 3], relu: bool, seed: u64) {
    let [a_shape, b_shape, out_shape] = shapes;
    let mut rng = Rng::new(seed);
    let a = rng.u8s(a_shape.iter().product());
    let b = rng.u8s(b_shape.iter().product());
    let expected = broadcast_ref((&a, a_shape), (&b, b_shape), out_shape, |x, y| {
        op_ref(op, x, y, qps, relu)
    });
    let what = format!("{op:?} {a_shape:?} {b_shape:?} -> {out_shape:?}, {qps:?}, relu {relu}");
    check_all_paths(&what, &expected, || {
        let mut out = vec![0; expected.len()];
        qbinary(
            op,
            QTensorRef::new(&a, a_shape, qps[0]),
            QTensorRef::new(&b, b_shape, qps[1]),
            out_shape,
            qps[2],
            relu,
            &mut out,
        )
        .expect("binary op");
        out
    });
    let float = broadcast_ref((&a, a_shape), (&b, b_shape), out_shape, |x, y| {
        op_f64(op, x, y, qps, relu)
    });
    for (i, (&q, &f)) in expected.iter().zip(&float).enumerate() {
        assert!(
            q.abs_diff(f) <= 1,
            "{what}: element {i} is {q}, float gives {f}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn random_broadcasts_match_the_reference(
        op in ops(), (a_shape, b_shape, out_shape) in broadcast_shapes(),
        qa in qparams(), qb in qparams(), qy in qparams(), relu in any::<bool>(),
        seed in any::<u64>(),
    ) {
        check_binary(op, [&a_shape, &b_shape, &out_shape], [qa, qb, qy], relu, seed);
    }

    #[test]
    fn same_shape_add_equals_qadd(
        shape in prop::collection::vec(1usize..9, 1..=4),
        qa in qparams(), qb in qparams(), qy in qparams(), relu in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let n: usize = shape.iter().product();
        let mut rng = Rng::new(seed);
        let (a, b) = (rng.u8s(n), rng.u8s(n));
        let mut expected = vec![0; n];
        qadd(&a, qa, &b, qb, qy, relu, &mut expected).expect("qadd");
        check_all_paths("same-shape add vs qadd", &expected, || {
            let mut out = vec![0; n];
            let (ta, tb) = (QTensorRef::new(&a, &shape, qa), QTensorRef::new(&b, &shape, qb));
            qbinary(QBinaryOp::Add, ta, tb, &shape, qy, relu, &mut out).expect("add");
            out
        });
        let reference: Vec<u8> =
            a.iter().zip(&b).map(|(&x, &y)| add_sub_ref(QBinaryOp::Add, x, y, [qa, qb, qy], relu)).collect();
        prop_assert_eq!(expected, reference);
    }
}

#[test]
fn typical_broadcasts_across_parallel_chunks() {
    let qps = [
        QParams::new(0.02, 128),
        QParams::new(0.004, 3),
        QParams::new(0.03, 100),
    ];
    let full: &[usize] = &[2, 23, 29, 72]; // 96k elements: more than one parallel chunk
    let cases: [(&[usize], &[usize]); 6] = [
        (full, full),
        (full, &[2, 1, 1, 72]), // squeeze-excitation gate
        (&[2, 1, 1, 72], full),
        (full, &[2, 1, 1, 1]), // one value per image
        (&[1, 1, 1, 1], full), // scalar
        (full, &[1, 23, 29, 1]),
    ];
    for (seed, (a_shape, b_shape)) in cases.into_iter().enumerate() {
        for op in [QBinaryOp::Add, QBinaryOp::Sub, QBinaryOp::Mul] {
            for relu in [false, true] {
                check_binary(op, [a_shape, b_shape, full], qps, relu, seed as u64);
            }
        }
    }
}

#[test]
fn zero_sized_and_rank_zero_tensors() {
    let qp = QParams::new(0.1, 10);
    let mut out = [0u8; 0];
    let empty = QTensorRef::new(&[], &[2, 0, 3], qp);
    let bcast = QTensorRef::new(&[7, 8], &[2, 1, 1], qp);
    qbinary(
        QBinaryOp::Mul,
        empty,
        bcast,
        &[2, 0, 3],
        qp,
        false,
        &mut out,
    )
    .expect("empty");
    let mut one = [0u8];
    let scalar = QTensorRef::new(&[30], &[], qp);
    qbinary(QBinaryOp::Add, scalar, scalar, &[], qp, false, &mut one).expect("rank 0");
    assert_eq!(one, [add_sub_ref(QBinaryOp::Add, 30, 30, [qp; 3], false)]);
}

#[test]
fn bad_binary_inputs_are_errors_not_panics() {
    let qp = QParams::new(0.1, 3);
    let data = [1u8; 12];
    let t = |shape: &'static [usize], n: usize| QTensorRef::new(&data[..n], shape, qp);
    let run = |a: QTensorRef<'_>, b: QTensorRef<'_>, out_shape: &[usize], out_len: usize| {
        let mut out = vec![0; out_len];
        qbinary(QBinaryOp::Add, a, b, out_shape, qp, false, &mut out)
    };
    let good = t(&[3, 4], 12);
    assert!(run(good, good, &[3, 4], 12).is_ok());
    assert!(run(good, t(&[4], 4), &[3, 4], 12).is_err(), "rank mismatch");
    assert!(
        run(good, t(&[3, 2], 6), &[3, 4], 12).is_err(),
        "dim neither equal nor 1"
    );
    assert!(
        run(good, good, &[1, 4], 4).is_err(),
        "input larger than the output"
    );
    assert!(
        run(good, t(&[3, 4], 11), &[3, 4], 12).is_err(),
        "short input"
    );
    assert!(run(t(&[3, 1], 4), good, &[3, 4], 12).is_err(), "long input");
    assert!(run(good, good, &[3, 4], 11).is_err(), "short output");
    assert!(run(good, good, &[3, 4], 13).is_err(), "long output");
    let huge = QTensorRef::new(&data, &[usize::MAX, 2], qp);
    assert!(
        run(huge, huge, &[usize::MAX, 2], 12).is_err(),
        "overflowing shape"
    );
    for bad in [QParams::new(0.0, 0), QParams::new(f32::NAN, 0)] {
        for op in [QBinaryOp::Add, QBinaryOp::Sub, QBinaryOp::Mul] {
            let bad_t = QTensorRef::new(&data, &[12], bad);
            let ok_t = QTensorRef::new(&data, &[12], qp);
            let mut out = [0; 12];
            assert!(qbinary(op, bad_t, ok_t, &[12], qp, false, &mut out).is_err());
            assert!(qbinary(op, ok_t, bad_t, &[12], qp, false, &mut out).is_err());
            assert!(qbinary(op, ok_t, ok_t, &[12], bad, false, &mut out).is_err());
        }
    }
    assert!(qadd(&data, qp, &data[..1], qp, qp, false, &mut [0; 12]).is_err());
}

// ---------------------------------------------------------------------------------------------
// Add and sub with 16-bit values
// ---------------------------------------------------------------------------------------------

/// One side of a wide add: its values as `u32`, its shape, quantization and width.
#[derive(Clone, Debug)]
struct Side {
    values: Vec<u32>,
    shape: Vec<usize>,
    qp: WideQParams,
    wide: bool,
}

impl Side {
    fn max(&self) -> u32 {
        if self.wide { 65535 } else { 255 }
    }
}

/// The add/sub formula at any widths (as [`add_sub_ref`], clamped to `0..=max`).
fn add_sub_wide_ref(
    op: QBinaryOp,
    a: u32,
    b: u32,
    qps: [WideQParams; 3],
    max: u32,
    relu: bool,
) -> u32 {
    let [qa, qb, qy] = qps;
    let dq = |q: u32, p: WideQParams| {
        p.scale
            .mul_add(q as f32, p.scale * -f32::from(p.zero_point))
    };
    let c = match op {
        QBinaryOp::Add => dq(a, qa) + dq(b, qb),
        QBinaryOp::Sub => dq(a, qa) - dq(b, qb),
        QBinaryOp::Mul => unreachable!("not an add or sub"),
    };
    let c = if relu { c.max(0.0) } else { c };
    let q = (c * (1.0 / qy.scale)).round_ties_even() + f32::from(qy.zero_point);
    q.clamp(0.0, max as f32) as u32
}

/// `values` as elements of type `T` (each fits it).
fn typed<T: TryFrom<u32>>(values: &[u32]) -> Vec<T> {
    (values.iter())
        .map(|&x| T::try_from(x).ok().expect("fits"))
        .collect()
}

/// [`qbinary_wide`] on the sides, each at its width.
fn run_wide<A, B, O>(op: QBinaryOp, [a, b, out]: [&Side; 3], relu: bool) -> Vec<u32>
where
    A: WideInput + TryFrom<u32>,
    B: WideInput + TryFrom<u32>,
    O: WideOutput + Into<u32>,
{
    let (a_data, b_data): (Vec<A>, Vec<B>) = (typed(&a.values), typed(&b.values));
    let mut y = vec![O::default(); out.shape.iter().product()];
    let ta = WideTensorRef {
        data: &a_data,
        shape: &a.shape,
        qparams: a.qp,
    };
    let tb = WideTensorRef {
        data: &b_data,
        shape: &b.shape,
        qparams: b.qp,
    };
    qbinary_wide(op, ta, tb, &out.shape, out.qp, relu, &mut y).expect("wide binary op");
    y.into_iter().map(Into::into).collect()
}

/// [`run_wide`] at the sides' widths.
fn wide_op(op: QBinaryOp, sides: [&Side; 3], relu: bool) -> Vec<u32> {
    match (sides[0].wide, sides[1].wide, sides[2].wide) {
        (false, false, false) => run_wide::<u8, u8, u8>(op, sides, relu),
        (false, false, true) => run_wide::<u8, u8, u16>(op, sides, relu),
        (false, true, false) => run_wide::<u8, u16, u8>(op, sides, relu),
        (false, true, true) => run_wide::<u8, u16, u16>(op, sides, relu),
        (true, false, false) => run_wide::<u16, u8, u8>(op, sides, relu),
        (true, false, true) => run_wide::<u16, u8, u16>(op, sides, relu),
        (true, true, false) => run_wide::<u16, u16, u8>(op, sides, relu),
        (true, true, true) => run_wide::<u16, u16, u16>(op, sides, relu),
    }
}

/// A side of `shape` at the given width with random values and quantization.
fn side(rng: &mut Rng, shape: &[usize], wide: bool) -> Side {
    let max = if wide { 65535 } else { 255 };
    let scale = if wide {
        rng.f32(1e-5, 2e-3)
    } else {
        rng.f32(1e-3, 0.5)
    };
    let zero_point = rng.range(0, max) as u16;
    let n = shape.iter().product();
    Side {
        values: (0..n).map(|_| rng.range(0, max) as u32).collect(),
        shape: shape.to_vec(),
        qp: WideQParams::new(scale, zero_point),
        wide,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn wide_add_and_sub_match_the_reference_at_every_width(
        add in any::<bool>(), (a_shape, b_shape, out_shape) in broadcast_shapes(),
        widths in any::<[bool; 3]>(), relu in any::<bool>(), seed in any::<u64>(),
    ) {
        let op = if add { QBinaryOp::Add } else { QBinaryOp::Sub };
        let mut rng = Rng::new(seed);
        let [wa, wb, wy] = widths;
        let (a, b, y) = (side(&mut rng, &a_shape, wa), side(&mut rng, &b_shape, wb), side(&mut rng, &out_shape, wy));
        let qps = [a.qp, b.qp, y.qp];
        let expected = broadcast_ref((&a.values, &a.shape), (&b.values, &b.shape), &out_shape, |x, z| {
            add_sub_wide_ref(op, x, z, qps, y.max(), relu)
        });
        let what = format!("{op:?} {widths:?} {a_shape:?} {b_shape:?} -> {out_shape:?}, {qps:?}, relu {relu}");
        check_all_paths(&what, &expected, || wide_op(op, [&a, &b, &y], relu));
        // Within one output step of the op in f64.
        let dq = |q: u32, p: WideQParams| f64::from(p.scale) * (f64::from(q) - f64::from(p.zero_point));
        let float = broadcast_ref((&a.values, &a.shape), (&b.values, &b.shape), &out_shape, |x, z| {
            let c = if add { dq(x, a.qp) + dq(z, b.qp) } else { dq(x, a.qp) - dq(z, b.qp) };
            let c = if relu { c.max(0.0) } else { c };
            (c / f64::from(y.qp.scale) + f64::from(y.qp.zero_point)).round_ties_even().clamp(0.0, f64::from(y.max())) as u32
        });
        for (i, (&q, &f)) in expected.iter().zip(&float).enumerate() {
            prop_assert!(q.abs_diff(f) <= 1, "{}: element {} is {}, float gives {}", what, i, q, f);
        }
    }

    #[test]
    fn wide_add_on_8_bit_values_writes_qbinary_s_bytes(
        add in any::<bool>(), (a_shape, b_shape, out_shape) in broadcast_shapes(),
        relu in any::<bool>(), seed in any::<u64>(),
    ) {
        let op = if add { QBinaryOp::Add } else { QBinaryOp::Sub };
        let mut rng = Rng::new(seed);
        let (a, b, y) = (side(&mut rng, &a_shape, false), side(&mut rng, &b_shape, false), side(&mut rng, &out_shape, false));
        let narrow = |s: &Side| -> (Vec<u8>, QParams) {
            (s.values.iter().map(|&v| v as u8).collect(), QParams::new(s.qp.scale, s.qp.zero_point as u8))
        };
        let ((da, qa), (db, qb), (_, qy)) = (narrow(&a), narrow(&b), narrow(&y));
        let mut expected = vec![0u8; out_shape.iter().product()];
        qbinary(op, QTensorRef::new(&da, &a_shape, qa), QTensorRef::new(&db, &b_shape, qb), &out_shape, qy, relu, &mut expected).expect("qbinary");
        let got = wide_op(op, [&a, &b, &y], relu);
        prop_assert_eq!(got, expected.iter().map(|&v| u32::from(v)).collect::<Vec<_>>());
    }
}

#[test]
fn bad_wide_binary_inputs_are_errors_not_panics() {
    let shape = [2usize, 3];
    let (a, b) = ([1u16; 6], [2u8; 6]);
    let qp = WideQParams::new(0.01, 3);
    let run = |op: QBinaryOp, out_qp: WideQParams, out: &mut [u8], b_len: usize| {
        let ta = WideTensorRef {
            data: &a[..],
            shape: &shape,
            qparams: qp,
        };
        let tb = WideTensorRef {
            data: &b[..b_len],
            shape: &shape,
            qparams: qp,
        };
        qbinary_wide(op, ta, tb, &shape, out_qp, false, out)
    };
    let mut out = [0u8; 6];
    assert!(run(QBinaryOp::Add, qp, &mut out, 6).is_ok());
    assert!(
        run(QBinaryOp::Mul, qp, &mut out, 6).is_err(),
        "no 16-bit mul"
    );
    assert!(
        run(QBinaryOp::Add, WideQParams::new(0.01, 256), &mut out, 6).is_err(),
        "u8 zero point 256"
    );
    assert!(
        run(QBinaryOp::Add, WideQParams::new(0.0, 3), &mut out, 6).is_err(),
        "scale 0"
    );
    assert!(run(QBinaryOp::Sub, qp, &mut out, 5).is_err(), "short input");
    assert!(
        run(QBinaryOp::Sub, qp, &mut out[..5], 6).is_err(),
        "short output"
    );
}

// ---------------------------------------------------------------------------------------------
// Padding
// ---------------------------------------------------------------------------------------------

fn pad_ref(
    input: &[u8],
    [n, h, w, c]: [usize; 4],
    [pt, pl, pb, pr]: [usize; 4],
    value: u8,
) -> Vec<u8> {
    let (oh, ow) = (h + pt + pb, w + pl + pr);
    let mut out = Vec::with_capacity(n * oh * ow * c);
    for i in 0..n {
        for y in 0..oh {
            for x in 0..ow {
                for ch in 0..c {
                    let inside = (pt..pt + h).contains(&y) && (pl..pl + w).contains(&x);
                    out.push(if inside {
                        input[((i * h + y - pt) * w + x - pl) * c + ch]
                    } else {
                        value
                    });
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn pad_fills_the_border_and_copies_the_interior(
        dims in (0usize..3, 1usize..7, 1usize..7, 1usize..20),
        padding in prop::array::uniform4(0usize..4), value in any::<u8>(), seed in any::<u64>(),
    ) {
        let (n, h, w, c) = dims;
        let input = Rng::new(seed).u8s(n * h * w * c);
        let expected = pad_ref(&input, [n, h, w, c], padding, value);
        check_all_paths("pad", &expected, || {
            let mut out = vec![0; expected.len()];
            qpad_nhwc(&input, n, h, w, c, padding, value, &mut out).expect("pad");
            out
        });
    }
}

#[test]
fn bad_pad_inputs_are_errors_not_panics() {
    let input = [0u8; 2 * 3 * 4 * 5];
    let pad = [1, 2, 0, 1];
    let len = 2 * 4 * 7 * 5;
    assert!(qpad_nhwc(&input, 2, 3, 4, 5, pad, 9, &mut vec![0; len]).is_ok());
    assert!(qpad_nhwc(&input[1..], 2, 3, 4, 5, pad, 9, &mut vec![0; len]).is_err());
    assert!(qpad_nhwc(&input, 2, 3, 4, 5, pad, 9, &mut vec![0; len - 1]).is_err());
    assert!(qpad_nhwc(&input, 2, 3, 4, 5, [usize::MAX, 0, 1, 0], 9, &mut [0; 4]).is_err());
    assert!(qpad_nhwc(&[], 0, 3, 4, 5, pad, 9, &mut []).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------------------------

fn random_table(seed: u64) -> Table {
    Table::new(&Rng::new(seed).u8s(256)).expect("256 entries")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn lookup_maps_every_byte(n in prop_oneof![0usize..3000, 60_000usize..140_000], seed in any::<u64>()) {
        let table = random_table(seed);
        let input = Rng::new(seed ^ 1).u8s(n);
        let expected: Vec<u8> = input.iter().map(|&q| table.entries()[usize::from(q)]).collect();
        check_all_paths("lookup", &expected, || {
            let mut out = vec![0; n];
            lookup(&input, &table, &mut out).expect("lookup");
            out
        });
        check_all_paths("lookup in place", &expected, || {
            let mut data = input.clone();
            lookup_in_place(&mut data, &table);
            data
        });
    }
}

#[test]
fn tables_are_256_bytes_and_round_trip() {
    assert!(Table::new(&[1; 255]).is_err());
    assert!(Table::new(&[1; 257]).is_err());
    assert!(Table::new(&[]).is_err());
    let table = random_table(5);
    assert_eq!(Table::from_array(*table.entries()), table);
    let json = serde_json::to_string(&table).expect("serialize");
    assert_eq!(
        serde_json::from_str::<Table>(&json).expect("deserialize"),
        table
    );
    assert!(serde_json::from_str::<Table>("[0, 1]").is_err());
    assert!(lookup(&[1, 2], &table, &mut [0]).is_err());
    let requant = Requant::new(vec![0.5], 3).with_table(table.clone());
    let json = serde_json::to_string(&requant).expect("serialize requant");
    assert_eq!(
        serde_json::from_str::<Requant>(&json).expect("requant"),
        requant
    );
    let old = r#"{"multipliers":[0.5],"zero_point":3,"qmin":0,"qmax":255}"#;
    let old: Requant = serde_json::from_str(old).expect("a requant saved without a table");
    assert_eq!(old, Requant::new(vec![0.5], 3));
}

// ---------------------------------------------------------------------------------------------
// Tables fused into conv and linear epilogues
// ---------------------------------------------------------------------------------------------

fn map(bytes: &[u8], table: &Table) -> Vec<u8> {
    bytes
        .iter()
        .map(|&q| table.entries()[usize::from(q)])
        .collect()
}

/// A random requantization (per-channel or not, plain / ReLU / ReLU6).
fn random_requant(rng: &mut Rng, channels: usize) -> Requant {
    let count = if rng.next().is_multiple_of(2) {
        channels
    } else {
        1
    };
    let multipliers = (0..count)
        .map(|_| 10f32.powf(rng.f32(-4.5, -2.0)))
        .collect();
    let requant = Requant::new(multipliers, rng.next() as u8);
    match rng.next() % 3 {
        0 => requant,
        1 => requant.with_relu(),
        _ => requant.with_relu6(0.05),
    }
}

/// A conv with a random table equals the unfused conv mapped through the table, on every path;
/// the unfused output is the naive reference (or, for fbgemm's emulation, the unfused kernel).
fn check_fused_conv(g: Conv2dGeometry, [batch, h, w]: [usize; 3], fbgemm: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    let zx = rng.next() as u8;
    let input = rng.u8s(batch * h * w * g.in_channels);
    let weights = rng.i8s(g.out_channels * g.in_channels / g.groups * g.kernel[0] * g.kernel[1]);
    let bias: Vec<i32> = (0..g.out_channels)
        .map(|_| rng.range(-5000, 5000) as i32)
        .collect();
    let requant = random_requant(&mut rng, g.out_channels);
    let mut packed = PackedConv2d::new(g, &weights, &bias, zx).expect("valid conv");
    if fbgemm {
        packed = packed.emulate_fbgemm_depthwise();
    }
    let (oh, ow) = packed.output_size(h, w).expect("output size");
    let run = |requant: &Requant| {
        let mut out = vec![0; batch * oh * ow * g.out_channels];
        qconv2d(&input, batch, h, w, &packed, requant, &mut out).expect("conv");
        out
    };
    let unfused = if fbgemm {
        run(&requant)
    } else {
        kernels_common::conv2d(&input, [batch, h, w], &g, &weights, &bias, zx, &requant)
    };
    let table = random_table(seed ^ 7);
    let fused = requant.with_table(table.clone());
    check_all_paths(
        &format!("fused table {g:?}"),
        &map(&unfused, &table),
        || run(&fused),
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// kind 0: dense (im2col or in-place 1×1 GEMM), 1: grouped GEMM, 2: depthwise ×1 (the
    /// AVX-512 path on that tier), 3: depthwise ×2 (the compiled loops).
    #[test]
    fn fused_tables_on_random_convs(
        kind in 0u8..4, cin in 1usize..24, cout in 1usize..40, k in 1usize..4,
        stride in 1usize..3, hw in 3usize..8, batch in 1usize..3, seed in any::<u64>(),
    ) {
        let g = match kind {
            0 => geometry(cin, cout, k, stride, k / 2, 1),
            1 => geometry(2 * cin, 2 * cout, k, stride, k / 2, 2),
            2 => geometry(cin + 1, cin + 1, k, stride, k / 2, cin + 1),
            _ => geometry(cin + 1, 2 * (cin + 1), k, stride, k / 2, cin + 1),
        };
        check_fused_conv(g, [batch, hw, hw], false, seed);
    }
}

#[test]
fn fused_tables_on_fixed_convs() {
    // Several panels and row blocks (2 threads split them), 1×1 in place, stride 2.
    check_fused_conv(geometry(32, 130, 3, 1, 1, 1), [2, 9, 11], false, 1);
    check_fused_conv(geometry(64, 96, 1, 1, 0, 1), [1, 14, 14], false, 2);
    check_fused_conv(geometry(16, 40, 3, 2, 1, 1), [1, 13, 13], false, 3);
    // Depthwise: 16-lane steps plus a masked rest; fbgemm's saturating emulation.
    check_fused_conv(geometry(40, 40, 3, 1, 1, 40), [2, 9, 9], false, 4);
    check_fused_conv(geometry(24, 24, 5, 2, 2, 24), [1, 11, 11], false, 5);
    check_fused_conv(geometry(16, 16, 3, 1, 1, 16), [1, 8, 8], true, 6);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn fused_tables_on_random_linears(
        rows in 1usize..40, in_f in 1usize..80, out_f in 1usize..140, seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let zx = rng.next() as u8;
        let (input, weights) = (rng.u8s(rows * in_f), rng.i8s(out_f * in_f));
        let bias: Vec<i32> = (0..out_f).map(|_| rng.range(-5000, 5000) as i32).collect();
        let requant = random_requant(&mut rng, out_f);
        let unfused = kernels_common::linear(&input, rows, &weights, out_f, &bias, zx, &requant);
        let table = random_table(seed ^ 3);
        let fused = requant.with_table(table.clone());
        let packed = PackedLinear::new(&weights, out_f, in_f, &bias, zx).expect("linear");
        check_all_paths("fused table linear", &map(&unfused, &table), || {
            let mut out = vec![0; rows * out_f];
            qlinear(&input, rows, &packed, &fused, &mut out).expect("linear");
            out
        });
    }
}
