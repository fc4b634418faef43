//! Mutation fuzzing of the files haba reads back: artifacts, checkpoints, IDX files (raw
//! and gzipped) and CIFAR-100 batches with their class names, each damaged in a thousand
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
    for seed in 0..MUTANTS {
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
