//! The main job, run by `haba` with no command: HaBa-DM on Fashion-MNIST (the embedded
//! subset, or the full dataset when one is found), evaluated beside plain DM, HaBa-MTT and
//! plain MTT (over a small expert buffer it trains once and keeps) and random real images
//! at equal storage, in one table. Sized to finish in minutes on a CPU.

use haba::data::{Prepared, subset};
use haba::distill::buffer::{BufferKey, ExpertSettings};
use haba::distill::run::{evaluated_set, report_of};
use haba::distill::{DistillConfig, Distiller, ObjectiveConfig};
use haba::haba::Storage;
use haba::nets::Arch;
use haba::report::{EvaluatedSet, RunDir};
use haba::rng::Rng;

use super::Common;

pub fn run(common: &Common) -> anyhow::Result<()> {
    let selected = common.device()?;
    let mut cfg = DistillConfig::preset("quick")?;
    cfg.seed = common.seed();
    let search = super::datasets::search(common);
    if haba::data::locate("fashion-mnist", &search).is_ok() {
        cfg.dataset = "fashion-mnist".into();
    }
    let dataset = super::datasets::load(common, &cfg.dataset)?;
    let prepared = Prepared::new(&dataset, cfg.preprocess, &selected.device)?;
    let run = RunDir::new(super::distill::fresh_run_dir(&cfg))?;
    eprintln!(
        "main job: {} on {} at the storage of {} images per class, then DM, HaBa-MTT, MTT \
         and random real images at the same storage; {} x {} for {} epochs evaluate each. \
         Run directory: {}",
        cfg.label(),
        dataset.name,
        cfg.ipc,
        cfg.eval.nets,
        cfg.eval.model,
        cfg.eval.epochs,
        run.path.display()
    );

    let mut haba_dm = Distiller::new(cfg.clone(), &prepared)?;
    let haba_result = super::distill::run_with_bar(&mut haba_dm, &prepared, &dataset, &run)?;
    let mut report = report_of(&haba_dm, &dataset, &selected.name, haba_result);
    report.sets[0].name = "HaBa-DM".into();

    // Plain DM with as many images per class as HaBa's budget allows.
    let dm_cfg = DistillConfig {
        haba: false,
        budget_equal: false,
        ..cfg.clone()
    };
    let dm_run = RunDir::new(run.path.join("baseline-dm"))?;
    let mut dm = Distiller::new(dm_cfg, &prepared)?;
    let dm_result = super::distill::run_with_bar(&mut dm, &prepared, &dataset, &dm_run)?;
    report.sets.push(evaluated_set(&dm, "DM", dm_result));

    // Trajectory matching over a small buffer, trained once and kept beside the runs.
    let mut mtt_cfg = DistillConfig::preset("quick-mtt")?;
    mtt_cfg.seed = cfg.seed;
    mtt_cfg.dataset = cfg.dataset.clone();
    let model: Arch = "ConvNetW32".parse()?;
    let dir = std::path::Path::new("runs").join(format!(
        "main-job-buffer-{}-{model}-{}",
        mtt_cfg.dataset, mtt_cfg.preprocess
    ));
    let key = BufferKey::of(&mtt_cfg.dataset, mtt_cfg.preprocess, &prepared, model);
    let experts = ExpertSettings {
        model,
        epochs: 3,
        seed: cfg.seed,
        ..ExpertSettings::default()
    };
    // Experts see 200 real images per class: enough for a trajectory to match, in seconds.
    let classes = dataset.classes.len();
    let idx =
        subset::random_per_class(&dataset.train.labels, classes, 200, &mut Rng::new(cfg.seed))?;
    eprintln!(
        "expert trajectories for MTT (2 x {model}, 3 epochs on {} real images) in {}:",
        idx.len(),
        dir.display()
    );
    super::buffer::train_missing(&dir, &key, &experts, 0..2, &prepared.train_subset(&idx))?;
    if let ObjectiveConfig::Mtt(m) = &mut mtt_cfg.objective {
        m.buffer = dir.to_string_lossy().into_owned();
    }
    for haba in [true, false] {
        let c = DistillConfig {
            haba,
            budget_equal: haba,
            ..mtt_cfg.clone()
        };
        let sub = RunDir::new(run.path.join(format!("baseline-{}", c.label())))?;
        let mut d = Distiller::new(c, &prepared)?;
        let result = super::distill::run_with_bar(&mut d, &prepared, &dataset, &sub)?;
        let name = if haba { "HaBa-MTT" } else { "MTT" };
        report.sets.push(evaluated_set(&d, name, result));
    }

    // A fresh draw from the seed, as before the MTT rows existed: the same real images.
    let idx = subset::random_per_class(
        &dataset.train.labels,
        classes,
        cfg.ipc,
        &mut Rng::new(cfg.seed),
    )?;
    let real = prepared.train_subset(&idx);
    eprintln!("random real images, {} per class:", cfg.ipc);
    let real_result =
        super::eval::evaluate_with_bar(&real, &prepared, &cfg.eval_config(None), cfg.seed)?;
    report.sets.push(EvaluatedSet {
        name: "random real".into(),
        storage: Storage::new(idx.len() * dataset.shape.numel(), 0, dataset.shape, classes),
        iterations: None,
        evaluation: cfg.eval_config(None),
        result: real_result,
    });

    run.write_report(&report)?;
    print_table(&dataset.name, &cfg, &report.sets);
    println!(
        "\nrun directory: {} (bases.png, hallucinated.png, curves.png, report.json)",
        run.path.display()
    );
    Ok(())
}

fn print_table(dataset: &str, cfg: &DistillConfig, sets: &[EvaluatedSet]) {
    println!(
        "\n{dataset}, storage of {} images per class, test accuracy of {} x {} ({} epochs):",
        cfg.ipc, cfg.eval.nets, cfg.eval.model, cfg.eval.epochs
    );
    println!(
        "{:<14} {:>14} {:>16} {:>16}",
        "method", "floats", "images/class", "accuracy %"
    );
    for set in sets {
        println!(
            "{:<14} {:>14} {:>16.2} {:>16}",
            set.name,
            set.storage.total_floats,
            set.storage.image_equivalents_per_class,
            set.result.percent()
        );
    }
}
