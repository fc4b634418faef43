//! Instance norm with affine weights (the reference ConvNet's `GroupNorm(C, C)`) as one fused
//! op on the CPU backend, with a hand-written backward.
//!
//! As tensor ops, a normalisation reads and writes the whole activation batch about six
//! times forward and ten times backward (mean, centre, square, mean, scale, shift, and
//! each op's gradient), and at ConvNet-128 sizes every pass is over 100 MB. Here each
//! (sample, channel) plane is normalised while it sits in cache: two reads and one write
//! forward, three reads and one write backward, planes spread over Rayon's threads.
//! [`crate::nets`] calls [`instance_norm`], which takes this path on `flex` and the tensor
//! ops ([`instance_norm_reference`]) everywhere else.
//!
//! The backward is not itself differentiable (Burn's autodiff is first order anyway).

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

use super::{FlexTensor, dims4, flex, on_flex, values};
use crate::nets::EPS;

/// `(x - mean) / sqrt(var + eps) * weight[c] + bias[c]` per (sample, channel) plane of
/// `x` `[N, C, H, W]`, with `weight` and `bias` `[C]`; biased variance, as PyTorch.
/// Differentiable in all three on autodiff devices.
pub fn instance_norm(x: Tensor<4>, weight: Tensor<1>, bias: Tensor<1>) -> Tensor<4> {
    let fused = on_flex(&x.device())
        && [x.dtype(), weight.dtype(), bias.dtype()]
            .iter()
            .all(|d| *d == DType::F32)
        && x.dims().iter().all(|&d| d > 0);
    if fused {
        Tensor::from_dispatch(Dispatch::instance_norm(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
        ))
    } else {
        instance_norm_reference(x, weight, bias)
    }
}

/// The same computation as Burn tensor ops, on any device.
pub fn instance_norm_reference(x: Tensor<4>, weight: Tensor<1>, bias: Tensor<1>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let x = x.reshape([n, c, h * w]);
    let centred = x.clone() - x.mean_dim(2);
    let var = centred.clone().square().mean_dim(2);
    let scale = weight.reshape([1, c, 1]) / var.add_scalar(EPS).sqrt();
    (centred * scale + bias.reshape([1, c, 1])).reshape([n, c, h, w])
}

