//! `conformance kernels`: every case of `qops.json` (PyTorch 2.15 fbgemm outputs) on every
//! available kernel path, compared byte for byte with PyTorch's `y_q`.
//!
//! Conv and linear take fbgemm's float bias through `quantize_bias` and `conv_multipliers`
//! (the only approximation: fbgemm adds the bias as a float, we round it to `i32`). Depthwise
//! convs run with `emulate_fbgemm_depthwise` (fbgemm saturates tap-pair sums to `i16`); where
//! that changes the result, the default exact arithmetic is reported on an extra line.

use std::collections::BTreeMap;
use std::error::Error;
use std::path::Path;

use burn_quantize::kernels::{
    AvgPool2d, CatInput, Conv2dGeometry, Isa, MaxPool2d, PackedConv2d, PackedLinear, QParams,
    Requant, available_isas, conv_multipliers, qadd, qavg_pool2d, qcat, qconv2d, qglobal_avg_pool,
    qlinear, qmax_pool2d, quantize_bias, with_isa,
};
use safetensors::SafeTensors;
use serde_json::Value;

type BoxResult<T> = Result<T, Box<dyn Error>>;

/// Runs the check; prints a table and, last, the summary line. `Ok(true)` when it passes.
pub fn run(goldens_dir: &Path) -> BoxResult<bool> {
    let json: Value = serde_json::from_slice(&std::fs::read(goldens_dir.join("qops.json"))?)?;
    let bytes = std::fs::read(goldens_dir.join("qops.safetensors"))?;
    let tensors = Tensors(SafeTensors::deserialize(&bytes)?);
    let cases = json["cases"].as_array().ok_or("qops.json has no cases")?;
    let paths = available_isas();
    println!(
        "{:<26} {:>6} {:>11} {:>8}  paths agree",
        "case", "values", "identical", "max_lsb"
    );
    let (mut total, mut identical, mut max_lsb) = (0usize, 0usize, 0u8);
    for case in cases {
        let key = case["key"].as_str().ok_or("case without key")?;
        let expected = tensors.u8(&format!("{key}.y_q"))?;
        let mut outputs = BTreeMap::new();
        for &isa in &paths {
            outputs.insert(isa, with_isa(isa, || run_case(case, &tensors, true))??);
        }
        let reference = &outputs[&Isa::Scalar];
        let agree = outputs.values().all(|out| out == reference);
        let same = reference
            .iter()
            .zip(&expected)
            .filter(|(a, b)| a == b)
            .count();
        let lsb = reference
            .iter()
            .zip(&expected)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        if reference.len() != expected.len() {
            return Err(format!(
                "{key}: {} outputs instead of {}",
                reference.len(),
                expected.len()
            )
            .into());
        }
        println!(
            "{key:<26} {:>6} {:>10.2}% {lsb:>8}  {}",
            expected.len(),
            100.0 * same as f64 / expected.len() as f64,
            if agree { "yes" } else { "NO" }
        );
        if !agree {
            return Err(format!("{key}: kernel paths disagree with each other").into());
        }
        let exact = run_case(case, &tensors, false)?;
        if &exact != reference {
            let same = exact.iter().zip(&expected).filter(|(a, b)| a == b).count();
            let lsb = exact
                .iter()
                .zip(&expected)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap_or(0);
            let pct = 100.0 * same as f64 / expected.len() as f64;
            println!("  (exact i32 arithmetic, the default: {pct:.2}% identical, max_lsb {lsb})");
        }
        total += expected.len() * paths.len();
        identical += same * paths.len();
        max_lsb = max_lsb.max(lsb);
    }
    let fraction = identical as f64 / total.max(1) as f64;
    let names: Vec<_> = paths.iter().map(|isa| isa.name()).collect();
    println!(
        "kernel conformance: cases={} identical={fraction:.4} max_lsb={max_lsb} paths={}",
        cases.len(),
        names.join(",")
    );
    Ok(max_lsb <= 1 && fraction >= 0.99)
}

/// The tensors of `qops.safetensors`.
struct Tensors<'a>(SafeTensors<'a>);

