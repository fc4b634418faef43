//! The main job, run by `haba` with no command: a quick, offline evaluation of random-real
//! baselines on the embedded Fashion-MNIST subset, small enough for a laptop CPU.

use haba::data::{NormKind, Prepared, subset};
use haba::eval::EvalConfig;
use haba::nets::Arch;
use haba::rng::Rng;
use haba::train::TrainConfig;

use super::Common;

/// Images per class evaluated by the demo.
const IPCS: [usize; 2] = [1, 10];

pub fn run(common: &Common) -> anyhow::Result<()> {
    let selected = common.device()?;
    let dataset = haba::data::embedded::fashion_mnist_subset()?;
    eprintln!(
        "data: embedded Fashion-MNIST subset ({} train / {} test images); \
         `haba eval --help` runs the full protocol on any dataset",
        dataset.train.len(),
        dataset.test.len()
    );
    let prepared = Prepared::new(&dataset, NormKind::MeanStd, &selected.device)?;
    // A short protocol so the demo finishes in minutes on two CPU cores: a narrow ConvNet,
    // two networks, 300 epochs. `haba eval` defaults to the paper's protocol.
    let cfg = EvalConfig {
        model: "ConvNetW32".parse::<Arch>()?,
        nets: 2,
        train: TrainConfig::protocol(300, 0.01),
        ..EvalConfig::default()
    };
    eprintln!(
        "protocol: {} x {}, {} epochs, lr {}, DSA {}",
        cfg.nets, cfg.model, cfg.train.epochs, cfg.train.sgd.lr, cfg.dsa
    );
    let mut rows = Vec::new();
    for ipc in IPCS {
        let mut rng = Rng::new(common.seed());
        let idx = subset::random_per_class(&dataset.train, dataset.classes.len(), ipc, &mut rng)?;
        let set = prepared.train_subset(&idx);
        eprintln!("random real, {ipc} image(s) per class:");
        let result = super::eval::evaluate_with_bar(&set, &prepared, &cfg, common.seed())?;
        rows.push((ipc, result));
    }
    println!(
        "\nFashion-MNIST (embedded subset), test accuracy %, {} x {}:",
        cfg.nets, cfg.model
    );
    println!("{:<24} {:>16}", "training set", "accuracy");
    for (ipc, result) in &rows {
        println!(
            "{:<24} {:>16}",
            format!("random real, {ipc}/class"),
            result.percent()
        );
    }
    Ok(())
}
