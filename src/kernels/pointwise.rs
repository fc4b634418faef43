//! The ConvNet's cheap steps (a ReLU and its mask, 2x2 average pooling, per-channel scales and
//! sums) as fused CPU ops spread over Rayon's threads, each with its own backward.
//!
//! Burn's CPU backend runs an element-wise op on one thread below four million elements,
//! so at MTT's 1 image per class (10 images, 1.3 million values an activation) its
//! element-wise ops ran one after the other on one core while the other waited, a third of
//! an iteration; a ReLU mask or an unpooling was two or three such passes, and each pass
//! came back in the gradient. Every op here is linear in its first input, so its
//! backward is another op of the same set (pooling and its adjoint, a channel scale and a
//! channel dot product), and a hand-written backward pass built from them differentiates
//! again ([`crate::nets::student`]). Each is tested against the tensor ops it replaces,
//! values and gradients; other devices keep those tensor ops.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{DType, Slice, Tensor};
use rayon::prelude::*;

use super::{FlexTensor, dims4, flex, lanes, on_flex, set, values, written};

/// Values per parallel chunk of an element-wise op.
const CHUNK: usize = 1 << 15;

/// Whether the fused ops take these tensors: all f32, on flex, none empty.
pub fn fusable(tensors: &[&Tensor<4>]) -> bool {
    tensors
        .iter()
        .all(|t| on_flex(&t.device()) && t.dtype() == DType::F32 && t.dims().iter().all(|&d| d > 0))
}

/// `max(x, 0)`, as Burn's ReLU computes it (NaN stays NaN); its backward is
/// [`mask_positive`] on its output.
pub fn relu(x: Tensor<4>) -> Tensor<4> {
    if !fusable(&[&x]) {
        return burn::tensor::activation::relu(x);
    }
    Tensor::from_dispatch(Dispatch::relu_fused(x.into_dispatch()))
}

/// `g` where `act > 0`, else 0 (a ReLU's backward from its output `act`). Linear in `g`;
/// `act` is a constant of the graph.
pub fn mask_positive(g: Tensor<4>, act: Tensor<4>) -> Tensor<4> {
    if !fusable(&[&g, &act]) {
        return g * act.detach().greater_elem(0.0).float();
    }
    let act = act.detach();
    Tensor::from_dispatch(Dispatch::mask_positive_fused(
        g.into_dispatch(),
        act.into_dispatch(),
    ))
}

/// 2x2 average pooling, stride 2, floor mode: `((x00 + x01) + (x10 + x11)) / 4`, or
/// `otherwise(x)` where the fused op does not apply.
pub fn avg_pool2(x: Tensor<4>, otherwise: impl FnOnce(Tensor<4>) -> Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    if !fusable(&[&x]) || h < 2 || w < 2 {
        return otherwise(x);
    }
    Tensor::from_dispatch(Dispatch::avg_pool2_fused(x.into_dispatch()))
}

/// The adjoint of [`avg_pool2`] onto an `[H, W]` map: each value of `g` over its 2x2
/// window, divided by 4, zero in a last row or column pooling dropped (the backward of the
/// pooling), or `otherwise(g)` where the fused op does not apply.
pub fn avg_pool2_adjoint(
    g: Tensor<4>,
    [h, w]: [usize; 2],
    otherwise: impl FnOnce(Tensor<4>) -> Tensor<4>,
) -> Tensor<4> {
    let [_, _, h2, w2] = g.dims();
    if !fusable(&[&g]) || h / 2 != h2 || w / 2 != w2 {
        return otherwise(g);
    }
    Tensor::from_dispatch(Dispatch::avg_pool2_adjoint_fused(g.into_dispatch(), h, w))
}

/// `x[n, c] · w[c]` for `x` `[N, C, H, W]` and `w` `[C]`. Linear in each.
pub fn channel_scale(x: Tensor<4>, w: Tensor<1>) -> Tensor<4> {
    let [_, c, ..] = x.dims();
    if !fusable(&[&x]) || w.dims() != [c] || w.dtype() != DType::F32 {
        return x * w.reshape([1, c, 1, 1]);
    }
    Tensor::from_dispatch(Dispatch::channel_scale_fused(
        x.into_dispatch(),
        w.into_dispatch(),
    ))
}

