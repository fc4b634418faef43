//! `--download`: fetch the public datasets from their official mirrors, verify them against
//! the published checksums, and lay them out the way the loaders read them.
//!
//! Every file is written to `<file>.part`, hashed while it streams, and renamed to its final
//! name only when the digest matches; a mismatch deletes the partial file. The CIFAR tarballs
//! are unpacked (by [`extract_tar_gz`], a small ustar reader) and then removed; IDX `.gz`
//! files and SVHN `.mat` files are kept as they are.
//!
//! Layout under the data root `R`:
//! - `R/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`
//! - `R/fashion-mnist/` (the same four names)
//! - `R/cifar10/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin`
//! - `R/cifar100/cifar-100-binary/{train,test}.bin`
//! - `R/svhn/{train,test}_32x32.mat` (the 1.3 GB `extra` split is not fetched)
//!
//! Mirrors: `download(name, root, Some(base))` fetches `<base>/<name>/<file>` instead of the
//! official URL, for tests and for users behind a proxy mirror. The CLI takes that base from
//! the environment variable [`MIRROR_ENV`] (`HABA_MIRROR`) when it is set. Standard
//! `HTTP(S)_PROXY` / `NO_PROXY` variables are honoured as well.

mod md5;
mod tar;

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::Digest as _;

use super::DataError;

pub use md5::Md5;
pub use tar::{extract_tar, extract_tar_gz};

/// Environment variable holding a mirror base URL (see the module documentation).
pub const MIRROR_ENV: &str = "HABA_MIRROR";

/// The mirror base URL from [`MIRROR_ENV`], if it is set and not empty.
pub fn mirror_from_env() -> Option<String> {
    std::env::var(MIRROR_ENV)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// What a downloaded file must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum<'a> {
    /// Lower- or upper-case hex MD5, as the dataset authors (and torchvision) publish them.
    Md5(&'a str),
    /// Hex SHA-256.
    Sha256(&'a str),
    /// No published digest is known: only the byte count can be checked.
    Size(u64),
}

impl Checksum<'_> {
    fn describe(&self) -> String {
        match self {
            Checksum::Md5(hex) => format!("md5 {}", hex.to_ascii_lowercase()),
            Checksum::Sha256(hex) => format!("sha256 {}", hex.to_ascii_lowercase()),
            Checksum::Size(bytes) => format!("{bytes} bytes"),
        }
    }
}

/// One file of a dataset on its server.
#[derive(Clone, Copy, Debug)]
pub struct RemoteFile<'a> {
    pub name: &'a str,
    pub checksum: Checksum<'a>,
}

/// Where a dataset comes from and what it must yield.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    /// Canonical name: the dataset's folder under the data root and under a mirror.
    pub name: &'a str,
    /// Official base URL, ending in `/`.
    pub base_url: &'a str,
    pub files: &'a [RemoteFile<'a>],
    /// Files that unpacking the `.tar.gz` members must produce (relative to the dataset
    /// folder), with their sizes where the format fixes them. When all are present the
    /// archive is not fetched again.
    pub unpacked: &'a [(&'a str, Option<u64>)],
}

/// IDX file names shared by MNIST and Fashion-MNIST.
const IDX_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];

/// CIFAR-10 binary batches: 10,000 records of 1 label byte + 3,072 pixels.
const CIFAR10_BATCH: Option<u64> = Some(10_000 * 3_073);

