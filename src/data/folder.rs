//! Any image tree with one folder per class:
//!
//! ```text
//! <root>/train/<class>/**/*.{jpg,jpeg,png}
//! <root>/test/<class>/**/*.{jpg,jpeg,png}     (or val/ instead of test/)
//! ```
//!
//! Tiny ImageNet's validation layout is understood too: `val/images/*` labelled by
//! `val/val_annotations.txt` (tab-separated file name and class per line).
//!
//! Classes are the train folder names, sorted. Images are decoded in parallel straight
//! into the final buffer; they end up with one channel only when every image is greyscale.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use image::imageops::{self, FilterType};

use super::files::{format_err, io_err, read};
use super::{DataError, Dataset, ImageShape, Split};

/// The annotations file of Tiny ImageNet's validation split.
pub const TINY_VAL_ANNOTATIONS: &str = "val_annotations.txt";

/// Deepest folder nesting searched below a class folder (guards against link loops).
const MAX_DEPTH: usize = 16;

/// Images handed to a worker at a time: large enough to amortise the queue lock, small
/// enough to balance the load at the end.
const BLOCK: usize = 64;

/// How to load a folder dataset.
#[derive(Clone, Debug, Default)]
pub struct FolderOptions {
    /// Resize every image to (height, width) with a triangle filter. Without it, all
    /// images must already have the same size.
    pub resize: Option<(u32, u32)>,
}

/// An image file and its class.
struct Item {
    path: PathBuf,
    label: u16,
}

/// Whether `root` looks like a class-per-folder tree (it has a `train` folder).
pub fn is_folder_dataset(root: &Path) -> bool {
    root.join("train").is_dir()
}

fn is_image(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        ["jpg", "jpeg", "png"]
            .iter()
            .any(|x| e.eq_ignore_ascii_case(x))
    })
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Entries of a directory, sorted, without hidden ones.
fn entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let path = entry.map_err(|e| io_err(dir, e))?.path();
        if !is_hidden(&path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Sorted names of the subdirectories of `dir`.
fn subdirs(dir: &Path) -> Result<Vec<String>, DataError> {
    let mut names = Vec::new();
    for p in entries(dir)?.into_iter().filter(|p| p.is_dir()) {
        // Class names go into artifacts and reports as text: a folder whose name is not
        // UTF-8 would otherwise vanish without a word, and its images with it.
        match p.file_name().and_then(|n| n.to_str()) {
            Some(name) => names.push(name.to_string()),
            None => {
                return Err(format_err(
                    &p,
                    "class folder names in UTF-8",
                    "a name that is not: rename the folder",
                ));
            }
        }
    }
    Ok(names)
}

/// Whether `path` is itself a symbolic link (not whatever it points to).
fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Every image file below `dir`, in sorted order.
fn images_below(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    for path in entries(dir)? {
        if path.is_dir() {
            // A linked folder inside a class usually points at images already in the tree
            // (or at the tree itself): following it would count them twice.
            if depth < MAX_DEPTH && !is_symlink(&path) {
                images_below(&path, depth + 1, out)?;
            }
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// The items of a class-per-folder split; `require_all` demands at least one image per
/// class (for train); every class must have a folder either way.
fn class_items(dir: &Path, classes: &[String], require_all: bool) -> Result<Vec<Item>, DataError> {
    let present = subdirs(dir)?;
    if let Some(extra) = present.iter().find(|c| !classes.contains(c)) {
        return Err(format_err(
            &dir.join(extra),
            format!("a folder for one of the {} train classes", classes.len()),
            "a class with no train folder",
        ));
    }
    let mut items = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let class_dir = dir.join(class);
        if !class_dir.is_dir() {
            return Err(format_err(
                &class_dir,
                format!("a folder of images for class `{class}`"),
                "no such folder",
            ));
        }
        let mut paths = Vec::new();
        images_below(&class_dir, 0, &mut paths)?;
        if require_all && paths.is_empty() {
            return Err(format_err(
                &class_dir,
                "at least one .jpg, .jpeg or .png image",
                "none",
            ));
        }
        // `classes.len()` was checked to fit in u16.
        let label = label as u16;
        items.extend(paths.into_iter().map(|path| Item { path, label }));
    }
    Ok(items)
}

/// Tiny ImageNet's validation split: `images/` labelled by the annotations file.
fn annotated_items(val: &Path, classes: &[String]) -> Result<Vec<Item>, DataError> {
    let ann = val.join(TINY_VAL_ANNOTATIONS);
    let text = read(&ann)?;
    let text = String::from_utf8_lossy(&text);
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut fields = line.split('\t');
        let (Some(file), Some(class)) = (fields.next(), fields.next()) else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(format_err(
                &ann,
                "lines of <file>\\t<class>",
                format!("line {}: {line:?}", n + 1),
            ));
        };
        let label = classes.iter().position(|c| c == class).ok_or_else(|| {
            format_err(
                &ann,
                "classes that have a train folder",
                format!("class `{class}` on line {}", n + 1),
            )
        })?;
        items.push(Item {
            path: val.join("images").join(file),
            label: label as u16,
        });
    }
    Ok(items)
}

/// What one image decoded to.
enum Decoded {
    Grey,
    Colour,
}

/// Decodes `path` into `out` as planar RGB (greyscale images fill only the first plane).
fn decode_into(
    path: &Path,
    size: (u32, u32),
    resize: bool,
    out: &mut [u8],
) -> Result<Decoded, DataError> {
    let (height, width) = size;
    let bytes = read(path)?;
    let img = image::load_from_memory(&bytes)
        .map_err(|e| format_err(path, "a decodable JPEG or PNG image", e.to_string()))?;
    if !resize && (img.height(), img.width()) != size {
        return Err(format_err(
            path,
            format!("{width}x{height} pixels like the other images (or pass a resize size)"),
            format!("{}x{}", img.width(), img.height()),
        ));
    }
    let fit = |w: u32, h: u32| resize && (h, w) != size;
    let plane = out.len() / 3;
    if img.color().has_color() {
        let mut rgb = img.into_rgb8();
        if fit(rgb.width(), rgb.height()) {
            rgb = imageops::resize(&rgb, width, height, FilterType::Triangle);
        }
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, px) in rgb.as_raw().chunks_exact(3).enumerate() {
            r[i] = px[0];
            g[i] = px[1];
            b[i] = px[2];
        }
        Ok(Decoded::Colour)
    } else {
        let mut grey = img.into_luma8();
        if fit(grey.width(), grey.height()) {
            grey = imageops::resize(&grey, width, height, FilterType::Triangle);
        }
        out[..plane].copy_from_slice(grey.as_raw());
        Ok(Decoded::Grey)
    }
}

