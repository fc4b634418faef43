//! `haba bench`: the time and peak memory of each work unit, beside the same unit written in
//! PyTorch (`benches/torch_reference.py`) when a Python with torch is found.
//!
//! Each unit runs in a fresh process, ours and PyTorch's alike, so the resident peak a
//! process reports is that unit's alone.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use haba::bench::{BenchSettings, Cpu, Measurement, Unit, median};
use haba::device::BackendKind;
use haba::distill::Unroll;
use serde::{Deserialize, Serialize};

use super::Common;

/// The PyTorch side, relative to the repository root (where `cargo run` starts).
const TORCH_SCRIPT: &str = "benches/torch_reference.py";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Whose shapes to run at: fashion-mnist (1x28x28) or cifar10 (3x32x32). Random pixels
    /// are used, so no download is needed.
    #[arg(long, default_value = "fashion-mnist")]
    pub dataset: String,
    /// Sizes for a small machine: ConvNet-32, batch 64, 64 real images per class.
    #[arg(long)]
    pub quick: bool,
    /// Units to run, comma-separated (default all): dsa, embed, test-pass, train-step,
    /// eval-epoch, dm, haba-dm, mtt, haba-mtt.
    #[arg(long, value_delimiter = ',')]
    pub units: Vec<String>,
    /// Timed iterations per augmenting unit (default 6: each DSA family once); a third as
    /// many for embed and test-pass.
    #[arg(long)]
    pub iters: Option<usize>,
    /// Untimed iterations before them (default 1).
    #[arg(long)]
    pub warmup: Option<usize>,
    /// The network of every unit (default ConvNet, or ConvNetW32 with --quick).
    #[arg(long)]
    pub model: Option<String>,
    /// PyTorch side: auto (run it when $HABA_TORCH_PYTHON or python3 imports torch), off,
    /// or the path of a Python interpreter.
    #[arg(long, default_value = "auto")]
    pub torch: String,
    /// Where the results go as JSON.
    #[arg(long, default_value = "bench.json")]
    pub json: PathBuf,
    /// Synthetic images (or bases) per class (default 10).
    #[arg(long)]
    pub ipc: Option<usize>,
    /// Student steps per MTT iteration (mtt, haba-mtt).
    #[arg(long, default_value_t = 10)]
    pub syn_steps: usize,
    /// How MTT's gradient is computed: graph (as the reference) or recompute.
    #[arg(long, default_value = "graph")]
    pub unroll: Unroll,
    /// MiB `--unroll recompute` may keep of the last steps' graphs (as haba distill's).
    #[arg(long, value_name = "MIB")]
    pub recompute_memory: Option<f64>,
    /// Time and peak memory of MTT against syn_steps instead: each listed count (e.g.
    /// 10,20,40,80) with both unrolls, beside PyTorch's graph, for the first MTT unit of
    /// --units (default haba-mtt).
    #[arg(long, value_delimiter = ',')]
    pub mtt_sweep: Vec<usize>,
    /// Internal: measure this one unit and print it as JSON (what each child process does).
    #[arg(long, hide = true)]
    pub one: Option<String>,
    /// Internal: keep no freed memory for reuse, so the peak is the tensors' own.
    #[arg(long, hide = true)]
    pub no_alloc_cache: bool,
}

/// What the PyTorch script prints for one unit.
#[derive(Debug, Serialize, Deserialize)]
struct TorchMeasurement {
    seconds: Vec<f64>,
    peak_rss_bytes: Option<u64>,
    peak_device_bytes: Option<u64>,
    torch: String,
    threads: usize,
    device: String,
}

#[derive(Debug, Serialize)]
struct Row {
    unit: String,
    haba_seconds: f64,
    torch_seconds: Option<f64>,
    /// PyTorch's time over ours: above 1 means haba is faster.
    speedup: Option<f64>,
    haba: Measurement,
    torch: Option<TorchMeasurement>,
}

#[derive(Debug, Serialize)]
struct Report {
    settings: BenchSettings,
    device: String,
    cpu: Cpu,
    threads: usize,
    torch_python: Option<String>,
    rows: Vec<Row>,
}

/// What `--mtt-sweep` writes.
#[derive(Debug, Serialize)]
struct SweepReport {
    settings: BenchSettings,
    device: String,
    cpu: Cpu,
    rows: Vec<SweepRow>,
}

