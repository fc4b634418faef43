//! The main job, run by `haba` with no command: HaBa-DM and HaBa-MTT beside plain DM and
//! MTT and random real images, all at the same storage, evaluated, in one table and
//! `compare.png`. By default on colour data, the CIFAR-10 subset built into the binary
//! (where HaBa's hallucinators pay); `--dataset` takes any other, the grey Fashion-MNIST
//! job among them. MTT's experts are trained once and kept beside the runs. Sized to
//! finish in minutes on a CPU.

use std::path::PathBuf;

use haba::data::{Dataset, Prepared, subset};
use haba::distill::buffer::{BufferKey, ExpertSettings};
use haba::distill::run::{evaluated_set, report_of};
use haba::distill::{DistillConfig, Distiller, ObjectiveConfig};
use haba::haba::Storage;
use haba::report::compare::{compare, rows_of_report, table};
use haba::report::{EvaluatedSet, RunDir};
use haba::rng::Rng;

use super::Common;

/// What the main job runs on one kind of data.
struct Recipe {
    /// HaBa-DM at the job's budget (`ipc` images per class); plain DM is the same without
    /// HaBa.
    dm: DistillConfig,
    /// HaBa-MTT at the same budget (the buffer is filled in); plain MTT likewise.
    mtt: DistillConfig,
    experts: ExpertSettings,
    /// How many experts, and the real images per class they train on.
    expert_count: usize,
    expert_images_per_class: usize,
}

/// The colour recipe (the CIFAR-10 subset, or any colour data) or the grey one.
fn recipe(colour: bool, dataset: &str, seed: u64) -> anyhow::Result<Recipe> {
    let (dm, mtt) = if colour {
        ("quick-cifar10", "quick-mtt-cifar10")
    } else {
        ("quick", "quick-mtt")
    };
    let with = |name: &str| -> anyhow::Result<DistillConfig> {
        Ok(DistillConfig {
            dataset: dataset.into(),
            seed,
            ..DistillConfig::preset(name)?
        })
    };
    let mtt = with(mtt)?;
    let ObjectiveConfig::Mtt(m) = &mtt.objective else {
        anyhow::bail!("the main job's MTT preset is not MTT");
    };
    Ok(Recipe {
        dm: with(dm)?,
        // Batches of 64: at 256 an epoch of the subset's 3,000 images is 12 steps, and a
        // student's 10 steps on 10 images overshoot it, so α falls to its floor and MTT
        // learns nothing (measured in the README).
        experts: ExpertSettings {
            model: "ConvNetW32".parse()?,
            epochs: m.max_start_epoch + m.expert_epochs,
            batch: 64,
            seed,
            ..ExpertSettings::default()
        },
        mtt,
        expert_count: 2,
        expert_images_per_class: if colour { 300 } else { 200 },
    })
}

