//! The student's normalisation, `x̂ = (z - mean) / sqrt(var + eps)` over each channel group
//! of a sample, and its backward, as two fused CPU ops that differentiate again.
//!
//! MTT and DC differentiate a training step that contains the norm's hand-written
//! backward, so the norm costs three times over: its forward, its backward, and the
//! gradient of both. As tensor ops that was about forty passes over every activation per
//! block and step; here each (sample, group) row is worked on while it sits in cache. With
//! `r = 1 / sqrt(var + eps)` and, for a row of `m` values, the projection
//! `P(v) = v - mean(v) - x̂ · mean(v x̂)` (symmetric, onto what is orthogonal to 1 and x̂):
//!
//! - [`standardise`] gives `x̂`; its gradient is `r P(ū)`, which is [`standardise_backward`].
//! - [`standardise_backward`] gives `T(g, z) = r P(g)`, the norm's input gradient from the
//!   gradient `g` of `x̂`. `T` is linear and symmetric in `g`, so `ḡ = T(ū, z)`; and with
//!   `A = Σ ū g - Σ ū Σ g / m`, `S_g = Σ g x̂`, `S_u = Σ ū x̂`, `B = S_g S_u / m`,
//!   `v = (g S_u + ū S_g) / m`, the gradient of `<ū, T(g, z)>` in `z` is
//!   `(r² / m) (B - A) x̂ - r² P(v)`.
//!
//! Tested against the tensor ops through Burn's autodiff, values and both orders.
//! [`crate::nets::student`] takes this path on `flex` and tensor ops elsewhere.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::instance_norm::moments;
use super::{FlexTensor, dims4, flex, on_flex, set, values, written};

/// Whether the fused ops take `z` `[N, C, H, W]` in `groups` channel groups.
pub fn fusable(z: &Tensor<4>, groups: usize) -> bool {
    let [_, c, ..] = z.dims();
    on_flex(&z.device())
        && z.dtype() == DType::F32
        && groups > 0
        && c % groups == 0
        && z.dims().iter().all(|&d| d > 0)
}

/// `x̂` of each channel group of every sample of `z` (see the module docs); `z` must be
/// [`fusable`]. Differentiable on autodiff devices.
pub fn standardise(z: Tensor<4>, groups: usize) -> Tensor<4> {
    assert!(
        fusable(&z, groups),
        "standardise: a tensor the fused op takes"
    );
    Tensor::from_dispatch(Dispatch::standardise_fused(z.into_dispatch(), groups))
}

/// The gradient with respect to `z` of `<g, x̂(z)>`: `r P(g)` per group (see the module
/// docs); `z` must be [`fusable`]. Differentiable in `g` and `z` on autodiff devices.
pub fn standardise_backward(g: Tensor<4>, z: Tensor<4>, groups: usize) -> Tensor<4> {
    assert!(
        fusable(&z, groups),
        "standardise_backward: a tensor the fused op takes"
    );
    assert_eq!(
        g.dims(),
        z.dims(),
        "standardise_backward: g and z of one shape"
    );
    Tensor::from_dispatch(Dispatch::standardise_backward_fused(
        g.into_dispatch(),
        z.into_dispatch(),
        groups,
    ))
}

