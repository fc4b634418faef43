//! The browser front: the library the CLI and the desktop viewer use, driven from the
//! page's JavaScript (`web/main.js`).
//!
//! A browser cannot wait for the GPU synchronously, so every call that reads results back
//! comes in two halves: a synchronous method queues the work and returns a `Pending*`
//! value holding tensors still on the device, and that value's `read()` is awaited.

use haba::artifact::Artifact;
use haba::augment::Dsa;
use haba::burn::tensor::{Device, Int, Tensor, TensorData};
use haba::data::{Dataset, LabelledImages, embedded};
use haba::device::{DeviceChoice, Selected};
use haba::eval::{DEFAULT_DSA, dsa_from_name, training_set};
use haba::haba::{Factorization, Hallucinators};
use haba::nets::{Arch, Network};
use haba::report::layout::{
    Filter, Rgba, bases_grid, compose, matrix_grid, rgba_images, tile_count,
};
use haba::report::{Display, display_tensor, display_values};
use haba::rng::Rng;
use haba::train::{TrainConfig, Trainer, check_loss};
use wasm_bindgen::prelude::*;

mod distill;

pub use distill::{Distilling, PendingArtifact, PendingStep};

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

fn js(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// Pixels between tiles of a composed grid.
const GAP: usize = 2;

/// A device, the artifact on it, and whatever the page is training.
#[wasm_bindgen]
pub struct Session {
    selected: Selected,
    artifact: Option<Artifact>,
    /// The embedded Fashion-MNIST subset: the test images a Fashion-MNIST artifact is
    /// scored on, and the real images a distillation in the page starts from.
    subset: Dataset,
    training: Option<Training>,
}

struct Training {
    trainer: Trainer,
    set: LabelledImages,
    test: LabelledImages,
    dsa: Dsa,
    rng: Rng,
}

#[wasm_bindgen]
impl Session {
    /// Opens WebGPU when the browser offers an adapter (and `cpu` is false), else the CPU
    /// backend; [`Session::reason`] says which and why.
    pub async fn open(cpu: bool, seed: u64) -> Result<Session, JsError> {
        let choice = if cpu {
            DeviceChoice::Cpu
        } else {
            DeviceChoice::Auto
        };
        let selected = haba::device::select_async(choice, seed).await.map_err(js)?;
        Ok(Session {
            selected,
            artifact: None,
            subset: embedded::fashion_mnist_subset().map_err(js)?,
            training: None,
        })
    }

    /// e.g. "WebGPU: SwiftShader" or "cpu: flex".
    pub fn backend(&self) -> String {
        self.selected.name.clone()
    }

    pub fn reason(&self) -> String {
        self.selected.reason.clone()
    }

    pub fn on_gpu(&self) -> bool {
        self.selected.backend == haba::device::BackendKind::Wgpu
    }

    /// Loads a `distilled.safetensors` (checked whole, as `haba view` checks a file) and
    /// returns a one-line description of it.
    pub fn load(&mut self, bytes: &[u8]) -> Result<String, JsError> {
        let artifact = Artifact::from_bytes(bytes, &self.selected.device).map_err(js)?;
        let line = describe(&artifact);
        self.artifact = Some(artifact);
        self.training = None;
        Ok(line)
    }

    fn artifact(&self) -> Result<&Artifact, JsError> {
        self.artifact
            .as_ref()
            .ok_or_else(|| JsError::new("no distilled set is loaded"))
    }

    pub fn classes(&self) -> Result<Vec<String>, JsError> {
        Ok(self.artifact()?.meta.classes.clone())
    }

    pub fn hallucinators(&self) -> Result<usize, JsError> {
        Ok(self.artifact()?.factorization.hallucinator_count())
    }

    /// The hallucinator x basis matrix (the bases themselves for a set without
    /// hallucinators) of one class (`class` < 0: all), generated on the session's device:
    /// on WebGPU by our WGSL kernel.
    pub fn matrix(&self, class: i32, stretch: bool) -> Result<PendingPicture, JsError> {
        let artifact = self.artifact()?;
        let f = &artifact.factorization;
        let filter = Filter {
            class: u16::try_from(class).ok(),
            hallucinator: None,
        };
        // Without hallucinators, all_images is the bases themselves.
        let images = f.all_images().map_err(js)?.0;
        let grid = matrix_grid(&f.labels, f.hallucinator_count(), filter);
        PendingPicture::new(artifact, images, grid, stretch)
    }

    /// The bases, one row per class (`class` < 0: all classes; one row in all when every
    /// class has one basis).
    pub fn bases(&self, class: i32, stretch: bool) -> Result<PendingPicture, JsError> {
        let artifact = self.artifact()?;
        let f = &artifact.factorization;
        let filter = Filter {
            class: u16::try_from(class).ok(),
            hallucinator: None,
        };
        let mut grid = bases_grid(&f.labels, artifact.meta.classes.len(), filter);
        // One basis per class: one row of them, not a column as tall as the classes.
        if grid.iter().all(|row| row.len() == 1) {
            grid = vec![grid.concat()];
        }
        PendingPicture::new(artifact, f.bases.clone(), grid, stretch)
    }

    /// Prepares training a fresh `model` for `epochs` epochs on the loaded set, as the
    /// evaluation protocol trains (SGD, momentum 0.9, DSA, the artifact's learned learning
    /// rate or 0.01, batches standardised for HaBa sets), scored on the shipped test
    /// subset. Only Fashion-MNIST sets have a test subset here.
    pub fn start_training(&mut self, model: &str, epochs: usize, seed: u64) -> Result<(), JsError> {
        let artifact = self.artifact()?;
        if !artifact.meta.dataset.starts_with("fashion-mnist")
            && artifact.meta.dataset != "embedded"
        {
            return Err(JsError::new(&format!(
                "the page ships Fashion-MNIST test images only; this set was distilled from \
                 {} (train on it with `haba eval`)",
                artifact.meta.dataset
            )));
        }
        if epochs == 0 || epochs > 10_000 {
            return Err(JsError::new("epochs must be between 1 and 10000"));
        }
        let device = &self.selected.device;
        let test = artifact.test_set(&self.subset, device).map_err(js)?;
        let arch: Arch = model.parse().map_err(js)?;
        let net =
            Network::new(&arch, artifact.meta.image, artifact.meta.classes.len()).map_err(js)?;
        let (set, views) = training_set(&artifact.factorization).map_err(js)?;
        let cfg = TrainConfig {
            standardize_batches: artifact.factorization.hallucinators.is_some(),
            views,
            ..TrainConfig::protocol(epochs, artifact.lr.unwrap_or(0.01))
        };
        let mut rng = Rng::new(seed);
        let params = net.init(&mut rng, device);
        let state = net.init_state(device);
        let trainer = Trainer::new(net, params, state, &set, cfg).map_err(js)?;
        self.training = Some(Training {
            trainer,
            set,
            test,
            dsa: dsa_from_name(DEFAULT_DSA).map_err(js)?,
            rng,
        });
        Ok(())
    }

    /// Epochs trained so far.
    pub fn epochs_done(&self) -> usize {
        self.training.as_ref().map_or(0, |t| t.trainer.epoch)
    }

    /// One training epoch; await `read()` for its mean loss.
    pub fn train_epoch(&mut self) -> Result<PendingLoss, JsError> {
        let t = self
            .training
            .as_mut()
            .ok_or_else(|| JsError::new("call start_training first"))?;
        let epoch = t.trainer.epoch;
        let loss = t.trainer.epoch(&t.set, &t.dsa, &mut t.rng).map_err(js)?;
        Ok(PendingLoss { loss, epoch })
    }

    /// The trained network's accuracy on the shipped test subset; await `read()`.
    pub fn test_accuracy(&self) -> Result<PendingAccuracy, JsError> {
        let t = self
            .training
            .as_ref()
            .ok_or_else(|| JsError::new("call start_training first"))?;
        let count = t.trainer.correct(&t.test, 500);
        Ok(PendingAccuracy {
            count,
            total: t.test.len(),
        })
    }

    /// Test images shipped with the page.
    pub fn test_images(&self) -> usize {
        self.subset.test.len()
    }

    /// Prepares a short HaBa-DM distillation of the shipped Fashion-MNIST subset.
    pub fn start_distill(&self, iterations: usize, seed: u64) -> Result<Distilling, JsError> {
        Distilling::new(&self.subset, &self.selected.device, iterations, seed)
    }

    /// Makes the result of a distillation the loaded set (to draw it and train on it).
    pub fn adopt(&mut self, distilling: &Distilling) -> Result<String, JsError> {
        let artifact = distilling.artifact();
        let line = describe(&artifact);
        self.artifact = Some(artifact);
        self.training = None;
        Ok(line)
    }
}

/// "haba-dm on fashion-mnist: 10 bases x 5 hallucinators, 14700 floats (1.88 images per class)"
fn describe(artifact: &Artifact) -> String {
    let s = artifact.storage();
    let bases = artifact.factorization.len();
    let views = match artifact.factorization.hallucinator_count() {
        0 => String::new(),
        m => format!(" x {m} hallucinators"),
    };
    format!(
        "{} on {}: {bases} bases{views}, {} floats ({:.2} images per class)",
        artifact.meta.method, artifact.meta.dataset, s.total_floats, s.image_equivalents_per_class
    )
}

/// A picture being read back from the device.
#[wasm_bindgen]
pub struct PendingPicture {
    pixels: Tensor<4>,
    de_normalised: bool,
    display: Display,
    grid: Vec<Vec<haba::report::layout::Tile>>,
    bases: usize,
}

impl PendingPicture {
    fn new(
        artifact: &Artifact,
        images: Tensor<4>,
        grid: Vec<Vec<haba::report::layout::Tile>>,
        stretch: bool,
    ) -> Result<Self, JsError> {
        let shown = display_tensor(images, &artifact.normalization).map_err(js)?;
        Ok(Self {
            pixels: shown.pixels,
            de_normalised: shown.de_normalised,
            display: if stretch {
                Display::Stretch
            } else {
                Display::TrueColour
            },
            grid,
            bases: artifact.factorization.len(),
        })
    }
}

#[wasm_bindgen]
impl PendingPicture {
    pub async fn read(self) -> Result<Picture, JsError> {
        let [n, c, h, w] = self.pixels.dims();
        let values = read_f32(self.pixels).await?;
        let values = display_values(values, [c, h, w], self.de_normalised, self.display);
        let images = rgba_images(&values, [n, c, h, w]);
        let bases = self.bases;
        let tiles = tile_count(&self.grid);
        let picture = compose(&self.grid, |t| &images[t.image_index(bases)], GAP);
        Ok(Picture {
            picture,
            tiles,
            tile: [w, h],
        })
    }
}

/// A composed grid as RGBA pixels, for a canvas's `ImageData`.
#[wasm_bindgen]
pub struct Picture {
    picture: Rgba,
    tiles: usize,
    tile: [usize; 2],
}

#[wasm_bindgen]
impl Picture {
    #[wasm_bindgen(getter)]
    pub fn width(&self) -> usize {
        self.picture.size[0]
    }
    #[wasm_bindgen(getter)]
    pub fn height(&self) -> usize {
        self.picture.size[1]
    }
    /// How many images the grid holds.
    #[wasm_bindgen(getter)]
    pub fn tiles(&self) -> usize {
        self.tiles
    }
    #[wasm_bindgen(getter)]
    pub fn tile_width(&self) -> usize {
        self.tile[0]
    }
    #[wasm_bindgen(getter)]
    pub fn tile_height(&self) -> usize {
        self.tile[1]
    }
    #[wasm_bindgen(getter)]
    pub fn gap(&self) -> usize {
        GAP
    }
    /// The pixels, row-major RGBA.
    pub fn rgba(&self) -> Vec<u8> {
        self.picture.bytes.clone()
    }
}

/// An epoch's mean loss being read back.
#[wasm_bindgen]
pub struct PendingLoss {
    loss: Tensor<1>,
    epoch: usize,
}

#[wasm_bindgen]
impl PendingLoss {
    pub async fn read(self) -> Result<f32, JsError> {
        let loss = read_f32(self.loss).await?[0];
        check_loss(loss, self.epoch).map_err(js)
    }
}

/// A test-set count being read back.
#[wasm_bindgen]
pub struct PendingAccuracy {
    count: Tensor<1, Int>,
    total: usize,
}

#[wasm_bindgen]
impl PendingAccuracy {
    /// The fraction of the test images classified correctly.
    pub async fn read(self) -> Result<f32, JsError> {
        let data = self.count.into_data_async().await.map_err(js)?;
        let count = data
            .try_into_vec_as::<i64>()
            .map_err(|e| js(format!("{e:?}")))?;
        Ok(count[0] as f32 / self.total.max(1) as f32)
    }
}

/// A float tensor's values, awaited (the only way a browser can read a GPU buffer).
pub(crate) async fn read_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, JsError> {
    let data = t.into_data_async().await.map_err(js)?;
    data.try_into_vec_as::<f32>()
        .map_err(|e| js(format!("{e:?}")))
}

/// A factorization with its tensors read back and rebuilt on `device` (the CPU backend,
/// whose reads are synchronous, for encoding an artifact).
pub(crate) async fn factorization_on(
    f: &Factorization,
    device: &Device,
) -> Result<Factorization, JsError> {
    let dims = f.bases.dims();
    let bases = Tensor::<4>::from_data(
        TensorData::new(read_f32(f.bases.clone()).await?, dims),
        device,
    );
    let hallucinators = match &f.hallucinators {
        Some(h) => {
            let n = h.params.dims();
            Some(Hallucinators {
                shape: h.shape,
                params: Tensor::<1>::from_data(
                    TensorData::new(read_f32(h.params.clone()).await?, n),
                    device,
                ),
            })
        }
        None => None,
    };
    Ok(Factorization {
        bases,
        labels: f.labels.clone(),
        hallucinators,
    })
}
