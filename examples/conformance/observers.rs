//! `conformance -- observers`: every case of `observers.json` (PyTorch's MinMax, MovingAverage,
//! Histogram and PerChannel observers fed an input in `batches` chunks, then
//! `calculate_qparams()`) against our observers, and the percentile and entropy observers (which
//! PyTorch lacks) beside min-max on the same inputs.

use std::path::Path;

use burn_quantize::observe::{ObserverConfig, ObserverKind, QDType, QParams, QScheme};
use serde_json::Value;

use crate::goldens::{Golden, read_json, read_tensor};

/// Histogram cases must be within this relative scale error ...
const HISTOGRAM_MAX_REL: f64 = 0.005;
/// ... and this zero point difference.
const HISTOGRAM_MAX_ZP: i32 = 1;

type Failure = Box<dyn std::error::Error>;

/// PyTorch's result for one case.
struct Expected {
    scale: Vec<f32>,
    zero_point: Vec<i32>,
}

pub fn run(goldens: &Path) -> Result<bool, Failure> {
    let json = read_json(&goldens.join("observers.json"))?;
    let tensors = goldens.join("observers.safetensors");
    let cases = json["cases"]
        .as_array()
        .ok_or("observers.json: no `cases`")?;

    println!(
        "{:<28} {:<15} {:>3}  {:>14} {:>14} {:>9}  {:>9}  ok",
        "observer", "input", "b", "scale", "pytorch", "rel", "zp"
    );
    let (mut bit_identical, mut zero_point_equal, mut histogram_max_rel) = (0, 0, 0.0f64);
    let mut passed = true;
    for case in cases {
        let name = field_str(case, "observer")?;
        let input_name = field_str(case, "input")?;
        let batches = case["batches"].as_u64().ok_or("case without `batches`")? as usize;
        let axis = case["ch_axis"].as_u64().map(|a| a as usize);
        let config = observer_config(name, axis)?;
        let input = read_tensor(&tensors, input_name)?;
        let ours = observe_in_chunks(&config, &input, batches)?;
        let expected = expected(case)?;

        let scale_identical = ours.scale.len() == expected.scale.len()
            && ours
                .scale
                .iter()
                .zip(&expected.scale)
                .all(|(a, b)| a.to_bits() == b.to_bits());
        let zp_equal = ours.zero_point == expected.zero_point;
        let rel = ours
            .scale
            .iter()
            .zip(&expected.scale)
            .map(|(&a, &b)| ((f64::from(a) - f64::from(b)) / f64::from(b)).abs())
            .fold(0.0, f64::max);
        let zp_diff = ours
            .zero_point
            .iter()
            .zip(&expected.zero_point)
            .map(|(a, b)| (a - b).abs())
            .max()
            .unwrap_or(0);
        let ok = if matches!(config.kind, ObserverKind::Histogram { .. }) {
            histogram_max_rel = histogram_max_rel.max(rel);
            rel <= HISTOGRAM_MAX_REL
                && zp_diff <= HISTOGRAM_MAX_ZP
                && ours.scale.len() == expected.scale.len()
        } else {
            scale_identical && zp_equal
        };
        bit_identical += usize::from(scale_identical);
        zero_point_equal += usize::from(zp_equal);
        passed &= ok;
        println!(
            "{name:<28} {input_name:<15} {batches:>3}  {:>14.8e} {:>14.8e} {rel:>9.2e}  {:>9}  {}",
            ours.scale[0],
            expected.scale[0],
            summary_zero_point(&ours.zero_point, &expected.zero_point),
            if ok { "yes" } else { "NO" }
        );
    }

    print_clipping_observers(&tensors)?;
    println!(
        "observer conformance: cases={} scale_bit_identical={bit_identical} zero_point_equal={zero_point_equal} histogram_max_rel={histogram_max_rel:.3e}",
        cases.len()
    );
    Ok(passed)
}

