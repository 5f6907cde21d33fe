//! ImageNet-1k evaluation data: the canonical classes, torchvision's preprocessing (resize 256,
//! centre crop 224, per-model normalisation) and ImageNet-style folders as a Burn `Dataset`.
//!
//! ```no_run
//! use burn::data::dataloader::DataLoaderBuilder;
//! use burn_quantize::data::imagenet::{ImageFolder, Normalization, Preprocess};
//!
//! # fn main() -> burn_quantize::Result<()> {
//! let val = ImageFolder::open("imagenet/val", Preprocess::imagenet(Normalization::Torchvision))?;
//! let loader = DataLoaderBuilder::new(val.batcher()).batch_size(30).build(val);
//! # Ok(()) }
//! ```

mod classes;
mod folder;
mod preprocess;

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::{Device, Tensor, TensorData};

use crate::prepare::CalibrationInput;
use crate::{Error, Result};

pub use classes::Classes;
pub use folder::{BadImage, ImageFolder};
pub use preprocess::{Normalization, Preprocess, decode, resize_bilinear, resize_shorter_side};

/// One preprocessed image and its class index.
#[derive(Clone, Debug)]
pub struct ImageNetItem {
    /// `[3, size, size]` model input, channel-major.
    pub image: Vec<f32>,
    /// ImageNet-1k class index.
    pub label: usize,
}

/// Stacks [`ImageNetItem`]s of one size into an [`ImageNetBatch`].
#[derive(Clone, Debug)]
pub struct ImageNetBatcher {
    /// Side of the square images.
    pub size: usize,
}

/// A batch of images `[N, 3, size, size]` and their class indices.
#[derive(Clone, Debug)]
pub struct ImageNetBatch {
    /// The model input.
    pub images: Tensor<4>,
    /// Class index of each image.
    pub labels: Vec<usize>,
}

impl Batcher<ImageNetItem, ImageNetBatch> for ImageNetBatcher {
    fn batch(&self, items: Vec<ImageNetItem>, device: &Device) -> ImageNetBatch {
        let shape = [items.len(), 3, self.size, self.size];
        let (images, labels): (Vec<Vec<f32>>, Vec<usize>) =
            items.into_iter().map(|i| (i.image, i.label)).unzip();
        ImageNetBatch {
            images: Tensor::from_data(TensorData::new(images.concat(), shape), device),
            labels,
        }
    }
}

impl CalibrationInput<4> for ImageNetBatch {
    fn calibration_input(&self) -> Tensor<4> {
        self.images.clone()
    }
}

/// Each row's `k` highest-scoring classes, best first (ties to the lower index).
pub fn top_k(logits: Tensor<2>, k: usize) -> Result<Vec<Vec<usize>>> {
    let [_, classes] = logits.dims();
    let values: Vec<f32> = logits
        .into_data()
        .try_to_vec()
        .map_err(|e| Error::InvalidArgument(format!("logits must be f32: {e:?}")))?;
    Ok(values
        .chunks(classes.max(1))
        .map(|row| {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            order.truncate(k);
            order
        })
        .collect())
}

/// Top-1 and top-5 accuracy counts, accumulated over batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accuracy {
    /// Images whose best class is the label.
    pub top1: usize,
    /// Images with the label among their five best classes.
    pub top5: usize,
    /// Images counted.
    pub total: usize,
}

impl Accuracy {
    /// Counts a batch of logits `[N, classes]` against its labels.
    pub fn update(&mut self, logits: Tensor<2>, labels: &[usize]) -> Result<()> {
        let best = top_k(logits, 5)?;
        if best.len() != labels.len() {
            return Err(Error::Shape {
                context: "accuracy".into(),
                expected: format!("{} rows of logits (one per label)", labels.len()),
                got: best.len().to_string(),
            });
        }
        for (row, &label) in best.iter().zip(labels) {
            self.top1 += usize::from(row.first() == Some(&label));
            self.top5 += usize::from(row.contains(&label));
        }
        self.total += labels.len();
        Ok(())
    }

    /// Top-1 accuracy in percent.
    pub fn top1_percent(&self) -> f64 {
        percent(self.top1, self.total)
    }

    /// Top-5 accuracy in percent.
    pub fn top5_percent(&self) -> f64 {
        percent(self.top5, self.total)
    }
}

fn percent(count: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * count as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_classes_and_accuracy_counts_them() {
        let device = Device::flex();
        let logits = Tensor::<2>::from_data(
            TensorData::new(vec![0.1f32, 0.9, 0.5, 0.5, 2.0, 1.0, 3.0, 0.0], [2, 4]),
            &device,
        );
        assert_eq!(
            top_k(logits.clone(), 3).unwrap(),
            vec![vec![1, 2, 3], vec![2, 0, 1]]
        );
        let mut accuracy = Accuracy::default();
        accuracy.update(logits.clone(), &[1, 1]).unwrap();
        assert_eq!((accuracy.top1, accuracy.top5, accuracy.total), (1, 2, 2));
        assert_eq!(accuracy.top1_percent(), 50.0);
        assert!(accuracy.update(logits, &[1]).is_err());
    }
}
