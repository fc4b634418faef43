//! Shader validity (naga), the WGSL kernels against the tensor-op version on wgpu, and the
//! tensor-op version against a float64 hand computation on flex.

use std::path::Path;
use std::sync::OnceLock;

use burn::tensor::wgpu::WgpuInitError;
use burn::tensor::{Device, DeviceKind, Tensor, TensorData};

use super::*;
use crate::kernels::affine::{LAUNCHES, affine_modulation_extension, info_table};
use crate::rng::Rng;

/// What Burn's launch code puts in place of each template placeholder of `shaders/`.
const PLACEHOLDERS: &[(&str, &str)] = &[("workgroup_size", "256")];

/// Fill `{{ name }}` placeholders as Burn's `SourceTemplate` does, refusing unknown names so
/// that a new placeholder cannot slip past validation.
fn fill_placeholders(file: &str, source: &str) -> String {
    let mut out = String::new();
    let mut rest = source;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let close = open
            + rest[open..]
                .find("}}")
                .unwrap_or_else(|| panic!("{file}: unclosed placeholder"));
        let key = rest[open + 2..close].trim();
        let value = PLACEHOLDERS
            .iter()
            .find(|(name, _)| *name == key)
            .unwrap_or_else(|| {
                panic!("{file}: unknown placeholder `{key}`: add it to PLACEHOLDERS")
            });
        out.push_str(value.1);
        rest = &rest[close + 2..];
    }
    out.push_str(rest);
    out
}

#[test]
fn every_shader_parses_and_validates_with_naga() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("shaders/ exists")
        .map(|entry| entry.expect("readable shaders/").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wgsl"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 2, "no shaders found in {}", dir.display());
    for path in &paths {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).expect("readable shader");
        let source = fill_placeholders(&file, &text);
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|err| panic!("{file}:\n{}", err.emit_to_string(&source)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default(),
        )
        .validate(&module)
        .unwrap_or_else(|err| panic!("{file}:\n{}", err.emit_to_string(&source)));
        // Burn's SourceKernel always launches the entry point `main`.
        assert!(
            module
                .entry_points
                .iter()
                .any(|e| e.name == "main" && e.stage == naga::ShaderStage::Compute),
            "{file}: no compute entry point `main`"
        );
    }
}

#[test]
fn info_table_groups_samples_by_hallucinator_in_order() {
    // Hallucinator 3 is unused: its group is empty.
    let info = info_table(&[2, 0, 2, 1, 0], 7, 4);
    let expected = [
        vec![5, 7, 4],       // N, P, M
        vec![2, 0, 2, 1, 0], // h
        vec![0, 2, 3, 5, 5], // start
        vec![1, 4, 3, 0, 2], // members
    ]
    .concat();
    assert_eq!(info, expected);
}

#[test]
fn invalid_arguments_are_refused_with_typed_errors() {
    let device = Device::flex();
    let zeros = |dims: [usize; 4]| Tensor::<4>::zeros(dims, &device);
    let call = |x, scale, shift, h: &[usize]| affine_modulation(x, scale, shift, h).map(|_| ());
    assert_eq!(
        call(
            zeros([2, 1, 3, 3]),
            zeros([2, 1, 3, 3]),
            zeros([3, 1, 3, 3]),
            &[0, 1]
        ),
        Err(AffineError::MapShapes {
            scale: [2, 1, 3, 3],
            shift: [3, 1, 3, 3]
        })
    );
    assert_eq!(
        call(
            zeros([2, 1, 3, 4]),
            zeros([2, 1, 3, 3]),
            zeros([2, 1, 3, 3]),
            &[0, 1]
        ),
        Err(AffineError::InputShape {
            x: [2, 1, 3, 4],
            maps: [2, 1, 3, 3]
        })
    );
    assert_eq!(
        call(
            zeros([2, 1, 3, 3]),
            zeros([2, 1, 3, 3]),
            zeros([2, 1, 3, 3]),
            &[0]
        ),
        Err(AffineError::BatchSize {
            samples: 2,
            assigned: 1
        })
    );
    assert_eq!(
        call(
            zeros([2, 1, 3, 3]),
            zeros([2, 1, 3, 3]),
            zeros([2, 1, 3, 3]),
            &[0, 2]
        ),
        Err(AffineError::IndexOutOfRange {
            sample: 1,
            index: 2,
            count: 2
        })
    );
    assert_eq!(
        call(
            zeros([2, 1, 3, 3]),
            zeros([2, 1, 3, 3]),
            zeros([2, 1, 3, 3]),
            &[1, 0]
        ),
        Ok(())
    );
}

