//! ImageNet-style folders through the library: canonical labels for a partial folder, bad files
//! reported and skipped, torchvision's preprocessing, and the tutorial's flow (calibrate on
//! `train`, score float and int8 on `val`, save and reload) with narrow models. The images are
//! synthetic JPEGs and PNGs written by the test, so it needs nothing outside the repository.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::tensor::{Device, Tensor};
use burn_quantize::data::imagenet::{
    Accuracy, Classes, ImageFolder, ImageNetBatch, Normalization, Preprocess,
};
use burn_quantize::models::ResNetConfig;
use burn_quantize::models::efficientnet::EfficientNetConfig;
use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};
use burn_quantize::quantized::QuantizedModel;
use burn_quantize::{Error, Forward, quantize};
use image::{ImageFormat, Rgb, RgbImage};

/// Classes of the synthetic folder (a partial one: 4 of the 1000).
const CLASSES: [usize; 4] = [0, 243, 559, 999];
/// Image sizes, cycled through (portrait, landscape, square, larger).
const SIZES: [(u32, u32); 4] = [(300, 200), (180, 260), (256, 256), (500, 375)];

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "burn-quantize-imagenet-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A class-dependent synthetic picture: coloured gradients and stripes.
fn picture(class: usize, seed: usize, (w, h): (u32, u32)) -> RgbImage {
    let (a, b) = (
        (class * 37 + seed * 11) % 256,
        (class * 91 + seed * 53) % 256,
    );
    RgbImage::from_fn(w, h, |x, y| {
        let stripe = if (x / (8 + class as u32 % 7) + y / 13).is_multiple_of(2) {
            60
        } else {
            0
        };
        Rgb([
            ((x * 255 / w) as usize + a) as u8 / 2 + stripe,
            ((y * 255 / h) as usize + b) as u8 / 2,
            ((x + y) as usize * 3 + class) as u8 / 2 + (60 - stripe),
        ])
    })
}

/// Writes `split/<wnid>/*` with `per_class` images per class: JPEGs named `.JPEG` as in
/// ImageNet, every third one a PNG (one of them named `.JPEG`: content decides). Returns the
/// expected labels in folder order.
fn write_split(root: &Path, split: &str, per_class: usize) -> Vec<usize> {
    let classes = Classes::imagenet1k();
    let mut labels = Vec::new();
    for (k, &class) in CLASSES.iter().enumerate() {
        let dir = root.join(split).join(classes.wnid(class).unwrap());
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let image = picture(class, i, SIZES[(k + i) % SIZES.len()]);
            let (format, name) = match (k + i) % 3 {
                0 => (ImageFormat::Png, format!("img_{i}.png")),
                1 if k == 1 => (ImageFormat::Png, format!("img_{i}.JPEG")),
                _ => (ImageFormat::Jpeg, format!("img_{i}.JPEG")),
            };
            image.save_with_format(dir.join(name), format).unwrap();
            labels.push(class);
        }
    }
    labels
}

/// The synthetic dataset: `val` (3 images per class, a corrupt file and a JPEG cut in half) and
/// `train` (2 per class). Returns the expected `val` labels.
fn write_dataset(root: &Path) -> Vec<usize> {
    let labels = write_split(root, "val", 3);
    write_split(root, "train", 2);
    let wnid = Classes::imagenet1k().wnid(CLASSES[0]).unwrap();
    std::fs::write(
        root.join("val").join(wnid).join("corrupt.JPEG"),
        b"\xff\xd8\xff\xe0 this is not a JPEG",
    )
    .unwrap();
    let mut jpeg = Vec::new();
    picture(CLASSES[0], 9, (64, 48))
        .write_to(&mut std::io::Cursor::new(&mut jpeg), ImageFormat::Jpeg)
        .unwrap();
    let half = &jpeg[..jpeg.len() / 2];
    std::fs::write(root.join("val").join(wnid).join("truncated.JPEG"), half).unwrap();
    labels
}

fn loader(folder: ImageFolder, device: &Device) -> Arc<dyn DataLoader<ImageNetBatch>> {
    DataLoaderBuilder::new(folder.batcher())
        .batch_size(30)
        .set_device(device.clone())
        .build(folder)
}

