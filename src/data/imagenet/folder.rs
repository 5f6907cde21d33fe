//! ImageNet-style folders (`SPLIT/<wnid>/<image>`) as a Burn [`Dataset`], labelled by the
//! canonical ImageNet-1k class index of each wnid, so a folder with only some classes still gets
//! the right indices.

use std::fmt;
use std::path::{Path, PathBuf};

use burn::data::dataset::{Dataset, DatasetError};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use super::classes::Classes;
use super::preprocess::{Preprocess, decode};
use super::{ImageNetBatcher, ImageNetItem};
use crate::{Error, Result};

/// An image file that could not be decoded, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadImage {
    /// The file.
    pub path: PathBuf,
    /// The decoder's or the file system's error.
    pub reason: String,
}

impl fmt::Display for BadImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// One split of an ImageNet-style folder: its decodable images and their class indices, read
/// and preprocessed on demand.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    items: Vec<(PathBuf, usize)>,
    bad: Vec<BadImage>,
    preprocess: Preprocess,
}

impl ImageFolder {
    /// Opens a split such as `DATA/val`: every file of every `<wnid>` folder, in torchvision's
    /// order (folders, then files, sorted by name; hidden entries and loose files skipped).
    ///
    /// Every file is decoded once, in parallel, to check it: a file that fails is printed to
    /// stderr, kept in [`bad_images`](Self::bad_images) and left out. A folder named by anything
    /// but an ImageNet-1k wnid is an error, as is a split without one good image.
    pub fn open(dir: impl AsRef<Path>, preprocess: Preprocess) -> Result<Self> {
        let dir = dir.as_ref();
        let classes = Classes::imagenet1k();
        let mut files = Vec::new();
        for class_dir in sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()) {
            let wnid = class_dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let label = classes.index(wnid).ok_or_else(|| Error::BadFile {
                path: class_dir.clone(),
                reason: "the folder name is not an ImageNet-1k wnid (such as n01440764)".into(),
            })?;
            let images = sorted_entries(&class_dir)?
                .into_iter()
                .filter(|p| p.is_file());
            files.extend(images.map(|path| (path, label)));
        }
        let bar = ProgressBar::new(files.len() as u64).with_style(
            ProgressStyle::with_template("checking images {bar:40} {pos}/{len} {elapsed}")
                .expect("a valid template"),
        );
        let checked: Vec<Option<String>> = files
            .par_iter()
            .map(|(path, _)| {
                let outcome = decode(path).err().map(|e| e.to_string());
                bar.inc(1);
                outcome
            })
            .collect();
        bar.finish_and_clear();
        let mut folder = ImageFolder {
            items: Vec::with_capacity(files.len()),
            bad: Vec::new(),
            preprocess,
        };
        for ((path, label), failure) in files.into_iter().zip(checked) {
            match failure {
                None => folder.items.push((path, label)),
                Some(reason) => {
                    let bad = BadImage { path, reason };
                    eprintln!("skipping bad image {bad}");
                    folder.bad.push(bad);
                }
            }
        }
        if folder.items.is_empty() {
            return Err(Error::BadFile {
                path: dir.to_path_buf(),
                reason: format!(
                    "no decodable image in any <wnid>/ folder ({} bad files)",
                    folder.bad.len()
                ),
            });
        }
        Ok(folder)
    }

    /// The files that could not be decoded when the folder was opened (left out).
    pub fn bad_images(&self) -> &[BadImage] {
        &self.bad
    }

    /// Every image's path and class index, in order.
    pub fn items(&self) -> &[(PathBuf, usize)] {
        &self.items
    }

    /// How images become model input.
    pub fn preprocess(&self) -> Preprocess {
        self.preprocess
    }

    /// The batcher for this folder's items.
    pub fn batcher(&self) -> ImageNetBatcher {
        ImageNetBatcher {
            size: self.preprocess.crop,
        }
    }

    /// Splits off `n` images spread evenly over the folder (so over its classes), e.g. to
    /// calibrate on part of `val` when there is no `train`: `(the n images, the others)`. The
    /// bad-image list stays with `self`.
    pub fn split_evenly(&self, n: usize) -> (ImageFolder, ImageFolder) {
        let len = self.items.len();
        let n = n.min(len);
        let mut chosen = vec![false; len];
        for j in 0..n {
            chosen[j * len / n] = true;
        }
        let part = |keep: bool| ImageFolder {
            items: self
                .items
                .iter()
                .zip(&chosen)
                .filter(|(_, c)| **c == keep)
                .map(|(item, _)| item.clone())
                .collect(),
            bad: Vec::new(),
            preprocess: self.preprocess,
        };
        (part(true), part(false))
    }
}

/// The entries of a directory sorted by name, without hidden ones.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io)?;
    entries.retain(|p| {
        !p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
    });
    entries.sort();
    Ok(entries)
}

impl Dataset<ImageNetItem> for ImageFolder {
    fn get(&self, index: usize) -> Result<ImageNetItem, DatasetError> {
        let (path, label) = self.items.get(index).ok_or_else(|| {
            DatasetError::new(Error::InvalidArgument(format!(
                "image {index} of a folder of {}",
                self.items.len()
            )))
        })?;
        let image = self.preprocess.load(path).map_err(DatasetError::new)?;
        Ok(ImageNetItem {
            image,
            label: *label,
        })
    }

    /// Decodes and preprocesses the images of a batch in parallel.
    fn get_many(&self, indexes: Vec<usize>) -> Result<Vec<ImageNetItem>, DatasetError> {
        indexes.into_par_iter().map(|i| self.get(i)).collect()
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}