/// A random problem. The loss is `sum(weights * y)`, so the output gradient is `weights`.
struct Case {
    x_dims: [usize; 4],
    map_dims: [usize; 4],
    x: Vec<f32>,
    scale: Vec<f32>,
    shift: Vec<f32>,
    weights: Vec<f32>,
    hallucinator: Vec<usize>,
}

impl Case {
    fn random(rng: &mut Rng) -> Self {
        let (n, c, h, w) = (
            1 + rng.below(8),
            1 + rng.below(3),
            1 + rng.below(5),
            1 + rng.below(5),
        );
        let m = 2 + rng.below(4);
        // Assign from the first m - 1 only, so at least the last hallucinator is unused.
        let hallucinator = (0..n).map(|_| rng.below(m - 1)).collect();
        let mut draw = |len: usize, mean: f32, std: f32| -> Vec<f32> {
            (0..len).map(|_| mean + std * rng.normal()).collect()
        };
        let (x_len, map_len) = (n * c * h * w, m * c * h * w);
        Self {
            x_dims: [n, c, h, w],
            map_dims: [m, c, h, w],
            x: draw(x_len, 0.0, 1.0),
            scale: draw(map_len, 1.0, 0.5),
            shift: draw(map_len, 0.0, 0.5),
            weights: draw(x_len, 0.0, 1.0),
            hallucinator,
        }
    }

    fn plane(&self) -> usize {
        self.x_dims[1..].iter().product()
    }

    fn unused_hallucinators(&self) -> Vec<usize> {
        (0..self.map_dims[0])
            .filter(|m| !self.hallucinator.contains(m))
            .collect()
    }

    /// y, dx, dscale and dshift in float64, straight from the definition.
    fn by_hand(&self) -> Outcome<f64> {
        let plane = self.plane();
        let map_len = self.scale.len();
        let mut out = Outcome {
            y: vec![0.0; self.x.len()],
            dx: vec![0.0; self.x.len()],
            dscale: vec![0.0; map_len],
            dshift: vec![0.0; map_len],
        };
        for (n, &m) in self.hallucinator.iter().enumerate() {
            for p in 0..plane {
                let (i, k) = (n * plane + p, m * plane + p);
                let (x, g) = (self.x[i] as f64, self.weights[i] as f64);
                out.y[i] = self.scale[k] as f64 * x + self.shift[k] as f64;
                out.dx[i] = g * self.scale[k] as f64;
                out.dscale[k] += g * x;
                out.dshift[k] += g;
            }
        }
        out
    }
}

/// Output values and gradients of one run.
#[derive(Debug, PartialEq)]
struct Outcome<T> {
    y: Vec<T>,
    dx: Vec<T>,
    dscale: Vec<T>,
    dshift: Vec<T>,
}

type Modulation = fn(Tensor<4>, Tensor<4>, Tensor<4>, &[usize]) -> Result<Tensor<4>, AffineError>;

/// The extension op itself, without the device check of `affine_modulation`: on flex this
/// is our autodiff step over the tensor-op defaults of `AffineKernels`.
fn extension(
    x: Tensor<4>,
    scale: Tensor<4>,
    shift: Tensor<4>,
    h: &[usize],
) -> Result<Tensor<4>, AffineError> {
    let h = h.iter().map(|&m| m as u32).collect();
    Ok(affine_modulation_extension(x, scale, shift, h))
}

fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 values")
}

/// Forward and backward of `modulation` on an autodiff `device`.
fn run(case: &Case, device: &Device, modulation: Modulation) -> Outcome<f32> {
    let tensor = |v: &[f32], dims: [usize; 4]| {
        Tensor::<4>::from_data(TensorData::new(v.to_vec(), dims), device)
    };
    let x = tensor(&case.x, case.x_dims).require_grad();
    let scale = tensor(&case.scale, case.map_dims).require_grad();
    let shift = tensor(&case.shift, case.map_dims).require_grad();
    let y = modulation(x.clone(), scale.clone(), shift.clone(), &case.hallucinator)
        .expect("valid case");
    let grads = (y.clone() * tensor(&case.weights, case.x_dims))
        .sum()
        .backward();
    let grad = |t: &Tensor<4>| values(t.grad(&grads).expect("a gradient"));
    Outcome {
        dx: grad(&x),
        dscale: grad(&scale),
        dshift: grad(&shift),
        y: values(y),
    }
}

/// `got` within about 1e-5 relative of `want` (an absolute floor for values near zero).
fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= 1e-5 * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w} (error {err:e})"
        );
    }
}

fn assert_outcome_close(label: &str, got: &Outcome<f32>, want: &Outcome<f64>) {
    assert_close(&format!("{label} y"), &got.y, &want.y);
    assert_close(&format!("{label} dx"), &got.dx, &want.dx);
    assert_close(&format!("{label} dscale"), &got.dscale, &want.dscale);
    assert_close(&format!("{label} dshift"), &got.dshift, &want.dshift);
}

fn widen(o: &Outcome<f32>) -> Outcome<f64> {
    let w = |v: &[f32]| v.iter().map(|&x| x as f64).collect();
    Outcome {
        y: w(&o.y),
        dx: w(&o.dx),
        dscale: w(&o.dscale),
        dshift: w(&o.dshift),
    }
}

/// The wgpu device every test of this process shares (the runtime initialises once), or
/// `None` without an adapter; under CI a missing adapter is a failure, not a skip.
fn wgpu_device() -> Option<Device> {
    static DEVICE: OnceLock<Result<Device, String>> = OnceLock::new();
    let device = DEVICE.get_or_init(|| match Device::wgpu_options().init() {
        Ok(device) => Ok(device),
        // Another test of this process initialised the default wgpu device already.
        Err(WgpuInitError::Registration { .. }) => Ok(Device::wgpu(DeviceKind::DefaultDevice)),
        Err(err) => Err(err.to_string()),
    });
    match device {
        Ok(device) => Some(device.clone()),
        Err(err) if std::env::var_os("CI").is_some() => {
            panic!("CI must have a wgpu adapter: {err}")
        }
        Err(err) => {
            eprintln!("note: skipping a wgpu test, no wgpu adapter: {err}");
            None
        }
    }
}

