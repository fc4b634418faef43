//! `haba distill`: HaBa (or the plain base method) on a dataset, into a run directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use haba::data::{Dataset, NormKind, Prepared};
use haba::distill::run::{Event, distill, report_of, resume};
use haba::distill::{
    DcConfig, DistillConfig, Distiller, DmConfig, Metric, MttConfig, ObjectiveConfig, Unroll,
    Views, presets,
};
use haba::eval::EvalResult;
use haba::nets::Arch;
use haba::report::RunDir;

use super::Common;

#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// Start from a named preset (see --list-presets); flags override it.
    #[arg(long)]
    pub preset: Option<String>,
    /// A TOML file with any of the settings (applied after the preset, before flags).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the presets and exit.
    #[arg(long)]
    pub list_presets: bool,
    /// Continue the interrupted run in this directory from its last checkpoint.
    #[arg(long, conflicts_with_all = ["preset", "config"])]
    pub resume: Option<PathBuf>,
    /// Where the run directory goes (default: runs/<method>-<dataset>-ipc<N>[-k]).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Base objective: dm (distribution matching), mtt (trajectory matching; needs
    /// --buffer), dc (gradient matching) or dsa (gradient matching with Siamese
    /// augmentation).
    #[arg(long)]
    pub method: Option<String>,
    /// Learn plain images (the base method without HaBa).
    #[arg(long)]
    pub no_haba: bool,
    /// Factorize into bases and hallucinators (the default; for presets without HaBa).
    #[arg(long, conflicts_with = "no_haba")]
    pub haba: bool,
    /// Dataset name (see `haba datasets`), a class-per-folder image tree, or `embedded`
    /// (default: embedded).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Bases per class with HaBa, images per class without (10).
    #[arg(long)]
    pub ipc: Option<usize>,
    /// Size HaBa's bases so its total floats do not exceed the plain method's at --ipc.
    #[arg(long)]
    pub budget_equal: bool,
    /// HaBa's hallucinator networks, shared by all classes (5).
    #[arg(long)]
    pub hallucinators: Option<usize>,
    /// How the bases (or images) start: `real` (random real images of each class, the
    /// default) or `noise` (standard normal, the reference DC's default).
    #[arg(long)]
    pub init: Option<haba::haba::BaseInit>,
    /// Hallucinator encoder/decoder kernel size, in pixels (3).
    #[arg(long)]
    pub kernel: Option<usize>,
    /// One-channel bases for colour data.
    #[arg(long)]
    pub single_channel: bool,
    /// Start hallucinators close to the identity (an experiment; the reference starts them
    /// as random filters).
    #[arg(long)]
    pub near_identity: bool,
    /// DM, DC, DSA: hallucinated views per basis in each step: `sample` (one at random) or
    /// `all` (all).
    #[arg(long)]
    pub views: Option<Views>,
    /// Preprocessing fitted on the train split: meanstd, zca (eps 0.1) or zca:EPS (default:
    /// MTT's buffer's, meanstd for the other methods).
    #[arg(long)]
    pub preprocess: Option<NormKind>,
    /// Distillation steps, one update of the set each (20,000; MTT presets 15,000; DC/DSA
    /// presets 1,000 reference iterations of outer-loop steps each).
    #[arg(long)]
    pub iterations: Option<usize>,
    /// SGD learning rate of the bases, or of the images without HaBa (default: the method's;
    /// DM 1, MTT 1000, HaBa-MTT 100, DC and DSA 0.1).
    #[arg(long)]
    pub lr_bases: Option<f32>,
    /// SGD learning rate of the hallucinators (default: the method's; DM 1e-3, HaBa-MTT 100,
    /// DC and DSA 1e-4).
    #[arg(long)]
    pub lr_hallucinators: Option<f32>,
    /// DM, DC, DSA: real images per class per step (256).
    #[arg(long)]
    pub batch_real: Option<usize>,
    /// DM: the random network whose embeddings it matches (ConvNet).
    #[arg(long)]
    pub embedder: Option<Arch>,
    /// DSA strategy, or `none` (all six families: color_crop_cutout_flip_scale_rotate).
    #[arg(long)]
    pub dsa: Option<String>,
    /// Turn off all of HaBa's adversarial contrastive terms.
    #[arg(long)]
    pub no_contrastive: bool,
    /// λ_cos, weight of the diversity term: views of one basis should differ (0.1).
    #[arg(long)]
    pub lambda_cos: Option<f32>,
    /// λ_cls, weight of the adversary's classification loss (1).
    #[arg(long)]
    pub lambda_cls: Option<f32>,
    /// λ_like, weight of the adversary's likeness term: views should look alike to it (0.1).
    #[arg(long)]
    pub lambda_like: Option<f32>,
    /// λ_con, weight of the adversary's supervised contrastive loss (0.1).
    #[arg(long)]
    pub lambda_con: Option<f32>,
    /// Evaluate every K iterations (0, the default: only at the end).
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Write the artifact and a checkpoint every K iterations (500).
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Networks trained by each evaluation (5).
    #[arg(long)]
    pub eval_nets: Option<usize>,
    /// Training epochs of each evaluation network (1,000).
    #[arg(long)]
    pub eval_epochs: Option<usize>,
    /// The evaluation network (ConvNet).
    #[arg(long)]
    pub eval_model: Option<Arch>,
    /// MTT: the directory of expert trajectories made by `haba buffer`.
    #[arg(long)]
    pub buffer: Option<PathBuf>,
    /// MTT: the student network (default: the buffer's model); DC, DSA: the network whose
    /// gradients are matched (ConvNet).
    #[arg(long)]
    pub model: Option<Arch>,
    /// MTT: student SGD steps on synthetic batches per iteration, N (30).
    #[arg(long)]
    pub syn_steps: Option<usize>,
    /// MTT: expert epochs the student steps should cover, M (2).
    #[arg(long)]
    pub expert_epochs: Option<usize>,
    /// MTT: start epochs are drawn below this (20).
    #[arg(long)]
    pub max_start_epoch: Option<usize>,
    /// MTT: the student's initial learning rate α, learned from there (0.01).
    #[arg(long)]
    pub lr_teacher: Option<f32>,
    /// MTT: learning rate of α's own SGD (1e-5).
    #[arg(long)]
    pub lr_lr: Option<f32>,
    /// MTT: synthetic images per student step (0, the default: all).
    #[arg(long)]
    pub batch_syn: Option<usize>,
    /// MTT: `graph` (one autodiff graph over every student step, as the reference) or
    /// `recompute` (the same gradient in memory that does not grow with the steps, see
    /// --recompute-memory); graph by default.
    #[arg(long)]
    pub unroll: Option<Unroll>,
    /// MTT, `--unroll recompute`: MiB it may spend keeping the last student steps' graphs
    /// instead of replaying them (2048; 0: replay every step, the least memory).
    #[arg(long, value_name = "MIB")]
    pub recompute_memory: Option<f64>,
    /// DC, DSA: how gradients are compared: `ours` (per output unit, 1 - cosine, summed),
    /// `mse` or `cos` (ours).
    #[arg(long)]
    pub dis_metric: Option<Metric>,
    /// DC, DSA: matching steps per fresh network (default: the reference's for --ipc:
    /// 1, 10, 20, 30, 40, 50 at 1, 10, 20, 30, 40, 50 images per class).
    #[arg(long)]
    pub outer_loop: Option<usize>,
    /// DC, DSA: training epochs of the network on the synthetic set between matching steps
    /// (default: the reference's for --ipc: 1, 50, 25, 20, 15, 10).
    #[arg(long)]
    pub inner_loop: Option<usize>,
    /// DC, DSA: the network's SGD learning rate in those epochs (0.01).
    #[arg(long)]
    pub lr_net: Option<f32>,
    /// DC, DSA: batch size of those epochs, in images (256).
    #[arg(long)]
    pub batch_train: Option<usize>,
}

