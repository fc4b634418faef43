use burn::tensor::{Device, TensorData};
use image::{ColorType, GenericImageView};

use super::*;
use crate::artifact::tests::{sample_artifact, scratch_dir};
use crate::rng::Rng;

const WHITE: [u8; 3] = [BORDER_VALUE; 3];

fn tensor(values: Vec<f32>, shape: [usize; 4]) -> Tensor<4> {
    Tensor::from_data(TensorData::new(values, shape), &Device::flex())
}

/// What a tile pixel must be: `v * std + mean`, clamped to [0, 1], times 255, rounded.
/// Values computed in f32 elsewhere may round the other way at .5, hence `<= 1` below
/// where values are random; hand-picked values compare exactly.
fn by_hand(v: f32, mean: f32, std: f32) -> u8 {
    ((v as f64 * std as f64 + mean as f64).clamp(0.0, 1.0) * 255.0).round() as u8
}

#[test]
fn rgb_grid_has_borders_upscaled_tiles_and_true_colour() {
    let dir = scratch_dir("report-grid");
    let path = dir.join("grid.png");
    let (mean, std) = ([0.5f32, 0.25, 0.125], [0.25f32, 0.5, 2.0]);
    let norm = Normalization::MeanStd {
        mean: mean.to_vec(),
        std: std.to_vec(),
    };
    let mut rng = Rng::new(3);
    let mut v: Vec<f32> = (0..2 * 90).map(|_| rng.range(-1.0, 1.0)).collect();
    // Image 1, pixel (y 1, x 2): 0.75, 0.15 and 6.125 (clamped) in true colour.
    let at = |ch: usize| 90 + ch * 30 + 5 + 2;
    (v[at(0)], v[at(1)], v[at(2)]) = (1.0, -0.2, 3.0);
    write_grid_png(&path, tensor(v.clone(), [2, 3, 6, 5]), &norm, 1, 3, 2).unwrap();

    let img = image::open(&path).unwrap();
    assert_eq!(img.color(), ColorType::Rgb8);
    // 3 tiles of 10 x 12 with 2 px borders around and between them.
    assert_eq!(img.dimensions(), (3 * 10 + 4 * 2, 12 + 2 * 2));
    let img = img.to_rgb8();
    for (x, y) in [
        (0, 0),
        (1, 7),
        (12, 5),
        (13, 9),
        (37, 15),
        (20, 1),
        (20, 14),
    ] {
        assert_eq!(img.get_pixel(x, y).0, WHITE, "border at {x},{y}");
    }
    // The unused third position stays blank.
    assert_eq!(img.get_pixel(30, 8).0, WHITE);
    // Every output pixel of image 1's source pixel (1, 2): tile origin (14, 2), scale 2.
    for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
        let p = img.get_pixel(14 + 2 * 2 + dx, 2 + 2 + dy).0;
        assert_eq!(p, [191, 38, 255]);
    }
    // And the whole of image 0 against the formula.
    for y in 0..6 {
        for x in 0..5 {
            let p = img.get_pixel(2 + 2 * x as u32, 2 + 2 * y as u32).0;
            for ch in 0..3 {
                let want = by_hand(v[ch * 30 + y * 5 + x], mean[ch], std[ch]);
                assert!(p[ch].abs_diff(want) <= 1, "image 0 ({y}, {x}) channel {ch}");
            }
        }
    }
    assert!(!crate::artifact::tmp_path(&path).exists());
}

#[test]
fn grey_grids_and_single_channel_bases_of_colour_data() {
    let dir = scratch_dir("report-grey");
    // A grey dataset: de-normalised with its own mean/std.
    let grey = Normalization::MeanStd {
        mean: vec![0.5],
        std: vec![0.5],
    };
    let v: Vec<f32> = (0..30).map(|q| q as f32 / 15.0 - 1.0).collect();
    let path = dir.join("grey.png");
    write_grid_png(&path, tensor(v.clone(), [1, 1, 6, 5]), &grey, 1, 1, 1).unwrap();
    let img = image::open(&path).unwrap();
    assert_eq!(img.color(), ColorType::L8);
    assert_eq!(img.dimensions(), (5 + 4, 6 + 4));
    let img = img.to_luma8();
    assert_eq!(img.get_pixel(0, 0).0, [BORDER_VALUE]);
    // Pixel 24 = (y 4, x 4): 0.6 * 0.5 + 0.5 = 0.8, 204 (not at a rounding boundary).
    assert_eq!(img.get_pixel(2 + 4, 2 + 4).0, [by_hand(v[24], 0.5, 0.5)]);
    assert_eq!(by_hand(v[24], 0.5, 0.5), 204);

    // One-channel bases of an RGB dataset: each tile stretched from its min to its max.
    let rgb = Normalization::MeanStd {
        mean: vec![0.5; 3],
        std: vec![0.25; 3],
    };
    let two: Vec<f32> = v.iter().chain(v.iter()).map(|x| x * 7.0).collect();
    let path = dir.join("single.png");
    write_grid_png(&path, tensor(two, [2, 1, 6, 5]), &rgb, 2, 1, 1).unwrap();
    let img = image::open(&path).unwrap().to_luma8();
    assert_eq!(img.dimensions(), (5 + 4, 2 * 6 + 6));
    assert_eq!(img.get_pixel(2, 2).0, [0]); // minimum of tile 0
    assert_eq!(img.get_pixel(2 + 4, 2 + 5).0, [255]); // its maximum
    assert_eq!(img.get_pixel(2 + 4, 2 + 6 + 2 + 5).0, [255]); // tile 1's maximum

    // Too many images for the grid, or images no normalisation fits: errors, no panic.
    assert!(write_grid_png(&path, tensor(vec![0.0; 60], [2, 1, 6, 5]), &grey, 1, 1, 1).is_err());
    assert!(write_grid_png(&path, tensor(vec![0.0; 60], [1, 2, 6, 5]), &rgb, 1, 1, 1).is_err());
}

