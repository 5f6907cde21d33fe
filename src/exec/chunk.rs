//! Large batches in chunks: a program whose every step works image by image runs a batch as
//! chunks of a few images, in parallel, each chunk through the whole program.
//!
//! Run layer by layer over a whole batch of 32, a MobileNet's activations (tens of MB per value)
//! stream through main memory at every step; a chunk's values stay in the caches, and the
//! chunks give the threads independent work besides the channels of one layer. The results are
//! the same bytes: every int8 step computes each image from that image alone, with the same
//! integers whatever the batch.

use burn::backend::ops::FloatTensorOps;
use burn::backend::{Dispatch, DispatchTensor, TensorMetadata};
use burn::tensor::Slice;

use crate::graph::Dim;
use crate::program::{QuantizedProgram, Step};

/// Arena bytes a chunk may fill by default: chunks hold as many images as fit (at least one).
/// 4-16 MiB ran alike on a Zen 4 (1 MiB L2 per core, 32 MiB L3) for ResNet-18 and the
/// MobileNets at batch 32; whole batches of 32 ran 10-40 % slower.
pub(crate) const CHUNK_ARENA_BYTES: usize = 8 << 20;

/// Whether `program` computes every image of a batch from that image alone, so that a batch
/// can run in chunks: the batch is axis 0 of every value it reads or makes, and every step is
/// an int8 step (they all work per image; a float step through Burn may round differently at
/// another batch size, so programs with one run whole).
pub(super) fn per_sample(program: &QuantizedProgram) -> bool {
    let batch_major = |shape: &[Dim]| {
        shape.first() == Some(&Dim { batch: 1, fixed: 0 })
            && shape[1..].iter().all(|d| d.is_fixed())
    };
    let steps_ok = program.steps.iter().all(|step| {
        !matches!(step, Step::Float(_) | Step::DynamicLinear { .. })
            && (step.inputs().iter().chain(step.outputs()))
                .all(|id| batch_major(&program.values[id.index()].shape))
    });
    let ends_ok = (program.inputs.iter().chain(&program.outputs))
        .all(|id| batch_major(&program.values[id.index()].shape));
    steps_ok && ends_ok
}

/// Images per chunk of at most `budget` arena bytes for a batch of `batch` when one image fills
/// `image_bytes`, or `None` when the batch runs whole (it fits in one chunk).
pub(super) fn chunk_size(batch: usize, image_bytes: usize, budget: usize) -> Option<usize> {
    let chunk = (budget / image_bytes.max(1)).max(1);
    (chunk < batch).then_some(chunk)
}

/// The batch size shared by all `inputs` (axis 0), if they have one.
pub(super) fn batch_of(inputs: &[DispatchTensor]) -> Option<usize> {
    let first = inputs.first()?.shape().first().copied()?;
    inputs
        .iter()
        .all(|t| t.shape().first() == Some(&first))
        .then_some(first)
}

/// `inputs` cut along axis 0 into chunks of `chunk` images (the last may hold fewer).
pub(super) fn split(inputs: &[DispatchTensor], chunk: usize) -> Vec<Vec<DispatchTensor>> {
    let batch = batch_of(inputs).unwrap_or(0);
    (0..batch)
        .step_by(chunk)
        .map(|start| {
            let end = (start + chunk).min(batch);
            (inputs.iter())
                .map(|t| {
                    let mut slices: Vec<Slice> = (t.shape().iter())
                        .map(|&n| Slice::new(0, Some(n as isize), 1))
                        .collect();
                    slices[0] = Slice::new(start as isize, Some(end as isize), 1);
                    Dispatch::float_slice(t.clone(), &slices)
                })
                .collect()
        })
        .collect()
}

/// The outputs of the chunks joined along axis 0, output by output.
pub(super) fn join(chunks: Vec<Vec<DispatchTensor>>) -> Vec<DispatchTensor> {
    let outputs = chunks.first().map_or(0, Vec::len);
    let mut per_output: Vec<Vec<DispatchTensor>> = vec![Vec::new(); outputs];
    for chunk in chunks {
        for (all, t) in per_output.iter_mut().zip(chunk) {
            all.push(t);
        }
    }
    (per_output.into_iter())
        .map(|all| Dispatch::float_cat(all, 0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_hold_what_fits_and_at_least_one_image() {
        let budget = 1000;
        assert_eq!(chunk_size(32, 1000, budget), Some(1));
        assert_eq!(chunk_size(32, 3000, budget), Some(1));
        assert_eq!(chunk_size(32, 250, budget), Some(4));
        assert_eq!(chunk_size(5000, 0, budget), Some(budget));
        assert_eq!(chunk_size(4, 250, budget), None);
        assert_eq!(chunk_size(1, 1000, budget), None);
    }
}
