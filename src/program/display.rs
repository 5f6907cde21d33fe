//! The text of a program's values and steps, for the quantized model's listing (PyTorch's
//! `print(quantized_model)`, one step per line): every value's domain (`u8` with its scale and
//! zero point, or `f32`), shape, and the layer each step runs.
//!
//! ```text
//! quantized(%0: f32[N, 1, 28, 28]) -> (%52: f32[N, 10])
//!   %53: u8[N, 1, 28, 28] (scale=0.02800 zp=10) = quantize(%0)
//!   %54: u8[N, 32, 28, 28] (scale=0.03104 zp=0) = QConv2d+relu[1->32 3x3 stride=1x1 pad=1,1,1,1](%53)  # stem.conv
//! ```

use super::{Domain, QuantizedProgram, Step};
use crate::graph::{Activation, ValueId, ValueShapes};
use crate::kernels::Conv2dGeometry;

/// `3->32 3x3 stride=2x2 pad=0,0,1,1` (and `dilation`, `groups` when not 1).
fn geometry(g: &Conv2dGeometry) -> String {
    let mut text = format!(
        "{}->{} {}x{} stride={}x{} pad={},{},{},{}",
        g.in_channels,
        g.out_channels,
        g.kernel[0],
        g.kernel[1],
        g.stride[0],
        g.stride[1],
        g.padding[0],
        g.padding[1],
        g.padding[2],
        g.padding[3]
    );
    if g.dilation != [1, 1] {
        text += &format!(" dilation={}x{}", g.dilation[0], g.dilation[1]);
    }
    if g.groups != 1 {
        text += &format!(" groups={}", g.groups);
    }
    text
}

/// A pooling window: `3x3 stride=2x2 pad=1,1`.
fn window(kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> String {
    format!(
        "{}x{} stride={}x{} pad={},{}",
        kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1]
    )
}

impl QuantizedProgram {
    /// `%3: u8[N, 64, 56, 56] (scale=0.01234 zp=0)` or `%3: f32[N, 1000]`.
    pub(crate) fn typed(&self, id: ValueId) -> String {
        match self.domains[id.index()] {
            Domain::Int8(q) => format!(
                "{id}: u8{} (scale={:.5} zp={})",
                self.shape_text(id),
                q.scale,
                q.zero_point
            ),
            Domain::Float => format!("{id}: f32{}", self.shape_text(id)),
        }
    }

    /// A step's outputs, its call text (`QConv2d+relu[...](%3)`) and the name of its layer or node.
    pub(crate) fn describe<'a>(
        &'a self,
        step: &'a Step,
    ) -> (Vec<ValueId>, String, Option<&'a str>) {
        let ids = |ids: &[ValueId]| -> String {
            ids.iter()
                .map(ValueId::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let fused = |a: Option<Activation>| a.map(|a| format!("+{a}")).unwrap_or_default();
        let table = |spec: &crate::nn::QLayerSpec| match spec.table {
            Some(_) => "+table",
            None => "",
        };
        match step {
            Step::Quantize { input, output } => (vec![*output], format!("quantize({input})"), None),
            Step::Dequantize { input, output } => {
                (vec![*output], format!("dequantize({input})"), None)
            }
            Step::Conv2d {
                layer,
                input,
                output,
            } => {
                let l = &self.convs[*layer];
                let call = format!(
                    "QConv2d{}{}[{}]({input})",
                    fused(l.spec.activation),
                    table(&l.spec),
                    geometry(&l.geometry)
                );
                (vec![*output], call, Some(&l.name))
            }
            Step::Linear {
                layer,
                input,
                output,
            } => {
                let l = &self.linears[*layer];
                let call = format!(
                    "QLinear{}{}[{}->{}]({input})",
                    fused(l.spec.activation),
                    table(&l.spec),
                    l.in_features,
                    l.out_features
                );
                (vec![*output], call, Some(&l.name))
            }
            Step::Binary {
                op,
                inputs,
                output,
                relu,
            } => {
                let relu = if *relu { "+relu" } else { "" };
                (
                    vec![*output],
                    format!("{}{relu}({})", op.name(), ids(inputs)),
                    None,
                )
            }
            Step::Table {
                name,
                input,
                output,
                ..
            } => (vec![*output], format!("table[{name}]({input})"), None),
            Step::Pad {
                padding,
                value,
                input,
                output,
            } => (
                vec![*output],
                format!("pad[{padding:?}, {value}]({input})"),
                None,
            ),
            Step::Cat { inputs, output } => (vec![*output], format!("cat({})", ids(inputs)), None),
            Step::MaxPool2d {
                pool,
                input,
                output,
            } => (
                vec![*output],
                format!(
                    "max_pool2d[{}]({input})",
                    window(pool.kernel, pool.stride, pool.padding)
                ),
                None,
            ),
            Step::AvgPool2d {
                pool,
                input,
                output,
            } => (
                vec![*output],
                format!(
                    "avg_pool2d[{}]({input})",
                    window(pool.kernel, pool.stride, pool.padding)
                ),
                None,
            ),
            Step::GlobalAvgPool { input, output } => {
                (vec![*output], format!("global_avg_pool({input})"), None)
            }
            Step::Clamp {
                input,
                output,
                min,
                max,
            } => (
                vec![*output],
                format!("clamp[{min}..={max}]({input})"),
                None,
            ),
            Step::Reshape { input, output } => (vec![*output], format!("reshape({input})"), None),
            Step::Float(node) => (
                node.outputs.clone(),
                format!(
                    "float {}{}({})",
                    node.op.kind(),
                    fused(node.activation),
                    ids(&node.inputs)
                ),
                Some(&node.name),
            ),
        }
    }
}
