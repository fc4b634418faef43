//! Crash safety: a distillation killed with SIGKILL at any moment and resumed ends exactly
//! where an uninterrupted run does, and its checkpoint on disk is always readable.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

mod common;

fn haba() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_haba"));
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

/// A short HaBa-DM run writing a checkpoint every second iteration.
fn distill_args(out: &Path) -> Vec<String> {
    [
        "distill",
        "--preset",
        "quick",
        "--iterations",
        "10",
        "--checkpoint-every",
        "2",
        "--eval-nets",
        "1",
        "--eval-epochs",
        "2",
        "--device",
        "cpu",
        "--seed",
        "4",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.to_str().unwrap().to_string()])
    .collect()
}

/// `metrics.jsonl` without the wall-clock fields, which differ from run to run.
fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(o) = v.as_object_mut() {
                for k in ["seconds", "seconds_per_iteration", "memory_bytes"] {
                    o.remove(k);
                }
            }
            v
        })
        .collect()
}

#[test]
fn killed_and_resumed_runs_end_like_an_uninterrupted_one() {
    let dir = common::scratch("crash-kill");
    let reference = dir.join("reference");
    let started = Instant::now();
    let status = haba().args(distill_args(&reference)).status().unwrap();
    assert!(status.success());
    let whole = started.elapsed();
    let want_artifact = std::fs::read(reference.join("distilled.safetensors")).unwrap();
    let want_metrics = metrics(&reference);

    // Kill moments spread over the whole run, from start-up to the final evaluation.
    for (k, fraction) in [0.15, 0.35, 0.5, 0.65, 0.8].into_iter().enumerate() {
        let run = dir.join(format!("killed-{k}"));
        let mut child = haba().args(distill_args(&run)).spawn().unwrap();
        std::thread::sleep(whole.mul_f64(fraction));
        let _ = child.kill(); // SIGKILL on Unix
        child.wait().unwrap();
        let checkpoint = run.join("checkpoint.safetensors");
        if checkpoint.exists() {
            // Whole, whatever moment the kill came: written through a rename.
            let bytes = std::fs::read(&checkpoint).unwrap();
            assert!(
                safetensors::SafeTensors::deserialize(&bytes).is_ok(),
                "kill {k}: unreadable checkpoint"
            );
        }
        // Continue it: resume if the run got as far as its config, else start again.
        let args = if run.join("config.toml").exists() {
            vec![
                "distill".to_string(),
                "--resume".into(),
                run.to_str().unwrap().into(),
                "--device".into(),
                "cpu".into(),
            ]
        } else {
            distill_args(&run)
        };
        let status = haba().args(&args).status().unwrap();
        assert!(status.success(), "kill {k}: {args:?} failed");
        assert_eq!(
            std::fs::read(run.join("distilled.safetensors")).unwrap(),
            want_artifact,
            "kill {k} at {fraction} of the run: a different artifact"
        );
        assert_eq!(
            metrics(&run),
            want_metrics,
            "kill {k}: a different metrics.jsonl"
        );
    }
}

/// `haba buffer` killed at any moment and run again ends with the same expert files as an
/// uninterrupted run, and never leaves a file that is not whole.
#[test]
fn a_killed_buffer_run_completes_with_the_same_experts() {
    let dir = common::scratch("crash-buffer");
    let args = |out: &Path| -> Vec<String> {
        [
            "buffer",
            "--dataset",
            "embedded",
            "--preprocess",
            "meanstd",
            "--model",
            "ConvNetD2W8",
            "--experts",
            "4",
            "--epochs",
            "2",
            "--device",
            "cpu",
            "--seed",
            "3",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([out.to_str().unwrap().to_string()])
        .collect()
    };
    let files = |buffer: &Path| -> Vec<(String, Vec<u8>)> {
        let mut names: Vec<_> = std::fs::read_dir(buffer)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|n| (n.clone(), std::fs::read(buffer.join(&n)).unwrap()))
            .collect()
    };
    let reference = dir.join("reference");
    let started = Instant::now();
    assert!(haba().args(args(&reference)).status().unwrap().success());
    let whole = started.elapsed();
    let want = files(&reference);
    assert_eq!(
        want.len(),
        4,
        "{:?}",
        want.iter().map(|f| &f.0).collect::<Vec<_>>()
    );

    for (k, fraction) in [0.3, 0.6, 0.85].into_iter().enumerate() {
        let buffer = dir.join(format!("killed-{k}"));
        let mut child = haba().args(args(&buffer)).spawn().unwrap();
        std::thread::sleep(whole.mul_f64(fraction));
        let _ = child.kill();
        child.wait().unwrap();
        if buffer.exists() {
            for (name, bytes) in files(&buffer) {
                assert!(
                    name.ends_with(".tmp") || safetensors::SafeTensors::deserialize(&bytes).is_ok(),
                    "kill {k}: {name} is not whole"
                );
            }
        }
        assert!(
            haba().args(args(&buffer)).status().unwrap().success(),
            "kill {k}"
        );
        let got: Vec<_> = files(&buffer)
            .into_iter()
            .filter(|(n, _)| !n.ends_with(".tmp"))
            .collect();
        assert!(
            got == want,
            "kill {k} at {fraction}: different expert files"
        );
    }
}
