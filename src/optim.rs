//! Optimisers: SGD with PyTorch's semantics on detached parameters, and the plain descent
//! step whose learning rate is a tensor on the graph (MTT's learnable α), so an outer loss
//! can differentiate through a whole inner training run.

use burn::tensor::Tensor;

/// SGD with momentum and weight decay, with PyTorch's semantics (the first step seeds the
/// momentum buffer with the gradient; decay is added to the gradient).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Sgd {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

/// The optimiser's state for one parameter tensor (its momentum buffer).
#[derive(Clone, Debug)]
pub struct SgdState<const D: usize = 1> {
    pub velocity: Option<Tensor<D>>,
}

impl Sgd {
    pub fn state<const D: usize>(&self) -> SgdState<D> {
        SgdState { velocity: None }
    }

    /// One step: returns the updated parameters (detached from any graph).
    pub fn step<const D: usize>(
        &self,
        params: Tensor<D>,
        grad: Tensor<D>,
        state: &mut SgdState<D>,
    ) -> Tensor<D> {
        let mut g = grad;
        if self.weight_decay != 0.0 {
            g = g + params.clone().mul_scalar(self.weight_decay);
        }
        if self.momentum != 0.0 {
            let v = match state.velocity.take() {
                Some(v) => v.mul_scalar(self.momentum) + g,
                None => g,
            };
            state.velocity = Some(v.clone());
            g = v;
        }
        params - g.mul_scalar(self.lr)
    }
}

/// `params - lr * grad` with `lr` a one-element tensor: every operand may carry a graph,
/// so the result differentiates with respect to the parameters, the gradient (and what made
/// it) and the learning rate. This is the student's update in trajectory matching.
pub fn descend(params: Tensor<1>, grad: Tensor<1>, lr: &Tensor<1>) -> Tensor<1> {
    params - grad * lr.clone()
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;

    #[test]
    fn sgd_follows_pytorch_update_rule() {
        let device = Device::flex();
        let sgd = Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.01,
        };
        let mut st = sgd.state();
        let t = |v: [f32; 2]| Tensor::<1>::from_floats(v, &device);
        let p = sgd.step(t([1.0, -2.0]), t([0.5, 0.5]), &mut st);
        let p = sgd.step(p, t([0.5, 0.5]), &mut st);
        // By hand: g1 = .5 + .01 p0; v1 = g1; p1 = p0 - .1 v1; g2 = .5 + .01 p1;
        // v2 = .9 v1 + g2; p2 = p1 - .1 v2.
        let hand = |p0: f64| {
            let g1 = 0.5 + 0.01 * p0;
            let p1 = p0 - 0.1 * g1;
            let v2 = 0.9 * g1 + 0.5 + 0.01 * p1;
            p1 - 0.1 * v2
        };
        let got = p.into_data().try_to_vec::<f32>().unwrap();
        assert!((got[0] as f64 - hand(1.0)).abs() < 1e-6);
        assert!((got[1] as f64 - hand(-2.0)).abs() < 1e-6);
    }

    #[test]
    fn descend_differentiates_in_the_learning_rate() {
        let device = Device::flex().autodiff();
        let p = Tensor::<1>::from_floats([1.0, 2.0], &device).require_grad();
        let g = Tensor::<1>::from_floats([0.5, -1.0], &device);
        let lr = Tensor::<1>::from_floats([0.1], &device).require_grad();
        // L = sum(p - lr g)^2 / 2: dL/dlr = -sum((p - lr g) g), dL/dp = p - lr g.
        let next = descend(p.clone(), g, &lr);
        let grads = (next.square().sum() / 2.0).backward();
        let after = [1.0 - 0.05, 2.0 + 0.1];
        let dlr = -(after[0] * 0.5 - after[1]);
        let got = lr
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!((got[0] - dlr).abs() < 1e-6, "{got:?} vs {dlr}");
        let got = p
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!((got[0] - after[0]).abs() < 1e-6 && (got[1] - after[1]).abs() < 1e-6);
    }
}
