//! The hallucinators' affine modulation `scale ⊙ enc(x) + shift` (the HaBa paper), for a
//! batch in which every sample may use a different hallucinator.
//!
//! The scale and shift maps of all M hallucinators are stacked into `[M, C, H, W]`
//! tensors, so one call modulates a whole batch: sample n uses row `hallucinator[n]`.
//! On wgpu devices this runs our WGSL kernels (forward, and a deterministic backward);
//! elsewhere it gathers rows with `select` and uses plain tensor ops.

use burn::tensor::{Int, Tensor, TensorData};

use crate::kernels::{affine::affine_modulation_extension, wgsl_kernels_available};

/// Why a call to [`affine_modulation`] was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AffineError {
    #[error("scale {scale:?} and shift {shift:?} must have the same shape [M, C, H, W]")]
    MapShapes {
        scale: [usize; 4],
        shift: [usize; 4],
    },
    #[error("x {x:?} and the maps {maps:?} must agree in channels, height and width")]
    InputShape { x: [usize; 4], maps: [usize; 4] },
    #[error("{assigned} hallucinator indices for a batch of {samples} samples")]
    BatchSize { samples: usize, assigned: usize },
    #[error("sample {sample} uses hallucinator {index}, but there are only {count}")]
    IndexOutOfRange {
        sample: usize,
        index: usize,
        count: usize,
    },
    #[error("x, scale and shift must be on the same device")]
    Devices,
}

/// `y[n] = scale[hallucinator[n]] * x[n] + shift[hallucinator[n]]` for a batch.
///
/// `x` is `[N, C, H, W]`, `scale` and `shift` are `[M, C, H, W]` (one map per
/// hallucinator), and `hallucinator` holds one index below M per sample. Differentiable
/// with respect to all three tensors on autodiff devices. Uses our WGSL kernels where
/// [`wgsl_kernels_available`] says so, [`affine_modulation_reference`] elsewhere.
pub fn affine_modulation(
    x: Tensor<4>,
    scale: Tensor<4>,
    shift: Tensor<4>,
    hallucinator: &[usize],
) -> Result<Tensor<4>, AffineError> {
    validate(&x, &scale, &shift, hallucinator)?;
    // The kernels index with u32; an empty batch has nothing to launch.
    let fits_u32 = scale.dims()[0] <= u32::MAX as usize;
    if !hallucinator.is_empty() && fits_u32 && wgsl_kernels_available(&x.device()) {
        let h = hallucinator.iter().map(|&m| m as u32).collect();
        Ok(affine_modulation_extension(x, scale, shift, h))
    } else {
        Ok(reference(x, scale, shift, hallucinator))
    }
}

/// The same computation from Burn tensor ops only (gather rows with `select`, then
/// multiply and add), on any device. Public so tests and benchmarks can compare.
pub fn affine_modulation_reference(
    x: Tensor<4>,
    scale: Tensor<4>,
    shift: Tensor<4>,
    hallucinator: &[usize],
) -> Result<Tensor<4>, AffineError> {
    validate(&x, &scale, &shift, hallucinator)?;
    Ok(reference(x, scale, shift, hallucinator))
}

fn reference(
    x: Tensor<4>,
    scale: Tensor<4>,
    shift: Tensor<4>,
    hallucinator: &[usize],
) -> Tensor<4> {
    let idx: Vec<i64> = hallucinator.iter().map(|&m| m as i64).collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [hallucinator.len()]), &x.device());
    x * scale.select(0, idx.clone()) + shift.select(0, idx)
}

/// Shapes, indices and devices, checked before anything runs (the kernels trust them).
fn validate(
    x: &Tensor<4>,
    scale: &Tensor<4>,
    shift: &Tensor<4>,
    hallucinator: &[usize],
) -> Result<(), AffineError> {
    let (x_dims, maps) = (x.dims(), scale.dims());
    if maps != shift.dims() {
        return Err(AffineError::MapShapes {
            scale: maps,
            shift: shift.dims(),
        });
    }
    if x_dims[1..] != maps[1..] {
        return Err(AffineError::InputShape { x: x_dims, maps });
    }
    if hallucinator.len() != x_dims[0] {
        return Err(AffineError::BatchSize {
            samples: x_dims[0],
            assigned: hallucinator.len(),
        });
    }
    if let Some((sample, &index)) = hallucinator
        .iter()
        .enumerate()
        .find(|(_, m)| **m >= maps[0])
    {
        return Err(AffineError::IndexOutOfRange {
            sample,
            index,
            count: maps[0],
        });
    }
    let device = x.device();
    if scale.device() != device || shift.device() != device {
        return Err(AffineError::Devices);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
