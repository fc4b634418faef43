//! Networks, written functionally over one flat parameter vector.
//!
//! Distillation methods (MTT in particular) flatten the parameters and differentiate
//! through training steps, so a [`Network`] holds no weights: it knows the layout of
//! one `Tensor<1>` (in PyTorch's `named_parameters()` order of the reference module, so
//! buffers are comparable) and applies its layers to slices of it. BatchNorm running
//! statistics live apart, in a [`NetState`].

mod alexnet;
mod arch;
mod convnet;
mod layers;
mod lenet;
mod mlp;
mod resnet;
mod stack;
pub mod student;
#[cfg(test)]
mod tests;
mod vgg;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

pub use arch::{Act, Arch, ConvNetConfig, Norm, Pool};
pub use layers::{EPS, Init, MOMENTUM, ParamEntry, Params};

use crate::data::ImageShape;
use crate::rng::Rng;
use layers::{BnCtx, Layout, Linear};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    Invalid(String),
}

/// The error for an input shape an architecture cannot take, naming what it can.
fn unsupported(arch: &str, shape: ImageShape, supported: &str) -> NetError {
    NetError::Invalid(format!(
        "{arch} cannot take {}x{}x{} images; it supports {supported}",
        shape.channels, shape.height, shape.width
    ))
}

/// Non-trainable state: BatchNorm running statistics, `running_mean` then `running_var`
/// of each BatchNorm layer in order (see [`Network::buffers`]). `None` for networks
/// without BatchNorm.
#[derive(Clone, Debug, Default)]
pub struct NetState {
    pub running: Option<Tensor<1>>,
}

