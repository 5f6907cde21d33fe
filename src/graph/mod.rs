//! Our own small op graph: what a model's forward does, as values and nodes.
//!
//! A [`Graph`] is made by [`capture`](crate::capture) from a Burn model, rewritten by the passes
//! in [`passes`], run in float by [`FloatExecutor`](crate::exec::FloatExecutor), and later
//! converted to int8. It is plain serde data with a format version, so it can be saved beside a
//! model's weights.
//!
//! Shapes are symbolic in the batch size: every dimension is a [`Dim`], `batch * N + fixed`,
//! where `N` is the batch size of the run. A graph captured at batch 2 therefore runs at batch 1
//! or 7. Every other size (height, width) is free: each run infers its values' shapes from its
//! inputs op by op (`infer`), so a graph captured at 224x224 runs at 160x160 or 256x192.

mod attrs;
mod batch;
mod display;
pub(crate) mod infer;
mod layer;
pub(crate) mod lower;
mod op;
pub mod passes;
mod shapes;

use std::collections::BTreeMap;

use burn::tensor::{DType, TensorData};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub use attrs::MAX_SIZE;
pub(crate) use attrs::check_sizes;
pub(crate) use batch::make_batch_free;
pub(crate) use infer::{RunShapes, broadcast_all, cat_shape, reshape_target};
pub(crate) use layer::LayerLayout;
pub(crate) use op::fallback_name;
pub use op::{Activation, BinaryOp, Conv2dAttrs, Op, PadMode, Pool2dAttrs, ReduceOp, SliceRange};
pub use shapes::ValueShapes;

/// Version of the serialized [`Graph`] format; bumped on every incompatible change.
pub const GRAPH_FORMAT_VERSION: u32 = 1;

/// Identifies a value (a tensor) of a [`Graph`]; an index into [`Graph::values`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ValueId(pub u32);

impl ValueId {
    /// The index of this value in [`Graph::values`].
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl std::fmt::Display for ValueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// One dimension of a shape: `batch * N + fixed`, where `N` is the batch size of the run.
///
/// Most dimensions are fixed (`batch == 0`); the batch dimension of an activation is `N`
/// (`batch == 1, fixed == 0`); a reshape that folds the batch into another axis gives, for
/// example, `64N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dim {
    /// How much the dimension grows per batch element.
    pub batch: i64,
    /// The constant part.
    pub fixed: i64,
}

impl Dim {
    /// A dimension that does not depend on the batch size.
    pub fn fixed(size: usize) -> Self {
        Dim {
            batch: 0,
            fixed: size as i64,
        }
    }

    /// Whether the dimension is the same at every batch size.
    pub fn is_fixed(self) -> bool {
        self.batch == 0
    }

    /// The size at batch size `n`, or `None` where it would be negative.
    pub fn at(self, n: usize) -> Option<usize> {
        usize::try_from(self.batch * n as i64 + self.fixed).ok()
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.batch, self.fixed) {
            (0, c) => write!(f, "{c}"),
            (1, 0) => write!(f, "N"),
            (b, 0) => write!(f, "{b}N"),
            (1, c) => write!(f, "N{c:+}"),
            (b, c) => write!(f, "{b}N{c:+}"),
        }
    }
}

/// Where a parameter comes from in the user's module tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamRef {
    /// The module path of the layer that owns it, e.g. `layer1.0.conv1` (empty at the root).
    pub module: String,
    /// The parameter's field name in that layer, e.g. `weight` or `running_mean`.
    pub name: String,
    /// The layer's type, e.g. `Conv2d`, `BatchNorm`, `Linear`.
    pub layer: String,
}

impl ParamRef {
    /// The full path, `module.name`, as Burn records and the user's module tree spell it.
    pub fn path(&self) -> String {
        if self.module.is_empty() {
            self.name.clone()
        } else {
            format!("{}.{}", self.module, self.name)
        }
    }
}

/// What a value is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ValueKind {
    /// A runtime input of the graph.
    Input,
    /// A parameter of the model (its data is in [`Graph::tensors`]).
    Parameter(ParamRef),
    /// A constant made inside the forward or by a pass (its data is in [`Graph::tensors`]).
    Constant,
    /// Computed by a node.
    Activation,
}

/// A value's type and origin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValueInfo {
    /// Its shape, symbolic in the batch size.
    pub shape: Vec<Dim>,
    /// Its element type.
    pub dtype: DType,
    /// What it is.
    pub kind: ValueKind,
}

/// One operation of the graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// A unique, readable name: the layer's module path for nodes that use a layer's parameters
    /// (`layer1.0.conv1`), otherwise the op and a counter (`add_3`).
    pub name: String,
    /// The operation and its attributes.
    pub op: Op,
    /// The values it reads, in the op's order (for `Conv2d`: input, weight, optional bias).
    pub inputs: Vec<ValueId>,
    /// The values it produces.
    pub outputs: Vec<ValueId>,
    /// The module path and layer type of the layer whose parameters it uses, if any.
    pub module: Option<ModuleRef>,
    /// An activation fused into the node by [`passes::fuse_activations`], applied to its output.
    #[serde(default)]
    pub activation: Option<Activation>,
}

/// The layer a node belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRef {
    /// Module path, e.g. `layer1.0.conv1`.
    pub path: String,
    /// Layer type, e.g. `Conv2d`.
    pub layer: String,
}

/// Whether the graph runs at any batch size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchMode {
    /// Every shape is symbolic in the batch size; any batch size runs.
    Free,
    /// Only this batch size runs, because the forward depends on it in a way the graph cannot
    /// express (for example a constant made with the batch size inside the forward).
    Fixed {
        /// The batch size the graph was captured at.
        size: usize,
        /// Why the graph could not be made batch-free.
        reason: String,
    },
}

