//! `conformance -- mobilenet_v3`: our MobileNetV3-Large loaded from a torchvision state dict
//! (`<goldens>/mobilenet_v3_large/mobilenet_v3_large.pth`, seeded random weights with
//! re-estimated BatchNorm statistics), run eagerly on Flex on the first `n_eval` golden images,
//! against torchvision's `float_logits`.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use burn_quantize::models::mobilenet_v3::{MobileNetV3, MobileNetV3Config};

use crate::goldens::{read_json, read_tensor};

/// The golden model's folder name under the goldens directory.
pub const NAME: &str = "mobilenet_v3_large";

/// The float bar: max |ours - torchvision| over the logits.
const MAX_ABS: f32 = 1e-4;
/// The bar relative to the largest torchvision logit. torchvision initialises the classifier
/// with N(0, 0.01) weights, so the golden logits are small (|l| < 2e-3) and `MAX_ABS` alone
/// passes real mistakes: BatchNorm with eps 1e-5 instead of 1e-3 is off by 2.1e-6 (1.1e-3 of the
/// largest logit); the right model is off by about 1e-6 of it.
const MAX_REL: f32 = 1e-5;

/// The golden MobileNetV3-Large, the images and torchvision's float logits on them.
#[allow(
    dead_code,
    reason = "model, dir and images are for the int8 part of the check"
)]
pub struct FloatCheck {
    /// The model with the golden weights.
    pub model: MobileNetV3,
    /// Its folder (`golden.json`, `golden.safetensors`).
    pub dir: PathBuf,
    /// All golden images (`imagenet20.safetensors`), `[20, 3, 224, 224]`.
    pub images: Tensor<4>,
    /// How many of the images the golden logits cover (the first `n_eval`).
    pub n_eval: usize,
    /// Our float logits on the first `n_eval` images.
    pub logits: Tensor<2>,
    /// torchvision's float logits on them.
    pub pytorch: Tensor<2>,
    /// max |logits - pytorch|.
    pub max_abs: f32,
    /// `max_abs` over the largest |pytorch| logit.
    pub max_rel: f32,
}

/// Loads the golden model and images and compares our float logits with torchvision's.
pub fn float_check(
    goldens: &Path,
    device: &Device,
) -> Result<FloatCheck, Box<dyn std::error::Error>> {
    let dir = goldens.join(NAME);
    let model = MobileNetV3Config::large(1000)
        .init(device)
        .load_pytorch(dir.join(format!("{NAME}.pth")))?;
    let n_eval = read_json(&dir.join("golden.json"))?["n_eval"]
        .as_u64()
        .ok_or("golden.json: n_eval")? as usize;
    let golden_images = read_tensor(&goldens.join("imagenet20.safetensors"), "images")?;
    let images: Tensor<4> = golden_images.first(golden_images.shape[0], device);
    let expected = read_tensor(&dir.join("golden.safetensors"), "float_logits")?;
    let pytorch: Tensor<2> = expected.first(n_eval, device);
    let logits = model.forward(images.clone().narrow(0, 0, n_eval));
    let max_abs: f32 = logits
        .clone()
        .sub(pytorch.clone())
        .abs()
        .max()
        .into_scalar();
    let largest: f32 = pytorch.clone().abs().max().into_scalar();
    let max_rel = max_abs / largest;
    Ok(FloatCheck {
        model,
        dir,
        images,
        n_eval,
        logits,
        pytorch,
        max_abs,
        max_rel,
    })
}

/// Runs the check; the last line is `mobilenet_v3_large float_max_abs=<a>`.
pub fn run(goldens: &Path) -> Result<bool, Box<dyn std::error::Error>> {
    let device = Device::flex();
    let check = float_check(goldens, &device)?;
    let top1 =
        |t: &Tensor<2>| -> Vec<i64> { t.clone().argmax(1).into_data().iter::<i64>().collect() };
    let agree = top1(&check.logits)
        .iter()
        .zip(top1(&check.pytorch))
        .filter(|(a, b)| **a == *b)
        .count();
    let passed = check.max_abs <= MAX_ABS && check.max_rel <= MAX_REL;
    println!(
        "{NAME:<18} n_eval={} max_abs_vs_pytorch={:.3e} relative_to_largest_logit={:.3e} \
         top1_agreement={agree}/{} {}",
        check.n_eval,
        check.max_abs,
        check.max_rel,
        check.n_eval,
        if passed { "ok" } else { "FAIL" }
    );
    println!("{NAME} float_max_abs={:.3e}", check.max_abs);
    Ok(passed)
}
