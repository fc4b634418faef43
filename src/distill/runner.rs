//! The distillation loop: one [`Distiller::step`] is one iteration of the base objective
//! (DM or MTT, see [`super::objective`]) with HaBa's contrastive terms, reading top to
//! bottom as bases -> hallucinators -> objective -> update -> adversary.

use burn::tensor::Tensor;

use super::checkpoint::Checkpoint;
use super::config::{DistillConfig, Method};
use super::contrastive::{Adversary, augment_pair};
use super::dm::Dm;
use super::mtt::Mtt;
use super::objective::{Objective, Synthetic};
use crate::augment::Dsa;
use crate::data::{ImageShape, Prepared};
use crate::error::{Error, Result};
use crate::eval::dsa_from_name;
use crate::haba::{Factorization, HallucinatorShape, Hallucinators, Storage, init_bases};
use crate::optim::{Sgd, SgdState};
use crate::rng::Rng;

/// Losses of one iteration, for the progress bar and `metrics.jsonl`.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Losses {
    /// The base objective (DM's embedding distance).
    pub objective: f32,
    /// HaBa's diversity term λ_cos * mean((cos + 1) / 2), 0 when off.
    pub diversity: f32,
    /// The adversary's own loss after its step, 0 when off.
    pub adversary: f32,
    /// The learned learning rate α after the step (MTT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f32>,
}

/// The losses of one iteration still on the device (see [`Distiller::step_deferred`]).
pub struct PendingLosses {
    objective: Tensor<1>,
    diversity: Option<Tensor<1>>,
    adversary: Option<Tensor<1>>,
    lr: Option<Tensor<1>>,
    method: Method,
    /// The iteration these are the losses of, counted from 1.
    iteration: usize,
}

impl PendingLosses {
    /// Every loss in one tensor (objective, diversity, adversary, learned rate; 0 where a
    /// term is off), so that reading them back is one transfer.
    pub fn stacked(&self) -> Tensor<1> {
        let device = self.objective.device();
        let or_zero = |t: &Option<Tensor<1>>| {
            t.clone()
                .unwrap_or_else(|| Tensor::<1>::zeros([1], &device))
        };
        Tensor::cat(
            vec![
                self.objective.clone(),
                or_zero(&self.diversity),
                or_zero(&self.adversary),
                or_zero(&self.lr),
            ],
            0,
        )
    }

    /// The losses from the values of [`stacked`](Self::stacked); an error naming the
    /// iteration when the objective is not a number.
    pub fn losses(&self, values: &[f32]) -> Result<Losses> {
        let &[objective, diversity, adversary, lr] = values else {
            return Err(Error::Device(format!(
                "read {} losses back, expected 4",
                values.len()
            )));
        };
        if !objective.is_finite() {
            return Err(Error::NonFinite(format!(
                "the {} loss became {objective} at iteration {}; the last checkpoint on disk \
                 is kept: lower the learning rates (lr_bases, lr_hallucinators) and start \
                 again or resume",
                self.method, self.iteration
            )));
        }
        Ok(Losses {
            objective,
            diversity,
            adversary,
            lr: self.lr.as_ref().map(|_| lr),
        })
    }

    /// Reads the losses back at once.
    pub fn read(self) -> Result<Losses> {
        let values = self
            .stacked()
            .into_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| Error::Device(format!("reading the losses back: {e:?}")))?;
        self.losses(&values)
    }
}

/// How many bases per class HaBa may keep so its floats fit the plain method's at `ipc`
/// images per class (the paper's storage count); an error when not even one fits, naming
/// the largest setting that would.
pub fn budget_bases_per_class(
    ipc: usize,
    image: ImageShape,
    classes: usize,
    hal: &HallucinatorShape,
) -> Result<usize> {
    let budget = ipc
        .checked_mul(classes)
        .and_then(|n| n.checked_mul(image.numel()))
        .ok_or_else(|| {
            Error::Config(format!(
                "ipc {ipc} for {classes} classes of {} floats overflows",
                image.numel()
            ))
        })?;
    let fits = |hal: &HallucinatorShape| {
        let per_basis = hal.basis_channels * image.height * image.width;
        budget.saturating_sub(hal.num_params()) / (classes * per_basis)
    };
    let per_class = fits(hal);
    if per_class > 0 {
        return Ok(per_class);
    }
    // Fewer hallucinators first, then one-channel bases for colour data.
    let mut tries: Vec<HallucinatorShape> = (1..hal.count)
        .rev()
        .map(|count| HallucinatorShape { count, ..*hal })
        .collect();
    if hal.basis_channels > 1 {
        let grey = HallucinatorShape {
            basis_channels: 1,
            ..*hal
        };
        tries.extend(
            (1..=hal.count)
                .rev()
                .map(|count| HallucinatorShape { count, ..grey }),
        );
    }
    let hint = match tries.iter().find(|h| fits(h) > 0) {
        Some(h) => {
            let grey = h.basis_channels < hal.basis_channels;
            let n = fits(h);
            format!(
                "Try `--hallucinators {}{}{}`: it fits {n} {}{} per class.",
                h.count,
                if grey { " --single-channel" } else { "" },
                if h.count < 2 { " --no-contrastive" } else { "" },
                if grey { "one-channel " } else { "" },
                if n == 1 { "basis" } else { "bases" },
            )
        }
        None => "No hallucinator fits: raise --ipc.".into(),
    };
    Err(Error::Config(format!(
        "--budget-equal: at {ipc} image(s) per class the budget is {budget} floats; {} \
         hallucinators take {}, which leaves less than one basis per class. {hint}",
        hal.count,
        hal.num_params(),
    )))
}

