//! The ConvNet's convolution (stride 1, no dilation, one group, square padding) as one
//! fused op on the CPU backend, with a hand-written backward.
//!
//! Burn's CPU convolution copies the whole batch to NHWC on one thread, builds im2col tiles
//! and scatters each product back; its backward is a transposed convolution for the input
//! gradient and a second convolution (the output gradient as a kernel) for the weights.
//! Measured with `perf` on a training step, that surrounding work cost more than the matrix
//! products. Here every sample stays NCHW: it is unfolded into a buffer that stays in
//! cache, and multiplied by the same `gemm` crate Burn uses:
//!
//! - forward: `y[n] = W · col(x[n]) + b`, with `W` `[Cout, Cin·k·k]`;
//! - backward: `dW = Σ_n dy[n] · col(x[n])ᵀ`, `db = Σ_n Σ_pixels dy[n]`, and
//!   `dx[n] = fold(Wᵀ · dy[n])`, each computed only when its input is tracked.
//!
//! Samples are spread over Rayon's threads and each product runs on one thread.
//! [`crate::nets`] calls [`conv2d`], which takes this path on `flex` and Burn's
//! convolution everywhere else (and for strides, dilations or groups this op lacks).

use std::ops::Range;

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::{FlexTensor, flex, on_flex, values};

/// `conv2d(x, weight, bias, options)`, fused on the CPU backend where it can be (see the
/// module docs). Differentiable in all three on autodiff devices.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    let [(pad, pad_bottom), (pad_left, pad_right)] = options.padding;
    let [_, _, h, w] = x.dims();
    let [_, _, kh, kw] = weight.dims();
    let fused = on_flex(&x.device())
        && options.stride == [1, 1]
        && options.dilation == [1, 1]
        && options.groups == 1
        && [pad_bottom, pad_left, pad_right] == [pad; 3]
        && kh == kw
        && h + 2 * pad >= kh
        && w + 2 * pad >= kw
        && x.dims().iter().chain(&weight.dims()).all(|&d| d > 0)
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
    if !fused {
        return burn::tensor::module::conv2d(x, weight, bias, options);
    }
    // An untracked zero bias costs one [Cout] vector and keeps the op at three inputs.
    let bias = bias.unwrap_or_else(|| Tensor::zeros([weight.dims()[0]], &x.device()));
    Tensor::from_dispatch(Dispatch::conv2d_fused(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        pad,
    ))
}

/// The sizes of one convolution, from the input's and the weight's shapes.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    k: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn of(x: &FlexTensor, weight: &FlexTensor, pad: usize) -> Self {
        let (xs, ws) = (x.layout().shape(), weight.layout().shape());
        let (h, w, k) = (xs[2], xs[3], ws[2]);
        Self {
            n: xs[0],
            cin: xs[1],
            h,
            w,
            cout: ws[0],
            k,
            pad,
            ho: h + 2 * pad - k + 1,
            wo: w + 2 * pad - k + 1,
        }
    }

    /// Rows of the unfolded input (and columns of the flattened weight): `Cin·k·k`.
    fn taps(&self) -> usize {
        self.cin * self.k * self.k
    }

    fn out_pixels(&self) -> usize {
        self.ho * self.wo
    }

    fn in_len(&self) -> usize {
        self.cin * self.h * self.w
    }

    fn out_len(&self) -> usize {
        self.cout * self.out_pixels()
    }

    /// For tap column `kx`: the output columns whose input column `ix = ox + kx - pad`
    /// lies inside the image, and those input columns.
    fn columns(&self, kx: usize) -> (Range<usize>, Range<usize>) {
        let lo = self.pad.saturating_sub(kx).min(self.wo);
        let hi = (self.w + self.pad).saturating_sub(kx).clamp(lo, self.wo);
        // lo + kx >= pad whenever the range is not empty, so nothing goes negative.
        let input = (lo + kx).saturating_sub(self.pad)..(hi + kx).saturating_sub(self.pad);
        (lo..hi, input)
    }

    /// The input row read by output row `oy` at tap row `ky`, if it is inside the image.
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy + ky).checked_sub(self.pad).filter(|&iy| iy < self.h)
    }
}

