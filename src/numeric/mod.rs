//! The numeric suite: the float model and the int8 model compared layer by layer (PyTorch's
//! `torch.ao.ns` `compare_model_outputs` and `compare_weights`).
//!
//! ```no_run
//! # use burn::prelude::*;
//! # use burn_quantize::{quantized::QuantizedModel, prepare::PreparedModel};
//! # fn run(prepared: &PreparedModel, qmodel: &QuantizedModel, images: Tensor<4>) -> burn_quantize::Result<()> {
//! use burn_quantize::numeric;
//! let layers = numeric::compare_activations::<4, 2>(prepared, qmodel, images)?;
//! for layer in layers.iter().filter(|l| l.sqnr_db < 25.0) {
//!     println!("{layer}");    // node, op, SQNR, cosine, max error
//! }
//! let weights = numeric::compare_weights(prepared, qmodel)?;
//! # Ok(()) }
//! ```

mod precision;

use std::collections::HashMap;
use std::fmt;

use burn::tensor::Tensor;

use crate::Result;
use crate::exec::{FloatExecutor, RunValue, nc_plane};
use crate::graph::{ValueId, ValueShapes};
use crate::kernels;
use crate::ops::float_values;
use crate::prepare::PreparedModel;
use crate::program::{Domain, QuantizedProgram};
use crate::quantized::QuantizedModel;

pub use precision::{
    Budget, Higher, NodeSensitivity, PrecisionChoice, Score, SensitivityTable, auto_precision,
    sensitivity,
};

/// How far one quantized tensor is from its float counterpart.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// The node that makes the tensor (its layer's module path for layers).
    pub node: String,
    /// The node's op (`conv2d+relu`, `add`, ...).
    pub op: String,
    /// Signal-to-quantization-noise ratio in dB: `10·log10(Σ f² / Σ (f − q)²)` (infinite when
    /// they are equal).
    pub sqnr_db: f64,
    /// Cosine similarity of the two tensors (1 when both are zero, 0 when only one is).
    pub cosine: f64,
    /// Largest absolute difference.
    pub max_abs: f32,
    /// How many values were compared.
    pub values: usize,
}

impl Comparison {
    /// Compares `float` with `quantized` (same length, same order).
    pub fn new(node: String, op: String, float: &[f32], quantized: &[f32]) -> Self {
        let (mut signal, mut noise, mut dot, mut qq, mut max_abs) = (0f64, 0f64, 0f64, 0f64, 0f32);
        for (&f, &q) in float.iter().zip(quantized) {
            let (f64f, f64q) = (f64::from(f), f64::from(q));
            signal += f64f * f64f;
            noise += (f64f - f64q).powi(2);
            dot += f64f * f64q;
            qq += f64q * f64q;
            max_abs = max_abs.max((f - q).abs());
        }
        let sqnr_db = if noise == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (signal / noise).log10()
        };
        let cosine = match (signal == 0.0, qq == 0.0) {
            (true, true) => 1.0,
            (true, false) | (false, true) => 0.0,
            (false, false) => dot / (signal.sqrt() * qq.sqrt()),
        };
        Comparison {
            node,
            op,
            sqnr_db,
            cosine,
            max_abs,
            values: float.len(),
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<28} {:<22} sqnr {:>7.2} dB  cos {:.6}  max_abs {:.4e}  ({} values)",
            self.node, self.op, self.sqnr_db, self.cosine, self.max_abs, self.values
        )
    }
}

/// Runs the prepared float model and the int8 model on `input` and compares every int8
/// activation with its float counterpart, in execution order.
pub fn compare_activations<const DI: usize, const DO: usize>(
    prepared: &PreparedModel,
    qmodel: &QuantizedModel,
    input: Tensor<DI>,
) -> Result<Vec<Comparison>> {
    let graph = prepared.graph();
    let float = FloatExecutor::new(graph, &input.device())?;
    let mut float_out: HashMap<ValueId, Vec<f32>> = HashMap::new();
    float.run_observed(vec![input.clone().into_dispatch()], &mut |node, outputs| {
        for (&id, t) in node.outputs.iter().zip(outputs) {
            float_out.insert(id, float_values::<f32>(t.clone())?);
        }
        Ok(())
    })?;
    let program = qmodel.program();
    let node_of: HashMap<ValueId, usize> = graph
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.outputs.iter().map(move |&o| (o, i)))
        .collect();
    let n = input.dims()[0];
    let mut comparisons = Vec::new();
    qmodel.forward_observed::<DI, DO>(input, &mut |id, value| {
        let (Some(&i), Some(f)) = (node_of.get(&id), float_out.get(&id)) else {
            return Ok(());
        };
        let Some(deq) = dequantized(program, id, value, n)? else {
            return Ok(());
        };
        let report = &program.report[i];
        comparisons.push(Comparison::new(
            report.name.clone(),
            report.op.clone(),
            f,
            &deq,
        ));
        Ok(())
    })?;
    Ok(comparisons)
}

