//! Float steps the quantized interpreter runs on the crate's vectorised kernels, on host
//! values, rather than through Burn (whose CPU backend computes `erf` and `exp` one value at a
//! time): GELU, and softmax along the last axis — the float ops between the int8 layers of a
//! dynamically quantized transformer.

use crate::graph::{Node, Op, ValueId};
use crate::{Result, kernels};

/// An activation the kernels run.
#[derive(Clone, Copy, Debug)]
pub(super) enum ActivationKernel {
    /// [`kernels::gelu`].
    Gelu,
    /// [`kernels::softmax_last_axis`] of rows of this many values.
    Softmax(usize),
}

impl ActivationKernel {
    /// The kernel that runs `node` (GELU, or softmax along the last axis, of one input,
    /// without a fused activation) and its input's shape, read with `shape_of` only for such a
    /// node; `None` for any other node.
    pub(super) fn of<'a>(
        node: &Node,
        shape_of: impl FnOnce(ValueId) -> Result<&'a [usize]>,
    ) -> Result<Option<(Self, &'a [usize])>> {
        let ([input], [_]) = (&node.inputs[..], &node.outputs[..]) else {
            return Ok(None);
        };
        Ok(match node.op {
            _ if node.activation.is_some() => None,
            Op::Gelu => Some((ActivationKernel::Gelu, shape_of(*input)?)),
            Op::Softmax { axis } => {
                let shape = shape_of(*input)?;
                (axis + 1 == shape.len()).then(|| (ActivationKernel::Softmax(shape[axis]), shape))
            }
            _ => None,
        })
    }

    /// Runs the kernel on `values` in place.
    pub(super) fn run(self, values: &mut [f32]) -> Result<()> {
        match self {
            ActivationKernel::Gelu => kernels::gelu(values),
            ActivationKernel::Softmax(row_len) => kernels::softmax_last_axis(values, row_len)?,
        }
        Ok(())
    }
}
