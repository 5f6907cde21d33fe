//! [`QuantizedModel`] as a Burn [`Module`]: its layers' tensors are its parameters (named
//! `convs.0.weight`, ... under the field that holds it), its program is a constant, so it can
//! be a field of a user's `#[derive(Module)]` model (a quantized backbone under a float head)
//! and be saved, loaded and moved with the rest.
//!
//! Whatever changes the tensors (loading a record through Burn, a mapper, a device move) packs
//! the layers again and forgets the float parameters uploaded for runs, so the next run uses
//! what was loaded. A layer whose loaded weights cannot be packed stays unpacked and makes runs
//! errors ([`try_forward`](QuantizedModel::try_forward)) or panics
//! ([`forward`](QuantizedModel::forward)).

use burn::module::{
    Content, Devices, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper, ModuleVisitor,
};
use burn::tensor::Device;

use super::QuantizedModel;

impl Clone for QuantizedModel {
    /// The same program, layers and settings; runs of the clone use their own arenas.
    fn clone(&self) -> Self {
        QuantizedModel {
            program: self.program.clone(),
            layers: self.layers.clone(),
            executor: self.executor.clone(),
        }
    }
}

impl QuantizedModel {
    /// Packs every layer again after its tensors changed, and forgets the uploaded float
    /// parameters. Packing errors leave the layer unpacked (a run reports them).
    fn repacked(mut self) -> Self {
        for conv in &mut self.layers.convs {
            let _ = conv.pack();
        }
        for linear in &mut self.layers.linears {
            let _ = linear.pack();
        }
        for linear in &mut self.layers.dynamic_linears {
            let _ = linear.pack();
        }
        self.executor.forget_float_params();
        self
    }
}

impl Module for QuantizedModel {
    fn collect_devices(&self, devices: Devices) -> Devices {
        self.layers.collect_devices(devices)
    }

    fn fork(mut self, device: &Device) -> Self {
        self.layers = self.layers.fork(device);
        self.repacked()
    }

    fn to_device(mut self, device: &Device) -> Self {
        self.layers = self.layers.to_device(device);
        self.repacked()
    }

    /// Quantized layers do not train: the model is the same.
    fn train(self) -> Self {
        self
    }

    fn valid(&self) -> Self {
        self.clone()
    }

    fn materialize(self) -> Self {
        self
    }

    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        self.layers.visit(visitor);
    }

    fn map<M: ModuleMapper>(mut self, mapper: &mut M) -> Self {
        self.layers = self.layers.map(mapper);
        self.repacked()
    }
}

impl ModuleDisplayDefault for QuantizedModel {
    fn content(&self, content: Content) -> Option<Content> {
        let (int8, float) = self.report().counts();
        content
            .add_formatted(&format!(
                "{} steps, {int8} nodes int8, {float} float",
                self.program.steps.len()
            ))
            .optional()
    }

    fn num_params(&self) -> usize {
        ModuleDisplayDefault::num_params(&self.layers)
    }
}

impl ModuleDisplay for QuantizedModel {}