/// The float values of quantized run value `id` (`None` for a float value), NCHW for images.
fn dequantized(
    program: &QuantizedProgram,
    id: ValueId,
    value: &RunValue,
    batch: usize,
) -> Result<Option<Vec<f32>>> {
    let shape = program.shape_at(id, batch)?;
    Ok(match (value, program.domains[id.index()]) {
        (RunValue::Int8(q), Domain::Int8(qp)) => {
            let mut deq = vec![0f32; q.len()];
            match shape[..] {
                [n, c, h, w] => kernels::dequantize_nhwc_to_nchw(q, n, h, w, c, qp, &mut deq)?,
                _ => kernels::dequantize(q, qp, &mut deq)?,
            }
            Some(deq)
        }
        (RunValue::Int16(q), Domain::Int16(qp)) => {
            let mut deq = vec![0f32; q.len()];
            kernels::dequantize_wide(q, nc_plane(&shape), qp, &mut deq)?;
            Some(deq)
        }
        _ => None,
    })
}

/// Compares every int8 layer's dequantized weights (`s_w · q_w`) with the float weights it was
/// made from (after BatchNorm folding).
pub fn compare_weights(
    prepared: &PreparedModel,
    qmodel: &QuantizedModel,
) -> Result<Vec<Comparison>> {
    let graph = prepared.graph();
    let float_weight = |name: &str| -> Option<Vec<f32>> {
        let node = graph.nodes.iter().find(|n| n.name == name)?;
        Some(
            graph
                .tensors
                .get(node.inputs.get(1)?)?
                .iter::<f32>()
                .collect(),
        )
    };
    let mut comparisons = Vec::new();
    for (layer, conv) in qmodel.program().convs.iter().zip(&qmodel.layers().convs) {
        let (Some(f), w) = (float_weight(&layer.name), conv.weights()?) else {
            continue;
        };
        comparisons.push(Comparison::new(
            layer.name.clone(),
            "conv2d weight".into(),
            &f,
            &w.dequantized(),
        ));
    }
    for (layer, linear) in qmodel
        .program()
        .linears
        .iter()
        .zip(&qmodel.layers().linears)
    {
        let (Some(f), w) = (float_weight(&layer.name), linear.weights()?) else {
            continue;
        };
        let deq = w.dequantized_linear_burn_layout(layer.out_features);
        comparisons.push(Comparison::new(
            layer.name.clone(),
            "linear weight".into(),
            &f,
            &deq,
        ));
    }
    Ok(comparisons)
}

#[cfg(test)]
mod tests {
    use super::Comparison;

    #[test]
    fn comparison_figures_and_their_edge_cases() {
        let c = |f: &[f32], q: &[f32]| Comparison::new("n".into(), "op".into(), f, q);
        let same = c(&[1.0, -2.0], &[1.0, -2.0]);
        assert_eq!((same.sqnr_db, same.max_abs), (f64::INFINITY, 0.0));
        assert!((same.cosine - 1.0).abs() < 1e-12);
        let off = c(&[3.0, 4.0], &[3.0, 3.0]);
        assert!((off.sqnr_db - 10.0 * 25f64.log10()).abs() < 1e-12);
        assert!((off.cosine - 21.0 / (5.0 * 18f64.sqrt())).abs() < 1e-12);
        assert_eq!(off.max_abs, 1.0);
        // Zero tensors: alike only when both are zero.
        assert_eq!(c(&[0.0, 0.0], &[0.0, 0.0]).cosine, 1.0);
        assert_eq!(c(&[0.0, 0.0], &[1.0, 0.0]).cosine, 0.0);
        assert_eq!(c(&[1.0, 0.0], &[0.0, 0.0]).cosine, 0.0);
    }
}
