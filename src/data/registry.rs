//! The known datasets and where to find them on disk.
//!
//! A dataset is found in the first search root (see [`SearchPaths`]) that has one of its
//! subfolders ([`DatasetInfo::dirs`]) holding all of its files ([`DatasetInfo::files`]).
//! A root whose own path ends in one of those subfolder names counts too, which is how
//! Debian's `/usr/share/datasets/fashion-mnist` (the four files directly) is found.
//!
//! Downloading lives elsewhere; it puts [`DatasetInfo::files`] into
//! `SearchPaths::download_root()/dirs[0]`, where [`locate`] will find them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::folder::{self, FolderOptions};
use super::{DataError, Dataset, ImageShape, cifar, idx, svhn};

/// Which reader a dataset needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Four IDX files (MNIST, Fashion-MNIST).
    Idx,
    Cifar10,
    Cifar100,
    /// Two MATLAB files (SVHN cropped digits).
    Svhn,
}

/// A dataset this crate knows by name.
#[derive(Clone, Copy, Debug)]
pub struct DatasetInfo {
    /// Canonical name, as accepted on the command line.
    pub name: &'static str,
    pub description: &'static str,
    pub classes: usize,
    pub shape: ImageShape,
    pub format: Format,
    /// Files that must all be present, named as the official download names them. For
    /// IDX files the unpacked name (without `.gz`) is accepted too.
    pub files: &'static [&'static str],
    /// Subfolders of a search root the files may be in, in the order searched; the first
    /// is where a download should put them.
    pub dirs: &'static [&'static str],
    /// Whether an official download exists (see `data::download`).
    pub downloadable: bool,
}

const GREY_28: ImageShape = ImageShape {
    channels: 1,
    height: 28,
    width: 28,
};

const CIFAR10_FILES: &[&str] = &[
    cifar::CIFAR10_TRAIN[0],
    cifar::CIFAR10_TRAIN[1],
    cifar::CIFAR10_TRAIN[2],
    cifar::CIFAR10_TRAIN[3],
    cifar::CIFAR10_TRAIN[4],
    cifar::CIFAR10_TEST,
];

/// Every dataset known by name.
pub const KNOWN: &[DatasetInfo] = &[
    DatasetInfo {
        name: "mnist",
        description: "MNIST handwritten digits, 60k/10k grey 28x28",
        classes: 10,
        shape: GREY_28,
        format: Format::Idx,
        files: &idx::FILES,
        dirs: &["mnist", "MNIST", "MNIST/raw", "mnist/raw"],
        downloadable: true,
    },
    DatasetInfo {
        name: "fashion-mnist",
        description: "Fashion-MNIST clothing, 60k/10k grey 28x28",
        classes: 10,
        shape: GREY_28,
        format: Format::Idx,
        files: &idx::FILES,
        dirs: &[
            "fashion-mnist",
            "FashionMNIST",
            "fashion_mnist",
            "FashionMNIST/raw",
        ],
        downloadable: true,
    },
    DatasetInfo {
        name: "cifar10",
        description: "CIFAR-10 objects, 50k/10k colour 32x32 (binary version)",
        classes: 10,
        shape: cifar::SHAPE,
        format: Format::Cifar10,
        files: CIFAR10_FILES,
        dirs: &["cifar-10-batches-bin", "cifar10/cifar-10-batches-bin"],
        downloadable: true,
    },
    DatasetInfo {
        name: "cifar100",
        description: "CIFAR-100 objects, 100 fine classes, 50k/10k colour 32x32 (binary version)",
        classes: 100,
        shape: cifar::SHAPE,
        format: Format::Cifar100,
        files: &[cifar::CIFAR100_TRAIN, cifar::CIFAR100_TEST],
        dirs: &["cifar-100-binary", "cifar100/cifar-100-binary"],
        downloadable: true,
    },
    DatasetInfo {
        name: "svhn",
        description: "SVHN house-number digits, 73k/26k colour 32x32 (cropped digits)",
        classes: 10,
        shape: cifar::SHAPE,
        format: Format::Svhn,
        files: &[svhn::TRAIN, svhn::TEST],
        dirs: &["svhn", "SVHN"],
        downloadable: true,
    },
];

/// Fashion-MNIST's classes, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Environment variable naming extra search roots (a path list, like `PATH`).
pub const DATA_ENV: &str = "HABA_DATA";
/// Where Debian's `fashion-mnist` package puts the four files.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// Folders searched for datasets, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchPaths {
    pub roots: Vec<PathBuf>,
}

