//! The command line as a user meets it: listings, a short evaluation with its JSON report,
//! and clear errors for bad input.

use std::path::PathBuf;
use std::process::{Command, Output};

mod common;
use common::text;
use haba::report::{Report, RunDir};

fn haba(args: &[&str], data_dir: &PathBuf) -> Output {
    Command::new(env!("CARGO_BIN_EXE_haba"))
        .args(args)
        .env("HABA_DATA", data_dir)
        .output()
        .expect("the haba binary runs")
}

fn temp_dir(tag: &str) -> PathBuf {
    common::scratch(&format!("cli-{tag}"))
}

#[cfg(target_os = "linux")]
/// On a headless Linux machine (no `XDG_RUNTIME_DIR`) opening the GPU prints nothing but
/// the device line, which names the graphics API wgpu runs on.
#[test]
fn the_device_line_names_the_api_and_nothing_else_is_printed() {
    let dir = temp_dir("device-line");
    let out = Command::new(env!("CARGO_BIN_EXE_haba"))
        .args([
            "eval",
            "--dataset",
            "embedded",
            "--random-real",
            "1",
            "--nets",
            "1",
            "--epochs",
            "1",
            "--device",
            "auto",
        ])
        .env("HABA_DATA", &dir)
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("NODEVICE_SELECT")
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(!t.contains("XDG_RUNTIME_DIR"), "{t}");
    let err = String::from_utf8_lossy(&out.stderr);
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("device: "),
        "the device line comes first: {t}"
    );
    if first.contains("wgpu") {
        assert!(first.contains("wgpu on Vulkan"), "{first}");
    }
    // A named API that does not exist here is an error naming it.
    let out = haba(
        &[
            "eval",
            "--dataset",
            "embedded",
            "--random-real",
            "1",
            "--device",
            "gpu:metal",
        ],
        &dir,
    );
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("Metal") && !t.contains("panicked"),
        "{t}"
    );
}

#[test]
fn datasets_lists_every_known_dataset_and_the_search_path() {
    let dir = temp_dir("list");
    let out = haba(&["datasets", "--data-dir", dir.to_str().unwrap()], &dir);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for name in [
        "embedded",
        "mnist",
        "fashion-mnist",
        "cifar10",
        "cifar100",
        "svhn",
    ] {
        assert!(t.contains(name), "{name} missing from:\n{t}");
    }
    assert!(t.contains(dir.to_str().unwrap()), "{t}");
    // Flags every command takes work before the command too.
    let dir_arg = dir.to_str().unwrap();
    let out = haba(&["--seed", "1", "--data-dir", dir_arg, "datasets"], &dir);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(dir_arg), "{}", text(&out));
    // The main job's --dataset before a command is refused, naming where it goes.
    let out = haba(&["--dataset", "embedded", "datasets"], &dir);
    assert!(!out.status.success());
    assert!(text(&out).contains("after the command"), "{}", text(&out));
}

#[test]
fn completions_cover_every_subcommand() {
    let dir = temp_dir("completions");
    for shell in ["bash", "zsh", "fish"] {
        let out = haba(&["completions", shell], &dir);
        let t = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{shell}: {}", text(&out));
        for word in ["distill", "buffer", "compare", "lambda-cos"] {
            assert!(t.contains(word), "{shell} completions lack {word}");
        }
    }
    let out = haba(&["completions", "tcsh"], &dir);
    assert!(
        !out.status.success() && text(&out).contains("bash"),
        "{}",
        text(&out)
    );
}

