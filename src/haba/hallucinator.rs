//! Hallucinators (the HaBa paper): `x -> dec(scale ⊙ enc(x) + shift)`, M of them shared by
//! all classes. All M live in one flat parameter vector so one optimiser step updates them,
//! and a batch in which every basis uses its own hallucinator runs as three ops: a grouped
//! convolution, the affine modulation kernel, and a grouped transposed convolution.

use burn::tensor::module::{conv_transpose2d, conv2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{Device, Tensor, TensorData};

use super::affine::{AffineError, affine_modulation};
use crate::data::index_tensor;
use crate::rng::Rng;

/// The shapes of a set of hallucinators, from which every offset follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HallucinatorShape {
    /// Number of hallucinators (M).
    pub count: usize,
    /// Channels of a basis (Cb): the image's, or 1 for single-channel bases.
    pub basis_channels: usize,
    /// Channels of the images made (C).
    pub channels: usize,
    /// Encoder/decoder kernel size (k).
    pub kernel: usize,
    pub height: usize,
    pub width: usize,
}

/// Where each of the six tensors of all hallucinators sits in the flat vector; each is
/// stacked over the M hallucinators (leading dimension M).
#[derive(Clone, Copy, Debug)]
struct Offsets {
    enc_w: usize,
    enc_b: usize,
    scale: usize,
    shift: usize,
    dec_w: usize,
    dec_b: usize,
    end: usize,
}

impl HallucinatorShape {
    /// Height and width of the modulated feature maps (`H - k + 1`).
    pub fn map_size(&self) -> (usize, usize) {
        (self.height + 1 - self.kernel, self.width + 1 - self.kernel)
    }

    fn sizes(&self) -> [usize; 6] {
        let (c, cb, k) = (self.channels, self.basis_channels, self.kernel);
        let (mh, mw) = self.map_size();
        [
            c * cb * k * k,
            c,
            c * mh * mw,
            c * mh * mw,
            c * c * k * k,
            c,
        ]
    }

    fn offsets(&self) -> Offsets {
        let m = self.count;
        let mut at = 0;
        let mut next = |n: usize| {
            let o = at;
            at += m * n;
            o
        };
        let [a, b, c, d, e, f] = self.sizes();
        let o = Offsets {
            enc_w: next(a),
            enc_b: next(b),
            scale: next(c),
            shift: next(d),
            dec_w: next(e),
            dec_b: next(f),
            end: 0,
        };
        Offsets { end: at, ..o }
    }

    /// Floats stored by one hallucinator (5,568 for 3x32x32 images, k = 3).
    pub fn params_per_hallucinator(&self) -> usize {
        self.sizes().iter().sum()
    }

    /// Floats stored by all of them.
    pub fn num_params(&self) -> usize {
        self.offsets().end
    }

    /// Names and shapes of the six stacked tensors, in flat-vector order (what the artifact
    /// stores, so that other tools can rebuild the images).
    pub fn tensors(&self) -> Vec<(&'static str, Vec<usize>, usize)> {
        let (m, c, cb, k) = (self.count, self.channels, self.basis_channels, self.kernel);
        let (mh, mw) = self.map_size();
        let o = self.offsets();
        vec![
            ("enc.weight", vec![m, c, cb, k, k], o.enc_w),
            ("enc.bias", vec![m, c], o.enc_b),
            ("scale", vec![m, c, mh, mw], o.scale),
            ("shift", vec![m, c, mh, mw], o.shift),
            ("dec.weight", vec![m, c, c, k, k], o.dec_w),
            ("dec.bias", vec![m, c], o.dec_b),
        ]
    }

    /// Fresh hallucinators: scale 1 and shift 0 (identity modulation); encoder and decoder
    /// with PyTorch's default uniform initialisation (bound 1/sqrt(fan_in); for the
    /// transposed convolution PyTorch takes fan_in from the weight's second dimension).
    /// `near_identity` (not the reference's choice) shrinks those draws tenfold and adds 1
    /// at the centre tap of each channel, so every hallucinator starts close to copying its
    /// basis instead of at a random gain.
    pub fn init(&self, rng: &mut Rng, device: &Device, near_identity: bool) -> Tensor<1> {
        let (c, cb, k) = (self.channels, self.basis_channels, self.kernel);
        let enc_bound = 1.0 / ((cb * k * k) as f32).sqrt();
        let dec_bound = 1.0 / ((c * k * k) as f32).sqrt();
        let [enc_w, enc_b, scale, shift, dec_w, dec_b] = self.sizes().map(|n| n * self.count);
        let mut v = Vec::with_capacity(self.num_params());
        let mut uniform = |v: &mut Vec<f32>, n: usize, b: f32| {
            v.extend((0..n).map(|_| rng.range(-b, b)));
        };
        uniform(&mut v, enc_w, enc_bound);
        uniform(&mut v, enc_b, enc_bound);
        v.extend(std::iter::repeat_n(1.0, scale));
        v.extend(std::iter::repeat_n(0.0, shift));
        uniform(&mut v, dec_w, dec_bound);
        uniform(&mut v, dec_b, dec_bound);
        if near_identity {
            self.towards_identity(&mut v);
        }
        let n = v.len();
        Tensor::from_data(TensorData::new(v, [n]), device)
    }

