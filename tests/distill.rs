//! Distillation end to end on the embedded subset: the objective falls on held-out random
//! embedders, storage is counted honestly, and the same seed repeats a run.

use burn::tensor::{Device, Tensor};
use haba::augment::Dsa;
use haba::data::{NormKind, Prepared, embedded};
use haba::distill::dm::dm_loss;
use haba::distill::{DistillConfig, Distiller};
use haba::nets::Network;
use haba::rng::Rng;

fn setup() -> (Prepared, haba::data::Dataset) {
    let data = embedded::fashion_mnist_subset().unwrap();
    let prepared = Prepared::new(&data, NormKind::MeanStd, &Device::flex()).unwrap();
    (prepared, data)
}

/// DM loss of the current synthetic set, averaged over embedders the run never sees.
fn held_out_loss(d: &Distiller, data: &Prepared) -> f32 {
    let net = Network::new(&d.cfg.dm.embedder, data.shape, 10).unwrap();
    let n = d.factorization.len();
    let per = n / 10;
    let (syn, _) = d.factorization.all_images().unwrap();
    let syn = syn.narrow(0, 0, n); // hallucinator 0
    let mut total = 0.0;
    for seed in 0..3u64 {
        let params = net.init(&mut Rng::new(1000 + seed), &data.train.images.device());
        let real: Vec<Tensor<4>> = (0..10)
            .map(|c| data.train.images.clone().narrow(0, c * 500, 200))
            .collect();
        let syn: Vec<Tensor<4>> = (0..10)
            .map(|c| syn.clone().narrow(0, c * per, per))
            .collect();
        total += dm_loss(&net, &params, &real, &syn, &Dsa::none(), seed).into_scalar::<f32>();
    }
    total / 3.0
}

fn config(haba: bool) -> DistillConfig {
    DistillConfig {
        haba,
        ipc: 1,
        budget_equal: false,
        iterations: 30,
        seed: 3,
        dm: haba::distill::DmSettings {
            batch_real: 32,
            embedder: "ConvNetW32".parse().unwrap(),
            views: haba::distill::Views::All,
        },
        ..DistillConfig::preset("quick").unwrap()
    }
}

#[test]
fn haba_dm_lowers_the_objective_and_repeats_with_its_seed() {
    let (prepared, _) = setup();
    let mut d = Distiller::new(config(true), &prepared).unwrap();
    let before = held_out_loss(&d, &prepared);
    let mut first = Vec::new();
    for _ in 0..30 {
        first.push(d.step(&prepared).unwrap());
    }
    let after = held_out_loss(&d, &prepared);
    assert!(after < 0.8 * before, "held-out DM loss {before} -> {after}");
    assert!(first.iter().all(|l| l.adversary > 0.0 && l.diversity > 0.0));

    // Storage: 10 bases of 784 floats plus 5 hallucinators of 10 + 2 * 676 + 10 floats.
    let s = d.storage();
    assert_eq!(s.base_floats, 7840);
    assert_eq!(s.hallucinator_floats, 5 * (10 + 2 * 26 * 26 + 10));
    assert!((s.image_equivalents - (7840.0 + 6860.0) / 784.0).abs() < 1e-9);

    let mut again = Distiller::new(config(true), &prepared).unwrap();
    for l in &first[..3] {
        let m = again.step(&prepared).unwrap();
        assert_eq!(m.objective, l.objective, "same seed, same losses");
    }
}

#[test]
fn one_view_per_step_also_lowers_the_objective() {
    let (prepared, _) = setup();
    let mut cfg = config(true);
    cfg.dm.views = haba::distill::Views::Sample;
    let mut d = Distiller::new(cfg, &prepared).unwrap();
    let before = held_out_loss(&d, &prepared);
    for _ in 0..30 {
        d.step(&prepared).unwrap();
    }
    let after = held_out_loss(&d, &prepared);
    assert!(after < 0.8 * before, "held-out DM loss {before} -> {after}");
}

#[test]
fn plain_dm_learns_images_without_hallucinators() {
    let (prepared, _) = setup();
    let mut d = Distiller::new(config(false), &prepared).unwrap();
    assert!(d.factorization.hallucinators.is_none() && d.adversary.is_none());
    let before = held_out_loss(&d, &prepared);
    for _ in 0..30 {
        d.step(&prepared).unwrap();
    }
    let after = held_out_loss(&d, &prepared);
    assert!(after < 0.8 * before, "held-out DM loss {before} -> {after}");
    assert_eq!(d.storage().hallucinator_floats, 0);
}

#[test]
fn resumed_run_takes_the_same_steps_as_an_uninterrupted_one() {
    use haba::distill::run::{RunDir, checkpoint, resume};
    let (prepared, data) = setup();
    let dir = std::env::temp_dir().join(format!("haba-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = RunDir::new(&dir).unwrap();
    let cfg = config(true);
    run.write_config(&cfg).unwrap();

    let mut straight = Distiller::new(cfg, &prepared).unwrap();
    for _ in 0..2 {
        straight.step(&prepared).unwrap();
    }
    checkpoint(&straight, &prepared, &data, &run).unwrap();
    let mut resumed = resume(&run, &prepared).unwrap();
    assert_eq!(resumed.iteration, 2);
    for _ in 0..2 {
        let a = straight.step(&prepared).unwrap();
        let b = resumed.step(&prepared).unwrap();
        assert_eq!(a.objective, b.objective);
        assert_eq!(a.adversary, b.adversary);
    }
    let values = |d: &Distiller| {
        let h = d.factorization.hallucinators.as_ref().unwrap();
        (
            d.factorization
                .bases
                .clone()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
            h.params.clone().into_data().try_to_vec::<f32>().unwrap(),
        )
    };
    assert_eq!(values(&straight), values(&resumed));

    // A broken or foreign checkpoint is an error naming the file, not a panic.
    let good = std::fs::read(run.checkpoint()).unwrap();
    std::fs::write(run.checkpoint(), &good[..good.len() - 4]).unwrap();
    let err = resume(&run, &prepared).err().unwrap().to_string();
    assert!(err.contains("checkpoint.safetensors"), "{err}");
    let mut other = haba::distill::checkpoint::Checkpoint::new(2);
    other.put(
        "bases",
        &straight.factorization.bases.clone().narrow(0, 0, 1),
    );
    std::fs::write(run.checkpoint(), other.to_bytes().unwrap()).unwrap();
    let err = resume(&run, &prepared).err().unwrap().to_string();
    assert!(err.contains("`bases` holds 784 numbers"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn all_views_train_every_hallucinator_in_each_step() {
    let (prepared, _) = setup();
    let cfg = DistillConfig {
        contrastive: false,
        ..config(true)
    };
    let mut d = Distiller::new(cfg, &prepared).unwrap();
    let shifts = |d: &Distiller| {
        let h = d.factorization.hallucinators.as_ref().unwrap();
        let (name, shape, offset) = h.shape.tensors()[3].clone();
        assert_eq!((name, shape[0]), ("shift", 5));
        let per: usize = shape[1..].iter().product();
        let v = h.params.to_data().try_into_vec::<f32>().unwrap();
        (0..5)
            .map(|j| v[offset + j * per..offset + (j + 1) * per].to_vec())
            .collect::<Vec<_>>()
    };
    let before = shifts(&d);
    d.step(&prepared).unwrap();
    let after = shifts(&d);
    for j in 0..5 {
        assert_ne!(before[j], after[j], "hallucinator {j} got no gradient");
    }
}