fn open(root: &Path, split: &str, normalization: Normalization) -> ImageFolder {
    ImageFolder::open(root.join(split), Preprocess::imagenet(normalization)).unwrap()
}

#[test]
fn a_partial_folder_gets_canonical_labels_and_bad_files_are_reported_and_skipped() {
    let scratch = Scratch::new("labels");
    let labels = write_dataset(&scratch.0);
    let val = open(&scratch.0, "val", Normalization::Torchvision);
    let found: Vec<usize> = val.items().iter().map(|(_, l)| *l).collect();
    assert_eq!(found, labels);
    let bad: Vec<&Path> = val.bad_images().iter().map(|b| b.path.as_path()).collect();
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(bad[0].ends_with("corrupt.JPEG") && bad[1].ends_with("truncated.JPEG"));
    assert!(val.bad_images()[1].to_string().contains("truncated JPEG"));
    assert!(
        !val.items()
            .iter()
            .any(|(p, _)| p.ends_with("corrupt.JPEG") || p.ends_with("truncated.JPEG"))
    );

    let (calibration, rest) = val.split_evenly(4);
    assert_eq!(calibration.items().len(), 4);
    assert_eq!(rest.items().len(), labels.len() - 4);
    let spread: Vec<usize> = calibration.items().iter().map(|(_, l)| *l).collect();
    assert_eq!(spread, CLASSES, "an even split covers every class");

    // A folder that is not a wnid, and a split without any good image, are errors.
    std::fs::create_dir_all(scratch.0.join("odd/cats")).unwrap();
    let odd = ImageFolder::open(
        scratch.0.join("odd"),
        Preprocess::imagenet(Normalization::Torchvision),
    );
    assert!(matches!(odd, Err(Error::BadFile { path, .. }) if path.ends_with("cats")));
    let wnid = Classes::imagenet1k().wnid(5).unwrap();
    std::fs::create_dir_all(scratch.0.join("empty").join(wnid)).unwrap();
    std::fs::write(scratch.0.join("empty").join(wnid).join("x.JPEG"), b"").unwrap();
    let empty = ImageFolder::open(
        scratch.0.join("empty"),
        Preprocess::imagenet(Normalization::Torchvision),
    );
    assert!(matches!(empty, Err(Error::BadFile { .. })));
}

#[test]
fn preprocessing_resizes_the_shorter_side_crops_the_centre_and_normalises_per_model() {
    // 300x200 -> 384x256 -> the 224x224 window at top 16, left 80. Mark pixels that land on the
    // crop's corners after resizing: a flat image with one bright block.
    let mut image = RgbImage::from_pixel(300, 200, Rgb([255, 0, 128]));
    for y in 0..200 {
        for x in 0..62 {
            image.put_pixel(x, y, Rgb([0, 0, 0]));
        }
    }
    let torchvision = Preprocess::imagenet(Normalization::Torchvision)
        .apply(&image)
        .unwrap();
    assert_eq!(torchvision.len(), 3 * 224 * 224);
    // Far from the block (right edge of the crop): the flat colour, normalised as torchvision.
    let right = 223;
    let red = (1.0f32 - 0.485f64 as f32) / 0.229f64 as f32;
    let green = (0.0f32 - 0.456f64 as f32) / 0.224f64 as f32;
    let blue = (128.0f32 / 255.0 - 0.406f64 as f32) / 0.225f64 as f32;
    assert_eq!(torchvision[right], red);
    assert_eq!(torchvision[224 * 224 + right], green);
    assert_eq!(torchvision[2 * 224 * 224 + right], blue);
    // The block covers x < 62 of 300, i.e. x < 79.4 of 384: the crop starts at 80, so its first
    // column is just past the blurred edge and the block is gone.
    assert!(torchvision[0] > 2.0, "left column {}", torchvision[0]);

    let lite = Preprocess::imagenet(Normalization::EfficientNetLite)
        .apply(&image)
        .unwrap();
    assert_eq!(lite[right], 1.0);
    assert_eq!(lite[224 * 224 + right], -127.0 / 128.0);
    assert_eq!(lite[2 * 224 * 224 + right], 1.0 / 128.0);
}

