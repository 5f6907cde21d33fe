//! [`QuantizedModel`]: a converted model, run with the int8 kernels; [`convert`] (PyTorch's
//! `convert_fx`) makes one from a calibrated model, [`convert_debug`] its debug model.
//!
//! Above both `convert` (which writes the [`program`](crate::program)) and `exec` (which runs
//! it): the model is the program, its layers, and the executor planned for them.

mod debug;
mod module;

use std::fmt;

use burn::tensor::Tensor;

use crate::Result;
use crate::capture::Tensors;
use crate::exec::{Arithmetic, QuantizedExecutor, RunValue, Tap};
use crate::graph::ValueId;
use crate::nn::{QConv2d, QLinear};
use crate::prepare::{Placement, PreparedModel};

pub use crate::exec::NonFinite;
pub use crate::program::{
    ConvLayer, Domain, LinearLayer, NodeReport, PROGRAM_FORMAT_VERSION, QuantizedLayers,
    QuantizedProgram, Step,
};
pub use debug::{DebugModel, convert_debug};

/// Converts a calibrated model to int8 (PyTorch's `convert_fx`): its program and layers (see
/// [`crate::convert`]), checked and planned for running. Layer tensors are made on the device
/// calibration ran on; the model runs on the device of its input (and moves with
/// `Module::to_device`).
pub fn convert(prepared: &PreparedModel) -> Result<QuantizedModel> {
    let (program, layers) = crate::convert::to_program(prepared)?;
    QuantizedModel::new(program, layers)
}

/// A quantized model: its program and layers. `forward` takes and returns ordinary Burn
/// tensors; inside, int8 nodes run on the int8 kernels (NHWC `u8`) and the rest in float
/// through Burn on the input's device. It is a Burn [`Module`](burn::module::Module) (its
/// layers' tensors are its parameters, its program a constant), so it can be a field of a
/// user's model and be saved, loaded and moved with it; [`save`](Self::save) and
/// [`load`](Self::load) write and read a self-contained, checked record with the program.
///
/// ```no_run
/// # use burn::prelude::*;
/// # use burn_quantize::quantized::QuantizedModel;
/// # fn run(qmodel: &QuantizedModel, images: Tensor<4>) -> burn_quantize::Result<()> {
/// let logits: Tensor<2> = qmodel.try_forward(images.clone())?; // or forward: panics on errors
/// let logits: Tensor<2> = qmodel.forward(images);
/// println!("{}", qmodel.report());          // every node: int8 or float, and why
/// qmodel.save("model_int8.bpk")?;
/// # Ok(()) }
/// ```
pub struct QuantizedModel {
    pub(crate) program: QuantizedProgram,
    pub(crate) layers: QuantizedLayers,
    pub(crate) executor: QuantizedExecutor,
}

impl fmt::Debug for QuantizedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuantizedModel")
            .field("steps", &self.program.steps.len())
            .field("convs", &self.layers.convs.len())
            .field("linears", &self.layers.linears.len())
            .field("dynamic_linears", &self.layers.dynamic_linears.len())
            .finish()
    }
}

impl QuantizedModel {
    pub(crate) fn new(program: QuantizedProgram, layers: QuantizedLayers) -> Result<Self> {
        let executor = QuantizedExecutor::new(&program, &layers)?;
        Ok(QuantizedModel {
            program,
            layers,
            executor,
        })
    }

    /// Runs the model on one input of rank `DI` (on the input's device) and returns its output
    /// of rank `DO`, as a Burn module's `forward` does.
    ///
    /// # Panics
    ///
    /// On what [`try_forward`](Self::try_forward) returns as an error: an input of a shape or
    /// rank the model cannot take, a non-finite input value, an output of another rank.
    pub fn forward<const DI: usize, const DO: usize>(&self, input: Tensor<DI>) -> Tensor<DO> {
        self.try_forward(input)
            .unwrap_or_else(|e| panic!("QuantizedModel::forward: {e}"))
    }

    /// Runs the model on one input of rank `DI` (on the input's device) and returns its output
    /// of rank `DO`, or an error naming the shape or value that it cannot take.
    pub fn try_forward<const DI: usize, const DO: usize>(
        &self,
        input: Tensor<DI>,
    ) -> Result<Tensor<DO>> {
        self.run_with(input, Arithmetic::Kernels, None)
    }

    /// [`forward`](Self::forward) for models of several inputs or outputs: one tensor or a
    /// tuple of tensors each ([`Tensors`]), on the first input's device.
    ///
    /// # Panics
    ///
    /// On what [`try_run`](Self::try_run) returns as an error.
    pub fn run<I: Tensors, O: Tensors>(&self, inputs: I) -> O {
        self.try_run(inputs)
            .unwrap_or_else(|e| panic!("QuantizedModel::run: {e}"))
    }

