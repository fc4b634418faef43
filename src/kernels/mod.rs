//! Our own WGSL compute shaders (in `shaders/`), wired into Burn's wgpu backend.
//!
//! How a kernel reaches Burn (Burn 0.22.1, features `template` + `extension`, no `fusion`):
//!
//! 1. A `KernelSource` hands Burn the WGSL text of one shader (placeholders such as
//!    `{{ workgroup_size }}` filled in) and tags it `"wgsl"`; cubecl compiles it once per
//!    process and caches it under the kernel's `KernelId`.
//! 2. `impl ... for CubeBackend` launches it on the tensors' cubecl client. `CubeBackend`
//!    is one type for every cubecl runtime (wgpu, CUDA, ROCm, CPU), so the launch code
//!    checks the runtime itself and falls back to tensor ops where WGSL cannot run.
//! 3. `#[backend_extension(Autodiff, Cube, Flex)]` generates the `Dispatch` routing, so a
//!    plain `Tensor` reaches the right implementation at run time; our
//!    `impl ... for Autodiff<B, C>` records a hand-written backward step that calls the
//!    backward kernel, which is how gradients flow through the custom op.
//!
//! Burn's `fusion` feature would make the extension's `Cube` backend `Fusion<CubeBackend>`;
//! the impls here are for the unfused `CubeBackend` (our Burn features), so turning fusion
//! on is a compile error here until a `Fusion` impl is written.
//!
//! [`affine`] has WGSL kernels; [`conv`], [`instance_norm`], [`pointwise`], [`resample`] and
//! [`standardise`] are fused on the CPU backend only.

pub mod affine;
pub mod conv;
pub mod instance_norm;
pub mod pointwise;
pub mod resample;
pub mod standardise;

use burn::backend::tensor::FloatTensor;
use burn::backend::{CubeDevice, DispatchDevice, Flex};
use std::mem::MaybeUninit;

use burn::tensor::{Device, TensorData};

/// The name cubecl gives a wgpu runtime whose compiler emits WGSL.
///
/// A wgpu device alone is not enough: with Burn's `vulkan` or `metal` features wgpu
/// compiles kernels to SPIR-V or MSL ("wgpu<spirv>", "wgpu<msl>") and a WGSL template is
/// then refused at launch.
pub(crate) const WGSL_RUNTIME: &str = "wgpu<wgsl>";

/// Whether our WGSL kernels can run on `device`.
///
/// Burn 0.22's `Device` is a runtime value: `as_dispatch()` gives the `DispatchDevice`
/// enum. Its `Autodiff` variant wraps another device, and its `Cube` variant holds a
/// `cubecl::Device` whose own variant names the runtime (`Wgpu`, `Cuda`, `Cpu`, ...). For
/// a wgpu device we also ask its client which compiler it uses (see [`WGSL_RUNTIME`]).
/// Flex, CUDA, the cubecl CPU runtime and anything else answer `false`.
pub fn wgsl_kernels_available(device: &Device) -> bool {
    match execution_device(device.as_dispatch()) {
        DispatchDevice::Cube(cube @ CubeDevice::Wgpu(_)) => cube.client().name() == WGSL_RUNTIME,
        _ => false,
    }
}

/// Whether `device` is the `flex` CPU backend (with or without autodiff).
pub(crate) fn on_flex(device: &Device) -> bool {
    matches!(
        execution_device(device.as_dispatch()),
        DispatchDevice::Flex(_)
    )
}

/// The device that runs the ops: `device` without its autodiff wrappers.
fn execution_device(device: &DispatchDevice) -> &DispatchDevice {
    match device {
        // `AutodiffDevice` derefs to the device it wraps.
        DispatchDevice::Autodiff(inner) => execution_device(inner),
        other => other,
    }
}

/// A tensor of the CPU backend, as our fused ops receive and return them.
type FlexTensor = FloatTensor<Flex>;

/// The values of a contiguous f32 tensor, exactly its elements.
fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("made contiguous f32 first")
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let s = t.layout().shape();
    [s[0], s[1], s[2], s[3]]
}

/// `n` values, written `chunk` at a time over Rayon's threads by `write(index, chunk)`,
/// which must write every element of its chunk (with [`set`], or by loops that visibly
/// cover it).
///
/// `vec![0.0; n]` zeroed each output on the calling thread before the parallel loop: a
/// serial memset per op, a twentieth of an MTT iteration at 1 image per class. Here the
/// memory is left as the allocator gives it and each thread writes its chunks once.
fn written(
    n: usize,
    chunk: usize,
    write: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out: Vec<f32> = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| write(i, c));
    // SAFETY: the chunks cover the first `n` elements and `write` initialised every one.
    unsafe { out.set_len(n) };
    out
}

/// Writes `values` into `out`, one per element; there must be at least as many.
fn set(out: &mut [MaybeUninit<f32>], values: impl ExactSizeIterator<Item = f32>) {
    assert!(values.len() >= out.len(), "a value for every element");
    for (o, v) in out.iter_mut().zip(values) {
        o.write(v);
    }
}

/// `Σ f(a[i], b[i])` in eight lanes, so the compiler vectorises it.
fn lanes(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(&a, &b)| f(a, b))
        .sum();
    for (a, b) in ac.zip(bc) {
        for j in 0..8 {
            acc[j] += f(a[j], b[j]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// A CPU tensor of `shape` holding `values`.
fn flex(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
}

/// What the fused ops' tests share: random tensors, their values, relative differences.
#[cfg(test)]
mod testing {
    use burn::tensor::{Device, Tensor, TensorData};

    use crate::rng::Rng;

    pub fn random<const D: usize>(rng: &mut Rng, dims: [usize; D], device: &Device) -> Tensor<D> {
        let v: Vec<f32> = (0..dims.iter().product()).map(|_| rng.normal()).collect();
        Tensor::from_data(TensorData::new(v, dims), device)
    }

    pub fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// The largest `|a - b| / (1 + |b|)` over equally long slices.
    pub fn max_rel(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
            .fold(0.0, f32::max)
    }
}