/// A model's forward as an op graph: values, nodes in execution order, and parameter data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// [`GRAPH_FORMAT_VERSION`] of the code that wrote it.
    pub version: u32,
    /// Every value, indexed by [`ValueId`].
    pub values: Vec<ValueInfo>,
    /// The nodes, in an order where every value is produced before it is read.
    pub nodes: Vec<Node>,
    /// The runtime inputs, in the forward's order.
    pub inputs: Vec<ValueId>,
    /// The outputs, in the forward's order.
    pub outputs: Vec<ValueId>,
    /// Data of parameters and constants.
    pub tensors: BTreeMap<ValueId, TensorData>,
    /// Whether the graph runs at any batch size.
    pub batch: BatchMode,
}

impl ValueShapes for Graph {
    fn value_info(&self, id: ValueId) -> &ValueInfo {
        self.value(id)
    }

    fn input_ids(&self) -> &[ValueId] {
        &self.inputs
    }

    fn batch_mode(&self) -> &BatchMode {
        &self.batch
    }
}

impl Graph {
    /// Information about a value.
    pub fn value(&self, id: ValueId) -> &ValueInfo {
        &self.values[id.index()]
    }

    /// Adds a value and returns its id.
    pub fn add_value(&mut self, info: ValueInfo) -> ValueId {
        self.values.push(info);
        ValueId((self.values.len() - 1) as u32)
    }

    /// The node that produces `id`, if a node does.
    pub fn producer(&self, id: ValueId) -> Option<usize> {
        self.nodes.iter().position(|n| n.outputs.contains(&id))
    }

    /// The indices of the nodes that read `id`.
    pub fn consumers(&self, id: ValueId) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].inputs.contains(&id))
            .collect()
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The data of the parameter at `path` (`layer1.0.conv1.weight`).
    pub fn parameter(&self, path: &str) -> Option<&TensorData> {
        self.values
            .iter()
            .enumerate()
            .find_map(|(i, v)| match &v.kind {
                ValueKind::Parameter(p) if p.path() == path => self.tensors.get(&ValueId(i as u32)),
                _ => None,
            })
    }

    /// The full paths of every parameter the graph uses, in value order.
    pub fn parameter_paths(&self) -> Vec<String> {
        self.values
            .iter()
            .filter_map(|v| match &v.kind {
                ValueKind::Parameter(p) => Some(p.path()),
                _ => None,
            })
            .collect()
    }

    /// The module path each node belongs to, in node order: its layer's path for nodes with
    /// parameters (`layer1.0.conv1`); for the others, the module around the layer that made
    /// their first input (`layer1.0` for the add of a residual block), or the root (`""`) when
    /// that input is a graph input. Burn records no path for modules without parameters, so
    /// this is the closest a path can be recovered.
    pub fn scopes(&self) -> Vec<String> {
        let mut made_in: std::collections::HashMap<ValueId, String> =
            std::collections::HashMap::new();
        let mut scopes = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let scope = match &node.module {
                Some(m) => m.path.clone(),
                None => node
                    .inputs
                    .iter()
                    .find_map(|v| made_in.get(v).cloned())
                    .unwrap_or_default(),
            };
            // What this node makes belongs to the module around a layer, or to this scope.
            let around = match &node.module {
                Some(m) => m
                    .path
                    .rsplit_once('.')
                    .map(|(parent, _)| parent.to_string())
                    .unwrap_or_default(),
                None => scope.clone(),
            };
            for &out in &node.outputs {
                made_in.insert(out, around.clone());
            }
            scopes.push(scope);
        }
        scopes
    }

    /// Checks that the graph is well formed: every value read is an input, a parameter or
    /// constant with data, or produced by an earlier node, and the version is ours.
    pub fn validate(&self) -> Result<()> {
        if self.version != GRAPH_FORMAT_VERSION {
            return Err(Error::InvalidGraph(format!(
                "graph format version {} (this build reads version {GRAPH_FORMAT_VERSION})",
                self.version
            )));
        }
        let mut ready = vec![false; self.values.len()];
        let check = |id: ValueId, what: &str| {
            if id.index() >= self.values.len() {
                Err(Error::InvalidGraph(format!(
                    "{what} refers to unknown value {id}"
                )))
            } else {
                Ok(())
            }
        };
        for &id in &self.inputs {
            check(id, "graph input")?;
            ready[id.index()] = true;
        }
        // Parameters and constants are ready when they have data (unused ones need none).
        for &id in self.tensors.keys() {
            check(id, "tensor data")?;
            ready[id.index()] = true;
        }
        for node in &self.nodes {
            for &id in &node.inputs {
                check(id, &node.name)?;
                if !ready[id.index()] {
                    return Err(Error::InvalidGraph(format!(
                        "node `{}` reads {id}, which is neither produced before it nor has data",
                        node.name
                    )));
                }
            }
            for &id in &node.outputs {
                check(id, &node.name)?;
                ready[id.index()] = true;
            }
        }
        for &id in &self.outputs {
            check(id, "graph output")?;
            if !ready[id.index()] {
                return Err(Error::InvalidGraph(format!(
                    "graph output {id} is never produced"
                )));
            }
        }
        Ok(())
    }

    /// Serializes the graph to JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| Error::InvalidGraph(format!("graph to JSON: {e}")))
    }

    /// Reads a graph from JSON and validates it.
    pub fn from_json(json: &str) -> Result<Self> {
        let graph: Graph = serde_json::from_str(json)
            .map_err(|e| Error::InvalidGraph(format!("graph from JSON: {e}")))?;
        graph.validate()?;
        Ok(graph)
    }
}
