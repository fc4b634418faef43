//! `haba datasets`: what is known, what was found where, and downloads.

use std::path::PathBuf;

use anyhow::Context;
use haba::data::{Dataset, SearchPaths};

use super::Common;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Download these datasets (mnist, fashion-mnist, cifar10, cifar100, svhn) with
    /// checksum verification. Set HABA_MIRROR to use another mirror's base URL.
    #[arg(long, value_name = "NAME", num_args = 1..)]
    pub download: Vec<String>,
    /// Where downloads go (default: --data-dir, else $HABA_DATA, else ./data).
    #[arg(long)]
    pub into: Option<PathBuf>,
}

pub fn search(common: &Common) -> SearchPaths {
    SearchPaths::new(common.data_dir.clone())
}

/// Loads a dataset by name; the `embedded` ones are shipped inside the binary.
pub fn load(common: &Common, name: &str) -> anyhow::Result<Dataset> {
    if let Some(subset) = haba::data::embedded::by_name(name) {
        return Ok(subset?);
    }
    let search = search(common);
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(format!("loading {name}"));
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let dataset =
        haba::data::load(name, &search).with_context(|| format!("loading dataset {name}"));
    bar.finish_and_clear();
    let dataset = dataset?;
    eprintln!(
        "data: {} ({} classes, {}x{}x{}, {} train / {} test images)",
        dataset.name,
        dataset.classes.len(),
        dataset.shape.channels,
        dataset.shape.height,
        dataset.shape.width,
        dataset.train.len(),
        dataset.test.len()
    );
    Ok(dataset)
}

pub fn run(common: &Common, args: Args) -> anyhow::Result<()> {
    let search = search(common);
    if !args.download.is_empty() {
        let dest = args
            .into
            .clone()
            .or_else(|| common.data_dir.clone())
            .or_else(|| std::env::var_os("HABA_DATA").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("data"));
        let mirror = haba::data::download::mirror_from_env();
        for name in &args.download {
            let path = haba::data::download::download(name, &dest, mirror.as_deref())
                .with_context(|| format!("downloading {name} into {}", dest.display()))?;
            eprintln!("{name}: ready in {}", path.display());
        }
    }
    println!("{:<16} {:<10} location / description", "dataset", "status");
    for (name, what) in haba::data::embedded::SUBSETS {
        println!("{name:<16} {:<10} {what}", "built in");
    }
    for status in haba::data::list(&search) {
        let (state, place) = match &status.found {
            Some(path) => ("found", path.display().to_string()),
            None if status.downloadable => (
                "missing",
                format!(
                    "{} (haba datasets --download {})",
                    status.description, status.name
                ),
            ),
            None => ("missing", status.description.clone()),
        };
        println!("{:<16} {:<10} {}", status.name, state, place);
    }
    println!(
        "\nsearched, in order: {}",
        search
            .roots
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "any class-per-folder image tree loads with --dataset PATH (train/ and test/ or val/ inside)"
    );
    Ok(())
}
