//! `haba view`: a window on a run directory or an artifact.

use std::path::PathBuf;

use anyhow::Context;

use super::Common;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run directory or a distilled.safetensors file.
    pub run: PathBuf,
    /// Follow a running distillation: reload new checkpoints and metrics as they land.
    #[arg(long)]
    pub live: bool,
    /// The view to open on: matrix, bases, what-if, curves or report.
    #[arg(long, default_value = "matrix")]
    pub view: haba::viewer::View,
    /// Save a screenshot of the window to this PNG after the first frames, then close.
    #[arg(long)]
    pub screenshot: Option<PathBuf>,
    /// Colours: true-colour (de-normalised, clamped) or stretch (each image to its own
    /// range, shows what saturates in true colour).
    #[arg(long, default_value = "true-colour")]
    pub display: haba::report::Display,
}

pub fn run(common: &Common, args: Args) -> anyhow::Result<()> {
    // The viewer always computes on the wgpu device it draws with; --device is ignored.
    haba::viewer::run(haba::viewer::Options {
        path: args.run.clone(),
        live: args.live,
        view: args.view,
        screenshot: args.screenshot,
        data_dir: common.data_dir.clone(),
        display: args.display,
    })
    .with_context(|| format!("viewing {}", args.run.display()))
}