/// `(Σ_{n, h, w} a · b, Σ_{n, h, w} a)` per channel, two `[C]`, for `a`, `b`
/// `[N, C, H, W]`: a norm's weight and bias gradients from one pass over `a`, which is then
/// read by one op instead of two (one gradient fewer for autodiff to add up). Linear in
/// `a`; the first is linear in `b`.
pub fn channel_dot_sum(a: Tensor<4>, b: Tensor<4>) -> (Tensor<1>, Tensor<1>) {
    let [_, c, ..] = a.dims();
    if !fusable(&[&a, &b]) || a.dims() != b.dims() {
        let dot = (a.clone() * b).sum_dims(&[0, 2, 3]).flatten(0, 3);
        return (dot, a.sum_dims(&[0, 2, 3]).flatten(0, 3));
    }
    let both: Tensor<1> = Tensor::from_dispatch(Dispatch::channel_dot_sum_fused(
        a.into_dispatch(),
        b.into_dispatch(),
    ));
    (both.clone().narrow(0, 0, c), both.narrow(0, c, c))
}

/// `Σ_{n, h, w} x` per channel, `[C]`: a bias's gradient. Linear.
pub fn channel_sum(x: Tensor<4>) -> Tensor<1> {
    if !fusable(&[&x]) {
        return x.sum_dims(&[0, 2, 3]).flatten(0, 3);
    }
    Tensor::from_dispatch(Dispatch::channel_sum_fused(x.into_dispatch()))
}

/// `x[n, c] · w[c] + b[c]`: a norm's affine step. Differentiable (first order) in all three.
pub fn channel_affine(x: Tensor<4>, w: Tensor<1>, b: Tensor<1>) -> Tensor<4> {
    let [_, c, ..] = x.dims();
    let vectors_ok = [&w, &b]
        .iter()
        .all(|v| v.dims() == [c] && v.dtype() == DType::F32);
    if !fusable(&[&x]) || !vectors_ok {
        return x * w.reshape([1, c, 1, 1]) + b.reshape([1, c, 1, 1]);
    }
    Tensor::from_dispatch(Dispatch::channel_affine_fused(
        x.into_dispatch(),
        w.into_dispatch(),
        b.into_dispatch(),
    ))
}

/// The computations on an execution backend (no autodiff).
pub trait PointwiseKernels: Backend {
    fn relu_forward(x: FloatTensor<Self>) -> FloatTensor<Self>;
    fn mask_positive_forward(g: FloatTensor<Self>, act: FloatTensor<Self>) -> FloatTensor<Self>;
    fn avg_pool2_forward(x: FloatTensor<Self>) -> FloatTensor<Self>;
    fn avg_pool2_adjoint_forward(g: FloatTensor<Self>, h: usize, w: usize) -> FloatTensor<Self>;
    /// `x · w[c] + b[c]`, with no bias where `b` is `None`.
    fn channel_affine_forward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self>;
    /// `[Σ a · b, Σ a]` per channel, `[2C]`.
    fn channel_dot_sum_forward(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let (dot, sum) = Self::channel_sums(a, Some(b));
        let dot = dot.expect("asked for");
        Self::float_cat(vec![dot, sum], 0)
    }
    /// `v[c]` at every `[n, c, h, w]` of `dims`.
    fn channel_fill(v: FloatTensor<Self>, dims: [usize; 4]) -> FloatTensor<Self>;
    /// `(Σ a · b, Σ a)` per channel, the first only where `b` is given.
    fn channel_sums(
        a: FloatTensor<Self>,
        b: Option<FloatTensor<Self>>,
    ) -> (Option<FloatTensor<Self>>, FloatTensor<Self>);
}

impl PointwiseKernels for Flex {
    fn relu_forward(x: FlexTensor) -> FlexTensor {
        let x = x.to_contiguous();
        let xs = values(&x);
        let out = written(xs.len(), CHUNK, |i, o| {
            let x = &xs[i * CHUNK..][..o.len()];
            set(o, x.iter().map(|&x| if x <= 0.0 { 0.0 } else { x }));
        });
        flex(out, &dims4(&x))
    }

    fn mask_positive_forward(g: FlexTensor, act: FlexTensor) -> FlexTensor {
        let (g, act) = (g.to_contiguous(), act.to_contiguous());
        let (gs, acts) = (values(&g), values(&act));
        let out = written(gs.len(), CHUNK, |i, o| {
            let (g, a) = (&gs[i * CHUNK..][..o.len()], &acts[i * CHUNK..][..o.len()]);
            set(
                o,
                g.iter()
                    .zip(a)
                    .map(|(&g, &a)| if a > 0.0 { g } else { 0.0 }),
            );
        });
        flex(out, &dims4(&g))
    }