/// `over`'s keys replace `base`'s section by section, so a file can change one key of a
/// preset's `[objective]`; an `[objective]` of another method replaces the whole section
/// (the other method's keys mean nothing to it).
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o))
                if !(key == "objective"
                    && o.get("method").is_some_and(|m| Some(m) != b.get("method"))) =>
            {
                merge(b, o)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Preset, then config file, then flags.
pub fn config(common: &Common, args: &Args) -> anyhow::Result<DistillConfig> {
    let mut cfg = match &args.preset {
        Some(name) => DistillConfig::preset(name)?,
        None => DistillConfig::default(),
    };
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        let in_file = || super::flags::InConfigFile(path.clone());
        let file: toml::Table = toml::from_str(&text).with_context(in_file)?;
        let mut merged = toml::Table::try_from(&cfg)?;
        merge(&mut merged, file);
        cfg = DistillConfig::from_toml(&merged.to_string()).with_context(in_file)?;
    }
    if let Some(m) = &args.method {
        cfg.objective = switch(&cfg.objective, m)?;
    }
    if args.no_haba {
        cfg.haba = false;
    }
    cfg.haba |= args.haba;
    set(&mut cfg.dataset, args.dataset.clone());
    set(&mut cfg.ipc, args.ipc);
    cfg.budget_equal |= args.budget_equal;
    cfg.single_channel |= args.single_channel;
    cfg.near_identity |= args.near_identity;
    set(&mut cfg.hallucinators, args.hallucinators);
    set(&mut cfg.kernel, args.kernel);
    set(&mut cfg.init, args.init);
    if args.preprocess.is_some() {
        cfg.preprocess = args.preprocess;
    }
    set(&mut cfg.iterations, args.iterations);
    if args.lr_bases.is_some() {
        cfg.lr_bases = args.lr_bases;
    }
    if args.lr_hallucinators.is_some() {
        cfg.lr_hallucinators = args.lr_hallucinators;
    }
    set(&mut cfg.dsa, args.dsa.clone());
    set(&mut cfg.eval_every, args.eval_every);
    set(&mut cfg.checkpoint_every, args.checkpoint_every);
    set(&mut cfg.eval.nets, args.eval_nets);
    set(&mut cfg.eval.epochs, args.eval_epochs);
    set(&mut cfg.eval.model, args.eval_model);
    if args.no_contrastive {
        cfg.contrastive = false;
    }
    objective_flags(&mut cfg.objective, args)?;
    let w = &mut cfg.contrastive_weights;
    set(&mut w.cos, args.lambda_cos);
    set(&mut w.cls, args.lambda_cls);
    set(&mut w.like, args.lambda_like);
    set(&mut w.con, args.lambda_con);
    if let Some(seed) = common.seed {
        cfg.seed = seed;
    }
    cfg.validate()?;
    // The run records the preprocessing it uses (MTT's buffer's unless told).
    cfg.preprocess = Some(cfg.preprocessing()?);
    Ok(cfg)
}

