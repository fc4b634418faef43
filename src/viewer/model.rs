//! What the viewer shows, without a window: where a run's files are, the curves of its
//! `metrics.jsonl`, which tiles each view lays out, and images as RGBA bytes. Everything
//! here is testable headless; `app.rs` only draws it.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use burn::tensor::Tensor;

use crate::artifact::Artifact;
use crate::data::Normalization;
use crate::error::{Error, Result};
pub use crate::report::Display;
pub use crate::report::curves::Curves;
pub use crate::report::layout::{
    Filter, Rgba, Tile, bases_grid, matrix_grid, rgba_images, tile_count,
};

/// The files a view reads: an artifact, and when it sits in a run directory that
/// directory's metrics and report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub artifact: PathBuf,
    pub run_dir: Option<PathBuf>,
}

impl Source {
    /// `path` is a run directory or a `distilled.safetensors` file.
    pub fn new(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let artifact = path.join(crate::artifact::FILE_NAME);
            if !artifact.exists() {
                return Err(Error::Config(format!(
                    "{} holds no {} (not a run directory, or the run has not written \
                     its first checkpoint yet)",
                    path.display(),
                    crate::artifact::FILE_NAME
                )));
            }
            Ok(Self {
                artifact,
                run_dir: Some(path.to_path_buf()),
            })
        } else if path.is_file() {
            // A file inside a run directory still gets that directory's curves.
            let run_dir = path
                .parent()
                .filter(|d| d.join(crate::report::METRICS_FILE).exists())
                .map(Path::to_path_buf);
            Ok(Self {
                artifact: path.to_path_buf(),
                run_dir,
            })
        } else {
            Err(Error::Config(format!(
                "{} is neither a run directory nor a file",
                path.display()
            )))
        }
    }

    pub fn metrics(&self) -> Option<PathBuf> {
        self.run_dir
            .as_ref()
            .map(|d| d.join(crate::report::METRICS_FILE))
    }

    pub fn report(&self) -> Option<PathBuf> {
        self.run_dir
            .as_ref()
            .map(|d| crate::report::RunDir::at(d).report())
    }
}

/// A file's modification time, `None` when it does not exist (yet).
pub fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Normalised images `[N, C, H, W]` (C = 1 or 3) as RGBA, in the colours the run's PNGs
/// use for `display` ([`crate::report::displayed`]). Reads them back from the device once.
pub fn to_rgba(
    images: Tensor<4>,
    normalization: &Normalization,
    display: Display,
) -> Result<Vec<Rgba>> {
    let dims = images.dims();
    let values = crate::report::displayed(images, normalization, display).map_err(Error::Config)?;
    Ok(rgba_images(&values, dims))
}

/// Every image the grids show, generated on the artifact's device (on wgpu: our WGSL
/// affine kernel) from the stored factorization.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub bases: Vec<Rgba>,
    /// Every basis through every hallucinator, hallucinator-major; empty without
    /// hallucinators.
    pub matrix: Vec<Rgba>,
}

impl Rendered {
    pub fn new(artifact: &Artifact, display: Display) -> Result<Self> {
        let f = &artifact.factorization;
        let bases = to_rgba(f.bases.clone(), &artifact.normalization, display)?;
        let matrix = if f.hallucinators.is_some() {
            let (images, _) = f.all_images()?;
            to_rgba(images, &artifact.normalization, display)?
        } else {
            Vec::new()
        };
        Ok(Self { bases, matrix })
    }
}

/// The what-if row: one normalised image `[1, Cb, H, W]` (a basis, or a real image brought
/// to the bases' channels) through every hallucinator.
pub fn what_if(artifact: &Artifact, image: Tensor<4>, display: Display) -> Result<Vec<Rgba>> {
    let images = artifact.factorization.every_view(image)?;
    to_rgba(images, &artifact.normalization, display)
}

