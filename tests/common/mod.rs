//! Helpers shared by the model-level tests: deterministic pseudo-images and cosine similarity.

#![allow(dead_code)] // each test binary uses its own part

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::Dataset;
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

/// Asserts that `qmodel` gives, on every available kernel path, the integers of the debug model
/// made from `prepared` on `x`, and that saved to `path` and loaded back it has the same program
/// and outputs; returns the debug model's output.
pub fn assert_paths_match_debug_and_reload(
    prepared: &burn_quantize::prepare::PreparedModel,
    qmodel: &burn_quantize::quantized::QuantizedModel,
    x: &Tensor<4>,
    path: &std::path::Path,
) -> TensorData {
    use burn_quantize::kernels::{available_isas, with_isa};
    use burn_quantize::quantized::{QuantizedModel, convert_debug};
    let expected: Tensor<4> = convert_debug(prepared).unwrap().forward(x.clone()).unwrap();
    let expected = expected.into_data();
    for isa in available_isas() {
        let got: Tensor<4> = with_isa(isa, || qmodel.try_forward(x.clone()))
            .unwrap()
            .unwrap();
        assert_eq!(got.into_data(), expected, "{isa} vs the debug model");
    }
    qmodel.save(path).unwrap();
    let again = QuantizedModel::load(path, &x.device()).unwrap();
    assert_eq!(again.program(), qmodel.program());
    let reloaded: Tensor<4> = again.try_forward(x.clone()).unwrap();
    assert_eq!(reloaded.into_data(), expected);
    expected
}

/// The SQNR (dB) of `qmodel`'s output against `model`'s on `x`.
pub fn output_sqnr<M: burn_quantize::Forward<4, 4>>(
    model: &M,
    qmodel: &burn_quantize::quantized::QuantizedModel,
    x: &Tensor<4>,
) -> f64 {
    let float: Vec<f32> = model.forward(x.clone()).into_data().try_to_vec().unwrap();
    let quantized: Tensor<4> = qmodel.try_forward(x.clone()).unwrap();
    let quantized: Vec<f32> = quantized.into_data().try_to_vec().unwrap();
    burn_quantize::numeric::Comparison::new(String::new(), String::new(), &float, &quantized)
        .sqnr_db
}

/// What `auto_precision` chooses for `model` under the Native preset with default options,
/// calibrated and scored on `batches` (the graph captured on the first).
pub fn native_auto_precision<M: burn_quantize::Forward<4, 4>>(
    model: &M,
    batches: &[Tensor<4>],
    budget: burn_quantize::numeric::Budget,
) -> burn_quantize::numeric::PrecisionChoice {
    use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};
    let graph = burn_quantize::graph::Graph::capture(model, &batches[0]).unwrap();
    let qconfig = QConfigMap::global(QConfig::preset(Engine::Native));
    let options = burn_quantize::prepare::PrepareOptions::default();
    burn_quantize::numeric::auto_precision::<4, 4>(&graph, &qconfig, &options, batches, budget)
        .unwrap()
}

/// Batches 3x32x32 images given as flat vectors.
#[derive(Clone)]
pub struct ImageBatcher;

impl Batcher<Vec<f32>, Tensor<4>> for ImageBatcher {
    fn batch(&self, items: Vec<Vec<f32>>, device: &Device) -> Tensor<4> {
        let n = items.len();
        Tensor::from_data(TensorData::new(items.concat(), [n, 3, 32, 32]), device)
    }
}

/// A data loader of `dataset`'s 3x32x32 images in batches of `batch`.
pub fn image_loader<D: Dataset<Vec<f32>> + 'static>(
    dataset: D,
    batch: usize,
) -> std::sync::Arc<dyn DataLoader<Tensor<4>>> {
    DataLoaderBuilder::new(ImageBatcher)
        .batch_size(batch)
        .build(dataset)
}

/// `module` with every float parameter drawn again from a generator seeded with `seed` (so a
/// test's weights do not depend on the order parallel tests draw from Burn's shared
/// generator): weights of rank >= 2 uniform in ±1/sqrt(fan_in) (Burn's default bound; fan_in
/// is the product of the trailing axes of a conv weight, the first axis of a linear one),
/// constant vectors (BatchNorm's) kept, other vectors uniform in ±0.1.
pub fn seeded<M: burn::module::Module>(module: M, seed: u64) -> M {
    struct Reseed(u64);
    impl burn::module::ModuleMapper for Reseed {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<D>>,
        ) -> burn::module::Param<Tensor<D>> {
            let value = param.val();
            let (shape, device) = (value.dims(), value.device());
            let old: Vec<f32> = value.into_data().try_to_vec::<f32>().unwrap_or_default();
            let bound = match D {
                1 if old.windows(2).all(|w| w[0] == w[1]) => return param,
                1 => 0.1,
                2 => 1.0 / (shape[0] as f32).sqrt(),
                _ => 1.0 / (shape[1..].iter().product::<usize>() as f32).sqrt(),
            };
            self.0 += 1;
            let mut state = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let values: Vec<f32> = (0..old.len())
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound
                })
                .collect();
            let tensor = Tensor::from_data(TensorData::new(values, shape), &device);
            burn::module::Param::initialized(param.id, tensor)
        }
    }
    module.map(&mut Reseed(seed))
}
