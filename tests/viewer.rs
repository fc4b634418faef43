//! `haba view` as a person meets it: on a run made here, under a virtual X server (Xvfb)
//! with whatever wgpu adapter exists (lavapipe on CPU-only machines), the window draws
//! every tile of the hallucinator x basis matrix and saves a screenshot; without a display
//! it says to use `haba export`.
#![cfg(feature = "viewer")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::text;

fn haba(args: &[&str], env: &[(&str, &str)], unset: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_haba"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in unset {
        cmd.env_remove(k);
    }
    cmd.output().expect("the haba binary runs")
}

/// A short HaBa run on the embedded set: 10 classes, 1 basis each, 5 hallucinators.
fn make_run(tag: &str) -> PathBuf {
    let run = common::scratch(&format!("viewer-{tag}")).join("run");
    common::short_run(&run);
    run
}

/// A virtual X server on a free display number, stopped when dropped.
struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    fn start() -> Option<Self> {
        for n in 90..110 {
            if Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() {
                continue;
            }
            let child = Command::new("Xvfb")
                .args([
                    &format!(":{n}"),
                    "-screen",
                    "0",
                    "1280x800x24",
                    "-nolisten",
                    "tcp",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() {
                    return Some(Self {
                        child,
                        display: format!(":{n}"),
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut child = child;
            let _ = child.kill();
            return None;
        }
        None
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn window_draws_every_tile_and_without_a_display_suggests_export() {
    let run = make_run("window");
    let run_s = run.to_str().unwrap();

    let out = haba(&["view", run_s], &[], &["DISPLAY", "WAYLAND_DISPLAY"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("haba export"), "{}", text(&out));

    let Some(x) = Xvfb::start() else {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but Xvfb could not be started: install xvfb");
        }
        eprintln!("skipping the window test: no Xvfb");
        return;
    };
    let shot = run.join("screenshot-matrix.png");
    let out = haba(
        &[
            "view",
            run_s,
            "--view",
            "matrix",
            "--screenshot",
            shot.to_str().unwrap(),
        ],
        &[("DISPLAY", &x.display)],
        &["WAYLAND_DISPLAY"],
    );
    let t = text(&out);
    if !out.status.success() && t.contains("no wgpu adapter") && std::env::var_os("CI").is_none() {
        eprintln!("skipping the window test: {t}");
        return;
    }
    assert!(out.status.success(), "{t}");
    // 10 classes x 1 basis x 5 hallucinators.
    assert!(t.contains("view matrix drew 50 tiles"), "{t}");
    let png = image::open(&shot).expect("the screenshot is a PNG");
    assert!(
        png.width() >= 640 && png.height() >= 400,
        "{}x{}",
        png.width(),
        png.height()
    );
    // Not a blank frame: the tiles put many distinct colours on screen.
    let rgb = png.to_rgb8();
    let distinct: std::collections::HashSet<[u8; 3]> = rgb.pixels().map(|p| p.0).collect();
    assert!(distinct.len() > 50, "only {} colours", distinct.len());
}