/// One real test image of the artifact's dataset, normalised like the run's data and
/// brought to the bases' channel count, plus its pixels for display. `None` when the
/// dataset is not available here.
pub fn real_image(
    artifact: &Artifact,
    test: &crate::data::Split,
    index: usize,
) -> Result<(Tensor<4>, Rgba, u16)> {
    let shape = artifact.meta.image;
    let n = test.len();
    if n == 0 {
        return Err(Error::Config("the dataset has no test images".into()));
    }
    let i = index % n;
    let pixels = &test.images[i * shape.numel()..(i + 1) * shape.numel()];
    let device = artifact.factorization.bases.device();
    let raw = crate::data::preprocess::pixels_to_tensor(pixels, shape, &device)?;
    let shown = to_rgba_pixels(raw.clone())?;
    let normal = artifact.normalization.apply_tensor(raw)?;
    let cb = artifact.factorization.bases.dims()[1];
    let image = if cb == shape.channels {
        normal
    } else {
        normal.mean_dim(1)
    };
    Ok((image, shown, test.labels[i]))
}

/// [0, 1] pixels `[1, C, H, W]` as RGBA.
fn to_rgba_pixels(pixels: Tensor<4>) -> Result<Rgba> {
    let c = pixels.dims()[1];
    let identity = Normalization::MeanStd {
        mean: vec![0.0; c],
        std: vec![1.0; c],
    };
    Ok(to_rgba(pixels, &identity, Display::TrueColour)?.remove(0))
}

/// The dataset a run was distilled from, as the CLI loads it.
pub fn load_dataset(name: &str, data_dir: Option<PathBuf>) -> Result<crate::data::Dataset> {
    Ok(if name == "embedded" || name == "fashion-mnist-subset" {
        crate::data::embedded::fashion_mnist_subset()?
    } else {
        crate::data::load(name, &crate::data::SearchPaths::new(data_dir))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_has_a_tile_per_hallucinator_and_basis() {
        let labels = [0u16, 0, 1, 1, 2, 2];
        let all = matrix_grid(&labels, 5, Filter::default());
        assert_eq!(all.len(), 5);
        assert_eq!(tile_count(&all), 30);
        let one_class = matrix_grid(
            &labels,
            5,
            Filter {
                class: Some(1),
                hallucinator: None,
            },
        );
        assert_eq!(tile_count(&one_class), 10);
        assert!(one_class.iter().flatten().all(|t| t.label == 1));
        assert_eq!(one_class[3][1].image_index(6), 3 * 6 + 3);
        let one = matrix_grid(
            &labels,
            5,
            Filter {
                class: Some(2),
                hallucinator: Some(4),
            },
        );
        assert_eq!(one.len(), 1);
        assert_eq!(one[0][1].basis, 5);
        assert_eq!(one[0][1].in_class, 1);
        // A plain set: the bases are the images, one row.
        assert_eq!(tile_count(&matrix_grid(&labels, 0, Filter::default())), 6);
    }

    #[test]
    fn bases_grid_is_one_row_per_class() {
        let labels = [0u16, 0, 1, 1, 2, 2];
        let grid = bases_grid(&labels, 3, Filter::default());
        assert_eq!(grid.len(), 3);
        assert!(grid.iter().all(|r| r.len() == 2));
        let t = grid[2][0];
        assert_eq!((t.basis, t.in_class, t.label), (4, 0, 2));
        let names = ["a".to_string(), "b".into(), "c".into()];
        assert!(t.describe(&names).contains("class 2 (c)"));
        let filtered = bases_grid(
            &labels,
            3,
            Filter {
                class: Some(1),
                hallucinator: None,
            },
        );
        assert_eq!(tile_count(&filtered), 2);
    }

    #[test]
    fn rgba_of_grey_and_colour_images() {
        use burn::tensor::{Device, TensorData};
        let device = Device::flex();
        let norm = Normalization::MeanStd {
            mean: vec![0.5],
            std: vec![0.5],
        };
        let x = Tensor::<4>::from_data(TensorData::new(vec![-1.0f32, 1.0], [1, 1, 1, 2]), &device);
        let out = to_rgba(x, &norm, Display::TrueColour).unwrap();
        assert_eq!(out[0].size, [2, 1]);
        assert_eq!(out[0].bytes, vec![0, 0, 0, 255, 255, 255, 255, 255]);
    }
}
