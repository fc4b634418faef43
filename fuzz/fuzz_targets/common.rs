//! What the file-reading targets share: a scratch folder of this process's own, where each
//! input is written as the file a reader opens.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `<temp>/haba-fuzz-<target>-<pid>`, made once per process and filled by `setup` then,
/// so the valid files around an input are written once, not for every input.
pub fn scratch(target: &str, setup: impl FnOnce(&Path)) -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("haba-fuzz-{target}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch folder in the temp dir");
        setup(&dir);
        dir
    })
}

/// `bytes` written as `name` in the target's scratch folder, for a reader that takes a path.
#[allow(dead_code)] // Targets that build a tree around their input write it themselves.
pub fn input_file(target: &str, name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch(target, |_| {}).join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}