#[test]
fn eval_writes_a_json_report_with_every_setting() {
    let dir = temp_dir("eval");
    let json = dir.join("out.json");
    let out = haba(
        &[
            "eval",
            "--dataset",
            "embedded",
            "--random-real",
            "1",
            "--nets",
            "2",
            "--epochs",
            "3",
            "--model",
            "ConvNetW32",
            "--device",
            "cpu",
            "--seed",
            "5",
            "--json",
            json.to_str().unwrap(),
        ],
        &dir,
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("device: cpu"), "the device line is printed: {t}");
    let report = Report::from_json(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        (report.seed, report.dataset.as_str()),
        (5, "fashion-mnist-subset")
    );
    let set = &report.sets[0];
    assert_eq!(set.storage.total_floats, 10 * 784, "ten real images");
    assert_eq!(set.evaluation.model.to_string(), "ConvNetW32");
    assert_eq!(set.evaluation.train.epochs, 3);
    let accs = &set.result.accuracies;
    assert_eq!(accs.len(), 2);
    assert!((set.result.mean - (accs[0] + accs[1]) / 2.0).abs() < 1e-6);
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = temp_dir("errors");
    let eval = |extra: &'static [&'static str]| -> Vec<&'static str> {
        let mut a = vec![
            "eval",
            "--dataset",
            "embedded",
            "--device",
            "cpu",
            "--epochs",
            "1",
        ];
        a.extend_from_slice(extra);
        a
    };
    // Runs that fail go to a scratch --out, never to runs/ in the repository.
    let out_dir = dir.join("refused-run");
    let out_dir: &'static str = Box::leak(out_dir.to_str().unwrap().to_string().into_boxed_str());
    let distill = move |extra: &'static [&'static str]| -> Vec<&'static str> {
        let mut a = vec![
            "distill",
            "--preset",
            "quick",
            "--device",
            "cpu",
            "--iterations",
            "1",
            "--out",
            out_dir,
        ];
        a.extend_from_slice(extra);
        a
    };
    // Absurd numbers: refused with the bound or the memory estimate, never an abort.
    let absurd: Vec<(Vec<&str>, &[&str])> = vec![
        (
            eval(&["--random-real", "100000000000"]),
            &["fewer than the 100000000000"],
        ),
        (
            eval(&["--random-real", "1", "--nets", "100000000000000"]),
            &["between 1 and 10000"],
        ),
        (
            eval(&["--random-real", "1", "--model", "ConvNetW99999999999"]),
            &["width between 1 and 65536"],
        ),
        (
            eval(&["--random-real", "1", "--model", "ConvNetW60000"]),
            &["parameters", "more than this machine's"],
        ),
        (
            eval(&["--random-real", "1", "--lr", "nan"]),
            &["learning rate", "NaN"],
        ),
        (
            distill(&["--ipc", "100000000000"]),
            &[
                "`--ipc 100000000000`",
                "more than this machine's",
                "lower it",
            ],
        ),
        (
            distill(&["--hallucinators", "100000000000"]),
            &["at most 1024"],
        ),
        (distill(&["--lambda-cos", "inf"]), &["`--lambda-cos inf`"]),
    ];
    for (args, needles) in &absurd {
        let out = haba(args, &dir);
        let t = text(&out);
        assert!(!out.status.success(), "{args:?} should fail:\n{t}");
        assert!(
            !t.contains("panicked") && !t.contains("memory allocation"),
            "{args:?}:\n{t}"
        );
        for n in *needles {
            assert!(t.contains(n), "{args:?}: `{n}` missing from:\n{t}");
        }
    }
    // A config file's unknown key: its error names the file's keys, not flags.
    let file = dir.join("typo.toml");
    std::fs::write(&file, "ipcc = 1\n").unwrap();
    let file: &'static str = Box::leak(file.to_str().unwrap().to_string().into_boxed_str());
    let config: &'static [&'static str] = Box::leak(vec!["--config", file].into_boxed_slice());
    let out = haba(&distill(config), &dir);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("ipcc") && t.contains(file), "{t}");
    assert!(t.contains("`ipc`") && !t.contains("`--ipc`"), "{t}");
    // Gradient matching's settings: named by their flags.
    let settings: Vec<(Vec<&str>, &[&str])> = vec![
        (
            distill(&["--method", "dc", "--dis-metric", "l1"]),
            &["l1", "ours", "mse", "cos"],
        ),
        (
            distill(&["--method", "dsa", "--ipc", "7"]),
            &["`--ipc 7`", "`--outer-loop`", "`--inner-loop`"],
        ),
        (
            distill(&["--method", "dc", "--ipc", "1", "--model", "ConvNetBN"]),
            &["ConvNetBN", "BatchNorm"],
        ),
        (
            distill(&["--method", "dm", "--syn-steps", "3"]),
            &["--syn-steps is not a setting of dm"],
        ),
        (
            distill(&["--method", "kip"]),
            &["kip", "dm", "mtt", "dc", "dsa"],
        ),
        (
            distill(&["--hallucinators", "0"]),
            &["`--hallucinators 0`", "`--no-haba`"],
        ),
    ];
    for (args, needles) in &settings {
        let out = haba(args, &dir);
        let t = text(&out);
        assert!(!out.status.success(), "{args:?} should fail:\n{t}");
        assert!(!t.contains("panicked"), "{args:?} panicked:\n{t}");
        for n in *needles {
            assert!(t.contains(n), "{args:?}: `{n}` missing from:\n{t}");
        }
    }
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &[
                "eval",
                "--dataset",
                "cifar10",
                "--random-real",
                "1",
                "--device",
                "cpu",
            ],
            &["cifar10", "not found", "--download"],
        ),
        (
            &["eval", "--dataset", "embedded", "--device", "cpu"],
            &["--random-real N or --whole"],
        ),
        (
            &[
                "eval",
                "--dataset",
                "embedded",
                "--random-real",
                "501",
                "--device",
                "cpu",
            ],
            &["fewer than the 501"],
        ),
        (&["eval", "--model", "ConvNetQQ", "--whole"], &["ConvNetQQ"]),
        (&["--device", "tpu"], &["tpu", "auto, gpu, gpu:vulkan"]),
    ];
    for (args, needles) in cases {
        let out = haba(args, &dir);
        let t = text(&out);
        assert!(!out.status.success(), "{args:?} should fail:\n{t}");
        assert!(!t.contains("panicked"), "{args:?} panicked:\n{t}");
        for n in needles {
            assert!(t.contains(n), "{args:?}: `{n}` missing from:\n{t}");
        }
    }
}

