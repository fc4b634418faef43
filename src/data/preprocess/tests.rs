//! Normalisations checked against float64 reference computations written here.

use super::*;

fn device() -> Device {
    Device::flex()
}

/// Deterministic numbers in [-0.5, 0.5) from the crate's seeded generator.
fn noise(seed: u64) -> impl FnMut() -> f64 {
    let mut rng = crate::rng::Rng::new(seed);
    move || rng.uniform() as f64 - 0.5
}

/// `n` images of `shape` whose pixels are strongly correlated: a random mix of a few
/// latent factors plus independent noise, around grey, rounded to bytes.
fn correlated_split(n: usize, shape: ImageShape, seed: u64) -> Split {
    let d = shape.numel();
    let factors = 4;
    let mut rnd = noise(seed);
    let mix: Vec<f64> = (0..d * factors).map(|_| rnd() * 60.0).collect();
    let mut images = Vec::with_capacity(n * d);
    for _ in 0..n {
        let z: Vec<f64> = (0..factors).map(|_| rnd() * 2.0).collect();
        for i in 0..d {
            let latent: f64 = (0..factors).map(|f| mix[i * factors + f] * z[f]).sum();
            let v = 128.0 + latent + 25.0 * rnd();
            images.push(v.round().clamp(0.0, 255.0) as u8);
        }
    }
    Split {
        images,
        labels: vec![0; n],
    }
}

/// Per-feature mean and unbiased covariance (D x D) of `images / 255`, in f64.
fn reference_covariance(split: &Split, d: usize) -> (Vec<f64>, Vec<f64>) {
    let n = split.len();
    let x: Vec<f64> = split.images.iter().map(|&p| p as f64 / 255.0).collect();
    let mut mean = vec![0.0; d];
    for image in x.chunks_exact(d) {
        for (m, v) in mean.iter_mut().zip(image) {
            *m += v / n as f64;
        }
    }
    let mut cov = vec![0.0; d * d];
    for image in x.chunks_exact(d) {
        for i in 0..d {
            for j in 0..d {
                cov[i * d + j] += (image[i] - mean[i]) * (image[j] - mean[j]);
            }
        }
    }
    cov.iter_mut().for_each(|c| *c /= (n - 1) as f64);
    (mean, cov)
}

fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            for j in 0..d {
                out[i * d + j] += a[i * d + k] * b[k * d + j];
            }
        }
    }
    out
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn identity(d: usize) -> Vec<f64> {
    (0..d * d)
        .map(|k| if k % (d + 1) == 0 { 1.0 } else { 0.0 })
        .collect()
}

/// Whether the symmetric matrix `a` is positive definite (Cholesky succeeds).
fn positive_definite(a: &[f64], d: usize) -> bool {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = a[i * d + j] - (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum::<f64>();
            if i == j {
                if s <= 0.0 {
                    return false;
                }
                l[i * d + i] = s.sqrt();
            } else {
                l[i * d + j] = s / l[j * d + j];
            }
        }
    }
    true
}

fn read(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 tensor")
}

const SHAPE: ImageShape = ImageShape {
    channels: 3,
    height: 3,
    width: 4,
};

