//! Helpers shared by the model-level tests: deterministic pseudo-images and cosine similarity.

#![allow(dead_code)] // each test binary uses its own part

use burn::tensor::{Device, Tensor, TensorData};

/// `n` deterministic pseudo-images `[n, 3, h, w]` with values in [-2, 2].
pub fn images_hw(n: usize, seed: u64, [h, w]: [usize; 2], device: &Device) -> Tensor<4> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let values: Vec<f32> = (0..n * 3 * h * w)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_data(TensorData::new(values, [n, 3, h, w]), device)
}

/// The cosine similarity of two tensors of the same shape.
pub fn cosine<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f64 {
    let (a, b): (Vec<f32>, Vec<f32>) = (
        a.into_data().try_to_vec().unwrap(),
        b.into_data().try_to_vec().unwrap(),
    );
    burn_quantize::numeric::Comparison::new(String::new(), String::new(), &a, &b).cosine
}
