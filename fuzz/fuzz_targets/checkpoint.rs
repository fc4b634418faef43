//! Run checkpoints (one safetensors file of every learned tensor and the iteration).
#![no_main]

use haba::burn::tensor::Device;
use haba::distill::checkpoint::Checkpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(checkpoint) = Checkpoint::from_bytes(bytes, &Device::flex()) {
        let _ = checkpoint.to_bytes();
    }
});
