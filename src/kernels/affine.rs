//! HaBa's affine modulation `y[n] = scale[h[n]] * x[n] + shift[h[n]]` as a Burn backend
//! extension: WGSL kernels on wgpu (`shaders/affine_forward.wgsl`,
//! `shaders/affine_backward.wgsl`), tensor ops on other backends, and a hand-written
//! autodiff step so that gradients reach x, scale and shift.
//!
//! The user-facing, validated entry point is [`crate::haba::affine::affine_modulation`];
//! everything here trusts its caller about shapes and indices.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::tensor::{FloatTensor, IndexingUpdateOp, IntTensor};
use burn::backend::wgpu::{
    CubeBackend, CubeTensor, KernelSource, SourceKernel, SourceTemplate, into_contiguous,
};
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{DType, Shape, Tensor, TensorData};
use cubecl::server::KernelArguments;
use cubecl::{CubeCount, CubeDim, prelude::KernelId};

use super::WGSL_RUNTIME;

/// Invocations per workgroup: 256 is WebGPU's default limit, so every adapter takes it.
const WORKGROUP_SIZE: u32 = 256;
/// WebGPU's default limit of workgroups per dispatch dimension.
const MAX_WORKGROUPS_PER_DIM: usize = 65_535;

const FORWARD_WGSL: &str = include_str!("../../shaders/affine_forward.wgsl");
const BACKWARD_WGSL: &str = include_str!("../../shaders/affine_backward.wgsl");

/// One of our WGSL shaders (its file name and source), as Burn's template machinery wants
/// it: the workgroup size filled in, and an id that tells the shaders apart.
struct Wgsl(&'static str, &'static str);

const FORWARD: Wgsl = Wgsl("affine_forward.wgsl", FORWARD_WGSL);
const BACKWARD: Wgsl = Wgsl("affine_backward.wgsl", BACKWARD_WGSL);

impl KernelSource for Wgsl {
    fn source(&self) -> SourceTemplate {
        SourceTemplate::new(self.1).register("workgroup_size", WORKGROUP_SIZE.to_string())
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.0, WORKGROUP_SIZE))
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// The table both shaders read: `[N, P, M, h[0..N], start[0..=M], members[0..N]]`.
///
/// `members` lists the samples grouped by hallucinator, ascending within each group, and
/// `members[start[m]..start[m + 1]]` is the group of hallucinator `m`: the backward kernel
/// sums over a group in that fixed order, which is what makes it deterministic.
pub(crate) fn info_table(hallucinator: &[u32], plane: usize, hallucinators: usize) -> Vec<u32> {
    let samples = hallucinator.len();
    let mut start = vec![0u32; hallucinators + 1];
    for &m in hallucinator {
        start[m as usize + 1] += 1;
    }
    for m in 0..hallucinators {
        start[m + 1] += start[m];
    }
    let mut next = start.clone();
    let mut members = vec![0u32; samples];
    for (n, &m) in hallucinator.iter().enumerate() {
        members[next[m as usize] as usize] = n as u32;
        next[m as usize] += 1;
    }
    let mut info = Vec::with_capacity(4 + 2 * samples + hallucinators);
    info.extend([samples as u32, plane as u32, hallucinators as u32]);
    info.extend_from_slice(hallucinator);
    info.extend_from_slice(&start);
    info.extend_from_slice(&members);
    info
}

/// Whether the WGSL kernels can take these tensors: a WGSL-compiling wgpu runtime, f32
/// values, and sizes whose invocation ids, padded workgroups included, fit the shaders' u32.
fn wgsl_ready(tensors: &[&CubeTensor]) -> bool {
    let fits = |t: &CubeTensor| {
        let elements = t.meta.shape().num_elements();
        elements > 0 && elements <= (u32::MAX / 2) as usize
    };
    tensors
        .iter()
        .all(|t| t.client.name() == WGSL_RUNTIME && t.dtype == DType::F32 && fits(t))
}

/// Workgroups for `invocations` threads, spread over x and y past the per-dimension limit.
fn cube_count(invocations: usize) -> CubeCount {
    let groups = invocations.div_ceil(WORKGROUP_SIZE as usize).max(1);
    let x = groups.min(MAX_WORKGROUPS_PER_DIM);
    CubeCount::Static(x as u32, groups.div_ceil(x) as u32, 1)
}