#[test]
fn zca_matches_the_reference_whitening() {
    let d = SHAPE.numel();
    let split = correlated_split(4_000, SHAPE, 1);
    let eps = ZCA_EPS as f64;
    let fitted = Normalization::fit(NormKind::zca(), &split, SHAPE, &device()).unwrap();
    let Normalization::Zca {
        mean,
        whiten,
        unwhiten,
        eps: stored_eps,
    } = &fitted
    else {
        panic!("fitted {fitted:?}");
    };
    assert_eq!(*stored_eps, ZCA_EPS);
    let (ref_mean, cov) = reference_covariance(&split, d);
    let mean: Vec<f64> = mean.iter().map(|&v| v as f64).collect();
    assert!(max_abs_diff(&mean, &ref_mean) < 1e-6);

    // (C + eps I)^(-1/2) is the only symmetric positive-definite W with W (C + eps I) W = I
    // that commutes with C: check exactly those properties in f64.
    let w: Vec<f64> = whiten.iter().map(|&v| v as f64).collect();
    let u: Vec<f64> = unwhiten.iter().map(|&v| v as f64).collect();
    let mut reg = cov.clone();
    for i in 0..d {
        reg[i * d + i] += eps;
    }
    let wt: Vec<f64> = (0..d * d).map(|k| w[(k % d) * d + k / d]).collect();
    assert!(max_abs_diff(&w, &wt) < 1e-5, "whiten is symmetric");
    assert!(positive_definite(&w, d));
    let wrw = matmul(&matmul(&w, &reg, d), &w, d);
    assert!(max_abs_diff(&wrw, &identity(d)) < 1e-4, "W (C + eps) W = I");
    assert!(max_abs_diff(&matmul(&w, &cov, d), &matmul(&cov, &w, d)) < 1e-5);
    assert!(
        max_abs_diff(&matmul(&u, &w, d), &identity(d)) < 1e-4,
        "unwhiten = whiten^-1"
    );
    assert!(
        max_abs_diff(&matmul(&u, &u, d), &reg) < 1e-5,
        "unwhiten^2 = C + eps"
    );

    // The whitened train data: mean 0 and covariance C (C + eps I)^-1, i.e.
    // cov_white (C + eps I) = C. Then the round trip gives the pixels back.
    let white = read(fitted.apply(&split.images, SHAPE, &device()).unwrap());
    let white_split_cov = {
        let n = split.len();
        let x: Vec<f64> = white.iter().map(|&v| v as f64).collect();
        let mut m = vec![0.0; d];
        for image in x.chunks_exact(d) {
            for (mi, v) in m.iter_mut().zip(image) {
                *mi += v / n as f64;
            }
        }
        assert!(m.iter().all(|v| v.abs() < 1e-4), "whitened mean {m:?}");
        let mut c = vec![0.0; d * d];
        for image in x.chunks_exact(d) {
            for i in 0..d {
                for j in 0..d {
                    c[i * d + j] += image[i] * image[j] / (n - 1) as f64;
                }
            }
        }
        c
    };
    assert!(max_abs_diff(&matmul(&white_split_cov, &reg, d), &cov) < 1e-5);

    let back = read(
        fitted
            .invert(Tensor::from_data(
                TensorData::new(white.clone(), [split.len(), 3, 3, 4]),
                &device(),
            ))
            .unwrap(),
    );
    let pixels: Vec<f32> = split.images.iter().map(|&p| p as f32 / 255.0).collect();
    let worst = back
        .iter()
        .zip(&pixels)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(worst < 1e-4, "invert(apply(x)) differs by {worst}");

    // The CPU path agrees with the device path.
    let few = &split.images[..5 * d];
    let cpu = fitted.apply_slice(few, SHAPE).unwrap();
    assert!(cpu.iter().zip(&white).all(|(a, b)| (a - b).abs() < 1e-4));
    let cpu_back = fitted.invert_slice(&cpu, SHAPE).unwrap();
    assert!(
        cpu_back
            .iter()
            .zip(&pixels)
            .all(|(a, b)| (a - b).abs() < 1e-4)
    );
}

#[test]
fn zca_with_tiny_eps_whitens_to_identity() {
    let d = SHAPE.numel();
    let split = correlated_split(6_000, SHAPE, 2);
    let fitted =
        Normalization::fit(NormKind::Zca { eps: 1e-7 }, &split, SHAPE, &device()).expect("fit");
    let white = read(fitted.apply(&split.images, SHAPE, &device()).unwrap());
    let n = split.len();
    let mut c = vec![0.0; d * d];
    for image in white.chunks_exact(d) {
        for i in 0..d {
            for j in 0..d {
                c[i * d + j] += image[i] as f64 * image[j] as f64 / (n - 1) as f64;
            }
        }
    }
    let err = max_abs_diff(&c, &identity(d));
    assert!(
        err < 2e-3,
        "whitened covariance is {err} away from identity"
    );
}

#[test]
fn mean_std_matches_reference_and_round_trips() {
    let split = correlated_split(500, SHAPE, 3);
    let fitted = Normalization::fit(NormKind::MeanStd, &split, SHAPE, &device()).unwrap();
    let Normalization::MeanStd { mean, std } = &fitted else {
        panic!("fitted {fitted:?}");
    };
    let plane = SHAPE.height * SHAPE.width;
    for c in 0..SHAPE.channels {
        let values: Vec<f64> = split
            .images
            .chunks_exact(SHAPE.numel())
            .flat_map(|image| &image[c * plane..(c + 1) * plane])
            .map(|&p| p as f64 / 255.0)
            .collect();
        let m = values.iter().sum::<f64>() / values.len() as f64;
        let var = values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / values.len() as f64;
        assert!((mean[c] as f64 - m).abs() < 1e-6, "channel {c} mean");
        assert!((std[c] as f64 - var.sqrt()).abs() < 1e-6, "channel {c} std");
    }

    let out = read(fitted.apply(&split.images, SHAPE, &device()).unwrap());
    let cpu = fitted.apply_slice(&split.images, SHAPE).unwrap();
    for (k, (&p, (&a, &b))) in split.images.iter().zip(out.iter().zip(&cpu)).enumerate() {
        let c = k / plane % SHAPE.channels;
        let want = (p as f64 / 255.0 - mean[c] as f64) / std[c] as f64;
        assert!((a as f64 - want).abs() < 1e-5 && (b as f64 - want).abs() < 1e-5);
    }
    let x = Tensor::<4>::from_data(TensorData::new(out, [500, 3, 3, 4]), &device());
    let back = read(fitted.invert(x).unwrap());
    let cpu_back = fitted.invert_slice(&cpu, SHAPE).unwrap();
    for ((&p, a), b) in split.images.iter().zip(back).zip(cpu_back) {
        assert!((a - p as f32 / 255.0).abs() < 1e-6 && (b - p as f32 / 255.0).abs() < 1e-6);
    }
}

