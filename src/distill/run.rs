//! A distillation run on disk (a [`RunDir`]): the loop with logging, periodic evaluation
//! and checkpoints, and resuming an interrupted run from its directory.

use super::checkpoint::Checkpoint;
use super::runner::{Distiller, Losses};
use crate::artifact::{Artifact, ArtifactMeta, write_atomic};
use crate::clock::Stopwatch;
use crate::data::{Dataset, Prepared};
use crate::error::{Error, Result};
use crate::eval::{EvalProgress, EvalResult, evaluate_factorization};
use crate::report::run_dir::read_text;
use crate::report::{
    Display, Distillation, EvaluatedSet, MetricsLog, Report, RunDir, bases_png, hallucinated_png,
    metrics_up_to,
};

/// What the loop reports as it goes (progress bars, logs).
#[derive(Clone, Debug)]
pub enum Event {
    Step {
        iteration: usize,
        total: usize,
        losses: Losses,
    },
    EvalProgress(EvalProgress),
    Evaluated {
        iteration: usize,
        result: EvalResult,
    },
    Checkpointed {
        iteration: usize,
    },
}

/// One line of `metrics.jsonl`.
#[derive(serde::Serialize)]
struct StepRecord {
    iteration: usize,
    #[serde(flatten)]
    losses: Losses,
    /// Since the loop (re)started.
    seconds: f64,
    /// This iteration alone.
    seconds_per_iteration: f64,
    /// Device memory reserved, or the process's peak resident memory on the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_bytes: Option<u64>,
}

#[derive(serde::Serialize)]
struct EvalRecord<'a> {
    iteration: usize,
    eval: &'a EvalResult,
}

/// The key of an artifact's settings that counts the iterations it was distilled for.
pub const ITERATIONS_DONE: &str = "iterations_done";

/// The artifact of the distiller's current state.
pub fn artifact_of(d: &Distiller, data: &Prepared, dataset: &Dataset) -> Artifact {
    let mut settings = serde_json::to_value(&d.cfg).unwrap_or_default();
    // How far the run had got: a checkpoint's artifact is written mid-run.
    if let Some(map) = settings.as_object_mut() {
        map.insert(ITERATIONS_DONE.into(), d.iteration.into());
    }
    Artifact {
        factorization: d.factorization.clone(),
        normalization: data.normalization.clone(),
        meta: ArtifactMeta {
            // What loads the dataset again (a name, a folder path, or `embedded`).
            dataset: d.cfg.dataset.clone(),
            classes: dataset.classes.clone(),
            image: data.shape,
            method: d.cfg.label(),
            settings,
        },
        lr: d.learned_lr(),
    }
}

/// The distiller's set as one row of a report, named `name`, with its `result`.
pub fn evaluated_set(d: &Distiller, name: &str, result: EvalResult) -> EvaluatedSet {
    EvaluatedSet {
        name: name.to_string(),
        storage: d.storage(),
        iterations: Some(d.iteration),
        evaluation: d.cfg.eval_config(d.learned_lr()),
        result,
    }
}

/// The run's `report.json`: how its set was made, measured on `device`, and `result`
/// first among the sets (callers add baselines after it).
pub fn report_of(d: &Distiller, dataset: &Dataset, device: &str, result: EvalResult) -> Report {
    let mut report = Report::new(&dataset.name, &dataset.classes, device, d.cfg.seed);
    report.preprocess = d.cfg.preprocess;
    report.distillation = Some(Distillation {
        method: d.cfg.label(),
        iterations: d.iteration,
        bases_per_class: d.bases_per_class,
        learned_lr: d.learned_lr(),
        settings: d.cfg.clone(),
    });
    report.sets.push(evaluated_set(d, &d.cfg.label(), result));
    report
}

/// Writes the artifact and everything needed to continue from this iteration. The
/// checkpoint is one file written atomically, so whatever moment a run is killed, the
/// checkpoint on disk is whole.
pub fn checkpoint(d: &Distiller, data: &Prepared, dataset: &Dataset, run: &RunDir) -> Result<()> {
    write_atomic(&run.checkpoint(), &d.checkpoint().to_bytes()?)?;
    artifact_of(d, data, dataset).save(&run.artifact())?;
    write_curves(run, &format!("{} on {}", d.cfg.label(), dataset.name))
}

