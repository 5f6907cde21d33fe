//! Fashion-MNIST: IDX reading and writing, bad files as errors, the committed data and the
//! trained model that ship in `data/fashion-mnist/`.

use std::path::{Path, PathBuf};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::{Device, Int, Tensor};
use burn_quantize::data::fashion_mnist::{
    FashionMnist, FashionMnistBatcher, FashionMnistItem, Idx, MEAN, PIXELS, STD, read_idx,
    write_idx_gz,
};
use burn_quantize::models::fashion::FashionNet;
use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};
use burn_quantize::{Error, Graph};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist")
}

/// A fresh directory under the system's temporary directory.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "burn-quantize-fashion-{name}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `n` small generated images (a gradient shifted by the index) with labels `i % 10`.
fn generated(n: usize) -> Vec<FashionMnistItem> {
    (0..n)
        .map(|i| FashionMnistItem {
            pixels: (0..PIXELS)
                .map(|p| ((p * 7 + i * 31) % 256) as u8)
                .collect(),
            label: (i % 10) as u8,
        })
        .collect()
}

/// Writes `items` as the split `name` of `dir` through the IDX writer.
fn write_split(dir: &Path, name: &str, items: &[FashionMnistItem]) {
    let n = items.len();
    write_idx_gz(
        dir.join(format!("{name}-images-idx3-ubyte.gz")),
        &Idx {
            dims: vec![n, 28, 28],
            data: items.iter().flat_map(|i| i.pixels.clone()).collect(),
        },
    )
    .unwrap();
    write_idx_gz(
        dir.join(format!("{name}-labels-idx1-ubyte.gz")),
        &Idx {
            dims: vec![n],
            data: items.iter().map(|i| i.label).collect(),
        },
    )
    .unwrap();
}

