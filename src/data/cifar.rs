//! The binary releases of CIFAR-10 and CIFAR-100.
//!
//! Both are flat files of fixed-size records: label byte(s), then a 32x32 RGB image stored
//! as three 1024-byte planes (R, G, B), each row-major. That is already NCHW, so records
//! are copied straight through.

use std::path::Path;

use super::files::{format_err, read};
use super::{DataError, Dataset, ImageShape, Split};

/// Every CIFAR image: 3 x 32 x 32.
pub const SHAPE: ImageShape = ImageShape {
    channels: 3,
    height: 32,
    width: 32,
};

/// Bytes of pixels per record.
const PIXELS: usize = 3 * 32 * 32;

/// CIFAR-10 training batches, in order, then the test batch.
pub const CIFAR10_TRAIN: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
pub const CIFAR10_TEST: &str = "test_batch.bin";
/// One class name per line.
pub const CIFAR10_NAMES: &str = "batches.meta.txt";

pub const CIFAR100_TRAIN: &str = "train.bin";
pub const CIFAR100_TEST: &str = "test.bin";
/// One fine class name per line.
pub const CIFAR100_NAMES: &str = "fine_label_names.txt";

/// Used when `batches.meta.txt` is missing; the official order.
pub(crate) const CIFAR10_DEFAULT_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Layout of one record kind.
struct Record {
    /// Label bytes before the pixels.
    label_bytes: usize,
    /// Which of those bytes is the label we keep.
    label_at: usize,
    classes: usize,
}

const CIFAR10_RECORD: Record = Record {
    label_bytes: 1,
    label_at: 0,
    classes: 10,
};
/// Coarse label then fine label; we keep the fine one (100 classes).
const CIFAR100_RECORD: Record = Record {
    label_bytes: 2,
    label_at: 1,
    classes: 100,
};

/// Appends every record of `path` to `split`.
fn read_batch(path: &Path, record: &Record, split: &mut Split) -> Result<(), DataError> {
    let bytes = read(path)?;
    let size = record.label_bytes + PIXELS;
    if bytes.is_empty() || bytes.len() % size != 0 {
        return Err(format_err(
            path,
            format!("a non-zero multiple of the {size}-byte record size"),
            format!(
                "{} bytes ({} whole records and {} bytes over)",
                bytes.len(),
                bytes.len() / size,
                bytes.len() % size
            ),
        ));
    }
    let count = bytes.len() / size;
    split.images.reserve(count * PIXELS);
    split.labels.reserve(count);
    for (i, rec) in bytes.chunks_exact(size).enumerate() {
        let label = rec[record.label_at];
        if usize::from(label) >= record.classes {
            return Err(format_err(
                path,
                format!("labels in 0..{}", record.classes),
                format!("label {label} in record {i}"),
            ));
        }
        split.labels.push(u16::from(label));
        split.images.extend_from_slice(&rec[record.label_bytes..]);
    }
    Ok(())
}

/// Reads class names, one per non-empty line. A missing file gives `None`, so the caller
/// can fall back to defaults; a file with the wrong number of names is an error.
fn read_names(path: &Path, classes: usize) -> Result<Option<Vec<String>>, DataError> {
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = read(path)?;
    let text = String::from_utf8_lossy(&bytes);
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != classes {
        return Err(format_err(
            path,
            format!("{classes} class names, one per line"),
            format!("{} names", names.len()),
        ));
    }
    Ok(Some(names))
}

/// Loads CIFAR-10 from the `cifar-10-batches-bin` directory.
pub fn load_cifar10(dir: &Path) -> Result<Dataset, DataError> {
    let mut train = Split::default();
    for file in CIFAR10_TRAIN {
        read_batch(&dir.join(file), &CIFAR10_RECORD, &mut train)?;
    }
    let mut test = Split::default();
    read_batch(&dir.join(CIFAR10_TEST), &CIFAR10_RECORD, &mut test)?;
    let classes = read_names(&dir.join(CIFAR10_NAMES), 10)?
        .unwrap_or_else(|| CIFAR10_DEFAULT_NAMES.map(String::from).to_vec());
    Ok(Dataset {
        name: "cifar10".into(),
        classes,
        shape: SHAPE,
        train,
        test,
    })
}

