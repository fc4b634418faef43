//! The student of trajectory matching: a ConvNet whose training step is itself
//! differentiable.
//!
//! MTT differentiates a loss on the parameters after several SGD steps with respect to the
//! images those steps trained on, so the gradient of each step must sit on the autodiff
//! graph. Burn's autodiff is first order (a gradient comes back detached), so
//! [`loss_and_grad`] writes the ConvNet's backward pass by hand, out of ordinary tensor ops
//! (convolutions, transposed convolutions, broadcasts, masks). One first-order backward
//! through forward and hand-written backward together then gives the second-order terms
//! (Hessian-vector products) MTT needs.
//!
//! The forward is the one [`Network::forward`] computes, layer for layer; a test checks the
//! hand-written gradient against Burn's autodiff gradient for every variant.

use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};

use super::arch::{Act, Norm, Pool};
use super::convnet::ConvNet;
use super::cross_entropy;
use super::layers::{Conv, EPS, NormLayer};
use super::{Body, NetError, Network, ParamPieces, Params};
use crate::kernels::conv::{conv2d_input_grad, conv2d_weight_grad};
use crate::kernels::{pointwise, standardise};

/// Whether `net` can be a student (of MTT, or DC's matched network): the ConvNet family
/// without BatchNorm, whose training step [`loss_and_grad`] writes out.
pub fn check_student(net: &Network) -> Result<(), NetError> {
    match &net.body {
        Body::ConvNet(c) if c.cfg.norm != Norm::Batch => Ok(()),
        Body::ConvNet(_) => Err(NetError::Invalid(format!(
            "{}: a network whose training step is differentiated (MTT's student, DC's and \
             DSA's network) cannot use BatchNorm here: its running statistics are not part \
             of the step; use instance (ConvNet), group (ConvNetGN), layer (ConvNetLN) or no \
             norm (ConvNetNN)",
            net.arch
        ))),
        _ => Err(NetError::Invalid(format!(
            "{}: only the ConvNet family (ConvNet, ConvNetW*, ConvNetD*, ConvNetIN/GN/LN/NN, \
             ConvNetAS/AR/AL, ConvNetNP/MP/AP) can be a network whose training step is \
             differentiated (MTT's student, DC's and DSA's network)",
            net.arch
        ))),
    }
}

/// The values the conv layers of `net` output in one step on `n` images: what the size of
/// a student step's autodiff graph grows with (0 for a network that is not a student).
pub fn conv_outputs(net: &Network, n: usize) -> usize {
    let Body::ConvNet(body) = &net.body else {
        return 0;
    };
    let shape = net.shape();
    let (mut h, mut w) = (shape.height, shape.width);
    let mut total = 0;
    for (conv, _) in &body.blocks {
        h = conv.out_size(h).unwrap_or(0);
        w = conv.out_size(w).unwrap_or(0);
        total += n * conv.spec.cout * h * w;
        if body.cfg.pool != Pool::None {
            (h, w) = (h / 2, w / 2);
        }
    }
    total
}

/// The mean cross-entropy of `net` on `images` and `labels`, shape `[1]`, and its gradient
/// with respect to the flat `params`, shape `[P]`, both built from differentiable ops: on
/// an autodiff device the gradient carries a graph to `params` and `images`.
pub fn loss_and_grad(
    net: &Network,
    params: &Tensor<1>,
    images: Tensor<4>,
    labels: &[u16],
) -> Result<(Tensor<1>, Tensor<1>), NetError> {
    net.check(params, &images);
    let (loss, grads) = loss_and_grads(net, params, images, labels, true)?;
    let loss = loss.expect("asked for");
    Ok((loss, Tensor::cat(grads, 0)))
}

/// The gradient of [`loss_and_grad`] on parameters in pieces (MTT's student, see
/// [`ParamPieces`]), in the same pieces; the loss itself is not computed.
pub fn piece_grads(
    net: &Network,
    params: &ParamPieces,
    images: Tensor<4>,
    labels: &[u16],
) -> Result<ParamPieces, NetError> {
    net.check_images(&images);
    let (_, grads) = loss_and_grads(net, params, images, labels, false)?;
    Ok(params.with_pieces(grads))
}