#[test]
fn idx_files_round_trip_gzipped_or_plain_and_subsets_keep_their_items() {
    let dir = temp_dir("roundtrip");
    let items = generated(7);
    write_split(&dir, "small", &items);
    let set = FashionMnist::load_split(&dir, "small").unwrap();
    assert_eq!(set.len(), 7);
    for (i, item) in items.iter().enumerate() {
        assert_eq!(&set.get(i).unwrap(), item);
    }

    // A subset saved and read again is the same items; plain (not gzipped) IDX reads too.
    let subset = set.subset(&[6, 0, 3]).unwrap();
    subset.save_split(&dir, "subset").unwrap();
    let again = FashionMnist::load_split(&dir, "subset").unwrap();
    assert_eq!(again, subset);
    assert_eq!(again.labels(), &[6, 0, 3]);
    assert!(matches!(set.subset(&[7]), Err(Error::InvalidArgument(_))));

    let idx = Idx {
        dims: vec![2, 3],
        data: vec![1, 2, 3, 4, 5, 6],
    };
    let plain = dir.join("plain.idx");
    std::fs::write(
        &plain,
        [&[0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3][..], &idx.data].concat(),
    )
    .unwrap();
    assert_eq!(read_idx(&plain).unwrap(), idx);
    let gz = dir.join("plain.idx.gz");
    write_idx_gz(&gz, &idx).unwrap();
    assert_eq!(read_idx(&gz).unwrap(), idx);
    let mismatch = Idx {
        dims: vec![2, 2],
        data: vec![0; 5],
    };
    assert!(matches!(
        write_idx_gz(dir.join("x.gz"), &mismatch),
        Err(Error::InvalidArgument(_))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_files_are_errors_that_name_the_file() {
    let dir = temp_dir("bad");
    let items = generated(4);
    write_split(&dir, "good", &items);
    let good_images = dir.join("good-images-idx3-ubyte.gz");
    let good_labels = dir.join("good-labels-idx1-ubyte.gz");
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let gz_bytes = std::fs::read(&good_images).unwrap();
    let header = |kind: u8, dims: &[u32]| -> Vec<u8> {
        let mut h = vec![0, 0, kind, dims.len() as u8];
        for d in dims {
            h.extend_from_slice(&d.to_be_bytes());
        }
        h
    };
    let cut_gzip = write("cut.gz", &gz_bytes[..gz_bytes.len() / 2]);
    let text = write("text.idx", b"not an IDX file at all");
    let floats = write("floats.idx", &[header(0x0d, &[1]), vec![0; 4]].concat());
    let short_header = write("short.idx", &[0, 0, 8, 3, 0, 0]);
    let short_data = write(
        "short-data.idx",
        &[header(8, &[2, 28, 28]), vec![0; PIXELS]].concat(),
    );
    let wrong_side = write(
        "side.idx",
        &[header(8, &[1, 27, 28]), vec![0; 27 * 28]].concat(),
    );
    let few_labels = write("few.idx", &[header(8, &[3]), vec![0; 3]].concat());
    let bad_label = write("label.idx", &[header(8, &[4]), vec![0, 1, 10, 2]].concat());

    for (images, labels, culprit) in [
        (&cut_gzip, &good_labels, &cut_gzip),
        (&text, &good_labels, &text),
        (&floats, &good_labels, &floats),
        (&short_header, &good_labels, &short_header),
        (&short_data, &good_labels, &short_data),
        (&wrong_side, &good_labels, &wrong_side),
        (&good_images, &few_labels, &few_labels),
        (&good_images, &bad_label, &bad_label),
    ] {
        match FashionMnist::load(images, labels) {
            Err(Error::BadFile { path, reason }) => assert_eq!(&path, culprit, "{reason}"),
            other => panic!("{}: expected BadFile, got {other:?}", culprit.display()),
        }
    }
    match FashionMnist::load_split(&dir, "missing") {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("missing-images-idx3-ubyte.gz")),
        other => panic!("expected Io, got {other:?}"),
    }
    let device = Device::flex();
    assert!(matches!(
        FashionNet::load_weights(dir.join("missing.bpk"), &device),
        Err(Error::Io { .. })
    ));
    assert!(matches!(
        FashionNet::load_weights(&text, &device),
        Err(Error::Weights { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_batcher_normalises_and_keeps_labels() {
    let device = Device::flex();
    let mut items = generated(3);
    items[1].pixels = vec![255; PIXELS];
    let (images, labels): (Tensor<4>, Tensor<1, Int>) =
        FashionMnistBatcher.batch(items.clone(), &device);
    assert_eq!(images.dims(), [3, 1, 28, 28]);
    let values: Vec<f32> = images.into_data().try_to_vec().unwrap();
    assert_eq!(values[0], (0.0 - MEAN) / STD);
    assert_eq!(values[PIXELS], (1.0 - MEAN) / STD);
    let expected = (f32::from(items[2].pixels[5]) / 255.0 - MEAN) / STD;
    assert_eq!(values[2 * PIXELS + 5], expected);
    let labels: Vec<i64> = labels.into_data().convert::<i64>().try_to_vec().unwrap();
    assert_eq!(labels, vec![0, 1, 2]);
}

#[test]
fn the_committed_test_and_calibration_sets_have_their_shapes_and_labels() {
    let test = FashionMnist::load_split(data_dir(), "t10k").unwrap();
    assert_eq!(test.len(), 10_000);
    let calibration = FashionMnist::load_split(data_dir(), "calibration").unwrap();
    assert_eq!(calibration.len(), 1_000);
    // The official test set has 1,000 images of each class; the seeded draw from the training
    // set has every class.
    let mut counts = [0usize; 10];
    for &l in test.labels() {
        counts[usize::from(l)] += 1;
    }
    assert_eq!(counts, [1000; 10]);
    let mut seen = [false; 10];
    for &l in calibration.labels() {
        seen[usize::from(l)] = true;
    }
    assert_eq!(seen, [true; 10]);
    // Real images, not blanks: the mean pixel of both sets is near the training set's mean.
    for set in [&test, &calibration] {
        let sum: u64 = (0..set.len())
            .flat_map(|i| set.get(i).unwrap().pixels)
            .map(u64::from)
            .sum();
        let mean = sum as f64 / (set.len() * PIXELS) as f64 / 255.0;
        assert!((mean - f64::from(MEAN)).abs() < 0.01, "mean pixel {mean}");
    }
}

/// Top-1 predictions of `logits` `[n, 10]`.
fn predictions(logits: Tensor<2>) -> Vec<i64> {
    logits
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .try_to_vec()
        .unwrap()
}

#[test]
fn the_trained_model_loads_is_accurate_and_quantizes() {
    let device = Device::flex();
    let model = FashionNet::load_weights(data_dir().join("model.bpk"), &device).unwrap();
    let test = FashionMnist::load_split(data_dir(), "t10k").unwrap();
    let slice: Vec<FashionMnistItem> = (0..1000).map(|i| test.get(i).unwrap()).collect();
    let (images, labels) = FashionMnistBatcher.batch(slice, &device);
    let labels: Vec<i64> = labels.into_data().convert::<i64>().try_to_vec().unwrap();
    let float = predictions(model.forward(images.clone()));
    let correct = float.iter().zip(&labels).filter(|(p, l)| p == l).count();
    // The model scores above 92% on the whole test set; its first 1,000 images are no easier.
    assert!(correct >= 910, "{correct}/1000 correct");

    // Quantized on 100 calibration images, it agrees with float on nearly every image.
    let calibration = FashionMnist::load_split(data_dir(), "calibration").unwrap();
    let calib: Vec<FashionMnistItem> = (0..100).map(|i| calibration.get(i).unwrap()).collect();
    let calib = FashionMnistBatcher::images(&calib, &device);
    let graph = Graph::capture(&model, &calib.clone().narrow(0, 0, 2)).unwrap();
    let prepared =
        burn_quantize::prepare::prepare(&graph, &QConfigMap::global(QConfig::preset(Engine::X86)))
            .unwrap()
            .calibrate(|m| m.forward::<4, 2>(calib).map(|_| ()))
            .unwrap();
    let qmodel = burn_quantize::quantized::convert(&prepared).unwrap();
    assert_eq!(qmodel.report().counts().1, 0, "{}", qmodel.report());
    let int8 = predictions(qmodel.try_forward(images).unwrap());
    let agree = int8.iter().zip(&float).filter(|(a, b)| a == b).count();
    assert!(agree >= 985, "int8 agrees with float on {agree}/1000");
}
