//! AlexNet and AlexNetBN as DatasetCondensation defines them for 28/32-pixel images:
//! five convs (128, 192, 256, 192, 192 filters), three max pools, one linear layer.

use burn::tensor::Tensor;

use super::layers::{BnCtx, Layout, Linear, flatten};
use super::stack::{ConvStack, StackNorm, Stage};
use super::{NetError, unsupported};
use crate::data::ImageShape;

#[derive(Clone, Debug)]
pub struct AlexNet {
    features: ConvStack,
    pub head: Linear,
}

impl AlexNet {
    pub fn new(
        l: &mut Layout,
        bn: bool,
        shape: ImageShape,
        classes: usize,
    ) -> Result<Self, NetError> {
        // Single-channel input pads the first conv by 4, so 28x28 behaves like 32x32.
        let first_pad = if shape.channels == 1 { 4 } else { 2 };
        let stage = |cout, k, pad, pool| Stage { cout, k, pad, pool };
        let stages = [
            stage(128, 5, first_pad, true),
            stage(192, 5, 2, true),
            stage(256, 3, 1, false),
            stage(192, 3, 1, false),
            stage(192, 3, 1, true),
        ];
        let norm = if bn {
            StackNorm::Batch
        } else {
            StackNorm::None
        };
        let input = [shape.channels, shape.height, shape.width];
        let features = ConvStack::new(l, "features", &stages, norm, input)
            .filter(|f| f.out == [192, 4, 4])
            .ok_or_else(|| {
                unsupported(
                    "AlexNet",
                    shape,
                    "1x28x28 or 3x32x32 (its classifier expects 192x4x4 features)",
                )
            })?;
        let head = Linear::new(l, "fc", 192 * 4 * 4, classes);
        Ok(Self { features, head })
    }

    pub fn embed(&self, p: &Tensor<1>, x: Tensor<4>, bn: &mut BnCtx) -> Tensor<2> {
        flatten(self.features.apply(p, x, bn))
    }
}