impl Tensors<'_> {
    fn raw(&self, name: &str) -> BoxResult<(Vec<usize>, &[u8])> {
        let view = self.0.tensor(name)?;
        Ok((view.shape().to_vec(), view.data()))
    }

    fn u8(&self, name: &str) -> BoxResult<Vec<u8>> {
        Ok(self.raw(name)?.1.to_vec())
    }

    fn i8(&self, name: &str) -> BoxResult<Vec<i8>> {
        Ok(self.raw(name)?.1.iter().map(|&b| b as i8).collect())
    }

    fn f32(&self, name: &str) -> BoxResult<Vec<f32>> {
        let data = self.raw(name)?.1;
        Ok(data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    fn shape(&self, name: &str) -> BoxResult<Vec<usize>> {
        Ok(self.raw(name)?.0)
    }
}

fn num(case: &Value, field: &str) -> BoxResult<f64> {
    case[field]
        .as_f64()
        .ok_or_else(|| format!("case field `{field}` missing").into())
}

fn qparams(case: &Value, prefix: &str) -> BoxResult<QParams> {
    let scale = num(case, &format!("{prefix}_scale"))? as f32;
    Ok(QParams::new(
        scale,
        num(case, &format!("{prefix}_zero_point"))? as u8,
    ))
}

/// Runs one case on the current path (depthwise convs emulating fbgemm's overflow if
/// `fbgemm_depthwise`); the output in PyTorch's layout (NCHW).
fn run_case(case: &Value, t: &Tensors, fbgemm_depthwise: bool) -> BoxResult<Vec<u8>> {
    let key = case["key"].as_str().unwrap_or_default();
    let x_name = case["input"]
        .as_str()
        .map_or(format!("{key}.x_q"), str::to_string);
    match case["op"].as_str().unwrap_or_default() {
        "conv2d" => conv(case, t, key, fbgemm_depthwise),
        "linear" => linear(case, t, key),
        "add" => {
            let (a, b) = (t.u8(&format!("{key}.a_q"))?, t.u8(&format!("{key}.b_q"))?);
            let relu = case["relu"].as_bool().unwrap_or(false);
            let mut out = vec![0; a.len()];
            qadd(
                &a,
                qparams(case, "a")?,
                &b,
                qparams(case, "b")?,
                qparams(case, "y")?,
                relu,
                &mut out,
            )?;
            Ok(out)
        }
        "cat" => {
            let [n, c, h, w] = dims(&t.shape(&format!("{key}.a_q"))?)?;
            let a = to_nhwc(&t.u8(&format!("{key}.a_q"))?, [n, c, h, w]);
            let b = to_nhwc(&t.u8(&format!("{key}.b_q"))?, [n, c, h, w]);
            let inputs = [
                CatInput {
                    data: &a,
                    channels: c,
                    qparams: qparams(case, "a")?,
                },
                CatInput {
                    data: &b,
                    channels: c,
                    qparams: qparams(case, "b")?,
                },
            ];
            let mut out = vec![0; 2 * a.len()];
            qcat(&inputs, n * h * w, qparams(case, "y")?, &mut out)?;
            Ok(to_nchw(&out, [n, 2 * c, h, w]))
        }
        op => pool(op, case, t, &x_name),
    }
}

fn conv(case: &Value, t: &Tensors, key: &str, fbgemm_depthwise: bool) -> BoxResult<Vec<u8>> {
    let [n, cin, h, w] = dims(&t.shape(&format!("{key}.x_q"))?)?;
    let [cout, _, kh, kw] = dims(&t.shape(&format!("{key}.w_q"))?)?;
    let (stride, pad, dil) = (
        num(case, "stride")? as usize,
        num(case, "padding")? as usize,
        num(case, "dilation")? as usize,
    );
    let geometry = Conv2dGeometry {
        in_channels: cin,
        out_channels: cout,
        kernel: [kh, kw],
        stride: [stride; 2],
        padding: [pad; 4],
        dilation: [dil; 2],
        groups: num(case, "groups")? as usize,
    };
    let (x, y) = (qparams(case, "x")?, qparams(case, "y")?);
    let w_scale = t.f32(&format!("{key}.w_scale"))?;
    let bias = quantize_bias(&t.f32(&format!("{key}.bias_f32"))?, x.scale, &w_scale);
    let mut packed =
        PackedConv2d::new(geometry, &t.i8(&format!("{key}.w_q"))?, &bias, x.zero_point)?;
    if fbgemm_depthwise {
        packed = packed.emulate_fbgemm_depthwise();
    }
    let requant = requant(case, conv_multipliers(x.scale, &w_scale, y.scale), y)?;
    let (oh, ow) = packed.output_size(h, w)?;
    let input = to_nhwc(&t.u8(&format!("{key}.x_q"))?, [n, cin, h, w]);
    let mut out = vec![0; n * oh * ow * cout];
    qconv2d(&input, n, h, w, &packed, &requant, &mut out)?;
    Ok(to_nchw(&out, [n, cout, oh, ow]))
}

fn linear(case: &Value, t: &Tensors, key: &str) -> BoxResult<Vec<u8>> {
    let rows = t.shape(&format!("{key}.x_q"))?[0];
    let [out_f, in_f] = t.shape(&format!("{key}.w_q"))?[..] else {
        return Err("bad weight shape".into());
    };
    let (x, y) = (qparams(case, "x")?, qparams(case, "y")?);
    let w_scale = t.f32(&format!("{key}.w_scale"))?;
    let bias = quantize_bias(&t.f32(&format!("{key}.bias_f32"))?, x.scale, &w_scale);
    let packed = PackedLinear::new(
        &t.i8(&format!("{key}.w_q"))?,
        out_f,
        in_f,
        &bias,
        x.zero_point,
    )?;
    let requant = requant(case, conv_multipliers(x.scale, &w_scale, y.scale), y)?;
    let mut out = vec![0; rows * out_f];
    qlinear(
        &t.u8(&format!("{key}.x_q"))?,
        rows,
        &packed,
        &requant,
        &mut out,
    )?;
    Ok(out)
}

fn requant(case: &Value, multipliers: Vec<f32>, y: QParams) -> BoxResult<Requant> {
    let requant = Requant::new(multipliers, y.zero_point);
    Ok(if case["relu"].as_bool().ok_or("relu flag missing")? {
        requant.with_relu()
    } else {
        requant
    })
}

fn pool(op: &str, case: &Value, t: &Tensors, x_name: &str) -> BoxResult<Vec<u8>> {
    let [n, c, h, w] = dims(&t.shape(x_name)?)?;
    let x = to_nhwc(&t.u8(x_name)?, [n, c, h, w]);
    let qp = qparams(case, "x")?;
    let square = |field: &str| -> BoxResult<[usize; 2]> { Ok([num(case, field)? as usize; 2]) };
    match op {
        "max_pool2d" => {
            let pool = MaxPool2d {
                kernel: square("kernel")?,
                stride: square("stride")?,
                padding: square("padding")?,
                dilation: [1, 1],
                ceil_mode: false,
            };
            let (oh, ow) = burn_quantize::kernels::max_pool_output_size(h, w, &pool)?;
            let mut out = vec![0; n * oh * ow * c];
            qmax_pool2d(&x, n, h, w, c, &pool, &mut out)?;
            Ok(to_nchw(&out, [n, c, oh, ow]))
        }
        "avg_pool2d" => {
            let pool = AvgPool2d {
                kernel: square("kernel")?,
                stride: square("stride")?,
                padding: square("padding")?,
                ceil_mode: false,
                count_include_pad: true,
            };
            let (oh, ow) = burn_quantize::kernels::avg_pool_output_size(h, w, &pool)?;
            let mut out = vec![0; n * oh * ow * c];
            qavg_pool2d(&x, n, h, w, c, &pool, qp, qp, &mut out)?;
            Ok(to_nchw(&out, [n, c, oh, ow]))
        }
        "adaptive_avg_pool2d" => {
            let mut out = vec![0; n * c];
            qglobal_avg_pool(&x, n, h, w, c, qp, qp, &mut out)?;
            Ok(out)
        }
        other => Err(format!("unknown op `{other}`").into()),
    }
}

fn dims(shape: &[usize]) -> BoxResult<[usize; 4]> {
    shape
        .try_into()
        .map_err(|_| format!("expected a 4-d tensor, got {shape:?}").into())
}

/// Where element `i` of an NCHW tensor `[n, c, h, w]` lives in the NHWC layout.
fn nhwc_index(i: usize, [_, c, h, w]: [usize; 4]) -> usize {
    let (b, ch, y, x) = (i / (c * h * w), i / (h * w) % c, i / w % h, i % w);
    ((b * h + y) * w + x) * c + ch
}

fn to_nhwc(x: &[u8], dims: [usize; 4]) -> Vec<u8> {
    let mut out = vec![0; x.len()];
    for (i, &v) in x.iter().enumerate() {
        out[nhwc_index(i, dims)] = v;
    }
    out
}

fn to_nchw(x: &[u8], dims: [usize; 4]) -> Vec<u8> {
    (0..x.len()).map(|i| x[nhwc_index(i, dims)]).collect()
}
