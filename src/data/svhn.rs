//! SVHN cropped digits (`train_32x32.mat`, `test_32x32.mat`).
//!
//! Each file holds `X`, a uint8 array of 32x32x3xN in column-major order (so pixel
//! (row r, column c, channel ch) of image n is at `r + 32c + 1024ch + 3072n`), and `y`,
//! N labels 1..=10 where 10 stands for the digit 0.

use std::path::Path;

use super::files::format_err;
use super::mat::{MatData, MatVar, read_vars};
use super::{DataError, Dataset, ImageShape, Split};

pub const TRAIN: &str = "train_32x32.mat";
pub const TEST: &str = "test_32x32.mat";

/// Reads one SVHN `.mat` file into NCHW pixels and labels 0..=9.
pub fn read_split(path: &Path) -> Result<(Split, ImageShape), DataError> {
    let vars = read_vars(path, &["X", "y"])?;
    let mut x = None;
    let mut y = None;
    for v in vars {
        match v.name.as_str() {
            "X" => x = Some(v),
            _ => y = Some(v),
        }
    }
    let missing = |name: &str| format_err(path, format!("a numeric variable `{name}`"), "none");
    let x = x.ok_or_else(|| missing("X"))?;
    let y = y.ok_or_else(|| missing("y"))?;

    // MATLAB drops trailing singleton dimensions (a single image is 32x32x3).
    let mut dims = x.dims.clone();
    if dims.len() < 4 {
        dims.resize(4, 1);
    }
    let [h, w, c, n] = dims[..] else {
        return Err(format_err(
            path,
            "`X` of height x width x channels x count",
            format!("dimensions {:?}", x.dims),
        ));
    };
    if h * w * n == 0 {
        return Err(format_err(
            path,
            "a non-empty `X`",
            format!("dimensions {:?}", x.dims),
        ));
    }
    if c != 1 && c != 3 {
        return Err(format_err(
            path,
            "`X` with 1 or 3 channels",
            format!("dimensions {:?}", x.dims),
        ));
    }
    let labels = labels(path, &y, n)?;
    let pixels = pixels(path, x)?;
    Ok((
        Split {
            images: to_nchw(&pixels, h, w),
            labels,
        },
        ImageShape {
            channels: c,
            height: h,
            width: w,
        },
    ))
}

/// The pixel values as bytes; a double array is accepted when it holds whole 0..=255.
fn pixels(path: &Path, x: MatVar) -> Result<Vec<u8>, DataError> {
    match x.data {
        MatData::U8(v) => Ok(v),
        MatData::F64(v) => v
            .iter()
            .map(|&p| {
                (p.fract() == 0.0 && (0.0..=255.0).contains(&p))
                    .then_some(p as u8)
                    .ok_or_else(|| format_err(path, "`X` values in 0..=255", format!("{p}")))
            })
            .collect(),
    }
}

/// Labels 1..=10 mapped to 0..=9 (10 is the digit 0).
fn labels(path: &Path, y: &MatVar, n: usize) -> Result<Vec<u16>, DataError> {
    let values: Vec<f64> = match &y.data {
        MatData::U8(v) => v.iter().map(|&l| f64::from(l)).collect(),
        MatData::F64(v) => v.clone(),
    };
    if values.len() != n {
        return Err(format_err(
            path,
            format!("{n} labels in `y`, one per image in `X`"),
            format!("{} (dimensions {:?})", values.len(), y.dims),
        ));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            if l.fract() == 0.0 && (1.0..=10.0).contains(&l) {
                Ok((l as u16) % 10)
            } else {
                Err(format_err(
                    path,
                    "labels 1..=10 in `y`",
                    format!("{l} at index {i}"),
                ))
            }
        })
        .collect()
}

/// Transposes each column-major `h x w` plane into a row-major one.
fn to_nchw(src: &[u8], h: usize, w: usize) -> Vec<u8> {
    let mut out = vec![0u8; src.len()];
    let plane = h * w;
    for (dst, src) in out.chunks_exact_mut(plane).zip(src.chunks_exact(plane)) {
        for (col, column) in src.chunks_exact(h).enumerate() {
            for (row, &p) in column.iter().enumerate() {
                dst[row * w + col] = p;
            }
        }
    }
    out
}

