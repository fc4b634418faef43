//! Distillation end to end on the embedded subset: the objective falls on held-out random
//! embedders, storage is counted honestly, and the same seed repeats a run.

use burn::tensor::{Device, Tensor};
use haba::augment::Dsa;
use haba::data::{NormKind, Prepared, embedded};
use haba::distill::dm::dm_loss;
use haba::distill::{
    DcConfig, DistillConfig, Distiller, DmConfig, MttConfig, ObjectiveConfig, Views,
};
use haba::nets::Network;
use haba::rng::Rng;

fn setup() -> (Prepared, haba::data::Dataset) {
    let data = embedded::fashion_mnist_subset().unwrap();
    let prepared = Prepared::new(&data, NormKind::MeanStd, &Device::flex()).unwrap();
    (prepared, data)
}

/// DM loss of the current synthetic set, averaged over embedders the run never sees.
fn held_out_loss(d: &Distiller, data: &Prepared) -> f32 {
    let ObjectiveConfig::Dm(dm) = &d.cfg.objective else {
        panic!("a DM run")
    };
    let net = Network::new(&dm.embedder, data.shape, 10).unwrap();
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
        objective: ObjectiveConfig::Dm(DmConfig {
            batch_real: 32,
            embedder: "ConvNetW32".parse().unwrap(),
            views: Views::All,
        }),
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
    if let ObjectiveConfig::Dm(dm) = &mut cfg.objective {
        dm.views = Views::Sample;
    }
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

/// Two steps, a checkpoint, a resume, and two more steps must equal four straight steps.
fn check_resume(cfg: DistillConfig, tag: &str) {
    use haba::distill::run::{checkpoint, resume};
    use haba::report::RunDir;
    let (prepared, data) = setup();
    let dir = std::env::temp_dir().join(format!("haba-resume-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = RunDir::new(&dir).unwrap();
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
        assert_eq!(a.objective, b.objective, "{tag}");
        assert_eq!(a.adversary, b.adversary, "{tag}");
        assert_eq!(a.scalars, b.scalars, "{tag}");
    }
    let values = |d: &Distiller| {
        let host = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
        let h = d.factorization.hallucinators.as_ref();
        (
            host(d.factorization.bases.clone().flatten(0, 3)),
            h.map(|h| host(h.params.clone())),
        )
    };
    assert_eq!(values(&straight), values(&resumed), "{tag}");

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
    assert!(err.contains("`bases` holds"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resumed_run_takes_the_same_steps_as_an_uninterrupted_one() {
    check_resume(config(true), "haba-dm");
}

/// A two-expert buffer of a small ConvNet trained for two epochs on part of the subset.
fn small_buffer(prepared: &Prepared) -> std::path::PathBuf {
    use haba::distill::buffer::{BufferKey, ExpertSettings, train_expert, write_expert};
    let dir = std::env::temp_dir().join(format!("haba-test-buffer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let model = "ConvNetD2W8".parse().unwrap();
    let key = BufferKey::of("embedded", NormKind::MeanStd, prepared, model);
    let settings = ExpertSettings {
        model,
        epochs: 2,
        ..ExpertSettings::default()
    };
    let part = haba::data::LabelledImages {
        images: prepared.train.images.clone().narrow(0, 0, 512),
        labels: prepared.train.labels[..512].to_vec(),
    };
    for i in 0..2 {
        let t = train_expert(&key, &settings, i, &part, &mut |_, _| {}).unwrap();
        write_expert(&dir, &t).unwrap();
    }
    dir
}

fn mtt_config(haba: bool, buffer: &std::path::Path) -> DistillConfig {
    DistillConfig {
        objective: ObjectiveConfig::Mtt(MttConfig {
            buffer: buffer.to_string_lossy().into_owned(),
            syn_steps: 3,
            expert_epochs: 1,
            max_start_epoch: 2,
            ..MttConfig::default()
        }),
        ..config(haba)
    }
}

/// The MTT settings of `cfg`, to change.
fn mtt(cfg: &mut DistillConfig) -> &mut MttConfig {
    match &mut cfg.objective {
        ObjectiveConfig::Mtt(m) => m,
        other => panic!("not MTT: {other}"),
    }
}

#[test]
fn mtt_runs_resume_exactly_and_learn_their_learning_rate() {
    let (prepared, _) = setup();
    let buffer = small_buffer(&prepared);
    for haba in [true, false] {
        let tag = if haba { "haba-mtt" } else { "mtt" };
        check_resume(mtt_config(haba, &buffer), tag);
    }
    let mut recompute = mtt_config(true, &buffer);
    mtt(&mut recompute).unroll = haba::distill::Unroll::Recompute;
    check_resume(recompute, "haba-mtt-recompute");

    let mut d = Distiller::new(mtt_config(true, &buffer), &prepared).unwrap();
    let first = d.step(&prepared).unwrap();
    let lr = first.scalars.get("lr").copied();
    assert!(lr.is_some_and(|lr| lr != 0.01 && lr >= 0.001), "{first:?}");
    assert_eq!(d.learned_lr(), lr);
    // The student must be the buffer's network.
    let mut other = mtt_config(true, &buffer);
    mtt(&mut other).student = Some("ConvNetD2W16".parse().unwrap());
    let err = Distiller::new(other, &prepared).err().unwrap().to_string();
    assert!(
        err.contains("model: buffer ConvNetD2W8, run ConvNetD2W16"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&buffer);
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

/// A run that diverges after a good checkpoint stops with an error naming the iteration,
/// and the checkpoint and artifact on disk are still the good ones, readable and resumable.
#[test]
fn a_diverging_run_stops_and_keeps_its_last_good_checkpoint() {
    use haba::distill::run::{distill, resume};
    use haba::report::RunDir;
    let (prepared, data) = setup();
    let dir = std::env::temp_dir().join(format!("haba-diverge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = RunDir::new(&dir).unwrap();
    let cfg = DistillConfig {
        iterations: 2,
        checkpoint_every: 2,
        eval: haba::distill::config::EvalSettings {
            nets: 1,
            epochs: 1,
            ..config(true).eval
        },
        ..config(true)
    };
    let mut d = Distiller::new(cfg, &prepared).unwrap();
    distill(&mut d, &prepared, &data, &run, &mut |_| {}).unwrap();
    let (checkpoint, artifact) = (
        std::fs::read(run.checkpoint()).unwrap(),
        std::fs::read(run.artifact()).unwrap(),
    );

    // The bases blow up: two more iterations asked for, the first one fails.
    d.cfg.iterations = 4;
    d.factorization.bases = d.factorization.bases.clone().mul_scalar(f32::INFINITY);
    let err = distill(&mut d, &prepared, &data, &run, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("diverged") && err.contains("iteration 3"),
        "{err}"
    );
    assert_eq!(std::fs::read(run.checkpoint()).unwrap(), checkpoint);
    assert_eq!(std::fs::read(run.artifact()).unwrap(), artifact);
    assert_eq!(resume(&run, &prepared).unwrap().iteration, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Gradient matching at 1 image (or basis) per class: 3 rounds per fresh network with 2
/// epochs of training between them, a small network, few real images.
fn dc_config(siamese: bool, haba: bool) -> DistillConfig {
    let dc = DcConfig {
        batch_real: 32,
        network: "ConvNetD2W8".parse().unwrap(),
        outer_loop: Some(3),
        inner_loop: Some(2),
        ..DcConfig::default()
    };
    DistillConfig {
        lr_bases: Some(1.0),
        lr_hallucinators: Some(1e-3),
        objective: if siamese {
            ObjectiveConfig::Dsa(dc)
        } else {
            ObjectiveConfig::Dc(dc)
        },
        ..config(haba)
    }
}

/// The matching distance of the current set on fresh networks the run never sees, each
/// class's real gradient from the same 64 images, hallucinator 0's view (or the images).
fn held_out_matching(d: &Distiller, data: &Prepared) -> f32 {
    use haba::distill::dc::{Metric, match_loss};
    use haba::nets::student::loss_and_grad;
    let net = Network::new(&"ConvNetD2W8".parse().unwrap(), data.shape, 10).unwrap();
    let n = d.factorization.len();
    let per = n / 10;
    let (syn, _) = d.factorization.all_images().unwrap();
    let syn = syn.narrow(0, 0, n);
    let mut total = 0.0;
    for seed in 0..3u64 {
        let params = net.init(&mut Rng::new(2000 + seed), &data.train.images.device());
        let (mut real, mut fake) = (Vec::new(), Vec::new());
        for c in 0..10 {
            let r = data.train.images.clone().narrow(0, c * 500, 64);
            real.push(loss_and_grad(&net, &params, r, &[c as u16; 64]).unwrap().1);
            let s = syn.clone().narrow(0, c * per, per);
            fake.push(
                loss_and_grad(&net, &params, s, &vec![c as u16; per])
                    .unwrap()
                    .1,
            );
        }
        let (real, fake) = (Tensor::stack(real, 0), Tensor::stack(fake, 0));
        total += match_loss(Metric::Ours, net.params(), fake, real).into_scalar::<f32>();
    }
    total / 3.0
}

#[test]
fn dc_and_dsa_lower_the_held_out_matching_loss_and_resume_exactly() {
    let (prepared, _) = setup();
    // From noise, as the reference's DC starts.
    for (siamese, haba) in [(false, false), (true, true)] {
        let tag = format!("{}-{}", if haba { "haba" } else { "plain" }, siamese);
        let cfg = DistillConfig {
            init: haba::haba::BaseInit::Noise,
            ..dc_config(siamese, haba)
        };
        let mut d = Distiller::new(cfg, &prepared).unwrap();
        let before = held_out_matching(&d, &prepared);
        for _ in 0..30 {
            let losses = d.step(&prepared).unwrap();
            assert!(losses.scalars.contains_key("network_loss"), "{losses:?}");
        }
        let after = held_out_matching(&d, &prepared);
        assert!(
            after < 0.9 * before,
            "{tag}: held-out matching loss {before} -> {after}"
        );
        // Resumed after 2 of 3 rounds: the checkpoint carries the network.
        check_resume(dc_config(siamese, haba), &format!("dc-{tag}"));
    }
}