/// How many rows of `logits` (`labels.len()` rows) have their label first, and among the
/// first five (ties counted against the label).
fn ranks_within(logits: &[f32], labels: &[usize]) -> (usize, usize) {
    let classes = logits.len() / labels.len();
    let ranks: Vec<usize> = (logits.chunks(classes).zip(labels))
        .map(|(row, &label)| row.iter().filter(|&&v| v >= row[label]).count() - 1)
        .collect();
    let within = |k: usize| ranks.iter().filter(|&&r| r < k).count();
    (within(1), within(5))
}

/// The tutorial's flow with a model: float and int8 accuracy over `val` (batches of 30) after
/// calibrating on `train`, and a save/reload round trip. Returns the float and int8 logits.
fn tutorial_flow<M: Forward<4, 2>>(
    model: &M,
    normalization: Normalization,
) -> (QuantizedModel, Vec<f32>, Vec<f32>) {
    let device = Device::flex();
    let scratch = Scratch::new(&format!("{normalization:?}"));
    let labels = write_dataset(&scratch.0);
    let val = loader(open(&scratch.0, "val", normalization), &device);
    let train = loader(open(&scratch.0, "train", normalization), &device);

    let qconfig = QConfigMap::global(QConfig::preset(Engine::X86));
    let qmodel = quantize(model, &qconfig, train.as_ref()).unwrap();
    let (mut float, mut int8) = (Accuracy::default(), Accuracy::default());
    let (mut float_logits, mut int8_logits) = (Vec::new(), Vec::new());
    let mut seen = Vec::new();
    for batch in val.iter() {
        let batch = batch.unwrap();
        seen.extend(batch.labels.iter().copied());
        let f: Tensor<2> = model.forward(batch.images.clone());
        let q: Tensor<2> = qmodel.try_forward::<4, 2>(batch.images).unwrap();
        float.update(f.clone(), &batch.labels).unwrap();
        int8.update(q.clone(), &batch.labels).unwrap();
        float_logits.extend(f.into_data().try_to_vec::<f32>().unwrap());
        int8_logits.extend(q.into_data().try_to_vec::<f32>().unwrap());
    }
    assert_eq!(float.total, labels.len());
    assert_eq!(int8.total, labels.len());
    // The metric against a count of its own: the label's rank among the logits of its row.
    for (accuracy, logits) in [(&float, &float_logits), (&int8, &int8_logits)] {
        assert_eq!(
            (accuracy.top1, accuracy.top5),
            ranks_within(logits, &seen),
            "Accuracy vs a direct count"
        );
    }

    let path = scratch.0.join("int8.bpk");
    qmodel.save(&path).unwrap();
    let reloaded = QuantizedModel::load(&path, &device).unwrap();
    let batch = val.iter().next().unwrap().unwrap();
    let again: Tensor<2> = reloaded.try_forward::<4, 2>(batch.images).unwrap();
    assert_eq!(
        again.into_data().try_to_vec::<f32>().unwrap(),
        int8_logits,
        "the reloaded model gives the same logits"
    );
    (qmodel, float_logits, int8_logits)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    burn_quantize::numeric::Comparison::new(String::new(), String::new(), a, b).cosine
}

#[test]
fn the_tutorial_flow_runs_on_a_folder_with_a_narrow_resnet() {
    let model = ResNetConfig::resnet18(1000)
        .narrowed(8)
        .init(&Device::flex());
    let (qmodel, float, int8) = tutorial_flow(&model, Normalization::Torchvision);
    assert_eq!(qmodel.report().counts().1, 0, "{}", qmodel.report());
    let cos = cosine(&float, &int8);
    assert!(cos > 0.99, "int8 vs float cosine {cos}");
}

#[test]
fn the_tutorial_flow_runs_on_a_folder_with_a_narrow_efficientnet_lite() {
    let model = EfficientNetConfig::lite0(1000)
        .narrowed(8)
        .init(&Device::flex());
    let (qmodel, float, int8) = tutorial_flow(&model, Normalization::EfficientNetLite);
    // Every convolution (depthwise ones included, ReLU6 fused) runs in int8.
    assert_eq!(qmodel.report().counts().1, 0, "{}", qmodel.report());
    let cos = cosine(&float, &int8);
    assert!(cos > 0.99, "int8 vs float cosine {cos}");
}