/// The library's cautions about these settings on this data, in flags.
pub fn cautions(cfg: &DistillConfig, data: &haba::data::Dataset) -> Vec<String> {
    cfg.cautions(data.shape)
        .iter()
        .map(|c| super::flags::phrase(c))
        .collect()
}

/// Overrides `slot` when the flag was given.
fn set<T>(slot: &mut T, flag: Option<T>) {
    if let Some(v) = flag {
        *slot = v;
    }
}

/// The objective `--method` names: the current one when it is already that method, the
/// gradient-matching settings carried over between dc and dsa, else the method's
/// defaults.
fn switch(current: &ObjectiveConfig, name: &str) -> anyhow::Result<ObjectiveConfig> {
    let wanted = ObjectiveConfig::named(name)?;
    Ok(match (current, wanted) {
        (c, w) if c.name() == w.name() => c.clone(),
        (ObjectiveConfig::Dc(c) | ObjectiveConfig::Dsa(c), ObjectiveConfig::Dsa(_)) => {
            ObjectiveConfig::Dsa(c.clone())
        }
        (ObjectiveConfig::Dc(c) | ObjectiveConfig::Dsa(c), ObjectiveConfig::Dc(_)) => {
            ObjectiveConfig::Dc(c.clone())
        }
        (_, w) => w,
    })
}

