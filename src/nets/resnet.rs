//! ResNet18 for 32x32 images (DatasetCondensation, after kuangliu/pytorch-cifar): a 3x3
//! stem, four stages of two BasicBlocks (64, 128, 256, 512 planes), 4x4 average pooling
//! and Linear(512, classes). Norms are instance norm (GroupNorm(C, C)) or BatchNorm.
//!
//! The `_AP` variant replaces each stride-2 conv by a stride-1 conv followed by 2x2
//! average pooling (also in the shortcut, between its conv and norm), drops the final
//! pooling and flattens 512x4x4 (3x3 for single-channel 28x28) features.

use burn::tensor::Tensor;

use super::layers::{BnCtx, Conv, ConvSpec, Layout, Linear, NormLayer, avg_pool, flatten, relu};
use super::{NetError, unsupported};
use crate::data::ImageShape;

#[derive(Clone, Debug)]
struct Block {
    conv1: Conv,
    bn1: NormLayer,
    conv2: Conv,
    bn2: NormLayer,
    /// The `_AP` variant pools 2x2 inside the shortcut, between its conv and norm.
    shortcut: Option<(Conv, NormLayer, bool)>,
    /// `_AP` downsampling block: average-pool 2x2 after `bn1`.
    pool: bool,
}

impl Block {
    /// Registers the block's parameters; returns it and the output side lengths.
    fn new(
        l: &mut Layout,
        name: &str,
        (cin, planes, stride): (usize, usize, usize),
        (bn, ap): (bool, bool),
        (h, w): (usize, usize),
    ) -> Option<(Self, (usize, usize))> {
        let conv_stride = if ap { 1 } else { stride };
        let conv3x3 = |cin| ConvSpec::new(cin, planes, 3).pad(1).no_bias();
        let conv1 = Conv::new(
            l,
            &format!("{name}.conv1"),
            conv3x3(cin).stride(conv_stride),
        );
        let bn1 = NormLayer::instance_or_batch(l, &format!("{name}.bn1"), planes, bn);
        let conv2 = Conv::new(l, &format!("{name}.conv2"), conv3x3(planes));
        let bn2 = NormLayer::instance_or_batch(l, &format!("{name}.bn2"), planes, bn);
        let shortcut = (stride != 1 || cin != planes).then(|| {
            let spec = ConvSpec::new(cin, planes, 1).stride(conv_stride).no_bias();
            let conv = Conv::new(l, &format!("{name}.shortcut.0"), spec);
            // In the AP variant index 1 of the shortcut is the AvgPool2d.
            let norm_name = format!("{name}.shortcut.{}", if ap { 2 } else { 1 });
            (
                conv,
                NormLayer::instance_or_batch(l, &norm_name, planes, bn),
                ap,
            )
        });
        let pool = ap && stride != 1;
        let (mut oh, mut ow) = (conv1.out_size(h)?, conv1.out_size(w)?);
        if pool {
            if oh < 2 || ow < 2 {
                return None;
            }
            (oh, ow) = (oh / 2, ow / 2);
        }
        let block = Self {
            conv1,
            bn1,
            conv2,
            bn2,
            shortcut,
            pool,
        };
        Some((block, (oh, ow)))
    }

    fn apply(&self, p: &Tensor<1>, x: Tensor<4>, bn: &mut BnCtx) -> Tensor<4> {
        let mut out = relu(self.bn1.apply(p, self.conv1.apply(p, x.clone()), bn));
        if self.pool {
            out = avg_pool(out, 2);
        }
        let out = self.bn2.apply(p, self.conv2.apply(p, out), bn);
        let skip = match &self.shortcut {
            None => x,
            Some((conv, norm, pool)) => {
                let mut s = conv.apply(p, x);
                if *pool {
                    s = avg_pool(s, 2);
                }
                norm.apply(p, s, bn)
            }
        };
        relu(out + skip)
    }
}

#[derive(Clone, Debug)]
pub struct ResNet {
    conv1: Conv,
    bn1: NormLayer,
    blocks: Vec<Block>,
    ap: bool,
    pub head: Linear,
}

impl ResNet {
    pub fn new(
        l: &mut Layout,
        (bn, ap): (bool, bool),
        shape: ImageShape,
        classes: usize,
    ) -> Result<Self, NetError> {
        let name = format!(
            "ResNet18{}{}",
            if bn { "BN" } else { "" },
            if ap { "_AP" } else { "" }
        );
        let supported = if ap {
            "1x28x28 or 3x32x32 (its classifier expects 512x3x3 or 512x4x4 features)"
        } else {
            "any channel count with sides of 25 to 56 pixels (the final 4x4 average pool must leave 1x1)"
        };
        let err = || unsupported(&name, shape, supported);
        let stem = ConvSpec::new(shape.channels, 64, 3).pad(1).no_bias();
        let conv1 = Conv::new(l, "conv1", stem);
        let bn1 = NormLayer::instance_or_batch(l, "bn1", 64, bn);
        let mut hw = (shape.height, shape.width);
        let mut blocks = Vec::with_capacity(8);
        let mut cin = 64;
        for (stage, planes) in [64, 128, 256, 512].into_iter().enumerate() {
            for b in 0..2 {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                let block_name = format!("layer{}.{b}", stage + 1);
                let (block, out) = Block::new(l, &block_name, (cin, planes, stride), (bn, ap), hw)
                    .ok_or_else(err)?;
                blocks.push(block);
                hw = out;
                cin = planes;
            }
        }
        let feat = if ap {
            let expect = if shape.channels == 1 { 3 } else { 4 };
            (hw == (expect, expect)).then_some(512 * expect * expect)
        } else {
            (hw.0 / 4 == 1 && hw.1 / 4 == 1).then_some(512)
        };
        let head = Linear::new(l, "classifier", feat.ok_or_else(err)?, classes);
        Ok(Self {
            conv1,
            bn1,
            blocks,
            ap,
            head,
        })
    }

    pub fn embed(&self, p: &Tensor<1>, x: Tensor<4>, bn: &mut BnCtx) -> Tensor<2> {
        let mut x = relu(self.bn1.apply(p, self.conv1.apply(p, x), bn));
        for block in &self.blocks {
            x = block.apply(p, x, bn);
        }
        if !self.ap {
            x = avg_pool(x, 4);
        }
        flatten(x)
    }
}
