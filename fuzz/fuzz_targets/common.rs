//! What the file-reading targets share: a scratch folder of this process's own, where each
//! input is written as the file a reader opens.

use std::path::PathBuf;
use std::sync::OnceLock;

/// `<temp>/haba-fuzz-<target>-<pid>`, made once per process.
pub fn scratch(target: &str) -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("haba-fuzz-{target}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch folder in the temp dir");
        dir
    })
}