/// Applies the flags of the objective's own settings, refusing those of another method.
fn objective_flags(objective: &mut ObjectiveConfig, args: &Args) -> anyhow::Result<()> {
    let method = objective.name();
    let refuse = |given: &[(&str, bool)]| match given.iter().find(|g| g.1) {
        Some((flag, _)) => bail!(
            "--{flag} is not a setting of {method}: choose the method it belongs to with \
             --method (see `haba distill --help`)"
        ),
        None => Ok(()),
    };
    let dm = [("embedder", args.embedder.is_some())];
    let mtt = [
        ("buffer", args.buffer.is_some()),
        ("syn-steps", args.syn_steps.is_some()),
        ("expert-epochs", args.expert_epochs.is_some()),
        ("max-start-epoch", args.max_start_epoch.is_some()),
        ("lr-teacher", args.lr_teacher.is_some()),
        ("lr-lr", args.lr_lr.is_some()),
        ("batch-syn", args.batch_syn.is_some()),
        ("unroll", args.unroll.is_some()),
        ("recompute-memory", args.recompute_memory.is_some()),
    ];
    let dc = [
        ("dis-metric", args.dis_metric.is_some()),
        ("outer-loop", args.outer_loop.is_some()),
        ("inner-loop", args.inner_loop.is_some()),
        ("lr-net", args.lr_net.is_some()),
        ("batch-train", args.batch_train.is_some()),
    ];
    let real = [
        ("batch-real", args.batch_real.is_some()),
        ("views", args.views.is_some()),
    ];
    match objective {
        ObjectiveConfig::Dm(c) => {
            refuse(&[&mtt[..], &dc[..], &[("model", args.model.is_some())]].concat())?;
            let DmConfig {
                batch_real,
                embedder,
                views,
            } = c;
            set(batch_real, args.batch_real);
            set(embedder, args.embedder);
            set(views, args.views);
        }
        ObjectiveConfig::Mtt(c) => {
            refuse(&[&dm[..], &dc[..], &real[..]].concat())?;
            if let Some(dir) = &args.buffer {
                c.buffer = dir.to_string_lossy().into_owned();
            }
            if args.model.is_some() {
                c.student = args.model;
            }
            let MttConfig {
                syn_steps,
                expert_epochs,
                max_start_epoch,
                lr_teacher,
                lr_lr,
                batch_syn,
                unroll,
                recompute_memory_mb,
                ..
            } = c;
            set(syn_steps, args.syn_steps);
            set(expert_epochs, args.expert_epochs);
            set(max_start_epoch, args.max_start_epoch);
            set(lr_teacher, args.lr_teacher);
            set(lr_lr, args.lr_lr);
            set(batch_syn, args.batch_syn);
            set(unroll, args.unroll);
            set(recompute_memory_mb, args.recompute_memory);
        }
        ObjectiveConfig::Dc(c) | ObjectiveConfig::Dsa(c) => {
            refuse(&[&dm[..], &mtt[..]].concat())?;
            let DcConfig {
                batch_real,
                network,
                dis_metric,
                outer_loop,
                inner_loop,
                lr_net,
                batch_train,
                views,
            } = c;
            set(batch_real, args.batch_real);
            set(network, args.model);
            set(dis_metric, args.dis_metric);
            if args.outer_loop.is_some() {
                *outer_loop = args.outer_loop;
            }
            if args.inner_loop.is_some() {
                *inner_loop = args.inner_loop;
            }
            set(lr_net, args.lr_net);
            set(batch_train, args.batch_train);
            set(views, args.views);
        }
    }
    Ok(())
}

/// `runs/<method>-<dataset>-ipc<N>`, with `-2`, `-3`, ... if taken.
pub fn fresh_run_dir(cfg: &DistillConfig) -> PathBuf {
    let dataset: String = Path::new(&cfg.dataset)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| cfg.dataset.clone());
    let base = format!("{}-{}-ipc{}", cfg.label(), dataset, cfg.ipc);
    let root = Path::new("runs");
    let mut path = root.join(&base);
    let mut k = 2;
    while path.exists() {
        path = root.join(format!("{base}-{k}"));
        k += 1;
    }
    path
}

