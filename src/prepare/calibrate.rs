//! Calibration over a Burn `DataLoader`, with a progress bar.

use burn::data::dataloader::DataLoader;
use burn::tensor::Tensor;
use indicatif::{ProgressBar, ProgressStyle};

use super::PreparedModel;
use crate::{Error, Result};

/// A batch that carries the model's input: what calibration feeds the model.
///
/// Implemented for a plain tensor and for `(input, anything)` pairs; implement it for your own
/// batch type (one method) to calibrate over your `DataLoader` as it is.
pub trait CalibrationInput<const D: usize> {
    /// The model input of this batch.
    fn calibration_input(&self) -> Tensor<D>;
}

impl<const D: usize> CalibrationInput<D> for Tensor<D> {
    fn calibration_input(&self) -> Tensor<D> {
        self.clone()
    }
}

impl<const D: usize, T> CalibrationInput<D> for (Tensor<D>, T) {
    fn calibration_input(&self) -> Tensor<D> {
        self.0.clone()
    }
}

impl PreparedModel {
    /// Runs every batch of `loader` through the model to calibrate it, showing a progress bar
    /// on the terminal. An empty loader, a batch the loader fails to make, an input of the
    /// wrong shape or a non-finite activation is an error.
    pub fn calibrate_loader<O, const DI: usize, const DO: usize>(
        &mut self,
        loader: &dyn DataLoader<O>,
    ) -> Result<()>
    where
        O: CalibrationInput<DI>,
    {
        let bar = ProgressBar::new(loader.num_items() as u64).with_style(
            ProgressStyle::with_template("calibrating {bar:40} {pos}/{len} items {elapsed}")
                .expect("a valid template"),
        );
        let before = self.batches_observed();
        for batch in loader.iter() {
            let batch =
                batch.map_err(|e| Error::Calibration(format!("the data loader failed: {e}")))?;
            let input = batch.calibration_input();
            let items = input.dims().first().copied().unwrap_or(0);
            self.forward::<DI, DO>(input)?;
            bar.inc(items as u64);
        }
        bar.finish_and_clear();
        if self.batches_observed() == before {
            return Err(Error::Calibration("the data loader gave no batch".into()));
        }
        Ok(())
    }
}
