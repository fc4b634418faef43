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
//! Samples are spread over Rayon's threads and each product runs on one thread. 3×3
//! convolutions with padding 1 and 16 or more channels on each side (all of a ConvNet's
//! but the first) take [`winograd`]'s kernels instead: 2.25 times fewer multiplications,
//! which made an MTT iteration a quarter faster.
//! [`crate::nets`] calls [`conv2d`], which takes this path on `flex` and Burn's
//! convolution everywhere else (and for strides, dilations or groups this op lacks).

use std::mem::MaybeUninit;
use std::ops::Range;

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{DType, Device, Tensor};
use rayon::prelude::*;

use super::{FlexTensor, flex, lanes, on_flex, values, written};

mod winograd;

/// The padding, when the fused kernels take a convolution of `x_dims` `[N, Cin, H, W]` by
/// `weight_dims` `[Cout, Cin, k, k]` with `options` whose output gradient (if any) has
/// `dy_dims`: on flex, every tensor f32, stride 1, one group, no dilation, the same padding
/// on every side.
fn fusable(
    device: &Device,
    all_f32: bool,
    x_dims: [usize; 4],
    weight_dims: [usize; 4],
    dy_dims: Option<[usize; 4]>,
    options: &ConvOptions<2>,
) -> Option<usize> {
    let [(pad, pad_bottom), (pad_left, pad_right)] = options.padding;
    let [n, cin, h, w] = x_dims;
    let [cout, wcin, kh, kw] = weight_dims;
    let ok = on_flex(device)
        && all_f32
        && options.stride == [1, 1]
        && options.dilation == [1, 1]
        && options.groups == 1
        && [pad_bottom, pad_left, pad_right] == [pad; 3]
        && kh == kw
        && cin == wcin
        && h + 2 * pad >= kh
        && w + 2 * pad >= kw
        && x_dims.iter().chain(&weight_dims).all(|&d| d > 0)
        && dy_dims.is_none_or(|d| d == [n, cout, h + 2 * pad + 1 - kh, w + 2 * pad + 1 - kw]);
    ok.then_some(pad)
}

/// `conv2d(x, weight, bias, options)`, fused on the CPU backend where it can be (see the
/// module docs). Differentiable in all three on autodiff devices.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    let all_f32 = x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
    let Some(pad) = fusable(
        &x.device(),
        all_f32,
        x.dims(),
        weight.dims(),
        None,
        &options,
    ) else {
        return burn::tensor::module::conv2d(x, weight, bias, options);
    };
    // An untracked zero bias costs one [Cout] vector and keeps the op at three inputs.
    let bias = bias.unwrap_or_else(|| Tensor::zeros([weight.dims()[0]], &x.device()));
    Tensor::from_dispatch(Dispatch::conv2d_fused(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        pad,
    ))
}

/// The gradient of `<conv2d(x, W), dy>` with respect to `W` `[Cout, Cin, k, k]`
/// (`weight_dims`): Burn's `conv2d_weight_backward`, fused on the CPU backend where
/// [`conv2d`] is. Differentiable in `x` and `dy` on autodiff devices, so a hand-written
/// backward pass built from it differentiates again (MTT's student, DC's matching).
pub fn conv2d_weight_grad(
    x: Tensor<4>,
    dy: Tensor<4>,
    weight_dims: [usize; 4],
    options: ConvOptions<2>,
) -> Tensor<4> {
    let all_f32 = x.dtype() == DType::F32 && dy.dtype() == DType::F32;
    let (device, x_dims, dy_dims) = (x.device(), x.dims(), dy.dims());
    match fusable(
        &device,
        all_f32,
        x_dims,
        weight_dims,
        Some(dy_dims),
        &options,
    ) {
        Some(pad) => Tensor::from_dispatch(Dispatch::conv2d_weight_grad_fused(
            x.into_dispatch(),
            dy.into_dispatch(),
            weight_dims[2],
            pad,
        )),
        // Burn reads only the weight's shape.
        None => burn::tensor::module::conv2d_weight_backward(
            x,
            Tensor::zeros(weight_dims, &device),
            dy,
            options,
        ),
    }
}

