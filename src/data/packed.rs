//! A few labelled images packed in one file: the format of the CIFAR-10 subset built into
//! the binary (written by `scripts/make-embedded-cifar10.py`). Each image keeps the bytes
//! of its source file (JPEG or PNG), so a subset of a JPEG copy costs what the copy costs.
//!
//! ```text
//! b"HABAIMG1"
//! u8 K, then K x (u8 length, class name in UTF-8)
//! for the splits "train" and "test":
//!     u8 length, split name; u32 LE N; then N x (u8 label, u32 LE length, image bytes)
//! ```
//!
//! Every image must decode to the same size; colour images give three channels, and a set
//! of grey ones one. Every length and label is checked against what is left of the file
//! and the class count before it is used.

use std::path::{Path, PathBuf};

use super::{DataError, Dataset, ImageShape, Split};

const MAGIC: &[u8] = b"HABAIMG1";
const SPLITS: [&str; 2] = ["train", "test"];

/// Reads a packed file's bytes; `path` names it in errors.
pub fn parse(path: &Path, bytes: &[u8], name: &str) -> Result<Dataset, DataError> {
    let mut r = Reader { path, bytes, at: 0 };
    if r.take(MAGIC.len(), "the magic bytes HABAIMG1")? != MAGIC {
        return Err(r.format("the magic bytes HABAIMG1", "other bytes".into()));
    }
    let k = r.u8("the class count")? as usize;
    if k == 0 {
        return Err(r.format("at least one class", "0".into()));
    }
    let mut classes = Vec::with_capacity(k);
    for _ in 0..k {
        classes.push(r.text("a class name")?);
    }
    let mut splits = Vec::with_capacity(2);
    let mut shape: Option<(usize, u32, u32)> = None;
    for want in SPLITS {
        let got = r.text("a split name")?;
        if got != want {
            return Err(r.format(&format!("the split `{want}`"), format!("`{got}`")));
        }
        let n = r.u32("an image count")? as usize;
        // Each image takes at least its 5-byte header: a count beyond that is damage.
        if n > (bytes.len() - r.at) / 5 {
            return Err(r.format(
                "an image count the file can hold",
                format!("{n} images in {} bytes", bytes.len() - r.at),
            ));
        }
        let mut encoded = Vec::with_capacity(n);
        for i in 0..n {
            let label = r.u8("a label")?;
            if label as usize >= k {
                return Err(r.format(
                    &format!("a label below {k} ({want} image {i})"),
                    label.to_string(),
                ));
            }
            let len = r.u32("an image length")? as usize;
            encoded.push((label, r.take(len, "the image's bytes")?));
        }
        let (split, s) = decode(path, want, &encoded, shape)?;
        shape = Some(s);
        splits.push(split);
    }
    if r.at != bytes.len() {
        return Err(r.format(
            "the end of the file",
            format!("{} more bytes", bytes.len() - r.at),
        ));
    }
    let (channels, width, height) = shape.expect("two splits were read");
    let test = splits.pop().expect("two splits");
    let train = splits.pop().expect("two splits");
    if train.is_empty() || test.is_empty() {
        return Err(DataError::Invalid(format!(
            "{}: an empty train or test split",
            path.display()
        )));
    }
    Ok(Dataset {
        name: name.into(),
        classes,
        shape: ImageShape {
            channels,
            height: height as usize,
            width: width as usize,
        },
        train,
        test,
    })
}

/// Decodes one split's images to NCHW bytes; all must share the first image's size and
/// kind (colour or grey), or `shape`, the other split's.
fn decode(
    path: &Path,
    split: &str,
    encoded: &[(u8, &[u8])],
    mut shape: Option<(usize, u32, u32)>,
) -> Result<(Split, (usize, u32, u32)), DataError> {
    let mut out = Split::default();
    for (i, (label, bytes)) in encoded.iter().enumerate() {
        let at = || PathBuf::from(format!("{}: {split} image {i}", path.display()));
        let img = image::load_from_memory(bytes).map_err(|e| DataError::Format {
            path: at(),
            expected: "a decodable JPEG or PNG image".into(),
            found: e.to_string(),
        })?;
        let this = (
            if img.color().has_color() { 3 } else { 1 },
            img.width(),
            img.height(),
        );
        let want = *shape.get_or_insert(this);
        if this != want {
            return Err(DataError::Format {
                path: at(),
                expected: format!("{}x{}x{} like the first image", want.0, want.1, want.2),
                found: format!("{}x{}x{}", this.0, this.1, this.2),
            });
        }
        if this.0 == 3 {
            let rgb = img.into_rgb8();
            for c in 0..3 {
                out.images.extend(rgb.as_raw().iter().skip(c).step_by(3));
            }
        } else {
            out.images.extend(img.into_luma8().as_raw());
        }
        out.labels.push(u16::from(*label));
    }
    Ok((out, shape.unwrap_or((3, 0, 0))))
}

