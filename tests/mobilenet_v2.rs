//! MobileNetV2 in torchvision's layout: torchvision's parameter count, output shapes at several
//! input sizes, and every layer in int8 after quantization.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use burn_quantize::models::mobilenet_v2::MobileNetV2;
use burn_quantize::prepare::prepare;
use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};
use burn_quantize::quantized::convert;
use burn_quantize::{Forward, Graph};

mod common;

#[test]
fn has_torchvisions_parameter_count_and_structure() {
    let model = MobileNetV2::new(1000, &Device::flex());
    assert_eq!(model.features.len(), 19);
    let residual = model.features.iter().filter(|f| f.residual).count();
    assert_eq!(residual, 10);
    // torchvision counts 3,504,872 parameters; Burn also counts BatchNorm's running mean and
    // variance (2 x 17,056 values), which torchvision keeps as buffers.
    assert_eq!(model.num_params(), 3_504_872 + 2 * 17_056);
}

#[test]
fn runs_at_any_input_size_and_quantizes_every_node() {
    let device = Device::flex();
    let model = MobileNetV2::new(10, &device);
    let x = common::images_hw(2, 1, [64, 64], &device);
    let graph = Graph::capture(&model, &x).unwrap();
    let qmodel = convert(
        &prepare(&graph, &QConfigMap::global(QConfig::preset(Engine::X86)))
            .unwrap()
            .calibrate(|m| m.forward::<4, 2>(x.clone()).map(|_| ()))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(qmodel.report().counts().1, 0, "{}", qmodel.report());
    for [h, w] in [[64, 64], [96, 80], [33, 47]] {
        let x = common::images_hw(1, 2, [h, w], &device);
        let float: Tensor<2> = Forward::forward(&model, x.clone());
        let int8: Tensor<2> = qmodel.try_forward(x).unwrap();
        assert_eq!(float.dims(), [1, 10]);
        assert_eq!(int8.dims(), [1, 10]);
    }
}