/// The gradient of `<conv2d(x, weight), dy>` with respect to `x` `[N, Cin, H, W]`, `[H, W]`
/// = `in_hw`: a transposed convolution, fused on the CPU backend where [`conv2d`] is.
/// Differentiable in `dy` and `weight` on autodiff devices.
pub fn conv2d_input_grad(
    dy: Tensor<4>,
    weight: Tensor<4>,
    in_hw: [usize; 2],
    options: ConvOptions<2>,
) -> Tensor<4> {
    let dy_dims @ [n, _, hz, wz] = dy.dims();
    let weight_dims @ [_, cin, k, _] = weight.dims();
    let all_f32 = dy.dtype() == DType::F32 && weight.dtype() == DType::F32;
    let x_dims = [n, cin, in_hw[0], in_hw[1]];
    if let Some(pad) = fusable(
        &dy.device(),
        all_f32,
        x_dims,
        weight_dims,
        Some(dy_dims),
        &options,
    ) {
        return Tensor::from_dispatch(Dispatch::conv2d_input_grad_fused(
            dy.into_dispatch(),
            weight.into_dispatch(),
            in_hw[0],
            in_hw[1],
            pad,
        ));
    }
    let (stride, pad) = (options.stride[0], options.padding[0].0);
    // conv_transpose2d gives (hz - 1) * stride - 2 pad + k rows; strides that dropped input
    // rows get them back as padding_out.
    let out_pad = |s_in: usize, s_z: usize| s_in + 2 * pad - ((s_z - 1) * stride + k);
    let topts = ConvTransposeOptions::new(
        options.stride,
        [pad; 2],
        [out_pad(in_hw[0], hz), out_pad(in_hw[1], wz)],
        options.dilation,
        1,
    );
    burn::tensor::module::conv_transpose2d(dy, weight, None, topts)
}