/// The state of a running distillation.
pub struct Distiller {
    pub cfg: DistillConfig,
    pub factorization: Factorization,
    pub iteration: usize,
    pub bases_per_class: usize,
    classes: usize,
    image: ImageShape,
    dsa: Dsa,
    objective: Box<dyn Objective>,
    bases_opt: (Sgd, SgdState<4>),
    hal_opt: Option<(Sgd, SgdState)>,
    pub adversary: Option<Adversary>,
}

impl Distiller {
    /// A fresh run: bases from real images (or noise), new hallucinators and adversary,
    /// and the configured objective (MTT reads its expert buffer here).
    pub fn new(cfg: DistillConfig, data: &Prepared) -> Result<Self> {
        cfg.validate()?;
        let objective: Box<dyn Objective> = match cfg.method {
            Method::Dm => Box::new(Dm::new(&cfg.dm, data)?),
            Method::Mtt => Box::new(Mtt::new(&cfg, data)?),
        };
        Self::with_objective(cfg, data, objective)
    }

    /// A fresh run with an objective built by the caller (e.g. MTT over experts in memory).
    pub fn with_objective(
        cfg: DistillConfig,
        data: &Prepared,
        objective: Box<dyn Objective>,
    ) -> Result<Self> {
        cfg.validate()?;
        let device = data.train.images.device();
        let (classes, image) = (data.classes, data.shape);
        let mut rng = Rng::new(cfg.seed);
        let hal_shape = HallucinatorShape {
            count: cfg.hallucinators,
            basis_channels: if cfg.single_channel {
                1
            } else {
                image.channels
            },
            channels: image.channels,
            kernel: cfg.kernel,
            height: image.height,
            width: image.width,
        };
        if cfg.haba && (cfg.kernel > image.height || cfg.kernel > image.width) {
            return Err(Error::Config(format!(
                "kernel {} is larger than the {}x{} images",
                cfg.kernel, image.height, image.width
            )));
        }
        let bases_per_class = if cfg.haba && cfg.budget_equal {
            budget_bases_per_class(cfg.ipc, image, classes, &hal_shape)?
        } else {
            cfg.ipc
        };
        let channels = if cfg.haba {
            hal_shape.basis_channels
        } else {
            image.channels
        };
        // A lower bound on what a step holds: the bases with their gradient and momentum,
        // the hallucinators likewise, and every image the bases make.
        let sets = classes as u128 * bases_per_class as u128;
        let views = if cfg.haba {
            cfg.hallucinators as u128
        } else {
            1
        };
        let hal_floats = if cfg.haba {
            hal_shape.num_params() as u128
        } else {
            0
        };
        let per_basis = (channels * image.height * image.width) as u128;
        let floats = 3 * sets * per_basis + sets * views * image.numel() as u128 + 3 * hal_floats;
        crate::device::fits_in_memory(Some(4 * floats)).map_err(|why| {
            Error::Config(format!(
                "{bases_per_class} bases per class for {classes} classes {why}: lower ipc"
            ))
        })?;
        let (bases, labels) = init_bases(
            &data.train,
            classes,
            bases_per_class,
            channels,
            cfg.init,
            &mut rng,
        )?;
        let hallucinators = cfg.haba.then(|| Hallucinators {
            shape: hal_shape,
            params: hal_shape.init(&mut rng, &device, cfg.near_identity),
        });
        let adversary = if cfg.haba && cfg.contrastive {
            Some(Adversary::new(image, classes, &mut rng, &device)?)
        } else {
            None
        };
        let sgd = |lr, momentum| Sgd {
            lr,
            momentum,
            weight_decay: 0.0,
        };
        let bases_sgd = sgd(cfg.lr_bases, cfg.momentum_bases);
        let hal_opt = cfg.haba.then(|| {
            let s = sgd(cfg.lr_hallucinators, cfg.momentum_hallucinators);
            let st = s.state();
            (s, st)
        });
        Ok(Self {
            dsa: dsa_from_name(&cfg.dsa)?,
            bases_opt: {
                let st = bases_sgd.state();
                (bases_sgd, st)
            },
            cfg,
            factorization: Factorization {
                bases,
                labels,
                hallucinators,
            },
            iteration: 0,
            bases_per_class,
            classes,
            image,
            objective,
            hal_opt,
            adversary,
        })
    }

