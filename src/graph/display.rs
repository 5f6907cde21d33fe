//! A readable listing of a graph, one node per line (PyTorch's `print(model.graph)`).
//!
//! ```text
//! graph(%0: f32[N, 3, 224, 224]) -> (%57: f32[N, 1000])
//!   %10: f32[N, 64, 112, 112] = conv2d[stride=2x2 pad=3,3,3,3](%0, conv1.weight)  # conv1 (Conv2d)
//!   %11: f32[N, 64, 112, 112] = relu(%10)  # relu_1
//! ```

use std::fmt;

use super::{Graph, Op, PadMode, ValueId, ValueKind, ValueShapes};

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let typed = |ids: &[ValueId]| -> String {
            let items: Vec<String> = ids.iter().map(|&id| self.typed(id)).collect();
            items.join(", ")
        };
        writeln!(
            f,
            "graph({}) -> ({})",
            typed(&self.inputs),
            typed(&self.outputs)
        )?;
        for node in &self.nodes {
            let outs: Vec<String> = node.outputs.iter().map(|&id| self.typed(id)).collect();
            let ins: Vec<String> = node.inputs.iter().map(|&id| self.operand(id)).collect();
            let attrs = attributes(&node.op);
            let attrs = if attrs.is_empty() {
                String::new()
            } else {
                format!("[{attrs}]")
            };
            let fused = node.activation.map(|a| format!("+{a}")).unwrap_or_default();
            write!(
                f,
                "  {} = {}{fused}{attrs}({})",
                outs.join(", "),
                node.op.kind(),
                ins.join(", ")
            )?;
            match &node.module {
                Some(m) => writeln!(f, "  # {} ({})", node.name, m.layer)?,
                None => writeln!(f, "  # {}", node.name)?,
            }
        }
        if let super::BatchMode::Fixed { size, reason } = &self.batch {
            writeln!(f, "  (batch size fixed to {size}: {reason})")?;
        }
        Ok(())
    }
}

impl Graph {
    /// `%3: f32[N, 64, 56, 56]`
    fn typed(&self, id: ValueId) -> String {
        let dtype = format!("{:?}", self.value(id).dtype).to_lowercase();
        format!("{id}: {dtype}{}", self.shape_text(id))
    }

    /// A parameter by its module path, anything else by its id.
    fn operand(&self, id: ValueId) -> String {
        match &self.value(id).kind {
            ValueKind::Parameter(p) => p.path(),
            ValueKind::Constant => format!("{id}(const{})", self.shape_text(id)),
            _ => id.to_string(),
        }
    }
}

/// The op's attributes as `key=value` pairs.
fn attributes(op: &Op) -> String {
    let pair = |a: [usize; 2]| format!("{}x{}", a[0], a[1]);
    let list = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    match op {
        Op::Conv2d(c) => format!(
            "stride={} pad={} dilation={} groups={}",
            pair(c.stride),
            list(&c.padding),
            pair(c.dilation),
            c.groups
        ),
        Op::BatchNorm { epsilon } => format!("eps={epsilon}"),
        Op::Clamp { min, max } => {
            let b = |v: &Option<f64>| v.map_or("-".to_string(), |v| v.to_string());
            format!("min={} max={}", b(min), b(max))
        }
        Op::Softmax { axis } | Op::Cat { axis } => format!("axis={axis}"),
        Op::Scalar { value, .. } => format!("value={}", value.elem::<f64>()),
        Op::MaxPool2d(p) => format!(
            "kernel={} stride={} pad={} dilation={}{}",
            pair(p.kernel),
            pair(p.stride),
            pair(p.padding),
            pair(p.dilation),
            if p.ceil_mode { " ceil" } else { "" }
        ),
        Op::AvgPool2d {
            pool: p,
            count_include_pad,
        } => format!(
            "kernel={} stride={} pad={}{}{}",
            pair(p.kernel),
            pair(p.stride),
            pair(p.padding),
            if p.ceil_mode { " ceil" } else { "" },
            if *count_include_pad { " count_pad" } else { "" }
        ),
        Op::AdaptiveAvgPool2d { output } => format!("output={}", pair(*output)),
        Op::Reduce {
            axes: Some(axes), ..
        } => format!("axes={}", list(axes)),
        Op::Reshape { shape } => {
            format!(
                "shape={}",
                shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }
        Op::Permute { axes } => format!("axes={}", list(axes)),
        Op::Pad { padding, mode } => {
            let pads: Vec<String> = padding.iter().map(|(a, b)| format!("{a}+{b}")).collect();
            let mode = match mode {
                PadMode::Constant(v) => format!("constant {v}"),
                PadMode::Reflect => "reflect".into(),
                PadMode::Edge => "edge".into(),
            };
            format!("pad={} mode={mode}", pads.join(","))
        }
        Op::Slice { ranges } => ranges
            .iter()
            .map(|r| {
                if r.step == 1 {
                    format!("{}..{}", r.start, r.end)
                } else {
                    format!("{}..{};{}", r.start, r.end, r.step)
                }
            })
            .collect::<Vec<_>>()
            .join(","),
        _ => String::new(),
    }
}