#[test]
fn constant_channel_gets_unit_std() {
    let shape = ImageShape {
        channels: 2,
        height: 1,
        width: 2,
    };
    let split = Split {
        images: vec![10, 20, 7, 7, 30, 40, 7, 7],
        labels: vec![0, 1],
    };
    let Normalization::MeanStd { mean, std } = Normalization::fit_mean_std(&split, shape).unwrap()
    else {
        unreachable!()
    };
    assert!((mean[0] - 25.0 / 255.0).abs() < 1e-7 && (mean[1] - 7.0 / 255.0).abs() < 1e-7);
    assert!((std[0] as f64 - (125.0f64).sqrt() / 255.0).abs() < 1e-7);
    assert_eq!(std[1], 1.0);
}

#[test]
fn serde_round_trip() {
    let split = correlated_split(50, SHAPE, 4);
    for kind in [NormKind::MeanStd, NormKind::zca()] {
        let fitted = Normalization::fit(kind, &split, SHAPE, &device()).unwrap();
        let json = serde_json::to_string(&fitted).unwrap();
        let back: Normalization = serde_json::from_str(&json).unwrap();
        assert_eq!(back, fitted);
        let kind_json = serde_json::to_string(&kind).unwrap();
        assert_eq!(serde_json::from_str::<NormKind>(&kind_json).unwrap(), kind);
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let split = correlated_split(10, SHAPE, 5);
    let dev = device();
    let one = Split {
        images: split.images[..SHAPE.numel()].to_vec(),
        labels: vec![0],
    };
    assert!(Normalization::fit(NormKind::zca(), &one, SHAPE, &dev).is_err());
    assert!(Normalization::fit(NormKind::MeanStd, &Split::default(), SHAPE, &dev).is_err());
    assert!(Normalization::fit(NormKind::Zca { eps: 0.0 }, &split, SHAPE, &dev).is_err());
    let short = Split {
        images: split.images[1..].to_vec(),
        labels: split.labels.clone(),
    };
    assert!(Normalization::fit(NormKind::MeanStd, &short, SHAPE, &dev).is_err());

    let zca = Normalization::fit(NormKind::zca(), &split, SHAPE, &dev).unwrap();
    let other = ImageShape {
        channels: 1,
        height: 3,
        width: 4,
    };
    assert!(
        zca.apply_slice(&split.images[..other.numel()], other)
            .is_err()
    );
    assert!(zca.apply_slice(&split.images[..7], SHAPE).is_err());
    assert!(zca.apply(&split.images[..7], SHAPE, &dev).is_err());
    let wrong = Tensor::<4>::zeros([2, 1, 3, 4], &dev);
    assert!(zca.invert(wrong.clone()).is_err());
    let mean_std = Normalization::fit(NormKind::MeanStd, &split, SHAPE, &dev).unwrap();
    assert!(mean_std.apply_tensor(wrong).is_err());
    let broken = Normalization::Zca {
        mean: vec![0.0; 12],
        whiten: vec![1.0; 3],
        unwhiten: vec![1.0; 144],
        eps: 0.1,
    };
    assert!(broken.on_device(&dev).is_err());
    assert!(broken.apply_slice(&split.images, SHAPE).is_err());
}

/// `cargo test --release --lib zca_fit_cifar_sized -- --ignored --nocapture`
#[test]
#[ignore = "timing: a CIFAR-sized fit takes a minute or two on a small CPU"]
fn zca_fit_cifar_sized_timing() {
    let shape = ImageShape {
        channels: 3,
        height: 32,
        width: 32,
    };
    let split = correlated_split(50_000, shape, 6);
    let start = std::time::Instant::now();
    let fitted = Normalization::fit(NormKind::zca(), &split, shape, &device()).unwrap();
    println!(
        "ZCA fit on 50,000 x 3072 (flex): {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let few = &split.images[..8 * shape.numel()];
    let x = fitted.apply_slice(few, shape).unwrap();
    let back = fitted.invert_slice(&x, shape).unwrap();
    let worst = back
        .iter()
        .zip(few)
        .map(|(a, &p)| (a - p as f32 / 255.0).abs())
        .fold(0.0, f32::max);
    assert!(worst < 1e-3, "round trip differs by {worst}");
}
