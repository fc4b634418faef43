//! The subsets built into the binary, so the main job and the tests run offline with no
//! flags: Fashion-MNIST (500 train and 100 test images per class, made by
//! `scripts/make-embedded-subset.py`; MIT licence in `assets/fashion-mnist-subset`), read
//! with the same IDX checks as files, and CIFAR-10 (300 train and 100 test images per
//! class of Krizhevsky's 2009 set, made by `scripts/make-embedded-cifar10.py`; see
//! `assets/cifar10-subset`), in the [`super::packed`] format.

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

/// The CIFAR-10 subset's file (JPEG bytes of a class-per-folder copy).
const CIFAR10: &[u8] = include_bytes!("../../assets/cifar10-subset/cifar10-subset.bin");

/// The built-in subsets by the names `--dataset` takes, with what they hold.
pub const SUBSETS: &[(&str, &str)] = &[
    (
        "embedded-cifar10",
        "CIFAR-10 subset (colour, 32x32), 300 train + 100 test per class",
    ),
    (
        "embedded",
        "Fashion-MNIST subset (grey, 28x28), 500 train + 100 test per class",
    ),
];

/// The built-in subset called `name` (see [`SUBSETS`]; `embedded-fashion-mnist` is
/// `embedded` too), or `None` for another name.
pub fn by_name(name: &str) -> Option<Result<Dataset, DataError>> {
    match name {
        "embedded" | "embedded-fashion-mnist" => Some(fashion_mnist_subset()),
        "embedded-cifar10" => Some(cifar10_subset()),
        _ => None,
    }
}

/// The embedded CIFAR-10 subset.
pub fn cifar10_subset() -> Result<Dataset, DataError> {
    super::packed::parse(
        Path::new("embedded/cifar10-subset.bin"),
        CIFAR10,
        "cifar10-subset",
    )
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

    #[test]
    fn cifar10_subset_is_balanced_colour_and_in_cifar_order() {
        let d = super::by_name("embedded-cifar10").unwrap().unwrap();
        assert_eq!(
            (d.shape.channels, d.shape.height, d.shape.width),
            (3, 32, 32)
        );
        assert_eq!((d.train.len(), d.test.len()), (3000, 1000));
        assert_eq!(d.train.images.len(), 3000 * 3072);
        assert_eq!(d.classes, crate::data::cifar::CIFAR10_DEFAULT_NAMES);
        for c in 0..10u16 {
            assert_eq!(d.train.labels.iter().filter(|&&l| l == c).count(), 300);
            assert_eq!(d.test.labels.iter().filter(|&&l| l == c).count(), 100);
        }
        // CIFAR-10's mean pixel is about 120 of 255, with blue lowest.
        let plane = |c: usize| {
            let v: Vec<f64> = d
                .train
                .images
                .chunks_exact(3072)
                .flat_map(|im| im[c * 1024..(c + 1) * 1024].iter().map(|&p| p as f64))
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        let (r, b) = (plane(0), plane(2));
        assert!((110.0..140.0).contains(&r) && b < r, "red {r}, blue {b}");
        assert!(super::by_name("embedded-svhn").is_none());
    }
}