    /// Everything needed to continue this run exactly (see [`Checkpoint`]).
    pub fn checkpoint(&self) -> Checkpoint {
        let mut ck = Checkpoint::new(self.iteration);
        ck.put("bases", &self.factorization.bases);
        ck.put_opt("bases.velocity", self.bases_opt.1.velocity.as_ref());
        if let Some(h) = &self.factorization.hallucinators {
            ck.put("hallucinators", &h.params);
        }
        if let Some((_, st)) = &self.hal_opt {
            ck.put_opt("hallucinators.velocity", st.velocity.as_ref());
        }
        if let Some(adv) = &self.adversary {
            adv.save(&mut ck);
        }
        self.objective.save(&mut ck);
        ck
    }

    /// Puts back the state of a checkpoint of this run, refusing one whose tensors do not
    /// fit the run's settings.
    pub fn restore(&mut self, mut ck: Checkpoint) -> Result<()> {
        let dims = self.factorization.bases.dims();
        self.factorization.bases = ck.require("bases", dims)?;
        self.bases_opt.1.velocity = ck.take("bases.velocity", dims)?;
        if let Some(h) = &mut self.factorization.hallucinators {
            let len = [h.shape.num_params()];
            h.params = ck.require("hallucinators", len)?;
            if let Some((_, st)) = &mut self.hal_opt {
                st.velocity = ck.take("hallucinators.velocity", len)?;
            }
        }
        if let Some(adv) = &mut self.adversary {
            adv.load(&mut ck)?;
        }
        self.objective.load(&mut ck)?;
        if let Some(name) = ck.remaining().first() {
            return Err(Error::Config(format!(
                "the checkpoint holds `{name}`, which this run's settings do not have \
                 (hallucinators, contrastive terms or method differ)"
            )));
        }
        self.iteration = ck.iteration;
        Ok(())
    }

    pub fn storage(&self) -> Storage {
        self.factorization.storage(self.image, self.classes)
    }

    /// The learning rate the objective learned for training on the set (MTT's α).
    pub fn learned_lr(&self) -> Option<f32> {
        self.objective
            .learned_lr()
            .map(|lr| lr.into_scalar::<f32>())
    }

    /// One iteration: the objective's loss on the synthetic images (plus HaBa's diversity
    /// term), one SGD step on bases and hallucinators and on what the objective learns
    /// itself, then one step of the adversary. Stops with an error when the loss is not a
    /// number (the caller keeps its last good checkpoint).
    pub fn step(&mut self, data: &Prepared) -> Result<Losses> {
        self.step_deferred(data)?.read()
    }