impl SearchPaths {
    /// The `--data-dir` flag, then `$HABA_DATA`, then `./data`, then Debian's location.
    pub fn new(data_dir: Option<PathBuf>) -> Self {
        Self::with_env(data_dir, std::env::var_os(DATA_ENV))
    }

    /// Like [`SearchPaths::new`] with the value of `HABA_DATA` given, for tests.
    pub fn with_env(data_dir: Option<PathBuf>, env: Option<OsString>) -> Self {
        let mut roots: Vec<PathBuf> = data_dir.into_iter().collect();
        if let Some(env) = env {
            roots.extend(std::env::split_paths(&env).filter(|p| !p.as_os_str().is_empty()));
        }
        roots.push(PathBuf::from("./data"));
        roots.push(PathBuf::from(DEBIAN_FASHION_MNIST));
        let mut unique = Vec::with_capacity(roots.len());
        for root in roots {
            if !unique.contains(&root) {
                unique.push(root);
            }
        }
        Self { roots: unique }
    }

    /// Where downloads go: the first root (the flag, else `$HABA_DATA`, else `./data`).
    pub fn download_root(&self) -> PathBuf {
        self.roots
            .first()
            .cloned()
            .unwrap_or_else(|| PathBuf::from("./data"))
    }
}

/// Looks a known dataset up by name, ignoring case, `-` and `_` (`FashionMNIST`,
/// `cifar-10` work).
pub fn info(name: &str) -> Option<&'static DatasetInfo> {
    let norm = |s: &str| -> String {
        s.chars()
            .filter(|c| !matches!(c, '-' | '_' | ' '))
            .flat_map(char::to_lowercase)
            .collect()
    };
    let wanted = norm(name);
    KNOWN.iter().find(|d| norm(d.name) == wanted)
}

