//! Distilled-set artifacts (safetensors with haba's metadata), built on the CPU backend.
#![no_main]

use haba::artifact::Artifact;
use haba::burn::tensor::Device;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(artifact) = Artifact::from_bytes(bytes, &Device::flex()) {
        // What `haba eval` and `haba export` do next with a set that passed validation.
        let _ = artifact.to_bytes();
        let _ = artifact.storage();
    }
});
