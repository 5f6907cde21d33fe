//! Fashion-MNIST: IDX files (gzip or plain) as a Burn [`Dataset`], a [`Batcher`] that
//! normalises, and IDX gzip writing (for the committed subsets).
//!
//! ```no_run
//! use std::sync::Arc;
//! use burn::data::dataloader::DataLoaderBuilder;
//! use burn_quantize::data::fashion_mnist::{FashionMnist, FashionMnistBatcher};
//!
//! let test = FashionMnist::load_split("data/fashion-mnist", "t10k")?;
//! let loader = DataLoaderBuilder::new(FashionMnistBatcher).batch_size(100).build(test);
//! for batch in loader.iter() {
//!     let (images, labels) = batch?; // [100, 1, 28, 28] normalised, [100] class indices
//! #   let _ = (images, labels);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, DatasetError};
use burn::tensor::{Device, Int, Tensor, TensorData};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use crate::{Error, Result};

/// Image side in pixels.
pub const SIDE: usize = 28;
/// Pixels per image.
pub const PIXELS: usize = SIDE * SIDE;
/// The ten class names, by label.
pub const CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];
/// Mean pixel value of the training set, on the `[0, 1]` scale.
pub const MEAN: f32 = 0.2860;
/// Standard deviation of the training set's pixels, on the `[0, 1]` scale.
pub const STD: f32 = 0.3530;

/// IDX magic for unsigned bytes: `0x00 0x00 0x08 <rank>`.
const UBYTE: u8 = 0x08;
/// Gzip's magic bytes.
const GZIP: [u8; 2] = [0x1f, 0x8b];

/// One image and its label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FashionMnistItem {
    /// `28 x 28` pixels, row major, 0 (background) to 255.
    pub pixels: Vec<u8>,
    /// Class index, `0..10` (see [`CLASSES`]).
    pub label: u8,
}

/// An IDX array of unsigned bytes: its dimensions and its values, row major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idx {
    /// Dimensions, outermost first (`[n, 28, 28]` for images, `[n]` for labels).
    pub dims: Vec<usize>,
    /// The values.
    pub data: Vec<u8>,
}

