//! The three-layer MLP of DatasetCondensation: flattened image -> 128 -> 128 -> classes.

use burn::tensor::Tensor;

use super::layers::{Layout, Linear, flatten, relu};
use super::{NetError, unsupported};
use crate::data::ImageShape;

#[derive(Clone, Debug)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    pub head: Linear,
}

impl Mlp {
    pub fn new(l: &mut Layout, shape: ImageShape, classes: usize) -> Result<Self, NetError> {
        // The reference sizes the input layer from the channel count alone.
        let fin = if shape.channels == 1 {
            28 * 28
        } else {
            32 * 32 * 3
        };
        if shape.numel() != fin {
            return Err(unsupported("MLP", shape, "1x28x28 or 3x32x32"));
        }
        let fc1 = Linear::new(l, "fc_1", fin, 128);
        let fc2 = Linear::new(l, "fc_2", 128, 128);
        let head = Linear::new(l, "fc_3", 128, classes);
        Ok(Self { fc1, fc2, head })
    }

    /// The 128 features that feed the last linear layer (the reference has no `embed`).
    pub fn embed(&self, p: &Tensor<1>, x: Tensor<4>) -> Tensor<2> {
        let x = relu(self.fc1.apply(p, flatten(x)));
        relu(self.fc2.apply(p, x))
    }
}
