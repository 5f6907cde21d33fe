//! Float steps the quantized interpreter runs on the crate's vectorised kernels, on host
//! values, rather than through Burn (whose CPU backend computes `erf` and `exp` one value at a
//! time): GELU, and softmax along the last axis — the float ops between the int8 layers of a
//! dynamically quantized transformer.

use crate::graph::{Node, Op};
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
    /// The kernel that runs `node`, of one input of shape `shape`: GELU, or softmax along the
    /// last axis, without a fused activation; `None` for any other node.
    pub(super) fn of(node: &Node, shape: &[usize]) -> Option<Self> {
        if node.inputs.len() != 1 || node.outputs.len() != 1 || node.activation.is_some() {
            return None;
        }
        match node.op {
            Op::Gelu => Some(ActivationKernel::Gelu),
            Op::Softmax { axis } if axis + 1 == shape.len() => {
                Some(ActivationKernel::Softmax(shape[axis]))
            }
            _ => None,
        }
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
