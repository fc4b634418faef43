//! A small reader for MATLAB level-5 MAT-files (the format of SVHN's `.mat` files).
//!
//! Just enough of the format for numeric arrays: a 128-byte header, then data elements,
//! each a tag (type, byte count) and its data padded to 8 bytes. Tags whose count fits in
//! 2 bytes may use the "small data element" form (tag and up to 4 data bytes in 8 bytes).
//! Variables are `miMATRIX` elements, optionally wrapped in a zlib `miCOMPRESSED` element.
//! Cell arrays, structs, sparse and object arrays are skipped, not decoded.

use std::io::Read;
use std::ops::Range;
use std::path::Path;

use super::DataError;
use super::files::{format_err, read};

const HEADER_LEN: usize = 128;

// Data element types.
const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;

/// Array classes (`mxDOUBLE_CLASS` .. `mxUINT64_CLASS`) whose data we decode.
const NUMERIC_CLASSES: std::ops::RangeInclusive<u8> = 6..=15;

/// The values of a numeric variable: bytes kept as they are, anything else widened.
#[derive(Clone, Debug, PartialEq)]
pub enum MatData {
    U8(Vec<u8>),
    F64(Vec<f64>),
}

impl MatData {
    pub fn len(&self) -> usize {
        match self {
            MatData::U8(v) => v.len(),
            MatData::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One numeric variable: its values are in column-major (Fortran) order over `dims`.
#[derive(Clone, Debug, PartialEq)]
pub struct MatVar {
    pub name: String,
    /// MATLAB array class, e.g. 6 for double, 9 for uint8.
    pub class: u8,
    pub dims: Vec<usize>,
    /// The real part (an imaginary part, if any, is ignored).
    pub data: MatData,
}

#[derive(Clone, Copy)]
enum Endian {
    Little,
    Big,
}

/// A cursor over a byte buffer that reads data elements.
struct Elements<'a> {
    bytes: &'a [u8],
    pos: usize,
    endian: Endian,
}

/// One data element: its type and where its data lies in the buffer.
struct Element {
    ty: u32,
    data: Range<usize>,
}

impl Endian {
    fn u32(self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        match self {
            Endian::Little => u32::from_le_bytes(a),
            Endian::Big => u32::from_be_bytes(a),
        }
    }
}

impl Elements<'_> {
    /// The next element, or `None` at the end of the buffer.
    fn next(&mut self) -> Result<Option<Element>, String> {
        let rest = self.bytes.len() - self.pos;
        if rest == 0 {
            return Ok(None);
        }
        if rest < 8 {
            return Err(format!("{rest} stray bytes at offset {}", self.pos));
        }
        let at = self.pos;
        let first = self.endian.u32(&self.bytes[at..at + 4]);
        let (ty, data, next) = if first >> 16 != 0 {
            // Small data element: count in the high half, data in the following 4 bytes.
            let (ty, len) = (first & 0xffff, (first >> 16) as usize);
            if len > 4 {
                return Err(format!("small element of {len} bytes at offset {at}"));
            }
            (ty, at + 4..at + 4 + len, at + 8)
        } else {
            let len = self.endian.u32(&self.bytes[at + 4..at + 8]) as usize;
            let end = (at + 8)
                .checked_add(len)
                .filter(|&end| end <= self.bytes.len())
                .ok_or_else(|| {
                    format!(
                        "element of {len} bytes at offset {at}, but only {} bytes remain",
                        rest - 8
                    )
                })?;
            // Compressed elements are not padded; the rest are padded to 8 bytes.
            let next = if first == MI_COMPRESSED {
                end
            } else {
                (end.next_multiple_of(8)).min(self.bytes.len())
            };
            (first, at + 8..end, next)
        };
        self.pos = next;
        Ok(Some(Element { ty, data }))
    }

    /// The next element, which must exist and have one of `types`.
    fn expect(&mut self, what: &str, types: &[u32]) -> Result<Element, String> {
        match self.next()? {
            Some(e) if types.contains(&e.ty) => Ok(e),
            Some(e) => Err(format!("{what} of type {types:?}, found type {}", e.ty)),
            None => Err(format!("{what}, found end of array")),
        }
    }
}

/// Byte width of a numeric element type.
fn width(ty: u32) -> Option<usize> {
    match ty {
        MI_INT8 | MI_UINT8 => Some(1),
        MI_INT16 | MI_UINT16 => Some(2),
        MI_INT32 | MI_UINT32 | MI_SINGLE => Some(4),
        MI_DOUBLE | MI_INT64 | MI_UINT64 => Some(8),
        _ => None,
    }
}

/// Widens numeric element data to `f64`.
fn to_f64(ty: u32, bytes: &[u8], endian: Endian) -> Vec<f64> {
    let w = width(ty).unwrap_or(1);
    bytes
        .chunks_exact(w)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..w].copy_from_slice(c);
            if let Endian::Big = endian {
                b[..w].reverse();
            }
            // `b` now holds the value little-endian in its first `w` bytes.
            let le = u64::from_le_bytes(b);
            match ty {
                MI_INT8 => f64::from(le as u8 as i8),
                MI_UINT8 => f64::from(le as u8),
                MI_INT16 => f64::from(le as u16 as i16),
                MI_UINT16 => f64::from(le as u16),
                MI_INT32 => f64::from(le as u32 as i32),
                MI_UINT32 => f64::from(le as u32),
                MI_SINGLE => f64::from(f32::from_bits(le as u32)),
                MI_INT64 => le as i64 as f64,
                MI_UINT64 => le as f64,
                _ => f64::from_bits(le),
            }
        })
        .collect()
}