#[cfg(test)]
thread_local! {
    /// WGSL launches on this thread so far, so tests can tell the kernels from a silent
    /// fallback (per thread: other tests launch kernels at the same time).
    pub(crate) static LAUNCHES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Launch `kernel` with `tensors` bound in order, then the info table as the last binding.
fn launch(kernel: impl KernelSource, invocations: usize, tensors: &[&CubeTensor], info: &[u32]) {
    #[cfg(test)]
    LAUNCHES.with(|n| n.set(n.get() + 1));
    let client = &tensors[0].client;
    let bytes: Vec<u8> = info.iter().flat_map(|v| v.to_le_bytes()).collect();
    let info = client.create_from_slice(&bytes);
    let mut buffers: Vec<_> = tensors.iter().map(|t| t.handle.clone().binding()).collect();
    buffers.push(info.binding());
    client.launch(
        Box::new(SourceKernel::new(kernel, CubeDim::new_1d(WORKGROUP_SIZE))),
        cube_count(invocations),
        KernelArguments::new().with_buffers(buffers),
    );
}

/// A new contiguous f32 tensor of `shape` on `like`'s device, contents undefined.
fn empty_like(like: &CubeTensor, shape: Shape) -> CubeTensor {
    let buffer = like.client.empty(shape.num_elements() * DType::F32.size());
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        buffer,
        DType::F32,
    )
}

fn forward_wgsl(x: CubeTensor, scale: CubeTensor, shift: CubeTensor, h: &[u32]) -> CubeTensor {
    let (x, scale, shift) = (
        into_contiguous(x),
        into_contiguous(scale),
        into_contiguous(shift),
    );
    let shape = x.shape();
    let elements = shape.num_elements();
    let info = info_table(h, elements / h.len(), scale.shape()[0]);
    let y = empty_like(&x, shape);
    launch(FORWARD, elements, &[&x, &scale, &shift, &y], &info);
    y
}

fn backward_wgsl(
    dy: CubeTensor,
    x: CubeTensor,
    scale: CubeTensor,
    h: &[u32],
) -> (CubeTensor, CubeTensor, CubeTensor) {
    let (dy, x, scale) = (
        into_contiguous(dy),
        into_contiguous(x),
        into_contiguous(scale),
    );
    let (x_shape, scale_shape) = (x.shape(), scale.shape());
    let params = scale_shape.num_elements();
    let info = info_table(h, x_shape.num_elements() / h.len(), scale_shape[0]);
    let dx = empty_like(&x, x_shape);
    let dscale = empty_like(&scale, scale_shape.clone());
    let dshift = empty_like(&scale, scale_shape);
    // One invocation per (m, p): M * P of them.
    launch(
        BACKWARD,
        params,
        &[&dy, &x, &scale, &dx, &dscale, &dshift],
        &info,
    );
    (dx, dscale, dshift)
}

/// `h` as an index tensor for `select` on backend `B`.
fn indices<B: Backend>(h: &[u32], device: &B::Device) -> IntTensor<B> {
    let h: Vec<i32> = h.iter().map(|&m| m as i32).collect();
    let len = h.len();
    B::int_from_data(TensorData::new(h, [len]), device)
}

/// The forward pass from Burn's primitive ops: gather each sample's scale and shift rows.
fn forward_with_ops<B: Backend>(
    x: FloatTensor<B>,
    scale: FloatTensor<B>,
    shift: FloatTensor<B>,
    h: &[u32],
) -> FloatTensor<B> {
    let idx = indices::<B>(h, &x.device());
    let scale = B::float_select(scale, 0, idx.clone());
    let shift = B::float_select(shift, 0, idx);
    B::float_add(B::float_mul(x, scale), shift)
}

/// The backward pass from Burn's primitive ops. Scatter-adds per hallucinator, which on a
/// GPU may use float atomics (not bit-reproducible); the WGSL kernel does not.
fn backward_with_ops<B: Backend>(
    dy: FloatTensor<B>,
    x: FloatTensor<B>,
    scale: FloatTensor<B>,
    h: &[u32],
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let idx = indices::<B>(h, &dy.device());
    let dx = B::float_mul(dy.clone(), B::float_select(scale.clone(), 0, idx.clone()));
    let zeros = B::float_zeros(scale.shape(), &scale.device(), scale.dtype().into());
    let dscale = B::float_select_assign(
        zeros.clone(),
        0,
        idx.clone(),
        B::float_mul(dy.clone(), x),
        IndexingUpdateOp::Add,
    );
    let dshift = B::float_select_assign(zeros, 0, idx, dy, IndexingUpdateOp::Add);
    (dx, dscale, dshift)
}

/// The forward and backward computations on an execution backend (no autodiff).
///
/// `x`/`dy` are `[N, C, H, W]`, `scale` and `shift` are `[M, C, H, W]`, and
/// `hallucinator[n] < M` for each of the `N > 0` samples. The defaults compose Burn's
/// primitive ops, so any backend can implement this trait with an empty `impl`.
pub trait AffineKernels: Backend {
    /// `y[n] = scale[h[n]] * x[n] + shift[h[n]]`.
    fn affine_forward(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        hallucinator: &[u32],
    ) -> FloatTensor<Self> {
        forward_with_ops::<Self>(x, scale, shift, hallucinator)
    }