/// `curves.png` from the run's `metrics.jsonl` so far, so a run on a remote machine can be
/// judged from one file.
pub fn write_curves(run: &RunDir, title: &str) -> Result<()> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let text = std::fs::read_to_string(run.metrics()).unwrap_or_default();
        let curves = crate::report::curves::Curves::parse(&text);
        write_atomic(
            &run.curves(),
            &crate::report::plot::curves_png(&curves, title)?,
        )?;
    }
    #[cfg(target_arch = "wasm32")]
    let _ = (run, title);
    Ok(())
}

/// Continues a run from its last checkpoint: a distiller built from the run's config, with
/// every saved tensor and the iteration put back. Because every iteration draws from a
/// generator seeded by (seed, iteration), the resumed run takes the same steps the
/// uninterrupted one would have.
pub fn resume(run: &RunDir, data: &Prepared) -> Result<Distiller> {
    let cfg = run.read_config()?;
    let mut d = Distiller::new(cfg, data)?;
    let path = run.checkpoint();
    // Stopped before its first checkpoint: the run starts again from its config, which
    // is where an uninterrupted run started too.
    if path.exists() {
        let bytes = std::fs::read(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let device = data.train.images.device();
        let ck = Checkpoint::from_bytes(&bytes, &device).map_err(|reason| Error::Artifact {
            path: path.clone(),
            reason,
        })?;
        d.restore(ck).map_err(|e| Error::Artifact {
            path,
            reason: e.to_string(),
        })?;
    }
    // Iterations after the checkpoint will run and be logged again.
    let metrics = run.metrics();
    if metrics.exists() {
        let text = read_text(&metrics)?;
        let finished = d.iteration >= d.cfg.iterations;
        write_atomic(
            &metrics,
            metrics_up_to(&text, d.iteration, finished).as_bytes(),
        )?;
    }
    Ok(d)
}

/// Runs the loop to the configured number of iterations: logs every iteration, evaluates
/// every `eval_every`, checkpoints every `checkpoint_every` and at the end, and writes the
/// PNG grids. Returns the final evaluation.
pub fn distill(
    d: &mut Distiller,
    data: &Prepared,
    dataset: &Dataset,
    run: &RunDir,
    on_event: &mut dyn FnMut(Event),
) -> Result<EvalResult> {
    run.write_config(&d.cfg)?;
    let mut metrics = MetricsLog::open(&run.metrics())?;
    let start = Stopwatch::start();
    let total = d.cfg.iterations;

    // Evaluates the current factorization, logs and reports the result.
    let evaluate_now = |d: &Distiller,
                        metrics: &mut MetricsLog,
                        on_event: &mut dyn FnMut(Event)|
     -> Result<EvalResult> {
        let result = evaluate_factorization(
            &d.factorization,
            &data.test,
            data.classes,
            &d.cfg.eval_config(d.learned_lr()),
            d.cfg.seed,
            &mut |p| on_event(Event::EvalProgress(p)),
        )?;
        metrics.log(&EvalRecord {
            iteration: d.iteration,
            eval: &result,
        })?;
        on_event(Event::Evaluated {
            iteration: d.iteration,
            result: result.clone(),
        });
        Ok(result)
    };
    let device = data.train.images.device();
    while d.iteration < total {
        let began = Stopwatch::start();
        let losses = d.step(data)?;
        let iteration = d.iteration;
        metrics.log(&StepRecord {
            iteration,
            losses: losses.clone(),
            seconds: start.seconds(),
            seconds_per_iteration: began.seconds(),
            memory_bytes: crate::device::memory_bytes(&device),
        })?;
        on_event(Event::Step {
            iteration,
            total,
            losses,
        });
        if d.cfg.eval_every > 0 && iteration.is_multiple_of(d.cfg.eval_every) && iteration < total {
            evaluate_now(d, &mut metrics, on_event)?;
        }
        if iteration.is_multiple_of(d.cfg.checkpoint_every) || iteration == total {
            checkpoint(d, data, dataset, run)?;
            on_event(Event::Checkpointed { iteration });
        }
    }
    if !run.artifact().exists() {
        checkpoint(d, data, dataset, run)?;
    }
    let artifact = artifact_of(d, data, dataset);
    for display in Display::ALL {
        bases_png(&run.path, &artifact, display)?;
        hallucinated_png(&run.path, &artifact, display)?;
    }
    let result = evaluate_now(d, &mut metrics, on_event)?;
    write_curves(run, &format!("{} on {}", d.cfg.label(), dataset.name))?;
    Ok(result)
}
