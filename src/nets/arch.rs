//! Architecture names, parsed from and printed as the reference names of
//! DatasetCondensation's `get_network` (`ConvNet`, `ConvNetBN`, `ResNet18BN_AP`, ...).

use std::fmt;
use std::str::FromStr;

use super::NetError;

/// Activation of a ConvNet block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Act {
    Relu,
    Sigmoid,
    /// Negative slope 0.01.
    LeakyRelu,
    /// x * sigmoid(x).
    Swish,
}

/// Normalisation of a ConvNet block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Norm {
    None,
    /// BatchNorm2d with running statistics.
    Batch,
    /// GroupNorm(C, C) with affine weights, as the reference writes instance norm.
    Instance,
    /// LayerNorm over [C, H, W] with element-wise affine weights.
    Layer,
    /// GroupNorm(4, C) with affine weights.
    Group,
}

/// Pooling after each ConvNet block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pool {
    None,
    /// Max pooling 2x2, stride 2.
    Max,
    /// Average pooling 2x2, stride 2.
    Avg,
}

/// The ConvNet family: `depth` blocks of conv3x3 + norm + act + pool, then a linear layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvNetConfig {
    pub width: usize,
    pub depth: usize,
    pub act: Act,
    pub norm: Norm,
    pub pool: Pool,
}

impl Default for ConvNetConfig {
    /// The reference default (`get_default_convnet_setting`): 128 wide, 3 deep, ReLU,
    /// instance norm, average pooling.
    fn default() -> Self {
        Self {
            width: 128,
            depth: 3,
            act: Act::Relu,
            norm: Norm::Instance,
            pool: Pool::Avg,
        }
    }
}

/// A network architecture. Serialised as its name (`"ConvNetBN"`, `"ResNet18"`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Arch {
    ConvNet(ConvNetConfig),
    /// AlexNet; `bn` adds BatchNorm after every conv (`AlexNetBN`).
    AlexNet {
        bn: bool,
    },
    /// VGG11 with instance norm, or BatchNorm with `bn` (`VGG11BN`).
    Vgg11 {
        bn: bool,
    },
    /// ResNet18 with instance norm or BatchNorm; `ap` is the `_AP` variant whose strided
    /// convs are replaced by stride-1 convs followed by 2x2 average pooling.
    ResNet18 {
        bn: bool,
        ap: bool,
    },
    LeNet,
    Mlp,
}

impl Default for Arch {
    fn default() -> Self {
        Arch::ConvNet(ConvNetConfig::default())
    }
}

impl Arch {
    /// The reference names this crate accepts (ConvNet also takes combinations of the
    /// suffixes, e.g. `ConvNetD4W64BN`, and any depth or width number).
    pub const REFERENCE_NAMES: &'static [&'static str] = &[
        "ConvNet",
        "ConvNetD1",
        "ConvNetD2",
        "ConvNetD3",
        "ConvNetD4",
        "ConvNetW32",
        "ConvNetW64",
        "ConvNetW128",
        "ConvNetW256",
        "ConvNetAS",
        "ConvNetAR",
        "ConvNetAL",
        "ConvNetASwish",
        "ConvNetASwishBN",
        "ConvNetNN",
        "ConvNetBN",
        "ConvNetIN",
        "ConvNetLN",
        "ConvNetGN",
        "ConvNetNP",
        "ConvNetMP",
        "ConvNetAP",
        "AlexNet",
        "AlexNetBN",
        "VGG11",
        "VGG11BN",
        "ResNet18",
        "ResNet18BN",
        "ResNet18_AP",
        "ResNet18BN_AP",
        "LeNet",
        "MLP",
    ];

    /// Whether the network keeps BatchNorm running statistics.
    pub fn has_batch_norm(&self) -> bool {
        match self {
            Arch::ConvNet(c) => c.norm == Norm::Batch,
            Arch::AlexNet { bn } | Arch::Vgg11 { bn } | Arch::ResNet18 { bn, .. } => *bn,
            Arch::LeNet | Arch::Mlp => false,
        }
    }
}

impl fmt::Display for Arch {
    /// Prints the reference name; a ConvNet prints its non-default settings as suffixes in
    /// the order D, W, A, N, P, so a single change gives the reference name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bn = |b: bool| if b { "BN" } else { "" };
        match self {
            Arch::ConvNet(c) => {
                let d = ConvNetConfig::default();
                f.write_str("ConvNet")?;
                if c.depth != d.depth {
                    write!(f, "D{}", c.depth)?;
                }
                if c.width != d.width {
                    write!(f, "W{}", c.width)?;
                }
                if c.act != d.act {
                    f.write_str(ACTS.iter().find(|a| a.1 == c.act).unwrap().0)?;
                }
                if c.norm != d.norm {
                    f.write_str(NORMS.iter().find(|n| n.1 == c.norm).unwrap().0)?;
                }
                if c.pool != d.pool {
                    f.write_str(POOLS.iter().find(|p| p.1 == c.pool).unwrap().0)?;
                }
                Ok(())
            }
            Arch::AlexNet { bn: b } => write!(f, "AlexNet{}", bn(*b)),
            Arch::Vgg11 { bn: b } => write!(f, "VGG11{}", bn(*b)),
            Arch::ResNet18 { bn: b, ap } => {
                write!(f, "ResNet18{}{}", bn(*b), if *ap { "_AP" } else { "" })
            }
            Arch::LeNet => f.write_str("LeNet"),
            Arch::Mlp => f.write_str("MLP"),
        }
    }
}