/// The three computations on an execution backend (no autodiff), on `[N, C, H, W]`
/// tensors in `groups` channel groups.
pub trait StandardiseKernels: Backend {
    /// `x̂(z)`.
    fn standardise_forward(z: FloatTensor<Self>, groups: usize) -> FloatTensor<Self>;
    /// `T(g, z) = r P(g)`.
    fn standardise_grad(
        g: FloatTensor<Self>,
        z: FloatTensor<Self>,
        groups: usize,
    ) -> FloatTensor<Self>;
    /// `(ḡ, z̄)`, the gradients of `<u, T(g, z)>`.
    fn standardise_grad_backward(
        u: FloatTensor<Self>,
        g: FloatTensor<Self>,
        z: FloatTensor<Self>,
        groups: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// The length of one (sample, group) row of `z`.
fn row_len(z: &FlexTensor, groups: usize) -> usize {
    let [_, c, h, w] = dims4(z);
    c / groups * h * w
}

/// `[Σ g, Σ g c, Σ u, Σ u c, Σ u g]` over a row, with `c = z - mean`, in one pass of eight
/// lanes (so the compiler vectorises it); `u` may be empty, leaving its sums zero.
fn row_sums(z: &[f32], mean: f32, g: &[f32], u: &[f32]) -> [f32; 5] {
    let mut lanes = [[0.0f32; 8]; 5];
    let mut tail = [0.0f32; 5];
    let add = |acc: &mut [f32; 5], z: f32, g: f32, u: f32| {
        let c = z - mean;
        for (a, v) in acc.iter_mut().zip([g, g * c, u, u * c, u * g]) {
            *a += v;
        }
    };
    let (zc, gc) = (z.chunks_exact(8), g.chunks_exact(8));
    let (zt, gt) = (zc.remainder(), gc.remainder());
    if u.is_empty() {
        for (z, g) in zc.zip(gc) {
            for j in 0..8 {
                lanes[0][j] += g[j];
                lanes[1][j] += g[j] * (z[j] - mean);
            }
        }
        for (&z, &g) in zt.iter().zip(gt) {
            add(&mut tail, z, g, 0.0);
        }
    } else {
        let uc = u.chunks_exact(8);
        let ut = uc.remainder();
        for ((z, g), u) in zc.zip(gc).zip(uc) {
            for j in 0..8 {
                let c = z[j] - mean;
                lanes[0][j] += g[j];
                lanes[1][j] += g[j] * c;
                lanes[2][j] += u[j];
                lanes[3][j] += u[j] * c;
                lanes[4][j] += u[j] * g[j];
            }
        }
        for ((&z, &g), &u) in zt.iter().zip(gt).zip(ut) {
            add(&mut tail, z, g, u);
        }
    }
    std::array::from_fn(|k| lanes[k].iter().sum::<f32>() + tail[k])
}

impl StandardiseKernels for Flex {
    fn standardise_forward(z: FlexTensor, groups: usize) -> FlexTensor {
        let z = z.to_contiguous();
        let m = row_len(&z, groups);
        let zs = values(&z);
        let out = written(zs.len(), m, |i, o| {
            let z = &zs[i * m..][..m];
            let (mean, r) = moments(z);
            set(o, z.iter().map(|&z| (z - mean) * r));
        });
        flex(out, &dims4(&z))
    }

    fn standardise_grad(g: FlexTensor, z: FlexTensor, groups: usize) -> FlexTensor {
        let (g, z) = (g.to_contiguous(), z.to_contiguous());
        let m = row_len(&z, groups);
        let (zs, gs) = (values(&z), values(&g));
        let out = written(zs.len(), m, |i, o| {
            let (z, g) = (&zs[i * m..][..m], &gs[i * m..][..m]);
            let (mean, r) = moments(z);
            let len = m as f32;
            let [sum_g, sum_gc, ..] = row_sums(z, mean, g, &[]);
            // mean(g x̂) = r Σ g c / m.
            let (mean_g, mean_gx) = (sum_g / len, r * sum_gc / len);
            let values = z.iter().zip(g);
            set(
                o,
                values.map(|(&z, &g)| r * (g - mean_g - (z - mean) * r * mean_gx)),
            );
        });
        flex(out, &dims4(&z))
    }

    fn standardise_grad_backward(
        u: FlexTensor,
        g: FlexTensor,
        z: FlexTensor,
        groups: usize,
    ) -> (FlexTensor, FlexTensor) {
        let (u, g, z) = (u.to_contiguous(), g.to_contiguous(), z.to_contiguous());
        let m = row_len(&z, groups);
        let total = values(&z).len();
        let (mut g_bar, mut z_bar) = (vec![0.0f32; total], vec![0.0f32; total]);
        g_bar
            .par_chunks_mut(m)
            .zip(z_bar.par_chunks_mut(m))
            .zip(values(&z).par_chunks(m))
            .zip(values(&g).par_chunks(m).zip(values(&u).par_chunks(m)))
            .for_each(|(((gb, zb), z), (g, u))| {
                let (mean, r) = moments(z);
                let len = m as f32;
                let [sum_g, sum_gc, sum_u, sum_uc, sum_ug] = row_sums(z, mean, g, u);
                let (s_g, s_u) = (r * sum_gc, r * sum_uc);
                let a = sum_ug - sum_u * sum_g / len;
                let b = s_g * s_u / len;
                // P(v) for v = (g S_u + u S_g) / m: mean(v) and mean(v x̂) in closed form.
                let mean_v = (sum_g * s_u + sum_u * s_g) / (len * len);
                let mean_vx = 2.0 * s_g * s_u / (len * len);
                let (mean_u, mean_ux) = (sum_u / len, s_u / len);
                let c = r * r * (b - a) / len;
                let (gs, us) = (s_u / len, s_g / len);
                for ((((gb, zb), &z), &g), &u) in gb.iter_mut().zip(zb).zip(z).zip(g).zip(u) {
                    let x = (z - mean) * r;
                    *gb = r * (u - mean_u - x * mean_ux);
                    let v = g * gs + u * us;
                    *zb = c * x - r * r * (v - mean_v - x * mean_vx);
                }
            });
        let dims = dims4(&z);
        (flex(g_bar, &dims), flex(z_bar, &dims))
    }
}

/// The ops as Burn's dispatch sees them (see the module docs of [`crate::kernels`]).
#[backend_extension(Autodiff, Flex)]
pub trait StandardiseBackend: Backend {
    fn standardise_fused(z: FloatTensor<Self>, groups: usize) -> FloatTensor<Self>;
    fn standardise_backward_fused(
        g: FloatTensor<Self>,
        z: FloatTensor<Self>,
        groups: usize,
    ) -> FloatTensor<Self>;
}

impl StandardiseBackend for Flex {
    fn standardise_fused(z: FlexTensor, groups: usize) -> FlexTensor {
        Self::standardise_forward(z, groups)
    }

    fn standardise_backward_fused(g: FlexTensor, z: FlexTensor, groups: usize) -> FlexTensor {
        Self::standardise_grad(g, z, groups)
    }
}

/// The backward step of `x̂(z)`: `z̄ = T(ū, z)`.
#[derive(Debug)]
struct StandardiseStep;

impl<B: StandardiseKernels> Backward<B, 1> for StandardiseStep {
    /// The checkpointed input and the group count.
    type State = (NodeId, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let [z_node] = ops.parents;
        let u = grads.consume::<B>(&ops.node);
        let (z_id, groups) = ops.state;
        if let Some(node) = z_node {
            let z: FloatTensor<B> = ckpt.retrieve_node_output(z_id);
            grads.register::<B>(node.id, B::standardise_grad(u, z, groups));
        }
    }
}

/// The backward step of `T(g, z)`: `(ḡ, z̄)` from the module docs.
#[derive(Debug)]
struct StandardiseGradStep;

impl<B: StandardiseKernels> Backward<B, 2> for StandardiseGradStep {
    /// The checkpointed `g` and `z`, and the group count.
    type State = (NodeId, NodeId, usize);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let [g_node, z_node] = ops.parents;
        let u = grads.consume::<B>(&ops.node);
        let (g_id, z_id, groups) = ops.state;
        let g: FloatTensor<B> = ckpt.retrieve_node_output(g_id);
        let z: FloatTensor<B> = ckpt.retrieve_node_output(z_id);
        let (g_bar, z_bar) = B::standardise_grad_backward(u, g, z, groups);
        if let Some(node) = g_node {
            grads.register::<B>(node.id, g_bar);
        }
        if let Some(node) = z_node {
            grads.register::<B>(node.id, z_bar);
        }
    }
}

impl<B: StandardiseKernels, C: CheckpointStrategy> StandardiseBackend for Autodiff<B, C> {
    fn standardise_fused(z: FloatTensor<Self>, groups: usize) -> FloatTensor<Self> {
        match StandardiseStep
            .prepare::<C>([z.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let z_id = prep.checkpoint(&z);
                let out = B::standardise_forward(z.into_primitive(), groups);
                prep.finish((z_id, groups), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::standardise_forward(z.into_primitive(), groups))
            }
        }
    }

