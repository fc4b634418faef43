//! The Fashion-MNIST subset built into the binary (500 train and 100 test images per class,
//! made by `scripts/make-embedded-subset.py`; MIT licence in `assets/fashion-mnist-subset`),
//! so the main job runs offline with no flags. It goes through the same IDX checks as files.

use std::path::Path;

use super::files::gunzip_if_gz;
use super::registry::FASHION_MNIST_CLASSES;
use super::{DataError, Dataset, idx};

const TRAIN_IMAGES: &[u8] =
    include_bytes!("../../assets/fashion-mnist-subset/train-images-idx3-ubyte.gz");
const TRAIN_LABELS: &[u8] =
    include_bytes!("../../assets/fashion-mnist-subset/train-labels-idx1-ubyte.gz");
const TEST_IMAGES: &[u8] =
    include_bytes!("../../assets/fashion-mnist-subset/t10k-images-idx3-ubyte.gz");
const TEST_LABELS: &[u8] =
    include_bytes!("../../assets/fashion-mnist-subset/t10k-labels-idx1-ubyte.gz");

fn split(
    images: (&str, &[u8]),
    labels: (&str, &[u8]),
) -> Result<(super::Split, super::ImageShape), DataError> {
    let (ipath, lpath) = (Path::new(images.0), Path::new(labels.0));
    let img = idx::parse_images(
        ipath,
        gunzip_if_gz(ipath, images.1.to_vec(), idx::promised_len)?,
    )?;
    let lab = idx::parse_labels(
        lpath,
        &gunzip_if_gz(lpath, labels.1.to_vec(), idx::promised_len)?,
        10,
    )?;
    idx::pair(img, lab, ipath, lpath)
}

/// The embedded Fashion-MNIST subset.
pub fn fashion_mnist_subset() -> Result<Dataset, DataError> {
    let (train, shape) = split(
        ("embedded/train-images-idx3-ubyte.gz", TRAIN_IMAGES),
        ("embedded/train-labels-idx1-ubyte.gz", TRAIN_LABELS),
    )?;
    let (test, _) = split(
        ("embedded/t10k-images-idx3-ubyte.gz", TEST_IMAGES),
        ("embedded/t10k-labels-idx1-ubyte.gz", TEST_LABELS),
    )?;
    Ok(Dataset {
        name: "fashion-mnist-subset".into(),
        classes: FASHION_MNIST_CLASSES.map(String::from).to_vec(),
        shape,
        train,
        test,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn embedded_subset_is_balanced_and_whole() {
        let d = super::fashion_mnist_subset().unwrap();
        assert_eq!(
            (d.shape.channels, d.shape.height, d.shape.width),
            (1, 28, 28)
        );
        assert_eq!((d.train.len(), d.test.len()), (5000, 1000));
        assert_eq!(d.train.images.len(), 5000 * 784);
        for c in 0..10u16 {
            assert_eq!(d.train.labels.iter().filter(|&&l| l == c).count(), 500);
            assert_eq!(d.test.labels.iter().filter(|&&l| l == c).count(), 100);
        }
        // Real images, not zeros: Fashion-MNIST's mean pixel is about 73 of 255.
        let mean =
            d.train.images.iter().map(|&p| p as f64).sum::<f64>() / d.train.images.len() as f64;
        assert!((60.0..90.0).contains(&mean), "{mean}");
    }
}