/// The sizes of one convolution (stride 1, the same padding on every side), from the
/// input's and the weight's shapes.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
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
    /// `x` `[N, Cin, H, W]`, `weight` `[Cout, Cin, k, k]`.
    pub fn new(x: [usize; 4], weight: [usize; 4], pad: usize) -> Self {
        let [n, cin, h, w] = x;
        let [cout, _, k, _] = weight;
        Self {
            n,
            cin,
            h,
            w,
            cout,
            k,
            pad,
            ho: h + 2 * pad - k + 1,
            wo: w + 2 * pad - k + 1,
        }
    }

    fn x_dims(&self) -> [usize; 4] {
        [self.n, self.cin, self.h, self.w]
    }

    fn weight_dims(&self) -> [usize; 4] {
        [self.cout, self.cin, self.k, self.k]
    }

    fn y_dims(&self) -> [usize; 4] {
        [self.n, self.cout, self.ho, self.wo]
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

thread_local! {
    /// Each thread's unfolded-input buffer, kept between calls: zeroing and faulting in a
    /// fresh one per sample cost a twentieth of an MTT iteration.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The largest scratch buffer a thread keeps (4 Mi values, 16 MB); larger ones are fresh.
const SCRATCH_KEPT: usize = 1 << 22;

/// Runs `f` on this thread's scratch buffer of `len` values, whose contents are whatever
/// the last user left (every user overwrites what it reads). `f` must not start Rayon
/// work, which could run another user on this thread while the buffer is lent.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    if len > SCRATCH_KEPT {
        return f(&mut vec![0.0; len]);
    }
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        f(&mut buf[..len])
    })
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

    /// A `rows × cols` matrix with element `(i, j)` at `i * rs + j * cs`.
    fn strided(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        assert!(rows > 0 && cols > 0, "a matrix with elements");
        assert!(
            (rows - 1) * rs + (cols - 1) * cs < data.len(),
            "matrix larger than its slice"
        );
        Self {
            data,
            rows,
            cols,
            rs,
            cs,
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
    // SAFETY: an initialised `f32` is an initialised `MaybeUninit<f32>`; `gemm` stores
    // only `f32` values through it.
    let dst = unsafe { &mut *(dst as *mut [f32] as *mut [MaybeUninit<f32>]) };
    // SAFETY: `dst` was initialised, so reading it (when accumulating) is sound.
    unsafe { gemm_raw(dst, accumulate, a, b) };
}

/// `dst = a · b` into memory not yet written, which comes back initialised.
fn matmul_into<'d>(dst: &'d mut [MaybeUninit<f32>], a: Mat, b: Mat) -> &'d mut [f32] {
    // SAFETY: without `accumulate`, gemm never reads `dst`.
    unsafe { gemm_raw(dst, false, a, b) };
    // SAFETY: gemm wrote all `a.rows * b.cols` elements, which `gemm_raw` checked is the
    // whole of `dst`.
    unsafe { &mut *(dst as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// The product through `gemm`, on one thread.
///
/// # Safety
/// With `accumulate`, `dst` must be initialised: gemm reads it.
unsafe fn gemm_raw(dst: &mut [MaybeUninit<f32>], accumulate: bool, a: Mat, b: Mat) {
    assert_eq!(a.cols, b.rows, "inner dimensions");
    assert_eq!(dst.len(), a.rows * b.cols, "destination size");
    // SAFETY: the assert above puts every element of the row-major `dst` inside it, and
    // `dst` is a unique borrow, so it aliases neither input.
    unsafe { gemm_at(dst.as_mut_ptr().cast(), [b.cols, 1], accumulate, a, b) };
}

/// `dst (+)= a · b` through `gemm` on one thread, element `(i, j)` of `dst` at
/// `i * rs + j * cs` for `[rs, cs]` = `dst_strides`.
///
/// # Safety
/// Every element of `dst` must lie in one allocation that neither input overlaps and
/// nothing else accesses meanwhile, and with `accumulate` be initialised (gemm reads it).
unsafe fn gemm_at(dst: *mut f32, [rs, cs]: [usize; 2], accumulate: bool, a: Mat, b: Mat) {
    assert_eq!(a.cols, b.rows, "inner dimensions");
    // SAFETY: `Mat`'s constructors checked that every element either matrix names lies
    // inside its slice (a transpose names the same elements); the caller vouches for `dst`.
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            dst,
            cs as isize,
            rs as isize,
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
    /// `x` `g.x_dims()`, `weight` `g.weight_dims()`, `bias` `[Cout]` (none: zero), zero
    /// padding `g.pad` on every side, stride 1.
    fn conv2d_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        g: Geometry,
    ) -> FloatTensor<Self>;

    /// `(dx, dweight, dbias)` from the output gradient `dy`, each only where asked for:
    /// `dx` reads only `weight` and `dweight` only `x`, so either may be absent when the
    /// gradient that reads it is not wanted.
    fn conv2d_backward(
        dy: FloatTensor<Self>,
        x: Option<FloatTensor<Self>>,
        weight: Option<FloatTensor<Self>>,
        g: Geometry,
        wanted: Wanted,
    ) -> Grads<Self>;

    /// The weight gradient alone: [`Self::conv2d_backward`] asked for `dweight` only.
    fn conv2d_weight_grad(
        dy: FloatTensor<Self>,
        x: FloatTensor<Self>,
        g: Geometry,
    ) -> FloatTensor<Self> {
        let wanted = Wanted {
            weight: true,
            ..Wanted::default()
        };
        let out = Self::conv2d_backward(dy, Some(x), None, g, wanted);
        out.weight.expect("asked for")
    }

    /// The input gradient alone: [`Self::conv2d_backward`] asked for `dx` only.
    fn conv2d_input_grad(
        dy: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        g: Geometry,
    ) -> FloatTensor<Self> {
        let wanted = Wanted {
            x: true,
            ..Wanted::default()
        };
        let out = Self::conv2d_backward(dy, None, Some(weight), g, wanted);
        out.x.expect("asked for")
    }
}

/// Which gradients the graph needs: an untracked input's is never computed.
#[derive(Clone, Copy, Debug, Default)]
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
        bias: Option<FlexTensor>,
        g: Geometry,
    ) -> FlexTensor {
        let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
        let bias = bias.map(|b| b.to_contiguous());
        let b = bias.as_ref().map(values);
        let xv = values(&x);
        if winograd::applies(&g) {
            return flex(winograd::forward(&g, xv, values(&weight), b), &g.y_dims());
        }
        let (taps, pixels) = (g.taps(), g.out_pixels());
        let w = Mat::rows(values(&weight), g.cout, taps);
        let y = written(g.n * g.out_len(), g.out_len(), |s, out| {
            let xs = &xv[s * g.in_len()..][..g.in_len()];
            let out = with_scratch(taps * pixels, |col| {
                unfold(&g, xs, col);
                matmul_into(out, w, Mat::rows(col, taps, pixels))
            });
            if let Some(b) = b {
                for (plane, &bias) in out.chunks_exact_mut(pixels).zip(b) {
                    plane.iter_mut().for_each(|v| *v += bias);
                }
            }
        });
        flex(y, &g.y_dims())
    }

    fn conv2d_backward(
        dy: FlexTensor,
        x: Option<FlexTensor>,
        weight: Option<FlexTensor>,
        g: Geometry,
        wanted: Wanted,
    ) -> Grads<Flex> {
        let dy = dy.to_contiguous();
        let x = x.filter(|_| wanted.weight).map(|t| t.to_contiguous());
        let weight = weight.filter(|_| wanted.x).map(|t| t.to_contiguous());
        assert!(
            x.is_some() == wanted.weight && weight.is_some() == wanted.x,
            "dweight needs x and dx needs the weight"
        );
        let (taps, pixels) = (g.taps(), g.out_pixels());
        let dys = values(&dy);
        let xs = x.as_ref().map(values);
        if winograd::applies(&g) {
            let (dx, dw) = winograd::backward(&g, dys, xs, weight.as_ref().map(values));
            return Grads {
                x: dx.map(|dx| flex(dx, &g.x_dims())),
                weight: dw.map(|dw| flex(dw, &g.weight_dims())),
                bias: wanted.bias.then(|| flex(channel_sums(&g, dys), &[g.cout])),
            };
        }
        let w = weight.as_ref().map(|t| Mat::rows(values(t), g.cout, taps));
        // Chunks of samples, each with its own partial dW and db: a few per thread, or one
        // per thread for small batches (10 samples in 5 chunks of 2 left one of two threads
        // idle for a fifth of the backward).
        let threads = rayon::current_num_threads().max(1);
        let per_chunk = if g.n < 4 * threads {
            g.n.div_ceil(threads)
        } else {
            g.n.div_ceil(4 * threads)
        }
        .max(1);
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
                with_scratch(taps * pixels, |col| {
                    for (i, s) in samples.clone().enumerate() {
                        let dy_s = &dys[s * g.out_len()..][..g.out_len()];
                        let dy_m = Mat::rows(dy_s, g.cout, pixels);
                        if let Some(xs) = xs {
                            unfold(&g, &xs[s * g.in_len()..][..g.in_len()], col);
                            matmul(&mut dw, i > 0, dy_m, Mat::rows(col, taps, pixels).t());
                        }
                        if wanted.bias {
                            for (d, plane) in db.iter_mut().zip(dy_s.chunks_exact(pixels)) {
                                *d += lanes(plane, plane, |a, _| a);
                            }
                        }
                        if let Some(w) = w {
                            // `col` is free again: it holds Wᵀ · dy[s] before the fold.
                            matmul(col, false, w.t(), dy_m);
                            fold(&g, col, &mut dx_chunk[i * g.in_len()..][..g.in_len()]);
                        }
                    }
                });
                (dw, db)
            })
            .unzip();
        Grads {
            x: wanted.x.then(|| flex(dx, &g.x_dims())),
            weight: wanted.weight.then(|| flex(sum(dws), &g.weight_dims())),
            bias: wanted.bias.then(|| flex(sum(dbs), &[g.cout])),
        }
    }
}