/// The loss (where `want_loss`) and the gradient of every entry of `net.params()`, in
/// their order.
fn loss_and_grads(
    net: &Network,
    params: &impl Params,
    images: Tensor<4>,
    labels: &[u16],
    want_loss: bool,
) -> Result<(Option<Tensor<1>>, Vec<Tensor<1>>), NetError> {
    check_student(net)?;
    let Body::ConvNet(body) = &net.body else {
        unreachable!("checked above")
    };
    let [n, ..] = images.dims();
    if n != labels.len() || n == 0 {
        return Err(NetError::Invalid(format!(
            "{} images and {} labels: a student batch needs one label per image",
            n,
            labels.len()
        )));
    }
    let mut grads: Vec<(usize, Tensor<1>)> = Vec::new();

    // Forward, keeping what the backward reads.
    let mut tapes = Vec::with_capacity(body.blocks.len());
    let mut x = images;
    for (conv, norm) in &body.blocks {
        let tape = Tape::forward(body, conv, norm.as_ref(), params, x);
        x = tape.output.clone();
        tapes.push(tape);
    }
    let [_, c, h, w] = x.dims();
    let flat = x.reshape([n, c * h * w]);
    let head = &body.head;
    let hw = params.take(head.w, [head.fout, head.fin]);
    let logits = flat.clone().matmul(hw.clone().transpose()) + params.take(head.b, [1, head.fout]);
    let loss = want_loss.then(|| cross_entropy(logits.clone(), labels));

    // Backward: d(mean CE)/d logits = (softmax - one-hot) / N.
    let device = logits.device();
    let mut onehot = vec![0.0f32; n * head.fout];
    for (i, &l) in labels.iter().enumerate() {
        onehot[i * head.fout + l as usize] = 1.0;
    }
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [n, head.fout]), &device);
    let dlogits = (softmax(logits, 1) - onehot).div_scalar(n as f32);
    grads.push((
        head.w,
        dlogits.clone().transpose().matmul(flat).flatten(0, 1),
    ));
    grads.push((head.b, dlogits.clone().sum_dim(0).flatten(0, 1)));
    let mut dx = Some(dlogits.matmul(hw).reshape([n, c, h, w]));
    for (i, tape) in tapes.into_iter().enumerate().rev() {
        let (conv, norm) = &body.blocks[i];
        let dout = dx
            .take()
            .expect("every block above the first passes one down");
        dx = tape.backward(body, conv, norm.as_ref(), params, dout, i > 0, &mut grads);
    }

    grads.sort_by_key(|g| g.0);
    debug_assert_eq!(grads.len(), net.params().len());
    Ok((loss, grads.into_iter().map(|g| g.1).collect()))
}

/// What one block's forward leaves for its backward.
struct Tape {
    input: Tensor<4>,
    /// Standardised conv output and what its backward reads, when normed.
    normed: Option<(Tensor<4>, Standardised)>,
    /// Input of the activation (after the norm).
    pre_act: Tensor<4>,
    /// Output of the activation (input of the pooling).
    act: Tensor<4>,
    output: Tensor<4>,
}

/// What the norm's backward reads besides the standardised values.
enum Standardised {
    /// The norm's input, for the fused CPU ops ([`crate::kernels::standardise`]).
    Fused(Tensor<4>),
    /// The inverse std `[N, groups, 1]` of each group, for the tensor ops.
    Ops(Tensor<3>),
}

