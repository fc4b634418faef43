//! Everything a run needs to continue exactly where it stopped, as one value: the
//! iteration and every learned tensor and optimiser buffer, by name. Each part of the run
//! (the factorization and its optimisers, the adversary, the objective) puts its own
//! tensors in and takes them back out, so a new learned quantity is one `put` and one
//! `take` beside it. Encoded as one safetensors file, so a checkpoint on disk is always
//! whole and consistent.

use std::collections::{BTreeMap, HashMap};

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::artifact::f32_values;
use crate::error::{Error, Result};

/// The metadata key holding the iteration.
const ITERATION_KEY: &str = "iteration";

/// A run's state after `iteration` iterations.
#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    pub iteration: usize,
    tensors: BTreeMap<String, Tensor<1>>,
}

impl Checkpoint {
    pub fn new(iteration: usize) -> Self {
        Self {
            iteration,
            tensors: BTreeMap::new(),
        }
    }

    /// Stores `t` flattened under `name`.
    pub fn put<const D: usize>(&mut self, name: &str, t: &Tensor<D>) {
        self.tensors.insert(name.into(), t.clone().reshape([-1]));
    }

    /// Stores `t` when there is one (an optimiser's momentum before its first step).
    pub fn put_opt<const D: usize>(&mut self, name: &str, t: Option<&Tensor<D>>) {
        if let Some(t) = t {
            self.put(name, t);
        }
    }

    /// Takes `name` back out in `dims`, refusing a tensor of another size.
    pub fn take<const D: usize>(
        &mut self,
        name: &str,
        dims: [usize; D],
    ) -> Result<Option<Tensor<D>>> {
        let Some(t) = self.tensors.remove(name) else {
            return Ok(None);
        };
        let want: usize = dims.iter().product();
        let got = t.dims()[0];
        if got != want {
            return Err(Error::Config(format!(
                "the checkpoint's `{name}` holds {got} numbers where the run's settings need \
                 {want} ({dims:?}); it belongs to another run or is damaged"
            )));
        }
        Ok(Some(t.reshape(dims)))
    }

    /// Like [`Checkpoint::take`], for a tensor every checkpoint of this run must have.
    pub fn require<const D: usize>(&mut self, name: &str, dims: [usize; D]) -> Result<Tensor<D>> {
        self.take(name, dims)?.ok_or_else(|| {
            Error::Config(format!(
                "the checkpoint has no `{name}`; it belongs to a run with other settings"
            ))
        })
    }

    /// Names of the tensors nobody has taken (a checkpoint of another kind of run).
    pub fn remaining(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    /// The safetensors bytes: every tensor as f32, the iteration in the metadata.
    /// A non-finite value is an error naming the tensor and the iteration, so a diverged
    /// run stops before it writes anything over its last good checkpoint.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let raw = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let v = t.try_to_vec_as::<f32>().map_err(|e| {
                    Error::Device(format!("reading `{name}` for the checkpoint: {e}"))
                })?;
                if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
                    return Err(Error::NonFinite(format!(
                        "`{name}` holds {bad} at iteration {}; the last checkpoint on disk \
                         is kept: resume from it with lower learning rates",
                        self.iteration
                    )));
                }
                Ok((name, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
            })
            .collect::<Result<Vec<(&String, Vec<u8>)>>>()?;
        let views = raw
            .iter()
            .map(|(name, bytes)| {
                TensorView::new(Dtype::F32, vec![bytes.len() / 4], bytes)
                    .map(|v| (name.as_str(), v))
                    .map_err(|e| Error::Config(format!("checkpoint tensor `{name}`: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta = HashMap::from([(ITERATION_KEY.to_string(), self.iteration.to_string())]);
        safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::Config(format!("encoding the checkpoint: {e}")))
    }

    /// Reads bytes written by [`Checkpoint::to_bytes`], putting the tensors on `device`.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> std::result::Result<Self, String> {
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| format!("not a readable safetensors file: {e}"))?;
        let iteration = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(ITERATION_KEY))
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or("no iteration in its metadata: not a haba checkpoint")?;
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| format!("not a readable safetensors file: {e}"))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in file.tensors() {
            if view.dtype() != Dtype::F32 || view.shape().len() != 1 {
                return Err(format!(
                    "tensor `{name}` is {:?} {:?}, expected flat f32",
                    view.dtype(),
                    view.shape()
                ));
            }
            let v = f32_values(view.data());
            if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
                return Err(format!("tensor `{name}` holds {bad}"));
            }
            let n = v.len();
            tensors.insert(name, Tensor::from_data(TensorData::new(v, [n]), device));
        }
        Ok(Self { iteration, tensors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_wrong_sizes() {
        let device = Device::flex();
        let mut ck = Checkpoint::new(42);
        let t = Tensor::<2>::from_floats([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], &device);
        ck.put("a", &t);
        ck.put_opt::<1>("missing", None);
        let mut back = Checkpoint::from_bytes(&ck.to_bytes().unwrap(), &device).unwrap();
        assert_eq!(back.iteration, 42);
        let err = back.clone().take("a", [7]).unwrap_err().to_string();
        assert!(
            err.contains("`a` holds 6 numbers") && err.contains("7"),
            "{err}"
        );
        let a = back.require("a", [3, 2]).unwrap();
        let v = a.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(v, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert!(back.take::<1>("missing", [1]).unwrap().is_none());
        assert!(back.require::<1>("missing", [1]).is_err());
        assert!(back.remaining().is_empty());
        assert!(Checkpoint::from_bytes(b"garbage", &device).is_err());
        // A diverged tensor is refused before anything is encoded.
        let mut bad = Checkpoint::new(7);
        bad.put(
            "b",
            &Tensor::<1>::from_floats([1.0, f32::INFINITY], &device),
        );
        let err = bad.to_bytes().unwrap_err().to_string();
        assert!(err.contains("`b` holds inf at iteration 7"), "{err}");
    }
}