#[test]
fn truncated_dataset_file_names_the_file() {
    let dir = temp_dir("truncated");
    let fm = dir.join("fashion-mnist");
    std::fs::create_dir_all(&fm).unwrap();
    // Valid headers promising more images than the files hold.
    let mut images = vec![0, 0, 8, 3, 0, 0, 0, 5, 0, 0, 0, 28, 0, 0, 0, 28];
    images.extend(vec![0u8; 100]);
    let labels = [0u8, 0, 8, 1, 0, 0, 0, 5, 0, 1, 2, 3, 4];
    for split in ["train", "t10k"] {
        std::fs::write(fm.join(format!("{split}-images-idx3-ubyte")), &images).unwrap();
        std::fs::write(fm.join(format!("{split}-labels-idx1-ubyte")), labels).unwrap();
    }
    let out = haba(
        &[
            "eval",
            "--dataset",
            "fashion-mnist",
            "--whole",
            "--device",
            "cpu",
            "--data-dir",
            dir.to_str().unwrap(),
        ],
        &dir,
    );
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("train-images-idx3-ubyte") && t.contains("bytes"),
        "{t}"
    );
}

#[test]
fn distill_writes_a_run_directory_that_eval_export_and_resume_read() {
    let dir = temp_dir("distill");
    let run = dir.join("run");
    let run_s = run.to_str().unwrap();
    let common = ["--device", "cpu", "--seed", "2"];
    let quick = [
        "distill",
        "--preset",
        "quick",
        "--iterations",
        "4",
        "--checkpoint-every",
        "2",
        "--eval-nets",
        "1",
        "--eval-epochs",
        "2",
        "--out",
        run_s,
    ];
    let out = haba(&[&quick[..], &common[..]].concat(), &dir);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("storage") && t.contains("test accuracy"), "{t}");
    for f in [
        "distilled.safetensors",
        "bases.png",
        "hallucinated.png",
        "bases-stretched.png",
        "hallucinated-stretched.png",
        "curves.png",
        "metrics.jsonl",
        "report.json",
        "config.toml",
        "checkpoint.safetensors",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let report = RunDir::at(&run).read_report().unwrap();
    let made = report.distillation.as_ref().unwrap();
    assert_eq!((made.method.as_str(), made.settings.seed), ("haba-dm", 2));
    // Budget-equal at 2 images per class of 784 floats: 15,680; five hallucinators take
    // 6,860, which leaves one basis per class.
    assert_eq!(made.bases_per_class, 1);
    assert_eq!(report.sets[0].storage.total_floats, 7840 + 6860);
    let lines = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().filter(|l| l.contains("objective")).count(), 4);
    assert!(lines.lines().last().unwrap().contains("\"eval\""));

    // curves.png is a real picture: far from one flat colour.
    let curves = image::open(run.join("curves.png")).unwrap().to_luma8();
    let dark = curves.pixels().filter(|p| p.0[0] < 128).count();
    assert!(dark > 2_000, "curves.png has {dark} dark pixels");

    // The same --out again is refused, with the way to continue.
    let again = haba(&[&quick[..], &common[..]].concat(), &dir);
    assert!(!again.status.success() && text(&again).contains("--resume"));

    let out = haba(
        &[
            "eval",
            run_s,
            "--nets",
            "1",
            "--epochs",
            "2",
            "--model",
            "ConvNetW32",
            "--device",
            "cpu",
            "--json",
            dir.join("eval.json").to_str().unwrap(),
        ],
        &dir,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("haba-dm"), "{}", text(&out));
    // The report counts the iterations the artifact was distilled for.
    let report = Report::from_json(&std::fs::read_to_string(dir.join("eval.json")).unwrap());
    assert_eq!(report.unwrap().sets[0].iterations, Some(4));

    let png = dir.join("png");
    let out = haba(&["export", run_s, "--png-dir", png.to_str().unwrap()], &dir);
    assert!(out.status.success(), "{}", text(&out));
    let count: usize = std::fs::read_dir(&png)
        .unwrap()
        .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
        .sum();
    assert_eq!(count, 10 * 5, "one image per basis and hallucinator");

    // haba compare: this run beside a plain DM run, one table, a chart and JSON.
    let plain = dir.join("plain");
    let mut plain_args = quick.to_vec();
    let last = plain_args.len() - 1;
    plain_args[last] = plain.to_str().unwrap();
    plain_args.push("--no-haba");
    let out = haba(&[&plain_args[..], &common[..]].concat(), &dir);
    assert!(out.status.success(), "{}", text(&out));
    let compared = dir.join("compared");
    let out = haba(
        &[
            "compare",
            run_s,
            plain.to_str().unwrap(),
            "--out",
            compared.to_str().unwrap(),
        ],
        &dir,
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("| run | haba-dm | yes |") && t.contains("| plain | dm | no |"),
        "{t}"
    );
    assert!(compared.join("compare.png").is_file());
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(compared.join("compare.json")).unwrap())
            .unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    // A run of another dataset is refused with a clear error.
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let report = std::fs::read_to_string(plain.join("report.json")).unwrap();
    std::fs::write(
        other.join("report.json"),
        report.replace(
            "\"dataset\": \"fashion-mnist-subset\"",
            "\"dataset\": \"cifar10\"",
        ),
    )
    .unwrap();
    let out = haba(
        &[
            "compare",
            run_s,
            other.to_str().unwrap(),
            "--out",
            compared.to_str().unwrap(),
        ],
        &dir,
    );
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("different datasets"),
        "{t}"
    );

    // Resuming a finished run evaluates it again and changes nothing else.
    let before = std::fs::read(run.join("distilled.safetensors")).unwrap();
    let out = haba(&["distill", "--resume", run_s, "--device", "cpu"], &dir);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        before,
        std::fs::read(run.join("distilled.safetensors")).unwrap()
    );
}