/// The datasets `--download` knows. The MD5 digests are the ones the dataset authors publish
/// and torchvision checks (MNIST from torchvision's `ossci-datasets` mirror, since the
/// original site no longer serves the files reliably).
pub const SOURCES: &[Source<'static>] = &[
    Source {
        name: "mnist",
        base_url: "https://ossci-datasets.s3.amazonaws.com/mnist/",
        files: &[
            RemoteFile {
                name: IDX_NAMES[0],
                checksum: Checksum::Md5("f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            },
            RemoteFile {
                name: IDX_NAMES[1],
                checksum: Checksum::Md5("d53e105ee54ea40749a09fcbcd1e9432"),
            },
            RemoteFile {
                name: IDX_NAMES[2],
                checksum: Checksum::Md5("9fb629c4189551a2d022fa330f9573f3"),
            },
            RemoteFile {
                name: IDX_NAMES[3],
                checksum: Checksum::Md5("ec29112dd5afa0611ce80d1b7f02629c"),
            },
        ],
        unpacked: &[],
    },
    Source {
        name: "fashion-mnist",
        // Zalando's bucket only answers plain HTTP on its website endpoint; the MD5 check
        // still catches a corrupted or substituted file.
        base_url: "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        files: &[
            RemoteFile {
                name: IDX_NAMES[0],
                checksum: Checksum::Md5("8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            },
            RemoteFile {
                name: IDX_NAMES[1],
                checksum: Checksum::Md5("25c81989df183df01b3e8a0aad5dffbe"),
            },
            RemoteFile {
                name: IDX_NAMES[2],
                checksum: Checksum::Md5("bef4ecab320f06d8554ea6380940ec79"),
            },
            RemoteFile {
                name: IDX_NAMES[3],
                checksum: Checksum::Md5("bb300cfdad3c16e7a12a480ee83cd310"),
            },
        ],
        unpacked: &[],
    },
    Source {
        name: "cifar10",
        base_url: "https://www.cs.toronto.edu/~kriz/",
        files: &[RemoteFile {
            name: "cifar-10-binary.tar.gz",
            checksum: Checksum::Md5("c32a1d4ab5d03f1284b67883e8d87530"),
        }],
        unpacked: &[
            ("cifar-10-batches-bin/data_batch_1.bin", CIFAR10_BATCH),
            ("cifar-10-batches-bin/data_batch_2.bin", CIFAR10_BATCH),
            ("cifar-10-batches-bin/data_batch_3.bin", CIFAR10_BATCH),
            ("cifar-10-batches-bin/data_batch_4.bin", CIFAR10_BATCH),
            ("cifar-10-batches-bin/data_batch_5.bin", CIFAR10_BATCH),
            ("cifar-10-batches-bin/test_batch.bin", CIFAR10_BATCH),
        ],
    },
    Source {
        name: "cifar100",
        base_url: "https://www.cs.toronto.edu/~kriz/",
        files: &[RemoteFile {
            name: "cifar-100-binary.tar.gz",
            checksum: Checksum::Md5("03b5dce01913d631647c71ecec9e9cb8"),
        }],
        // Records of coarse label + fine label + 3,072 pixels.
        unpacked: &[
            ("cifar-100-binary/train.bin", Some(50_000 * 3_074)),
            ("cifar-100-binary/test.bin", Some(10_000 * 3_074)),
        ],
    },
    Source {
        name: "svhn",
        base_url: "http://ufldl.stanford.edu/housenumbers/",
        files: &[
            RemoteFile {
                name: "train_32x32.mat",
                checksum: Checksum::Md5("e26dedcc434d2e4c54c9b2d4a06d8373"),
            },
            RemoteFile {
                name: "test_32x32.mat",
                checksum: Checksum::Md5("eb5a983be6a315427106f1b164d9cef3"),
            },
        ],
        unpacked: &[],
    },
];

/// The downloadable dataset whose canonical name matches `name`, ignoring case, `-` and `_`
/// (so `FashionMNIST`, `fashion_mnist` and `CIFAR-10` work).
pub fn find_source(name: &str) -> Option<&'static Source<'static>> {
    let key = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '-' && *c != '_')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let wanted = key(name);
    SOURCES.iter().find(|s| key(s.name) == wanted)
}

/// Downloads dataset `name` under `dest_root` (see the module documentation for the layout
/// and for `mirror`) and returns the dataset's folder. Files already present and intact are
/// not fetched again.
pub fn download(name: &str, dest_root: &Path, mirror: Option<&str>) -> Result<PathBuf, DataError> {
    let source = find_source(name).ok_or_else(|| DataError::Unknown(name.to_string()))?;
    download_source(source, dest_root, mirror)
}

/// [`download`] for an explicit [`Source`] (tests use one of their own).
pub fn download_source(
    source: &Source<'_>,
    dest_root: &Path,
    mirror: Option<&str>,
) -> Result<PathBuf, DataError> {
    let dir = dest_root.join(source.name);
    if !source.unpacked.is_empty() && missing_unpacked(source, &dir).is_none() {
        return Ok(dir);
    }
    for file in source.files {
        let url = match mirror {
            Some(base) => format!(
                "{}/{}/{}",
                base.trim_end_matches('/'),
                source.name,
                file.name
            ),
            None => format!("{}{}", source.base_url, file.name),
        };
        let path = dir.join(file.name);
        if !(path.is_file() && file_matches(&path, file.checksum)?) {
            fetch_verified(&url, &path, file.checksum)?;
        }
        if file.name.ends_with(".tar.gz") {
            unpack(&path, &dir)?;
        }
    }
    if let Some(missing) = missing_unpacked(source, &dir) {
        return Err(DataError::Format {
            path: dir.join(missing.0),
            expected: match missing.1 {
                Some(size) => format!("a file of {size} bytes unpacked from the archive"),
                None => "a file unpacked from the archive".into(),
            },
            found: "no such file, or a different size".into(),
        });
    }
    Ok(dir)
}

/// The first expected unpacked file that is absent or has the wrong size.
fn missing_unpacked<'a>(source: &Source<'a>, dir: &Path) -> Option<&'a (&'a str, Option<u64>)> {
    source
        .unpacked
        .iter()
        .find(|(rel, size)| match fs::metadata(dir.join(rel)) {
            Ok(meta) => !meta.is_file() || size.is_some_and(|s| s != meta.len()),
            Err(_) => true,
        })
}