/// `haba [--dataset NAME]`: the main job.
pub fn run(common: &Common, dataset: Option<&str>) -> anyhow::Result<()> {
    let began = std::time::Instant::now();
    let selected = common.device()?;
    let name = dataset.unwrap_or("embedded-cifar10");
    let data = super::datasets::load(common, name)?;
    let r = recipe(data.shape.channels == 3, name, common.seed())?;
    let preprocess = r.dm.preprocessing()?;
    let prepared = Prepared::new(&data, preprocess, &selected.device)?;
    let run = RunDir::new(super::distill::fresh_run_dir(&r.dm))?;
    let ipc = r.dm.ipc;
    eprintln!(
        "main job on {}: HaBa-DM, DM, HaBa-MTT, MTT and random real images at the storage of \
         {ipc} images per class; {} x {} for {} epochs evaluate each. Run directory: {}",
        data.name,
        r.dm.eval.nets,
        r.dm.eval.model,
        r.dm.eval.epochs,
        run.path.display()
    );
    for line in super::distill::cautions(&r.dm, &data) {
        eprintln!("warning: {line}");
    }

    let mut report = None;
    let mut add = |set_name: &str, cfg: DistillConfig, dir: PathBuf| -> anyhow::Result<()> {
        let sub = RunDir::new(dir)?;
        let mut d = Distiller::new(cfg, &prepared)?;
        let result = super::distill::run_with_bar(&mut d, &prepared, &data, &sub)?;
        match &mut report {
            None => {
                let mut first = report_of(&d, &data, &selected.name, result);
                first.sets[0].name = set_name.into();
                sub.write_report(&first)?;
                report = Some(first);
            }
            Some(rep) => rep.sets.push(evaluated_set(&d, set_name, result)),
        }
        Ok(())
    };
    let plain = |cfg: &DistillConfig| DistillConfig {
        haba: false,
        budget_equal: false,
        ..cfg.clone()
    };
    add("HaBa-DM", r.dm.clone(), run.path.clone())?;
    add("DM", plain(&r.dm), run.path.join("baseline-dm"))?;

    // Trajectory matching over a small buffer, trained once and kept beside the runs.
    let mut mtt = r.mtt.clone();
    let buffer = experts(&r, &mtt, &data, &prepared)?;
    if let ObjectiveConfig::Mtt(m) = &mut mtt.objective {
        m.buffer = buffer.to_string_lossy().into_owned();
    }
    add("HaBa-MTT", mtt.clone(), run.path.join("baseline-haba-mtt"))?;
    add("MTT", plain(&mtt), run.path.join("baseline-mtt"))?;
    let mut report = report.expect("the first set made the report");

    // A fresh draw from the seed: the same real images whatever ran before.
    let classes = data.classes.len();
    let idx = subset::random_per_class(&data.train.labels, classes, ipc, &mut Rng::new(r.dm.seed))?;
    let real = prepared.train_subset(&idx);
    eprintln!("random real images, {ipc} per class:");
    let evaluation = r.dm.eval_config(None);
    let real_result = super::eval::evaluate_with_bar(&real, &prepared, &evaluation, r.dm.seed)?;
    report.sets.push(EvaluatedSet {
        name: "random real".into(),
        storage: Storage::new(idx.len() * data.shape.numel(), 0, data.shape, classes),
        iterations: None,
        evaluation,
        result: real_result,
    });
    run.write_report(&report)?;

    let rows = compare(vec![rows_of_report(&run.name(), &report)])?;
    println!(
        "\n{}, storage of {ipc} images per class, {} x {} for {} epochs (test accuracy, \
         mean ± std over the networks):\n",
        data.name, r.dm.eval.nets, r.dm.eval.model, r.dm.eval.epochs
    );
    print!("{}", table(&rows));
    super::compare::write(&rows, &run.path)?;
    let seconds = began.elapsed().as_secs();
    println!(
        "\nrun directory: {} (compare.png, bases.png, hallucinated.png, curves.png, \
         report.json; one sub-directory per baseline); {} min {} s",
        run.path.display(),
        seconds / 60,
        seconds % 60
    );
    Ok(())
}

/// The main job's experts for `mtt`, trained unless already in their folder under `runs/`
/// (named by dataset, network and preprocessing, so a rerun reuses them).
fn experts(
    r: &Recipe,
    mtt: &DistillConfig,
    data: &Dataset,
    prepared: &Prepared,
) -> anyhow::Result<PathBuf> {
    let preprocess = mtt.preprocessing()?;
    let model = r.experts.model;
    let dir = std::path::Path::new("runs").join(format!(
        "main-job-buffer-{}-{model}-{preprocess}",
        mtt.dataset
    ));
    let key = BufferKey::of(&mtt.dataset, preprocess, prepared, model);
    let classes = data.classes.len();
    let per_class = r.expert_images_per_class;
    let idx = subset::random_per_class(
        &data.train.labels,
        classes,
        per_class,
        &mut Rng::new(mtt.seed),
    )?;
    eprintln!(
        "expert trajectories for MTT ({} x {model}, {} epochs on {} real images) in {}:",
        r.expert_count,
        r.experts.epochs,
        idx.len(),
        dir.display()
    );
    super::buffer::train_missing(
        &dir,
        &key,
        &r.experts,
        0..r.expert_count,
        &prepared.train_subset(&idx),
    )?;
    Ok(dir)
}
