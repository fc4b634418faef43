//! IDX files, the format of MNIST and Fashion-MNIST, raw or gzipped.
//!
//! An IDX file is a big-endian header (magic number, then one `u32` per dimension) followed
//! by the values. We only need unsigned bytes: images are `N x H x W` (magic 2051) and
//! labels are `N` (magic 2049).

use std::path::{Path, PathBuf};

use super::files::{format_err, read_maybe_gz};
use super::{DataError, Dataset, ImageShape, Split};

/// Magic number of an unsigned-byte IDX file with three dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an unsigned-byte IDX file with one dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// The four files of an MNIST-style dataset, by their official (gzipped) names.
pub const FILES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];

/// Images read from one IDX file: `count` grey images of `height x width`, row-major.
#[derive(Clone, Debug)]
pub struct IdxImages {
    pub count: usize,
    pub height: usize,
    pub width: usize,
    pub pixels: Vec<u8>,
}

/// Reads the big-endian header of an IDX file: checks the magic number and returns the
/// dimensions, after checking that the file holds exactly the bytes the header promises.
fn header(path: &Path, bytes: &[u8], magic: u32, what: &str) -> Result<Vec<usize>, DataError> {
    let ndim = (magic & 0xff) as usize;
    let header_len = 4 + 4 * ndim;
    let be_u32 = |at: usize| -> Option<u32> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let found_magic = be_u32(0).ok_or_else(|| {
        format_err(
            path,
            format!("an IDX {what} file (at least {header_len} bytes)"),
            format!("{} bytes", bytes.len()),
        )
    })?;
    if found_magic != magic {
        return Err(format_err(
            path,
            format!("IDX {what} magic number {magic}"),
            format!("{found_magic}"),
        ));
    }
    let mut dims = Vec::with_capacity(ndim);
    for d in 0..ndim {
        let dim = be_u32(4 + 4 * d).ok_or_else(|| {
            format_err(
                path,
                format!("an IDX header of {header_len} bytes"),
                format!("{} bytes", bytes.len()),
            )
        })?;
        if dim == 0 {
            return Err(format_err(
                path,
                "non-zero IDX dimensions",
                format!("dimension {d} is 0"),
            ));
        }
        dims.push(dim as usize);
    }
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_add(header_len));
    let dims_text = dims
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x");
    match expected {
        Some(expected) if expected == bytes.len() => Ok(dims),
        Some(expected) => Err(format_err(
            path,
            format!("{expected} bytes for {what} of {dims_text} (after decompression)"),
            format!("{} bytes", bytes.len()),
        )),
        None => Err(format_err(
            path,
            "IDX dimensions that fit in memory",
            dims_text,
        )),
    }
}

