//! DSA, differentiable Siamese augmentation (Zhao & Bilen, ICML 2021), following the
//! reference `DiffAugment` (DatasetCondensation and HaBa `utils.py`) in its `'S'` mode: each
//! call picks one family for the whole batch and applies it with random parameters.
//!
//! Every family is an affine map of the pixel values whose coefficients do not depend on the
//! images, so it is built from ordinary tensor ops and gradients reach the images on any
//! device, autodiff included. All randomness is drawn on the host from [`Rng`], so a seed fully
//! determines the augmentation on every backend.
//!
//! Two ways to spend one seed:
//! - [`Dsa::apply`]: every sample gets its own draw, and sample i's draw depends only on the
//!   seed and i, not on the batch size. This is the reference's unseeded mode (expert training,
//!   MTT student steps, evaluation), made reproducible.
//! - [`Dsa::apply_batchwise`] and [`Dsa::siamese`]: every sample gets draw 0. This is the
//!   reference's seeded ("Siamese") mode used by DM and DC, where `theta[:] = theta[0]`: the real
//!   batch and the synthetic batch all see one and the same transform.

use std::fmt;
use std::str::FromStr;

use burn::tensor::grid::affine_grid_2d;
use burn::tensor::ops::{GridSampleOptions, GridSamplePaddingMode, InterpolateMode, PadMode};
use burn::tensor::{Bool, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::rng::Rng;
use crate::{Error, Result};

/// One augmentation family; `Color` is brightness, saturation and contrast applied together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Color,
    Crop,
    Cutout,
    Flip,
    Scale,
    Rotate,
}

impl Family {
    pub const ALL: [Family; 6] = [
        Family::Color,
        Family::Crop,
        Family::Cutout,
        Family::Flip,
        Family::Scale,
        Family::Rotate,
    ];

    /// The name used in strategy strings.
    pub fn name(self) -> &'static str {
        match self {
            Family::Color => "color",
            Family::Crop => "crop",
            Family::Cutout => "cutout",
            Family::Flip => "flip",
            Family::Scale => "scale",
            Family::Rotate => "rotate",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Family {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Family::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Family::ALL.iter().map(|f| f.name()).collect();
                Error::Config(format!(
                    "unknown DSA family {s:?}; known: {}",
                    known.join(", ")
                ))
            })
    }
}

/// The families to choose from, written like the reference: `color_crop_cutout_flip_scale_rotate`.
/// `none` (or an empty string) means no augmentation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Strategy(pub Vec<Family>);

impl Strategy {
    /// The strategy of the official HaBa/DSA scripts.
    pub fn full() -> Self {
        Strategy(Family::ALL.to_vec())
    }

    pub fn is_none(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for Strategy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("none") {
            return Ok(Strategy(Vec::new()));
        }
        s.split('_')
            .map(str::parse)
            .collect::<Result<_>>()
            .map(Strategy)
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<_> = self.0.iter().map(|f| f.name()).collect();
        f.write_str(&names.join("_"))
    }
}

impl TryFrom<String> for Strategy {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Strategy> for String {
    fn from(s: Strategy) -> String {
        s.to_string()
    }
}

/// Strengths of the families; defaults are the reference's `ParamDiffAug`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DsaParams {
    /// Probability of a horizontal flip.
    pub prob_flip: f32,
    /// Scale factors are drawn from [1/ratio, ratio] for x and y separately.
    pub ratio_scale: f32,
    /// Rotation angles are drawn from [-ratio, ratio] degrees.
    pub ratio_rotate: f32,
    /// Crop shifts are integers up to `round(size * ratio)` pixels either way.
    pub ratio_crop_pad: f32,
    /// The cutout square's side is `round(size * ratio)`.
    pub ratio_cutout: f32,
    /// Brightness offsets are drawn from [-0.5, 0.5) * brightness.
    pub brightness: f32,
    /// Saturation factors are drawn from [0, saturation).
    pub saturation: f32,
    /// Contrast factors are drawn from [contrast, contrast + 1).
    pub contrast: f32,
}

