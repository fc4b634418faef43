//! The distillation loop: one [`Distiller::step`] is one iteration of the base objective
//! (see [`super::objective`]) with HaBa's contrastive terms, reading top to bottom as
//! bases -> hallucinators -> objective -> update -> adversary. The loop owns every
//! optimiser: the bases', the hallucinators' and those of the tensors an objective learns
//! itself.

use std::collections::BTreeMap;

use burn::tensor::Tensor;

use super::checkpoint::Checkpoint;
use super::config::DistillConfig;
use super::contrastive::{Adversary, augment_pair};
use super::objective::{Learned, Objective, Source, Synthetic};
use crate::augment::Dsa;
use crate::data::{ImageShape, Prepared};
use crate::error::{Error, Result};
use crate::eval::dsa_from_name;
use crate::haba::{Factorization, HallucinatorShape, Hallucinators, Storage, init_bases};
use crate::optim::{Sgd, SgdState};
use crate::rng::Rng;

/// Losses of one iteration, for the progress bar and `metrics.jsonl`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Losses {
    /// The base objective (DM's embedding distance, MTT's parameter distance, DC's
    /// gradient distance).
    pub objective: f32,
    /// HaBa's diversity term λ_cos * mean((cos + 1) / 2), 0 when off.
    pub diversity: f32,
    /// The adversary's own loss after its step, 0 when off.
    pub adversary: f32,
    /// The objective's own numbers: each learned scalar after the step (MTT's `lr`, α)
    /// and whatever it logs itself.
    #[serde(flatten)]
    pub scalars: BTreeMap<String, f32>,
}

/// The losses of one iteration still on the device (see [`Distiller::step_deferred`]).
pub struct PendingLosses {
    objective: Tensor<1>,
    diversity: Option<Tensor<1>>,
    adversary: Option<Tensor<1>>,
    scalars: Vec<(&'static str, Tensor<1>)>,
    method: &'static str,
    /// The iteration these are the losses of, counted from 1.
    iteration: usize,
}

impl PendingLosses {
    /// Every loss in one tensor (objective, diversity, adversary, then the objective's
    /// scalars; 0 where a term is off), so that reading them back is one transfer.
    pub fn stacked(&self) -> Tensor<1> {
        let device = self.objective.device();
        let or_zero = |t: &Option<Tensor<1>>| {
            t.clone()
                .unwrap_or_else(|| Tensor::<1>::zeros([1], &device))
        };
        let mut all = vec![
            self.objective.clone(),
            or_zero(&self.diversity),
            or_zero(&self.adversary),
        ];
        all.extend(self.scalars.iter().map(|(_, t)| t.clone()));
        Tensor::cat(all, 0)
    }

