//! Functional building blocks over one flat parameter vector, and the parameter layout
//! that places each tensor in it (in PyTorch's `named_parameters()` order).

use burn::tensor::Tensor;
use burn::tensor::activation;
use burn::tensor::module::{avg_pool2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};

use super::arch::Act;
use crate::kernels::conv::conv2d;
use crate::kernels::instance_norm::instance_norm;

/// PyTorch's default for every norm layer here.
pub const EPS: f64 = 1e-5;
/// PyTorch's BatchNorm momentum: running = (1 - m) * running + m * batch.
pub const MOMENTUM: f64 = 0.1;

/// How a tensor is initialised, as PyTorch's `reset_parameters` does it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// U(-bound, bound); conv/linear weights and biases use 1/sqrt(fan_in).
    Uniform(f32),
    Const(f32),
}

/// One named tensor inside the flat parameter (or running-statistics) vector.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamEntry {
    /// PyTorch's name, e.g. `features.0.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub init: Init,
}

impl ParamEntry {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Hands out offsets while a network is built.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    pub params: Vec<ParamEntry>,
    /// BatchNorm buffers: `running_mean` and `running_var` of each layer, in order.
    pub buffers: Vec<ParamEntry>,
}

impl Layout {
    pub fn num_params(&self) -> usize {
        self.params.last().map_or(0, |e| e.offset + e.numel())
    }

    pub fn num_buffers(&self) -> usize {
        self.buffers.last().map_or(0, |e| e.offset + e.numel())
    }

    fn push(&mut self, name: String, shape: &[usize], init: Init) -> usize {
        let offset = self.num_params();
        self.params.push(ParamEntry {
            name,
            shape: shape.to_vec(),
            offset,
            init,
        });
        offset
    }

    fn push_buffer(&mut self, name: String, len: usize, init: Init) -> usize {
        let offset = self.num_buffers();
        self.buffers.push(ParamEntry {
            name,
            shape: vec![len],
            offset,
            init,
        });
        offset
    }
}

/// A `D`-dimensional view of `n` numbers at `offset` of the flat vector.
pub(super) fn take<const D: usize>(p: &Tensor<1>, offset: usize, shape: [usize; D]) -> Tensor<D> {
    let n = shape.iter().product();
    p.clone().narrow(0, offset, n).reshape(shape)
}

/// Where a layer reads its parameters: the flat vector, or [`super::ParamPieces`].
pub trait Params {
    /// The parameter entry at `offset` (or, in the flat vector, any run of numbers there),
    /// as a `D`-dimensional tensor.
    fn take<const D: usize>(&self, offset: usize, shape: [usize; D]) -> Tensor<D>;
}

impl Params for Tensor<1> {
    fn take<const D: usize>(&self, offset: usize, shape: [usize; D]) -> Tensor<D> {
        take(self, offset, shape)
    }
}

/// Shape of a square-kernel convolution; stride 1, no padding and a bias by default,
/// like `nn.Conv2d`.
#[derive(Clone, Copy, Debug)]
pub struct ConvSpec {
    pub(super) cin: usize,
    pub(super) cout: usize,
    pub(super) k: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
    pub(super) bias: bool,
}

impl ConvSpec {
    pub fn new(cin: usize, cout: usize, k: usize) -> Self {
        Self {
            cin,
            cout,
            k,
            stride: 1,
            pad: 0,
            bias: true,
        }
    }

    pub fn stride(self, stride: usize) -> Self {
        Self { stride, ..self }
    }

    pub fn pad(self, pad: usize) -> Self {
        Self { pad, ..self }
    }

    pub fn no_bias(self) -> Self {
        Self {
            bias: false,
            ..self
        }
    }
}

/// 2-D convolution, PyTorch weight layout [out, in, k, k].
#[derive(Clone, Debug)]
pub struct Conv {
    pub(super) spec: ConvSpec,
    pub(super) w: usize,
    pub(super) b: Option<usize>,
}

