//! Running a Burn op we do not lower, exactly as Burn recorded it, through Burn's own
//! interpreter (`burn_router::TensorInterpreter`) on the concrete backend of the device.

use std::panic::{AssertUnwindSafe, catch_unwind};

#[allow(deprecated)]
use burn::backend::NdArray;
use burn::backend::{
    Backend, BackendTensor, DispatchDevice, DispatchKindConversion, DispatchTensor, Flex,
};
use burn::tensor::{Device, Shape};
use burn_ir::{BackendIr, HandleKind, IrVisitorMut, OperationIr, TensorId, TensorIr, TensorStatus};
use burn_router::TensorInterpreter;

use crate::graph::{ValueId, fallback_name};
use crate::{Error, Result};

/// Runs `ir` (whose tensor ids are our value ids) on `inputs`, with every tensor's shape taken
/// from `shape_of`. Works on the Flex and NdArray devices, whose backends Burn's interpreter
/// can drive.
pub(crate) fn run_fallback(
    ir: &OperationIr,
    inputs: &[(ValueId, DispatchTensor)],
    shape_of: &dyn Fn(ValueId) -> Result<Vec<usize>>,
    device: &Device,
) -> Result<Vec<DispatchTensor>> {
    let mut ir = ir.clone();
    let mut shapes = ShapeFiller {
        shape_of,
        error: None,
    };
    ir.visit_mut(&mut shapes);
    if let Some(err) = shapes.error {
        return Err(err);
    }
    match device.as_dispatch() {
        DispatchDevice::Flex(d) => run_on::<Flex>(&ir, inputs, *d),
        #[allow(deprecated)] // NdArray is deprecated in Burn 0.22 but still a device users have
        DispatchDevice::NdArray(d) => run_on::<NdArray>(&ir, inputs, *d),
        other => Err(Error::Unsupported(format!(
            "op `{}` has no lowering and Burn's interpreter cannot run it on device {other:?}; \
             use a Flex or NdArray device",
            fallback_name(&ir)
        ))),
    }
}

struct ShapeFiller<'a> {
    shape_of: &'a dyn Fn(ValueId) -> Result<Vec<usize>>,
    error: Option<Error>,
}

impl IrVisitorMut for ShapeFiller<'_> {
    fn visit_tensor_mut(&mut self, tensor: &mut TensorIr) {
        match (self.shape_of)(ValueId(tensor.id.value() as u32)) {
            Ok(shape) => tensor.shape = Shape::from(shape),
            Err(err) => self.error = Some(err),
        }
    }
}

fn run_on<B>(
    ir: &OperationIr,
    inputs: &[(ValueId, DispatchTensor)],
    device: B::Device,
) -> Result<Vec<DispatchTensor>>
where
    B: BackendIr + Backend,
    DispatchTensor: DispatchKindConversion<B>,
{
    let name = fallback_name(ir);
    let mut interpreter = TensorInterpreter::<B>::new(device);
    for (id, tensor) in inputs {
        let handle = match DispatchTensor::try_into_backend(tensor.clone())
            .map_err(|e| Error::Unsupported(format!("input of op `{name}`: {e}")))?
        {
            BackendTensor::Float(t) => HandleKind::Float(t),
            BackendTensor::Int(t) => HandleKind::Int(t),
            BackendTensor::Bool(t) => HandleKind::Bool(t),
            _ => {
                return Err(Error::Unsupported(format!(
                    "a quantized input of op `{name}`"
                )));
            }
        };
        interpreter.register_tensor_to_device(TensorId::new(u64::from(id.0)), handle);
    }
    // Read back as the op's final consumer, which takes the handle out of the interpreter.
    let outputs: Vec<TensorIr> = ir
        .outputs()
        .map(|t| TensorIr {
            status: TensorStatus::ReadWrite,
            ..t.clone()
        })
        .collect();
    let run = catch_unwind(AssertUnwindSafe(|| {
        interpreter.register_op(ir.clone());
        outputs
            .iter()
            .map(|out| match interpreter.get_tensor(out) {
                HandleKind::Float(t) => Some(BackendTensor::Float(t)),
                HandleKind::Int(t) => Some(BackendTensor::Int(t)),
                HandleKind::Bool(t) => Some(BackendTensor::Bool(t)),
                HandleKind::Quantized(_) => None,
            })
            .collect::<Option<Vec<_>>>()
    }));
    match run {
        Ok(Some(tensors)) => Ok(tensors
            .into_iter()
            .map(DispatchTensor::from_backend)
            .collect()),
        Ok(None) => Err(Error::Unsupported(format!(
            "op `{name}` returned a quantized tensor"
        ))),
        Err(_) => Err(Error::Unsupported(format!(
            "Burn's interpreter failed on op `{name}`"
        ))),
    }
}