/// Unpacks `archive` into `dir` through a staging folder, so that an interrupted run never
/// leaves a half-written tree under the final names, then deletes the archive.
fn unpack(archive: &Path, dir: &Path) -> Result<(), DataError> {
    let staging = dir.join(".unpacking");
    let io_err = |path: &Path, source: io::Error| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| io_err(&staging, e))?;
    }
    extract_tar_gz(archive, &staging)?;
    for entry in fs::read_dir(&staging).map_err(|e| io_err(&staging, e))? {
        let entry = entry.map_err(|e| io_err(&staging, e))?;
        let target = dir.join(entry.file_name());
        if target.is_dir() {
            fs::remove_dir_all(&target).map_err(|e| io_err(&target, e))?;
        } else if target.exists() {
            fs::remove_file(&target).map_err(|e| io_err(&target, e))?;
        }
        fs::rename(entry.path(), &target).map_err(|e| io_err(&target, e))?;
    }
    fs::remove_dir_all(&staging).map_err(|e| io_err(&staging, e))?;
    fs::remove_file(archive).map_err(|e| io_err(archive, e))
}

/// Streams `url` to `dest` with a progress bar and checks it against `expected`.
///
/// The bytes go to `<dest>.part`, which is renamed to `dest` only after the check passes
/// and is deleted on any failure. A wrong digest is a [`DataError::Checksum`] naming the
/// URL, the expected and the found value; an HTTP error status is a
/// [`DataError::Download`] naming the status.
pub fn fetch_verified(url: &str, dest: &Path, expected: Checksum<'_>) -> Result<(), DataError> {
    let part = part_path(dest);
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|source| DataError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let result = fetch_to(url, &part, expected).and_then(|()| {
        fs::rename(&part, dest).map_err(|source| DataError::Io {
            path: dest.to_path_buf(),
            source,
        })
    });
    if result.is_err() {
        let _ = fs::remove_file(&part);
    }
    result
}

/// `<dest>.part`, next to `dest`.
fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