/// Unfolds one sample `[Cin, H, W]` into `col` `[Cin·k·k, Ho·Wo]`: row `(ci, ky, kx)` holds
/// the input pixel each output pixel sees through that tap, zero in the padding.
fn unfold(g: &Geometry, x: &[f32], col: &mut [f32]) {
    let (k, wo) = (g.k, g.wo);
    for (r, row) in col.chunks_exact_mut(g.out_pixels()).enumerate() {
        let (ci, ky, kx) = (r / (k * k), r / k % k, r % k);
        let (cols, input) = g.columns(kx);
        let plane = &x[ci * g.h * g.w..][..g.h * g.w];
        for (oy, out) in row.chunks_exact_mut(wo).enumerate() {
            match g.input_row(oy, ky) {
                Some(iy) => {
                    let src = &plane[iy * g.w..][..g.w];
                    out[..cols.start].fill(0.0);
                    out[cols.end..].fill(0.0);
                    out[cols.clone()].copy_from_slice(&src[input.clone()]);
                }
                None => out.fill(0.0),
            }
        }
    }
}

/// The adjoint of [`unfold`]: adds every entry of `col` onto the input pixel it came from.
fn fold(g: &Geometry, col: &[f32], dx: &mut [f32]) {
    let (k, wo) = (g.k, g.wo);
    for (r, row) in col.chunks_exact(g.out_pixels()).enumerate() {
        let (ci, ky, kx) = (r / (k * k), r / k % k, r % k);
        let (cols, input) = g.columns(kx);
        let plane = &mut dx[ci * g.h * g.w..][..g.h * g.w];
        for (oy, src) in row.chunks_exact(wo).enumerate() {
            if let Some(iy) = g.input_row(oy, ky) {
                let dst = &mut plane[iy * g.w..][..g.w][input.clone()];
                for (d, &s) in dst.iter_mut().zip(&src[cols.clone()]) {
                    *d += s;
                }
            }
        }
    }
}

/// A matrix inside a slice: `rows × cols`, element `(i, j)` at `i * rs + j * cs`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows × cols` matrix.
    fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(data.len() >= rows * cols, "matrix larger than its slice");
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose, without moving any data.
    fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// `dst = a · b`, or `dst += a · b` when `accumulate`; `dst` is row-major, one thread.
fn matmul(dst: &mut [f32], accumulate: bool, a: Mat, b: Mat) {
    assert_eq!(a.cols, b.rows, "inner dimensions");
    assert_eq!(dst.len(), a.rows * b.cols, "destination size");
    // SAFETY: `Mat::rows` checked that every element either matrix names lies inside its
    // slice (a transpose names the same elements), the assert above does so for `dst`,
    // and `dst` is a unique borrow, so it aliases neither input.
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            dst.as_mut_ptr(),
            1,
            b.cols as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Forward and backward on an execution backend (no autodiff).
pub trait ConvKernels: Backend {
    /// `x` `[N, Cin, H, W]`, `weight` `[Cout, Cin, k, k]`, `bias` `[Cout]`, zero padding
    /// `pad` on every side, stride 1.
    fn conv2d_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pad: usize,
    ) -> FloatTensor<Self>;

    /// `(dx, dweight, dbias)` from the output gradient `dy`, each only where asked for.
    fn conv2d_backward(
        dy: FloatTensor<Self>,
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        pad: usize,
        wanted: Wanted,
    ) -> Grads<Self>;
}

/// Which gradients the graph needs: an untracked input's is never computed.
#[derive(Clone, Copy, Debug)]
pub struct Wanted {
    pub x: bool,
    pub weight: bool,
    pub bias: bool,
}

/// The gradients [`ConvKernels::conv2d_backward`] computed.
pub struct Grads<B: Backend> {
    pub x: Option<FloatTensor<B>>,
    pub weight: Option<FloatTensor<B>>,
    pub bias: Option<FloatTensor<B>>,
}