/// Decodes every item into a planar-RGB buffer of `items.len()` images, in parallel.
/// Returns the buffer and, per image, whether it was greyscale.
fn decode_all(
    items: &[Item],
    size: (u32, u32),
    resize: bool,
) -> Result<(Vec<u8>, Vec<bool>), DataError> {
    let per_image = 3 * size.0 as usize * size.1 as usize;
    let total = items.len().checked_mul(per_image).ok_or_else(|| {
        DataError::Invalid(format!("{} images do not fit in memory", items.len()))
    })?;
    let mut pixels = vec![0u8; total];
    let mut grey = vec![false; items.len()];
    let queue = Mutex::new(
        items
            .chunks(BLOCK)
            .zip(pixels.chunks_mut(BLOCK * per_image))
            .zip(grey.chunks_mut(BLOCK))
            .enumerate(),
    );
    // The error of the earliest failing image, so the report does not depend on timing.
    let first_error: Mutex<Option<(usize, DataError)>> = Mutex::new(None);
    let failed = AtomicBool::new(false);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(items.len().div_ceil(BLOCK))
        .max(1);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                    let Some((block, ((items, pixels), grey))) = next else {
                        break;
                    };
                    let outs = pixels.chunks_exact_mut(per_image);
                    for (i, ((item, out), g)) in items.iter().zip(outs).zip(grey).enumerate() {
                        match decode_into(&item.path, size, resize, out) {
                            Ok(d) => *g = matches!(d, Decoded::Grey),
                            Err(e) => {
                                let index = block * BLOCK + i;
                                let mut first =
                                    first_error.lock().unwrap_or_else(|e| e.into_inner());
                                if first.as_ref().is_none_or(|(at, _)| index < *at) {
                                    *first = Some((index, e));
                                }
                                failed.store(true, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some((_, e)) => Err(e),
        None => Ok((pixels, grey)),
    }
}

/// Turns a planar-RGB buffer into the final layout: one channel when `channels` is 1,
/// else three, copying the grey plane of greyscale images into G and B.
fn finish(mut pixels: Vec<u8>, grey: &[bool], plane: usize, channels: usize) -> Vec<u8> {
    if channels == 1 {
        // Move each image's first plane down to its packed place; targets never overlap
        // a source that is still to be read, since image i moves from 3*i to i.
        for i in 0..grey.len() {
            pixels.copy_within(3 * i * plane..(3 * i + 1) * plane, i * plane);
        }
        pixels.truncate(grey.len() * plane);
        pixels.shrink_to_fit();
    } else {
        for (img, _) in pixels
            .chunks_exact_mut(3 * plane)
            .zip(grey)
            .filter(|(_, g)| **g)
        {
            img.copy_within(..plane, plane);
            img.copy_within(..plane, 2 * plane);
        }
    }
    pixels
}

/// Loads a class-per-folder image tree rooted at `root`.
pub fn load(root: &Path, options: &FolderOptions) -> Result<Dataset, DataError> {
    let train_dir = root.join("train");
    if !train_dir.is_dir() {
        return Err(format_err(
            root,
            "a `train/<class>/` image tree (and `test/` or `val/`)",
            "no train folder",
        ));
    }
    let classes = subdirs(&train_dir)?;
    if classes.is_empty() || classes.len() > usize::from(u16::MAX) + 1 {
        return Err(format_err(
            &train_dir,
            "between 1 and 65536 class folders",
            format!("{}", classes.len()),
        ));
    }
    let train_items = class_items(&train_dir, &classes, true)?;
    let val = root.join("val");
    let test_items = if val.join(TINY_VAL_ANNOTATIONS).is_file() {
        annotated_items(&val, &classes)?
    } else if root.join("test").is_dir() {
        class_items(&root.join("test"), &classes, false)?
    } else if val.is_dir() {
        class_items(&val, &classes, false)?
    } else {
        return Err(format_err(
            root,
            "a `test/` or `val/` folder with the same classes as `train/`",
            "neither",
        ));
    };
    if test_items.is_empty() {
        return Err(format_err(root, "at least one test image", "none"));
    }

    // Without a resize size, the first image sets the size all others must have.
    let (size, resize) = match options.resize {
        Some(size) => (size, true),
        None => {
            let first = &train_items[0].path;
            let bytes = read(first)?;
            let img = image::load_from_memory(&bytes)
                .map_err(|e| format_err(first, "a decodable JPEG or PNG image", e.to_string()))?;
            ((img.height(), img.width()), false)
        }
    };
    // DSA's scale and rotation place pixel 0 and the last pixel at -1 and 1: they need
    // two pixels each way.
    if size.0 < 2 || size.1 < 2 {
        return Err(DataError::Invalid(format!(
            "images must be at least 2x2 pixels, got {}x{} (width x height){}",
            size.1,
            size.0,
            if resize {
                ""
            } else {
                " from the first training image"
            }
        )));
    }
    let (train_px, train_grey) = decode_all(&train_items, size, resize)?;
    let (test_px, test_grey) = decode_all(&test_items, size, resize)?;
    let all_grey = train_grey.iter().chain(&test_grey).all(|&g| g);
    let channels = if all_grey { 1 } else { 3 };
    let plane = size.0 as usize * size.1 as usize;
    let split = |px, grey: &[bool], items: Vec<Item>| Split {
        images: finish(px, grey, plane, channels),
        labels: items.into_iter().map(|i| i.label).collect(),
    };
    Ok(Dataset {
        // Canonical, so that `folder:.` is named after the folder too.
        name: root
            .canonicalize()
            .ok()
            .and_then(|r| Some(r.file_name()?.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "folder".into()),
        classes,
        shape: ImageShape {
            channels,
            height: size.0 as usize,
            width: size.1 as usize,
        },
        train: split(train_px, &train_grey, train_items),
        test: split(test_px, &test_grey, test_items),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::files::testutil::TempDir;
    use image::{GrayImage, ImageFormat, RgbImage};

    fn png_rgb(w: u32, h: u32, seed: u8) -> (Vec<u8>, Vec<u8>) {
        let img = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([seed, (x * 10) as u8 + seed, (y * 20) as u8])
        });
        let mut planar = vec![0u8; (3 * w * h) as usize];
        let plane = (w * h) as usize;
        for (i, p) in img.pixels().enumerate() {
            for c in 0..3 {
                planar[c * plane + i] = p.0[c];
            }
        }
        let mut bytes = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut bytes), ImageFormat::Png)
            .expect("encode");
        (bytes, planar)
    }

    fn png_grey(w: u32, h: u32, seed: u8) -> (Vec<u8>, Vec<u8>) {
        let img = GrayImage::from_fn(w, h, |x, y| image::Luma([seed ^ (x + 4 * y) as u8]));
        let mut bytes = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut bytes), ImageFormat::Png)
            .expect("encode");
        (bytes, img.into_raw())
    }

    /// A linked folder inside a class is not followed (its images would count twice);
    /// a class folder whose name is not UTF-8 is an error, not a silent omission.
    #[cfg(unix)]
    #[test]
    fn linked_folders_are_not_followed_and_non_utf8_names_are_refused() {
        use std::os::unix::ffi::OsStrExt;
        let dir = TempDir::new("folder-links");
        let (a, _) = png_grey(3, 3, 1);
        dir.write("train/a/x/0.png", &a);
        dir.write("train/b/0.png", &a);
        dir.write("test/a/0.png", &a);
        dir.write("test/b/0.png", &a);
        std::os::unix::fs::symlink(
            dir.path().join("train/a/x"),
            dir.path().join("train/a/again"),
        )
        .unwrap();
        let ds = load(dir.path(), &FolderOptions::default()).unwrap();
        assert_eq!(
            ds.train.labels,
            [0, 1],
            "the linked folder's image counted once"
        );

        let odd = std::ffi::OsStr::from_bytes(b"c\xff");
        std::fs::create_dir_all(dir.path().join("train").join(odd)).unwrap();
        let err = load(dir.path(), &FolderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("UTF-8"), "{err}");
    }

    /// One-pixel-high images, which DSA's scale and rotation cannot place, are refused
    /// when the tree is read, with the size and its source.
    #[test]
    fn images_below_2x2_are_refused() {
        let dir = TempDir::new("folder-thin");
        let (thin, _) = png_grey(5, 1, 1);
        dir.write("train/a/0.png", &thin);
        dir.write("test/a/0.png", &thin);
        let err = load(dir.path(), &FolderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 2x2") && err.contains("5x1"), "{err}");
    }

    #[test]
    fn rgb_tree_round_trip() {
        let dir = TempDir::new("folder-rgb");
        let (a0, a0px) = png_rgb(3, 2, 1);
        let (a1, a1px) = png_rgb(3, 2, 2);
        let (b0, b0px) = png_rgb(3, 2, 3);
        let (t0, t0px) = png_rgb(3, 2, 4);
        dir.write("train/b/x.png", &b0);
        dir.write("train/a/2.PNG", &a1);
        dir.write("train/a/1.png", &a0);
        dir.write("train/a/notes.txt", b"ignored");
        dir.write("test/a/deep/er/t.png", &t0);
        std::fs::create_dir_all(dir.path().join("test/b")).expect("mkdir");
        let ds = load(dir.path(), &FolderOptions::default()).expect("load");
        assert_eq!(ds.classes, ["a", "b"]);
        assert_eq!(
            ds.shape,
            ImageShape {
                channels: 3,
                height: 2,
                width: 3
            }
        );
        assert_eq!(ds.train.labels, [0, 0, 1]);
        assert_eq!(ds.train.images, [a0px, a1px, b0px].concat());
        assert_eq!(ds.test.labels, [0]);
        assert_eq!(ds.test.images, t0px);
    }

    #[test]
    fn grey_stays_grey_unless_mixed() {
        let dir = TempDir::new("folder-grey");
        let (g0, g0px) = png_grey(4, 4, 7);
        let (g1, g1px) = png_grey(4, 4, 9);
        dir.write("train/c/g0.png", &g0);
        dir.write("val/c/g1.png", &g1);
        let ds = load(dir.path(), &FolderOptions::default()).expect("load");
        assert_eq!(ds.shape.channels, 1);
        assert_eq!(ds.train.images, g0px);
        assert_eq!(ds.test.images, g1px);

        // One colour image makes every image RGB, greys replicated into all planes.
        let (c0, c0px) = png_rgb(4, 4, 5);
        dir.write("train/c/h.png", &c0);
        let ds = load(dir.path(), &FolderOptions::default()).expect("load");
        assert_eq!(ds.shape.channels, 3);
        assert_eq!(ds.train.images, [g0px.repeat(3), c0px].concat());
        assert_eq!(ds.test.images, g1px.repeat(3));
    }

    #[test]
    fn sizes_must_match_unless_resized() {
        let dir = TempDir::new("folder-size");
        dir.write("train/a/1.png", &png_rgb(4, 4, 1).0);
        dir.write("train/a/2.png", &png_rgb(8, 6, 1).0);
        dir.write("test/a/1.png", &png_rgb(2, 2, 1).0);
        let msg = load(dir.path(), &FolderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("2.png") && msg.contains("8x6"), "{msg}");
        let ds = load(
            dir.path(),
            &FolderOptions {
                resize: Some((5, 3)),
            },
        )
        .expect("load resized");
        assert_eq!((ds.shape.height, ds.shape.width), (5, 3));
        assert_eq!(ds.train.images.len(), 2 * 3 * 15);
        assert_eq!(ds.test.images.len(), 3 * 15);
    }

    #[test]
    fn tiny_imagenet_layout() {
        let dir = TempDir::new("folder-tiny");
        let (a, apx) = png_rgb(2, 2, 1);
        let (b, bpx) = png_rgb(2, 2, 2);
        dir.write("train/n01/images/n01_0.JPEG", &a);
        dir.write("train/n01/n01_boxes.txt", b"x");
        dir.write("train/n02/images/n02_0.JPEG", &b);
        dir.write("val/images/val_0.JPEG", &b);
        dir.write("val/images/val_1.JPEG", &a);
        dir.write(
            "val/val_annotations.txt",
            b"val_0.JPEG\tn02\t0\t0\t1\t1\nval_1.JPEG\tn01\t0\t0\t1\t1\n",
        );
        // Tiny ImageNet's unlabelled test/ must not be taken for the test split.
        dir.write("test/images/test_0.JPEG", &a);
        let ds = load(dir.path(), &FolderOptions::default()).expect("load");
        assert_eq!(ds.classes, ["n01", "n02"]);
        assert_eq!(ds.test.labels, [1, 0]);
        assert_eq!(ds.test.images, [bpx, apx].concat());

        dir.write("val/val_annotations.txt", b"val_0.JPEG\tn99\n");
        let msg = load(dir.path(), &FolderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(TINY_VAL_ANNOTATIONS) && msg.contains("n99"),
            "{msg}"
        );
    }

    #[test]
    fn errors_name_the_file() {
        let dir = TempDir::new("folder-bad");
        dir.write("train/a/1.png", &png_rgb(2, 2, 1).0);
        dir.write("train/b/1.png", &png_rgb(2, 2, 1).0);
        dir.write("test/a/1.png", &png_rgb(2, 2, 1).0);
        let msg = load(dir.path(), &FolderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("test/b") && msg.contains("class `b`"), "{msg}");

        dir.write("test/b/broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg");
        let msg = load(dir.path(), &FolderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("broken.jpg"), "{msg}");

        dir.write("test/c/1.png", &png_rgb(2, 2, 1).0);
        let msg = load(dir.path(), &FolderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("test/c"), "{msg}");

        let no_test = TempDir::new("folder-no-test");
        no_test.write("train/a/1.png", &png_rgb(2, 2, 1).0);
        std::fs::create_dir_all(no_test.path().join("test/a")).expect("mkdir");
        let msg = load(no_test.path(), &FolderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("at least one test image"), "{msg}");

        let empty = TempDir::new("folder-empty");
        let msg = load(empty.path(), &FolderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("train"), "{msg}");
    }

    /// Timing check on a real tree: `HABA_FOLDER_DATASET=<root> cargo test --release
    /// --lib folder::tests::load_real_tree -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn load_real_tree() {
        let Some(root) = std::env::var_os("HABA_FOLDER_DATASET") else {
            eprintln!("note: set HABA_FOLDER_DATASET to a folder dataset to run this");
            return;
        };
        let start = std::time::Instant::now();
        let ds = load(Path::new(&root), &FolderOptions::default()).expect("load");
        eprintln!(
            "loaded {} train + {} test images of {:?}, {} classes in {:.2?}",
            ds.train.len(),
            ds.test.len(),
            ds.shape,
            ds.classes.len(),
            start.elapsed()
        );
    }
}