pub fn run(common: &Common, args: Args) -> anyhow::Result<()> {
    if args.list_presets {
        for p in presets() {
            println!("{:<26} {}", p.name, p.about);
        }
        return Ok(());
    }
    let selected = common.device()?;
    let (run, cfg) = match &args.resume {
        Some(dir) => {
            let run = RunDir::new(dir)?;
            let cfg = run
                .read_config()
                .with_context(|| format!("{} is not a run directory to resume", dir.display()))?;
            (run, cfg)
        }
        None => {
            let cfg = config(common, &args)?;
            let dir = args.out.clone().unwrap_or_else(|| fresh_run_dir(&cfg));
            if dir.join(haba::artifact::FILE_NAME).exists() {
                bail!(
                    "{} already holds a run: continue it with --resume {0}, or choose another --out",
                    dir.display()
                );
            }
            (RunDir::new(&dir)?, cfg)
        }
    };
    let dataset = super::datasets::load(common, &cfg.dataset)?;
    for line in cautions(&cfg, &dataset) {
        eprintln!("warning: {line}");
    }
    let prepared = Prepared::new(&dataset, cfg.preprocessing()?, &selected.device)
        .with_context(|| format!("preprocessing {}", dataset.name))?;
    let mut distiller = match &args.resume {
        Some(_) => {
            resume(&run, &prepared).with_context(|| format!("resuming {}", run.path.display()))?
        }
        None => Distiller::new(cfg, &prepared)?,
    };
    let result = run_with_bar(&mut distiller, &prepared, &dataset, &run)?;
    let storage = distiller.storage();
    println!(
        "{} on {}: {} bases/class{}, storage {} floats ({:.2} images per class); \
         test accuracy {} % ({} x {})",
        distiller.cfg.label(),
        dataset.name,
        distiller.bases_per_class,
        distiller
            .factorization
            .hallucinators
            .as_ref()
            .map_or(String::new(), |h| format!(
                " x {} hallucinators",
                h.shape.count
            )),
        storage.total_floats,
        storage.image_equivalents_per_class,
        result.percent(),
        distiller.cfg.eval.nets,
        distiller.cfg.eval.model,
    );
    run.write_report(&report_of(&distiller, &dataset, &selected.name, result))?;
    println!("run directory: {}", run.path.display());
    Ok(())
}

/// The loop with a progress bar showing iteration, losses, ETA and the last accuracy.
pub fn run_with_bar(
    d: &mut Distiller,
    data: &Prepared,
    dataset: &Dataset,
    run: &RunDir,
) -> anyhow::Result<EvalResult> {
    let bar = super::progress_bar(d.cfg.iterations as u64, &d.cfg.label());
    bar.set_position(d.iteration as u64);
    let mut last_eval = String::new();
    let result = distill(d, data, dataset, run, &mut |e| match e {
        Event::Step {
            iteration, losses, ..
        } => {
            bar.set_position(iteration as u64);
            let mut msg = format!("loss {:.4}", losses.objective);
            for (name, v) in &losses.scalars {
                msg += &format!(" {name} {v:.4}");
            }
            if losses.adversary > 0.0 {
                msg += &format!(" div {:.3} adv {:.3}", losses.diversity, losses.adversary);
            }
            bar.set_message(format!("{msg}{last_eval}"));
        }
        Event::EvalProgress(haba::eval::EvalProgress::Epoch { net, epoch, .. }) => {
            bar.set_message(format!("evaluating: net {} epoch {}", net + 1, epoch + 1));
        }
        Event::EvalProgress(_) => {}
        Event::Evaluated { result, .. } => last_eval = format!(" | acc {}%", result.percent()),
        Event::Checkpointed { .. } => {}
    })
    .with_context(|| format!("distilling into {}", run.path.display()))?;
    bar.finish_and_clear();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::merge;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_config_file_changes_single_keys_of_a_preset() {
        let preset =
            "ipc = 10\n[objective]\nmethod = \"mtt\"\nlr_teacher = 0.001\nsyn_steps = 30\n";
        let mut base = table(preset);
        merge(&mut base, table("ipc = 1\n[objective]\nsyn_steps = 10\n"));
        let want = "ipc = 1\n[objective]\nmethod = \"mtt\"\nlr_teacher = 0.001\nsyn_steps = 10\n";
        assert_eq!(base, table(want));
        // Another method's section replaces the preset's.
        let mut base = table(preset);
        merge(
            &mut base,
            table("[objective]\nmethod = \"dm\"\nbatch_real = 64\n"),
        );
        let want = "ipc = 10\n[objective]\nmethod = \"dm\"\nbatch_real = 64\n";
        assert_eq!(base, table(want));
    }
}