/// What a dataset name on the command line refers to.
#[derive(Clone, Debug)]
pub enum Source {
    Known(&'static DatasetInfo),
    /// A class-per-folder image tree (`folder:<path>`, or a path).
    Folder(PathBuf),
}

/// Resolves a name: a known dataset, `folder:<path>`, or a path to a directory.
pub fn resolve(name: &str) -> Result<Source, DataError> {
    if let Some(path) = name.strip_prefix("folder:") {
        return Ok(Source::Folder(PathBuf::from(path)));
    }
    if let Some(info) = info(name) {
        return Ok(Source::Known(info));
    }
    let path = Path::new(name);
    if name.contains(std::path::MAIN_SEPARATOR) || name.contains('/') || path.is_dir() {
        return Ok(Source::Folder(path.to_path_buf()));
    }
    Err(DataError::Unknown(name.to_string()))
}

/// Whether `dir` holds every file of `info`.
pub fn has_files(info: &DatasetInfo, dir: &Path) -> bool {
    info.files.iter().all(|f| has_file(info, dir, f))
}

fn has_file(info: &DatasetInfo, dir: &Path, file: &str) -> bool {
    match info.format {
        Format::Idx => idx::find_file(dir, file).is_some(),
        _ => dir.join(file).is_file(),
    }
}

/// The folders searched for `info` under `root`, in order.
fn candidates(info: &DatasetInfo, root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = info.dirs.iter().map(|d| root.join(d)).collect();
    if info.dirs.iter().any(|d| root.ends_with(d)) {
        out.insert(0, root.to_path_buf());
    }
    out
}

fn find_known(info: &DatasetInfo, search: &SearchPaths) -> Option<PathBuf> {
    search
        .roots
        .iter()
        .flat_map(|root| candidates(info, root))
        .find(|dir| has_files(info, dir))
}

/// A folder dataset path as given, else relative to each search root.
fn find_folder(path: &Path, search: &SearchPaths) -> Option<PathBuf> {
    if folder::is_folder_dataset(path) {
        return Some(path.to_path_buf());
    }
    if path.is_absolute() {
        return None;
    }
    search
        .roots
        .iter()
        .map(|root| root.join(path))
        .find(|p| folder::is_folder_dataset(p))
}

/// "a, b or c".
fn or_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

fn roots_text(search: &SearchPaths) -> Vec<String> {
    search
        .roots
        .iter()
        .map(|r| r.display().to_string())
        .collect()
}

fn not_found(info: &DatasetInfo, search: &SearchPaths) -> DataError {
    let dirs: Vec<String> = info.dirs.iter().map(|d| d.to_string()).collect();
    let searched = format!(
        "{} (in a subfolder {})",
        roots_text(search).join(", "),
        or_list(&dirs)
    );
    // A folder that exists but lacks files is most likely a partial copy: say what is missing.
    let partial = search
        .roots
        .iter()
        .flat_map(|root| candidates(info, root))
        .find(|dir| dir.is_dir())
        .map(|dir| {
            let missing: Vec<String> = info
                .files
                .iter()
                .filter(|f| !has_file(info, &dir, f))
                .map(|f| f.to_string())
                .collect();
            format!(
                " {} exists but lacks {}.",
                dir.display(),
                missing.join(", ")
            )
        })
        .unwrap_or_default();
    let layout = format!(
        "put {} in {}",
        info.files.join(", "),
        search.download_root().join(info.dirs[0]).display()
    );
    let hint = if info.downloadable {
        format!(
            "Fetch it with `download = {}`, or {layout}.{partial}",
            info.name
        )
    } else {
        format!("To use it, {layout}.{partial}")
    };
    DataError::NotFound {
        name: info.name.to_string(),
        searched,
        hint,
    }
}

/// The directory holding dataset `name` (see [`resolve`] for what names mean).
pub fn locate(name: &str, search: &SearchPaths) -> Result<PathBuf, DataError> {
    match resolve(name)? {
        Source::Known(info) => find_known(info, search).ok_or_else(|| not_found(info, search)),
        Source::Folder(path) => find_folder(&path, search).ok_or_else(|| {
            let mut searched = vec![path.display().to_string()];
            if path.is_relative() {
                searched.extend(
                    search
                        .roots
                        .iter()
                        .map(|r| r.join(&path).display().to_string()),
                );
            }
            DataError::NotFound {
                name: name.to_string(),
                searched: searched.join(", "),
                hint: "An image folder dataset needs <root>/train/<class>/*.{jpg,png} and \
                       <root>/test/<class>/... (or val/)."
                    .into(),
            }
        }),
    }
}

/// Loads dataset `name` (see [`resolve`]); folder datasets keep their images' size.
pub fn load(name: &str, search: &SearchPaths) -> Result<Dataset, DataError> {
    load_with(name, search, &FolderOptions::default())
}

/// Like [`load`], with options for folder datasets.
pub fn load_with(
    name: &str,
    search: &SearchPaths,
    folder_options: &FolderOptions,
) -> Result<Dataset, DataError> {
    let dir = locate(name, search)?;
    let info = match resolve(name)? {
        Source::Known(info) => info,
        Source::Folder(_) => return folder::load(&dir, folder_options),
    };
    let ds = match info.format {
        Format::Idx => {
            let classes = if info.name == "fashion-mnist" {
                FASHION_MNIST_CLASSES.map(String::from).to_vec()
            } else {
                (0..10).map(|d| d.to_string()).collect()
            };
            idx::load(&dir, info.name, classes)?
        }
        Format::Cifar10 => cifar::load_cifar10(&dir)?,
        Format::Cifar100 => cifar::load_cifar100(&dir)?,
        Format::Svhn => svhn::load(&dir)?,
    };
    // Right format but wrong content (e.g. a resized copy) would silently change results.
    if ds.shape != info.shape || ds.classes.len() != info.classes {
        return Err(DataError::Format {
            path: dir,
            expected: format!(
                "{} classes of {:?} for {}",
                info.classes, info.shape, info.name
            ),
            found: format!("{} classes of {:?}", ds.classes.len(), ds.shape),
        });
    }
    Ok(ds)
}

/// Where each known dataset stands, for `haba datasets`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetStatus {
    pub name: String,
    pub description: String,
    /// The directory it was found in, if any.
    pub found: Option<PathBuf>,
    pub downloadable: bool,
}

