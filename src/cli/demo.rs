//! The main job, run by `haba` with no command: HaBa-DM on Fashion-MNIST (the embedded
//! subset, or the full dataset when one is found), evaluated beside plain DM and random
//! real images at equal storage, in one table. Sized to finish in minutes on a CPU.

use haba::data::{Prepared, subset};
use haba::distill::run::{RunDir, eval_config};
use haba::distill::{DistillConfig, Distiller};
use haba::eval::EvalResult;
use haba::haba::Storage;
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
        "main job: {} on {} at the storage of {} images per class, then DM and random real \
         images at the same storage; {} x {} for {} epochs evaluate each. Run directory: {}",
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
    let mut rows = vec![(
        "HaBa-DM".to_string(),
        haba_dm.storage(),
        haba_result.clone(),
    )];

    // Plain DM with as many images per class as HaBa's budget allows.
    let dm_cfg = DistillConfig {
        haba: false,
        budget_equal: false,
        ..cfg.clone()
    };
    let dm_run = RunDir::new(run.path.join("baseline-dm"))?;
    let mut dm = Distiller::new(dm_cfg, &prepared)?;
    let dm_result = super::distill::run_with_bar(&mut dm, &prepared, &dataset, &dm_run)?;
    rows.push(("DM".to_string(), dm.storage(), dm_result));

    let mut rng = Rng::new(cfg.seed);
    let classes = dataset.classes.len();
    let idx = subset::random_per_class(&dataset.train.labels, classes, cfg.ipc, &mut rng)?;
    let real = prepared.train_subset(&idx);
    eprintln!("random real images, {} per class:", cfg.ipc);
    let real_result =
        super::eval::evaluate_with_bar(&real, &prepared, &eval_config(&cfg, None), cfg.seed)?;
    let real_storage = Storage::new(idx.len() * dataset.shape.numel(), 0, dataset.shape, classes);
    rows.push(("random real".to_string(), real_storage, real_result));

    super::distill::write_report(&run, &haba_dm, &dataset, &haba_result, &rows[1..])?;
    print_table(&dataset.name, &cfg, &rows);
    println!(
        "\nrun directory: {} (bases.png, hallucinated.png, report.json)",
        run.path.display()
    );
    Ok(())
}

fn print_table(dataset: &str, cfg: &DistillConfig, rows: &[(String, Storage, EvalResult)]) {
    println!(
        "\n{dataset}, storage of {} images per class, test accuracy of {} x {} ({} epochs):",
        cfg.ipc, cfg.eval.nets, cfg.eval.model, cfg.eval.epochs
    );
    println!(
        "{:<14} {:>14} {:>16} {:>16}",
        "method", "floats", "images/class", "accuracy %"
    );
    for (name, storage, result) in rows {
        println!(
            "{:<14} {:>14} {:>16.2} {:>16}",
            name,
            storage.total_floats,
            storage.image_equivalents_per_class,
            result.percent()
        );
    }
}