impl Tape {
    fn forward(
        body: &ConvNet,
        conv: &Conv,
        norm: Option<&NormLayer>,
        p: &impl Params,
        input: Tensor<4>,
    ) -> Self {
        let z = conv.apply(p, input.clone());
        let (pre_act, normed) = match norm {
            None => (z, None),
            Some(layer) => {
                let (groups, [sc, sh, sw], wo, bo) = affine(layer, &z);
                let (xhat, stats) = if standardise::fusable(&z, groups) {
                    (
                        standardise::standardise(z.clone(), groups),
                        Standardised::Fused(z),
                    )
                } else {
                    let (xhat, rstd) = standardise_groups(z, groups);
                    (xhat, Standardised::Ops(rstd))
                };
                let y = if sh == 1 && sw == 1 {
                    pointwise::channel_affine(xhat.clone(), p.take(wo, [sc]), p.take(bo, [sc]))
                } else {
                    xhat.clone() * p.take(wo, [1, sc, sh, sw]) + p.take(bo, [1, sc, sh, sw])
                };
                (y, Some((xhat, stats)))
            }
        };
        let act = match body.cfg.act {
            Act::Relu => pointwise::relu(pre_act.clone()),
            other => super::layers::activate(pre_act.clone(), other),
        };
        let output = match body.cfg.pool {
            Pool::None => act.clone(),
            Pool::Max => super::layers::max_pool2(act.clone()),
            Pool::Avg => super::layers::avg_pool(act.clone(), 2),
        };
        Tape {
            input,
            normed,
            pre_act,
            act,
            output,
        }
    }

    /// Pushes this block's parameter gradients and returns the gradient of its input
    /// (`None` for the first block, `want_dx` false: nothing below needs it).
    #[allow(clippy::too_many_arguments)]
    fn backward(
        self,
        body: &ConvNet,
        conv: &Conv,
        norm: Option<&NormLayer>,
        p: &impl Params,
        dout: Tensor<4>,
        want_dx: bool,
        grads: &mut Vec<(usize, Tensor<1>)>,
    ) -> Option<Tensor<4>> {
        // Pooling.
        let [n, c, h, w] = self.act.dims();
        let dact = match body.cfg.pool {
            Pool::None => dout,
            Pool::Avg => pointwise::avg_pool2_adjoint(dout, [h, w], |dout| {
                unpool(dout.div_scalar(4.0), [h, w])
            }),
            Pool::Max => {
                let up = unpool(self.output.clone(), [h, w]);
                let hit = self.act.clone().equal(up).float();
                hit * unpool(dout, [h, w])
            }
        };
        // Activation.
        let u = self.pre_act;
        let dpre = match body.cfg.act {
            // Where the output is positive: one pass, where a mask fill branched on every
            // element (an eighth of an MTT iteration).
            Act::Relu => pointwise::mask_positive(dact, self.act),
            Act::LeakyRelu => {
                let neg = u.lower_elem(0.0);
                dact.clone().mask_where(neg, dact.mul_scalar(0.01))
            }
            Act::Sigmoid => {
                let s = self.act;
                dact * s.clone() * (s.neg().add_scalar(1.0))
            }
            Act::Swish => {
                let s = sigmoid(u.clone());
                dact * (s.clone() + u * s.clone() * s.neg().add_scalar(1.0))
            }
        };
        // Norm: y = xhat * weight + bias, xhat standardised per group.
        let dz = match (norm, self.normed) {
            (Some(layer), Some((xhat, stats))) => {
                let (groups, [sc, sh, sw], wo, bo) = affine(layer, &xhat);
                let dxhat = if sh == 1 && sw == 1 {
                    // Per-channel weights (instance and group norm).
                    let (dw, db) = pointwise::channel_dot_sum(dpre.clone(), xhat.clone());
                    grads.push((wo, dw));
                    grads.push((bo, db));
                    pointwise::channel_scale(dpre, p.take(wo, [sc]))
                } else {
                    grads.push((wo, (dpre.clone() * xhat.clone()).sum_dim(0).flatten(0, 3)));
                    grads.push((bo, dpre.clone().sum_dim(0).flatten(0, 3)));
                    dpre * p.take(wo, [1, sc, sh, sw])
                };
                match stats {
                    Standardised::Fused(z) => standardise::standardise_backward(dxhat, z, groups),
                    Standardised::Ops(rstd) => {
                        // The norm's output is the activation's input: the dims of `act`.
                        let g = |t: Tensor<4>| t.reshape([n, groups, c / groups * h * w]);
                        let (dxh, xh) = (g(dxhat), g(xhat.clone()));
                        let m1 = dxh.clone().mean_dim(2);
                        let m2 = (dxh.clone() * xh.clone()).mean_dim(2);
                        ((dxh - m1 - xh * m2) * rstd).reshape(xhat.dims())
                    }
                }
            }
            _ => dpre,
        };
        // Convolution.
        let spec = conv.spec;
        let wt = p.take(conv.w, [spec.cout, spec.cin, spec.k, spec.k]);
        let opts = ConvOptions::new([spec.stride; 2], [spec.pad; 2], [1, 1], 1);
        let dw = conv2d_weight_grad(self.input.clone(), dz.clone(), wt.dims(), opts.clone());
        grads.push((conv.w, dw.flatten(0, 3)));
        if let Some(b) = conv.b {
            grads.push((b, pointwise::channel_sum(dz.clone())));
        }
        if !want_dx {
            return None;
        }
        let [_, _, hin, win] = self.input.dims();
        Some(conv2d_input_grad(dz, wt, [hin, win], opts))
    }
}

