//! `haba buffer`: expert trajectories for trajectory matching, one file per expert, in
//! shards that many machines can share.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use haba::data::{LabelledImages, NormKind, Prepared};
use haba::distill::buffer::{
    BufferKey, ExpertSettings, Trajectory, expert_path, train_expert, write_expert,
};
use haba::nets::Arch;

use super::Common;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dataset name (see `haba datasets`), a class-per-folder image tree, or `embedded`.
    #[arg(long, default_value = "cifar10")]
    pub dataset: String,
    /// Preprocessing fitted on the train split: zca (eps 0.1, as the reference's CIFAR
    /// buffers), zca:EPS or meanstd. Distillation must use the same.
    #[arg(long, default_value = "zca")]
    pub preprocess: NormKind,
    /// The experts' network; the distillation's student must be the same.
    #[arg(long, default_value = "ConvNet")]
    pub model: Arch,
    /// Which experts this machine trains: `A..B` (B excluded) or a count N for `0..N`.
    /// Expert i always draws from the same random stream, so shards add up to one buffer.
    #[arg(long, default_value = "0..100", value_parser = parse_experts)]
    pub experts: Range<usize>,
    /// Training epochs per expert (the reference's `--train_epochs`).
    #[arg(long, default_value_t = 50)]
    pub epochs: usize,
    /// Where the expert files go; `haba distill --method mtt --buffer DIR` reads them.
    #[arg(long)]
    pub out: PathBuf,
    /// Expert SGD learning rate (the reference's `--lr_teacher`).
    #[arg(long, default_value_t = 0.01)]
    pub lr: f32,
    /// Expert SGD momentum (the reference's `--mom`).
    #[arg(long, default_value_t = 0.0)]
    pub momentum: f32,
    /// Expert weight decay (the reference's `--l2`).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Real images per expert batch (the reference's `--batch_train`).
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// DSA strategy while training, or `none`.
    #[arg(long, default_value = haba::eval::DEFAULT_DSA)]
    pub dsa: String,
}

/// `A..B` or `N` (for `0..N`).
fn parse_experts(s: &str) -> Result<Range<usize>, String> {
    let num = |t: &str| {
        t.trim()
            .parse::<usize>()
            .map_err(|_| format!("`{s}`: expected A..B or a count N, e.g. 40..60"))
    };
    let range = match s.split_once("..") {
        Some((a, b)) => num(a)?..num(b)?,
        None => 0..num(s)?,
    };
    if range.is_empty() {
        return Err(format!(
            "`{s}` names no expert: the end must be above the start"
        ));
    }
    Ok(range)
}

pub fn run(common: &Common, args: Args) -> anyhow::Result<()> {
    if args.epochs == 0 || args.batch == 0 {
        bail!("--epochs and --batch must be at least 1");
    }
    for (flag, v) in [
        ("--lr", args.lr),
        ("--momentum", args.momentum),
        ("--weight-decay", args.weight_decay),
    ] {
        if !v.is_finite() || v < 0.0 {
            bail!("{flag} must be a finite number >= 0, found {v}");
        }
    }
    let selected = common.device()?;
    let dataset = super::datasets::load(common, &args.dataset)?;
    let prepared = Prepared::new(&dataset, args.preprocess, &selected.device)
        .with_context(|| format!("preprocessing {}", dataset.name))?;
    let key = BufferKey::of(&args.dataset, args.preprocess, &prepared, args.model);
    let settings = ExpertSettings {
        model: args.model,
        epochs: args.epochs,
        lr: args.lr,
        momentum: args.momentum,
        weight_decay: args.weight_decay,
        batch: args.batch,
        dsa: args.dsa.clone(),
        seed: common.seed(),
    };
    train_missing(
        &args.out,
        &key,
        &settings,
        args.experts.clone(),
        &prepared.train,
    )?;
    println!(
        "{} expert(s) of {} on {} ({} epochs) in {}",
        args.experts.len(),
        args.model,
        dataset.name,
        args.epochs,
        args.out.display()
    );
    Ok(())
}

/// Trains the experts of `range` that `dir` lacks, with one progress bar. A finished
/// expert is one whole file (written atomically), so an interrupted run starts again at
/// the first expert without one.
pub fn train_missing(
    dir: &Path,
    key: &BufferKey,
    settings: &ExpertSettings,
    range: Range<usize>,
    train_set: &LabelledImages,
) -> anyhow::Result<()> {
    let todo: Vec<usize> = range
        .clone()
        .filter(|&i| !finished(dir, i, key, settings))
        .collect();
    let done = range.len() - todo.len();
    if done > 0 {
        eprintln!("{done} expert(s) already in {}: skipped", dir.display());
    }
    let bar = super::progress_bar((todo.len() * settings.epochs) as u64, "experts");
    for (k, &i) in todo.iter().enumerate() {
        let t = train_expert(key, settings, i, train_set, &mut |epoch, loss| {
            bar.inc(1);
            bar.set_message(format!(
                "expert {i} ({} of {}) epoch {} loss {loss:.3}",
                k + 1,
                todo.len(),
                epoch + 1
            ));
        })
        .with_context(|| format!("training expert {i}"))?;
        write_expert(dir, &t)?;
    }
    bar.finish_and_clear();
    Ok(())
}

/// Whether expert `i` is on disk with these settings (a damaged or foreign file is
/// trained again, with a word).
fn finished(dir: &Path, i: usize, key: &BufferKey, settings: &ExpertSettings) -> bool {
    let path = expert_path(dir, i);
    let Ok(bytes) = std::fs::read(&path) else {
        return false;
    };
    match Trajectory::from_bytes(&bytes) {
        Ok(t) if &t.meta.key == key && &t.meta.settings == settings => true,
        Ok(_) => {
            eprintln!(
                "{} was made with other settings: training it again",
                path.display()
            );
            false
        }
        Err(e) => {
            eprintln!("{}: {e}: training it again", path.display());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expert_ranges_parse_and_empty_ones_are_refused() {
        assert_eq!(parse_experts("40..60").unwrap(), 40..60);
        assert_eq!(parse_experts("5").unwrap(), 0..5);
        assert!(parse_experts("6..6").unwrap_err().contains("no expert"));
        assert!(parse_experts("a..b").unwrap_err().contains("40..60"));
    }
}