// Suffix tables, longest first where one is a prefix of another ("ASwish" before "AS").
const ACTS: &[(&str, Act)] = &[
    ("ASwish", Act::Swish),
    ("AS", Act::Sigmoid),
    ("AR", Act::Relu),
    ("AL", Act::LeakyRelu),
];
const NORMS: &[(&str, Norm)] = &[
    ("NN", Norm::None),
    ("BN", Norm::Batch),
    ("IN", Norm::Instance),
    ("LN", Norm::Layer),
    ("GN", Norm::Group),
];
const POOLS: &[(&str, Pool)] = &[("NP", Pool::None), ("MP", Pool::Max), ("AP", Pool::Avg)];

impl FromStr for Arch {
    type Err = NetError;

    /// Case-insensitive.
    fn from_str(s: &str) -> Result<Self, NetError> {
        let lower = s.trim().to_ascii_lowercase();
        let fixed = match lower.as_str() {
            "alexnet" => Some(Arch::AlexNet { bn: false }),
            "alexnetbn" => Some(Arch::AlexNet { bn: true }),
            "vgg11" => Some(Arch::Vgg11 { bn: false }),
            "vgg11bn" => Some(Arch::Vgg11 { bn: true }),
            "resnet18" => Some(Arch::ResNet18 {
                bn: false,
                ap: false,
            }),
            "resnet18bn" => Some(Arch::ResNet18 {
                bn: true,
                ap: false,
            }),
            "resnet18_ap" => Some(Arch::ResNet18 {
                bn: false,
                ap: true,
            }),
            "resnet18bn_ap" => Some(Arch::ResNet18 { bn: true, ap: true }),
            "lenet" => Some(Arch::LeNet),
            "mlp" => Some(Arch::Mlp),
            _ => None,
        };
        if let Some(arch) = fixed {
            return Ok(arch);
        }
        let unknown = || {
            NetError::Invalid(format!(
                "unknown architecture `{s}`; known: {}",
                Arch::REFERENCE_NAMES.join(", ")
            ))
        };
        let rest = lower.strip_prefix("convnet").ok_or_else(unknown)?;
        parse_convnet(rest).map(Arch::ConvNet).ok_or_else(unknown)
    }
}

/// Parses the ConvNet suffixes (already lower case); each kind may appear once.
fn parse_convnet(mut rest: &str) -> Option<ConvNetConfig> {
    let mut c = ConvNetConfig::default();
    let mut seen = [false; 5];
    let mut mark = |k: usize| !std::mem::replace(&mut seen[k], true);
    while !rest.is_empty() {
        if let Some((kind, n, tail)) = number_suffix(rest) {
            if n == 0 || !mark(kind) {
                return None;
            }
            if kind == 0 {
                c.depth = n;
            } else {
                c.width = n;
            }
            rest = tail;
            continue;
        }
        if let Some((a, tail)) = table_suffix(rest, ACTS) {
            (c.act, rest) = (a, tail);
            mark(2).then_some(())?;
        } else if let Some((n, tail)) = table_suffix(rest, NORMS) {
            (c.norm, rest) = (n, tail);
            mark(3).then_some(())?;
        } else if let Some((p, tail)) = table_suffix(rest, POOLS) {
            (c.pool, rest) = (p, tail);
            mark(4).then_some(())?;
        } else {
            return None;
        }
    }
    Some(c)
}

/// `d<digits>` (kind 0) or `w<digits>` (kind 1).
fn number_suffix(s: &str) -> Option<(usize, usize, &str)> {
    let kind = match s.as_bytes().first()? {
        b'd' => 0,
        b'w' => 1,
        _ => return None,
    };
    let digits = s[1..].bytes().take_while(u8::is_ascii_digit).count();
    let n = s[1..1 + digits].parse().ok()?;
    Some((kind, n, &s[1 + digits..]))
}

fn table_suffix<'a, T: Copy>(s: &'a str, table: &[(&str, T)]) -> Option<(T, &'a str)> {
    table.iter().find_map(|(name, v)| {
        let name = name.to_ascii_lowercase();
        s.strip_prefix(name.as_str()).map(|tail| (*v, tail))
    })
}

impl TryFrom<String> for Arch {
    type Error = NetError;
    fn try_from(s: String) -> Result<Self, NetError> {
        s.parse()
    }
}

impl From<Arch> for String {
    fn from(a: Arch) -> String {
        a.to_string()
    }
}