/// `Σ_n Σ_pixels dy[n, c]` for every channel `c` (a bias gradient), over Rayon's threads.
fn channel_sums(g: &Geometry, dy: &[f32]) -> Vec<f32> {
    let pixels = g.out_pixels();
    (0..g.cout)
        .into_par_iter()
        .map(|c| {
            (0..g.n)
                .map(|s| {
                    let plane = &dy[(s * g.cout + c) * pixels..][..pixels];
                    lanes(plane, plane, |a, _| a)
                })
                .sum()
        })
        .collect()
}

/// The element-wise sum of equally long partial results, in their order, over Rayon's
/// threads (a weight gradient's partial sums are 147,000 values at ConvNet-128's width).
fn sum(parts: Vec<Vec<f32>>) -> Vec<f32> {
    const CHUNK: usize = 1 << 14;
    let mut parts = parts.into_iter();
    let mut total = parts.next().unwrap_or_default();
    let rest: Vec<Vec<f32>> = parts.collect();
    total.par_chunks_mut(CHUNK).enumerate().for_each(|(i, t)| {
        for part in &rest {
            t.iter_mut()
                .zip(&part[i * CHUNK..])
                .for_each(|(t, v)| *t += v);
        }
    });
    total
}

fn dims<B: Backend>(t: &FloatTensor<B>) -> [usize; 4] {
    let s = t.shape();
    [s[0], s[1], s[2], s[3]]
}