impl Default for DsaParams {
    fn default() -> Self {
        Self {
            prob_flip: 0.5,
            ratio_scale: 1.2,
            ratio_rotate: 15.0,
            ratio_crop_pad: 0.125,
            ratio_cutout: 0.5,
            brightness: 1.0,
            saturation: 2.0,
            contrast: 0.5,
        }
    }
}

/// A DSA configuration: which families, how strong.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dsa {
    pub strategy: Strategy,
    pub params: DsaParams,
}

impl Dsa {
    pub fn new(strategy: Strategy, params: DsaParams) -> Self {
        Self { strategy, params }
    }

    /// The official setting: all six families, reference strengths.
    pub fn full() -> Self {
        Self::new(Strategy::full(), DsaParams::default())
    }

    /// No augmentation: `apply` returns its input unchanged.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn is_none(&self) -> bool {
        self.strategy.is_none()
    }

    /// The family a call with this seed uses (`None` when augmentation is off).
    pub fn family(&self, seed: u64) -> Option<Family> {
        let families = &self.strategy.0;
        (!families.is_empty()).then(|| families[Rng::new(seed).below(families.len())])
    }

    /// Augments `x` (`[batch, channels, height, width]`) with one draw per sample.
    /// Sample i's draw depends only on `seed` and i, so two batches augmented with the same seed
    /// agree on their common prefix whatever their sizes.
    pub fn apply(&self, x: Tensor<4>, seed: u64) -> Tensor<4> {
        self.run(x, seed, false)
    }

    /// Augments `x` with one draw for the whole batch (draw 0 of [`Dsa::apply`]), as the
    /// reference does whenever it is given a seed.
    pub fn apply_batchwise(&self, x: Tensor<4>, seed: u64) -> Tensor<4> {
        self.run(x, seed, true)
    }

    /// The reference's Siamese augmentation (DM, DC): the real and the synthetic batch, of any
    /// sizes, all get the same transform.
    pub fn siamese(&self, a: Tensor<4>, b: Tensor<4>, seed: u64) -> (Tensor<4>, Tensor<4>) {
        (self.apply_batchwise(a, seed), self.apply_batchwise(b, seed))
    }

    fn run(&self, x: Tensor<4>, seed: u64, batchwise: bool) -> Tensor<4> {
        match self.plan(seed, x.dims(), batchwise) {
            Some(draws) if !draws.is_empty() => augment(x, &draws),
            _ => x,
        }
    }

    /// Draws the family (first number of the stream) and then each sample's parameters in
    /// order; every family takes a fixed count of numbers per sample, which gives the prefix
    /// property.
    fn plan(&self, seed: u64, dims: [usize; 4], batchwise: bool) -> Option<Vec<Draw>> {
        let families = &self.strategy.0;
        if families.is_empty() {
            return None;
        }
        let mut rng = Rng::new(seed);
        let family = families[rng.below(families.len())];
        let [n, _, h, w] = dims;
        Some(if batchwise {
            vec![self.draw(family, &mut rng, h, w); n]
        } else {
            (0..n).map(|_| self.draw(family, &mut rng, h, w)).collect()
        })
    }

    fn draw(&self, family: Family, rng: &mut Rng, h: usize, w: usize) -> Draw {
        let p = &self.params;
        // Python's `int(size * ratio + 0.5)`.
        let round = |size: usize, ratio: f32| (size as f64 * ratio as f64 + 0.5) as usize;
        match family {
            Family::Color => Draw::Color {
                brightness: (rng.uniform() - 0.5) * p.brightness,
                saturation: rng.uniform() * p.saturation,
                contrast: rng.uniform() + p.contrast,
            },
            Family::Crop => {
                let (sy, sx) = (round(h, p.ratio_crop_pad), round(w, p.ratio_crop_pad));
                let dy = rng.below(2 * sy + 1) as i64 - sy as i64;
                let dx = rng.below(2 * sx + 1) as i64 - sx as i64;
                Draw::Crop { dy, dx }
            }
            Family::Cutout => {
                // The reference draws the centre from 0..=size (even sides) or 0..size (odd
                // sides), so the square may hang over the border and is then clipped.
                let (ch, cw) = (round(h, p.ratio_cutout), round(w, p.ratio_cutout));
                let cy = rng.below(h + 1 - ch % 2) as i64;
                let cx = rng.below(w + 1 - cw % 2) as i64;
                Draw::Cutout {
                    top: cy - (ch / 2) as i64,
                    left: cx - (cw / 2) as i64,
                    height: ch,
                    width: cw,
                }
            }
            Family::Flip => Draw::Flip(rng.uniform() < p.prob_flip),
            Family::Scale => {
                let r = p.ratio_scale;
                let sx = rng.uniform() * (r - 1.0 / r) + 1.0 / r;
                let sy = rng.uniform() * (r - 1.0 / r) + 1.0 / r;
                Draw::Affine([sx, 0.0, 0.0, 0.0, sy, 0.0])
            }
            Family::Rotate => {
                let angle = (rng.uniform() - 0.5) * 2.0 * p.ratio_rotate.to_radians();
                let (sin, cos) = angle.sin_cos();
                Draw::Affine([cos, -sin, 0.0, sin, cos, 0.0])
            }
        }
    }
}

