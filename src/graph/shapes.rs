//! Shapes symbolic in the batch size, shared by every program over values: the float
//! [`Graph`](super::Graph) and the quantized program. Sizes other than the batch are inferred
//! per run (`infer::RunShapes`).

use super::{BatchMode, Dim, ValueId, ValueInfo};
use crate::{Error, Result};

/// A program whose values have symbolic shapes and whose inputs fix the batch size.
pub trait ValueShapes {
    /// Information about a value.
    fn value_info(&self, id: ValueId) -> &ValueInfo;
    /// The runtime inputs.
    fn input_ids(&self) -> &[ValueId];
    /// Whether the program runs at any batch size.
    fn batch_mode(&self) -> &BatchMode;

    /// The concrete shape of value `id` at batch size `n`.
    fn shape_at(&self, id: ValueId, n: usize) -> Result<Vec<usize>> {
        self.value_info(id)
            .shape
            .iter()
            .map(|d| {
                d.at(n).ok_or_else(|| Error::Shape {
                    context: format!("value {id}"),
                    expected: "a non-negative size".into(),
                    got: format!("{d} at N={n}"),
                })
            })
            .collect()
    }

    /// Finds the batch size `N` at which `input_shapes` (one per graph input) match the graph's
    /// input shapes, or an error naming the first mismatch.
    fn batch_size_of(&self, input_shapes: &[Vec<usize>]) -> Result<usize> {
        if input_shapes.len() != self.input_ids().len() {
            return Err(Error::Shape {
                context: "graph inputs".into(),
                expected: format!("{} input(s)", self.input_ids().len()),
                got: format!("{}", input_shapes.len()),
            });
        }
        let n = self.solve_batch(input_shapes)?;
        if let BatchMode::Fixed { size, reason } = self.batch_mode()
            && n != *size
        {
            return Err(Error::Shape {
                context: "graph input batch".into(),
                expected: format!("batch size {size} (the graph is fixed to it: {reason})"),
                got: format!("batch size {n}"),
            });
        }
        // Only the rank and the batch-dependent sizes are fixed here; every other size is free,
        // and each op checks what it reads (see `RunShapes`).
        for (&id, got) in self.input_ids().iter().zip(input_shapes) {
            let expected = self.shape_at(id, n)?;
            let fits = expected.len() == got.len()
                && (self.value_info(id).shape.iter().zip(&expected).zip(got))
                    .all(|((d, e), g)| d.is_fixed() || e == g);
            if !fits {
                return Err(Error::Shape {
                    context: format!("graph input {id}"),
                    expected: format!(
                        "rank {} like {:?} (symbolic {}; sizes other than N may differ)",
                        expected.len(),
                        expected,
                        self.shape_text(id)
                    ),
                    got: format!("{got:?}"),
                });
            }
        }
        Ok(n)
    }

    /// The batch size at which the inputs' batch-dependent dimensions take these sizes.
    fn solve_batch(&self, input_shapes: &[Vec<usize>]) -> Result<usize> {
        for (&id, got) in self.input_ids().iter().zip(input_shapes) {
            let dims = &self.value_info(id).shape;
            for (d, &g) in dims.iter().zip(got) {
                if d.batch != 0 {
                    let n = (g as i64 - d.fixed) / d.batch;
                    if n >= 1 && d.at(n as usize) == Some(g) {
                        return Ok(n as usize);
                    }
                    return Err(Error::Shape {
                        context: format!("graph input {id}"),
                        expected: self.shape_text(id),
                        got: format!("{got:?}"),
                    });
                }
            }
        }
        // No input dimension depends on the batch: any N gives the same graph.
        Ok(match self.batch_mode() {
            BatchMode::Fixed { size, .. } => *size,
            BatchMode::Free => 1,
        })
    }

    /// A value's symbolic shape as text, e.g. `[N, 64, 56, 56]`.
    fn shape_text(&self, id: ValueId) -> String {
        let dims: Vec<String> = self
            .value_info(id)
            .shape
            .iter()
            .map(Dim::to_string)
            .collect();
        format!("[{}]", dims.join(", "))
    }
}