/// Reads an IDX file of unsigned bytes, gzip-compressed or plain (told apart by gzip's magic).
pub fn read_idx(path: impl AsRef<Path>) -> Result<Idx> {
    let path = path.as_ref();
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let bad = |reason: String| Error::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    let mut raw = Vec::new();
    File::open(path)
        .and_then(|f| BufReader::new(f).read_to_end(&mut raw))
        .map_err(io)?;
    let bytes = if raw.starts_with(&GZIP) {
        let mut out = Vec::new();
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("gzip: {e}")))?;
        out
    } else {
        raw
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("no IDX header".into()));
    }
    if bytes[2] != UBYTE {
        return Err(bad(format!(
            "IDX type 0x{:02x}, only unsigned bytes (0x08) are read",
            bytes[2]
        )));
    }
    let rank = usize::from(bytes[3]);
    let header = 4 + 4 * rank;
    if rank == 0 || bytes.len() < header {
        return Err(bad(format!("IDX header of rank {rank} is cut short")));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    let got = bytes.len() - header;
    if got != expected {
        return Err(bad(format!(
            "dimensions {dims:?} need {expected} bytes of data, the file has {got}"
        )));
    }
    Ok(Idx {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Writes an IDX file of unsigned bytes, gzip-compressed.
pub fn write_idx_gz(path: impl AsRef<Path>, idx: &Idx) -> Result<()> {
    let path = path.as_ref();
    let expected: usize = idx.dims.iter().product();
    if idx.dims.is_empty() || idx.dims.len() > 255 || expected != idx.data.len() {
        return Err(Error::InvalidArgument(format!(
            "IDX dimensions {:?} do not match {} values",
            idx.dims,
            idx.data.len()
        )));
    }
    let mut header = vec![0, 0, UBYTE, idx.dims.len() as u8];
    for &d in &idx.dims {
        let d = u32::try_from(d)
            .map_err(|_| Error::InvalidArgument(format!("IDX dimension {d} exceeds u32")))?;
        header.extend_from_slice(&d.to_be_bytes());
    }
    let write = || -> std::io::Result<()> {
        let mut gz = GzEncoder::new(BufWriter::new(File::create(path)?), Compression::best());
        gz.write_all(&header)?;
        gz.write_all(&idx.data)?;
        gz.finish()?.flush()
    };
    write().map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Fashion-MNIST images and labels in memory, a Burn [`Dataset`] of [`FashionMnistItem`]s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FashionMnist {
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

impl FashionMnist {
    /// Reads an image file (`[n, 28, 28]`) and a label file (`[n]`, values `0..10`), each IDX,
    /// gzip-compressed or plain.
    pub fn load(images: impl AsRef<Path>, labels: impl AsRef<Path>) -> Result<Self> {
        let (images, labels) = (images.as_ref(), labels.as_ref());
        let image_idx = read_idx(images)?;
        let label_idx = read_idx(labels)?;
        let bad = |path: &Path, reason: String| Error::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        if image_idx.dims.len() != 3 || image_idx.dims[1..] != [SIDE, SIDE] {
            return Err(bad(
                images,
                format!("images of shape {:?}, expected [n, 28, 28]", image_idx.dims),
            ));
        }
        if label_idx.dims != [image_idx.dims[0]] {
            return Err(bad(
                labels,
                format!(
                    "labels of shape {:?} for {} images",
                    label_idx.dims, image_idx.dims[0]
                ),
            ));
        }
        if let Some(i) = label_idx
            .data
            .iter()
            .position(|&l| usize::from(l) >= CLASSES.len())
        {
            return Err(bad(
                labels,
                format!("label {} at index {i} is not a class", label_idx.data[i]),
            ));
        }
        Ok(FashionMnist {
            pixels: image_idx.data,
            labels: label_idx.data,
        })
    }

    /// Reads the split `name` (`"train"`, `"t10k"`, `"calibration"`) of the directory `dir`,
    /// from the files `<name>-images-idx3-ubyte.gz` and `<name>-labels-idx1-ubyte.gz`.
    pub fn load_split(dir: impl AsRef<Path>, name: &str) -> Result<Self> {
        let [images, labels] = split_paths(dir, name);
        Self::load(images, labels)
    }

    /// Writes the split `name` into `dir` as [`FashionMnist::load_split`] reads it.
    pub fn save_split(&self, dir: impl AsRef<Path>, name: &str) -> Result<()> {
        let [images, labels] = split_paths(dir, name);
        write_idx_gz(
            images,
            &Idx {
                dims: vec![self.len(), SIDE, SIDE],
                data: self.pixels.clone(),
            },
        )?;
        write_idx_gz(
            labels,
            &Idx {
                dims: vec![self.len()],
                data: self.labels.clone(),
            },
        )
    }

    /// The items at `indices`, in that order. An index out of range is an error.
    pub fn subset(&self, indices: &[usize]) -> Result<Self> {
        let mut subset = FashionMnist {
            pixels: Vec::with_capacity(indices.len() * PIXELS),
            labels: Vec::with_capacity(indices.len()),
        };
        for &i in indices {
            let item = self.item(i).ok_or_else(|| {
                Error::InvalidArgument(format!("index {i} of a set of {}", self.len()))
            })?;
            subset.pixels.extend_from_slice(&item.pixels);
            subset.labels.push(item.label);
        }
        Ok(subset)
    }

    /// The labels, in order.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// The item at `index`, if there is one.
    pub fn item(&self, index: usize) -> Option<FashionMnistItem> {
        let label = *self.labels.get(index)?;
        Some(FashionMnistItem {
            pixels: self.pixels[index * PIXELS..(index + 1) * PIXELS].to_vec(),
            label,
        })
    }
}

/// The image and label paths of a split.
fn split_paths(dir: impl AsRef<Path>, name: &str) -> [PathBuf; 2] {
    let dir = dir.as_ref();
    [
        dir.join(format!("{name}-images-idx3-ubyte.gz")),
        dir.join(format!("{name}-labels-idx1-ubyte.gz")),
    ]
}

impl Dataset<FashionMnistItem> for FashionMnist {
    fn get(&self, index: usize) -> Result<FashionMnistItem, DatasetError> {
        assert!(
            index < self.len(),
            "index {index} out of range for a dataset of {}",
            self.len()
        );
        Ok(self.item(index).expect("index checked above"))
    }

    fn len(&self) -> usize {
        self.labels.len()
    }
}

/// Batches [`FashionMnistItem`]s into normalised images `[n, 1, 28, 28]`
/// (`(pixel / 255 - MEAN) / STD`) and labels `[n]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct FashionMnistBatcher;

impl FashionMnistBatcher {
    /// The normalised images of `items`, `[n, 1, 28, 28]`.
    pub fn images(items: &[FashionMnistItem], device: &Device) -> Tensor<4> {
        let values: Vec<f32> = items
            .iter()
            .flat_map(|item| item.pixels.iter())
            .map(|&p| (f32::from(p) / 255.0 - MEAN) / STD)
            .collect();
        Tensor::from_data(
            TensorData::new(values, [items.len(), 1, SIDE, SIDE]),
            device,
        )
    }
}

impl Batcher<FashionMnistItem, (Tensor<4>, Tensor<1, Int>)> for FashionMnistBatcher {
    fn batch(&self, items: Vec<FashionMnistItem>, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let labels: Vec<i64> = items.iter().map(|item| i64::from(item.label)).collect();
        let n = labels.len();
        (
            Self::images(&items, device),
            Tensor::from_data(TensorData::new(labels, [n]), device),
        )
    }
}
