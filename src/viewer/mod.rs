//! `haba view`: a native window on a run directory or an artifact (eframe/egui on winit
//! and wgpu). The images are generated live from the stored factorization on the same
//! wgpu device the window draws with: Burn opens the device once
//! ([`crate::device::wgpu_setup`]) and eframe renders on it.
//!
//! Views: the hallucinator x basis matrix, the bases per class, a what-if view (every
//! hallucinator on one basis, and on a real test image), the run's curves from
//! `metrics.jsonl`, and the storage summary from `report.json`. Live mode follows a
//! running distillation's new checkpoints and metrics.

mod app;
pub mod model;

use std::path::PathBuf;
use std::str::FromStr;

use crate::artifact::Artifact;
use crate::error::{Error, Result};

/// The tab the window opens on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum View {
    #[default]
    Matrix,
    Bases,
    WhatIf,
    Curves,
    Report,
}

impl View {
    pub const ALL: [View; 5] = [
        View::Matrix,
        View::Bases,
        View::WhatIf,
        View::Curves,
        View::Report,
    ];

    /// The name `--view` takes.
    pub fn name(self) -> &'static str {
        match self {
            View::Matrix => "matrix",
            View::Bases => "bases",
            View::WhatIf => "what-if",
            View::Curves => "curves",
            View::Report => "report",
        }
    }

    fn title(self) -> &'static str {
        match self {
            View::Matrix => "Hallucinator x basis",
            View::Bases => "Bases per class",
            View::WhatIf => "What if",
            View::Curves => "Curves",
            View::Report => "Storage & report",
        }
    }
}

impl FromStr for View {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        View::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown view `{s}`: use matrix, bases, what-if, curves or report"
                ))
            })
    }
}

/// What `haba view` was asked for.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// A run directory or a `distilled.safetensors` file.
    pub path: PathBuf,
    /// Follow new checkpoints and metrics of a running distillation.
    pub live: bool,
    /// The tab to open on.
    pub view: View,
    /// Save a screenshot of the window there after the first frames, then close (for
    /// tests and documentation).
    pub screenshot: Option<PathBuf>,
    /// Where to look for the dataset's real images (the what-if view).
    pub data_dir: Option<PathBuf>,
    /// True colour, or each image stretched to its own range.
    pub display: crate::report::Display,
}

/// Why a window could not be opened, with what to do instead.
fn no_window(reason: impl std::fmt::Display) -> Error {
    Error::Device(format!(
        "the viewer cannot open a window: {reason}. It needs a display and a GPU adapter \
         (on Linux without a GPU, Mesa's lavapipe: package mesa-vulkan-drivers). Without \
         them, write the images as PNGs with `haba export RUN --png-dir DIR` (the run \
         directory also holds bases.png, hallucinated.png, metrics.jsonl and report.json)"
    ))
}

/// Opens the window and returns when it is closed.
pub fn run(options: Options) -> Result<()> {
    let source = model::Source::new(&options.path)?;
    #[cfg(all(unix, not(target_os = "macos")))]
    if std::env::var_os("DISPLAY").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
        return Err(no_window("neither DISPLAY nor WAYLAND_DISPLAY is set"));
    }
    let (device, setup) = crate::device::wgpu_setup().map_err(no_window)?;
    let info = setup.adapter.get_info();
    let adapter = format!("{} ({:?})", info.name, info.backend);
    eprintln!("viewer: drawing and computing on wgpu: {adapter}");
    let artifact = Artifact::load(&source.artifact, &device)?;

    let title = format!("haba view: {}", options.path.display());
    let native = eframe::NativeOptions {
        viewport: eframe::egui::ViewportBuilder::default()
            .with_inner_size([1280.0, 800.0])
            .with_title(title),
        renderer: eframe::Renderer::Wgpu,
        wgpu_options: eframe::egui_wgpu::WgpuConfiguration {
            wgpu_setup: eframe::egui_wgpu::WgpuSetup::Existing(
                eframe::egui_wgpu::WgpuSetupExisting {
                    instance: setup.instance,
                    adapter: setup.adapter,
                    device: setup.device,
                    queue: setup.queue,
                },
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    eframe::run_native(
        "haba view",
        native,
        Box::new(move |cc| {
            let app = app::App::new(&cc.egui_ctx, options, source, device, adapter, artifact)
                .map_err(|e| e.to_string())?;
            Ok(Box::new(app))
        }),
    )
    .map_err(no_window)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_parse_by_name() {
        for v in View::ALL {
            assert_eq!(v.name().parse::<View>().unwrap(), v);
        }
        assert!("tiles".parse::<View>().is_err());
    }
}
