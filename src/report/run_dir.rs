//! A run directory and every file name in it: the one place that knows them.
//!
//! ```text
//! RUN/config.toml              every setting (what --resume reads back)
//! RUN/distilled.safetensors    the artifact (bases, hallucinators, labels, metadata)
//! RUN/checkpoint.safetensors   every learned tensor, optimiser momentum and the iteration
//! RUN/metrics.jsonl            one line per logged iteration and per evaluation
//! RUN/report.json              what was evaluated, at what storage ([`super::Report`])
//! RUN/bases.png, hallucinated.png  true colour; *-stretched.png each image to its range
//! RUN/curves.png               objective, contrastive terms, accuracy, the objective's own
//! RUN/compare.png, compare.json    the main job's table of runs at equal storage
//! ```

use std::path::{Path, PathBuf};

use super::{Display, Report};
use crate::distill::DistillConfig;
use crate::error::{Error, Result};

pub const CONFIG_TOML: &str = "config.toml";
pub const CHECKPOINT: &str = "checkpoint.safetensors";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const REPORT_JSON: &str = "report.json";
pub const BASES_PNG: &str = "bases.png";
pub const HALLUCINATED_PNG: &str = "hallucinated.png";
pub const CURVES_PNG: &str = "curves.png";
pub const COMPARE_PNG: &str = "compare.png";
pub const COMPARE_JSON: &str = "compare.json";

/// The files of one run directory.
#[derive(Clone, Debug)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    /// The directory at `path`, created if needed.
    pub fn new(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        std::fs::create_dir_all(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Self { path })
    }

    /// A directory that may not exist (for reading).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The directory's last component, as tables name a run.
    pub fn name(&self) -> String {
        self.path.file_name().map_or_else(
            || self.path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    pub fn config(&self) -> PathBuf {
        self.path.join(CONFIG_TOML)
    }
    pub fn artifact(&self) -> PathBuf {
        self.path.join(crate::artifact::FILE_NAME)
    }
    pub fn checkpoint(&self) -> PathBuf {
        self.path.join(CHECKPOINT)
    }
    pub fn metrics(&self) -> PathBuf {
        self.path.join(METRICS_FILE)
    }
    pub fn report(&self) -> PathBuf {
        self.path.join(REPORT_JSON)
    }
    pub fn curves(&self) -> PathBuf {
        self.path.join(CURVES_PNG)
    }
    /// `bases.png` or `bases-stretched.png`.
    pub fn bases_png(&self, display: Display) -> PathBuf {
        self.path.join(display.file_name(BASES_PNG))
    }
    /// `hallucinated.png` or `hallucinated-stretched.png`.
    pub fn hallucinated_png(&self, display: Display) -> PathBuf {
        self.path.join(display.file_name(HALLUCINATED_PNG))
    }

    /// The settings a run was started with.
    pub fn read_config(&self) -> Result<DistillConfig> {
        DistillConfig::from_toml(&read_text(&self.config())?)
    }

    pub fn write_config(&self, cfg: &DistillConfig) -> Result<()> {
        crate::artifact::write_atomic(&self.config(), cfg.to_toml().as_bytes())
    }

    /// The run's `report.json`, with an error naming the file when it is missing or
    /// not a report.
    pub fn read_report(&self) -> Result<Report> {
        let path = self.report();
        Report::from_json(&read_text(&path)?).map_err(|reason| Error::Artifact { path, reason })
    }

    pub fn write_report(&self, report: &Report) -> Result<()> {
        super::write_report_json(&self.report(), report)
    }
}

/// A text file of the run, with an error naming it.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}