/// How BatchNorm layers normalise; networks without BatchNorm ignore it.
pub enum BnMode<'a> {
    /// Batch statistics; the running statistics are updated (detached) as PyTorch's
    /// `train()` mode does.
    Train(&'a mut NetState),
    /// Running statistics, as PyTorch's `eval()` mode.
    Eval(&'a NetState),
    /// Batch statistics without tracking (e.g. a freshly sampled network that only
    /// embeds, or an unrolled inner loop whose running statistics nobody reads).
    Batch,
}

#[derive(Clone, Debug)]
enum Body {
    ConvNet(convnet::ConvNet),
    AlexNet(alexnet::AlexNet),
    Vgg(vgg::Vgg),
    ResNet(resnet::ResNet),
    LeNet(lenet::LeNet),
    Mlp(mlp::Mlp),
}

/// An architecture instantiated for one input shape and class count.
#[derive(Clone, Debug)]
pub struct Network {
    arch: Arch,
    shape: ImageShape,
    classes: usize,
    layout: Layout,
    body: Body,
}

impl Network {
    pub fn new(arch: &Arch, shape: ImageShape, classes: usize) -> Result<Network, NetError> {
        if classes == 0 || shape.numel() == 0 {
            return Err(NetError::Invalid(format!(
                "{arch} needs at least one class and a non-empty image shape"
            )));
        }
        let mut l = Layout::default();
        let body = match *arch {
            Arch::ConvNet(ref cfg) => {
                if cfg.width == 0 || cfg.depth == 0 || cfg.width > 1 << 16 || cfg.depth > 32 {
                    return Err(NetError::Invalid(format!(
                        "ConvNet needs a width between 1 and 65536 and a depth between 1 and \
                         32 (got {arch}; the reference's is width 128, depth 3)"
                    )));
                }
                Body::ConvNet(convnet::ConvNet::new(&mut l, cfg, shape, classes)?)
            }
            Arch::AlexNet { bn } => {
                Body::AlexNet(alexnet::AlexNet::new(&mut l, bn, shape, classes)?)
            }
            Arch::Vgg11 { bn } => Body::Vgg(vgg::Vgg::new(&mut l, bn, shape, classes)?),
            Arch::ResNet18 { bn, ap } => {
                Body::ResNet(resnet::ResNet::new(&mut l, (bn, ap), shape, classes)?)
            }
            Arch::LeNet => Body::LeNet(lenet::LeNet::new(&mut l, shape, classes)?),
            Arch::Mlp => Body::Mlp(mlp::Mlp::new(&mut l, shape, classes)?),
        };
        let floats = l.num_params() as u128 + l.num_buffers() as u128;
        crate::device::fits_in_memory(Some(4 * floats)).map_err(|why| {
            NetError::Invalid(format!("{arch} has {floats} parameters, which {why}"))
        })?;
        Ok(Network {
            arch: *arch,
            shape,
            classes,
            layout: l,
            body,
        })
    }

    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    pub fn shape(&self) -> ImageShape {
        self.shape
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Length of the flat parameter vector.
    pub fn num_params(&self) -> usize {
        self.layout.num_params()
    }

    /// Every parameter tensor with its PyTorch name, shape and offset, in order.
    pub fn params(&self) -> &[ParamEntry] {
        &self.layout.params
    }

    /// BatchNorm running statistics (`NetState::running`), empty without BatchNorm.
    pub fn buffers(&self) -> &[ParamEntry] {
        &self.layout.buffers
    }

    /// Length of the features [`Network::embed`] returns.
    pub fn embed_dim(&self) -> usize {
        self.head().in_features()
    }

    /// A fresh parameter vector with PyTorch's default initialisation (the reference
    /// does not override it): conv and linear weights and biases from
    /// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5)), norm
    /// weights 1 and biases 0. Drawn on the host in layout order, then uploaded.
    pub fn init(&self, rng: &mut Rng, device: &Device) -> Tensor<1> {
        let mut v = Vec::with_capacity(self.num_params());
        for e in &self.layout.params {
            match e.init {
                Init::Uniform(b) => v.extend((0..e.numel()).map(|_| rng.range(-b, b))),
                Init::Const(c) => v.extend(std::iter::repeat_n(c, e.numel())),
            }
        }
        upload(v, device)
    }

    /// Fresh running statistics (mean 0, variance 1), as PyTorch starts them.
    pub fn init_state(&self, device: &Device) -> NetState {
        if self.layout.buffers.is_empty() {
            return NetState::default();
        }
        let mut v = Vec::with_capacity(self.layout.num_buffers());
        for e in &self.layout.buffers {
            let Init::Const(c) = e.init else {
                unreachable!("buffers start constant")
            };
            v.extend(std::iter::repeat_n(c, e.numel()));
        }
        NetState {
            running: Some(upload(v, device)),
        }
    }

    /// Logits [N, classes] for images `x` [N, C, H, W].
    pub fn forward(&self, params: &Tensor<1>, x: Tensor<4>, bn: BnMode<'_>) -> Tensor<2> {
        let features = self.embed(params, x, bn);
        self.head().apply(params, features)
    }

    /// Logits from features that [`Network::embed`] returned: the final linear layer alone,
    /// for callers that need both (HaBa's adversary) without running the body twice.
    pub fn classify(&self, params: &Tensor<1>, features: Tensor<2>) -> Tensor<2> {
        self.head().apply(params, features)
    }

    /// The features [N, embed_dim] that feed the final linear layer (what distribution
    /// matching compares). For ConvNet, AlexNet, VGG and ResNet this is the reference's
    /// `embed`; LeNet and MLP, which have none there, give their last hidden layer.
    pub fn embed(&self, params: &Tensor<1>, x: Tensor<4>, bn: BnMode<'_>) -> Tensor<2> {
        self.check(params, &x);
        let (running, eval, train) = match &bn {
            BnMode::Train(s) => (s.running.clone(), false, true),
            BnMode::Eval(s) => (s.running.clone(), true, false),
            BnMode::Batch => (None, false, false),
        };
        let buffers = self.layout.num_buffers();
        if buffers > 0 && (eval || train) {
            let len = running.as_ref().map(|r| r.dims()[0]);
            assert_eq!(
                len,
                Some(buffers),
                "{}: the NetState does not come from this network's init_state",
                self.arch
            );
        }
        let mut ctx = BnCtx::new(running, eval, train);
        let out = match &self.body {
            Body::ConvNet(n) => n.embed(params, x, &mut ctx),
            Body::AlexNet(n) => n.embed(params, x, &mut ctx),
            Body::Vgg(n) => n.embed(params, x, &mut ctx),
            Body::ResNet(n) => n.embed(params, x, &mut ctx),
            Body::LeNet(n) => n.embed(params, x, &mut ctx),
            Body::Mlp(n) => n.embed(params, x),
        };
        if let BnMode::Train(state) = bn {
            state.running = ctx.finish();
        }
        out
    }

    fn head(&self) -> &Linear {
        match &self.body {
            Body::ConvNet(n) => &n.head,
            Body::AlexNet(n) => &n.head,
            Body::Vgg(n) => &n.head,
            Body::ResNet(n) => &n.head,
            Body::LeNet(n) => &n.head,
            Body::Mlp(n) => &n.head,
        }
    }

    /// Shape mismatches are programming errors: panic with both shapes.
    fn check(&self, params: &Tensor<1>, x: &Tensor<4>) {
        assert_eq!(
            params.dims()[0],
            self.num_params(),
            "{}: parameter vector length",
            self.arch
        );
        self.check_images(x);
    }

    fn check_images(&self, x: &Tensor<4>) {
        let [_, c, h, w] = x.dims();
        let s = self.shape;
        assert!(
            [c, h, w] == [s.channels, s.height, s.width],
            "{}: built for {}x{}x{} images, got {c}x{h}x{w}",
            self.arch,
            s.channels,
            s.height,
            s.width
        );
    }
}

/// A network's parameters as one tensor per entry of [`Network::params`], in their order.
///
/// A slice of the flat vector differentiates into a zero-filled gradient of the whole
/// vector (Burn's slice backward), which autodiff then adds to the vector's gradient: a
/// student step reads twenty slices of its parameters, so one MTT step wrote and added
/// twenty whole-vector gradients on one thread, a twentieth of an iteration at 1 image
/// per class. Pieces differentiate one by one; the flat vector is put together where a loss
/// reads it ([`ParamPieces::flat`]).
#[derive(Clone, Debug)]
pub struct ParamPieces {
    offsets: Vec<usize>,
    pieces: Vec<Tensor<1>>,
}

impl ParamPieces {
    /// `flat`'s entries, cut as `net` lays them out.
    pub fn split(net: &Network, flat: &Tensor<1>) -> Self {
        assert_eq!(
            flat.dims()[0],
            net.num_params(),
            "{}: parameter vector length",
            net.arch
        );
        let entries = net.params();
        Self {
            offsets: entries.iter().map(|e| e.offset).collect(),
            pieces: entries
                .iter()
                .map(|e| layers::take(flat, e.offset, [e.numel()]))
                .collect(),
        }
    }

    /// Pieces laid out as `self`'s, e.g. a gradient of every entry.
    pub fn with_pieces(&self, pieces: Vec<Tensor<1>>) -> Self {
        assert_eq!(
            pieces.len(),
            self.pieces.len(),
            "one tensor per parameter entry"
        );
        Self {
            offsets: self.offsets.clone(),
            pieces,
        }
    }

    /// `f` of every piece, laid out as `self`'s.
    pub fn map(&self, f: impl FnMut(Tensor<1>) -> Tensor<1>) -> Self {
        self.with_pieces(self.pieces.iter().cloned().map(f).collect())
    }

    pub fn pieces(&self) -> &[Tensor<1>] {
        &self.pieces
    }

    pub fn into_pieces(self) -> Vec<Tensor<1>> {
        self.pieces
    }

    /// The flat parameter vector.
    pub fn flat(&self) -> Tensor<1> {
        Tensor::cat(self.pieces.clone(), 0)
    }
}

impl Params for ParamPieces {
    fn take<const D: usize>(&self, offset: usize, shape: [usize; D]) -> Tensor<D> {
        let i = self
            .offsets
            .binary_search(&offset)
            .expect("a piece starts at every parameter entry's offset");
        let piece = &self.pieces[i];
        assert_eq!(
            piece.dims()[0],
            shape.iter().product::<usize>(),
            "a whole entry"
        );
        piece.clone().reshape(shape)
    }
}

/// Mean cross-entropy of `logits` [N, K] against integer `labels`.
pub fn cross_entropy(logits: Tensor<2>, labels: &[u16]) -> Tensor<1> {
    let [n, _] = logits.dims();
    let device = logits.device();
    let idx: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    let idx = Tensor::<2, Int>::from_data(TensorData::new(idx, [n, 1]), &device);
    log_softmax(logits, 1).gather(1, idx).mean().neg()
}

fn upload(v: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}
