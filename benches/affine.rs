//! Forward + backward time of the WGSL affine-modulation kernels against the tensor-op
//! fallback, on a realistic HaBa batch (N = 256, C = 3, 30 x 30 maps, M = 5), on the
//! wgpu device, both measured in this one run.
//!
//! `cargo bench --bench affine`; `AFFINE_BENCH_ITERS` sets the timed iterations (20).

use std::time::{Duration, Instant};

use burn::tensor::{Device, Tensor, TensorData};
use haba::haba::affine::{AffineError, affine_modulation, affine_modulation_reference};
use haba::kernels::wgsl_kernels_available;
use haba::rng::Rng;

type Modulation = fn(Tensor<4>, Tensor<4>, Tensor<4>, &[usize]) -> Result<Tensor<4>, AffineError>;

const N: usize = 256;
const M: usize = 5;
const DIMS: [usize; 3] = [3, 30, 30];

struct Inputs {
    x: Tensor<4>,
    scale: Tensor<4>,
    shift: Tensor<4>,
    weights: Tensor<4>,
    hallucinator: Vec<usize>,
}

/// One forward + backward; reading a gradient back waits for the device to finish.
fn step(inputs: &Inputs, modulation: Modulation) -> Duration {
    let start = Instant::now();
    let y = modulation(
        inputs.x.clone(),
        inputs.scale.clone(),
        inputs.shift.clone(),
        &inputs.hallucinator,
    )
    .expect("valid inputs");
    let grads = (y * inputs.weights.clone()).sum().backward();
    let dscale = inputs.scale.grad(&grads).expect("a gradient");
    let _ = inputs.x.grad(&grads).expect("a gradient");
    let _ = inputs.shift.grad(&grads).expect("a gradient");
    dscale.into_data();
    start.elapsed()
}

fn main() {
    let device = match Device::wgpu_options().init() {
        Ok(device) => device,
        Err(err) => {
            eprintln!("affine bench: no wgpu adapter ({err}); nothing to measure");
            return;
        }
    };
    assert!(
        wgsl_kernels_available(&device),
        "{device:?} cannot run WGSL"
    );
    let device = device.autodiff();
    let iterations: usize = std::env::var("AFFINE_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);

    let mut rng = Rng::new(1);
    let hallucinator = (0..N).map(|_| rng.below(M)).collect();
    let mut tensor = |batch: usize, mean: f32| {
        let dims = [batch, DIMS[0], DIMS[1], DIMS[2]];
        let values: Vec<f32> = (0..dims.iter().product())
            .map(|_| mean + 0.5 * rng.normal())
            .collect();
        Tensor::<4>::from_data(TensorData::new(values, dims), &device)
    };
    let inputs = Inputs {
        x: tensor(N, 0.0).require_grad(),
        scale: tensor(M, 1.0).require_grad(),
        shift: tensor(M, 0.0).require_grad(),
        weights: tensor(N, 0.0),
        hallucinator,
    };

    // Warm-up: JIT-compiles every kernel and fills the memory pools.
    for _ in 0..3 {
        step(&inputs, affine_modulation);
        step(&inputs, affine_modulation_reference);
    }
    // Interleaved, so both see the same machine load.
    let (mut kernel, mut reference) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..iterations {
        kernel += step(&inputs, affine_modulation);
        reference += step(&inputs, affine_modulation_reference);
    }
    let per = |total: Duration| total.as_secs_f64() * 1e3 / iterations as f64;
    println!(
        "affine modulation, forward + backward, N={N} C={} {}x{} M={M}, {iterations} iterations on {device:?}",
        DIMS[0], DIMS[1], DIMS[2]
    );
    println!("  WGSL kernels:  {:.3} ms/iteration", per(kernel));
    println!("  tensor ops:    {:.3} ms/iteration", per(reference));
    println!(
        "  kernel / tensor-op time ratio: {:.3}",
        kernel.as_secs_f64() / reference.as_secs_f64()
    );
}