    /// [`try_forward`](Self::try_forward) for models of several inputs or outputs.
    pub fn try_run<I: Tensors, O: Tensors>(&self, inputs: I) -> Result<O> {
        self.run_with(inputs, Arithmetic::Kernels, None)
    }

    /// Runs the model and shows every value of the program to `tap` as it is made (`u8`
    /// values NHWC for images): for inspecting activations and comparing with the float or
    /// debug model.
    pub fn forward_observed<const DI: usize, const DO: usize>(
        &self,
        input: Tensor<DI>,
        tap: &mut dyn FnMut(ValueId, &RunValue) -> Result<()>,
    ) -> Result<Tensor<DO>> {
        self.run_with(input, Arithmetic::Kernels, Some(tap))
    }

    /// Sets how large batches run: as chunks of images whose values fill at most `bytes` of
    /// the run's arena each (at least one image per chunk), the chunks in parallel on the
    /// current rayon pool; `None` runs every batch whole. Chunks keep a layer's values in the
    /// caches and give threads work across images; the outputs are the same bytes either way.
    /// The default is 8 MiB. Only programs that work image by image (every step int8, the
    /// batch on axis 0 of every value) are chunked; see [`QuantizedModel::chunks_batches`].
    pub fn set_batch_chunk_bytes(&mut self, bytes: Option<usize>) {
        self.executor.set_chunk_bytes(bytes);
    }

    /// Sets what a run does with a non-finite (NaN or infinite) value it quantizes (a model
    /// input, or a float node's output on its way back to int8): by default
    /// [`NonFinite::Error`], an [`Error::NonFinite`](crate::Error::NonFinite) naming the input;
    /// [`NonFinite::Quantize`] opts out (PyTorch's behaviour: NaN to the top of the range).
    pub fn set_non_finite(&mut self, policy: NonFinite) {
        self.executor.set_non_finite(policy);
    }

    /// What a run does with a non-finite value it quantizes (see
    /// [`QuantizedModel::set_non_finite`]).
    pub fn non_finite(&self) -> NonFinite {
        self.executor.non_finite()
    }

    /// Whether large batches run in chunks (see [`QuantizedModel::set_batch_chunk_bytes`]).
    pub fn chunks_batches(&self) -> bool {
        self.executor.chunks_batches()
    }

    /// Runs the model with the given arithmetic, showing every value to `tap` if given.
    pub(crate) fn run_with<I: Tensors, O: Tensors>(
        &self,
        inputs: I,
        arithmetic: Arithmetic,
        tap: Tap,
    ) -> Result<O> {
        let device = inputs.device();
        let outputs = self.executor.run(
            &self.program,
            &self.layers,
            inputs.into_dispatch(),
            &device,
            arithmetic,
            tap,
        )?;
        O::from_dispatch(outputs)
    }

    /// The program it runs.
    pub fn program(&self) -> &QuantizedProgram {
        &self.program
    }

    /// Its layers (what the record stores).
    pub fn layers(&self) -> &QuantizedLayers {
        &self.layers
    }

    /// The quantized convolution of node `name` (its layer's module path).
    pub fn conv(&self, name: &str) -> Option<&QConv2d> {
        let i = self.program.convs.iter().position(|l| l.name == name)?;
        self.layers.convs.get(i)
    }

    /// The quantized linear layer of node `name` (its layer's module path).
    pub fn linear(&self, name: &str) -> Option<&QLinear> {
        let i = self.program.linears.iter().position(|l| l.name == name)?;
        self.layers.linears.get(i)
    }

    /// What became of every node of the prepared graph: int8 or float, and why.
    pub fn report(&self) -> Report<'_> {
        Report(self)
    }
}

/// The conversion report of a [`QuantizedModel`]; its `Display` is a table.
pub struct Report<'a>(&'a QuantizedModel);

