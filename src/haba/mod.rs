//! HaBa's factorization: bases and hallucinators (the HaBa paper), and the plain
//! synthetic set of the base methods as its special case without hallucinators.

pub mod affine;
pub mod hallucinator;

use burn::tensor::{Device, Tensor, TensorData};

use crate::data::subset::random_per_class;
use crate::data::{DataError, ImageShape, LabelledImages};
use crate::rng::Rng;
pub use hallucinator::HallucinatorShape;

/// What distillation learns and an artifact stores. Training images are
/// `H_j(bases[i])` labelled `labels[i]` for every hallucinator j, or the bases themselves
/// when there are no hallucinators (plain DM/MTT images).
#[derive(Clone, Debug)]
pub struct Factorization {
    /// `[classes * per_class, Cb, H, W]`, class-major (all bases of class 0 first).
    pub bases: Tensor<4>,
    pub labels: Vec<u16>,
    pub hallucinators: Option<Hallucinators>,
}

/// M hallucinators: their shapes and all their parameters in one flat vector.
#[derive(Clone, Debug)]
pub struct Hallucinators {
    pub shape: HallucinatorShape,
    pub params: Tensor<1>,
}

/// Floats stored, honestly counted: bases plus every hallucinator parameter.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Storage {
    pub base_floats: usize,
    pub hallucinator_floats: usize,
    pub total_floats: usize,
    /// `total_floats / (C * H * W)`: how many real images the same floats would hold.
    pub image_equivalents: f64,
    pub image_equivalents_per_class: f64,
}

impl Storage {
    pub fn new(
        base_floats: usize,
        hallucinator_floats: usize,
        image: ImageShape,
        classes: usize,
    ) -> Self {
        let total = base_floats + hallucinator_floats;
        let eq = total as f64 / image.numel() as f64;
        Self {
            base_floats,
            hallucinator_floats,
            total_floats: total,
            image_equivalents: eq,
            image_equivalents_per_class: eq / classes.max(1) as f64,
        }
    }
}

/// How a synthetic set starts (the paper: real images of each class, or noise).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseInit {
    #[default]
    Real,
    Noise,
}

impl std::str::FromStr for BaseInit {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, crate::Error> {
        match s.to_ascii_lowercase().as_str() {
            "real" => Ok(BaseInit::Real),
            "noise" => Ok(BaseInit::Noise),
            _ => Err(crate::Error::Config(format!(
                "unknown initialisation {s:?}: use real or noise"
            ))),
        }
    }
}

impl Factorization {
    /// Number of bases (or plain images).
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn storage(&self, image: ImageShape, classes: usize) -> Storage {
        Storage::new(
            self.bases.shape().num_elements(),
            self.hallucinators
                .as_ref()
                .map_or(0, |h| h.shape.num_params()),
            image,
            classes,
        )
    }

    /// The training image for basis `i` through hallucinator `h[i]` for a batch of bases
    /// (the bases themselves when there are no hallucinators).
    pub fn images(&self, bases: Tensor<4>, h: &[usize]) -> Result<Tensor<4>, crate::Error> {
        match &self.hallucinators {
            None => Ok(bases),
            Some(hal) => Ok(hal.shape.apply(&hal.params, bases, h)?),
        }
    }

    /// Each of `bases` through every hallucinator, hallucinator-major (`M * N` images; the
    /// bases themselves without hallucinators).
    pub fn every_view(&self, bases: Tensor<4>) -> Result<Tensor<4>, crate::Error> {
        let m = self.hallucinator_count().max(1);
        let n = bases.dims()[0];
        let h: Vec<usize> = (0..m).flat_map(|j| std::iter::repeat_n(j, n)).collect();
        self.images(Tensor::cat(vec![bases; m], 0), &h)
    }

    /// How many hallucinators the set has (0 for a plain set of images).
    pub fn hallucinator_count(&self) -> usize {
        self.hallucinators.as_ref().map_or(0, |h| h.shape.count)
    }

    /// The same values without any autodiff graph, on the backend underneath: what a
    /// network trains on between the steps that learn the set.
    pub fn detached(&self) -> Self {
        Self {
            bases: self.bases.clone().inner(),
            labels: self.labels.clone(),
            hallucinators: self.hallucinators.as_ref().map(|h| Hallucinators {
                shape: h.shape,
                params: h.params.clone().inner(),
            }),
        }
    }

    /// Every training image (see [`Self::every_view`]), with their labels.
    pub fn all_images(&self) -> Result<(Tensor<4>, Vec<u16>), crate::Error> {
        let m = self.hallucinator_count().max(1);
        let labels = (0..m).flat_map(|_| self.labels.iter().copied()).collect();
        Ok((self.every_view(self.bases.clone())?, labels))
    }
}

/// Initial bases: `per_class` random real images of each class of the (normalised) train
/// set, or standard-normal noise.
/// Single-channel bases (`channels == 1` for a colour dataset) average the real image's
/// channels, as the reference does.
pub fn init_bases(
    train: &LabelledImages,
    classes: usize,
    per_class: usize,
    channels: usize,
    init: BaseInit,
    rng: &mut Rng,
) -> Result<(Tensor<4>, Vec<u16>), DataError> {
    let [_, c, h, w] = train.images.dims();
    let device: Device = train.images.device();
    let labels: Vec<u16> = (0..classes)
        .flat_map(|k| std::iter::repeat_n(k as u16, per_class))
        .collect();
    let n = classes * per_class;
    let bases = match init {
        BaseInit::Noise => {
            let v: Vec<f32> = (0..n * channels * h * w).map(|_| rng.normal()).collect();
            Tensor::from_data(TensorData::new(v, [n, channels, h, w]), &device)
        }
        BaseInit::Real => {
            let idx = random_per_class(&train.labels, classes, per_class, rng)?;
            let (real, _) = train.batch(&idx);
            if channels == c {
                real
            } else if channels == 1 {
                real.mean_dim(1)
            } else {
                return Err(DataError::Invalid(format!(
                    "bases with {channels} channels cannot start from {c}-channel images"
                )));
            }
        }
    };
    Ok((bases, labels))
}