/// Loads CIFAR-100 (fine labels) from the `cifar-100-binary` directory.
pub fn load_cifar100(dir: &Path) -> Result<Dataset, DataError> {
    let mut train = Split::default();
    read_batch(&dir.join(CIFAR100_TRAIN), &CIFAR100_RECORD, &mut train)?;
    let mut test = Split::default();
    read_batch(&dir.join(CIFAR100_TEST), &CIFAR100_RECORD, &mut test)?;
    let classes = read_names(&dir.join(CIFAR100_NAMES), 100)?
        .unwrap_or_else(|| (0..100).map(|c| c.to_string()).collect());
    Ok(Dataset {
        name: "cifar100".into(),
        classes,
        shape: SHAPE,
        train,
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::files::testutil::TempDir;

    /// Records with the given label prefixes and pixels derived from `seed`.
    fn records(labels: &[&[u8]], seed: u8) -> (Vec<u8>, Vec<u8>) {
        let mut file = Vec::new();
        let mut pixels = Vec::new();
        for (i, lab) in labels.iter().enumerate() {
            file.extend_from_slice(lab);
            let px: Vec<u8> = (0..PIXELS)
                .map(|p| (p as u8).wrapping_mul(31) ^ seed ^ i as u8)
                .collect();
            file.extend_from_slice(&px);
            pixels.extend_from_slice(&px);
        }
        (file, pixels)
    }

    #[test]
    fn cifar10_round_trip() {
        let dir = TempDir::new("cifar10");
        let mut want_train = Vec::new();
        let mut want_labels = Vec::new();
        for (b, file) in CIFAR10_TRAIN.iter().enumerate() {
            let (bytes, px) = records(&[&[b as u8], &[9]], b as u8);
            dir.write(file, &bytes);
            want_train.extend(px);
            want_labels.extend([b as u16, 9]);
        }
        let (bytes, test_px) = records(&[&[3]], 77);
        dir.write(CIFAR10_TEST, &bytes);

        // Without batches.meta.txt the official names are used.
        let ds = load_cifar10(dir.path()).expect("load");
        assert_eq!(ds.classes[0], "airplane");
        assert_eq!(ds.train.images, want_train);
        assert_eq!(ds.train.labels, want_labels);
        assert_eq!(ds.test.images, test_px);
        assert_eq!(ds.test.labels, vec![3]);

        let names: String = (0..10).map(|c| format!("c{c}\n")).collect();
        dir.write(CIFAR10_NAMES, format!("{names}\n\n").as_bytes());
        assert_eq!(load_cifar10(dir.path()).expect("load").classes[9], "c9");

        dir.write(CIFAR10_NAMES, b"a\nb\n");
        let msg = load_cifar10(dir.path()).unwrap_err().to_string();
        assert!(
            msg.contains(CIFAR10_NAMES) && msg.contains("2 names"),
            "{msg}"
        );
    }

    #[test]
    fn cifar100_uses_fine_labels() {
        let dir = TempDir::new("cifar100");
        let (train, train_px) = records(&[&[19, 99], &[0, 42]], 1);
        let (test, test_px) = records(&[&[5, 7]], 2);
        dir.write(CIFAR100_TRAIN, &train);
        dir.write(CIFAR100_TEST, &test);
        let ds = load_cifar100(dir.path()).expect("load");
        assert_eq!(ds.train.labels, vec![99, 42]);
        assert_eq!(ds.train.images, train_px);
        assert_eq!(ds.test.labels, vec![7]);
        assert_eq!(ds.test.images, test_px);
        assert_eq!(ds.classes.len(), 100);
    }

    #[test]
    fn bad_size_and_label_name_the_file() {
        let dir = TempDir::new("cifar-bad");
        let (mut bytes, _) = records(&[&[1], &[2]], 0);
        bytes.pop();
        let path = dir.write("short.bin", &bytes);
        let msg = read_batch(&path, &CIFAR10_RECORD, &mut Split::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("short.bin") && msg.contains("6145 bytes"),
            "{msg}"
        );

        let (bytes, _) = records(&[&[1], &[10]], 0);
        let path = dir.write("label.bin", &bytes);
        let msg = read_batch(&path, &CIFAR10_RECORD, &mut Split::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("label.bin") && msg.contains("label 10 in record 1"),
            "{msg}"
        );

        let (bytes, _) = records(&[&[0, 100]], 0);
        let path = dir.write("fine.bin", &bytes);
        let msg = read_batch(&path, &CIFAR100_RECORD, &mut Split::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("fine.bin") && msg.contains("label 100"),
            "{msg}"
        );

        // A missing batch is an I/O error naming it.
        let msg = load_cifar10(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("data_batch_1.bin"), "{msg}");
    }
}