impl ConvKernels for Flex {
    fn conv2d_forward(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        pad: usize,
    ) -> FlexTensor {
        let (x, weight, bias) = (
            x.to_contiguous(),
            weight.to_contiguous(),
            bias.to_contiguous(),
        );
        let g = Geometry::of(&x, &weight, pad);
        let (taps, pixels) = (g.taps(), g.out_pixels());
        let w = Mat::rows(values(&weight), g.cout, taps);
        let b = values(&bias);
        let mut y = vec![0.0f32; g.n * g.out_len()];
        y.par_chunks_mut(g.out_len())
            .zip(values(&x).par_chunks(g.in_len()))
            .for_each_init(
                || vec![0.0f32; taps * pixels],
                |col, (out, xs)| {
                    unfold(&g, xs, col);
                    matmul(out, false, w, Mat::rows(col, taps, pixels));
                    for (plane, &bias) in out.chunks_exact_mut(pixels).zip(b) {
                        plane.iter_mut().for_each(|v| *v += bias);
                    }
                },
            );
        flex(y, &[g.n, g.cout, g.ho, g.wo])
    }

    fn conv2d_backward(
        dy: FlexTensor,
        x: FlexTensor,
        weight: FlexTensor,
        pad: usize,
        wanted: Wanted,
    ) -> Grads<Flex> {
        let (dy, x, weight) = (
            dy.to_contiguous(),
            x.to_contiguous(),
            weight.to_contiguous(),
        );
        let g = Geometry::of(&x, &weight, pad);
        let (taps, pixels) = (g.taps(), g.out_pixels());
        let (dys, xs) = (values(&dy), values(&x));
        let w = Mat::rows(values(&weight), g.cout, taps);
        // A few chunks of samples per thread, each with its own partial dW and db.
        let per_chunk = g.n.div_ceil(4 * rayon::current_num_threads()).max(1);
        let mut dx = vec![0.0f32; if wanted.x { g.n * g.in_len() } else { 0 }];
        let dx_chunks: Vec<&mut [f32]> = if wanted.x {
            dx.chunks_mut(per_chunk * g.in_len()).collect()
        } else {
            (0..g.n.div_ceil(per_chunk))
                .map(|_| <&mut [f32]>::default())
                .collect()
        };
        let (dws, dbs): (Vec<Vec<f32>>, Vec<Vec<f32>>) = dx_chunks
            .into_par_iter()
            .enumerate()
            .map(|(c, dx_chunk)| {
                let samples = c * per_chunk..((c + 1) * per_chunk).min(g.n);
                let mut dw = vec![0.0f32; if wanted.weight { g.cout * taps } else { 0 }];
                let mut db = vec![0.0f32; if wanted.bias { g.cout } else { 0 }];
                let mut col = vec![0.0f32; taps * pixels];
                for (i, s) in samples.clone().enumerate() {
                    let dy_s = &dys[s * g.out_len()..][..g.out_len()];
                    let dy_m = Mat::rows(dy_s, g.cout, pixels);
                    if wanted.weight {
                        unfold(&g, &xs[s * g.in_len()..][..g.in_len()], &mut col);
                        matmul(&mut dw, i > 0, dy_m, Mat::rows(&col, taps, pixels).t());
                    }
                    if wanted.bias {
                        for (d, plane) in db.iter_mut().zip(dy_s.chunks_exact(pixels)) {
                            *d += plane.iter().sum::<f32>();
                        }
                    }
                    if wanted.x {
                        // `col` is free again: it holds Wᵀ · dy[s] before the fold.
                        matmul(&mut col, false, w.t(), dy_m);
                        fold(&g, &col, &mut dx_chunk[i * g.in_len()..][..g.in_len()]);
                    }
                }
                (dw, db)
            })
            .unzip();
        Grads {
            x: wanted.x.then(|| flex(dx, &[g.n, g.cin, g.h, g.w])),
            weight: wanted
                .weight
                .then(|| flex(sum(dws), &[g.cout, g.cin, g.k, g.k])),
            bias: wanted.bias.then(|| flex(sum(dbs), &[g.cout])),
        }
    }
}