/// Loads SVHN from a directory holding [`TRAIN`] and [`TEST`].
pub fn load(dir: &Path) -> Result<Dataset, DataError> {
    let (train, shape) = read_split(&dir.join(TRAIN))?;
    let (test, test_shape) = read_split(&dir.join(TEST))?;
    if test_shape != shape {
        return Err(format_err(
            &dir.join(TEST),
            format!("images of {shape:?} like {TRAIN}"),
            format!("{test_shape:?}"),
        ));
    }
    Ok(Dataset {
        name: "svhn".into(),
        classes: (0..10).map(|d| d.to_string()).collect(),
        shape,
        train,
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::files::testutil::TempDir;
    use crate::data::mat::write::Writer;

    const MI_UINT8: u32 = 2;
    const MI_DOUBLE: u32 = 9;

    /// A small SVHN-like file of `n` images of 2x3x3 (h x w x c) and its expected NCHW
    /// pixels; labels are written as doubles or as bytes.
    fn svhn_file(
        n: usize,
        labels: &[f64],
        compress: bool,
        byte_labels: bool,
    ) -> (Vec<u8>, Vec<u8>) {
        let (h, w, c) = (2, 3, 3);
        let mut nchw = vec![0u8; n * c * h * w];
        let mut colmajor = vec![0u8; n * c * h * w];
        for i in 0..n {
            for ch in 0..c {
                for r in 0..h {
                    for col in 0..w {
                        let v = (i * 50 + ch * 10 + r * 3 + col) as u8;
                        nchw[((i * c + ch) * h + r) * w + col] = v;
                        colmajor[r + h * (col + w * (ch + c * i))] = v;
                    }
                }
            }
        }
        let mut m = Writer::new(false, compress);
        m.var(
            "X",
            9,
            &[h as u32, w as u32, c as u32, n as u32],
            MI_UINT8,
            &colmajor,
        );
        if byte_labels {
            let ys: Vec<u8> = labels.iter().map(|&l| l as u8).collect();
            m.var("y", 6, &[labels.len() as u32, 1], MI_UINT8, &ys);
        } else {
            let ys = m.f64s(labels);
            m.var("y", 6, &[labels.len() as u32, 1], MI_DOUBLE, &ys);
        }
        (m.out, nchw)
    }

    #[test]
    fn round_trip_plain_and_compressed() {
        let dir = TempDir::new("svhn");
        let (train, train_px) = svhn_file(3, &[10.0, 1.0, 9.0], false, false);
        let (test, test_px) = svhn_file(2, &[5.0, 10.0], true, true);
        dir.write(TRAIN, &train);
        dir.write(TEST, &test);
        let ds = load(dir.path()).expect("load");
        assert_eq!(
            ds.shape,
            ImageShape {
                channels: 3,
                height: 2,
                width: 3
            }
        );
        assert_eq!(ds.train.labels, vec![0, 1, 9]);
        assert_eq!(ds.train.images, train_px);
        assert_eq!(ds.test.labels, vec![5, 0]);
        assert_eq!(ds.test.images, test_px);
    }

    #[test]
    fn bad_labels_and_counts_name_the_file() {
        let dir = TempDir::new("svhn-bad");
        let (bytes, _) = svhn_file(2, &[0.0, 3.0], true, false);
        let path = dir.write("zero.mat", &bytes);
        let msg = read_split(&path).unwrap_err().to_string();
        assert!(
            msg.contains("zero.mat") && msg.contains("0 at index 0"),
            "{msg}"
        );

        let (bytes, _) = svhn_file(2, &[1.0, 2.0, 3.0], false, false);
        let path = dir.write("count.mat", &bytes);
        let msg = read_split(&path).unwrap_err().to_string();
        assert!(
            msg.contains("count.mat") && msg.contains("2 labels"),
            "{msg}"
        );

        let (mut bytes, _) = svhn_file(2, &[1.0, 2.0], false, false);
        bytes.truncate(200);
        let path = dir.write("short.mat", &bytes);
        let msg = read_split(&path).unwrap_err().to_string();
        assert!(msg.contains("short.mat"), "{msg}");

        let msg = load(dir.path()).unwrap_err().to_string();
        assert!(msg.contains(TRAIN), "{msg}");
    }

    /// Every cut and every byte set to 0x00 or 0xFF, in a plain and a compressed file:
    /// an error or a valid result each time, never a panic. (The mutation suite in
    /// `tests/fuzz.rs` cannot write MAT files: the writer lives in these unit tests.)
    #[test]
    fn every_cut_and_extreme_byte_gives_an_error_not_a_panic() {
        let dir = TempDir::new("svhn-fuzz");
        for compress in [false, true] {
            let (good, _) = svhn_file(2, &[1.0, 10.0], compress, false);
            let mut mutants: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
            for i in 0..good.len() {
                for v in [0x00, 0xFF] {
                    let mut bad = good.clone();
                    bad[i] = v;
                    mutants.push(bad);
                }
            }
            let path = dir.path().join("mutant.mat");
            for (k, bad) in mutants.iter().enumerate() {
                std::fs::write(&path, bad).unwrap();
                let read = std::panic::catch_unwind(|| read_split(&path).map(|_| ()));
                assert!(read.is_ok(), "compress {compress}: mutant {k} panicked");
            }
        }
    }
}