/// One sample's parameters for the family chosen by the call.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Draw {
    /// `x + brightness`, then saturation around the per-pixel channel mean, then contrast
    /// around the image mean.
    Color {
        brightness: f32,
        saturation: f32,
        contrast: f32,
    },
    /// `out[i][j] = x[i + dy][j + dx]`, zero where that falls outside.
    Crop {
        dy: i64,
        dx: i64,
    },
    /// Zero the rectangle at (top, left) of the given size, clipped to the image.
    Cutout {
        top: i64,
        left: i64,
        height: usize,
        width: usize,
    },
    Flip(bool),
    /// `theta` (row-major 2x3) maps output to input positions in torch's normalised
    /// coordinates (x first), as `F.affine_grid` takes it.
    Affine([f32; 6]),
}

/// Applies one family, described by one draw per sample.
fn augment(x: Tensor<4>, draws: &[Draw]) -> Tensor<4> {
    match draws[0] {
        Draw::Color { .. } => color(x, draws),
        Draw::Crop { .. } => crop(x, draws),
        Draw::Cutout { .. } => cutout(x, draws),
        Draw::Flip(_) => flip(x, draws),
        Draw::Affine(_) => affine(x, draws),
    }
}

/// A host vector as a small tensor on `x`'s device (never tracked by autodiff).
fn upload(x: &Tensor<4>, values: Vec<f32>, shape: [usize; 4]) -> Tensor<4> {
    Tensor::from_data(TensorData::new(values, shape), &x.device())
}

fn upload_int(x: &Tensor<4>, values: Vec<i64>, shape: [usize; 4]) -> Tensor<4, Int> {
    Tensor::from_data(TensorData::new(values, shape), &x.device())
}

fn color(x: Tensor<4>, draws: &[Draw]) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let mut factors = [(); 3].map(|_| Vec::with_capacity(n));
    for d in draws {
        let Draw::Color {
            brightness,
            saturation,
            contrast,
        } = *d
        else {
            unreachable!("one family per call")
        };
        factors[0].push(brightness);
        factors[1].push(saturation);
        factors[2].push(contrast);
    }
    let [b, s, k] = factors.map(|v| upload(&x, v, [n, 1, 1, 1]));
    let x = x.add(b);
    let mean = x.clone().mean_dim(1);
    let x = x.sub(mean.clone()).mul(s).add(mean);
    let mean = x
        .clone()
        .reshape([n, c * h * w])
        .mean_dim(1)
        .reshape([n, 1, 1, 1]);
    x.sub(mean.clone()).mul(k).add(mean)
}

