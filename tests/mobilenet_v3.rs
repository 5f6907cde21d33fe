//! MobileNetV3-Large in torchvision's layout: output shapes at several input sizes, torchvision's
//! parameter count and module paths, the squeeze-and-excite widths, and a clear error for a
//! missing weight file. Needs nothing outside the repository (the float conformance against
//! torchvision is `cargo run --release --example conformance -- mobilenet_v3`).

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use burn_quantize::Error;
use burn_quantize::models::mobilenet_v3::{MobileNetV3, MobileNetV3Config, make_divisible};

/// Collects every parameter's module path and size.
#[derive(Default)]
struct Paths {
    stack: Vec<String>,
    paths: Vec<(String, usize)>,
}

impl ModuleVisitor for Paths {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let numel = param.val().dims().iter().product();
        self.paths.push((self.stack.join("."), numel));
    }
}

fn paths(model: &MobileNetV3) -> Vec<(String, usize)> {
    let mut visitor = Paths::default();
    model.visit(&mut visitor);
    visitor.paths
}

#[test]
fn large_has_torchvisions_parameter_count_and_paths() {
    let device = Device::flex();
    let model = MobileNetV3::large(1000, &device);
    assert_eq!(model.features.len(), 17);
    let sizes = paths(&model);
    // torchvision counts parameters (`model.parameters()`); Burn's `num_params` also counts
    // BatchNorm's running mean and variance, which torchvision keeps as buffers.
    let is_running = |p: &str| p.ends_with("running_mean") || p.ends_with("running_var");
    let parameters: usize = sizes
        .iter()
        .filter(|(p, _)| !is_running(p))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(parameters, 5_483_032);
    let running: usize = sizes
        .iter()
        .filter(|(p, _)| is_running(p))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(model.num_params(), parameters + running);

    let paths: Vec<&str> = sizes.iter().map(|(p, _)| p.as_str()).collect();
    for expected in [
        "features.0.conv.weight",
        "features.0.bn.gamma",
        // features.1 has no expansion: block.0 is the depthwise convolution.
        "features.1.block.0.conv.weight",
        "features.1.block.1.bn.beta",
        "features.4.block.0.conv.weight",
        "features.4.block.2.fc1.weight",
        "features.4.block.2.fc2.bias",
        "features.4.block.3.conv.weight",
        "features.15.block.2.fc1.bias",
        "features.16.conv.weight",
        "features.16.bn.gamma",
        "classifier.0.weight",
        "classifier.3.bias",
    ] {
        assert!(paths.contains(&expected), "no {expected}");
    }
    assert!(!paths.iter().any(|p| p.starts_with("features.17")));
    assert!(!paths.iter().any(|p| p.starts_with("classifier.1")));
}

#[test]
fn squeeze_widths_are_torchvisions() {
    for (expanded, squeeze) in [(72, 24), (120, 32), (480, 120), (672, 168), (960, 240)] {
        assert_eq!(make_divisible(expanded / 4), squeeze, "expanded {expanded}");
    }
    assert_eq!(make_divisible(1), 8);
    let device = Device::flex();
    let model = MobileNetV3::large(1000, &device);
    let fc1 = model.features[4].block[2]
        .fc1
        .as_ref()
        .expect("SE in features.4");
    assert_eq!(fc1.weight.dims(), [24, 72, 1, 1]);
    assert!(model.features[7].block.iter().all(|l| l.fc1.is_none()));
}

#[test]
fn forward_at_any_size() {
    let device = Device::flex();
    let model = MobileNetV3Config::large(10).narrowed(4).init(&device);
    for [n, h, w] in [[2, 224, 224], [1, 160, 128], [3, 33, 47]] {
        let images = Tensor::<4>::random(
            [n, 3, h, w],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let logits = model.forward(images);
        assert_eq!(logits.dims(), [n, 10], "input {h}x{w}");
        let finite: bool = logits.is_finite().all().into_scalar();
        assert!(finite, "input {h}x{w}");
    }
    // The full model at 224, batch 1.
    let full = MobileNetV3::large(1000, &device);
    let logits = full.forward(Tensor::<4>::zeros([1, 3, 224, 224], &device));
    assert_eq!(logits.dims(), [1, 1000]);
}

#[test]
fn missing_weight_file_is_an_error() {
    let device = Device::flex();
    let model = MobileNetV3Config::large(10).narrowed(8).init(&device);
    let path = std::env::temp_dir().join("burn-quantize-no-such-mobilenet_v3.pth");
    match model.load_pytorch(&path) {
        Err(Error::Weights { path: p, .. }) => assert_eq!(p, path),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("loaded a missing file"),
    }
}
