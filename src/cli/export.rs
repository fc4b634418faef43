//! `haba export`: a distilled set as a class-per-folder PNG tree.

use std::path::PathBuf;

use anyhow::Context;
use haba::artifact::Artifact;

use super::Common;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run directory or a distilled.safetensors file.
    pub run: PathBuf,
    /// Where the tree goes: <dir>/<class>/<basis>_<hallucinator>.png (must be empty or new).
    #[arg(long)]
    pub png_dir: PathBuf,
}

/// The artifact path of a run directory, or the file itself.
pub fn artifact_path(run: &std::path::Path) -> PathBuf {
    if run.is_dir() {
        run.join(haba::artifact::FILE_NAME)
    } else {
        run.to_path_buf()
    }
}

pub fn run(_common: &Common, args: Args) -> anyhow::Result<()> {
    let path = artifact_path(&args.run);
    // Exporting is plain arithmetic on small tensors: the CPU backend is always there.
    let artifact = Artifact::load(&path, &burn::tensor::Device::flex())
        .with_context(|| format!("reading {}", path.display()))?;
    let n = haba::report::export_png_dir(&artifact, &args.png_dir)
        .with_context(|| format!("exporting into {}", args.png_dir.display()))?;
    println!(
        "wrote {n} images of {} classes into {}",
        artifact.meta.classes.len(),
        args.png_dir.display()
    );
    Ok(())
}