/// The ops as Burn's dispatch sees them (see the module docs of [`crate::kernels`]).
#[backend_extension(Autodiff, Flex)]
pub trait ConvBackend: Backend {
    fn conv2d_fused(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        pad: usize,
    ) -> FloatTensor<Self>;

    /// The weight gradient `[Cout, Cin, k, k]` of a convolution with input `x` and output
    /// gradient `dy`.
    fn conv2d_weight_grad_fused(
        x: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        k: usize,
        pad: usize,
    ) -> FloatTensor<Self>;

    /// The input gradient `[N, Cin, in_h, in_w]` of a convolution by `weight` with output
    /// gradient `dy`.
    fn conv2d_input_grad_fused(
        dy: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        in_h: usize,
        in_w: usize,
        pad: usize,
    ) -> FloatTensor<Self>;
}

/// The geometry of the weight gradient's convolution.
fn weight_grad_geometry<B: Backend>(
    x: &FloatTensor<B>,
    dy: &FloatTensor<B>,
    k: usize,
    pad: usize,
) -> Geometry {
    let (x, dy) = (dims::<B>(x), dims::<B>(dy));
    Geometry::new(x, [dy[1], x[1], k, k], pad)
}

/// The geometry of the input gradient's convolution.
fn input_grad_geometry<B: Backend>(
    dy: &FloatTensor<B>,
    weight: &FloatTensor<B>,
    [in_h, in_w]: [usize; 2],
    pad: usize,
) -> Geometry {
    let weight = dims::<B>(weight);
    Geometry::new([dims::<B>(dy)[0], weight[1], in_h, in_w], weight, pad)
}

impl ConvBackend for Flex {
    fn conv2d_fused(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, pad: usize) -> FlexTensor {
        let g = Geometry::new(dims::<Flex>(&x), dims::<Flex>(&weight), pad);
        Self::conv2d_forward(x, weight, Some(bias), g)
    }

    fn conv2d_weight_grad_fused(x: FlexTensor, dy: FlexTensor, k: usize, pad: usize) -> FlexTensor {
        let g = weight_grad_geometry::<Flex>(&x, &dy, k, pad);
        Self::conv2d_weight_grad(dy, x, g)
    }

    fn conv2d_input_grad_fused(
        dy: FlexTensor,
        weight: FlexTensor,
        in_h: usize,
        in_w: usize,
        pad: usize,
    ) -> FlexTensor {
        let g = input_grad_geometry::<Flex>(&dy, &weight, [in_h, in_w], pad);
        Self::conv2d_input_grad(dy, weight, g)
    }
}

/// The backward step Burn's autodiff graph runs for the convolution.
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
        let g = Geometry::new(dims::<B>(&x), dims::<B>(&weight), pad);
        let wanted = Wanted {
            x: x_node.is_some(),
            weight: weight_node.is_some(),
            bias: bias_node.is_some(),
        };
        let out = B::conv2d_backward(dy, Some(x), Some(weight), g, wanted);
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

/// The backward step of the weight gradient `dW(x, dy)`, bilinear in its inputs:
/// `<W̄, dW(x, dy)> = <conv(x, W̄), dy>`, so `x̄ = dx(dy; W̄)` and `dȳ = conv(x, W̄)`.
#[derive(Debug)]
struct WeightGradStep;

