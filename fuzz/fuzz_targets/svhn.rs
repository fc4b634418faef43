//! SVHN's MATLAB (level 5) files, plain or with compressed elements.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|bytes: &[u8]| {
    let path = common::input_file("svhn", "train_32x32.mat", bytes);
    let _ = haba::data::svhn::read_split(&path);
});
