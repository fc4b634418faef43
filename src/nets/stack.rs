//! A plain `nn.Sequential` of conv -> [norm] -> ReLU -> [max pool] stages, which is how
//! the reference writes LeNet, AlexNet and VGG.

use burn::tensor::Tensor;

use super::layers::{BnCtx, Conv, ConvSpec, Layout, NormLayer, max_pool2, relu};

/// Normalisation after each conv of a stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackNorm {
    None,
    Instance,
    Batch,
}

/// One stage: conv with `cout` filters of size `k`, padding `pad`, then 2x2 max pooling
/// when `pool`.
#[derive(Clone, Copy, Debug)]
pub struct Stage {
    pub cout: usize,
    pub k: usize,
    pub pad: usize,
    pub pool: bool,
}

#[derive(Clone, Debug)]
pub struct ConvStack {
    stages: Vec<(Conv, Option<NormLayer>, bool)>,
    /// Output [C, H, W].
    pub out: [usize; 3],
}

impl ConvStack {
    /// Names the layers `{prefix}.{i}` with PyTorch's Sequential indices. None when the
    /// input is too small for a kernel or a pooling window.
    pub fn new(
        l: &mut Layout,
        prefix: &str,
        stages: &[Stage],
        norm: StackNorm,
        input: [usize; 3],
    ) -> Option<Self> {
        let [mut c, mut h, mut w] = input;
        let mut out = Vec::with_capacity(stages.len());
        let mut index = 0;
        for s in stages {
            let spec = ConvSpec::new(c, s.cout, s.k).pad(s.pad);
            let conv = Conv::new(l, &format!("{prefix}.{index}"), spec);
            (c, h, w) = (s.cout, conv.out_size(h)?, conv.out_size(w)?);
            index += 1;
            let name = format!("{prefix}.{index}");
            let norm = match norm {
                StackNorm::None => None,
                StackNorm::Instance => Some(NormLayer::instance(l, &name, c)),
                StackNorm::Batch => Some(NormLayer::batch(l, &name, c)),
            };
            index += usize::from(norm.is_some()) + 1; // norm, ReLU
            if s.pool {
                if h < 2 || w < 2 {
                    return None;
                }
                (h, w) = (h / 2, w / 2);
                index += 1;
            }
            out.push((conv, norm, s.pool));
        }
        Some(Self {
            stages: out,
            out: [c, h, w],
        })
    }

    pub fn apply(&self, p: &Tensor<1>, mut x: Tensor<4>, bn: &mut BnCtx) -> Tensor<4> {
        for (conv, norm, pool) in &self.stages {
            x = conv.apply(p, x);
            if let Some(norm) = norm {
                x = norm.apply(p, x, bn);
            }
            x = relu(x);
            if *pool {
                x = max_pool2(x);
            }
        }
        x
    }
}