    fn avg_pool2_forward(x: FlexTensor) -> FlexTensor {
        let x = x.to_contiguous();
        let [n, c, h, w] = dims4(&x);
        let (h2, w2) = (h / 2, w / 2);
        let xs = values(&x);
        let out = written(n * c * h2 * w2, h2 * w2, |p, o| {
            let plane = &xs[p * h * w..][..h * w];
            for (i, row) in o.chunks_exact_mut(w2).enumerate() {
                let (top, bottom) = (&plane[2 * i * w..][..w], &plane[(2 * i + 1) * w..][..w]);
                for (j, o) in row.iter_mut().enumerate() {
                    let (a, b) = (
                        top[2 * j] + top[2 * j + 1],
                        bottom[2 * j] + bottom[2 * j + 1],
                    );
                    o.write((a + b) * 0.25);
                }
            }
        });
        flex(out, &[n, c, h2, w2])
    }

    fn avg_pool2_adjoint_forward(g: FlexTensor, h: usize, w: usize) -> FlexTensor {
        let g = g.to_contiguous();
        let [n, c, h2, w2] = dims4(&g);
        let gs = values(&g);
        let out = written(n * c * h * w, h * w, |p, plane| {
            let g = &gs[p * h2 * w2..][..h2 * w2];
            // Every row and column of the plane: a value over its window, zero in a last
            // row or column pooling dropped.
            for (r, dst) in plane.chunks_exact_mut(w).enumerate() {
                let row = (r / 2 < h2).then(|| &g[r / 2 * w2..][..w2]);
                for (c, d) in dst.iter_mut().enumerate() {
                    let v = row.and_then(|row| row.get(c / 2)).map_or(0.0, |&v| v / 4.0);
                    d.write(v);
                }
            }
        });
        flex(out, &[n, c, h, w])
    }

    fn channel_affine_forward(x: FlexTensor, w: FlexTensor, b: Option<FlexTensor>) -> FlexTensor {
        let (x, w) = (x.to_contiguous(), w.to_contiguous());
        let b = b.map(|b| b.to_contiguous());
        let [n, c, h, wd] = dims4(&x);
        let (ws, bs) = (values(&w), b.as_ref().map(values));
        let plane = h * wd;
        let xs = values(&x);
        let out = written(n * c * plane, plane, |p, o| {
            let x = &xs[p * plane..][..plane];
            let (scale, shift) = (ws[p % c], bs.map_or(0.0, |b| b[p % c]));
            match bs {
                Some(_) => set(o, x.iter().map(|&x| x * scale + shift)),
                None => set(o, x.iter().map(|&x| x * scale)),
            }
        });
        flex(out, &[n, c, h, wd])
    }

    fn channel_fill(v: FlexTensor, [n, c, h, w]: [usize; 4]) -> FlexTensor {
        let v = v.to_contiguous();
        let vs = values(&v);
        let out = written(n * c * h * w, h * w, |p, o| {
            o.fill(std::mem::MaybeUninit::new(vs[p % c]));
        });
        flex(out, &[n, c, h, w])
    }

    fn channel_sums(a: FlexTensor, b: Option<FlexTensor>) -> (Option<FlexTensor>, FlexTensor) {
        let a = a.to_contiguous();
        let b = b.map(|b| b.to_contiguous());
        let [n, c, h, w] = dims4(&a);
        let plane = h * w;
        let (av, bv) = (values(&a), b.as_ref().map(values));
        let sums: Vec<(f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mut dot, mut sum) = (0.0f32, 0.0f32);
                for s in 0..n {
                    let at = (s * c + ch) * plane;
                    let ap = &av[at..][..plane];
                    sum += lanes(ap, ap, |a, _| a);
                    if let Some(bv) = bv {
                        dot += lanes(ap, &bv[at..][..plane], |a, b| a * b);
                    }
                }
                (dot, sum)
            })
            .collect();
        let (dots, sums): (Vec<f32>, Vec<f32>) = sums.into_iter().unzip();
        (b.map(|_| flex(dots, &[c])), flex(sums, &[c]))
    }
}

