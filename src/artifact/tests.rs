use super::*;
use crate::rng::Rng;

/// A fresh, empty directory for one test under the system temp directory.
pub(crate) fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("haba-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.range(-1.0, 1.0)).collect()
}

/// A small HaBa artifact: 2 classes x 2 bases of `cb` channels, 3x6x5 images, 3
/// hallucinators with kernel 3 and random (not identity) modulation, ZCA or mean/std.
pub(crate) fn sample_artifact(cb: usize, zca: bool, hallucinators: bool) -> Artifact {
    let device = Device::flex();
    let mut rng = Rng::new(7);
    let image = ImageShape {
        channels: 3,
        height: 6,
        width: 5,
    };
    let n = 4;
    let bases = Tensor::<4>::from_data(
        TensorData::new(random(&mut rng, n * cb * 30), [n, cb, 6, 5]),
        &device,
    );
    let hallucinators = hallucinators.then(|| {
        let shape = HallucinatorShape {
            count: 3,
            basis_channels: cb,
            channels: 3,
            kernel: 3,
            height: 6,
            width: 5,
        };
        let p = random(&mut rng, shape.num_params());
        Hallucinators {
            shape,
            params: Tensor::<1>::from_data(TensorData::new(p, [shape.num_params()]), &device),
        }
    });
    let normalization = if zca {
        let d = image.numel();
        Normalization::Zca {
            mean: random(&mut rng, d),
            whiten: random(&mut rng, d * d),
            unwhiten: random(&mut rng, d * d),
            eps: 0.1,
        }
    } else {
        Normalization::MeanStd {
            mean: vec![0.5, 0.25, 0.125],
            std: vec![0.25, 0.5, 2.0],
        }
    };
    Artifact {
        factorization: Factorization {
            bases,
            labels: vec![0, 0, 1, 1],
            hallucinators,
        },
        normalization,
        meta: ArtifactMeta {
            dataset: "toy".into(),
            classes: vec!["T-shirt/top".into(), "Trouser".into()],
            image,
            method: if zca { "haba-mtt" } else { "haba-dm" }.into(),
            settings: serde_json::json!({"iterations": 3, "seed": 1}),
        },
        lr: zca.then_some(0.0123),
    }
}

fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.try_to_vec_as::<f32>().unwrap()
}

fn assert_same(a: &Artifact, b: &Artifact) {
    let (fa, fb) = (&a.factorization, &b.factorization);
    assert_eq!(fa.bases.dims(), fb.bases.dims());
    assert_eq!(values(&fa.bases), values(&fb.bases));
    assert_eq!(fa.labels, fb.labels);
    match (&fa.hallucinators, &fb.hallucinators) {
        (None, None) => {}
        (Some(ha), Some(hb)) => {
            assert_eq!(ha.shape, hb.shape);
            assert_eq!(values(&ha.params), values(&hb.params));
        }
        _ => panic!("hallucinators present in one artifact only"),
    }
    assert_eq!(a.normalization, b.normalization);
    assert_eq!(a.meta, b.meta);
    assert_eq!(a.lr, b.lr);
    let (ia, la) = fa.all_images().unwrap();
    let (ib, lb) = fb.all_images().unwrap();
    assert_eq!(la, lb);
    assert_eq!(values(&ia), values(&ib));
}

#[test]
fn round_trips_haba_zca_plain_and_single_channel_artifacts() {
    let dir = scratch_dir("artifact-roundtrip");
    for (cb, zca, hal) in [(3, true, true), (1, false, true), (3, false, false)] {
        let a = sample_artifact(cb, zca, hal);
        let path = dir.join(FILE_NAME);
        a.save(&path).unwrap();
        assert!(
            !tmp_path(&path).exists(),
            "the temporary file is renamed away"
        );
        let b = Artifact::load(&path, &Device::flex()).unwrap();
        assert_same(&a, &b);
        assert_eq!(b.storage(), a.storage());
        // The bytes a front keeps are the file's bytes, and read back the same.
        let bytes = a.to_bytes().unwrap();
        assert_eq!(bytes, std::fs::read(&path).unwrap());
        assert_same(&a, &Artifact::from_bytes(&bytes, &Device::flex()).unwrap());
    }
    let err = Artifact::from_bytes(b"not an artifact", &Device::flex()).unwrap_err();
    assert!(
        err.to_string().starts_with("distilled set: not a readable"),
        "{err}"
    );
}