/// The total size an IDX file's header promises (header and values, one byte each), from
/// its first bytes; `None` when they are too few or the size overflows.
pub(crate) fn promised_len(prefix: &[u8]) -> Option<usize> {
    let be_u32 = |at: usize| -> Option<usize> {
        let b = prefix.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let ndim = be_u32(0)? & 0xff;
    let values = (0..ndim).try_fold(1usize, |n, d| n.checked_mul(be_u32(4 + 4 * d)?))?;
    values.checked_add(4 + 4 * ndim)
}

/// Reads an IDX image file (raw or gzipped).
pub fn read_images(path: &Path) -> Result<IdxImages, DataError> {
    parse_images(path, read_maybe_gz(path, promised_len)?)
}

/// Parses the unpacked bytes of an IDX image file; `path` names it in errors.
pub fn parse_images(path: &Path, mut bytes: Vec<u8>) -> Result<IdxImages, DataError> {
    let dims = header(path, &bytes, IMAGES_MAGIC, "images")?;
    let header_len = 16;
    // Drop the header in place rather than copying the pixels.
    bytes.drain(..header_len);
    Ok(IdxImages {
        count: dims[0],
        height: dims[1],
        width: dims[2],
        pixels: bytes,
    })
}

/// Reads an IDX label file (raw or gzipped) and checks every label is below `classes`.
pub fn read_labels(path: &Path, classes: usize) -> Result<Vec<u16>, DataError> {
    parse_labels(path, &read_maybe_gz(path, promised_len)?, classes)
}

/// Parses the unpacked bytes of an IDX label file; `path` names it in errors.
pub fn parse_labels(path: &Path, bytes: &[u8], classes: usize) -> Result<Vec<u16>, DataError> {
    header(path, bytes, LABELS_MAGIC, "labels")?;
    let labels = &bytes[8..];
    if let Some((i, &bad)) = labels
        .iter()
        .enumerate()
        .find(|&(_, &l)| usize::from(l) >= classes)
    {
        return Err(format_err(
            path,
            format!("labels in 0..{classes}"),
            format!("label {bad} at index {i}"),
        ));
    }
    Ok(labels.iter().map(|&l| u16::from(l)).collect())
}

/// Reads one split from an image file and its label file, checking that the counts agree.
pub fn read_split(
    images: &Path,
    labels: &Path,
    classes: usize,
) -> Result<(Split, ImageShape), DataError> {
    pair(
        read_images(images)?,
        read_labels(labels, classes)?,
        images,
        labels,
    )
}

/// One split from parsed images and labels, checking that the counts agree.
pub fn pair(
    img: IdxImages,
    lab: Vec<u16>,
    images: &Path,
    labels: &Path,
) -> Result<(Split, ImageShape), DataError> {
    if lab.len() != img.count {
        return Err(format_err(
            labels,
            format!(
                "{} labels, one per image in {}",
                img.count,
                images.display()
            ),
            format!("{} labels", lab.len()),
        ));
    }
    let shape = ImageShape {
        channels: 1,
        height: img.height,
        width: img.width,
    };
    Ok((
        Split {
            images: img.pixels,
            labels: lab,
        },
        shape,
    ))
}

/// Finds `name` (an official `.gz` file name) in `dir`, also accepting the unpacked file
/// without `.gz`, as torchvision and manual downloads leave them.
pub fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    let gz = dir.join(name);
    if gz.is_file() {
        return Some(gz);
    }
    let plain = dir.join(name.strip_suffix(".gz")?);
    plain.is_file().then_some(plain)
}

