//! What the objectives' gradient tests share: random tensors, a small factorization of
//! 8x8 two-channel bases (two per class of three, through two hallucinators, or plain),
//! and a step along a direction for finite differences.

use burn::tensor::{Device, Tensor, TensorData};

use crate::data::ImageShape;
use crate::haba::{Factorization, HallucinatorShape, Hallucinators};
use crate::rng::Rng;

/// The images of every objective's test: 8x8, two channels.
pub const SHAPE: ImageShape = ImageShape {
    channels: 2,
    height: 8,
    width: 8,
};

pub fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal()).collect()
}

pub fn tensor<const D: usize>(v: Vec<f32>, dims: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v, dims), device)
}

/// Six bases (two per class) through two hallucinators, or plain images.
pub fn factorization(haba: bool) -> Factorization {
    let device = Device::flex();
    let mut rng = Rng::new(9);
    let shape = HallucinatorShape {
        count: 2,
        basis_channels: SHAPE.channels,
        channels: SHAPE.channels,
        kernel: 3,
        height: SHAPE.height,
        width: SHAPE.width,
    };
    Factorization {
        bases: tensor(randn(&mut rng, 6 * 128), [6, 2, 8, 8], &device),
        labels: vec![0, 0, 1, 1, 2, 2],
        hallucinators: haba.then(|| Hallucinators {
            shape,
            params: shape.init(&mut rng, &device, false),
        }),
    }
}

/// `fact` moved by `eps` along `dir` in the bases or in the hallucinator weights.
pub fn moved(fact: &Factorization, dir: &[f32], eps: f32, in_bases: bool) -> Factorization {
    let device = fact.bases.device();
    let shift = |t: Vec<f32>| -> Vec<f32> { t.iter().zip(dir).map(|(a, d)| a + eps * d).collect() };
    let mut out = fact.clone();
    if in_bases {
        let v = shift(fact.bases.clone().into_data().try_to_vec().unwrap());
        out.bases = tensor(v, fact.bases.dims(), &device);
    } else if let Some(h) = &mut out.hallucinators {
        let v = shift(h.params.clone().into_data().try_to_vec().unwrap());
        let n = v.len();
        h.params = tensor(v, [n], &device);
    }
    out
}