fn settings(args: &Args) -> anyhow::Result<BenchSettings> {
    let mut s = BenchSettings::for_dataset(&args.dataset)?;
    if args.quick {
        s = s.quick();
    }
    if let Some(model) = &args.model {
        s.model = model.parse().with_context(|| format!("--model {model}"))?;
    }
    s.iters = args.iters.unwrap_or(s.iters);
    s.warmup = args.warmup.unwrap_or(s.warmup);
    s.ipc = args.ipc.unwrap_or(s.ipc);
    s.syn_steps = args.syn_steps;
    s.unroll = args.unroll;
    s.recompute_memory_mb = args.recompute_memory.unwrap_or(s.recompute_memory_mb);
    s.validate().context("check --iters")?;
    Ok(s)
}

pub fn run(common: &Common, args: Args) -> anyhow::Result<()> {
    let s = settings(&args)?;
    if let Some(unit) = &args.one {
        let unit: Unit = unit.parse()?;
        if args.no_alloc_cache {
            haba::alloc::set_cache_limit(0);
        }
        let device = common.device()?;
        let m = haba::bench::measure(unit, &s, &device.device, common.seed())
            .with_context(|| format!("benchmark unit {unit}"))?;
        println!("{}", serde_json::to_string(&m)?);
        return Ok(());
    }
    let units: Vec<Unit> = if args.units.is_empty() {
        Unit::ALL.to_vec()
    } else {
        args.units
            .iter()
            .map(|u| u.parse())
            .collect::<Result<_, _>>()?
    };
    let selected = common.device()?;
    let torch_device = match selected.backend {
        BackendKind::Flex => "cpu",
        _ => "cuda",
    };
    let cpu = Cpu::detect();
    eprintln!("CPU: {cpu}");
    let python = find_torch(&args.torch)?;
    // Threads both sides use: Rayon's pool, which honours RAYON_NUM_THREADS.
    let threads = rayon::current_num_threads();
    match &python {
        Some(p) => eprintln!("PyTorch side: {p} {TORCH_SCRIPT}, {threads} threads, {torch_device}"),
        None => eprintln!("PyTorch side: off (no Python with torch found; see --torch)"),
    }
    eprintln!(
        "{}, {}, ipc {}, batch {}, real batch {}, {} timed iterations after {} warm-up",
        s.dataset, s.model, s.ipc, s.batch, s.batch_real, s.iters, s.warmup
    );

    if !args.mtt_sweep.is_empty() {
        let unit = units
            .iter()
            .copied()
            .find(|u| matches!(u, Unit::Mtt | Unit::HabaMtt))
            .unwrap_or(Unit::HabaMtt);
        let torch = python.as_deref().map(|p| (p, threads, torch_device));
        return sweep(common, &args, s, unit, torch, &selected.name, cpu);
    }
    let bar = super::progress_bar(units.len() as u64, "bench");
    let mut rows = Vec::new();
    for unit in units {
        bar.set_message(format!("{unit}: haba"));
        let haba = run_child(common, &args, &s, unit)?;
        let torch = match &python {
            Some(p) => {
                bar.set_message(format!("{unit}: torch"));
                match run_torch(p, &s, unit, threads, torch_device, common.seed()) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        bar.suspend(|| eprintln!("PyTorch side of {unit} failed: {e:#}"));
                        None
                    }
                }
            }
            None => None,
        };
        let haba_seconds = haba.median();
        let torch_seconds = torch.as_ref().map(|t| median(&t.seconds));
        rows.push(Row {
            unit: unit.to_string(),
            haba_seconds,
            torch_seconds,
            speedup: torch_seconds.map(|t| t / haba_seconds),
            haba,
            torch,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();

    print_table(&rows, &s);
    if let Some(t) = rows.iter().find_map(|r| r.torch.as_ref()) {
        println!(
            "PyTorch {} on {}, {} threads; haba on {}, {threads} threads.",
            t.torch, t.device, t.threads, selected.name
        );
    }
    println!("CPU: {cpu}.");
    let report = Report {
        settings: s,
        device: selected.name.clone(),
        cpu,
        threads,
        torch_python: python,
        rows,
    };
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    eprintln!("wrote {}", args.json.display());
    Ok(())
}

/// One row of `--mtt-sweep`.
#[derive(Debug, Serialize)]
struct SweepRow {
    syn_steps: usize,
    graph: Measurement,
    recompute: Measurement,
    torch: Option<TorchMeasurement>,
}

/// MTT's time and peak memory against syn_steps, both unrolls and PyTorch's graph.
fn sweep(
    common: &Common,
    args: &Args,
    s: BenchSettings,
    unit: Unit,
    torch: Option<(&str, usize, &str)>,
    device: &str,
    cpu: Cpu,
) -> anyhow::Result<()> {
    let bar = super::progress_bar(args.mtt_sweep.len() as u64, "mtt-sweep");
    let mut rows = Vec::new();
    for &n in &args.mtt_sweep {
        let at = |unroll| BenchSettings {
            syn_steps: n,
            unroll,
            ..s.clone()
        };
        bar.set_message(format!("{unit}, {n} steps"));
        let graph = run_child(common, args, &at(Unroll::Graph), unit)?;
        let recompute = run_child(common, args, &at(Unroll::Recompute), unit)?;
        let torch = match torch {
            Some((p, threads, device)) => {
                run_torch(p, &at(Unroll::Graph), unit, threads, device, common.seed())
                    .map_err(|e| bar.suspend(|| eprintln!("PyTorch side failed: {e:#}")))
                    .ok()
            }
            None => None,
        };
        rows.push(SweepRow {
            syn_steps: n,
            graph,
            recompute,
            torch,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "{unit}: seconds per iteration and peak memory (MB) against syn_steps ({}, {}, ipc {})",
        s.dataset, s.model, s.ipc
    );
    println!(
        "{:>9} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10}",
        "syn_steps", "graph s", "graph MB", "recompute s", "recompute MB", "torch s", "torch MB"
    );
    let mb = |m: &Measurement| peak_megabytes(m.peak_device_bytes, m.peak_rss_bytes);
    for r in &rows {
        let (ts, tm) = r.torch.as_ref().map_or(("-".into(), "-".into()), |t| {
            (
                format!("{:.3}", median(&t.seconds)),
                peak_megabytes(t.peak_device_bytes, t.peak_rss_bytes),
            )
        });
        println!(
            "{:>9} {:>10.3} {:>10} {:>12.3} {:>12} {ts:>10} {tm:>10}",
            r.syn_steps,
            r.graph.median(),
            mb(&r.graph),
            r.recompute.median(),
            mb(&r.recompute),
        );
    }
    println!(
        "torch: PyTorch with one graph over every step, as the reference. haba's peaks are \
         measured without its allocator cache, so they are the tensors' own."
    );
    println!("haba on {device}; CPU: {cpu}.");
    let report = SweepReport {
        settings: s,
        device: device.into(),
        cpu,
        rows,
    };
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    eprintln!("wrote {}", args.json.display());
    Ok(())
}

/// Measures one unit in a child process of this same binary.
fn run_child(
    common: &Common,
    args: &Args,
    s: &BenchSettings,
    unit: Unit,
) -> anyhow::Result<Measurement> {
    let exe = std::env::current_exe().context("finding the haba binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("bench")
        .args(["--one", unit.name(), "--dataset", &args.dataset])
        .args(["--iters", &s.iters.to_string()])
        .args(["--warmup", &s.warmup.to_string()])
        .args(["--model", &s.model.to_string()])
        .args(["--ipc", &s.ipc.to_string()])
        .args(["--syn-steps", &s.syn_steps.to_string()])
        .args(["--unroll", &s.unroll.to_string()])
        .args(["--recompute-memory", &s.recompute_memory_mb.to_string()])
        .args(["--device", &common.device.to_string()])
        .args(["--seed", &common.seed().to_string()]);
    if args.quick {
        cmd.arg("--quick");
    }
    if !args.mtt_sweep.is_empty() {
        cmd.arg("--no-alloc-cache");
    }
    if let Some(dir) = &common.data_dir {
        cmd.arg("--data-dir").arg(dir);
    }
    let out = cmd.output().context("starting the benchmark process")?;
    if !out.status.success() {
        bail!(
            "haba's {unit} failed:\n{}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| format!("reading {unit}'s result: {text}"))
}

/// The interpreter to run the PyTorch side with, if any imports torch.
fn find_torch(choice: &str) -> anyhow::Result<Option<String>> {
    let has_torch = |python: &str| {
        Command::new(python)
            .args(["-c", "import torch"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    match choice {
        "off" => Ok(None),
        "auto" => {
            let candidates = std::env::var("HABA_TORCH_PYTHON")
                .ok()
                .into_iter()
                .chain(["python3".to_string()]);
            Ok(candidates.into_iter().find(|p| has_torch(p)))
        }
        path if has_torch(path) => Ok(Some(path.to_string())),
        path => bail!("--torch {path}: that Python cannot import torch"),
    }
}

fn run_torch(
    python: &str,
    s: &BenchSettings,
    unit: Unit,
    threads: usize,
    device: &str,
    seed: u64,
) -> anyhow::Result<TorchMeasurement> {
    if !std::path::Path::new(TORCH_SCRIPT).exists() {
        bail!("{TORCH_SCRIPT} not found: run haba bench from the repository root");
    }
    let haba::nets::Arch::ConvNet(net) = s.model else {
        bail!(
            "the PyTorch side has the ConvNet family only, not {}",
            s.model
        );
    };
    let num = |v: usize| v.to_string();
    let out = Command::new(python)
        .arg(TORCH_SCRIPT)
        .args(["--unit", unit.name()])
        .args(["--channels", &num(s.shape.channels)])
        .args(["--height", &num(s.shape.height)])
        .args(["--width", &num(s.shape.width)])
        .args(["--classes", &num(s.classes)])
        .args(["--ipc", &num(s.ipc)])
        .args(["--batch-real", &num(s.batch_real)])
        .args(["--batch", &num(s.batch)])
        .args(["--test-size", &num(s.test_size)])
        .args(["--hallucinators", &num(s.hallucinators)])
        .args(["--width-net", &num(net.width)])
        .args(["--depth", &num(net.depth)])
        .args(["--iters", &num(s.iterations(unit))])
        .args(["--warmup", &num(s.warmup)])
        .args(["--threads", &num(threads)])
        .args(["--device", device])
        .args(["--seed", &seed.to_string()])
        .args(["--syn-steps", &num(s.syn_steps)])
        .output()
        .with_context(|| format!("starting {python}"))?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("reading its result: {text}"))
}

/// The peak a side reports, in MB: the GPU allocator's when there is one, else the
/// process's resident peak ("-" when neither is known).
fn peak_megabytes(device: Option<u64>, rss: Option<u64>) -> String {
    device
        .or(rss)
        .map_or("-".into(), |b| format!("{:.0}", b as f64 / 1e6))
}

fn print_table(rows: &[Row], s: &BenchSettings) {
    println!(
        "{:<12} {:>10} {:>10} {:>9} {:>10} {:>10} {:>10}",
        "unit", "haba s", "torch s", "speed-up", "haba MB", "torch MB", "buffers"
    );
    let line = |name: &str,
                h: f64,
                t: Option<f64>,
                speedup: Option<f64>,
                [hm, tm]: [String; 2],
                buffers: Option<f64>| {
        let t_s = t.map_or("-".into(), |t| format!("{t:.4}"));
        let ratio = speedup.map_or("-".into(), |r| format!("{r:.2}x"));
        let b = buffers.map_or("-".into(), |b| format!("{b:.0}"));
        println!("{name:<12} {h:>10.4} {t_s:>10} {ratio:>9} {hm:>10} {tm:>10} {b:>10}");
    };
    for r in rows {
        line(
            &r.unit,
            r.haba_seconds,
            r.torch_seconds,
            r.speedup,
            [
                peak_megabytes(r.haba.peak_device_bytes, r.haba.peak_rss_bytes),
                r.torch.as_ref().map_or("-".into(), |t| {
                    peak_megabytes(t.peak_device_bytes, t.peak_rss_bytes)
                }),
            ],
            r.haba.buffers_per_iteration,
        );
    }
    if let Some(r) = rows.iter().find(|r| r.unit == Unit::TrainStep.name()) {
        let steps = s.expert_epoch_steps() as f64;
        line(
            "expert-epoch",
            r.haba_seconds * steps,
            r.torch_seconds.map(|t| t * steps),
            r.speedup,
            ["-".into(), "-".into()],
            None,
        );
        println!(
            "(expert-epoch = {} train-steps of {} images: {} training images)",
            s.expert_epoch_steps(),
            s.batch,
            s.train_size
        );
    }
    println!(
        "speed-up = PyTorch's median time / haba's; above 1, haba is faster. MB: peak memory. \
         buffers: haba's host buffers of 64 KiB or more allocated per iteration (on the CPU \
         about one per op on an activation)."
    );
}