    fn towards_identity(&self, v: &mut [f32]) {
        let (c, cb, k) = (self.channels, self.basis_channels, self.kernel);
        let centre = (k / 2) * k + k / 2;
        for (name, shape, offset) in self.tensors() {
            let len: usize = shape.iter().product();
            let slice = &mut v[offset..offset + len];
            if name == "scale" || name == "shift" {
                continue;
            }
            slice.iter_mut().for_each(|x| *x *= 0.1);
            for m in 0..self.count {
                for o in 0..c {
                    let tap = match name {
                        "enc.weight" => ((m * c + o) * cb + o % cb) * k * k + centre,
                        "dec.weight" => ((m * c + o) * c + o) * k * k + centre,
                        _ => continue,
                    };
                    slice[tap] += 1.0;
                }
            }
        }
    }

    /// Images `H_{h[n]}(bases[n])` for a batch of bases `[N, Cb, H, W]`, where sample n
    /// uses hallucinator `h[n]`. Differentiable in the bases and in `params`.
    pub fn apply(
        &self,
        params: &Tensor<1>,
        bases: Tensor<4>,
        h: &[usize],
    ) -> Result<Tensor<4>, AffineError> {
        let [n, _, height, width] = bases.dims();
        let (m, c, cb, k) = (self.count, self.channels, self.basis_channels, self.kernel);
        let (mh, mw) = self.map_size();
        let o = self.offsets();
        let take = |offset: usize, len: usize| params.clone().narrow(0, offset, len);
        if let Some((sample, &index)) = h.iter().enumerate().find(|&(_, &j)| j >= m) {
            return Err(AffineError::IndexOutOfRange {
                sample,
                index,
                count: m,
            });
        }
        if h.len() != n {
            return Err(AffineError::BatchSize {
                samples: n,
                assigned: h.len(),
            });
        }
        let idx = index_tensor(h, &params.device());
        // Per-sample encoder weights, then one convolution with a group per sample.
        let enc_w = take(o.enc_w, m * c * cb * k * k)
            .reshape([m, c * cb * k * k])
            .select(0, idx.clone())
            .reshape([n * c, cb, k, k]);
        let enc_b = take(o.enc_b, m * c)
            .reshape([m, c])
            .select(0, idx.clone())
            .reshape([n * c]);
        let x = bases.reshape([1, n * cb, height, width]);
        let z = conv2d(
            x,
            enc_w,
            Some(enc_b),
            ConvOptions::new([1, 1], [0, 0], [1, 1], n),
        )
        .reshape([n, c, mh, mw]);
        let scale = take(o.scale, m * c * mh * mw).reshape([m, c, mh, mw]);
        let shift = take(o.shift, m * c * mh * mw).reshape([m, c, mh, mw]);
        let z = affine_modulation(z, scale, shift, h)?;
        // Transposed-conv weights are [in, out / groups, k, k]: one [C, C, k, k] block each.
        let dec_w = take(o.dec_w, m * c * c * k * k)
            .reshape([m, c * c * k * k])
            .select(0, idx.clone())
            .reshape([n * c, c, k, k]);
        let dec_b = take(o.dec_b, m * c)
            .reshape([m, c])
            .select(0, idx)
            .reshape([n * c]);
        let y = conv_transpose2d(
            z.reshape([1, n * c, mh, mw]),
            dec_w,
            Some(dec_b),
            ConvTransposeOptions::new([1, 1], [0, 0], [0, 0], [1, 1], n),
        );
        Ok(y.reshape([n, c, height, width]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cifar_like(count: usize) -> HallucinatorShape {
        HallucinatorShape {
            count,
            basis_channels: 3,
            channels: 3,
            kernel: 3,
            height: 32,
            width: 32,
        }
    }

    #[test]
    fn storage_matches_the_paper() {
        // The paper's count: 84 + 2 * 2700 + 84 floats per hallucinator on CIFAR-10.
        assert_eq!(cifar_like(1).params_per_hallucinator(), 5568);
        assert_eq!(cifar_like(5).num_params(), 27840);
        let total: usize = cifar_like(5)
            .tensors()
            .iter()
            .map(|(_, s, _)| s.iter().product::<usize>())
            .sum();
        assert_eq!(total, 27840);
    }

    /// One hallucinator on one basis, computed in float64 by direct loops: the encoder
    /// convolution, the modulation, and the transposed convolution as a scatter.
    fn by_hand(p: &[f32], s: &HallucinatorShape, j: usize, x: &[f32]) -> Vec<f64> {
        let (c, cb, k, h, w) = (s.channels, s.basis_channels, s.kernel, s.height, s.width);
        let (mh, mw) = s.map_size();
        let get = |name: &str| {
            let (_, shape, off) = s.tensors().into_iter().find(|t| t.0 == name).unwrap();
            let per: usize = shape[1..].iter().product();
            p[off + j * per..off + (j + 1) * per]
                .iter()
                .map(|&v| v as f64)
                .collect::<Vec<f64>>()
        };
        let (ew, eb, sc, sh, dw, db) = (
            get("enc.weight"),
            get("enc.bias"),
            get("scale"),
            get("shift"),
            get("dec.weight"),
            get("dec.bias"),
        );
        let mut z = vec![0f64; c * mh * mw];
        for o in 0..c {
            for i in 0..mh {
                for jj in 0..mw {
                    let mut acc = eb[o];
                    for ci in 0..cb {
                        for a in 0..k {
                            for b in 0..k {
                                acc += ew[((o * cb + ci) * k + a) * k + b]
                                    * x[(ci * h + i + a) * w + jj + b] as f64;
                            }
                        }
                    }
                    let q = (o * mh + i) * mw + jj;
                    z[q] = sc[q] * acc + sh[q];
                }
            }
        }
        let mut y: Vec<f64> = (0..c * h * w).map(|q| db[q / (h * w)]).collect();
        for ci in 0..c {
            for i in 0..mh {
                for jj in 0..mw {
                    for o in 0..c {
                        for a in 0..k {
                            for b in 0..k {
                                y[(o * h + i + a) * w + jj + b] +=
                                    z[(ci * mh + i) * mw + jj] * dw[((ci * c + o) * k + a) * k + b];
                            }
                        }
                    }
                }
            }
        }
        y
    }

    #[test]
    fn batch_with_mixed_hallucinators_matches_float64_loops() {
        let device = Device::flex();
        let s = HallucinatorShape {
            count: 3,
            basis_channels: 1,
            channels: 2,
            kernel: 3,
            height: 6,
            width: 5,
        };
        let mut rng = Rng::new(4);
        // Random scale/shift too, so the modulation is really exercised.
        let p: Vec<f32> = (0..s.num_params()).map(|_| rng.range(-1.0, 1.0)).collect();
        let params = Tensor::<1>::from_data(TensorData::new(p.clone(), [p.len()]), &device);
        let h = [2usize, 0, 2, 1];
        let x: Vec<f32> = (0..4 * 30).map(|_| rng.range(-1.0, 1.0)).collect();
        let bases = Tensor::<4>::from_data(TensorData::new(x.clone(), [4, 1, 6, 5]), &device);
        let y = s.apply(&params, bases, &h).unwrap();
        assert_eq!(y.dims(), [4, 2, 6, 5]);
        let y = y.into_data().try_to_vec::<f32>().unwrap();
        for (n, &j) in h.iter().enumerate() {
            let want = by_hand(&p, &s, j, &x[n * 30..(n + 1) * 30]);
            for (q, w) in want.iter().enumerate() {
                let got = y[n * 60 + q] as f64;
                assert!((got - w).abs() < 1e-4, "sample {n} at {q}: {got} vs {w}");
            }
        }
        let bad = s.apply(&params, Tensor::zeros([1, 1, 6, 5], &device), &[3]);
        assert!(matches!(bad, Err(AffineError::IndexOutOfRange { .. })));
    }

    #[test]
    fn fresh_hallucinators_have_identity_modulation_and_bounded_weights() {
        let s = cifar_like(2);
        let p = s
            .init(&mut Rng::new(1), &Device::flex(), false)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for (name, shape, off) in s.tensors() {
            let vals = &p[off..off + shape.iter().product::<usize>()];
            match name {
                "scale" => assert!(vals.iter().all(|&v| v == 1.0)),
                "shift" => assert!(vals.iter().all(|&v| v == 0.0)),
                _ => {
                    let bound = 1.0 / 27f32.sqrt();
                    assert!(vals.iter().all(|v| v.abs() <= bound), "{name}");
                    assert!(vals.iter().any(|v| v.abs() > bound / 2.0), "{name}");
                }
            }
        }
    }

    #[test]
    fn near_identity_hallucinators_copy_the_interior_of_a_basis() {
        let device = Device::flex();
        let s = HallucinatorShape {
            count: 2,
            basis_channels: 1,
            channels: 1,
            kernel: 3,
            height: 8,
            width: 8,
        };
        let mut p = s
            .init(&mut Rng::new(2), &device, true)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        // Without the small random part the map is exactly the identity inside the border.
        for (name, shape, off) in s.tensors() {
            if name != "scale" && name != "shift" {
                let len: usize = shape.iter().product();
                p[off..off + len].iter_mut().for_each(|x| *x = x.round());
            }
        }
        let params = Tensor::<1>::from_data(TensorData::new(p.clone(), [p.len()]), &device);
        let x: Vec<f32> = (0..64).map(|i| i as f32 / 10.0).collect();
        let bases = Tensor::<4>::from_data(TensorData::new(x.clone(), [1, 1, 8, 8]), &device);
        let y = s.apply(&params, bases, &[1]).unwrap();
        let y = y.into_data().try_to_vec::<f32>().unwrap();
        for i in 2..6 {
            for j in 2..6 {
                assert!((y[i * 8 + j] - x[i * 8 + j]).abs() < 1e-5, "({i},{j})");
            }
        }
    }
}