    /// Gradients `(dx, dscale, dshift)` from the output gradient `dy`; hallucinators that
    /// no sample uses get zeros.
    fn affine_backward(
        dy: FloatTensor<Self>,
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        hallucinator: &[u32],
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        backward_with_ops::<Self>(dy, x, scale, hallucinator)
    }
}

/// One type serves every cubecl runtime: WGSL where the runtime compiles it, tensor ops
/// elsewhere (CUDA, the cubecl CPU runtime, non-f32 tensors).
impl AffineKernels for CubeBackend {
    fn affine_forward(
        x: CubeTensor,
        scale: CubeTensor,
        shift: CubeTensor,
        hallucinator: &[u32],
    ) -> CubeTensor {
        if wgsl_ready(&[&x, &scale, &shift]) {
            forward_wgsl(x, scale, shift, hallucinator)
        } else {
            forward_with_ops::<Self>(x, scale, shift, hallucinator)
        }
    }

    fn affine_backward(
        dy: CubeTensor,
        x: CubeTensor,
        scale: CubeTensor,
        hallucinator: &[u32],
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        if wgsl_ready(&[&dy, &x, &scale]) {
            backward_wgsl(dy, x, scale, hallucinator)
        } else {
            backward_with_ops::<Self>(dy, x, scale, hallucinator)
        }
    }
}

/// Flex runs the tensor-op defaults; listing it lets CPU tests exercise the autodiff step.
impl AffineKernels for Flex {}

/// The custom op as Burn's dispatch sees it; see the module docs of [`crate::kernels`].
#[backend_extension(Autodiff, Cube, Flex)]
pub trait AffineBackend: Backend {
    /// `y[n] = scale[h[n]] * x[n] + shift[h[n]]`, with the preconditions of
    /// [`AffineKernels::affine_forward`].
    fn affine_modulation(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        hallucinator: Vec<u32>,
    ) -> FloatTensor<Self>;
}

impl AffineBackend for CubeBackend {
    fn affine_modulation(
        x: CubeTensor,
        scale: CubeTensor,
        shift: CubeTensor,
        hallucinator: Vec<u32>,
    ) -> CubeTensor {
        Self::affine_forward(x, scale, shift, &hallucinator)
    }
}

impl AffineBackend for Flex {
    fn affine_modulation(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        hallucinator: Vec<u32>,
    ) -> FloatTensor<Self> {
        Self::affine_forward(x, scale, shift, &hallucinator)
    }
}

/// The backward step Burn's autodiff graph runs for our op.
#[derive(Debug)]
struct AffineBackward;

impl<B: AffineKernels> Backward<B, 3> for AffineBackward {
    /// The checkpointed x and scale, and the hallucinator of each sample.
    type State = (NodeId, NodeId, Vec<u32>);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [x_node, scale_node, shift_node] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x_id, scale_id, hallucinator) = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_id);
        let scale: FloatTensor<B> = checkpointer.retrieve_node_output(scale_id);
        // One launch gives all three; only tracked inputs receive theirs.
        let (dx, dscale, dshift) = B::affine_backward(dy, x, scale, &hallucinator);
        if let Some(node) = x_node {
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = scale_node {
            grads.register::<B>(node.id, dscale);
        }
        if let Some(node) = shift_node {
            grads.register::<B>(node.id, dshift);
        }
    }
}

impl<B: AffineKernels, C: CheckpointStrategy> AffineBackend for Autodiff<B, C> {
    fn affine_modulation(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        hallucinator: Vec<u32>,
    ) -> FloatTensor<Self> {
        // Guards first: they keep the input nodes alive until our step is registered.
        let prep = AffineBackward
            .prepare::<C>([x.node(), scale.node(), shift.node()])
            // Keep x and scale for the backward rather than recomputing anything.
            .compute_bound()
            .stateful();
        match prep {
            OpsKind::Tracked(mut prep) => {
                let x_id = prep.checkpoint(&x);
                let scale_id = prep.checkpoint(&scale);
                let y = B::affine_forward(
                    x.into_primitive(),
                    scale.into_primitive(),
                    shift.into_primitive(),
                    &hallucinator,
                );
                prep.finish((x_id, scale_id, hallucinator), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::affine_forward(
                x.into_primitive(),
                scale.into_primitive(),
                shift.into_primitive(),
                &hallucinator,
            )),
        }
    }
}

/// Run the extension op on any tensors (Cube or Flex devices, with or without autodiff).
///
/// Unchecked: shapes, indices and devices must already be valid (see
/// [`crate::haba::affine::affine_modulation`], which validates and then calls this on
/// WGSL devices).
pub(crate) fn affine_modulation_extension(
    x: Tensor<4>,
    scale: Tensor<4>,
    shift: Tensor<4>,
    hallucinator: Vec<u32>,
) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::affine_modulation(
        x.into_dispatch(),
        scale.into_dispatch(),
        shift.into_dispatch(),
        hallucinator,
    ))
}
