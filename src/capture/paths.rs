//! Module paths: which parameter of the user's module tree each captured tensor is.

use std::collections::HashMap;

use burn::backend::capture::CaptureBackend;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn_ir::TensorId;

use crate::graph::ParamRef;

/// Walks a module that lives on the capture device and returns, for every float parameter and
/// running state, its tensor id with its module path and layer type.
pub(crate) fn parameter_paths<M: Module>(module: &M) -> HashMap<TensorId, ParamRef> {
    let mut collector = PathCollector {
        stack: Vec::new(),
        found: HashMap::new(),
    };
    module.visit(&mut collector);
    collector.found
}

/// The id of a tensor on the capture device.
pub(crate) fn capture_id<const D: usize>(tensor: &Tensor<D>) -> Option<TensorId> {
    tensor
        .clone()
        .try_into_primitive::<CaptureBackend>()
        .ok()
        .map(|t| t.id())
}

/// Keeps the chain of `enter_module(name, container_type)` calls: for a parameter at
/// `layer1.0.conv1.weight` the stack holds `layer1`, `0`, `conv1`, `weight`, each with the type of
/// the container it was entered from (`Struct:Conv2d` for `weight`).
struct PathCollector {
    stack: Vec<(String, String)>,
    found: HashMap<TensorId, ParamRef>,
}

impl ModuleVisitor for PathCollector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(id) = capture_id(&param.val()) else {
            return;
        };
        let Some((name, container)) = self.stack.last() else {
            return;
        };
        let layer = container
            .split_once(':')
            .map_or(container.as_str(), |(_, t)| t);
        let module: Vec<&str> = self.stack[..self.stack.len() - 1]
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        self.found.insert(
            id,
            ParamRef {
                module: module.join("."),
                name: name.clone(),
                layer: layer.to_string(),
            },
        );
    }
}