    /// The losses from the values of [`stacked`](Self::stacked); an error naming the
    /// iteration when the objective is not a number.
    pub fn losses(&self, values: &[f32]) -> Result<Losses> {
        let expected = 3 + self.scalars.len();
        let ([objective, diversity, adversary, rest @ ..], true) =
            (values, values.len() == expected)
        else {
            return Err(Error::Device(format!(
                "read {} losses back, expected {expected}",
                values.len()
            )));
        };
        if !objective.is_finite() {
            return Err(Error::NonFinite(format!(
                "the {} loss became {objective} at iteration {}; the last checkpoint on disk \
                 is kept: lower the learning rates (`lr_bases`, `lr_hallucinators`) and start \
                 again or resume",
                self.method, self.iteration
            )));
        }
        Ok(Losses {
            objective: *objective,
            diversity: *diversity,
            adversary: *adversary,
            scalars: self
                .scalars
                .iter()
                .zip(rest)
                .map(|((name, _), v)| (name.to_string(), *v))
                .collect(),
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

/// A tensor an objective learns, with the loop's optimiser state for it.
struct LearnedState {
    spec: Learned,
    velocity: SgdState,
}

impl LearnedState {
    /// Its checkpoint name: `<method>.<name>`.
    fn key(&self, method: &str) -> String {
        format!("{method}.{}", self.spec.name)
    }

    /// One SGD step on the value, then its floor.
    fn step(&mut self, grad: Tensor<1>) {
        let v = self
            .spec
            .sgd
            .step(self.spec.value.clone(), grad, &mut self.velocity);
        self.spec.value = match self.spec.floor {
            Some(floor) => v.clamp_min(floor),
            None => v,
        };
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
                "Try `hallucinators = {}`{}{}: it fits {n} {}{} per class.",
                h.count,
                if grey {
                    " with `single_channel = true`"
                } else {
                    ""
                },
                if h.count < 2 {
                    " and `contrastive = false`"
                } else {
                    ""
                },
                if grey { "one-channel " } else { "" },
                if n == 1 { "basis" } else { "bases" },
            )
        }
        None => "No hallucinator fits: raise `ipc`.".into(),
    };
    Err(Error::Config(format!(
        "`budget_equal = true`: at {ipc} image(s) per class the budget is {budget} floats; {} \
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
    /// The tensors the objective learns, and their optimisers.
    learned: Vec<LearnedState>,
    bases_opt: (Sgd, SgdState<4>),
    hal_opt: Option<(Sgd, SgdState)>,
    pub adversary: Option<Adversary>,
}

/// SGD at `lr` and `momentum`, with its empty state.
fn sgd<const D: usize>(lr: f32, momentum: f32) -> (Sgd, SgdState<D>) {
    let s = Sgd {
        lr,
        momentum,
        weight_decay: 0.0,
    };
    let st = s.state();
    (s, st)
}

impl Distiller {
    /// A fresh run: bases from real images (or noise), new hallucinators and adversary,
    /// and the configured objective (MTT reads its expert buffer here).
    pub fn new(cfg: DistillConfig, data: &Prepared) -> Result<Self> {
        cfg.validate()?;
        let source = Source {
            dataset: &cfg.dataset,
            preprocess: cfg.preprocessing()?,
        };
        let objective = cfg.objective.init(cfg.ipc, data, source)?;
        Self::with_objective(cfg, data, objective)
    }

    /// A fresh run with an objective built by the caller (e.g. MTT over experts in memory).
    pub fn with_objective(
        mut cfg: DistillConfig,
        data: &Prepared,
        objective: Box<dyn Objective>,
    ) -> Result<Self> {
        cfg.validate()?;
        // The run records the rates it uses, the objective's own where none were set.
        let rates = cfg.rates();
        cfg.lr_bases = Some(rates.lr_bases);
        cfg.momentum_bases = Some(rates.momentum_bases);
        cfg.lr_hallucinators = Some(rates.lr_hallucinators);
        cfg.momentum_hallucinators = Some(rates.momentum_hallucinators);
        let device = data.train.images.device();
        let mut rng = Rng::new(cfg.seed);
        let (factorization, bases_per_class) = new_factorization(&cfg, data, &mut rng)?;
        let adversary = if cfg.haba && cfg.contrastive {
            Some(Adversary::new(data.shape, data.classes, &mut rng, &device)?)
        } else {
            None
        };
        let learned = objective
            .learned()
            .into_iter()
            .map(|spec| LearnedState {
                velocity: spec.sgd.state(),
                spec,
            })
            .collect();
        Ok(Self {
            dsa: dsa_from_name(&cfg.dsa)?,
            bases_opt: sgd(rates.lr_bases, rates.momentum_bases),
            hal_opt: cfg
                .haba
                .then(|| sgd(rates.lr_hallucinators, rates.momentum_hallucinators)),
            cfg,
            factorization,
            iteration: 0,
            bases_per_class,
            classes: data.classes,
            image: data.shape,
            objective,
            learned,
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
        let method = self.cfg.objective.name();
        for l in &self.learned {
            let key = l.key(method);
            ck.put(&key, &l.spec.value);
            ck.put_opt(&format!("{key}.velocity"), l.velocity.velocity.as_ref());
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
        let method = self.cfg.objective.name();
        for l in &mut self.learned {
            let key = l.key(method);
            let len = l.spec.value.dims();
            l.spec.value = ck.require(&key, len)?;
            l.velocity.velocity = ck.take(&format!("{key}.velocity"), len)?;
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
        self.learned
            .iter()
            .find(|l| l.spec.training_lr)
            .map(|l| l.spec.value.clone().into_scalar::<f32>())
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
        let tracked = track(&self.factorization);
        let learned: Vec<Tensor<1>> = self
            .learned
            .iter()
            .map(|l| l.spec.value.clone().autodiff().require_grad())
            .collect();
        let syn = Synthetic {
            fact: &tracked,
            classes: self.classes,
            per_class: self.bases_per_class,
            dsa: &self.dsa,
        };
        let out = self.objective.loss(&syn, &learned, data, &mut rng)?;

        // HaBa's diversity term: two different hallucinators on the same bases should look
        // different to the adversary.
        let mut loss = out.loss.clone();
        let mut diversity = None;
        if let Some(adv) = &self.adversary {
            let (x0, x1) = self.pair(&tracked, tracked.bases.clone(), &mut rng)?;
            let d = adv.diversity(x0, x1, &self.cfg.contrastive_weights);
            diversity = Some(d.clone().inner());
            loss = loss + d;
        }

        let grads = loss.backward();
        let missing = |what: &str| Error::NonFinite(format!("no gradient reached the {what}"));
        let g_bases = tracked.bases.grad(&grads).ok_or_else(|| missing("bases"))?;
        let (sgd, st) = &mut self.bases_opt;
        self.factorization.bases = sgd.step(self.factorization.bases.clone(), g_bases, st);
        if let (Some(t), Some((sgd, st)), Some(hal)) = (
            &tracked.hallucinators,
            &mut self.hal_opt,
            &mut self.factorization.hallucinators,
        ) {
            let g = t
                .params
                .grad(&grads)
                .ok_or_else(|| missing("hallucinators"))?;
            hal.params = sgd.step(hal.params.clone(), g, st);
        }
        for (l, t) in self.learned.iter_mut().zip(&learned) {
            l.step(t.grad(&grads).ok_or_else(|| missing(l.spec.name))?);
        }

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

        // The learned scalars after the step, then the objective's own.
        let mut scalars: Vec<(&'static str, Tensor<1>)> = self
            .learned
            .iter()
            .filter(|l| l.spec.value.dims() == [1])
            .map(|l| (l.spec.name, l.spec.value.clone()))
            .collect();
        scalars.extend(out.scalars);
        Ok(PendingLosses {
            objective: out.loss.inner(),
            diversity,
            adversary,
            scalars,
            method: self.cfg.objective.name(),
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

/// The factorization's values on fresh leaves that track their gradients.
fn track(f: &Factorization) -> Factorization {
    Factorization {
        bases: f.bases.clone().autodiff().require_grad(),
        labels: f.labels.clone(),
        hallucinators: f.hallucinators.as_ref().map(|h| Hallucinators {
            shape: h.shape,
            params: h.params.clone().autodiff().require_grad(),
        }),
    }
}

/// A run's starting set: bases from real images (or noise), sized to the budget when
/// asked, and fresh hallucinators; with the bases per class.
fn new_factorization(
    cfg: &DistillConfig,
    data: &Prepared,
    rng: &mut Rng,
) -> Result<(Factorization, usize)> {
    let (classes, image) = (data.classes, data.shape);
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
            "`kernel = {}`: larger than the {}x{} images",
            cfg.kernel, image.height, image.width
        )));
    }
    let per_class = if cfg.haba && cfg.budget_equal {
        budget_bases_per_class(cfg.ipc, image, classes, &hal_shape)?
    } else {
        cfg.ipc
    };
    let (channels, views, hal_floats) = if cfg.haba {
        let (m, p) = (cfg.hallucinators as u128, hal_shape.num_params() as u128);
        (hal_shape.basis_channels, m, p)
    } else {
        (image.channels, 1, 0)
    };
    // A lower bound on what a step holds: the bases with their gradient and momentum,
    // the hallucinators likewise, and every image the bases make.
    let sets = classes as u128 * per_class as u128;
    let per_basis = (channels * image.height * image.width) as u128;
    let floats = 3 * sets * per_basis + sets * views * image.numel() as u128 + 3 * hal_floats;
    crate::device::fits_in_memory(Some(4 * floats)).map_err(|why| {
        Error::Config(format!(
            "`ipc = {}`: {per_class} bases per class for {classes} classes {why}: lower it",
            cfg.ipc
        ))
    })?;
    let (bases, labels) = init_bases(&data.train, classes, per_class, channels, cfg.init, rng)?;
    let device = data.train.images.device();
    let hallucinators = cfg.haba.then(|| Hallucinators {
        shape: hal_shape,
        params: hal_shape.init(rng, &device, cfg.near_identity),
    });
    let fact = Factorization {
        bases,
        labels,
        hallucinators,
    };
    Ok((fact, per_class))
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
            err.contains(
                "`hallucinators = 3` with `single_channel = true`: it fits 1 one-channel basis"
            ),
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
        assert!(err.to_string().contains("raise `ipc`"), "{err}");
    }
}
