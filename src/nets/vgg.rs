//! VGG11 with instance norm (GroupNorm(C, C)) or BatchNorm after every conv, as in
//! DatasetCondensation: five max pools take 32x32 to 1x1, then Linear(512, classes).

use burn::tensor::Tensor;

use super::layers::{BnCtx, Layout, Linear, flatten};
use super::stack::{ConvStack, StackNorm, Stage};
use super::{NetError, unsupported};
use crate::data::ImageShape;

/// `cfg_vgg['VGG11']`: filters per conv, 0 for a max pool.
const VGG11: [usize; 13] = [64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0];

#[derive(Clone, Debug)]
pub struct Vgg {
    features: ConvStack,
    pub head: Linear,
}

impl Vgg {
    pub fn new(
        l: &mut Layout,
        bn: bool,
        shape: ImageShape,
        classes: usize,
    ) -> Result<Self, NetError> {
        let mut stages: Vec<Stage> = Vec::new();
        for (i, &cout) in VGG11.iter().enumerate() {
            if cout == 0 {
                stages.last_mut().expect("a pool follows a conv").pool = true;
            } else {
                // Single-channel input pads the first conv by 3, so 28x28 becomes 32x32.
                let pad = if shape.channels == 1 && i == 0 { 3 } else { 1 };
                stages.push(Stage {
                    cout,
                    k: 3,
                    pad,
                    pool: false,
                });
            }
        }
        let norm = if bn {
            StackNorm::Batch
        } else {
            StackNorm::Instance
        };
        let input = [shape.channels, shape.height, shape.width];
        let features = ConvStack::new(l, "features", &stages, norm, input)
            .filter(|f| f.out == [512, 1, 1])
            .ok_or_else(|| {
                unsupported(
                    "VGG11",
                    shape,
                    "1x28x28 or 3x32x32 (its classifier expects 512x1x1 features)",
                )
            })?;
        // The reference ends the features with AvgPool2d(1, 1), an identity.
        let head = Linear::new(l, "classifier", 512, classes);
        Ok(Self { features, head })
    }

    pub fn embed(&self, p: &Tensor<1>, x: Tensor<4>, bn: &mut BnCtx) -> Tensor<2> {
        flatten(self.features.apply(p, x, bn))
    }
}
