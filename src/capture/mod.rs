//! Capture: run a model's forward once on Burn's capture device and turn what it records into
//! our [`Graph`], with every parameter named by its module path.
//!
//! ```no_run
//! use burn::prelude::*;
//! use burn_quantize::{Forward, Graph, models::ResNet};
//!
//! let device = Device::default();
//! let model = ResNet::resnet18(1000, &device);
//! let sample = Tensor::<4>::zeros([2, 3, 224, 224], &device);
//! let graph = Graph::capture(&model, &sample)?;     // ResNet implements Forward<4, 2>
//! println!("{graph}");
//! // Or with any closure, for models with another forward signature:
//! let graph = Graph::capture_with(&model, |m, x| m.forward(x), &sample)?;
//! # Ok::<(), burn_quantize::Error>(())
//! ```
//!
//! The user's model is neither consumed nor changed: capture works on an evaluation copy
//! (`Module::valid`, which also gives BatchNorm fresh running-state handles, so moving the copy
//! to the capture device cannot move the original's state).
//!
//! The forward is captured at the sample's batch size `n` (2 for a sample of 1) and at `n + 1`,
//! and the two graphs are merged into one whose shapes are symbolic in the batch size (see
//! [`Dim`](crate::graph::Dim)).

mod paths;
mod tensors;

pub use tensors::Tensors;

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::backend::capture::CapturedGraph;
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use crate::graph::{self, Graph, ParamRef, lower::Recorded, passes};
use crate::{Error, Result};

/// A model whose forward takes one tensor of rank `DI` and returns one of rank `DO`.
///
/// Implement it once for your model (usually by calling your inherent `forward`) to use the
/// one-call APIs; or pass a closure to [`Graph::capture_with`] instead.
pub trait Forward<const DI: usize, const DO: usize>: Module {
    /// Runs the model.
    fn forward(&self, input: Tensor<DI>) -> Tensor<DO>;
}

impl Graph {
    /// Captures `model`'s [`Forward`] on `sample` (any batch size ≥ 1) into a batch-free graph.
    pub fn capture<M, const DI: usize, const DO: usize>(
        model: &M,
        sample: &Tensor<DI>,
    ) -> Result<Graph>
    where
        M: Forward<DI, DO>,
    {
        Self::capture_with(model, |m: &M, x| m.forward(x), sample)
    }

    /// Captures `forward(model, inputs)` on `sample` into a batch-free graph. The inputs and
    /// outputs are one tensor or a tuple of tensors ([`Tensors`]), every input with the batch
    /// on its first axis (the same batch size for all).
    pub fn capture_with<M, F, I, O>(model: &M, forward: F, sample: &I) -> Result<Graph>
    where
        M: Module,
        I: Tensors,
        O: Tensors,
        F: Fn(&M, I) -> O,
    {
        let datas = sample.to_datas();
        // Burn takes other paths at batch size 1 for some ops (a Linear layer multiplies a
        // 3-D input by its unsqueezed weight instead of flattening the rows), so a graph
        // captured at 1 and 2 would be fixed to batch size 1: a sample of 1 is captured at 2
        // and 3.
        let n = batch_size(&datas)?.max(2);
        let datas: Vec<TensorData> = datas.iter().map(|d| data_at_batch(d, n)).collect();
        let larger = datas.iter().map(|d| data_at_batch(d, n + 1)).collect();
        let model = model.valid();
        let at_n = capture_once(&model, &forward, datas)?;
        let at_n1 = capture_once(&model, &forward, larger)?;
        let mut graph = graph::make_batch_free(at_n, &at_n1, n, n + 1);
        passes::fuse_linear(&mut graph);
        graph.validate()?;
        Ok(graph)
    }
}

/// The batch size of the sample inputs: the first axis of each, at least 1 and the same for
/// all.
fn batch_size(datas: &[TensorData]) -> Result<usize> {
    let firsts: Vec<Option<usize>> = datas.iter().map(|d| d.shape().first().copied()).collect();
    match firsts.first() {
        Some(&Some(n)) if n >= 1 && firsts.iter().all(|&f| f == Some(n)) => Ok(n),
        _ => Err(Error::Shape {
            context: "capture sample".into(),
            expected: "inputs with the same batch size >= 1 on their first axis".into(),
            got: format!(
                "{:?}",
                datas.iter().map(|d| d.shape().to_vec()).collect::<Vec<_>>()
            ),
        }),
    }
}

/// The sample's items repeated along the batch axis to `n` items.
fn data_at_batch(data: &TensorData, n: usize) -> TensorData {
    let shape = data.shape().to_vec();
    let item = shape[1..].iter().product::<usize>() * data.dtype().size();
    let bytes = data.as_bytes();
    let mut out = Vec::with_capacity(item * n);
    for i in 0..n {
        let j = i % shape[0];
        out.extend_from_slice(&bytes[j * item..(j + 1) * item]);
    }
    let mut new_shape = shape;
    new_shape[0] = n;
    TensorData::from_bytes_vec(out, new_shape, data.dtype())
}

/// Runs the forward once on a fresh capture device and lowers what it records.
fn capture_once<M, F, I, O>(model: &M, forward: &F, sample: Vec<TensorData>) -> Result<Graph>
where
    M: Module,
    I: Tensors,
    O: Tensors,
    F: Fn(&M, I) -> O,
{
    let device = Device::capture();
    let mut params: HashMap<_, ParamRef> = HashMap::new();
    let mut boundary = Ok(());
    let scope = catch_unwind(AssertUnwindSafe(|| {
        device.capture_scope(|scope| {
            let on_capture = model.clone().to_device(&device);
            params = paths::parameter_paths(&on_capture);
            let inputs = I::from_datas(sample, &device);
            let ids = inputs.map(|inputs| {
                let input_ids = inputs.capture_ids();
                (input_ids, forward(&on_capture, inputs).capture_ids())
            });
            match ids {
                Ok((Some(i), Some(o))) => scope.complete(i, o),
                Ok(_) => {
                    boundary = Err(Error::Capture(
                        "the forward's tensors are not captured".into(),
                    ));
                    scope.complete([], [])
                }
                Err(e) => {
                    boundary = Err(e);
                    scope.complete([], [])
                }
            }
        })
    }));
    let captured: CapturedGraph = match scope {
        Ok(Ok(captured)) => captured,
        Ok(Err(err)) => return Err(Error::Capture(err.to_string())),
        Err(panic) => return Err(Error::Capture(panic_message(panic.as_ref()))),
    };
    boundary?;
    graph::lower::lower(&Recorded {
        operations: &captured.graph.operations,
        inputs: &captured.graph.inputs,
        outputs: &captured.graph.outputs,
        values: &captured.values,
        params: &params,
    })
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    format!("the forward panicked on the capture device: {text}")
}