impl Conv {
    /// Registers `{name}.weight` (and `{name}.bias` unless `no_bias`).
    pub fn new(l: &mut Layout, name: &str, spec: ConvSpec) -> Self {
        let ConvSpec { cin, cout, k, .. } = spec;
        let bound = Init::Uniform(1.0 / ((cin * k * k) as f32).sqrt());
        let w = l.push(format!("{name}.weight"), &[cout, cin, k, k], bound);
        let b = spec
            .bias
            .then(|| l.push(format!("{name}.bias"), &[cout], bound));
        Self { spec, w, b }
    }

    /// Output side length for input side `s` (None when the kernel does not fit).
    pub fn out_size(&self, s: usize) -> Option<usize> {
        let ConvSpec { k, stride, pad, .. } = self.spec;
        (s + 2 * pad).checked_sub(k).map(|d| d / stride + 1)
    }

    pub fn apply(&self, p: &impl Params, x: Tensor<4>) -> Tensor<4> {
        let ConvSpec {
            cin,
            cout,
            k,
            stride,
            pad,
            ..
        } = self.spec;
        let w = p.take(self.w, [cout, cin, k, k]);
        let b = self.b.map(|b| p.take(b, [cout]));
        let opts = ConvOptions::new([stride; 2], [pad; 2], [1, 1], 1);
        conv2d(x, w, b, opts)
    }
}

/// Fully connected layer, PyTorch weight layout [out, in].
#[derive(Clone, Debug)]
pub struct Linear {
    pub(super) w: usize,
    pub(super) b: usize,
    pub(super) fin: usize,
    pub(super) fout: usize,
}

impl Linear {
    pub fn new(l: &mut Layout, name: &str, fin: usize, fout: usize) -> Self {
        let bound = Init::Uniform(1.0 / (fin as f32).sqrt());
        let w = l.push(format!("{name}.weight"), &[fout, fin], bound);
        let b = l.push(format!("{name}.bias"), &[fout], bound);
        Self { w, b, fin, fout }
    }

    pub fn in_features(&self) -> usize {
        self.fin
    }

    pub fn apply(&self, p: &Tensor<1>, x: Tensor<2>) -> Tensor<2> {
        let w = take(p, self.w, [self.fout, self.fin]);
        let b = take(p, self.b, [1, self.fout]);
        x.matmul(w.transpose()) + b
    }
}

/// Normalisation layers, written as tensor arithmetic so that autodiff sees plain ops.
/// Variances are biased (divide by n), as PyTorch normalises.
#[derive(Clone, Debug)]
pub enum NormLayer {
    /// GroupNorm(groups, channels) with per-channel affine weights.
    Group {
        groups: usize,
        channels: usize,
        w: usize,
        b: usize,
    },
    /// LayerNorm over [C, H, W] with element-wise affine weights.
    Layer {
        shape: [usize; 3],
        w: usize,
        b: usize,
    },
    /// BatchNorm2d; `stats` is the offset of `running_mean` (then `running_var`) in the
    /// buffer vector.
    Batch {
        channels: usize,
        w: usize,
        b: usize,
        stats: usize,
    },
}

impl NormLayer {
    pub fn group(l: &mut Layout, name: &str, groups: usize, channels: usize) -> Self {
        let w = l.push(format!("{name}.weight"), &[channels], Init::Const(1.0));
        let b = l.push(format!("{name}.bias"), &[channels], Init::Const(0.0));
        NormLayer::Group {
            groups,
            channels,
            w,
            b,
        }
    }

    /// GroupNorm(C, C): the reference's "instance norm".
    pub fn instance(l: &mut Layout, name: &str, channels: usize) -> Self {
        Self::group(l, name, channels, channels)
    }

