//! ConvNet (DatasetCondensation `networks.py`): `depth` blocks of conv3x3 -> norm -> act
//! -> pool, then one linear layer over the flattened features.

use burn::tensor::Tensor;

use super::arch::{ConvNetConfig, Norm, Pool};
use super::layers::{
    BnCtx, Conv, ConvSpec, Layout, Linear, NormLayer, activate, avg_pool, flatten, max_pool2,
};
use super::{NetError, unsupported};
use crate::data::ImageShape;

#[derive(Clone, Debug)]
pub struct ConvNet {
    pub(super) cfg: ConvNetConfig,
    pub(super) blocks: Vec<(Conv, Option<NormLayer>)>,
    pub head: Linear,
}

impl ConvNet {
    /// The first conv pads by 3 for single-channel input (28x28 becomes 32x32, as the
    /// reference does for MNIST-like data) and by 1 otherwise; feature sizes follow the
    /// input, which matches the reference wherever the reference runs.
    pub fn new(
        l: &mut Layout,
        cfg: &ConvNetConfig,
        shape: ImageShape,
        classes: usize,
    ) -> Result<Self, NetError> {
        if cfg.norm == Norm::Group && !cfg.width.is_multiple_of(4) {
            return Err(NetError::Invalid(format!(
                "ConvNet group norm uses 4 groups; width {} is not a multiple of 4",
                cfg.width
            )));
        }
        let (mut c, mut h, mut w) = (shape.channels, shape.height, shape.width);
        let mut blocks = Vec::with_capacity(cfg.depth);
        let mut index = 0;
        for d in 0..cfg.depth {
            let pad = if shape.channels == 1 && d == 0 { 3 } else { 1 };
            let spec = ConvSpec::new(c, cfg.width, 3).pad(pad);
            let conv = Conv::new(l, &format!("features.{index}"), spec);
            index += 1;
            (c, h, w) = (cfg.width, h + 2 * pad - 2, w + 2 * pad - 2);
            let name = format!("features.{index}");
            let norm = match cfg.norm {
                Norm::None => None,
                Norm::Batch => Some(NormLayer::batch(l, &name, c)),
                Norm::Instance => Some(NormLayer::instance(l, &name, c)),
                Norm::Layer => Some(NormLayer::layer(l, &name, [c, h, w])),
                Norm::Group => Some(NormLayer::group(l, &name, 4, c)),
            };
            index += usize::from(norm.is_some()) + 1; // norm, activation
            if cfg.pool != Pool::None {
                if h < 2 || w < 2 {
                    return Err(unsupported(
                        &format!("ConvNet of depth {}", cfg.depth),
                        shape,
                        &format!("sides of at least {} pixels", 1u64 << cfg.depth.min(63)),
                    ));
                }
                (h, w) = (h / 2, w / 2);
                index += 1;
            }
            blocks.push((conv, norm));
        }
        let head = Linear::new(l, "classifier", c * h * w, classes);
        Ok(Self {
            cfg: *cfg,
            blocks,
            head,
        })
    }

    pub fn embed(&self, p: &Tensor<1>, mut x: Tensor<4>, bn: &mut BnCtx) -> Tensor<2> {
        for (conv, norm) in &self.blocks {
            x = conv.apply(p, x);
            if let Some(norm) = norm {
                x = norm.apply(p, x, bn);
            }
            x = activate(x, self.cfg.act);
            x = match self.cfg.pool {
                Pool::None => x,
                Pool::Max => max_pool2(x),
                Pool::Avg => avg_pool(x, 2),
            };
        }
        flatten(x)
    }
}
