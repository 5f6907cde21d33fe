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
    /// `%3: u8[N, 64, 56, 56] (scale=0.01234 zp=0)`, `%4: u16[..] (..)` or `%3: f32[N, 1000]`.
    pub(crate) fn typed(&self, id: ValueId) -> String {
        match self.domains[id.index()] {
            Domain::Int8(q) => format!(
                "{id}: u8{} (scale={:.5} zp={})",
                self.shape_text(id),
                q.scale,
                q.zero_point
            ),
            Domain::Int16(q) => format!(
                "{id}: u16{} (scale={:.7} zp={})",
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
        let table = |spec: &crate::nn::QLayerSpec| match spec.table {
            Some(_) => "+table",
            None => "",
        };
        let (call, name) = match step {
            Step::Conv2d { layer, input, .. } => {
                let l = &self.convs[*layer];
                let call = format!(
                    "QConv2d{}{}[{}]({input})",
                    fused(l.spec.activation),
                    table(&l.spec),
                    geometry(&l.geometry)
                );
                (call, Some(l.name.as_str()))
            }
            Step::Linear { layer, input, .. } => {
                let l = &self.linears[*layer];
                let call = format!(
                    "QLinear{}{}[{}->{}]({input})",
                    fused(l.spec.activation),
                    table(&l.spec),
                    l.in_features,
                    l.out_features
                );
                (call, Some(l.name.as_str()))
            }
            Step::DynamicLinear { layer, input, .. } => {
                let l = &self.dynamic_linears[*layer];
                let (k, n) = (l.in_features, l.out_features);
                let call = format!("QDynamicLinear[{k}->{n}]({input})");
                (call, Some(l.name.as_str()))
            }
            Step::Float(node) => {
                let (kind, act) = (node.op.kind(), fused(node.activation));
                let call = format!("float {kind}{act}({})", ids(&node.inputs));
                (call, Some(node.name.as_str()))
            }
            other => (glue_call(other), None),
        };
        (step.outputs().to_vec(), call, name)
    }
}

/// `+relu` for a fused activation, or nothing.
fn fused(activation: Option<Activation>) -> String {
    activation.map(|a| format!("+{a}")).unwrap_or_default()
}

/// `%1, %2`.
fn ids(ids: &[ValueId]) -> String {
    ids.iter()
        .map(ValueId::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The call text of an int8 step that has no layer and no name (`max_pool2d[...](%3)`).
fn glue_call(step: &Step) -> String {
    match step {
        Step::Quantize { input, .. } => format!("quantize({input})"),
        Step::Dequantize { input, .. } => format!("dequantize({input})"),
        Step::Binary {
            op, inputs, relu, ..
        } => {
            let relu = if *relu { "+relu" } else { "" };
            format!("{}{relu}({})", op.name(), ids(inputs))
        }
        Step::Table { name, input, .. } => format!("table[{name}]({input})"),
        Step::Pad {
            padding,
            value,
            input,
            ..
        } => format!("pad[{padding:?}, {value}]({input})"),
        Step::Cat { inputs, .. } => format!("cat({})", ids(inputs)),
        Step::MaxPool2d { pool, input, .. } => format!(
            "max_pool2d[{}]({input})",
            window(pool.kernel, pool.stride, pool.padding)
        ),
        Step::AvgPool2d { pool, input, .. } => format!(
            "avg_pool2d[{}]({input})",
            window(pool.kernel, pool.stride, pool.padding)
        ),
        Step::GlobalAvgPool { input, .. } => format!("global_avg_pool({input})"),
        Step::Clamp {
            input, min, max, ..
        } => format!("clamp[{min}..={max}]({input})"),
        Step::Reshape { input, .. } => format!("reshape({input})"),
        // Described by `QuantizedProgram::describe` with their layer or node.
        Step::Conv2d { .. } | Step::Linear { .. } | Step::DynamicLinear { .. } | Step::Float(_) => {
            format!("{step:?}")
        }
    }
}