#[test]
fn run_previews_lay_out_classes_bases_and_hallucinators() {
    let dir = scratch_dir("report-previews");
    let a = sample_artifact(1, true, true);
    let s = preview_scale(6, 5, 2, 2);
    assert_eq!(s, 11);

    let path = bases_png(&dir, &a, Display::TrueColour).unwrap();
    assert_eq!(path, dir.join(BASES_PNG));
    let img = image::open(&path).unwrap();
    assert_eq!(img.color(), ColorType::L8, "single-channel bases are grey");
    assert_eq!(img.dimensions(), grid_dims(6, 5, 2, 2, s));

    let s = preview_scale(6, 5, 2, 6);
    let path = hallucinated_png(&dir, &a, Display::TrueColour).unwrap();
    let img = image::open(&path).unwrap();
    assert_eq!(img.color(), ColorType::Rgb8);
    assert_eq!(img.dimensions(), grid_dims(6, 5, 2, 6, s));
    // Class 1's second basis (basis 3) through hallucinator 2: row 1, column 1 * 3 + 2.
    let (images, _) = a.factorization.all_images().unwrap();
    let images = images.try_to_vec_as::<f32>().unwrap();
    let pixels = a
        .normalization
        .invert_slice(&images[(2 * 4 + 3) * 90..(2 * 4 + 4) * 90], a.meta.image)
        .unwrap();
    let (x0, y0) = (2 + 5 * (5 * s + 2), 2 + (6 * s + 2));
    let img = img.to_rgb8();
    for (y, x) in [(0, 0), (3, 4), (5, 1)] {
        let p = img.get_pixel((x0 + x * s) as u32, (y0 + y * s) as u32).0;
        for ch in 0..3 {
            let want = (pixels[ch * 30 + y * 5 + x].clamp(0.0, 1.0) * 255.0).round() as u8;
            assert!(p[ch].abs_diff(want) <= 1, "({y}, {x}) channel {ch}");
        }
    }
}

fn grid_dims(h: usize, w: usize, rows: usize, cols: usize, s: usize) -> (u32, u32) {
    (
        (cols * w * s + (cols + 1) * 2) as u32,
        (rows * h * s + (rows + 1) * 2) as u32,
    )
}

#[test]
fn export_writes_one_png_per_basis_and_hallucinator_in_class_folders() {
    let dir = scratch_dir("report-export");
    let a = sample_artifact(3, false, true);
    let out = dir.join("images");
    assert_eq!(export_png_dir(&a, &out).unwrap(), 4 * 3);
    let mut folders: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    folders.sort();
    assert_eq!(folders, ["T-shirt_top", "Trouser"]);
    for folder in &folders {
        let mut files: Vec<String> = std::fs::read_dir(out.join(folder))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "0_0.png", "0_1.png", "0_2.png", "1_0.png", "1_1.png", "1_2.png"
            ]
        );
    }
    // "Trouser/0_1.png" is basis 2 (class 1's first) through hallucinator 1.
    let img = image::open(out.join("Trouser/0_1.png")).unwrap();
    assert_eq!((img.color(), img.dimensions()), (ColorType::Rgb8, (5, 6)));
    let (images, _) = a.factorization.all_images().unwrap();
    let images = images.try_to_vec_as::<f32>().unwrap();
    let (mean, std) = ([0.5f32, 0.25, 0.125], [0.25f32, 0.5, 2.0]);
    let img = img.to_rgb8();
    for (y, x) in [(0, 0), (2, 3), (5, 4)] {
        let p = img.get_pixel(x as u32, y as u32).0;
        for ch in 0..3 {
            let v = images[(4 + 2) * 90 + ch * 30 + y * 5 + x];
            assert!(p[ch].abs_diff(by_hand(v, mean[ch], std[ch])) <= 1);
        }
    }
    // Never mixes into an earlier export.
    let e = export_png_dir(&a, &out).unwrap_err().to_string();
    assert!(e.contains("not empty"), "{e}");

    // Without hallucinators, the bases themselves, numbered `<basis>_0`.
    let plain = dir.join("plain");
    assert_eq!(
        export_png_dir(&sample_artifact(3, false, false), &plain).unwrap(),
        4
    );
    assert!(plain.join("Trouser/1_0.png").exists());
}