/// The ops as Burn's dispatch sees them (see the module docs of [`crate::kernels`]).
#[backend_extension(Autodiff, Flex)]
pub trait PointwiseBackend: Backend {
    fn relu_fused(x: FloatTensor<Self>) -> FloatTensor<Self>;
    fn mask_positive_fused(g: FloatTensor<Self>, act: FloatTensor<Self>) -> FloatTensor<Self>;
    fn avg_pool2_fused(x: FloatTensor<Self>) -> FloatTensor<Self>;
    fn avg_pool2_adjoint_fused(g: FloatTensor<Self>, h: usize, w: usize) -> FloatTensor<Self>;
    fn channel_scale_fused(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `[Σ a · b, Σ a]` per channel, `[2C]`.
    fn channel_dot_sum_fused(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
    fn channel_sum_fused(x: FloatTensor<Self>) -> FloatTensor<Self>;
    fn channel_affine_fused(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

impl PointwiseBackend for Flex {
    fn relu_fused(x: FlexTensor) -> FlexTensor {
        Self::relu_forward(x)
    }
    fn mask_positive_fused(g: FlexTensor, act: FlexTensor) -> FlexTensor {
        Self::mask_positive_forward(g, act)
    }
    fn avg_pool2_fused(x: FlexTensor) -> FlexTensor {
        Self::avg_pool2_forward(x)
    }
    fn avg_pool2_adjoint_fused(g: FlexTensor, h: usize, w: usize) -> FlexTensor {
        Self::avg_pool2_adjoint_forward(g, h, w)
    }
    fn channel_scale_fused(x: FlexTensor, w: FlexTensor) -> FlexTensor {
        Self::channel_affine_forward(x, w, None)
    }
    fn channel_dot_sum_fused(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        Self::channel_dot_sum_forward(a, b)
    }
    fn channel_sum_fused(x: FlexTensor) -> FlexTensor {
        Self::channel_sums(x, None).1
    }
    fn channel_affine_fused(x: FlexTensor, w: FlexTensor, b: FlexTensor) -> FlexTensor {
        Self::channel_affine_forward(x, w, Some(b))
    }
}

/// The spatial size of a 4-d tensor.
fn hw<B: Backend>(t: &FloatTensor<B>) -> [usize; 2] {
    use burn::backend::TensorMetadata;
    let s = t.shape();
    [s[2], s[3]]
}

/// Backward of [`mask_positive`] (the same mask on the upstream gradient) and of
/// [`relu`] (the mask of its output).
#[derive(Debug)]
struct MaskStep;

impl<B: PointwiseKernels> Backward<B, 1> for MaskStep {
    type State = B::FloatTensorPrimitive;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let u = grads.consume::<B>(&ops.node);
        if let [Some(node)] = ops.parents {
            grads.register::<B>(node.id, B::mask_positive_forward(u, ops.state));
        }
    }
}

/// Backward of [`avg_pool2`]: its adjoint, onto the input's size.
#[derive(Debug)]
struct PoolStep;

impl<B: PointwiseKernels> Backward<B, 1> for PoolStep {
    type State = [usize; 2];

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let u = grads.consume::<B>(&ops.node);
        if let [Some(node)] = ops.parents {
            let [h, w] = ops.state;
            grads.register::<B>(node.id, B::avg_pool2_adjoint_forward(u, h, w));
        }
    }
}

/// Backward of [`avg_pool2_adjoint`]: the pooling.
#[derive(Debug)]
struct UnpoolStep;

impl<B: PointwiseKernels> Backward<B, 1> for UnpoolStep {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let u = grads.consume::<B>(&ops.node);
        if let [Some(node)] = ops.parents {
            grads.register::<B>(node.id, B::avg_pool2_forward(u));
        }
    }
}

/// Backward of `x · w[c] (+ b[c])`: `x̄ = ū · w`, `w̄ = Σ ū x`, `b̄ = Σ ū`.
#[derive(Debug)]
struct AffineStep;

impl<B: PointwiseKernels, const N: usize> Backward<B, N> for AffineStep {
    /// The checkpointed `x` and `w`.
    type State = (NodeId, NodeId);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let u = grads.consume::<B>(&ops.node);
        let (x_id, w_id) = ops.state;
        let (x_node, w_node) = (&ops.parents[0], &ops.parents[1]);
        let b_node = ops.parents.get(2).and_then(Option::as_ref);
        if w_node.is_some() || b_node.is_some() {
            let x: FloatTensor<B> = ckpt.retrieve_node_output(x_id);
            let (dot, sum) = B::channel_sums(u.clone(), w_node.as_ref().map(|_| x));
            if let (Some(node), Some(dot)) = (w_node, dot) {
                grads.register::<B>(node.id, dot);
            }
            if let Some(node) = b_node {
                grads.register::<B>(node.id, sum);
            }
        }
        if let Some(node) = x_node {
            let w: FloatTensor<B> = ckpt.retrieve_node_output(w_id);
            grads.register::<B>(node.id, B::channel_affine_forward(u, w, None));
        }
    }
}