/// A cursor over the file's bytes whose reads fail, naming what was expected, instead of
/// running past the end.
struct Reader<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn format(&self, expected: &str, found: String) -> DataError {
        DataError::Format {
            path: self.path.to_path_buf(),
            expected: format!("{expected} at byte {}", self.at),
            found,
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DataError> {
        let left = self.bytes.len() - self.at;
        if n > left {
            return Err(self.format(what, format!("the end of the file ({left} bytes left)")));
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8, DataError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, DataError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn text(&mut self, what: &str) -> Result<String, DataError> {
        let n = self.u8(what)? as usize;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| self.format(what, "bytes that are not UTF-8".into()))
    }
}

/// The bytes of a packed file of `train` and `test` images (each `(label, encoded image)`)
/// of `classes`: the inverse of [`parse`], for tests and tools.
pub fn write(classes: &[&str], train: &[(u8, Vec<u8>)], test: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.push(classes.len() as u8);
    for c in classes {
        out.push(c.len() as u8);
        out.extend(c.as_bytes());
    }
    for (name, items) in SPLITS.iter().zip([train, test]) {
        out.push(name.len() as u8);
        out.extend(name.as_bytes());
        out.extend((items.len() as u32).to_le_bytes());
        for (label, data) in items {
            out.push(*label);
            out.extend((data.len() as u32).to_le_bytes());
            out.extend(data);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A w x h PNG, colour or grey, with pixels from `seed`.
    fn png(w: u32, h: u32, colour: bool, seed: u8) -> Vec<u8> {
        let mut bytes = Vec::new();
        let enc = image::codecs::png::PngEncoder::new(&mut bytes);
        let c = if colour { 3 } else { 1 };
        let px: Vec<u8> = (0..w * h * c)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect();
        let kind = if colour {
            image::ExtendedColorType::Rgb8
        } else {
            image::ExtendedColorType::L8
        };
        image::ImageEncoder::write_image(enc, &px, w, h, kind).unwrap();
        bytes
    }

    #[test]
    fn round_trip_keeps_pixels_labels_and_classes() {
        let train = vec![(0, png(4, 3, true, 1)), (1, png(4, 3, true, 2))];
        let test = vec![(1, png(4, 3, true, 3))];
        let bytes = write(&["cat", "dog"], &train, &test);
        let d = parse(Path::new("x.bin"), &bytes, "tiny").unwrap();
        assert_eq!(d.classes, vec!["cat", "dog"]);
        assert_eq!(
            d.shape,
            ImageShape {
                channels: 3,
                height: 3,
                width: 4
            }
        );
        assert_eq!(
            (d.train.labels.clone(), d.test.labels.clone()),
            (vec![0, 1], vec![1])
        );
        // Planar: image 0's red plane holds every third interleaved value.
        let want: Vec<u8> = (0..12)
            .map(|i| ((i * 3) as u8).wrapping_mul(7).wrapping_add(1))
            .collect();
        assert_eq!(&d.train.images[..12], &want[..]);
        assert_eq!(d.train.images.len(), 2 * 36);
        let grey = write(
            &["a"],
            &[(0, png(2, 2, false, 0))],
            &[(0, png(2, 2, false, 9))],
        );
        assert_eq!(parse(Path::new("g"), &grey, "g").unwrap().shape.channels, 1);
    }

    #[test]
    fn damage_is_an_error_naming_the_cause() {
        let train = vec![(0, png(4, 4, true, 1)), (1, png(4, 4, true, 2))];
        let test = vec![(0, png(4, 4, true, 3))];
        let good = write(&["a", "b"], &train, &test);
        // Every cut and every byte set to 0x00 and 0xFF: an error or a dataset, no panic.
        for end in 0..good.len() {
            assert!(
                parse(Path::new("cut"), &good[..end], "x").is_err(),
                "cut at {end}"
            );
        }
        for i in 0..good.len() {
            for v in [0x00, 0xFF] {
                let mut bad = good.clone();
                bad[i] = v;
                let _ = parse(Path::new("bad"), &bad, "x");
            }
        }
        let err = |bytes: &[u8]| {
            parse(Path::new("f.bin"), bytes, "x")
                .unwrap_err()
                .to_string()
        };
        assert!(err(b"GIF89a..").contains("magic"), "{}", err(b"GIF89a.."));
        let label = write(&["a"], &[(3, png(4, 4, true, 1))], &test[..0]);
        assert!(err(&label).contains("a label below 1"), "{}", err(&label));
        let mixed = write(
            &["a"],
            &[(0, png(4, 4, true, 1)), (0, png(5, 4, true, 1))],
            &test,
        );
        assert!(err(&mixed).contains("train image 1"), "{}", err(&mixed));
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(
            err(&trailing).contains("1 more bytes"),
            "{}",
            err(&trailing)
        );
    }
}