#[test]
fn buffer_then_mtt_distill_then_eval_with_the_learned_rate() {
    let dir = temp_dir("mtt");
    let buffer = dir.join("buffer");
    let (buffer_s, run) = (buffer.to_str().unwrap(), dir.join("run"));
    let common = ["--device", "cpu", "--seed", "1"];
    let make = |experts: &str| {
        let args = [
            "buffer",
            "--dataset",
            "embedded",
            "--preprocess",
            "meanstd",
            "--model",
            "ConvNetD2W8",
            "--experts",
            experts,
            "--epochs",
            "2",
            "--out",
            buffer_s,
        ];
        haba(&[&args[..], &common[..]].concat(), &dir)
    };
    // Two shards into one directory; the second skips the expert the first made.
    for (experts, skipped) in [("0..1", false), ("2", true)] {
        let out = make(experts);
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        assert_eq!(t.contains("1 expert(s) already"), skipped, "{t}");
    }
    assert!(buffer.join("expert-00001.safetensors").is_file());
    let distill = [
        "distill",
        "--method",
        "mtt",
        "--buffer",
        buffer_s,
        "--dataset",
        "embedded",
        "--preprocess",
        "meanstd",
        "--ipc",
        "1",
        "--iterations",
        "2",
        "--syn-steps",
        "2",
        "--expert-epochs",
        "1",
        "--max-start-epoch",
        "2",
        "--unroll",
        "recompute",
        "--recompute-memory",
        "0",
        "--eval-nets",
        "1",
        "--eval-epochs",
        "2",
        "--eval-model",
        "ConvNetD2W8",
        "--out",
        run.to_str().unwrap(),
    ];
    let out = haba(&[&distill[..], &common[..]].concat(), &dir);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let report = RunDir::at(&run).read_report().unwrap();
    let made = report.distillation.unwrap();
    assert_eq!(made.method, "haba-mtt");
    let lr = made.learned_lr.unwrap();
    assert!(lr >= 0.001 && lr != 0.01, "{lr}");
    assert_eq!(
        report.sets[0].result.lr,
        Some(lr),
        "evaluated at the learned rate"
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(
        metrics.contains("\"lr\":") && metrics.contains("\"memory_bytes\":"),
        "{metrics}"
    );

    // The same run with `flag` set to `value`, into `dir/name`, is refused saying `says`.
    let refused = |flag: &str, value: &str, name: &str, says: &str| {
        let mut args = distill.to_vec();
        let at = args.iter().position(|a| *a == flag).unwrap() + 1;
        args[at] = value;
        let out_dir = dir.join(name);
        *args.last_mut().unwrap() = out_dir.to_str().unwrap();
        let out = haba(&[&args[..], &common[..]].concat(), &dir);
        let t = text(&out);
        assert!(!out.status.success() && t.contains(says), "{t}");
    };
    // Unrolling more student steps than memory holds is refused with the estimate.
    refused("--syn-steps", "100000000000", "absurd", "use fewer steps");
    // A memory budget that is not a number of MiB is refused, naming the flag.
    refused("--recompute-memory", "inf", "budget", "--recompute-memory");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("recompute_memory_mb = 0.0"), "{config}");

    // The wrong preprocessing is refused, naming what differs.
    let bad = dir.join("bad");
    let mut zca = distill[..distill.len() - 2].to_vec();
    assert_eq!(zca[8], "meanstd");
    zca[8] = "zca";
    zca.extend(["--out", bad.to_str().unwrap()]);
    let out = haba(&[&zca[..], &common[..]].concat(), &dir);
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("preprocessing: buffer meanstd, run zca"),
        "{t}"
    );
}