/// The status of every known dataset.
pub fn list(search: &SearchPaths) -> Vec<DatasetStatus> {
    KNOWN
        .iter()
        .map(|info| DatasetStatus {
            name: info.name.to_string(),
            description: info.description.to_string(),
            found: find_known(info, search),
            downloadable: info.downloadable,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::files::testutil::{TempDir, gzip};

    /// MNIST-style files of 3 train and 2 test images of `side x side`, all labels 7.
    fn idx_files(dir: &TempDir, sub: &str, side: u32) {
        let images = |n: u32| {
            let mut v = Vec::new();
            for x in [idx::IMAGES_MAGIC, n, side, side] {
                v.extend_from_slice(&x.to_be_bytes());
            }
            v.resize(16 + (n * side * side) as usize, 3);
            v
        };
        let labels = |n: u32| {
            let mut v = Vec::new();
            for x in [idx::LABELS_MAGIC, n] {
                v.extend_from_slice(&x.to_be_bytes());
            }
            v.resize(8 + n as usize, 7);
            v
        };
        dir.write(&format!("{sub}/{}", idx::FILES[0]), &gzip(&images(3)));
        dir.write(&format!("{sub}/{}", idx::FILES[1]), &gzip(&labels(3)));
        dir.write(&format!("{sub}/{}", idx::FILES[2]), &gzip(&images(2)));
        dir.write(&format!("{sub}/{}", idx::FILES[3]), &gzip(&labels(2)));
    }

    fn search(roots: &[&Path]) -> SearchPaths {
        SearchPaths {
            roots: roots.iter().map(|r| r.to_path_buf()).collect(),
        }
    }

    #[test]
    fn search_order_and_env() {
        let s = SearchPaths::with_env(
            Some("/flag".into()),
            Some(std::env::join_paths(["/env1", "/env2"]).expect("join")),
        );
        let want: Vec<PathBuf> = ["/flag", "/env1", "/env2", "./data", DEBIAN_FASHION_MNIST]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(s.roots, want);
        assert_eq!(s.download_root(), PathBuf::from("/flag"));
        let s = SearchPaths::with_env(None, None);
        assert_eq!(s.roots.len(), 2);
        assert_eq!(s.download_root(), PathBuf::from("./data"));
    }

    #[test]
    fn names_resolve() {
        assert_eq!(info("FashionMNIST").map(|i| i.name), Some("fashion-mnist"));
        assert_eq!(info("CIFAR-10").map(|i| i.name), Some("cifar10"));
        assert!(matches!(resolve("folder:x"), Ok(Source::Folder(p)) if p == Path::new("x")));
        assert!(matches!(resolve("some/dir"), Ok(Source::Folder(_))));
        assert!(matches!(resolve("imagenet"), Err(DataError::Unknown(_))));
        for d in KNOWN {
            assert!(!d.files.is_empty() && !d.dirs.is_empty(), "{}", d.name);
        }
    }

    #[test]
    fn locates_in_subfolder_or_named_root() {
        let a = TempDir::new("reg-a");
        let b = TempDir::new("reg-b");
        idx_files(&b, "FashionMNIST/raw", 28);
        let s = search(&[a.path(), b.path()]);
        assert_eq!(
            locate("fashion-mnist", &s).expect("found"),
            b.path().join("FashionMNIST/raw")
        );
        // A root that is itself the dataset folder (the Debian layout).
        let named = b.path().join("FashionMNIST/raw");
        let s = search(&[&named]);
        assert_eq!(locate("fashion-mnist", &s).expect("found"), named);
        // ...which must not be taken for MNIST, whose files have the same names.
        assert!(matches!(
            locate("mnist", &s),
            Err(DataError::NotFound { .. })
        ));

        let ds = load("fashion-mnist", &search(&[b.path()])).expect("load");
        assert_eq!(ds.classes[9], "Ankle boot");
        assert_eq!((ds.train.len(), ds.test.len()), (3, 2));
        assert_eq!(ds.train.labels, [7, 7, 7]);

        let listed = list(&search(&[b.path()]));
        assert_eq!(listed.len(), KNOWN.len());
        let fm = listed
            .iter()
            .find(|d| d.name == "fashion-mnist")
            .expect("listed");
        assert!(fm.found.is_some() && fm.downloadable);
        assert!(
            listed
                .iter()
                .find(|d| d.name == "cifar10")
                .is_some_and(|d| d.found.is_none())
        );
    }

    #[test]
    fn not_found_lists_places_and_hints() {
        let a = TempDir::new("reg-nf");
        std::fs::create_dir_all(a.path().join("svhn")).expect("mkdir");
        a.write(&format!("svhn/{}", svhn::TRAIN), b"x");
        let msg = locate("svhn", &search(&[a.path()]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains(&a.path().display().to_string()), "{msg}");
        assert!(msg.contains("`download = "), "{msg}");
        assert!(msg.contains(&format!("lacks {}", svhn::TEST)), "{msg}");

        let msg = locate("folder:nowhere", &search(&[a.path()]))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("nowhere") && msg.contains("train/<class>"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_shape_is_rejected() {
        let dir = TempDir::new("reg-shape");
        idx_files(&dir, "mnist", 27);
        let msg = load("mnist", &search(&[dir.path()]))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("height: 28") && msg.contains("height: 27"),
            "{msg}"
        );
    }

    #[test]
    fn folder_by_name_under_a_root() {
        let dir = TempDir::new("reg-folder");
        let mut png = Vec::new();
        image::GrayImage::new(2, 2)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .expect("png");
        dir.write("mine/train/a/1.png", &png);
        dir.write("mine/test/a/1.png", &png);
        let s = search(&[dir.path()]);
        let ds = load("folder:mine", &s).expect("load");
        assert_eq!(ds.name, "mine");
        assert_eq!(ds.shape.channels, 1);
    }
}