impl<B: ConvKernels> Backward<B, 2> for WeightGradStep {
    /// The checkpointed input and output gradient, the kernel size and the padding.
    type State = (NodeId, NodeId, usize, usize);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [x_node, dy_node] = ops.parents;
        let upstream = grads.consume::<B>(&ops.node);
        let (x_id, dy_id, k, pad) = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_id);
        let dy: FloatTensor<B> = checkpointer.retrieve_node_output(dy_id);
        let g = weight_grad_geometry::<B>(&x, &dy, k, pad);
        if let Some(node) = dy_node {
            let d = B::conv2d_forward(x, upstream.clone(), None, g);
            grads.register::<B>(node.id, d);
        }
        if let Some(node) = x_node {
            grads.register::<B>(node.id, B::conv2d_input_grad(dy, upstream, g));
        }
    }
}

/// The backward step of the input gradient `dx(dy; W)`, bilinear in its inputs:
/// `<x̄, dx(dy; W)> = <conv(x̄, W), dy>`, so `dȳ = conv(x̄, W)` and `W̄ = dW(x̄, dy)`.
#[derive(Debug)]
struct InputGradStep;

impl<B: ConvKernels> Backward<B, 2> for InputGradStep {
    /// The checkpointed output gradient and weight, the input size and the padding.
    type State = (NodeId, NodeId, [usize; 2], usize);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [dy_node, weight_node] = ops.parents;
        let upstream = grads.consume::<B>(&ops.node);
        let (dy_id, weight_id, in_hw, pad) = ops.state;
        let dy: FloatTensor<B> = checkpointer.retrieve_node_output(dy_id);
        let weight: FloatTensor<B> = checkpointer.retrieve_node_output(weight_id);
        let g = input_grad_geometry::<B>(&dy, &weight, in_hw, pad);
        if let Some(node) = weight_node {
            let d = B::conv2d_weight_grad(dy, upstream.clone(), g);
            grads.register::<B>(node.id, d);
        }
        if let Some(node) = dy_node {
            grads.register::<B>(node.id, B::conv2d_forward(upstream, weight, None, g));
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
        let g = Geometry::new(dims::<Self>(&x), dims::<Self>(&weight), pad);
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
                    Some(bias.into_primitive()),
                    g,
                );
                prep.finish((x_id, weight_id, pad), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_forward(
                x.into_primitive(),
                weight.into_primitive(),
                Some(bias.into_primitive()),
                g,
            )),
        }
    }

    fn conv2d_weight_grad_fused(
        x: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        k: usize,
        pad: usize,
    ) -> FloatTensor<Self> {
        let g = weight_grad_geometry::<Self>(&x, &dy, k, pad);
        let grad = |x: FloatTensor<Self>, dy: FloatTensor<Self>| {
            B::conv2d_weight_grad(dy.into_primitive(), x.into_primitive(), g)
        };
        match WeightGradStep
            .prepare::<C>([x.node(), dy.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let (x_id, dy_id) = (prep.checkpoint(&x), prep.checkpoint(&dy));
                prep.finish((x_id, dy_id, k, pad), grad(x, dy))
            }
            OpsKind::UnTracked(prep) => prep.finish(grad(x, dy)),
        }
    }

    fn conv2d_input_grad_fused(
        dy: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        in_h: usize,
        in_w: usize,
        pad: usize,
    ) -> FloatTensor<Self> {
        let g = input_grad_geometry::<Self>(&dy, &weight, [in_h, in_w], pad);
        let grad = |dy: FloatTensor<Self>, weight: FloatTensor<Self>| {
            B::conv2d_input_grad(dy.into_primitive(), weight.into_primitive(), g)
        };
        match InputGradStep
            .prepare::<C>([dy.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let (dy_id, weight_id) = (prep.checkpoint(&dy), prep.checkpoint(&weight));
                prep.finish((dy_id, weight_id, [in_h, in_w], pad), grad(dy, weight))
            }
            OpsKind::UnTracked(prep) => prep.finish(grad(dy, weight)),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::kernels::testing::{host, max_rel, random};
    use crate::rng::Rng;

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
        // The last case is wide enough for the Winograd kernels.
        for (xd, cout, k, pad) in [
            ([3, 1, 7, 5], 6, 3, 1),
            ([2, 4, 6, 6], 6, 3, 0),
            ([2, 3, 5, 8], 6, 3, 2),
            ([5, 2, 4, 4], 6, 1, 0),
            ([1, 3, 3, 3], 6, 3, 1),
            ([2, 16, 5, 6], 32, 3, 1),
        ] {
            let wd = [cout, xd[1], k, k];
            let x = random(&mut rng, xd, &device);
            let w = random(&mut rng, wd, &device);
            let b = random(&mut rng, [cout], &device);
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

    /// The weight and input gradients as ops of their own (the student's hand-written
    /// backward): their values against Burn's `conv2d_weight_backward` and
    /// `conv_transpose2d`, and their gradients, with respect to both inputs, against
    /// Burn's autodiff through those ops.
    #[test]
    fn gradient_ops_match_burn_and_differentiate_again() {
        use burn::tensor::module::{conv_transpose2d, conv2d_weight_backward};
        use burn::tensor::ops::ConvTransposeOptions;
        let device = Device::flex().autodiff();
        let mut rng = Rng::new(9);
        // The last case is wide enough for the Winograd kernels.
        for (xd, cout, k, pad) in [
            ([3, 2, 7, 5], 4, 3, 1),
            ([2, 3, 6, 6], 4, 3, 0),
            ([2, 1, 4, 5], 4, 3, 2),
            ([2, 16, 5, 7], 16, 3, 1),
        ] {
            let [n, cin, h, w] = xd;
            let (ho, wo) = (h + 2 * pad + 1 - k, w + 2 * pad + 1 - k);
            let x = random(&mut rng, xd, &device);
            let wt = random(&mut rng, [cout, cin, k, k], &device);
            let dy = random(&mut rng, [n, cout, ho, wo], &device);
            let opts = ConvOptions::new([1, 1], [pad, pad], [1, 1], 1);
            let topts = ConvTransposeOptions::new([1, 1], [pad, pad], [0, 0], [1, 1], 1);
            let case = format!("{xd:?} k {k} pad {pad}");
            // dW(x, dy), then a loss that is not linear in it, differentiated to x and dy.
            let run_dw = |fused: bool| {
                let (x, dy) = (x.clone().require_grad(), dy.clone().require_grad());
                let dw = if fused {
                    conv2d_weight_grad(x.clone(), dy.clone(), wt.dims(), opts.clone())
                } else {
                    conv2d_weight_backward(x.clone(), wt.clone(), dy.clone(), opts.clone())
                };
                let grads = dw.clone().sin().sum().backward();
                let grad = |t: &Tensor<4>| host(t.grad(&grads).unwrap());
                (host(dw.inner()), grad(&x), grad(&dy))
            };
            let (fused, burn) = (run_dw(true), run_dw(false));
            assert!(max_rel(&fused.0, &burn.0) < 1e-4, "{case}: dW");
            assert!(max_rel(&fused.1, &burn.1) < 1e-4, "{case}: dW's x gradient");
            assert!(
                max_rel(&fused.2, &burn.2) < 1e-4,
                "{case}: dW's dy gradient"
            );
            // dx(dy; W), the same way, differentiated to dy and W.
            let run_dx = |fused: bool| {
                let (dy, wt) = (dy.clone().require_grad(), wt.clone().require_grad());
                let dx = if fused {
                    conv2d_input_grad(dy.clone(), wt.clone(), [h, w], opts.clone())
                } else {
                    conv_transpose2d(dy.clone(), wt.clone(), None, topts.clone())
                };
                assert_eq!(dx.dims(), xd, "{case}: dx's shape");
                let grads = dx.clone().sin().sum().backward();
                let grad = |t: &Tensor<4>| host(t.grad(&grads).unwrap());
                (host(dx.inner()), grad(&dy), grad(&wt))
            };
            let (fused, burn) = (run_dx(true), run_dx(false));
            assert!(max_rel(&fused.0, &burn.0) < 1e-4, "{case}: dx");
            assert!(
                max_rel(&fused.1, &burn.1) < 1e-4,
                "{case}: dx's dy gradient"
            );
            assert!(
                max_rel(&fused.2, &burn.2) < 1e-4,
                "{case}: dx's weight gradient"
            );
        }
    }
}