#[test]
fn wgsl_kernels_match_tensor_ops_on_wgpu() {
    let Some(device) = wgpu_device() else {
        return;
    };
    assert!(
        wgsl_kernels_available(&device),
        "{device:?} should run WGSL kernels"
    );
    let autodiff = device.clone().autodiff();
    assert!(wgsl_kernels_available(&autodiff));

    let mut rng = Rng::new(11);
    for round in 0..3 {
        let case = Case::random(&mut rng);
        let label = format!("round {round} {:?} M={}", case.x_dims, case.map_dims[0]);
        let launches = LAUNCHES.with(std::cell::Cell::get);
        let kernel = run(&case, &autodiff, affine_modulation);
        // Forward and backward really ran as WGSL (no silent fallback to tensor ops).
        assert_eq!(LAUNCHES.with(std::cell::Cell::get) - launches, 2, "{label}");
        let reference = run(&case, &autodiff, affine_modulation_reference);
        assert_outcome_close(
            &format!("{label} kernel vs tensor ops"),
            &kernel,
            &widen(&reference),
        );
        assert_outcome_close(&format!("{label} kernel vs f64"), &kernel, &case.by_hand());

        let plane = case.plane();
        for m in case.unused_hallucinators() {
            let rows = m * plane..(m + 1) * plane;
            assert!(
                kernel.dscale[rows.clone()].iter().all(|&g| g == 0.0),
                "{label}: dscale[{m}]"
            );
            assert!(
                kernel.dshift[rows].iter().all(|&g| g == 0.0),
                "{label}: dshift[{m}]"
            );
        }
        // No float atomics: a second run gives the same bits.
        assert_eq!(
            run(&case, &autodiff, affine_modulation),
            kernel,
            "{label}: not deterministic"
        );
    }

    // Without autodiff the extension goes straight to the Cube backend's forward kernel.
    let case = Case::random(&mut rng);
    let launches = LAUNCHES.with(std::cell::Cell::get);
    let tensor = |v: &[f32], dims: [usize; 4]| {
        Tensor::<4>::from_data(TensorData::new(v.to_vec(), dims), &device)
    };
    let y = affine_modulation(
        tensor(&case.x, case.x_dims),
        tensor(&case.scale, case.map_dims),
        tensor(&case.shift, case.map_dims),
        &case.hallucinator,
    )
    .expect("valid case");
    assert_close("forward without autodiff", &values(y), &case.by_hand().y);
    assert_eq!(LAUNCHES.with(std::cell::Cell::get) - launches, 1);
}

#[test]
fn tensor_ops_match_float64_hand_computation_on_flex() {
    let device = Device::flex().autodiff();
    assert!(!wgsl_kernels_available(&device));
    let mut rng = Rng::new(5);
    for round in 0..4 {
        let case = Case::random(&mut rng);
        let want = case.by_hand();
        let label = format!("round {round} {:?} M={}", case.x_dims, case.map_dims[0]);
        let reference = run(&case, &device, affine_modulation_reference);
        assert_outcome_close(&format!("{label} tensor ops"), &reference, &want);
        // On flex the public function is the tensor-op version...
        assert_eq!(run(&case, &device, affine_modulation), reference, "{label}");
        // ...and our own autodiff step, over the tensor-op kernels, agrees with both.
        assert_outcome_close(
            &format!("{label} extension"),
            &run(&case, &device, extension),
            &want,
        );
    }
}

#[test]
fn autodiff_step_handles_checkpointing_and_untracked_inputs_on_flex() {
    let case = Case::random(&mut Rng::new(9));
    let want = case.by_hand();

    // With balanced checkpointing, x and scale reach the backward through the checkpointer.
    let checkpointed = Device::flex().autodiff().gradient_checkpointing();
    assert_outcome_close(
        "checkpointing",
        &run(&case, &checkpointed, extension),
        &want,
    );

    let device = Device::flex().autodiff();
    let tensor = |v: &[f32], dims: [usize; 4]| {
        Tensor::<4>::from_data(TensorData::new(v.to_vec(), dims), &device)
    };
    let x = tensor(&case.x, case.x_dims);
    let shift = tensor(&case.shift, case.map_dims);
    // Only scale tracked: it alone gets a gradient, and the right one.
    let scale = tensor(&case.scale, case.map_dims).require_grad();
    let y = extension(x.clone(), scale.clone(), shift.clone(), &case.hallucinator).unwrap();
    let grads = (y * tensor(&case.weights, case.x_dims)).sum().backward();
    assert!(x.grad(&grads).is_none() && shift.grad(&grads).is_none());
    assert_close(
        "dscale alone",
        &values(scale.grad(&grads).unwrap()),
        &want.dscale,
    );

    // Nothing tracked: the op still computes its output.
    let scale = tensor(&case.scale, case.map_dims);
    let y = extension(x, scale, shift, &case.hallucinator).unwrap();
    assert_close("untracked y", &values(y), &want.y);
}
