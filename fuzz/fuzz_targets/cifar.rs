//! CIFAR-10's binary release: the input is one training batch beside valid ones; its first
//! byte's low bit makes it the class-name file instead.
#![no_main]

use haba::data::cifar::{CIFAR10_NAMES, CIFAR10_TEST, CIFAR10_TRAIN, load_cifar10};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

/// Two records of a label byte and 3072 pixels.
fn good_batch() -> Vec<u8> {
    [3u8, 9]
        .iter()
        .flat_map(|&label| std::iter::once(label).chain((0..3072).map(|i| (i % 253) as u8)))
        .collect()
}

fn good_names() -> Vec<u8> {
    (0..10)
        .flat_map(|c| format!("class{c}\n").into_bytes())
        .collect()
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&choice, input)) = bytes.split_first() else {
        return;
    };
    let dir = common::scratch("cifar", |dir| {
        for file in CIFAR10_TRAIN.iter().chain([&CIFAR10_TEST]) {
            std::fs::write(dir.join(file), good_batch()).unwrap();
        }
        std::fs::write(dir.join(CIFAR10_NAMES), good_names()).unwrap();
    });
    let (victim, good): (&str, fn() -> Vec<u8>) = if choice & 1 == 0 {
        (CIFAR10_TRAIN[2], good_batch)
    } else {
        (CIFAR10_NAMES, good_names)
    };
    std::fs::write(dir.join(victim), input).unwrap();
    let _ = load_cifar10(dir);
    // The next input meets valid files again.
    std::fs::write(dir.join(victim), good()).unwrap();
});
