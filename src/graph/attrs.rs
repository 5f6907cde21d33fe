//! Sanity checks of op attributes and symbolic sizes, for graphs and programs read from files:
//! what Burn's ops would panic on (a zero stride, a zero slice step, a repeated permutation
//! axis) or what would overflow a size computation, refused with a message naming the field.

use super::{Activation, Conv2dAttrs, Dim, Node, Op, PadMode, Pool2dAttrs};

/// The largest size, padding or coefficient a checked attribute or dimension may hold.
pub const MAX_SIZE: usize = 1 << 31;

impl Dim {
    /// `Err` unless both coefficients lie in `[-MAX_SIZE, MAX_SIZE]` (so sizes at any
    /// realistic batch size are computed without overflow).
    pub fn check(self) -> Result<(), String> {
        let limit = MAX_SIZE as i64;
        if self.batch.abs() > limit || self.fixed.abs() > limit {
            return Err(format!("dimension {self} is out of range"));
        }
        Ok(())
    }
}

impl Node {
    /// Checks the node's attributes, its fused activation and (for a fused element-wise node)
    /// every node of its body; the error names the node.
    pub fn check_attrs(&self) -> Result<(), String> {
        let named = |e: String| format!("node `{}`: {e}", self.name);
        self.op.check_attrs().map_err(named)?;
        if let Some(Activation::Clamp { min, max }) = self.activation
            && !ordered(min, max)
        {
            return Err(named(format!("fused clamp [{min}, {max}]")));
        }
        if let Op::Pointwise { body, .. } = &self.op {
            body.iter().try_for_each(Node::check_attrs).map_err(named)?;
        }
        Ok(())
    }
}

impl Op {
    /// Checks the op's attributes: strides, dilations, windows and groups at least 1, sizes
    /// and paddings at most [`MAX_SIZE`], slice steps not 0, permutations of distinct axes,
    /// finite constants. Ops run by Burn's interpreter (fallbacks) are not checked here.
    pub fn check_attrs(&self) -> Result<(), String> {
        match self {
            Op::Conv2d(a) => check_conv(a),
            Op::MaxPool2d(p) | Op::AvgPool2d { pool: p, .. } => check_pool(p),
            Op::BatchNorm { epsilon } => finite("batch norm epsilon", *epsilon),
            Op::Clamp { min, max } => match (min, max) {
                (Some(lo), Some(hi)) if !ordered(*lo, *hi) => Err(format!("clamp [{lo}, {hi}]")),
                _ => Ok(()),
            },
            Op::AdaptiveAvgPool2d { output } => check_sizes("adaptive pool output", output, 1),
            Op::Reshape { shape } => shape.iter().try_for_each(|d| d.check()),
            Op::Permute { axes } => {
                let mut seen = vec![false; axes.len()];
                for &a in axes {
                    match seen.get_mut(a) {
                        Some(s) if !*s => *s = true,
                        _ => return Err(format!("permutation {axes:?}")),
                    }
                }
                Ok(())
            }
            Op::Pad { padding, mode } => {
                let flat: Vec<usize> = padding.iter().flat_map(|&(a, b)| [a, b]).collect();
                check_sizes("padding", &flat, 0)?;
                match mode {
                    PadMode::Constant(v) if v.is_nan() => Err("pad constant NaN".into()),
                    _ => Ok(()),
                }
            }
            Op::Slice { ranges } => ranges.iter().try_for_each(|r| {
                r.start.check()?;
                r.end.check()?;
                match r.step {
                    0 => Err("slice step 0".into()),
                    s if s.unsigned_abs() > MAX_SIZE => Err(format!("slice step {s}")),
                    _ => Ok(()),
                }
            }),
            Op::Reduce {
                axes: Some(axes), ..
            } => {
                let mut sorted = axes.clone();
                sorted.sort_unstable();
                sorted.dedup();
                if sorted.len() == axes.len() {
                    Ok(())
                } else {
                    Err(format!("reduce axes {axes:?}"))
                }
            }
            _ => Ok(()),
        }
    }
}

fn check_conv(a: &Conv2dAttrs) -> Result<(), String> {
    check_sizes("conv2d stride", &a.stride, 1)?;
    check_sizes("conv2d dilation", &a.dilation, 1)?;
    check_sizes("conv2d groups", &[a.groups], 1)?;
    check_sizes("conv2d padding", &a.padding, 0)
}

fn check_pool(p: &Pool2dAttrs) -> Result<(), String> {
    check_sizes("pool kernel", &p.kernel, 1)?;
    check_sizes("pool stride", &p.stride, 1)?;
    check_sizes("pool dilation", &p.dilation, 1)?;
    check_sizes("pool padding", &p.padding, 0)?;
    if p.padding[0] > p.kernel[0] / 2 || p.padding[1] > p.kernel[1] / 2 {
        return Err(format!(
            "pool padding {:?} is more than half the kernel {:?}",
            p.padding, p.kernel
        ));
    }
    Ok(())
}

/// `Err` unless every value lies in `[min, MAX_SIZE]`.
pub(crate) fn check_sizes(what: &str, values: &[usize], min: usize) -> Result<(), String> {
    match values.iter().find(|&&v| v < min || v > MAX_SIZE) {
        Some(_) => Err(format!(
            "{what} {values:?} (each must be in {min}..={MAX_SIZE})"
        )),
        None => Ok(()),
    }
}

fn finite(what: &str, value: f64) -> Result<(), String> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(format!("{what} {value}"))
    }
}

/// Whether `lo <= hi` with neither NaN.
fn ordered(lo: f64, hi: f64) -> bool {
    lo.partial_cmp(&hi).is_some_and(|o| o.is_le())
}
