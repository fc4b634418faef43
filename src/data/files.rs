//! Small file helpers shared by the format readers, so that every failure names its file.

use std::io::Read;
use std::path::Path;

use super::DataError;

/// The two magic bytes that start every gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads a whole file, wrapping I/O errors with the path.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| io_err(path, source))
}

/// Reads a whole file and gunzips it when it starts with the gzip magic, so that both the
/// downloaded `.gz` and an unpacked copy work whatever the file is called. `promised`
/// reads the unpacked size from the first bytes of the content (see [`gunzip_if_gz`]).
pub(crate) fn read_maybe_gz(
    path: &Path,
    promised: impl Fn(&[u8]) -> Option<usize>,
) -> Result<Vec<u8>, DataError> {
    gunzip_if_gz(path, read(path)?, promised)
}

/// Bytes of content inflated before `promised` is asked for the whole size: enough for
/// any header it reads.
const HEAD: u64 = 64;

/// Unpacks `raw` if it is gzipped (by its magic bytes); `path` names it in errors.
///
/// A small damaged or malicious stream can inflate to gigabytes, so it is unpacked only
/// as far as its content's own header promises (`promised` of the first bytes), or, when
/// that cannot be read, as far as deflate's largest ratio (about 1032x) allows, and is
/// refused the moment it goes beyond.
pub(crate) fn gunzip_if_gz(
    path: &Path,
    raw: Vec<u8>,
    promised: impl Fn(&[u8]) -> Option<usize>,
) -> Result<Vec<u8>, DataError> {
    if !raw.starts_with(&GZIP_MAGIC) {
        return Ok(raw);
    }
    let corrupt =
        |e: std::io::Error| format_err(path, "a valid gzip stream", format!("corrupt data ({e})"));
    let mut z = flate2::read::MultiGzDecoder::new(raw.as_slice());
    let mut out = Vec::new();
    (&mut z).take(HEAD).read_to_end(&mut out).map_err(corrupt)?;
    let deflate_bound = raw.len().saturating_mul(1032);
    let limit = promised(&out).unwrap_or(deflate_bound);
    out.reserve(limit.min(deflate_bound).saturating_sub(out.len()));
    let rest = limit.saturating_sub(out.len()) as u64;
    (&mut z)
        .take(rest.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(corrupt)?;
    if out.len() > limit {
        return Err(format_err(
            path,
            format!("a gzip stream of at most {limit} bytes, as its content's header promises"),
            "more: a damaged file, or one built to exhaust memory",
        ));
    }
    Ok(out)
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn format_err(
    path: &Path,
    expected: impl Into<String>,
    found: impl Into<String>,
) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        expected: expected.into(),
        found: found.into(),
    }
}

/// Test helpers: unique scratch directories under the system temp dir.
#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh, empty directory that is removed when dropped.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir().join(format!(
                "haba-test-{tag}-{}-{n}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).expect("create temp dir");
            Self(dir)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }

        /// Writes `bytes` to `rel` (creating parent directories) and returns the full path.
        pub(crate) fn write(&self, rel: &str, bytes: &[u8]) -> PathBuf {
            let path = self.0.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create parent dir");
            }
            std::fs::write(&path, bytes).expect("write test file");
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Gzips `bytes`.
    pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).expect("gzip");
        enc.finish().expect("gzip")
    }
}