fn fetch_to(url: &str, part: &Path, expected: Checksum<'_>) -> Result<(), DataError> {
    let fail = |reason: String| DataError::Download {
        url: url.to_string(),
        reason,
    };
    let config = ureq::Agent::config_builder();
    // The platform's TLS and its root certificates where the build uses them (Cargo.toml).
    #[cfg(any(target_os = "macos", target_os = "windows"))]
    let config = config.tls_config(
        ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::NativeTls)
            .root_certs(ureq::tls::RootCerts::PlatformVerifier)
            .build(),
    );
    let agent: ureq::Agent = config
        // Report statuses ourselves, with the URL.
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .user_agent(concat!("haba/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    // The bytes must arrive exactly as published: ask the server not to re-encode them.
    let mut response = agent
        .get(url)
        .header("Accept-Encoding", "identity")
        .call()
        .map_err(|e| fail(e.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(fail(format!(
            "the server answered HTTP {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )));
    }
    let total = response.body().content_length();
    let bar = progress_bar(url, total);
    let mut reader = response.body_mut().as_reader();
    let file = fs::File::create(part).map_err(|source| DataError::Io {
        path: part.to_path_buf(),
        source,
    })?;
    let mut out = io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Hasher::new(expected);
    let mut buf = vec![0u8; 1 << 16];
    let mut received: u64 = 0;
    let streamed = loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(fail(format!("after {received} bytes: {e}"))),
        };
        hasher.update(&buf[..n]);
        if let Err(source) = out.write_all(&buf[..n]) {
            break Err(DataError::Io {
                path: part.to_path_buf(),
                source,
            });
        }
        received += n as u64;
        bar.inc(n as u64);
    };
    bar.finish();
    streamed?;
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .map_err(|source| DataError::Io {
            path: part.to_path_buf(),
            source,
        })?;
    if let Some(total) = total.filter(|&t| t != received) {
        return Err(fail(format!(
            "the connection ended after {received} of {total} bytes"
        )));
    }
    let found = hasher.finish(received);
    if found != expected.describe() {
        return Err(DataError::Checksum {
            url: url.to_string(),
            expected: expected.describe(),
            found,
        });
    }
    Ok(())
}

fn progress_bar(url: &str, total: Option<u64>) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressStyle};
    let name = url.rsplit('/').next().unwrap_or(url).to_string();
    let (bar, template) = match total {
        Some(len) => (
            ProgressBar::new(len),
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{msg} {spinner} {bytes} {bytes_per_sec}",
        ),
    };
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.with_style(style).with_message(name)
}

/// Whether the file at `path` already matches `expected` (read errors are errors).
pub fn file_matches(path: &Path, expected: Checksum<'_>) -> Result<bool, DataError> {
    let io_err = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Checksum::Size(size) = expected {
        return Ok(fs::metadata(path).map_err(io_err)?.len() == size);
    }
    let mut file = fs::File::open(path).map_err(io_err)?;
    let mut hasher = Hasher::new(expected);
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    Ok(hasher.finish(total) == expected.describe())
}

/// The digest that [`Checksum`] asks for, computed while the bytes stream past.
enum Hasher {
    Md5(Md5),
    Sha256(sha2::Sha256),
    Size,
}

impl Hasher {
    fn new(kind: Checksum<'_>) -> Self {
        match kind {
            Checksum::Md5(_) => Hasher::Md5(Md5::new()),
            Checksum::Sha256(_) => Hasher::Sha256(sha2::Sha256::new()),
            Checksum::Size(_) => Hasher::Size,
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Size => {}
        }
    }

    /// The result, formatted like [`Checksum::describe`] so the two compare directly.
    fn finish(self, bytes: u64) -> String {
        let hex = |digest: &[u8]| -> String { digest.iter().map(|b| format!("{b:02x}")).collect() };
        match self {
            Hasher::Md5(h) => format!("md5 {}", hex(&h.finish())),
            Hasher::Sha256(h) => format!("sha256 {}", hex(&h.finalize())),
            Hasher::Size => format!("{bytes} bytes"),
        }
    }
}

#[cfg(test)]
mod tests;
