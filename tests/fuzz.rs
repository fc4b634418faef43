//! Mutation fuzzing of the files haba reads back: artifacts, checkpoints, IDX files (raw
//! and gzipped), CIFAR-10 and CIFAR-100 batches with their class names, and the images of
//! a class-per-folder tree, each damaged in up to a thousand
//! seeded ways (bytes flipped, words replaced by extreme numbers, cuts, insertions). Every
//! damaged file must give an error or a valid result, never a panic.

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};

use haba::artifact::Artifact;
use haba::burn::tensor::Device;
use haba::distill::checkpoint::Checkpoint;
use haba::rng::Rng;

mod common;

const MUTANTS: u64 = 1000;

/// One seeded mutation of `good`.
fn mutate(good: &[u8], seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut b = good.to_vec();
    match rng.below(4) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
        }
        1 => {
            // A 4-byte word becomes an extreme number: all ones, NaN, infinity, zero.
            let word: [u8; 4] = match rng.below(4) {
                0 => [0xff; 4],
                1 => f32::NAN.to_le_bytes(),
                2 => f32::INFINITY.to_le_bytes(),
                _ => [0; 4],
            };
            let i = rng.below(b.len().saturating_sub(4).max(1));
            let end = (i + 4).min(b.len());
            b[i..end].copy_from_slice(&word[..end - i]);
        }
        2 => b.truncate(rng.below(b.len())),
        _ => {
            let i = rng.below(b.len());
            let extra: Vec<u8> = (0..1 + rng.below(64))
                .map(|_| rng.below(256) as u8)
                .collect();
            b.splice(i..i, extra);
        }
    }
    b
}

/// Runs `read` on every mutant of `good`, failing on the first panic with its seed.
fn fuzz(name: &str, good: &[u8], read: impl Fn(&[u8])) {
    fuzz_some(name, good, MUTANTS, read);
}

/// [`fuzz`] with `count` mutants, for readers slow enough that a thousand would drag.
fn fuzz_some(name: &str, good: &[u8], count: u64, read: impl Fn(&[u8])) {
    for seed in 0..count {
        let bad = mutate(good, seed);
        if catch_unwind(AssertUnwindSafe(|| read(&bad))).is_err() {
            panic!("{name}: mutant {seed} made a reader panic");
        }
    }
}

#[test]
fn damaged_artifacts_and_checkpoints_give_errors_not_panics() {
    // A short HaBa-DM run: its artifact and checkpoint are the fuzzer's seeds.
    let dir = common::scratch("fuzz-files");
    let run = dir.join("run");
    common::short_run(&run);
    let device = Device::flex();
    let artifact = std::fs::read(run.join("distilled.safetensors")).unwrap();
    let path = dir.join("mutant.safetensors");
    fuzz("artifact", &artifact, |bytes| {
        std::fs::write(&path, bytes).unwrap();
        let _ = Artifact::load(&path, &device);
    });
    let checkpoint = std::fs::read(run.join("checkpoint.safetensors")).unwrap();
    fuzz("checkpoint", &checkpoint, |bytes| {
        let _ = Checkpoint::from_bytes(bytes, &device);
    });
}

#[test]
fn damaged_idx_files_give_errors_not_panics() {
    let dir = common::scratch("fuzz-idx");
    let mut images = Vec::new();
    for v in [0x0803u32, 3, 4, 5] {
        images.extend_from_slice(&v.to_be_bytes());
    }
    images.extend((0..60).map(|i| i as u8));
    let mut labels = Vec::new();
    for v in [0x0801u32, 3] {
        labels.extend_from_slice(&v.to_be_bytes());
    }
    labels.extend([1, 2, 3]);
    let gzip = |raw: &[u8]| {
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(raw).unwrap();
        z.finish().unwrap()
    };
    let path = dir.join("mutant-idx");
    for (name, good) in [
        ("images", images.clone()),
        ("gzipped images", gzip(&images)),
        ("labels", labels.clone()),
        ("gzipped labels", gzip(&labels)),
    ] {
        fuzz(name, &good, |bytes| {
            std::fs::write(&path, bytes).unwrap();
            let _ = haba::data::idx::read_images(&path);
            let _ = haba::data::idx::read_labels(&path, 10);
        });
    }
}