/// Loads an MNIST-style dataset from the four [`FILES`] in `dir`.
pub fn load(dir: &Path, name: &str, classes: Vec<String>) -> Result<Dataset, DataError> {
    let path = |file: &str| {
        find_file(dir, file).ok_or_else(|| {
            format_err(
                &dir.join(file),
                "an IDX file (gzipped or not)",
                "no such file",
            )
        })
    };
    let [train_x, train_y, test_x, test_y] = FILES.map(path);
    let (train_x, train_y, test_x, test_y) = (train_x?, train_y?, test_x?, test_y?);
    let (train, shape) = read_split(&train_x, &train_y, classes.len())?;
    let (test, test_shape) = read_split(&test_x, &test_y, classes.len())?;
    if test_shape != shape {
        return Err(format_err(
            &test_x,
            format!(
                "images of {}x{} like {}",
                shape.height,
                shape.width,
                train_x.display()
            ),
            format!("{}x{}", test_shape.height, test_shape.width),
        ));
    }
    Ok(Dataset {
        name: name.to_string(),
        classes,
        shape,
        train,
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::files::testutil::{TempDir, gzip};

    fn images_file(n: u32, h: u32, w: u32, pixels: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [IMAGES_MAGIC, n, h, w] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(pixels);
        out
    }

    fn labels_file(labels: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
        out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        out.extend_from_slice(labels);
        out
    }

    fn digits() -> Vec<String> {
        (0..10).map(|d| d.to_string()).collect()
    }

    #[test]
    fn round_trip_raw_and_gzipped() {
        let dir = TempDir::new("idx-rt");
        let train_px: Vec<u8> = (0..3 * 4 * 5).map(|i| (i * 7) as u8).collect();
        let test_px: Vec<u8> = (0..2 * 4 * 5).map(|i| (255 - i) as u8).collect();
        // Train gzipped under the official names, test unpacked without `.gz`.
        dir.write(FILES[0], &gzip(&images_file(3, 4, 5, &train_px)));
        dir.write(FILES[1], &gzip(&labels_file(&[9, 0, 4])));
        dir.write("t10k-images-idx3-ubyte", &images_file(2, 4, 5, &test_px));
        dir.write("t10k-labels-idx1-ubyte", &labels_file(&[1, 2]));

        let ds = load(dir.path(), "mnist", digits()).expect("load");
        assert_eq!(
            ds.shape,
            ImageShape {
                channels: 1,
                height: 4,
                width: 5
            }
        );
        assert_eq!(ds.train.images, train_px);
        assert_eq!(ds.train.labels, vec![9, 0, 4]);
        assert_eq!(ds.test.images, test_px);
        assert_eq!(ds.test.labels, vec![1, 2]);
    }

    /// A gzip bomb: a header promising one 2x2 image, followed by 50 MB of zeros that
    /// compress to a quarter of a megabyte. It is refused after inflating what the header
    /// promises plus one byte, not after inflating it all.
    #[test]
    fn gzip_streams_unpack_no_further_than_their_header_promises() {
        let dir = TempDir::new("idx-bomb");
        let mut bomb = images_file(1, 2, 2, &[1, 2, 3, 4]);
        bomb.resize(50 << 20, 0);
        let packed = gzip(&bomb);
        assert!(packed.len() < 500_000, "{} bytes", packed.len());
        let path = dir.path().join("bomb-idx3-ubyte.gz");
        std::fs::write(&path, &packed).unwrap();
        let err = read_images(&path).unwrap_err().to_string();
        assert!(
            err.contains("at most 20 bytes") && err.contains("bomb-idx3"),
            "{err}"
        );
        assert_eq!(promised_len(&images_file(3, 4, 5, &[])), Some(16 + 60));
        assert_eq!(promised_len(&[0, 0, 8]), None, "too short to read");
        let huge = images_file(u32::MAX, u32::MAX, u32::MAX, &[]);
        assert_eq!(promised_len(&huge), None, "overflows");
    }

    #[test]
    fn truncated_file_names_file_and_sizes() {
        let dir = TempDir::new("idx-trunc");
        let mut bytes = images_file(3, 4, 5, &[0; 60]);
        bytes.truncate(16 + 50);
        let path = dir.write("imgs.gz", &gzip(&bytes));
        let msg = read_images(&path).unwrap_err().to_string();
        assert!(msg.contains("imgs.gz"), "{msg}");
        assert!(msg.contains("76 bytes"), "{msg}");
        assert!(msg.contains("66 bytes"), "{msg}");
    }

    #[test]
    fn wrong_magic_and_bad_labels_are_errors() {
        let dir = TempDir::new("idx-bad");
        // A label file where an image file is expected.
        let path = dir.write("swapped", &labels_file(&[1, 2, 3]));
        let msg = read_images(&path).unwrap_err().to_string();
        assert!(msg.contains("swapped") && msg.contains("2051"), "{msg}");

        let path = dir.write("labels", &labels_file(&[1, 10, 3]));
        let msg = read_labels(&path, 10).unwrap_err().to_string();
        assert!(msg.contains("labels") && msg.contains("label 10"), "{msg}");

        let path = dir.write("tiny", &[0, 0]);
        assert!(
            read_labels(&path, 10)
                .unwrap_err()
                .to_string()
                .contains("tiny")
        );

        // Corrupt gzip body after a valid magic.
        let path = dir.write("corrupt.gz", &[0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5]);
        let msg = read_labels(&path, 10).unwrap_err().to_string();
        assert!(msg.contains("corrupt.gz"), "{msg}");
    }

    #[test]
    fn count_mismatch_is_an_error() {
        let dir = TempDir::new("idx-count");
        let x = dir.write("x", &images_file(2, 1, 1, &[1, 2]));
        let y = dir.write("y", &labels_file(&[1, 2, 3]));
        let msg = read_split(&x, &y, 10).unwrap_err().to_string();
        assert!(msg.contains("2 labels") && msg.contains("found 3"), "{msg}");
    }

    #[test]
    fn missing_file_is_named() {
        let dir = TempDir::new("idx-missing");
        let msg = load(dir.path(), "mnist", digits()).unwrap_err().to_string();
        assert!(msg.contains("train-images-idx3-ubyte.gz"), "{msg}");
    }

    /// Loads the Debian copy of Fashion-MNIST when the system has it.
    #[test]
    fn debian_fashion_mnist_if_present() {
        let dir = Path::new("/usr/share/datasets/fashion-mnist");
        if !dir.is_dir() {
            eprintln!("note: {} absent, skipping", dir.display());
            return;
        }
        let ds = load(dir, "fashion-mnist", digits()).expect("load Debian fashion-mnist");
        assert_eq!(ds.train.len(), 60_000);
        assert_eq!(ds.test.len(), 10_000);
        assert_eq!(
            ds.shape,
            ImageShape {
                channels: 1,
                height: 28,
                width: 28
            }
        );
        assert_eq!(ds.train.images.len(), 60_000 * 784);
    }
}
