//! `haba eval`: the evaluation protocol on a chosen training set.

use std::path::PathBuf;

use anyhow::{Context, bail};
use haba::artifact::Artifact;
use haba::data::{NormKind, Prepared, subset};
use haba::eval::evaluate_factorization;
use haba::eval::{EvalConfig, EvalProgress, EvalResult};
use haba::haba::Storage;
use haba::nets::Arch;
use haba::report::{EvaluatedSet, Report};
use haba::rng::Rng;
use haba::train::TrainConfig;

use super::Common;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run directory or distilled.safetensors to evaluate (its dataset and preprocessing
    /// come from the artifact).
    #[arg(conflicts_with_all = ["dataset", "random_real", "whole", "preprocess"])]
    pub artifact: Option<PathBuf>,
    /// Dataset name (see `haba datasets`), a class-per-folder image tree, or `embedded`.
    #[arg(long, default_value = "fashion-mnist")]
    pub dataset: String,
    /// Train on N random real images per class (drawn with --seed).
    #[arg(long, value_name = "N", conflicts_with = "whole")]
    pub random_real: Option<usize>,
    /// Train on the whole training split.
    #[arg(long)]
    pub whole: bool,
    /// Network to train (ConvNet, ConvNetW64, AlexNet, VGG11, ResNet18, LeNet, MLP, ...).
    #[arg(long, default_value = "ConvNet")]
    pub model: Arch,
    /// Number of fresh networks (K).
    #[arg(long, default_value_t = 5)]
    pub nets: usize,
    /// Training epochs per network (E); the learning rate drops x0.1 at E/2.
    #[arg(long, default_value_t = 1000)]
    pub epochs: usize,
    /// SGD learning rate (0.01; an artifact with a learned rate, from MTT, trains at that
    /// unless this is given).
    #[arg(long)]
    pub lr: Option<f32>,
    /// Training batch size, in images.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// DSA strategy while training, or `none`.
    #[arg(long, default_value = haba::eval::DEFAULT_DSA)]
    pub dsa: String,
    /// Preprocessing fitted on the train split: meanstd, zca (eps 0.1) or zca:EPS.
    #[arg(long, default_value = "meanstd")]
    pub preprocess: NormKind,
    /// Standardise every training batch per channel: on or off (default: on for HaBa
    /// artifacts, as HaBa's evaluation does; off otherwise).
    #[arg(long)]
    pub standardize: Option<Switch>,
    /// Write the numbers and every setting to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

pub fn run(common: &Common, args: Args) -> anyhow::Result<()> {
    if let Some(path) = &args.artifact {
        return run_artifact(common, &args, path);
    }
    let training_set = match (args.random_real, args.whole) {
        (Some(0), _) => bail!("--random-real needs at least 1 image per class"),
        (Some(n), _) => format!("random-real {n} per class"),
        (None, true) => "whole train split".to_string(),
        (None, false) => bail!("choose a training set: --random-real N or --whole"),
    };
    let cfg = protocol(&args)?;
    let selected = common.device()?;
    let dataset = super::datasets::load(common, &args.dataset)?;
    let prepared = Prepared::new(&dataset, args.preprocess, &selected.device)
        .with_context(|| format!("preprocessing {}", dataset.name))?;
    let train_set = match args.random_real {
        Some(n) => {
            let mut rng = Rng::new(common.seed());
            let idx = subset::random_per_class(
                &dataset.train.labels,
                dataset.classes.len(),
                n,
                &mut rng,
            )?;
            prepared.train_subset(&idx)
        }
        None => prepared.train.clone(),
    };
    eprintln!(
        "eval: {} on {} ({}, {} images), {} x {} for {} epochs",
        dataset.name,
        training_set,
        args.preprocess,
        train_set.len(),
        cfg.nets,
        cfg.model,
        cfg.train.epochs
    );
    let result = evaluate_with_bar(&train_set, &prepared, &cfg, common.seed())?;
    println!(
        "{} | {} | {}: test accuracy {} %",
        dataset.name,
        training_set,
        cfg.model,
        result.percent()
    );
    if let Some(path) = &args.json {
        let mut report = Report::new(
            &dataset.name,
            &dataset.classes,
            &selected.name,
            common.seed(),
        );
        report.preprocess = Some(args.preprocess);
        let floats = train_set.len() * dataset.shape.numel();
        report.sets.push(EvaluatedSet {
            name: training_set,
            storage: Storage::new(floats, 0, dataset.shape, dataset.classes.len()),
            iterations: None,
            evaluation: cfg,
            result,
        });
        write_json(path, &report)?;
    }
    Ok(())
}

/// `--json FILE`: the report.
fn write_json(path: &std::path::Path, report: &Report) -> anyhow::Result<()> {
    haba::report::write_report_json(path, report)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn protocol(args: &Args) -> anyhow::Result<EvalConfig> {
    if args.epochs == 0 || args.batch == 0 {
        bail!("--epochs and --batch must be at least 1");
    }
    Ok(EvalConfig {
        model: args.model,
        nets: args.nets,
        train: TrainConfig {
            batch: args.batch,
            standardize_batches: matches!(args.standardize, Some(Switch::On)),
            ..TrainConfig::protocol(args.epochs, args.lr.unwrap_or(0.01))
        },
        dsa: args.dsa.clone(),
        ..EvalConfig::default()
    })
}

/// `haba eval RUN`: the full protocol on a distilled set.
fn run_artifact(common: &Common, args: &Args, path: &std::path::Path) -> anyhow::Result<()> {
    let selected = common.device()?;
    let file = super::export::artifact_path(path);
    let artifact = Artifact::load(&file, &selected.device)
        .with_context(|| format!("reading {}", file.display()))?;
    let dataset = super::datasets::load(common, &artifact.meta.dataset)?;
    let test = artifact
        .test_set(&dataset, &selected.device)
        .with_context(|| format!("evaluating {}", file.display()))?;
    let mut cfg = protocol(args)?;
    if args.standardize.is_none() {
        cfg.train.standardize_batches = artifact.factorization.hallucinators.is_some();
    }
    if let (Some(lr), None) = (artifact.lr, args.lr) {
        eprintln!("eval: training at the artifact's learned learning rate {lr}");
        cfg.train.sgd.lr = lr;
    }
    let storage = artifact.storage();
    eprintln!(
        "eval: {} ({}), storage {} floats = {:.2} images per class; {} x {} for {} epochs",
        file.display(),
        artifact.meta.method,
        storage.total_floats,
        storage.image_equivalents_per_class,
        cfg.nets,
        cfg.model,
        cfg.train.epochs
    );
    let result = with_bar(&cfg, |progress| {
        evaluate_factorization(
            &artifact.factorization,
            &test,
            dataset.classes.len(),
            &cfg,
            common.seed(),
            progress,
        )
    })?;
    println!(
        "{} | {} | {}: test accuracy {} %",
        dataset.name,
        artifact.meta.method,
        cfg.model,
        result.percent()
    );
    if let Some(json) = &args.json {
        let seed = common.seed();
        let mut report = Report::new(&dataset.name, &dataset.classes, &selected.name, seed);
        let iterations = artifact
            .meta
            .settings
            .get(haba::distill::run::ITERATIONS_DONE)
            .and_then(|i| i.as_u64());
        report.sets.push(EvaluatedSet {
            name: artifact.meta.method.clone(),
            storage,
            iterations: iterations.map(|i| i as usize),
            evaluation: cfg,
            result,
        });
        write_json(json, &report)?;
    }
    Ok(())
}

/// Runs the protocol with a progress bar over all epochs of all networks.
pub fn evaluate_with_bar(
    train_set: &haba::data::LabelledImages,
    prepared: &Prepared,
    cfg: &EvalConfig,
    seed: u64,
) -> anyhow::Result<EvalResult> {
    with_bar(cfg, |progress| {
        haba::eval::evaluate(
            train_set,
            &prepared.test,
            prepared.classes,
            cfg,
            seed,
            progress,
        )
    })
}

/// Runs an evaluation with a progress bar over all epochs of all networks, showing the
/// current loss and the accuracies of the networks done so far.
fn with_bar(
    cfg: &EvalConfig,
    evaluate: impl FnOnce(&mut dyn FnMut(EvalProgress)) -> haba::Result<EvalResult>,
) -> anyhow::Result<EvalResult> {
    let bar = super::progress_bar((cfg.nets * cfg.train.epochs) as u64, "eval");
    let mut accs: Vec<String> = Vec::new();
    let result = evaluate(&mut |p| match p {
        EvalProgress::Epoch { net, loss, .. } => {
            bar.inc(1);
            bar.set_message(format!(
                "net {}/{} loss {loss:.3} {}",
                net + 1,
                cfg.nets,
                accs.join(" ")
            ));
        }
        EvalProgress::NetDone { accuracy, .. } => accs.push(format!("{:.1}%", 100.0 * accuracy)),
    })?;
    bar.finish_and_clear();
    Ok(result)
}