    /// [`step`](Self::step) without reading anything back: its losses stay on the device
    /// until the caller reads them (at once, or awaited in a browser, where a GPU cannot be
    /// read synchronously), and only then is divergence detected.
    pub fn step_deferred(&mut self, data: &Prepared) -> Result<PendingLosses> {
        let mut rng = Rng::new(self.cfg.seed).fork(self.iteration as u64 + 1);

        // Learnable tensors, tracked for this iteration's backward.
        let bases = self.factorization.bases.clone().autodiff().require_grad();
        let hal_params = self
            .factorization
            .hallucinators
            .as_ref()
            .map(|h| h.params.clone().autodiff().require_grad());
        let tracked = Factorization {
            bases: bases.clone(),
            labels: self.factorization.labels.clone(),
            hallucinators: self
                .factorization
                .hallucinators
                .as_ref()
                .zip(hal_params.clone())
                .map(|(h, params)| Hallucinators {
                    shape: h.shape,
                    params,
                }),
        };
        let syn = Synthetic {
            fact: &tracked,
            classes: self.classes,
            per_class: self.bases_per_class,
            dsa: &self.dsa,
        };
        let objective = self.objective.loss(&syn, data, &mut rng)?;

        // HaBa's diversity term: two different hallucinators on the same bases should look
        // different to the adversary.
        let mut loss = objective.clone();
        let mut diversity = None;
        if let Some(adv) = &self.adversary {
            let (x0, x1) = self.pair(&tracked, bases.clone(), &mut rng)?;
            let d = adv.diversity(x0, x1, &self.cfg.contrastive_weights);
            diversity = Some(d.clone().inner());
            loss = loss + d;
        }
        let objective = objective.inner();

        let grads = loss.backward();
        let g_bases = bases
            .grad(&grads)
            .ok_or_else(|| Error::NonFinite("no gradient reached the bases".into()))?;
        let (sgd, st) = &mut self.bases_opt;
        self.factorization.bases = sgd.step(self.factorization.bases.clone(), g_bases, st);
        if let (Some(p), Some((sgd, st)), Some(hal)) = (
            &hal_params,
            &mut self.hal_opt,
            &mut self.factorization.hallucinators,
        ) {
            let g = p
                .grad(&grads)
                .ok_or_else(|| Error::NonFinite("no gradient reached the hallucinators".into()))?;
            hal.params = sgd.step(hal.params.clone(), g, st);
        }
        self.objective.update(&grads)?;

        // The adversary's own step, on a fresh pair of detached views.
        let mut adversary = None;
        let views = match self.adversary {
            Some(_) => Some(self.pair(
                &self.factorization,
                self.factorization.bases.clone(),
                &mut rng,
            )?),
            None => None,
        };
        if let (Some((x0, x1)), Some(adv)) = (views, &mut self.adversary) {
            let labels = &self.factorization.labels;
            adversary = Some(adv.step(x0, x1, labels, &self.cfg.contrastive_weights));
        }
        self.iteration += 1;
        Ok(PendingLosses {
            objective,
            diversity,
            adversary,
            lr: self.objective.learned_lr(),
            method: self.cfg.method,
            iteration: self.iteration,
        })
    }

    /// The same bases through two different hallucinators j != k (one pair for the batch,
    /// as the reference), augmented together as the reference does (one family, separate
    /// draws per sample).
    fn pair(
        &self,
        fact: &Factorization,
        bases: Tensor<4>,
        rng: &mut Rng,
    ) -> Result<(Tensor<4>, Tensor<4>)> {
        let m = fact.hallucinator_count().max(1);
        let n = fact.len();
        let j = rng.below(m);
        let k = (j + 1 + rng.below(m - 1)) % m;
        let x0 = fact.images(bases.clone(), &vec![j; n])?;
        let x1 = fact.images(bases, &vec![k; n])?;
        Ok(augment_pair(&self.dsa, x0, x1, rng.next_u64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_equal_counts_floats_like_the_paper() {
        let cifar = ImageShape {
            channels: 3,
            height: 32,
            width: 32,
        };
        let hal = |count, basis_channels| HallucinatorShape {
            count,
            basis_channels,
            channels: 3,
            kernel: 3,
            height: 32,
            width: 32,
        };
        // IPC 10: 307,200 floats; 5 hallucinators take 27,840; 279,360 / 30,720 = 9.09.
        assert_eq!(
            budget_bases_per_class(10, cifar, 10, &hal(5, 3)).unwrap(),
            9
        );
        // Single-channel bases cost a third: 279,360 / 10,240 = 27.3.
        assert_eq!(
            budget_bases_per_class(10, cifar, 10, &hal(5, 1)).unwrap(),
            27
        );
        // IPC 1: 30,720 - 27,840 = 2,880 floats, not one basis per class. Fewer RGB
        // hallucinators (5,568 floats each) never leave 30,720; three one-channel ones
        // (30 + 5,400 + 84 floats each) leave 14,178: one 1,024-float basis per class.
        let err = budget_bases_per_class(1, cifar, 10, &hal(5, 3)).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("less than one basis"), "{err}");
        assert!(
            err.contains("--hallucinators 3 --single-channel`: it fits 1 one-channel basis"),
            "{err}"
        );
        // Fashion-MNIST at 1 image per class: one basis is the whole budget.
        let fmnist = ImageShape {
            channels: 1,
            height: 28,
            width: 28,
        };
        let grey = HallucinatorShape {
            channels: 1,
            height: 28,
            width: 28,
            ..hal(5, 1)
        };
        let err = budget_bases_per_class(1, fmnist, 10, &grey).unwrap_err();
        assert!(err.to_string().contains("raise --ipc"), "{err}");
    }
}
