//! The evaluation protocol end to end on the embedded subset: networks trained on a few real
//! images per class must beat chance clearly, and the same seed must repeat the numbers.

use burn::tensor::Device;
use haba::data::{NormKind, Prepared, embedded, subset};
use haba::eval::{EvalConfig, evaluate};
use haba::rng::Rng;
use haba::train::TrainConfig;

fn quick_eval(seed: u64) -> haba::eval::EvalResult {
    let device = Device::flex();
    let data = embedded::fashion_mnist_subset().unwrap();
    let prepared = Prepared::new(&data, NormKind::MeanStd, &device).unwrap();
    let idx = subset::random_per_class(&data.train.labels, 10, 10, &mut Rng::new(seed)).unwrap();
    let train = prepared.train_subset(&idx);
    let cfg = EvalConfig {
        model: "ConvNetW32".parse().unwrap(),
        nets: 2,
        train: TrainConfig::protocol(40, 0.01),
        ..EvalConfig::default()
    };
    evaluate(&train, &prepared.test, 10, &cfg, seed, &mut |_| {}).unwrap()
}

#[test]
fn random_real_beats_chance_and_repeats_with_its_seed() {
    let a = quick_eval(1);
    assert_eq!(a.accuracies.len(), 2);
    // 10 classes: chance is 10%. 100 real images give ~60% with the full protocol.
    assert!(a.mean > 0.35, "accuracy {a:?}");
    let b = quick_eval(1);
    assert_eq!(
        a.accuracies, b.accuracies,
        "same seed, same device, same numbers"
    );
}