/// Rewrites the safetensors file `src` into `dst`, keeping the metadata, with `edit`
/// deciding each tensor's fate (None drops it).
fn rewrite(
    src: &Path,
    dst: &Path,
    edit: impl Fn(&str, Dtype, Vec<usize>, Vec<u8>) -> Option<(Dtype, Vec<usize>, Vec<u8>)>,
) {
    let bytes = std::fs::read(src).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let kept: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .filter_map(|(name, v)| {
            edit(&name, v.dtype(), v.shape().to_vec(), v.data().to_vec())
                .map(|(d, s, b)| (name, d, s, b))
        })
        .collect();
    let views = kept
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), TensorView::new(*d, s.clone(), b).unwrap()));
    let out = safetensors::serialize(views, meta.metadata().clone()).unwrap();
    std::fs::write(dst, out).unwrap();
}

fn load_error(path: &Path) -> String {
    match Artifact::load(path, &Device::flex()) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_files_give_errors_that_name_the_problem() {
    let dir = scratch_dir("artifact-errors");
    let good = dir.join(FILE_NAME);
    sample_artifact(3, true, true).save(&good).unwrap();

    let missing = dir.join("nothing-here.safetensors");
    assert!(matches!(
        Artifact::load(&missing, &Device::flex()),
        Err(Error::Io { .. })
    ));

    let text = dir.join("text.safetensors");
    std::fs::write(&text, "this is not a tensor file at all").unwrap();
    assert!(load_error(&text).contains("safetensors"));

    let truncated = dir.join("truncated.safetensors");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let e = load_error(&truncated);
    assert!(
        e.contains("truncated") && e.contains("truncated.safetensors"),
        "{e}"
    );

    let no_scale = dir.join("no-scale.safetensors");
    rewrite(&good, &no_scale, |name, d, s, b| {
        (name != "hallucinators.scale").then_some((d, s, b))
    });
    let e = load_error(&no_scale);
    assert!(e.contains("missing tensor `hallucinators.scale`"), "{e}");

    // Same bytes, flattened maps: only the shape is wrong.
    let flat_shift = dir.join("flat-shift.safetensors");
    rewrite(&good, &flat_shift, |name, d, s, b| {
        Some(match name {
            "hallucinators.shift" => (d, vec![s[0], s[1], s[2] * s[3]], b),
            _ => (d, s, b),
        })
    });
    let e = load_error(&flat_shift);
    assert!(
        e.contains("`hallucinators.shift`")
            && e.contains("[3, 3, 12]")
            && e.contains("[3, 3, 4, 3]"),
        "{e}"
    );

    let tall_bases = dir.join("tall-bases.safetensors");
    rewrite(&good, &tall_bases, |name, d, s, b| {
        Some(match name {
            "bases" => (d, vec![s[0], s[1], 5, 6], b),
            _ => (d, s, b),
        })
    });
    let e = load_error(&tall_bases);
    assert!(
        e.contains("`bases`") && e.contains("[4, 3, 5, 6]") && e.contains("[4, 3 or 1, 6, 5]"),
        "{e}"
    );

    let float_labels = dir.join("float-labels.safetensors");
    rewrite(&good, &float_labels, |name, d, s, b| {
        Some(match name {
            "labels" => (Dtype::F64, s, b),
            _ => (d, s, b),
        })
    });
    let e = load_error(&float_labels);
    assert!(
        e.contains("`labels`") && e.contains("F64") && e.contains("I64"),
        "{e}"
    );
}

/// Writes `src` to `dst` with its `haba` metadata edited as JSON.
fn rewrite_header(src: &Path, dst: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let bytes = std::fs::read(src).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = meta.metadata().clone().unwrap();
    let mut header: serde_json::Value = serde_json::from_str(&meta[METADATA_KEY]).unwrap();
    edit(&mut header);
    meta.insert(METADATA_KEY.to_string(), header.to_string());
    let views: Vec<(String, TensorView)> = file.tensors();
    let out = safetensors::serialize(views, Some(meta)).unwrap();
    std::fs::write(dst, out).unwrap();
}

/// Files that parse but could only crash or mislead later are refused at load, naming
/// what is wrong: no bases, a NaN anywhere, a non-positive std, version 0, and
/// hallucinator tensors behind a header that says there are none.
#[test]
fn damaged_values_and_contradicting_metadata_are_refused() {
    let dir = scratch_dir("artifact-values");
    let good = dir.join(FILE_NAME);
    sample_artifact(3, true, true).save(&good).unwrap();
    let plain = dir.join("plain.safetensors");
    sample_artifact(3, false, false).save(&plain).unwrap();

    let empty = dir.join("empty.safetensors");
    rewrite(&good, &empty, |name, d, s, b| {
        Some(match name {
            "labels" | "bases" => {
                let mut s = s;
                s[0] = 0;
                (d, s, Vec::new())
            }
            _ => (d, s, b),
        })
    });
    assert!(
        load_error(&empty).contains("no bases"),
        "{}",
        load_error(&empty)
    );

    for tensor in ["bases", "hallucinators.dec.weight", "zca.whiten"] {
        let nan = dir.join("nan.safetensors");
        rewrite(&good, &nan, |name, d, s, mut b| {
            if name == tensor {
                b[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
            }
            Some((d, s, b))
        });
        let e = load_error(&nan);
        assert!(
            e.contains(tensor) && e.contains("NaN at index 1"),
            "{tensor}: {e}"
        );
    }

    let zero_std = dir.join("zero-std.safetensors");
    rewrite_header(&plain, &zero_std, |h| {
        h["preprocessing"]["std"][1] = serde_json::json!(0.0)
    });
    let e = load_error(&zero_std);
    assert!(e.contains("std 0") && e.contains("positive"), "{e}");

    let v0 = dir.join("v0.safetensors");
    rewrite_header(&good, &v0, |h| h["format_version"] = serde_json::json!(0));
    assert!(
        load_error(&v0).contains("format version 0"),
        "{}",
        load_error(&v0)
    );

    let lost = dir.join("lost.safetensors");
    rewrite_header(&good, &lost, |h| {
        h["hallucinators"] = serde_json::Value::Null
    });
    let e = load_error(&lost);
    assert!(
        e.contains("no hallucinators") && e.contains("hallucinators."),
        "{e}"
    );
}

#[test]
fn inconsistent_artifacts_are_not_written() {
    let dir = scratch_dir("artifact-refuse");
    let path = dir.join(FILE_NAME);
    let mut a = sample_artifact(3, false, true);
    a.factorization.labels.push(1);
    let e = a.save(&path).unwrap_err().to_string();
    assert!(e.contains("4 bases but 5 labels"), "{e}");
    let mut a = sample_artifact(3, false, true);
    a.factorization.labels[3] = 2;
    let e = a.save(&path).unwrap_err().to_string();
    assert!(e.contains("label 2"), "{e}");
    // Single-channel bases cannot be a plain RGB synthetic set.
    let e = sample_artifact(1, false, false).save(&path).unwrap_err();
    assert!(e.to_string().contains("1 channels"), "{e}");
    assert!(!path.exists() && !tmp_path(&path).exists());
}

/// The F32 tensor `name` of a raw file, as f64, with its shape.
fn raw_f64(file: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f64>) {
    let v = file.tensor(name).unwrap();
    assert_eq!(v.dtype(), Dtype::F32, "{name}");
    let vals = v
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
        .collect();
    (v.shape().to_vec(), vals)
}

/// What the README's Python snippet computes for hallucinator `m` and basis `b`, by direct
/// float64 loops over the raw file: `conv2d` (no padding), `scale * z + shift`, and
/// `conv_transpose2d` with weights `[in, out, k, k]` written as a scatter.
fn python_snippet_image(file: &SafeTensors, m: usize, b: usize) -> Vec<f64> {
    let (bs, bases) = raw_f64(file, "bases");
    let (ws, enc_w) = raw_f64(file, "hallucinators.enc.weight");
    let (_, enc_b) = raw_f64(file, "hallucinators.enc.bias");
    let (ss, scale) = raw_f64(file, "hallucinators.scale");
    let (_, shift) = raw_f64(file, "hallucinators.shift");
    let (_, dec_w) = raw_f64(file, "hallucinators.dec.weight");
    let (_, dec_b) = raw_f64(file, "hallucinators.dec.bias");
    let (cb, h, w) = (bs[1], bs[2], bs[3]);
    let (c, k) = (ws[1], ws[3]);
    let (mh, mw) = (ss[2], ss[3]);
    let x = &bases[b * cb * h * w..(b + 1) * cb * h * w];
    let at = |v: &[f64], idx: usize| v[idx];
    let mut z = vec![0f64; c * mh * mw];
    for o in 0..c {
        for i in 0..mh {
            for j in 0..mw {
                let mut acc = at(&enc_b, m * c + o);
                for ci in 0..cb {
                    for a in 0..k {
                        for bb in 0..k {
                            let wi = (((m * c + o) * cb + ci) * k + a) * k + bb;
                            acc += enc_w[wi] * x[(ci * h + i + a) * w + j + bb];
                        }
                    }
                }
                let q = (o * mh + i) * mw + j;
                let mq = m * c * mh * mw + q;
                z[q] = scale[mq] * acc + shift[mq];
            }
        }
    }
    let mut y: Vec<f64> = (0..c * h * w).map(|q| dec_b[m * c + q / (h * w)]).collect();
    for ci in 0..c {
        for i in 0..mh {
            for j in 0..mw {
                for o in 0..c {
                    for a in 0..k {
                        for bb in 0..k {
                            let wi = (((m * c + ci) * c + o) * k + a) * k + bb;
                            y[(o * h + i + a) * w + j + bb] +=
                                z[(ci * mh + i) * mw + j] * dec_w[wi];
                        }
                    }
                }
            }
        }
    }
    y
}

#[test]
fn file_layout_is_what_the_python_snippet_reads() {
    let dir = scratch_dir("artifact-python");
    let path = dir.join(FILE_NAME);
    let a = sample_artifact(1, true, true);
    a.save(&path).unwrap();

    // Read the file with the safetensors crate alone, as Python would.
    let bytes = std::fs::read(&path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut names = file.names();
    names.sort();
    let expected = [
        "bases",
        "hallucinators.dec.bias",
        "hallucinators.dec.weight",
        "hallucinators.enc.bias",
        "hallucinators.enc.weight",
        "hallucinators.scale",
        "hallucinators.shift",
        "labels",
        "lr",
        "zca.mean",
        "zca.unwhiten",
        "zca.whiten",
    ];
    assert_eq!(names, expected);
    let shapes: &[(&str, Dtype, &[usize])] = &[
        ("bases", Dtype::F32, &[4, 1, 6, 5]),
        ("labels", Dtype::I64, &[4]),
        ("hallucinators.enc.weight", Dtype::F32, &[3, 3, 1, 3, 3]),
        ("hallucinators.enc.bias", Dtype::F32, &[3, 3]),
        ("hallucinators.scale", Dtype::F32, &[3, 3, 4, 3]),
        ("hallucinators.shift", Dtype::F32, &[3, 3, 4, 3]),
        ("hallucinators.dec.weight", Dtype::F32, &[3, 3, 3, 3, 3]),
        ("hallucinators.dec.bias", Dtype::F32, &[3, 3]),
        ("lr", Dtype::F32, &[1]),
        ("zca.mean", Dtype::F32, &[90]),
        ("zca.whiten", Dtype::F32, &[90, 90]),
        ("zca.unwhiten", Dtype::F32, &[90, 90]),
    ];
    for &(name, dtype, shape) in shapes {
        let v = file.tensor(name).unwrap();
        assert_eq!((v.dtype(), v.shape()), (dtype, shape), "{name}");
    }
    let labels: Vec<i64> = file
        .tensor("labels")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(labels, [0, 0, 1, 1]);
    assert_eq!(raw_f64(&file, "lr").1, [0.0123f32 as f64]);

    // The metadata keys the snippet (and a reader of it) uses.
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()[METADATA_KEY]).unwrap();
    assert_eq!(json["format_version"], 1);
    assert_eq!(json["dataset"], "toy");
    assert_eq!(json["method"], "haba-mtt");
    assert_eq!(
        json["classes"],
        serde_json::json!(["T-shirt/top", "Trouser"])
    );
    assert_eq!(
        json["image_shape"],
        serde_json::json!({"channels": 3, "height": 6, "width": 5})
    );
    assert_eq!(json["preprocessing"]["kind"], "zca");
    assert_eq!(json["preprocessing"]["eps"].as_f64(), Some(0.1));
    assert_eq!(
        json["hallucinators"],
        serde_json::json!({"count": 3, "kernel": 3})
    );
    assert_eq!(
        json["storage"]["total_floats"],
        4 * 30 + 3 * (27 + 3 + 2 * 36 + 81 + 3)
    );
    assert_eq!(json["settings"]["iterations"], 3);

    // The snippet's images, in its order (hallucinator-major), against `all_images()`.
    let (images, labels) = a.factorization.all_images().unwrap();
    assert_eq!(labels, [0, 0, 1, 1].repeat(3));
    let images = values(&images);
    let per = 90;
    for (m, b) in [(0, 0), (2, 3), (1, 2)] {
        let want = python_snippet_image(&file, m, b);
        let got = &images[(m * 4 + b) * per..(m * 4 + b + 1) * per];
        for (q, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (*g as f64 - w).abs() < 1e-4,
                "m {m} b {b} at {q}: {g} vs {w}"
            );
        }
    }

    // The snippet's ZCA inversion, `images.flatten(1) @ zca.unwhiten + zca.mean`.
    let (_, unwhiten) = raw_f64(&file, "zca.unwhiten");
    let (_, mean) = raw_f64(&file, "zca.mean");
    let first = &images[..per];
    let want: Vec<f64> = (0..per)
        .map(|j| {
            mean[j]
                + (0..per)
                    .map(|i| first[i] as f64 * unwhiten[i * per + j])
                    .sum::<f64>()
        })
        .collect();
    let ours = a.normalization.invert_slice(first, a.meta.image).unwrap();
    for (g, w) in ours.iter().zip(&want) {
        assert!((*g as f64 - w).abs() < 1e-3, "{g} vs {w}");
    }
}

#[test]
fn mean_std_metadata_holds_the_per_channel_numbers() {
    let dir = scratch_dir("artifact-meanstd");
    let path = dir.join(FILE_NAME);
    sample_artifact(3, false, false).save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut names = file.names();
    names.sort();
    assert_eq!(names, ["bases", "labels"]);
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()[METADATA_KEY]).unwrap();
    assert_eq!(
        json["preprocessing"],
        serde_json::json!({"kind": "mean_std", "mean": [0.5, 0.25, 0.125], "std": [0.25, 0.5, 2.0]})
    );
    assert!(json["hallucinators"].is_null());
}