/// Integer translation as two gathers from the image padded with one zero pixel: indices that
/// fall outside are clamped onto the zero border, exactly like the reference.
fn crop(x: Tensor<4>, draws: &[Draw]) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let (mut rows, mut cols) = (Vec::with_capacity(n * h), Vec::with_capacity(n * w));
    for d in draws {
        let Draw::Crop { dy, dx } = *d else {
            unreachable!("one family per call")
        };
        rows.extend((0..h as i64).map(|i| (i + dy + 1).clamp(0, h as i64 + 1)));
        cols.extend((0..w as i64).map(|j| (j + dx + 1).clamp(0, w as i64 + 1)));
    }
    let rows = upload_int(&x, rows, [n, 1, h, 1]).expand([n, c, h, w + 2]);
    let cols = upload_int(&x, cols, [n, 1, 1, w]).expand([n, c, h, w]);
    x.pad((1, 1, 1, 1), PadMode::Constant(0.0))
        .gather(2, rows)
        .gather(3, cols)
}

/// Multiplies by a 0/1 mask, built as the outer product of a row and a column indicator.
fn cutout(x: Tensor<4>, draws: &[Draw]) -> Tensor<4> {
    let [n, _, h, w] = x.dims();
    let (mut rows, mut cols) = (Vec::with_capacity(n * h), Vec::with_capacity(n * w));
    let inside = |i: usize, start: i64, len: usize| {
        let i = i as i64;
        (start <= i && i < start + len as i64) as u8 as f32
    };
    for d in draws {
        let Draw::Cutout {
            top,
            left,
            height,
            width,
        } = *d
        else {
            unreachable!("one family per call")
        };
        rows.extend((0..h).map(|i| inside(i, top, height)));
        cols.extend((0..w).map(|j| inside(j, left, width)));
    }
    let hole = upload(&x, rows, [n, 1, h, 1]).mul(upload(&x, cols, [n, 1, 1, w]));
    x.mul(hole.neg().add_scalar(1.0))
}

fn flip(x: Tensor<4>, draws: &[Draw]) -> Tensor<4> {
    let dims = x.dims();
    let flips: Vec<bool> = draws
        .iter()
        .map(|d| matches!(d, Draw::Flip(true)))
        .collect();
    let mask =
        Tensor::<4, Bool>::from_data(TensorData::new(flips, [dims[0], 1, 1, 1]), &x.device())
            .expand(dims);
    x.clone().mask_where(mask, x.flip([3]))
}

/// Scale and rotation: bilinear sampling with zero padding at `theta`'s grid.
///
/// HaBa's `utils.py` (from MTT) calls `F.affine_grid` and `F.grid_sample` with
/// `align_corners=True`, which is what Burn's `affine_grid_2d` produces (pixel 0 and W-1 at
/// -1 and 1), so we sample with `align_corners = true` too. DatasetCondensation's `utils.py`
/// uses torch's default `align_corners=False` for both; for linear maps (no translation) the
/// two agree on square images, and differ only in how rotation couples x and y on non-square
/// ones (W/H versus (W-1)/(H-1)). Mixing the conventions would be wrong: it rescales the image
/// by W/(W-1).
fn affine(x: Tensor<4>, draws: &[Draw]) -> Tensor<4> {
    let dims @ [n, _, h, w] = x.dims();
    assert!(h > 1 && w > 1, "scale/rotate need images of at least 2x2");
    let theta: Vec<f32> = draws
        .iter()
        .flat_map(|d| match d {
            Draw::Affine(t) => *t,
            _ => unreachable!("one family per call"),
        })
        .collect();
    let theta = Tensor::<3>::from_data(TensorData::new(theta, [n, 2, 3]), &x.device());
    let grid = affine_grid_2d(theta, dims);
    let options = GridSampleOptions::new(InterpolateMode::Bilinear)
        .with_padding_mode(GridSamplePaddingMode::Zeros)
        .with_align_corners(true);
    x.grid_sample_2d(grid, options)
}

