//! LeNet as DatasetCondensation defines it: two 5x5 convs with ReLU and max pooling,
//! then three linear layers (400 -> 120 -> 84 -> classes).

use burn::tensor::Tensor;

use super::layers::{BnCtx, Layout, Linear, flatten, relu};
use super::stack::{ConvStack, StackNorm, Stage};
use super::{NetError, unsupported};
use crate::data::ImageShape;

#[derive(Clone, Debug)]
pub struct LeNet {
    features: ConvStack,
    fc1: Linear,
    fc2: Linear,
    pub head: Linear,
}

impl LeNet {
    pub fn new(l: &mut Layout, shape: ImageShape, classes: usize) -> Result<Self, NetError> {
        // Single-channel input pads the first conv by 2 (28x28 stays 28x28).
        let first_pad = if shape.channels == 1 { 2 } else { 0 };
        let stages = [
            Stage {
                cout: 6,
                k: 5,
                pad: first_pad,
                pool: true,
            },
            Stage {
                cout: 16,
                k: 5,
                pad: 0,
                pool: true,
            },
        ];
        let input = [shape.channels, shape.height, shape.width];
        let features = ConvStack::new(l, "features", &stages, StackNorm::None, input)
            .filter(|f| f.out == [16, 5, 5])
            .ok_or_else(|| {
                unsupported(
                    "LeNet",
                    shape,
                    "1x28x28 or 3x32x32 (its first linear layer expects 16x5x5 features)",
                )
            })?;
        let fc1 = Linear::new(l, "fc_1", 16 * 5 * 5, 120);
        let fc2 = Linear::new(l, "fc_2", 120, 84);
        let head = Linear::new(l, "fc_3", 84, classes);
        Ok(Self {
            features,
            fc1,
            fc2,
            head,
        })
    }

    /// The 84 features that feed the last linear layer (the reference has no `embed`).
    pub fn embed(&self, p: &Tensor<1>, x: Tensor<4>, bn: &mut BnCtx) -> Tensor<2> {
        let x = flatten(self.features.apply(p, x, bn));
        let x = relu(self.fc1.apply(p, x));
        relu(self.fc2.apply(p, x))
    }
}