#[test]
fn damaged_cifar100_files_give_errors_not_panics() {
    use haba::data::cifar::{CIFAR100_NAMES, CIFAR100_TEST, CIFAR100_TRAIN, load_cifar100};
    let dir = common::scratch("fuzz-cifar");
    // Two records: coarse label, fine label, 3072 pixel bytes.
    let mut batch = Vec::new();
    for (coarse, fine) in [(1u8, 7u8), (3, 42)] {
        batch.extend([coarse, fine]);
        batch.extend((0..3072).map(|i| (i % 251) as u8));
    }
    let names: String = (0..100).map(|c| format!("class{c}\n")).collect();
    std::fs::write(dir.join(CIFAR100_TEST), &batch).unwrap();
    std::fs::write(dir.join(CIFAR100_NAMES), &names).unwrap();
    assert!(load_cifar100(&dir).is_err(), "no train file yet");
    std::fs::write(dir.join(CIFAR100_TRAIN), &batch).unwrap();
    assert_eq!(load_cifar100(&dir).unwrap().train.labels, [7, 42]);
    fuzz("cifar-100 batch", &batch, |bytes| {
        std::fs::write(dir.join(CIFAR100_TRAIN), bytes).unwrap();
        let _ = load_cifar100(&dir);
    });
    std::fs::write(dir.join(CIFAR100_TRAIN), &batch).unwrap();
    fuzz("cifar-100 names", names.as_bytes(), |bytes| {
        std::fs::write(dir.join(CIFAR100_NAMES), bytes).unwrap();
        let _ = load_cifar100(&dir);
    });
}

#[test]
fn damaged_cifar10_files_give_errors_not_panics() {
    use haba::data::cifar::{CIFAR10_NAMES, CIFAR10_TEST, CIFAR10_TRAIN, load_cifar10};
    let dir = common::scratch("fuzz-cifar10");
    // Two records of a label and 3072 pixel bytes, in every batch file.
    let mut batch = Vec::new();
    for label in [3u8, 9] {
        batch.push(label);
        batch.extend((0..3072).map(|i| (i % 253) as u8));
    }
    for file in CIFAR10_TRAIN.iter().chain([&CIFAR10_TEST]) {
        std::fs::write(dir.join(file), &batch).unwrap();
    }
    let names: String = (0..10).map(|c| format!("class{c}\n")).collect();
    std::fs::write(dir.join(CIFAR10_NAMES), &names).unwrap();
    assert_eq!(load_cifar10(&dir).unwrap().test.labels, [3, 9]);
    fuzz("cifar-10 batch", &batch, |bytes| {
        std::fs::write(dir.join(CIFAR10_TRAIN[2]), bytes).unwrap();
        let _ = load_cifar10(&dir);
    });
    std::fs::write(dir.join(CIFAR10_TRAIN[2]), &batch).unwrap();
    fuzz("cifar-10 names", names.as_bytes(), |bytes| {
        std::fs::write(dir.join(CIFAR10_NAMES), bytes).unwrap();
        let _ = load_cifar10(&dir);
    });
}

#[test]
fn damaged_images_in_a_folder_tree_give_errors_not_panics() {
    use haba::data::FolderOptions;
    use haba::data::folder::load;
    let root = common::scratch("fuzz-folder");
    // Two classes of two 6x5 PNG images in train/ and test/.
    let png = |v: u8| {
        let img =
            image::RgbImage::from_fn(6, 5, |x, y| image::Rgb([v, x as u8 * 40, y as u8 * 50]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    for split in ["train", "test"] {
        for class in ["cat", "dog"] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..2u8 {
                std::fs::write(dir.join(format!("{i}.png")), png(100 + i)).unwrap();
            }
        }
    }
    let options = FolderOptions::default();
    assert_eq!(load(&root, &options).unwrap().train.labels.len(), 4);
    let victim = root.join("train").join("dog").join("1.png");
    // Fewer mutants than elsewhere: each one decodes a whole tree.
    fuzz_some("a PNG in a folder tree", &png(101), MUTANTS / 4, |bytes| {
        std::fs::write(&victim, bytes).unwrap();
        let _ = load(&root, &options);
    });
}