/// The config for a case name such as `minmax_quint8_affine_rr` or `perchannel_qint8_symmetric`.
fn observer_config(name: &str, axis: Option<usize>) -> Result<ObserverConfig, Failure> {
    let parts: Vec<&str> = name.split('_').collect();
    let (kind, dtype, scheme, rest) = match parts.as_slice() {
        [kind, dtype, scheme, rest @ ..] => (*kind, *dtype, *scheme, rest),
        _ => return Err(format!("observer name `{name}`").into()),
    };
    let kind = match kind {
        "minmax" => ObserverKind::MinMax,
        "movavg" => ObserverKind::MovingAverageMinMax {
            averaging_constant: 0.01,
        },
        "hist" => ObserverKind::Histogram { bins: 2048 },
        "perchannel" => ObserverKind::PerChannelMinMax,
        other => return Err(format!("observer kind `{other}` in `{name}`").into()),
    };
    let dtype = match dtype {
        "quint8" => QDType::QUInt8,
        "qint8" => QDType::QInt8,
        other => return Err(format!("dtype `{other}` in `{name}`").into()),
    };
    let scheme = match (scheme, axis) {
        ("affine", None) => QScheme::PerTensorAffine,
        ("symmetric", None) => QScheme::PerTensorSymmetric,
        ("affine", Some(axis)) => QScheme::PerChannelAffine { axis },
        ("symmetric", Some(axis)) => QScheme::PerChannelSymmetric { axis },
        (other, _) => return Err(format!("scheme `{other}` in `{name}`").into()),
    };
    let reduce_range = match rest {
        [] => false,
        ["rr"] => true,
        _ => return Err(format!("observer name `{name}`").into()),
    };
    Ok(ObserverConfig {
        kind,
        dtype,
        scheme,
        reduce_range,
    })
}

/// Feeds `input` in `torch.chunk(input, batches, dim=0)` pieces and returns the qparams.
fn observe_in_chunks(
    config: &ObserverConfig,
    input: &Golden,
    batches: usize,
) -> Result<QParams, Failure> {
    let mut observer = config.build()?;
    let rows = input.shape[0];
    let row_len: usize = input.shape[1..].iter().product();
    let chunk_rows = rows.div_ceil(batches);
    for (i, chunk) in input.values.chunks(chunk_rows * row_len).enumerate() {
        let mut shape = input.shape.clone();
        shape[0] = chunk.len() / row_len;
        observer
            .observe(chunk, &shape)
            .map_err(|e| format!("batch {i}: {e}"))?;
    }
    Ok(observer.qparams()?)
}

/// PyTorch's scale (from the f32 hex bits) and zero point, one entry or one per channel.
fn expected(case: &Value) -> Result<Expected, Failure> {
    let scale_bits = |v: &Value| -> Result<f32, Failure> {
        let hex = v.as_str().ok_or("scale_f32_hex is not a string")?;
        let bytes = u32::from_str_radix(hex, 16)?.to_be_bytes();
        Ok(f32::from_le_bytes(bytes))
    };
    let zero_point =
        |v: &Value| -> Result<i32, Failure> { Ok(v.as_i64().ok_or("zero_point")? as i32) };
    Ok(match (&case["scale_f32_hex"], &case["zero_point"]) {
        (Value::Array(scales), Value::Array(zps)) => Expected {
            scale: scales.iter().map(scale_bits).collect::<Result<_, _>>()?,
            zero_point: zps.iter().map(zero_point).collect::<Result<_, _>>()?,
        },
        (scale, zp) => Expected {
            scale: vec![scale_bits(scale)?],
            zero_point: vec![zero_point(zp)?],
        },
    })
}

/// `133` for one zero point, `-128.. (10 ch)` for many; `ours/theirs` when they differ.
fn summary_zero_point(ours: &[i32], expected: &[i32]) -> String {
    let show = |zps: &[i32]| {
        if zps.len() == 1 {
            zps[0].to_string()
        } else {
            format!("{}..({})", zps[0], zps.len())
        }
    };
    if ours == expected {
        show(ours)
    } else {
        format!("{}/{}", show(ours), show(expected))
    }
}

fn field_str<'a>(case: &'a Value, key: &str) -> Result<&'a str, Failure> {
    case[key]
        .as_str()
        .ok_or_else(|| format!("case without `{key}`").into())
}

/// Our two observers without a PyTorch counterpart, beside min-max, on the golden activations:
/// the ranges they pick (informational; no bar).
fn print_clipping_observers(tensors: &Path) -> Result<(), Failure> {
    println!("\nclipping observers (no PyTorch counterpart), quint8 affine, ranges:");
    println!(
        "{:<15} {:>22} {:>22} {:>22}",
        "input", "minmax", "percentile 99.9", "entropy"
    );
    for input_name in ["in.normal", "in.relu_like", "in.outliers", "in.skewed"] {
        let input = read_tensor(tensors, input_name)?;
        let mut cells = Vec::new();
        for config in [
            ObserverConfig::min_max(false),
            ObserverConfig::percentile(99.9, false),
            ObserverConfig::entropy(false),
        ] {
            let params = observe_in_chunks(&config, &input, 4)?;
            let (scale, zp) = (params.scale[0], params.zero_point[0]);
            let lo = scale * (params.quant_min - zp) as f32;
            let hi = scale * (params.quant_max - zp) as f32;
            cells.push(format!("[{lo:>8.3}, {hi:>8.3}]"));
        }
        println!(
            "{input_name:<15} {:>22} {:>22} {:>22}",
            cells[0], cells[1], cells[2]
        );
    }
    println!();
    Ok(())
}