/// What a `miMATRIX` element holds, with its data still in the buffer.
struct Matrix {
    name: String,
    class: u8,
    dims: Vec<usize>,
    /// Element type and range of the real part (numeric classes only).
    real: Option<(u32, Range<usize>)>,
}

/// Parses the sub-elements of a `miMATRIX` whose data is `range` of `bytes`.
fn parse_matrix(bytes: &[u8], range: Range<usize>, endian: Endian) -> Result<Matrix, String> {
    let mut els = Elements {
        bytes: &bytes[..range.end],
        pos: range.start,
        endian,
    };
    let flags = els.expect("array flags", &[MI_UINT32])?;
    if flags.data.len() < 8 {
        return Err(format!(
            "8 bytes of array flags, found {}",
            flags.data.len()
        ));
    }
    let class = (endian.u32(&bytes[flags.data.clone()]) & 0xff) as u8;
    let dims_el = els.expect("dimensions", &[MI_INT32])?;
    let dims = bytes[dims_el.data]
        .chunks_exact(4)
        .map(|c| {
            let d = endian.u32(c) as i32;
            usize::try_from(d).map_err(|_| format!("a non-negative dimension, found {d}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let name_el = els.expect("array name", &[MI_INT8, MI_UINT8])?;
    let name = String::from_utf8_lossy(&bytes[name_el.data]).into_owned();
    let real = if NUMERIC_CLASSES.contains(&class) {
        let el = els.expect(
            "numeric data",
            &[
                MI_INT8, MI_UINT8, MI_INT16, MI_UINT16, MI_INT32, MI_UINT32, MI_SINGLE, MI_DOUBLE,
                MI_INT64, MI_UINT64,
            ],
        )?;
        let numel = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or("dimensions that fit in memory")?;
        let w = width(el.ty).unwrap_or(1);
        if el.data.len() != numel.saturating_mul(w) {
            return Err(format!(
                "{numel} values for `{name}` of {dims:?}, found {} bytes of {w}-byte values",
                el.data.len()
            ));
        }
        Some((el.ty, el.data))
    } else {
        None
    };
    Ok(Matrix {
        name,
        class,
        dims,
        real,
    })
}

/// The buffer a matrix was parsed from: the file, or an inflated element we own.
enum Buf<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

/// Turns a parsed matrix into a variable, moving the bytes out of an owned buffer (so the
/// 200 MB SVHN pixel array is not copied) and copying them otherwise.
fn into_var(m: Matrix, buf: Buf, endian: Endian) -> Option<MatVar> {
    let (ty, range) = m.real?;
    let data = match (ty, buf) {
        (MI_UINT8, Buf::Owned(mut v)) => {
            v.truncate(range.end);
            v.drain(..range.start);
            MatData::U8(v)
        }
        (MI_UINT8, Buf::Borrowed(b)) => MatData::U8(b[range].to_vec()),
        (_, Buf::Borrowed(b)) => MatData::F64(to_f64(ty, &b[range], endian)),
        (_, Buf::Owned(v)) => MatData::F64(to_f64(ty, &v[range], endian)),
    };
    Some(MatVar {
        name: m.name,
        class: m.class,
        dims: m.dims,
        data,
    })
}

/// Inflates a `miCOMPRESSED` element, sizing the buffer from the inner tag when sane.
fn inflate(compressed: &[u8], endian: Endian) -> std::io::Result<Vec<u8>> {
    let mut z = flate2::read::ZlibDecoder::new(compressed);
    let mut tag = [0u8; 8];
    z.read_exact(&mut tag)?;
    let count = [tag[4], tag[5], tag[6], tag[7]];
    let count = match endian {
        Endian::Little => u32::from_le_bytes(count),
        Endian::Big => u32::from_be_bytes(count),
    } as usize;
    // The element never unpacks beyond its tag and the count it declares (padded to 8),
    // so a stream built to inflate to gigabytes stops there. Deflate expands at most
    // ~1032x, which caps what a corrupt count can make us reserve.
    let declared = count + 16;
    let mut out = Vec::with_capacity(declared.min(compressed.len().saturating_mul(1032)));
    out.extend_from_slice(&tag);
    (&mut z)
        .take((declared - tag.len()) as u64 + 1)
        .read_to_end(&mut out)?;
    if out.len() > declared {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a compressed element unpacks beyond the {declared} bytes its tag declares"),
        ));
    }
    Ok(out)
}

/// Reads the numeric variables named in `wanted` from a level-5 MAT-file. Variables not
/// wanted, and non-numeric ones, are skipped.
pub fn read_vars(path: &Path, wanted: &[&str]) -> Result<Vec<MatVar>, DataError> {
    let bytes = read(path)?;
    parse(&bytes, wanted).map_err(|(expected, found)| format_err(path, expected, found))
}

/// The parser behind [`read_vars`]; errors are (expected, found).
fn parse(bytes: &[u8], wanted: &[&str]) -> Result<Vec<MatVar>, (String, String)> {
    let mat5 = || "a MATLAB level-5 MAT-file".to_string();
    if bytes.len() < HEADER_LEN {
        return Err((mat5(), format!("only {} bytes", bytes.len())));
    }
    if bytes.starts_with(b"MATLAB 7.3") || bytes.starts_with(b"\x89HDF") {
        return Err((
            "a level-5 MAT-file (saved with -v7 or earlier)".into(),
            "a v7.3 (HDF5) MAT-file".into(),
        ));
    }
    let endian = match &bytes[126..128] {
        b"IM" => Endian::Little,
        b"MI" => Endian::Big,
        other => {
            return Err((
                format!("{} with endian indicator IM or MI", mat5()),
                format!("{other:?}"),
            ));
        }
    };
    let mut els = Elements {
        bytes,
        pos: HEADER_LEN,
        endian,
    };
    let mut vars = Vec::new();
    let bad = |e: String| ("a well-formed data element".to_string(), e);
    while let Some(el) = els.next().map_err(bad)? {
        let var = match el.ty {
            MI_MATRIX => {
                let m = parse_matrix(bytes, el.data, endian).map_err(bad)?;
                if !wanted.contains(&m.name.as_str()) {
                    continue;
                }
                into_var(m, Buf::Borrowed(bytes), endian)
            }
            MI_COMPRESSED => {
                let inner = inflate(&bytes[el.data.clone()], endian).map_err(|e| {
                    (
                        "valid zlib data".to_string(),
                        format!("{e} in the element at offset {}", el.data.start - 8),
                    )
                })?;
                let mut inner_els = Elements {
                    bytes: &inner,
                    pos: 0,
                    endian,
                };
                let Some(m) = inner_els.next().map_err(bad)? else {
                    continue;
                };
                if m.ty != MI_MATRIX {
                    continue;
                }
                let m = parse_matrix(&inner, m.data, endian).map_err(bad)?;
                if !wanted.contains(&m.name.as_str()) {
                    continue;
                }
                into_var(m, Buf::Owned(inner), endian)
            }
            // Other top-level elements (e.g. subsystem data) carry no variables we read.
            _ => continue,
        };
        vars.extend(var);
    }
    Ok(vars)
}

/// A minimal MAT-file writer for tests of this reader and of the SVHN loader.
#[cfg(test)]
pub(crate) mod write {
    use std::io::Write;

    pub(crate) struct Writer {
        pub big_endian: bool,
        pub compress: bool,
        pub out: Vec<u8>,
    }

    impl Writer {
        pub(crate) fn new(big_endian: bool, compress: bool) -> Self {
            let mut out = vec![b' '; 116];
            out[..22].copy_from_slice(b"MATLAB 5.0 MAT-file, h");
            out.extend_from_slice(&[0; 8]);
            let mut w = Self {
                big_endian,
                compress,
                out: Vec::new(),
            };
            let version = w.u16(0x0100);
            out.extend_from_slice(&version);
            out.extend_from_slice(if big_endian { b"MI" } else { b"IM" });
            w.out = out;
            w
        }

        fn u16(&self, v: u16) -> [u8; 2] {
            if self.big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        }

        pub(crate) fn u32(&self, v: u32) -> [u8; 4] {
            if self.big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        }

        pub(crate) fn f64s(&self, v: &[f64]) -> Vec<u8> {
            v.iter()
                .flat_map(|x| {
                    if self.big_endian {
                        x.to_be_bytes()
                    } else {
                        x.to_le_bytes()
                    }
                })
                .collect()
        }

        /// One element, in the small form when it fits in 4 bytes.
        fn element(&self, ty: u32, data: &[u8]) -> Vec<u8> {
            let mut e = Vec::new();
            if data.len() <= 4 {
                e.extend_from_slice(&self.u32(((data.len() as u32) << 16) | ty));
                e.extend_from_slice(data);
                e.resize(8, 0);
            } else {
                e.extend_from_slice(&self.u32(ty));
                e.extend_from_slice(&self.u32(data.len() as u32));
                e.extend_from_slice(data);
                e.resize(e.len().next_multiple_of(8), 0);
            }
            e
        }

        /// Appends a numeric variable whose real part has element type `ty`.
        pub(crate) fn var(&mut self, name: &str, class: u8, dims: &[u32], ty: u32, data: &[u8]) {
            let mut flags = self.u32(u32::from(class)).to_vec();
            flags.extend_from_slice(&[0; 4]);
            let dims: Vec<u8> = dims.iter().flat_map(|&d| self.u32(d)).collect();
            let mut body = self.element(super::MI_UINT32, &flags);
            body.extend(self.element(super::MI_INT32, &dims));
            body.extend(self.element(super::MI_INT8, name.as_bytes()));
            body.extend(self.element(ty, data));
            let mut matrix = self.u32(super::MI_MATRIX).to_vec();
            matrix.extend_from_slice(&self.u32(body.len() as u32));
            matrix.extend(body);
            if self.compress {
                let mut z =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                z.write_all(&matrix).expect("zlib");
                let z = z.finish().expect("zlib");
                self.out.extend_from_slice(&self.u32(super::MI_COMPRESSED));
                self.out.extend_from_slice(&self.u32(z.len() as u32));
                self.out.extend(z);
            } else {
                self.out.extend(matrix);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::write::Writer;
    use super::*;

    fn sample(big_endian: bool, compress: bool) -> Vec<u8> {
        let mut w = Writer::new(big_endian, compress);
        let ys = w.f64s(&[1.5, -2.0, 10.0]);
        w.var("skip", 6, &[1, 1], MI_DOUBLE, &w.f64s(&[3.0]));
        w.var("X", 9, &[2, 3], MI_UINT8, &[1, 2, 3, 4, 5, 6]);
        w.var("y", 6, &[3, 1], MI_DOUBLE, &ys);
        // A double stored compactly as int16, as MATLAB does when values fit.
        let small: Vec<u8> = [-7i16, 300]
            .iter()
            .flat_map(|v| {
                if big_endian {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                }
            })
            .collect();
        w.var("s", 6, &[1, 2], MI_INT16, &small);
        // One byte of data: exercises the small data element form.
        w.var("b", 9, &[1, 1], MI_UINT8, &[42]);
        w.out
    }

    #[test]
    fn reads_all_layouts() {
        for big_endian in [false, true] {
            for compress in [false, true] {
                let vars = parse(&sample(big_endian, compress), &["X", "y", "s", "b"])
                    .unwrap_or_else(|e| panic!("{e:?}"));
                let names: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
                assert_eq!(names, ["X", "y", "s", "b"]);
                assert_eq!(vars[0].dims, [2, 3]);
                assert_eq!(vars[0].data, MatData::U8(vec![1, 2, 3, 4, 5, 6]));
                assert_eq!(vars[1].data, MatData::F64(vec![1.5, -2.0, 10.0]));
                assert_eq!(vars[2].data, MatData::F64(vec![-7.0, 300.0]));
                assert_eq!(vars[3].data, MatData::U8(vec![42]));
            }
        }
    }

    /// A compressed element whose stream goes on past the element it declares (50 MB of
    /// zeros that compress to little) is refused once it passes that size.
    #[test]
    fn compressed_elements_unpack_no_further_than_they_declare() {
        use std::io::Write;
        let mut plain = Writer::new(false, false);
        plain.var("X", 9, &[2, 3], MI_UINT8, &[1, 2, 3, 4, 5, 6]);
        let mut inflated = plain.out[128..].to_vec();
        inflated.resize(inflated.len() + (50 << 20), 0);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&inflated).unwrap();
        let z = z.finish().unwrap();
        let mut file = Writer::new(false, true).out;
        file.extend_from_slice(&MI_COMPRESSED.to_le_bytes());
        file.extend_from_slice(&(z.len() as u32).to_le_bytes());
        file.extend(z);
        let (_, why) = parse(&file, &["X"]).unwrap_err();
        assert!(why.contains("beyond"), "{why}");
    }

    #[test]
    fn rejects_bad_files() {
        let err = |bytes: &[u8]| parse(bytes, &["X"]).unwrap_err();
        assert!(err(b"short").1.contains("5 bytes"));
        let mut v73 = sample(false, false);
        v73[..10].copy_from_slice(b"MATLAB 7.3");
        assert!(err(&v73).1.contains("v7.3"));
        let mut truncated = sample(false, false);
        truncated.truncate(truncated.len() - 20);
        assert!(
            err(&truncated).1.contains("remain"),
            "{:?}",
            err(&truncated)
        );
        let mut corrupt = sample(false, true);
        let n = corrupt.len();
        corrupt[n - 30..n - 10].fill(0xAA);
        assert!(parse(&corrupt, &["X", "y", "s", "b"]).is_err());
    }
}