    pub fn layer(l: &mut Layout, name: &str, shape: [usize; 3]) -> Self {
        let w = l.push(format!("{name}.weight"), &shape, Init::Const(1.0));
        let b = l.push(format!("{name}.bias"), &shape, Init::Const(0.0));
        NormLayer::Layer { shape, w, b }
    }

    pub fn batch(l: &mut Layout, name: &str, channels: usize) -> Self {
        let w = l.push(format!("{name}.weight"), &[channels], Init::Const(1.0));
        let b = l.push(format!("{name}.bias"), &[channels], Init::Const(0.0));
        let stats = l.push_buffer(format!("{name}.running_mean"), channels, Init::Const(0.0));
        l.push_buffer(format!("{name}.running_var"), channels, Init::Const(1.0));
        NormLayer::Batch {
            channels,
            w,
            b,
            stats,
        }
    }

    /// Instance norm, or BatchNorm when `bn`: the choice VGG and ResNet make.
    pub fn instance_or_batch(l: &mut Layout, name: &str, channels: usize, bn: bool) -> Self {
        if bn {
            Self::batch(l, name, channels)
        } else {
            Self::instance(l, name, channels)
        }
    }

    pub fn apply(&self, p: &Tensor<1>, x: Tensor<4>, bn: &mut BnCtx) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        match *self {
            NormLayer::Group {
                groups,
                channels,
                w: wo,
                b: bo,
            } if groups == channels => {
                instance_norm(x, take(p, wo, [channels]), take(p, bo, [channels]))
            }
            NormLayer::Group {
                groups,
                channels,
                w: wo,
                b: bo,
            } => {
                let xg = x.reshape([n, groups, (c / groups) * h * w]);
                let normed = standardise(xg, 2).reshape([n, c, h, w]);
                normed * take(p, wo, [1, channels, 1, 1]) + take(p, bo, [1, channels, 1, 1])
            }
            NormLayer::Layer {
                shape,
                w: wo,
                b: bo,
            } => {
                let normed = standardise(x.reshape([n, c * h * w]), 1).reshape([n, c, h, w]);
                let [sc, sh, sw] = shape;
                normed * take(p, wo, [1, sc, sh, sw]) + take(p, bo, [1, sc, sh, sw])
            }
            NormLayer::Batch {
                channels,
                w: wo,
                b: bo,
                stats,
            } => {
                let (mean, var) = match bn.running_stats(stats, channels) {
                    Some(stats) => stats,
                    None => {
                        let mean = x.clone().mean_dims(&[0, 2, 3]);
                        let var = (x.clone() - mean.clone()).square().mean_dims(&[0, 2, 3]);
                        bn.record(stats, n * h * w, &mean, &var);
                        (mean, var)
                    }
                };
                let normed = (x - mean) / var.add_scalar(EPS).sqrt();
                normed * take(p, wo, [1, channels, 1, 1]) + take(p, bo, [1, channels, 1, 1])
            }
        }
    }
}

/// (x - mean) / sqrt(var + eps) along `dim`, biased variance.
fn standardise<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    let centred = x.clone() - x.mean_dim(dim);
    let var = centred.clone().square().mean_dim(dim);
    centred / var.add_scalar(EPS).sqrt()
}

/// What BatchNorm layers do during one forward pass.
pub struct BnCtx {
    /// Running statistics to normalise with (eval), or to update (train).
    running: Option<Tensor<1>>,
    eval: bool,
    /// Updated (offset, running mean, running var) per layer, in train mode.
    updates: Option<Vec<(usize, Tensor<1>, Tensor<1>)>>,
}

impl BnCtx {
    pub fn new(running: Option<Tensor<1>>, eval: bool, train: bool) -> Self {
        Self {
            running,
            eval,
            updates: train.then(Vec::new),
        }
    }