/// The element-wise sum of equally long partial results.
fn sum(parts: Vec<Vec<f32>>) -> Vec<f32> {
    let mut parts = parts.into_iter();
    let mut total = parts.next().unwrap_or_default();
    for part in parts {
        total.iter_mut().zip(part).for_each(|(t, v)| *t += v);
    }
    total
}

/// The op as Burn's dispatch sees it (see the module docs of [`crate::kernels`]).
#[backend_extension(Autodiff, Flex)]
pub trait ConvBackend: Backend {
    fn conv2d_fused(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pad: usize,
    ) -> FloatTensor<Self>;
}

impl ConvBackend for Flex {
    fn conv2d_fused(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, pad: usize) -> FlexTensor {
        Self::conv2d_forward(x, weight, bias, pad)
    }
}

/// The backward step Burn's autodiff graph runs for the op.
#[derive(Debug)]
struct ConvStep;

impl<B: ConvKernels> Backward<B, 3> for ConvStep {
    /// The checkpointed input and weight, and the padding.
    type State = (NodeId, NodeId, usize);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [x_node, weight_node, bias_node] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x_id, weight_id, pad) = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_id);
        let weight: FloatTensor<B> = checkpointer.retrieve_node_output(weight_id);
        let wanted = Wanted {
            x: x_node.is_some(),
            weight: weight_node.is_some(),
            bias: bias_node.is_some(),
        };
        let out = B::conv2d_backward(dy, x, weight, pad, wanted);
        for (node, grad) in [
            (x_node, out.x),
            (weight_node, out.weight),
            (bias_node, out.bias),
        ] {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: ConvKernels, C: CheckpointStrategy> ConvBackend for Autodiff<B, C> {
    fn conv2d_fused(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pad: usize,
    ) -> FloatTensor<Self> {
        let prep = ConvStep
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful();
        match prep {
            OpsKind::Tracked(mut prep) => {
                let x_id = prep.checkpoint(&x);
                let weight_id = prep.checkpoint(&weight);
                let y = B::conv2d_forward(
                    x.into_primitive(),
                    weight.into_primitive(),
                    bias.into_primitive(),
                    pad,
                );
                prep.finish((x_id, weight_id, pad), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_forward(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                pad,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, TensorData};

    use super::*;
    use crate::rng::Rng;

    fn random<const D: usize>(rng: &mut Rng, dims: [usize; D], device: &Device) -> Tensor<D> {
        let n = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        Tensor::from_data(TensorData::new(v, dims), device)
    }

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    fn max_rel(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
            .fold(0.0, f32::max)
    }

    /// `y[n, o, i, j] = b[o] + Σ x[n, c, i + u - p, j + v - p] w[o, c, u, v]` in float64
    /// loops, for one output value.
    fn direct(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        xd: [usize; 4],
        wd: [usize; 4],
        p: usize,
        at: [usize; 4],
    ) -> f64 {
        let [_, cin, h, wi] = xd;
        let [_, _, k, _] = wd;
        let [n, o, i, j] = at;
        let mut acc = b[o] as f64;
        for c in 0..cin {
            for u in 0..k {
                for v in 0..k {
                    let (y, x_) = ((i + u) as isize - p as isize, (j + v) as isize - p as isize);
                    if y >= 0 && x_ >= 0 && (y as usize) < h && (x_ as usize) < wi {
                        let xv = x[((n * cin + c) * h + y as usize) * wi + x_ as usize];
                        acc += xv as f64 * w[((o * cin + c) * k + u) * k + v] as f64;
                    }
                }
            }
        }
        acc
    }

    /// The fused op against float64 loops (forward) and against Burn's convolution
    /// (forward and every gradient, with a non-trivial upstream gradient), for paddings
    /// of 0, 1 and 2, one and several input channels, and non-square images.
    #[test]
    fn fused_matches_direct_sum_and_burn_with_gradients() {
        let device = Device::flex().autodiff();
        let mut rng = Rng::new(7);
        for (xd, k, pad) in [
            ([3, 1, 7, 5], 3, 1),
            ([2, 4, 6, 6], 3, 0),
            ([2, 3, 5, 8], 3, 2),
            ([5, 2, 4, 4], 1, 0),
            ([1, 3, 3, 3], 3, 1),
        ] {
            let wd = [6, xd[1], k, k];
            let x = random(&mut rng, xd, &device);
            let w = random(&mut rng, wd, &device);
            let b = random(&mut rng, [6], &device);
            let opts = ConvOptions::new([1, 1], [pad, pad], [1, 1], 1);
            let run = |fused: bool| {
                let (x, w, b) = (
                    x.clone().require_grad(),
                    w.clone().require_grad(),
                    b.clone().require_grad(),
                );
                let y = if fused {
                    conv2d(x.clone(), w.clone(), Some(b.clone()), opts.clone())
                } else {
                    burn::tensor::module::conv2d(
                        x.clone(),
                        w.clone(),
                        Some(b.clone()),
                        opts.clone(),
                    )
                };
                let upstream = y.clone().sin().detach();
                let grads = (y.clone() * upstream).sum().backward();
                (
                    y.dims(),
                    host(y.inner()),
                    host(x.grad(&grads).unwrap()),
                    host(w.grad(&grads).unwrap()),
                    host(b.grad(&grads).unwrap()),
                )
            };
            let (fused, burn) = (run(true), run(false));
            let case = format!("{xd:?} k {k} pad {pad}");
            assert_eq!(fused.0, burn.0, "{case}: shape");
            let (xs, ws, bs) = (host(x.inner()), host(w.inner()), host(b.inner()));
            let [_, co, ho, wo] = fused.0;
            for n in 0..xd[0] {
                for o in 0..co {
                    for i in 0..ho {
                        for j in 0..wo {
                            let want = direct(&xs, &ws, &bs, xd, wd, pad, [n, o, i, j]);
                            let got = fused.1[((n * co + o) * ho + i) * wo + j] as f64;
                            assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "{case}");
                        }
                    }
                }
            }
            assert!(max_rel(&fused.2, &burn.2) < 1e-4, "{case}: dx");
            assert!(max_rel(&fused.3, &burn.3) < 1e-4, "{case}: dweight");
            assert!(max_rel(&fused.4, &burn.4) < 1e-4, "{case}: dbias");
        }
    }

    /// Only the tracked inputs get gradients (an untracked image batch, as when training a
    /// classifier, or untracked weights, as in DM's embedder), and they are the same
    /// gradients; without a bias the op still matches Burn.
    #[test]
    fn partial_tracking_and_no_bias() {
        let device = Device::flex().autodiff();
        let mut rng = Rng::new(8);
        let x = random(&mut rng, [4, 2, 6, 6], &device);
        let w = random(&mut rng, [3, 2, 3, 3], &device);
        let opts = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let grads_of = |track_x: bool, fused: bool| {
            let x = if track_x {
                x.clone().require_grad()
            } else {
                x.clone()
            };
            let w = if track_x {
                w.clone()
            } else {
                w.clone().require_grad()
            };
            let y = if fused {
                conv2d(x.clone(), w.clone(), None, opts.clone())
            } else {
                burn::tensor::module::conv2d(x.clone(), w.clone(), None, opts.clone())
            };
            let grads = y.powf_scalar(2.0).sum().backward();
            (x.grad(&grads).map(host), w.grad(&grads).map(host))
        };
        for track_x in [true, false] {
            let (fused, burn) = (grads_of(track_x, true), grads_of(track_x, false));
            assert_eq!(fused.0.is_some(), track_x);
            assert_eq!(fused.1.is_some(), !track_x);
            let (f, b) = if track_x {
                (fused.0, burn.0)
            } else {
                (fused.1, burn.1)
            };
            assert!(
                max_rel(&f.unwrap(), &b.unwrap()) < 1e-4,
                "track_x {track_x}"
            );
        }
        // Untracked on the plain backend: the same values.
        let (xf, wf) = (x.inner(), w.inner());
        let plain = host(conv2d(xf.clone(), wf.clone(), None, opts.clone()));
        let burn = host(burn::tensor::module::conv2d(xf, wf, None, opts));
        assert!(max_rel(&plain, &burn) < 1e-5);
    }
}