/// Backward of [`channel_sum`]: `ū[c]` over the summed input's `[N, C, H, W]`.
#[derive(Debug)]
struct SumStep;

impl<B: PointwiseKernels> Backward<B, 1> for SumStep {
    type State = [usize; 4];

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let u = grads.consume::<B>(&ops.node);
        if let [Some(node)] = ops.parents {
            grads.register::<B>(node.id, B::channel_fill(u, ops.state));
        }
    }
}

/// Backward of [`channel_dot_sum`]: `ā = b · ū_dot + ū_sum`, `b̄ = a · ū_dot`.
#[derive(Debug)]
struct DotSumStep;

impl<B: PointwiseKernels> Backward<B, 2> for DotSumStep {
    /// The checkpointed `a` and `b`.
    type State = (NodeId, NodeId);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let u = grads.consume::<B>(&ops.node);
        // u = [ū_dot, ū_sum], C each.
        let c = {
            use burn::backend::TensorMetadata;
            u.shape()[0] / 2
        };
        let half = |range| B::float_slice(u.clone(), &[Slice::from(range)]);
        let (u_dot, u_sum) = (half(0..c), half(c..2 * c));
        let (a_id, b_id) = ops.state;
        let [a_node, b_node] = ops.parents;
        if let Some(node) = a_node {
            let b: FloatTensor<B> = ckpt.retrieve_node_output(b_id);
            let grad = B::channel_affine_forward(b, u_dot.clone(), Some(u_sum));
            grads.register::<B>(node.id, grad);
        }
        if let Some(node) = b_node {
            let a: FloatTensor<B> = ckpt.retrieve_node_output(a_id);
            grads.register::<B>(node.id, B::channel_affine_forward(a, u_dot, None));
        }
    }
}