#[test]
fn class_names_become_safe_distinct_folder_names() {
    let names: Vec<String> = [
        "T-shirt/top",
        "a:b*c?",
        " ..hidden. ",
        "..",
        "Cat",
        "cat",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        class_folder_names(&names),
        [
            "T-shirt_top",
            "a_b_c_",
            "hidden",
            "class_3",
            "Cat",
            "cat_5",
            "class_6"
        ]
    );
}

#[test]
fn metrics_log_appends_across_resumes_and_survives_a_cut_line() {
    let dir = scratch_dir("report-metrics");
    let path = dir.join(METRICS_FILE);
    let mut log = MetricsLog::open(&path).unwrap();
    log.log(&serde_json::json!({"iteration": 0, "loss": 1.5}))
        .unwrap();
    log.log(&serde_json::json!({"iteration": 1, "loss": 1.25}))
        .unwrap();
    drop(log);
    // A crash in the middle of a line, then a resumed run.
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(br#"{"iteration": 2, "lo"#).unwrap();
    drop(f);
    let mut log = MetricsLog::open(&path).unwrap();
    log.log(&serde_json::json!({"iteration": 2, "loss": 1.0}))
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(text.ends_with('\n'));
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let iterations: Vec<i64> = parsed
        .iter()
        .map(|v| v["iteration"].as_i64().unwrap())
        .collect();
    assert_eq!(iterations, [0, 1, 2], "only the cut line is unreadable");
}

#[test]
fn report_json_is_written_whole() {
    let dir = scratch_dir("report-json");
    let path = dir.join("report.json");
    let report = serde_json::json!({"accuracy": {"mean": 0.5, "std": 0.01}, "runs": 5});
    write_report_json(&path, &report).unwrap();
    write_report_json(&path, &report).unwrap(); // replaces an existing report
    let back: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(back, report);
    assert!(!crate::artifact::tmp_path(&path).exists());
}

#[test]
fn a_resumed_log_is_cut_back_to_its_checkpoint() {
    let text = "{\"iteration\":1,\"objective\":3.0}\n{\"iteration\":2,\"eval\":{\"mean\":0.5}}\n\
                {\"iteration\":3,\"objective\":2.0}\n{\"iteration\":4,\"obj";
    let cut = metrics_up_to(text, 2, false);
    assert_eq!(
        cut,
        "{\"iteration\":1,\"objective\":3.0}\n{\"iteration\":2,\"eval\":{\"mean\":0.5}}\n"
    );
    assert_eq!(metrics_up_to(text, 0, false), "");
    // A finished run evaluates again on resume: its final evaluation is dropped.
    assert_eq!(
        metrics_up_to(text, 2, true),
        "{\"iteration\":1,\"objective\":3.0}\n"
    );
}

/// The stretched display maps each image (all its channels together) onto [0, 1] after
/// de-normalising, and its grids carry `-stretched` in their names.
#[test]
fn stretched_display_spans_each_image_and_says_so_in_the_file_name() {
    let rgb = Normalization::MeanStd {
        mean: vec![0.5; 3],
        std: vec![2.0; 3],
    };
    // Image 0 de-normalises to 0.5 + 2 v: v in {-1, 0, 3} gives -1.5, 0.5, 6.5.
    let mut v = vec![0.0f32; 2 * 3 * 2];
    v[0] = -1.0;
    v[5] = 3.0;
    v[6..].copy_from_slice(&[0.1, 0.1, 0.1, 0.1, 0.1, 0.1]);
    let out = displayed(tensor(v.clone(), [2, 3, 1, 2]), &rgb, Display::Stretch).unwrap();
    assert_eq!(out[0], 0.0);
    assert_eq!(out[5], 1.0);
    assert!((out[1] - 2.0 / 8.0).abs() < 1e-6, "{}", out[1]);
    assert_eq!(&out[6..], &[0.5; 6], "a flat image is mid grey");
    // True colour clamps the same values instead.
    let tc = displayed(tensor(v, [2, 3, 1, 2]), &rgb, Display::TrueColour).unwrap();
    assert_eq!((tc[0], tc[1], tc[5]), (0.0, 0.5, 1.0));

    let dir = scratch_dir("report-stretched");
    let a = sample_artifact(1, true, true);
    let path = hallucinated_png(&dir, &a, Display::Stretch).unwrap();
    assert_eq!(path, dir.join("hallucinated-stretched.png"));
    let img = image::open(&path).unwrap().to_rgb8();
    let (lo, hi) = img
        .pixels()
        .flat_map(|p| p.0)
        .fold((255u8, 0u8), |(lo, hi), c| (lo.min(c), hi.max(c)));
    assert_eq!((lo, hi), (0, 255));
    let path = bases_png(&dir, &a, Display::Stretch).unwrap();
    assert_eq!(path, dir.join("bases-stretched.png"));
}