    /// In eval mode, (mean, var) shaped [1, C, 1, 1] from the running statistics.
    fn running_stats(&self, offset: usize, c: usize) -> Option<(Tensor<4>, Tensor<4>)> {
        if !self.eval {
            return None;
        }
        let r = self
            .running
            .as_ref()
            .expect("BnMode::Eval needs the NetState from Network::init_state");
        Some((
            take(r, offset, [1, c, 1, 1]),
            take(r, offset + c, [1, c, 1, 1]),
        ))
    }

    /// In train mode, the PyTorch update from batch statistics over `count` values per
    /// channel: the running variance takes the unbiased batch variance.
    fn record(&mut self, offset: usize, count: usize, mean: &Tensor<4>, var: &Tensor<4>) {
        let (Some(updates), Some(r)) = (self.updates.as_mut(), self.running.as_ref()) else {
            return;
        };
        let c = mean.dims()[1];
        // PyTorch refuses count 1; keep the biased value there rather than divide by zero.
        let unbias = if count > 1 {
            count as f64 / (count - 1) as f64
        } else {
            1.0
        };
        let mean = mean.clone().detach().reshape([c]);
        let var = var.clone().detach().reshape([c]).mul_scalar(unbias);
        let old_mean = take(r, offset, [c]);
        let old_var = take(r, offset + c, [c]);
        let keep = 1.0 - MOMENTUM;
        updates.push((
            offset,
            old_mean.mul_scalar(keep) + mean.mul_scalar(MOMENTUM),
            old_var.mul_scalar(keep) + var.mul_scalar(MOMENTUM),
        ));
    }

    /// The new running-statistics vector after a train-mode pass.
    pub fn finish(self) -> Option<Tensor<1>> {
        let mut updates = self.updates?;
        if updates.is_empty() {
            return self.running;
        }
        updates.sort_by_key(|u| u.0);
        let parts = updates.into_iter().flat_map(|(_, m, v)| [m, v]).collect();
        Some(Tensor::cat(parts, 0))
    }
}

pub fn activate<const D: usize>(x: Tensor<D>, act: Act) -> Tensor<D> {
    match act {
        Act::Relu => activation::relu(x),
        Act::Sigmoid => activation::sigmoid(x),
        Act::LeakyRelu => activation::leaky_relu(x, 0.01),
        Act::Swish => activation::silu(x),
    }
}

pub fn relu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    activation::relu(x)
}

/// 2x2 max pooling, stride 2, floor mode.
pub fn max_pool2(x: Tensor<4>) -> Tensor<4> {
    max_pool2d(x, MaxPoolOptions::new([2, 2]))
}

/// k x k average pooling, stride k, floor mode.
pub fn avg_pool(x: Tensor<4>, k: usize) -> Tensor<4> {
    if k == 2 {
        return avg_pool2(x);
    }
    avg_pool2d(x, AvgPoolOptions::new([k, k]))
}

/// 2x2 average pooling: on the CPU backend one fused op over every thread (see
/// [`crate::kernels::pointwise`]), elsewhere a reshape and two sums. Same numbers as
/// `avg_pool2d`, but its backward is a broadcast, where Burn's CPU `avg_pool2d` backward
/// walks the gradient one element at a time (it was a seventh of a ConvNet training step).
fn avg_pool2(x: Tensor<4>) -> Tensor<4> {
    crate::kernels::pointwise::avg_pool2(x, |x| {
        let [n, c, h, w] = x.dims();
        let (h2, w2) = (h / 2, w / 2);
        let x = if h % 2 == 1 || w % 2 == 1 {
            x.slice([0..n, 0..c, 0..2 * h2, 0..2 * w2])
        } else {
            x
        };
        x.reshape([n, c, h2, 2, w2, 2])
            .sum_dim(5)
            .sum_dim(3)
            .reshape([n, c, h2, w2])
            .mul_scalar(0.25)
    })
}

/// [N, C, H, W] -> [N, C*H*W], as PyTorch's `view(N, -1)`.
pub fn flatten(x: Tensor<4>) -> Tensor<2> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c * h * w])
}