impl<B: PointwiseKernels, C: CheckpointStrategy> PointwiseBackend for Autodiff<B, C> {
    fn relu_fused(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match MaskStep.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let out = B::relu_forward(x.into_primitive());
                prep.finish(out.clone(), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::relu_forward(x.into_primitive())),
        }
    }

    fn mask_positive_fused(g: FloatTensor<Self>, act: FloatTensor<Self>) -> FloatTensor<Self> {
        // `act` is untracked (detached by the caller): a constant of the graph.
        let act = act.into_primitive();
        match MaskStep.prepare::<C>([g.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let out = B::mask_positive_forward(g.into_primitive(), act.clone());
                prep.finish(act, out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::mask_positive_forward(g.into_primitive(), act))
            }
        }
    }

    fn avg_pool2_fused(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let size = hw::<Self>(&x);
        match PoolStep.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(size, B::avg_pool2_forward(x.into_primitive())),
            OpsKind::UnTracked(prep) => prep.finish(B::avg_pool2_forward(x.into_primitive())),
        }
    }

    fn avg_pool2_adjoint_fused(g: FloatTensor<Self>, h: usize, w: usize) -> FloatTensor<Self> {
        let out = |g: FloatTensor<Self>| B::avg_pool2_adjoint_forward(g.into_primitive(), h, w);
        match UnpoolStep
            .prepare::<C>([g.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = out(g);
                prep.finish((), y)
            }
            OpsKind::UnTracked(prep) => {
                let y = out(g);
                prep.finish(y)
            }
        }
    }

    fn channel_scale_fused(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        match AffineStep
            .prepare::<C>([x.node(), w.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&w));
                let y = B::channel_affine_forward(x.into_primitive(), w.into_primitive(), None);
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::channel_affine_forward(
                x.into_primitive(),
                w.into_primitive(),
                None,
            )),
        }
    }

    fn channel_dot_sum_fused(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let both = |a: FloatTensor<Self>, b: FloatTensor<Self>| {
            B::channel_dot_sum_forward(a.into_primitive(), b.into_primitive())
        };
        match DotSumStep
            .prepare::<C>([a.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&a), prep.checkpoint(&b));
                prep.finish(state, both(a, b))
            }
            OpsKind::UnTracked(prep) => prep.finish(both(a, b)),
        }
    }

    fn channel_sum_fused(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let dims = {
            use burn::backend::TensorMetadata;
            let s = x.shape();
            [s[0], s[1], s[2], s[3]]
        };
        let sum = |x: FloatTensor<Self>| B::channel_sums(x.into_primitive(), None).1;
        match SumStep.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(dims, sum(x)),
            OpsKind::UnTracked(prep) => prep.finish(sum(x)),
        }
    }

    fn channel_affine_fused(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let affine = |x: FloatTensor<Self>, w: FloatTensor<Self>, b: FloatTensor<Self>| {
            B::channel_affine_forward(
                x.into_primitive(),
                w.into_primitive(),
                Some(b.into_primitive()),
            )
        };
        match AffineStep
            .prepare::<C>([x.node(), w.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&w));
                prep.finish(state, affine(x, w, b))
            }
            OpsKind::UnTracked(prep) => prep.finish(affine(x, w, b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::kernels::testing::{host, random};
    use crate::rng::Rng;

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    /// Each fused op against the tensor ops it replaces, values and every gradient (with a
    /// loss that is not linear, so the upstream gradient varies), on odd and even sizes.
    #[test]
    fn fused_ops_match_the_tensor_ops_with_gradients() {
        let device = Device::flex().autodiff();
        let mut rng = Rng::new(13);
        for dims in [[2, 3, 4, 6], [3, 2, 5, 7]] {
            let [n, c, h, w] = dims;
            let x = random(&mut rng, dims, &device);
            let y = random(&mut rng, dims, &device);
            let v = random(&mut rng, [c], &device);
            let bias = random(&mut rng, [c], &device);
            let case = format!("{dims:?}");
            let leaf4 = |t: &Tensor<4>| t.clone().require_grad();
            let leaf1 = |t: &Tensor<1>| t.clone().require_grad();

            // The ReLU, with a NaN and zeros among its inputs.
            let mut xs = host(x.clone());
            xs[0] = f32::NAN;
            xs[1] = 0.0;
            xs[2] = -0.0;
            let xs = Tensor::<4>::from_data(burn::tensor::TensorData::new(xs, dims), &device);
            let (r1, r2) = (leaf4(&xs), leaf4(&xs));
            let (a, b) = (relu(r1.clone()), burn::tensor::activation::relu(r2.clone()));
            let (ha, hb) = (host(a.clone().inner()), host(b.clone().inner()));
            assert!(ha[0].is_nan() && hb[0].is_nan(), "{case} relu keeps NaN");
            close(&ha[1..], &hb[1..], &format!("{case} relu"));
            let (ga, gb) = (a.sin().sum().backward(), b.sin().sum().backward());
            let (da, db) = (host(r1.grad(&ga).unwrap()), host(r2.grad(&gb).unwrap()));
            close(&da[1..], &db[1..], "relu grad");

            // The mask: gradient to g only.
            let (g1, g2) = (leaf4(&x), leaf4(&x));
            let a = mask_positive(g1.clone(), y.clone());
            let b = g2.clone().mask_fill(y.clone().lower_equal_elem(0.0), 0.0);
            close(
                &host(a.clone().inner()),
                &host(b.clone().inner()),
                &format!("{case} mask"),
            );
            let (ga, gb) = (a.sin().sum().backward(), b.sin().sum().backward());
            close(
                &host(g1.grad(&ga).unwrap()),
                &host(g2.grad(&gb).unwrap()),
                "mask grad",
            );

            // Pooling and its adjoint against Burn's avg_pool2d and its backward.
            let (p1, p2) = (leaf4(&x), leaf4(&x));
            let a = avg_pool2(p1.clone(), |_| unreachable!());
            let opts = burn::tensor::ops::AvgPoolOptions::new([2, 2]);
            let b = burn::tensor::module::avg_pool2d(p2.clone(), opts);
            close(
                &host(a.clone().inner()),
                &host(b.clone().inner()),
                &format!("{case} pool"),
            );
            let (ga, gb) = (a.clone().sin().sum().backward(), b.sin().sum().backward());
            close(
                &host(p1.grad(&ga).unwrap()),
                &host(p2.grad(&gb).unwrap()),
                "pool grad",
            );
            // The adjoint: <adjoint(g), x> = <g, pool(x)>, and its gradient is the pooling.
            let g = random(&mut rng, a.dims(), &device).require_grad();
            let up = avg_pool2_adjoint(g.clone(), [h, w], |_| unreachable!());
            let lhs: f32 = (up.clone() * x.clone()).sum().into_scalar();
            let rhs: f32 = (g.clone() * avg_pool2(x.clone(), |_| unreachable!()))
                .sum()
                .into_scalar();
            assert!(
                (lhs - rhs).abs() < 1e-4 * (1.0 + rhs.abs()),
                "{case} adjoint {lhs} {rhs}"
            );
            let grads = (up * x.clone()).sum().backward();
            close(
                &host(g.grad(&grads).unwrap()),
                &host(avg_pool2(x.clone(), |_| unreachable!()).inner()),
                "adjoint grad",
            );

            // Channel scale, dot and affine against broadcasts and sums.
            let (x1, v1, x2, v2) = (leaf4(&x), leaf1(&v), leaf4(&x), leaf1(&v));
            let a = channel_scale(x1.clone(), v1.clone());
            let b = x2.clone() * v2.clone().reshape([1, c, 1, 1]);
            close(&host(a.clone().inner()), &host(b.clone().inner()), "scale");
            let (ga, gb) = (a.sin().sum().backward(), b.sin().sum().backward());
            close(
                &host(x1.grad(&ga).unwrap()),
                &host(x2.grad(&gb).unwrap()),
                "scale dx",
            );
            close(
                &host(v1.grad(&ga).unwrap()),
                &host(v2.grad(&gb).unwrap()),
                "scale dw",
            );

            let (a1, b1, a2, b2) = (leaf4(&x), leaf4(&y), leaf4(&x), leaf4(&y));
            let (d, ds) = channel_dot_sum(a1.clone(), b1.clone());
            let e: Tensor<1> = (a2.clone() * b2.clone()).sum_dims(&[0, 2, 3]).flatten(0, 3);
            let es: Tensor<1> = a2.clone().sum_dims(&[0, 2, 3]).flatten(0, 3);
            close(&host(d.clone().inner()), &host(e.clone().inner()), "dot");
            close(
                &host(ds.clone().inner()),
                &host(es.clone().inner()),
                "dot's sum",
            );
            // A loss of both, unequally weighted, so each part's gradient is seen.
            let la = d.sin().sum() + (ds * 0.7).cos().sum();
            let lb = e.sin().sum() + (es * 0.7).cos().sum();
            let (ga, gb) = (la.backward(), lb.backward());
            close(
                &host(a1.grad(&ga).unwrap()),
                &host(a2.grad(&gb).unwrap()),
                "dot da",
            );
            close(
                &host(b1.grad(&ga).unwrap()),
                &host(b2.grad(&gb).unwrap()),
                "dot db",
            );

            let (s1, s2) = (leaf4(&x), leaf4(&x));
            let a = channel_sum(s1.clone());
            let b: Tensor<1> = s2.clone().sum_dims(&[0, 2, 3]).flatten(0, 3);
            close(&host(a.clone().inner()), &host(b.clone().inner()), "sum");
            let (ga, gb) = (a.sin().sum().backward(), b.sin().sum().backward());
            close(
                &host(s1.grad(&ga).unwrap()),
                &host(s2.grad(&gb).unwrap()),
                "sum grad",
            );

            let (x1, v1, c1) = (leaf4(&x), leaf1(&v), leaf1(&bias));
            let (x2, v2, c2) = (leaf4(&x), leaf1(&v), leaf1(&bias));
            let a = channel_affine(x1.clone(), v1.clone(), c1.clone());
            let b =
                x2.clone() * v2.clone().reshape([1, c, 1, 1]) + c2.clone().reshape([1, c, 1, 1]);
            close(&host(a.clone().inner()), &host(b.clone().inner()), "affine");
            let (ga, gb) = (a.sin().sum().backward(), b.sin().sum().backward());
            close(
                &host(x1.grad(&ga).unwrap()),
                &host(x2.grad(&gb).unwrap()),
                "affine dx",
            );
            close(
                &host(v1.grad(&ga).unwrap()),
                &host(v2.grad(&gb).unwrap()),
                "affine dw",
            );
            close(
                &host(c1.grad(&ga).unwrap()),
                &host(c2.grad(&gb).unwrap()),
                "affine db",
            );
            let _ = n;
        }
    }
}
