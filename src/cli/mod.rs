//! One file per subcommand; this file holds the flags every command shares.

mod bench;
mod buffer;
mod compare;
mod datasets;
mod demo;
mod distill;
mod eval;
mod export;
pub mod flags;
#[cfg(feature = "viewer")]
mod view;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use haba::device::{DeviceChoice, Selected};

#[derive(Parser, Debug)]
#[command(
    name = "haba",
    version,
    about = "Dataset distillation via factorization (HaBa) on any WebGPU device",
    long_about = "Dataset distillation via factorization (HaBa) on any WebGPU device.\n\n\
                  Without a command, runs the main job: HaBa-DM and HaBa-MTT beside DM, MTT \
                  and random real images at equal storage, on the CIFAR-10 subset built \
                  into the binary (or --dataset NAME: `haba --dataset fashion-mnist` runs \
                  the grey job)."
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    /// The main job's dataset (default: embedded-cifar10, the CIFAR-10 subset built in;
    /// `embedded` or `fashion-mnist` for the grey job).
    #[arg(long)]
    pub dataset: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Flags every command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Seed for every random draw (default 0): the same seed on the same device repeats a run.
    #[arg(long, global = true)]
    pub seed: Option<u64>,
    /// auto (a hardware GPU if present, else CPU), gpu (any wgpu adapter on the platform's
    /// API, or WGPU_BACKEND's), gpu:vulkan|metal|dx12|gl|webgpu, cpu, cuda.
    #[arg(long, global = true, default_value = "auto")]
    pub device: DeviceChoice,
    /// Directory searched first for datasets (then $HABA_DATA, ./data, system locations).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
}

impl Common {
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or(0)
    }

    /// Opens the device and prints the one line that says which and why.
    pub fn device(&self) -> anyhow::Result<Selected> {
        let selected = haba::device::select(self.device, self.seed())
            .with_context(|| format!("opening --device {}", self.device))?;
        eprintln!(
            "device: {} ({})",
            selected.name,
            flags::phrase(&selected.reason)
        );
        Ok(selected)
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Time each work unit (DM, HaBa-DM, training, DSA, ...) beside PyTorch at the same settings.
    Bench(bench::Args),
    /// Train expert networks on real data and save their trajectories (for --method mtt).
    Buffer(buffer::Args),
    /// List the known datasets and where each was found; optionally download some.
    Datasets(datasets::Args),
    /// Distill a dataset into bases and hallucinators (HaBa) or plain images.
    Distill(Box<distill::Args>),
    /// Train fresh networks on a training set and report test accuracy.
    Eval(eval::Args),
    /// Write a distilled set as a class-per-folder PNG tree any framework can train on.
    Export(export::Args),
    /// Open a window on a run directory or an artifact: images, curves, storage (live).
    #[cfg(feature = "viewer")]
    View(view::Args),
    /// Compare runs at equal storage: one table, compare.png and compare.json.
    Compare(compare::Args),
    /// Print shell completions: `haba completions bash > /etc/bash_completion.d/haba`.
    Completions(CompletionsArgs),
}

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for: bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.command.is_some() && cli.dataset.is_some() {
        anyhow::bail!(
            "--dataset before a command is the main job's: put it after the command \
             (`haba distill --dataset NAME`)"
        );
    }
    let common = &cli.common;
    match cli.command {
        None => on_workers(|| demo::run(common, cli.dataset.as_deref())),
        Some(Command::Bench(args)) => on_workers(|| bench::run(common, args)),
        Some(Command::Buffer(args)) => on_workers(|| buffer::run(common, args)),
        Some(Command::Datasets(args)) => datasets::run(common, args),
        Some(Command::Distill(args)) => on_workers(|| distill::run(common, *args)),
        Some(Command::Eval(args)) => on_workers(|| eval::run(common, args)),
        Some(Command::Export(args)) => export::run(common, args),
        #[cfg(feature = "viewer")]
        Some(Command::View(args)) => view::run(common, args),
        Some(Command::Compare(args)) => compare::run(args),
        Some(Command::Completions(args)) => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(args.shell, &mut command, "haba", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// Runs a command's work on one of Rayon's worker threads, the main thread waiting.
///
/// The CPU backend's parallel ops run on Rayon's workers, one per core, and between them
/// the calling thread runs the serial ops while the workers spin a moment looking for
/// work. Called from the main thread that made one thread more than there are cores, so
/// the serial ops shared their core with a spinning worker; from a worker they run where
/// that worker would have spun (MTT at 1 image per class on 2 cores: 0.42 to 0.40 s an
/// iteration). The viewer stays on the main thread, which windowing systems require.
fn on_workers(work: impl FnOnce() -> anyhow::Result<()> + Send) -> anyhow::Result<()> {
    let pool = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("haba-worker-{i}"))
        // The main thread's 8 MiB and more: a long autodiff graph is dropped recursively.
        .stack_size(32 << 20)
        .build()
        .map_err(|e| anyhow::anyhow!("could not start the worker threads: {e}"))?;
    pool.install(work)
}

/// A progress bar in the house style.
pub fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every flag and argument of every subcommand has a line of help.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "haba", &mut missing);
        assert!(missing.is_empty(), "no help for: {missing:?}");
        assert!(cmd.get_subcommands().any(|s| s.get_name() == "completions"));
    }
}
