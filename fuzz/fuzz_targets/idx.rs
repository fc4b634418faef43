//! IDX image and label files, raw or gzipped (the reader tells them apart by their bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|bytes: &[u8]| {
    let path = common::input_file("idx", "input-idx", bytes);
    let _ = haba::data::idx::read_images(&path);
    let _ = haba::data::idx::read_labels(&path, 10);
});
