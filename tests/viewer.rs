//! `haba view` as a person meets it: on a run made here, under a virtual X server (Xvfb)
//! with whatever wgpu adapter exists (lavapipe on CPU-only machines), the window draws
//! every tile of the hallucinator x basis matrix and saves a screenshot; without a display
//! it says to use `haba export`.
#![cfg(feature = "viewer")]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

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

/// A virtual X server on a display number it picks itself (`-displayfd`), so a stale lock or
/// socket from another server cannot make it fail; stopped when dropped.
struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    /// The server, or why it could not start (its own words where it printed any).
    fn start() -> Result<Self, String> {
        let log = common::scratch("viewer-xvfb").join("xvfb.log");
        let err = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut child = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-screen",
                "0",
                "1280x800x24",
                "-nolisten",
                "tcp",
            ])
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("Xvfb did not run: {e}"))?;
        // Xvfb writes the display number once it accepts clients; EOF means it died.
        let mut line = String::new();
        let read = BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .map_err(|e| e.to_string());
        match line.trim().parse::<u32>() {
            Ok(n) => Ok(Self {
                child,
                display: format!(":{n}"),
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "Xvfb gave no display ({read:?}); it printed:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ))
            }
        }
    }
}

impl Drop for Xvfb {
    /// SIGTERM, so the server removes its socket and lock file (SIGKILL would leave them,
    /// and every later run would find one display fewer).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
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

    let x = match Xvfb::start() {
        Ok(x) => x,
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("CI is set but Xvfb could not be started (install xvfb): {why}")
        }
        Err(why) => {
            eprintln!("skipping the window test: {why}");
            return;
        }
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