impl Report<'_> {
    /// How many nodes run in int8 and how many in float.
    pub fn counts(&self) -> (usize, usize) {
        let int8 = self
            .0
            .program
            .report
            .iter()
            .filter(|r| matches!(r.placement, Placement::Int8(_)))
            .count();
        (int8, self.0.program.report.len() - int8)
    }

    /// How many quantized nodes make a 16-bit value (W8A16) or have wider weights (W12, W16).
    pub fn int16_nodes(&self) -> usize {
        (self.0.program.report.iter())
            .filter(|r| r.bits.contains(&16) || r.weight_bits.is_some_and(|b| b > 8))
            .count()
    }
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (int8, float) = self.counts();
        let wide = self.int16_nodes();
        writeln!(
            f,
            "{int8} nodes quantized ({wide} with 16-bit outputs or weights), {float} in float"
        )?;
        for r in &self.0.program.report {
            match &r.placement {
                Placement::Int8(op) => {
                    let kind = match (r.bits.contains(&16), r.weight_bits) {
                        (true, Some(8) | None) => "int16".to_string(),
                        (true, Some(w)) => format!("w{w}a16"),
                        (false, Some(8) | None) => "int8".to_string(),
                        (false, Some(w)) => format!("w{w}"),
                    };
                    write!(f, "  {kind:<6} {:<28} {:<24} {op:?}", r.name, r.op)?;
                    match &r.narrowed {
                        Some(why) => writeln!(f, " (8-bit output: {why})")?,
                        None => writeln!(f)?,
                    }
                }
                Placement::Float(why) => writeln!(f, "  float  {:<28} {:<24} {why}", r.name, r.op)?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for QuantizedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let program = self.program();
        let typed = |ids: &[ValueId]| -> String {
            let items: Vec<String> = ids.iter().map(|&id| program.typed(id)).collect();
            items.join(", ")
        };
        writeln!(
            f,
            "quantized({}) -> ({})",
            typed(&program.inputs),
            typed(&program.outputs)
        )?;
        for step in &program.steps {
            let (outputs, call, name) = program.describe(step);
            writeln!(
                f,
                "  {} = {call}{}",
                typed(&outputs),
                name.map(|n| format!("  # {n}")).unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution, Tensor};

    use super::convert;
    use crate::Graph;
    use crate::models::ResNetConfig;
    use crate::prepare::prepare;
    use crate::qconfig::{Engine, QConfig, QConfigMap};

    #[test]
    fn dynamic_layers_in_the_float_reference_give_the_kernels_bits() {
        use crate::exec::Arithmetic;
        use crate::models::transformer::Encoder;
        use burn::nn::transformer::TransformerEncoderConfig;
        let device = Device::flex();
        let config = TransformerEncoderConfig::new(32, 64, 4, 1).with_dropout(0.0);
        let model = Encoder::new(&config, &device);
        let x = Tensor::<3>::random([3, 5, 32], Distribution::Uniform(-2.0, 2.0), &device);
        let qconfig = crate::qconfig::DynamicConfig::default();
        let qmodel = crate::quantize_dynamic(&model, &x, &qconfig).unwrap();
        let run = |arithmetic| {
            qmodel
                .run_with::<_, Tensor<3>>(x.clone(), arithmetic, None)
                .unwrap()
                .into_data()
        };
        assert_eq!(run(Arithmetic::Kernels), run(Arithmetic::FloatReference));
    }

    #[test]
    fn runs_of_a_seen_shape_reuse_the_pooled_arena_and_the_cached_plan() {
        let device = Device::flex();
        let net = ResNetConfig::resnet18(10).narrowed(8).init(&device);
        let x =
            |n, hw| Tensor::<4>::random([n, 3, hw, hw], Distribution::Uniform(-2.0, 2.0), &device);
        let graph = Graph::capture(&net, &x(2, 32)).unwrap();
        let qmodel = convert(
            &prepare(&graph, &QConfigMap::global(QConfig::preset(Engine::X86)))
                .unwrap()
                .calibrate(|m| m.forward::<4, 2>(x(4, 32)).map(|_| ()))
                .unwrap(),
        )
        .unwrap();
        qmodel.try_forward::<4, 2>(x(2, 32)).unwrap();
        let first = qmodel.executor.pooled();
        assert_eq!((first.0, first.1.len()), (1, 1));
        for _ in 0..3 {
            qmodel.try_forward::<4, 2>(x(2, 32)).unwrap();
            assert_eq!(qmodel.executor.pooled(), first);
        }
        // A smaller input: a new plan, the same arena (large enough already).
        qmodel.try_forward::<4, 2>(x(1, 24)).unwrap();
        assert_eq!(qmodel.executor.pooled(), (2, first.1.clone()));
        // A larger one grows the arena once; then it is reused again.
        qmodel.try_forward::<4, 2>(x(3, 32)).unwrap();
        let grown = qmodel.executor.pooled();
        assert_eq!((grown.0, grown.1.len()), (3, 1));
        qmodel.try_forward::<4, 2>(x(2, 32)).unwrap();
        assert_eq!(qmodel.executor.pooled(), grown);
    }
}