/// Group count, affine weight shape and offsets of a (non-batch) norm layer on `x`.
fn affine(layer: &NormLayer, x: &Tensor<4>) -> (usize, [usize; 3], usize, usize) {
    let [_, c, h, w] = x.dims();
    match *layer {
        NormLayer::Group {
            groups,
            w: wo,
            b: bo,
            ..
        } => (groups, [c, 1, 1], wo, bo),
        NormLayer::Layer { w: wo, b: bo, .. } => (1, [c, h, w], wo, bo),
        NormLayer::Batch { .. } => unreachable!("students refuse BatchNorm"),
    }
}

/// `(x - mean) / sqrt(var + eps)` over each of `groups` channel groups of every sample,
/// and the inverse std `[N, groups, 1]`.
fn standardise_groups(x: Tensor<4>, groups: usize) -> (Tensor<4>, Tensor<3>) {
    let dims = x.dims();
    let [n, c, h, w] = dims;
    let x = x.reshape([n, groups, c / groups * h * w]);
    let centred = x.clone() - x.mean_dim(2);
    let rstd = centred
        .clone()
        .square()
        .mean_dim(2)
        .add_scalar(EPS)
        .sqrt()
        .recip();
    ((centred * rstd.clone()).reshape(dims), rstd)
}

/// Each value of `x` `[N, C, h, w]` spread over its 2x2 window of an `[N, C, H, W]` map
/// (zeros in an odd last row or column, which floor-mode pooling dropped).
fn unpool(x: Tensor<4>, [h, w]: [usize; 2]) -> Tensor<4> {
    let [n, c, h2, w2] = x.dims();
    let up = x
        .reshape([n, c, h2, 1, w2, 1])
        .expand([n, c, h2, 2, w2, 2])
        .reshape([n, c, 2 * h2, 2 * w2]);
    let up = if h > 2 * h2 {
        let zeros = Tensor::zeros([n, c, h - 2 * h2, 2 * w2], &up.device());
        Tensor::cat(vec![up, zeros], 2)
    } else {
        up
    };
    if w > 2 * w2 {
        let zeros = Tensor::zeros([n, c, h, w - 2 * w2], &up.device());
        Tensor::cat(vec![up, zeros], 3)
    } else {
        up
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::data::ImageShape;
    use crate::nets::{Arch, BnMode, ConvNetConfig};
    use crate::rng::Rng;

    fn random(rng: &mut Rng, dims: [usize; 4], device: &Device) -> Tensor<4> {
        let v: Vec<f32> = (0..dims.iter().product()).map(|_| rng.normal()).collect();
        Tensor::from_data(TensorData::new(v, dims), device)
    }

    fn values(t: Tensor<1>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// The hand-written gradient against Burn's autodiff of `Network::forward`.
    fn check(cfg: ConvNetConfig, shape: ImageShape, seed: u64) {
        let device = Device::flex().autodiff();
        let net = Network::new(&Arch::ConvNet(cfg), shape, 3).unwrap();
        let mut rng = Rng::new(seed);
        // Norm weights away from 1 and biases away from 0, so their gradients are tested.
        let mut p = values(net.init(&mut rng, &device));
        for v in &mut p {
            *v += 0.1 * rng.normal();
        }
        let len = p.len();
        let params = Tensor::<1>::from_data(TensorData::new(p, [len]), &device).require_grad();
        let x = random(
            &mut rng,
            [5, shape.channels, shape.height, shape.width],
            &device,
        );
        let labels = [0u16, 2, 1, 1, 0];

        let logits = net.forward(&params, x.clone(), BnMode::Batch);
        let want_loss = cross_entropy(logits, &labels);
        let want = values(params.grad(&want_loss.clone().backward()).unwrap());
        let (loss, grad) = loss_and_grad(&net, &params, x, &labels).unwrap();
        let (a, b) = (values(loss)[0], values(want_loss)[0]);
        assert!((a - b).abs() < 1e-5, "{cfg:?}: loss {a} vs {b}");
        let got = values(grad);
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (e, entry) in net.params().iter().enumerate() {
            let r = entry.offset..entry.offset + entry.numel();
            for i in r {
                assert!(
                    (got[i] - want[i]).abs() <= 1e-4 * scale.max(1e-3) + 1e-4 * want[i].abs(),
                    "{cfg:?}: {} (entry {e}) [{i}]: {} vs {}",
                    entry.name,
                    got[i],
                    want[i]
                );
            }
        }
    }

    #[test]
    fn gradient_matches_autodiff_for_every_variant() {
        let shape = ImageShape {
            channels: 2,
            height: 9,
            width: 8,
        };
        let mut seed = 0;
        for norm in [Norm::Instance, Norm::Group, Norm::Layer, Norm::None] {
            for act in [Act::Relu, Act::Sigmoid, Act::LeakyRelu, Act::Swish] {
                for pool in [Pool::Avg, Pool::Max, Pool::None] {
                    seed += 1;
                    let cfg = ConvNetConfig {
                        width: 4,
                        depth: 2,
                        act,
                        norm,
                        pool,
                    };
                    check(cfg, shape, seed);
                }
            }
        }
    }

    #[test]
    fn gradient_matches_autodiff_on_grey_images_and_other_depths() {
        let grey = ImageShape {
            channels: 1,
            height: 6,
            width: 6,
        };
        for depth in [1, 3] {
            let cfg = ConvNetConfig {
                width: 8,
                depth,
                ..ConvNetConfig::default()
            };
            check(cfg, grey, 100 + depth as u64);
        }
    }

    #[test]
    fn batch_norm_and_other_families_are_refused_by_name() {
        let shape = ImageShape {
            channels: 3,
            height: 32,
            width: 32,
        };
        for name in ["ConvNetBN", "ResNet18", "MLP"] {
            let net = Network::new(&name.parse().unwrap(), shape, 10).unwrap();
            let err = check_student(&net).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn the_gradient_differentiates_again() {
        // d/dx <grad(params; x), v> must reach the images: the second-order path MTT uses.
        let device = Device::flex().autodiff();
        let shape = ImageShape {
            channels: 2,
            height: 8,
            width: 8,
        };
        let cfg = ConvNetConfig {
            width: 4,
            depth: 2,
            ..ConvNetConfig::default()
        };
        let net = Network::new(&Arch::ConvNet(cfg), shape, 3).unwrap();
        let mut rng = Rng::new(7);
        let params = net.init(&mut rng, &device);
        let x = random(&mut rng, [4, 2, 8, 8], &device).require_grad();
        let (_, g) = loss_and_grad(&net, &params, x.clone(), &[0, 1, 2, 0]).unwrap();
        let grads = g.square().sum().backward();
        let dx = x.grad(&grads).unwrap();
        let norm: f32 = dx.square().sum().into_scalar();
        assert!(norm.is_finite() && norm > 0.0, "{norm}");
    }
}