    fn standardise_backward_fused(
        g: FloatTensor<Self>,
        z: FloatTensor<Self>,
        groups: usize,
    ) -> FloatTensor<Self> {
        match StandardiseGradStep
            .prepare::<C>([g.node(), z.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let (g_id, z_id) = (prep.checkpoint(&g), prep.checkpoint(&z));
                let out = B::standardise_grad(g.into_primitive(), z.into_primitive(), groups);
                prep.finish((g_id, z_id, groups), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::standardise_grad(
                g.into_primitive(),
                z.into_primitive(),
                groups,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::kernels::testing::{host, max_rel, random};
    use crate::nets::EPS;
    use crate::rng::Rng;

    /// `x̂` as tensor ops.
    fn reference(z: Tensor<4>, groups: usize) -> Tensor<4> {
        let dims @ [n, c, h, w] = z.dims();
        let z = z.reshape([n, groups, c / groups * h * w]);
        let centred = z.clone() - z.mean_dim(2);
        let rstd = centred
            .clone()
            .square()
            .mean_dim(2)
            .add_scalar(EPS)
            .sqrt()
            .recip();
        (centred * rstd).reshape(dims)
    }

    /// `x̂`, `T(g, z)` and the gradients of both (to `z`, and to `g` and `z`) against the
    /// tensor ops differentiated by Burn's autodiff, where `T(g, z)` is the gradient of
    /// `<g, x̂(z)>` autodiff computes: instance, group and layer norm rows, with a loss on
    /// `T` that is not linear so every term of its backward is exercised.
    #[test]
    fn fused_ops_match_autodiff_of_the_tensor_ops_in_both_orders() {
        let device = Device::flex().autodiff();
        let mut rng = Rng::new(11);
        for (dims, groups) in [([3, 4, 5, 3], 4), ([2, 6, 4, 4], 2), ([2, 3, 3, 5], 1)] {
            let case = format!("{dims:?} groups {groups}");
            // Shifted and scaled, so the moments are not those of a standard normal.
            let z = random(&mut rng, dims, &device)
                .mul_scalar(1.7)
                .add_scalar(0.4);
            let g = random(&mut rng, dims, &device);
            let w = random(&mut rng, dims, &device);

            // x̂ and its gradient.
            let zt = z.clone().require_grad();
            let got = standardise(zt.clone(), groups);
            let got_dz = host(
                zt.grad(&(got.clone() * w.clone()).sum().backward())
                    .unwrap(),
            );
            let zt = z.clone().require_grad();
            let want = reference(zt.clone(), groups);
            let want_dz = host(
                zt.grad(&(want.clone() * w.clone()).sum().backward())
                    .unwrap(),
            );
            assert!(
                max_rel(&host(got.inner()), &host(want.inner())) < 1e-5,
                "{case}: x̂"
            );
            assert!(max_rel(&got_dz, &want_dz) < 1e-4, "{case}: x̂'s gradient");

            // T(g, z) and the gradient of sin(T) · w in g and z.
            let run = |fused: bool| {
                let (gt, zt) = (g.clone().require_grad(), z.clone().require_grad());
                let t = if fused {
                    standardise_backward(gt.clone(), zt.clone(), groups)
                } else {
                    // The gradient autodiff gives, kept on the graph: z.grad of <g, x̂(z)>
                    // is first order in Burn, so write T with tensor ops instead.
                    let xhat = reference(zt.clone(), groups);
                    let [n, c, h, wd] = dims;
                    let rows = |t: Tensor<4>| t.reshape([n, groups, c / groups * h * wd]);
                    let z3 = rows(zt.clone());
                    let centred = z3.clone() - z3.mean_dim(2);
                    let rstd = centred.square().mean_dim(2).add_scalar(EPS).sqrt().recip();
                    let (g3, x3) = (rows(gt.clone()), rows(xhat));
                    let p =
                        g3.clone() - g3.clone().mean_dim(2) - x3.clone() * (g3 * x3).mean_dim(2);
                    (p * rstd).reshape(dims)
                };
                let grads = (t.clone().sin() * w.clone()).sum().backward();
                (
                    host(t.inner()),
                    host(gt.grad(&grads).unwrap()),
                    host(zt.grad(&grads).unwrap()),
                )
            };
            let (fused, ops) = (run(true), run(false));
            assert!(max_rel(&fused.0, &ops.0) < 1e-4, "{case}: T");
            assert!(max_rel(&fused.1, &ops.1) < 1e-4, "{case}: T's g gradient");
            assert!(max_rel(&fused.2, &ops.2) < 1e-4, "{case}: T's z gradient");
        }
    }

    /// T is the gradient of <g, x̂(z)>: the fused op against Burn's first-order autodiff.
    #[test]
    fn backward_is_the_gradient_of_the_forward() {
        let device = Device::flex().autodiff();
        let mut rng = Rng::new(12);
        let (z, g) = (
            random(&mut rng, [2, 4, 3, 3], &device),
            random(&mut rng, [2, 4, 3, 3], &device),
        );
        let zt = z.clone().require_grad();
        let want = host(
            zt.grad(&(reference(zt.clone(), 2) * g.clone()).sum().backward())
                .unwrap(),
        );
        let got = host(standardise_backward(g, z, 2));
        assert!(max_rel(&got, &want) < 1e-4);
    }
}