/// `Σ f(plane[i])` in eight lanes, so the compiler vectorises it.
fn lane_sum(plane: &[f32], f: impl Fn(usize, f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = plane.chunks_exact(8);
    let tail = chunks.remainder();
    for (k, chunk) in chunks.enumerate() {
        for (j, (lane, &v)) in lanes.iter_mut().zip(chunk).enumerate() {
            *lane += f(8 * k + j, v);
        }
    }
    let start = plane.len() - tail.len();
    let tail: f32 = tail.iter().enumerate().map(|(j, &v)| f(start + j, v)).sum();
    lanes.iter().sum::<f32>() + tail
}

/// Mean and `1 / sqrt(var + eps)` of one plane (two passes: the centred variance).
pub(super) fn moments(plane: &[f32]) -> (f32, f32) {
    let len = plane.len() as f32;
    let mean = lane_sum(plane, |_, v| v) / len;
    let var = lane_sum(plane, |_, v| (v - mean) * (v - mean)) / len;
    (mean, 1.0 / (var + EPS as f32).sqrt())
}

/// The elements of a tensor from [`writable`], to overwrite.
fn elements_mut(t: &mut FlexTensor) -> &mut [f32] {
    let len = t.layout().num_elements();
    &mut t.storage_mut::<f32>()[..len]
}

/// `t` itself when nothing else holds its buffer and it is exactly its elements (so it
/// can be overwritten in place), else a contiguous copy.
fn writable(t: FlexTensor) -> FlexTensor {
    let t = t.to_contiguous();
    let whole = t.layout().contiguous_offsets() == Some((0, t.layout().num_elements()));
    if whole && t.is_unique() {
        t
    } else {
        FlexTensor::from_data(TensorData::new(values(&t).to_vec(), dims4(&t)))
    }
}

fn flex_vector(values: Vec<f32>) -> FlexTensor {
    let len = values.len();
    flex(values, &[len])
}

/// Forward and backward on an execution backend (no autodiff).
pub trait InstanceNormKernels: Backend {
    fn instance_norm_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `(dx, dweight, dbias)` from the output gradient `dy`.
    fn instance_norm_backward(
        dy: FloatTensor<Self>,
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

impl InstanceNormKernels for Flex {
    fn instance_norm_forward(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        // In place when nothing else holds the input (an untracked forward pass).
        let mut y = writable(x);
        let (weight, bias) = (weight.to_contiguous(), bias.to_contiguous());
        let [_, c, h, w] = dims4(&y);
        let (ws, bs) = (values(&weight), values(&bias));
        elements_mut(&mut y)
            .par_chunks_mut(h * w)
            .enumerate()
            .for_each(|(i, plane)| {
                let (mean, rstd) = moments(plane);
                let (a, b) = (rstd * ws[i % c], bs[i % c]);
                for v in plane.iter_mut() {
                    *v = (*v - mean) * a + b;
                }
            });
        y
    }

    fn instance_norm_backward(
        dy: FlexTensor,
        x: FlexTensor,
        weight: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
        let [_, c, h, w] = dims4(&x);
        let len = (h * w) as f32;
        let (xs, ws) = (values(&x), values(&weight));
        // dx overwrites dy (in place when nothing else holds it), plane by plane: each
        // value is read before it is replaced.
        let mut dx = writable(dy);
        // Per plane: Σ dy * x̂ and Σ dy, the weight's and bias's gradient before the sum
        // over samples. With g = dy * w: dx = rstd * (g - mean(g) - x̂ * mean(g * x̂)).
        let partial: Vec<(f32, f32)> = elements_mut(&mut dx)
            .par_chunks_mut(h * w)
            .zip(xs.par_chunks(h * w))
            .enumerate()
            .map(|(i, (dp, xp))| {
                let (mean, rstd) = moments(xp);
                let sum_dy = lane_sum(dp, |_, dy| dy);
                let sum_dy_xhat = lane_sum(dp, |j, dy| dy * (xp[j] - mean)) * rstd;
                let wc = ws[i % c];
                let (mean_g, mean_g_xhat) = (wc * sum_dy / len, wc * sum_dy_xhat / len);
                for (d, &x) in dp.iter_mut().zip(xp) {
                    let xhat = (x - mean) * rstd;
                    *d = rstd * (*d * wc - mean_g - xhat * mean_g_xhat);
                }
                (sum_dy_xhat, sum_dy)
            })
            .collect();
        let (mut dw, mut db) = (vec![0.0f32; c], vec![0.0f32; c]);
        for (i, (gw, gb)) in partial.into_iter().enumerate() {
            dw[i % c] += gw;
            db[i % c] += gb;
        }
        (dx, flex_vector(dw), flex_vector(db))
    }
}

/// The op as Burn's dispatch sees it (see the module docs of [`crate::kernels`]).
#[backend_extension(Autodiff, Flex)]
pub trait InstanceNormBackend: Backend {
    fn instance_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

impl InstanceNormBackend for Flex {
    fn instance_norm(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        Self::instance_norm_forward(x, weight, bias)
    }
}

/// The backward step Burn's autodiff graph runs for the op.
#[derive(Debug)]
struct InstanceNormStep;

impl<B: InstanceNormKernels> Backward<B, 3> for InstanceNormStep {
    /// The checkpointed input and weight; statistics are recomputed from the input.
    type State = (NodeId, NodeId);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [x_node, weight_node, bias_node] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x_id, weight_id) = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_id);
        let weight: FloatTensor<B> = checkpointer.retrieve_node_output(weight_id);
        let (dx, dweight, dbias) = B::instance_norm_backward(dy, x, weight);
        if let Some(node) = x_node {
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = weight_node {
            grads.register::<B>(node.id, dweight);
        }
        if let Some(node) = bias_node {
            grads.register::<B>(node.id, dbias);
        }
    }
}

impl<B: InstanceNormKernels, C: CheckpointStrategy> InstanceNormBackend for Autodiff<B, C> {
    fn instance_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let prep = InstanceNormStep
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful();
        match prep {
            OpsKind::Tracked(mut prep) => {
                let x_id = prep.checkpoint(&x);
                let weight_id = prep.checkpoint(&weight);
                let y = B::instance_norm_forward(
                    x.into_primitive(),
                    weight.into_primitive(),
                    bias.into_primitive(),
                );
                prep.finish((x_id, weight_id), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::instance_norm_forward(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::kernels::testing::{host, max_rel, random};
    use crate::rng::Rng;

    /// The fused op against the tensor ops, values and gradients for x, weight and bias,
    /// with a non-trivial upstream gradient.
    #[test]
    fn fused_matches_tensor_ops_forward_and_backward() {
        let device = Device::flex().autodiff();
        let mut rng = Rng::new(3);
        let dims = [3, 4, 5, 6];
        let x = random(&mut rng, dims, &device);
        let w = random(&mut rng, [4], &device);
        let b = random(&mut rng, [4], &device);
        let upstream = random(&mut rng, dims, &device);
        let run = |fused: bool| {
            let (x, w, b) = (
                x.clone().require_grad(),
                w.clone().require_grad(),
                b.clone().require_grad(),
            );
            let y = if fused {
                instance_norm(x.clone(), w.clone(), b.clone())
            } else {
                instance_norm_reference(x.clone(), w.clone(), b.clone())
            };
            let grads = (y.clone() * upstream.clone()).sum().backward();
            (
                host(y.inner()),
                host(x.grad(&grads).unwrap()),
                host(w.grad(&grads).unwrap()),
                host(b.grad(&grads).unwrap()),
            )
        };
        let (fused, reference) = (run(true), run(false));
        assert!(max_rel(&fused.0, &reference.0) < 1e-5, "forward");
        assert!(max_rel(&fused.1, &reference.1) < 1e-4, "dx");
        assert!(max_rel(&fused.2, &reference.2) < 1e-4, "dweight");
        assert!(max_rel(&fused.3, &reference.3) < 1e-4, "dbias");
        // Each plane of the output has the bias as its mean.
        let y = &fused.0;
        let bias = host(b.inner());
        for (i, plane) in y.chunks(30).enumerate() {
            let mean: f32 = plane.iter().sum::<f32>() / 30.0;
            assert!((mean - bias[i % 4]).abs() < 1e-4, "plane {i}: {mean}");
        }
    }

    /// Without autodiff, and untracked on an autodiff device, the op gives the same values.
    #[test]
    fn untracked_paths_agree() {
        let mut rng = Rng::new(4);
        let flex = Device::flex();
        let x = random(&mut rng, [2, 3, 4, 4], &flex);
        let w = random(&mut rng, [3], &flex);
        let b = random(&mut rng, [3], &flex);
        let plain = host(instance_norm(x.clone(), w.clone(), b.clone()));
        let ad = host(
            instance_norm(
                x.clone().autodiff(),
                w.clone().autodiff(),
                b.clone().autodiff(),
            )
            .inner(),
        );
        let reference = host(instance_norm_reference(x, w, b));
        assert_eq!(plain, ad);
        assert!(max_rel(&plain, &reference) < 1e-5);
    }
}
