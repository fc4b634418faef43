//! Helpers the end-to-end test files share.

#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// An empty scratch directory under the system temp dir, unique to `tag` and this process.
pub fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("haba-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A two-iteration HaBa-DM run of the quick preset on the embedded set into `run`
/// (10 classes, 1 basis each, 5 hallucinators), evaluated by one net for one epoch.
/// Panics with the run's output if it fails.
pub fn short_run(run: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_haba"))
        .args(["distill", "--preset", "quick", "--iterations", "2"])
        .args([
            "--eval-nets",
            "1",
            "--eval-epochs",
            "1",
            "--device",
            "cpu",
            "--out",
        ])
        .arg(run)
        .output()
        .expect("the haba binary runs");
    assert!(out.status.success(), "{}", text(&out));
}

/// A finished command's stdout and stderr, for assertion messages and searches.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
