//! A minimal reader for (gzipped) ustar archives: enough for the CIFAR tarballs.
//!
//! Regular files and directories are extracted; GNU long names (`L`) and pax `path` records
//! are honoured; links and devices are skipped. Member paths that are absolute or climb out
//! with `..` are refused, so an archive cannot write outside its destination.

use std::fs;
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;

use crate::data::DataError;

const BLOCK: usize = 512;

/// Extracts the gzipped tar archive `archive` under `dest` and returns the files written
/// (relative to `dest`), in archive order.
pub fn extract_tar_gz(archive: &Path, dest: &Path) -> Result<Vec<PathBuf>, DataError> {
    let file = fs::File::open(archive).map_err(|e| io_error(archive, e))?;
    let reader = GzDecoder::new(BufReader::with_capacity(1 << 16, file));
    extract_tar(reader, archive, dest)
}

/// Extracts an uncompressed tar stream; `archive` only names the source in errors.
pub fn extract_tar(
    mut reader: impl Read,
    archive: &Path,
    dest: &Path,
) -> Result<Vec<PathBuf>, DataError> {
    let format = |expected: &str, found: String| DataError::Format {
        path: archive.to_path_buf(),
        expected: expected.to_string(),
        found,
    };
    fs::create_dir_all(dest).map_err(|e| io_error(dest, e))?;
    let mut written = Vec::new();
    let mut header = [0u8; BLOCK];
    // A name carried by a GNU `L` entry or a pax header for the entry that follows it.
    let mut long_name: Option<String> = None;
    loop {
        if !read_block(&mut reader, &mut header).map_err(|e| io_error(archive, e))? {
            // The stream ended without the two zero blocks; accept it as many tools do.
            break;
        }
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let stored = parse_octal(&header[148..156])
            .ok_or_else(|| format("a tar header checksum", "unreadable digits".into()))?;
        let computed: u64 = header
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    b as u64
                }
            })
            .sum();
        if stored != computed {
            return Err(format(
                "a valid tar header (a .tar.gz archive)",
                format!("header checksum {stored}, computed {computed}"),
            ));
        }
        let size = parse_size(&header[124..136])
            .ok_or_else(|| format("a tar member size", "unreadable digits".into()))?;
        let kind = header[156];
        let name = match long_name.take() {
            Some(name) => name,
            None => header_name(&header),
        };
        match kind {
            b'L' | b'x' => {
                let data = read_exact_vec(&mut reader, size).map_err(|e| io_error(archive, e))?;
                skip_padding(&mut reader, size).map_err(|e| io_error(archive, e))?;
                long_name = if kind == b'L' {
                    Some(c_string(&data))
                } else {
                    pax_path(&data)
                };
            }
            b'0' | 0 | b'7' | b'5' => {
                let rel = safe_relative(&name).ok_or_else(|| {
                    format(
                        "member paths inside the destination",
                        format!("member `{name}`"),
                    )
                })?;
                let target = dest.join(&rel);
                let is_dir = kind == b'5' || name.ends_with('/');
                if rel.as_os_str().is_empty() && !is_dir {
                    return Err(format("a file name", format!("member `{name}`")));
                }
                if is_dir {
                    fs::create_dir_all(&target).map_err(|e| io_error(&target, e))?;
                    skip_bytes(&mut reader, size).map_err(|e| io_error(archive, e))?;
                } else {
                    if let Some(parent) = target.parent() {
                        fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
                    }
                    let mut out = fs::File::create(&target).map_err(|e| io_error(&target, e))?;
                    let copied = io::copy(&mut (&mut reader).take(size), &mut out)
                        .map_err(|e| io_error(&target, e))?;
                    if copied != size {
                        return Err(format(
                            "a complete archive",
                            format!("member `{name}` cut short at {copied} of {size} bytes"),
                        ));
                    }
                    written.push(rel);
                }
                skip_padding(&mut reader, size).map_err(|e| io_error(archive, e))?;
            }
            _ => {
                // Links, devices, global pax headers: nothing the datasets need.
                skip_bytes(&mut reader, size).map_err(|e| io_error(archive, e))?;
                skip_padding(&mut reader, size).map_err(|e| io_error(archive, e))?;
            }
        }
    }
    Ok(written)
}

fn io_error(path: &Path, source: io::Error) -> DataError {
    DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Fills `buf`; `Ok(false)` on a clean end of stream before the first byte.
fn read_block(reader: &mut impl Read, buf: &mut [u8; BLOCK]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < BLOCK {
        match reader.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn read_exact_vec(reader: &mut impl Read, size: u64) -> io::Result<Vec<u8>> {
    // Name records are small; refuse absurd sizes instead of allocating them.
    if size > 1 << 20 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("tar name record of {size} bytes"),
        ));
    }
    let mut data = vec![0; size as usize];
    reader.read_exact(&mut data)?;
    Ok(data)
}

fn skip_bytes(reader: &mut impl Read, size: u64) -> io::Result<()> {
    let skipped = io::copy(&mut reader.take(size), &mut io::sink())?;
    if skipped == size {
        Ok(())
    } else {
        Err(io::ErrorKind::UnexpectedEof.into())
    }
}

fn skip_padding(reader: &mut impl Read, size: u64) -> io::Result<()> {
    skip_bytes(reader, (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64)
}

/// `prefix/name` of a ustar header (plain `name` for old-style headers).
fn header_name(header: &[u8; BLOCK]) -> String {
    let name = c_string(&header[0..100]);
    let ustar = &header[257..262] == b"ustar";
    let prefix = if ustar {
        c_string(&header[345..500])
    } else {
        String::new()
    };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Octal digits padded with spaces or NULs.
fn parse_octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let digits = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(digits, 8).ok()
}

/// A size field: octal, or GNU base-256 (high bit set) for members over 8 GiB.
fn parse_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut value: u64 = (field[0] & 0x7f) as u64;
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(value);
    }
    parse_octal(field)
}

/// The `path` value of a pax extended header (`"<len> path=<value>\n"` records).
fn pax_path(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    text.lines().find_map(|record| {
        let (_, kv) = record.split_once(' ')?;
        kv.strip_prefix("path=").map(str::to_string)
    })
}

/// `name` as a relative path of plain components (empty for `./`), or `None` if it is
/// absolute or uses `..`.
fn safe_relative(name: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}
