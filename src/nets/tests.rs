//! Tests against the reference definitions: parameter counts worked out by hand from
//! DatasetCondensation's `networks.py`, and a float64 ConvNet written independently here.

use burn::tensor::{Device, Tensor, TensorData};

use super::*;

fn shape(channels: usize, side: usize) -> ImageShape {
    ImageShape {
        channels,
        height: side,
        width: side,
    }
}

fn net(name: &str, s: ImageShape, classes: usize) -> Network {
    Network::new(&name.parse().unwrap(), s, classes).unwrap()
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn upload4(v: &[f32], dims: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(v.to_vec(), dims), device)
}

fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal()).collect()
}

/// Parameter counts for 10 classes on 3x32x32 and 1x28x28, by hand from the reference:
/// - ConvNet (width 128, depth 3, instance norm, 3x3 convs with bias): first conv
///   128*3*9+128 = 3584 (1 channel: 128*9+128 = 1280), each further conv
///   128*128*9+128 = 147584, each norm 2*128 = 256, classifier 128*4*4*10+10 = 20490;
///   3584+147584*2+256*3+20490 = 320010 (1 channel, padding 3 keeps 32x32: 317706).
/// - D1/D2/D4 change the classifier to 128*16*16, 128*8*8, 128*2*2 inputs; W32/W64/W256
///   scale every conv and norm; NN drops the 768 norm parameters; LN's affine weights
///   are [128,32,32], [128,16,16], [128,8,8] twice (344064 instead of 768); NP feeds
///   128*32*32 features to the classifier (1310730).
/// - AlexNet: convs 128*C*25+128, 192*128*25+192 = 614592, 256*192*9+256 = 442624,
///   192*256*9+192 = 442560, 192*192*9+192 = 331968, fc 192*16*10+10 = 30730;
///   BN adds 2*(128+192+256+192+192) = 1920.
/// - VGG11: convs 64*C*9+64, 73856, 295168, 590080, 1180160, 3*2359808; norms
///   2*(64+128+256+256+4*512) = 5504; classifier 5130.
/// - ResNet18 (convs without bias): 11173962 for 3x32x32 (the known CIFAR figure);
///   1 channel saves 64*2*9 = 1152. The _AP variants flatten 512*4*4 (3 channels) or
///   512*3*3 (1 channel) features: classifier 81930 or 46090 instead of 5130.
/// - LeNet: 6*C*25+6, 2416, 48120, 10164, 850. MLP: 3072*128+128 (784*128+128), 16512,
///   1290.
const COUNTS: &[(&str, usize, usize)] = &[
    ("ConvNet", 320010, 317706),
    ("ConvNetD1", 331530, 329226),
    ("ConvNetD2", 233610, 231306),
    ("ConvNetD3", 320010, 317706),
    ("ConvNetD4", 452490, 450186),
    ("ConvNetW32", 24714, 24138),
    ("ConvNetW64", 86282, 85130),
    ("ConvNetW128", 320010, 317706),
    ("ConvNetW256", 1229834, 1225226),
    ("ConvNetAS", 320010, 317706),
    ("ConvNetAR", 320010, 317706),
    ("ConvNetAL", 320010, 317706),
    ("ConvNetASwish", 320010, 317706),
    ("ConvNetASwishBN", 320010, 317706),
    ("ConvNetNN", 319242, 316938),
    ("ConvNetBN", 320010, 317706),
    ("ConvNetIN", 320010, 317706),
    ("ConvNetLN", 663306, 661002),
    ("ConvNetGN", 320010, 317706),
    ("ConvNetNP", 1610250, 1607946),
    ("ConvNetMP", 320010, 317706),
    ("ConvNetAP", 320010, 317706),
    ("AlexNet", 1872202, 1865802),
    ("AlexNetBN", 1874122, 1867722),
    ("VGG11", 9231114, 9229962),
    ("VGG11BN", 9231114, 9229962),
    ("ResNet18", 11173962, 11172810),
    ("ResNet18BN", 11173962, 11172810),
    ("ResNet18_AP", 11250762, 11213770),
    ("ResNet18BN_AP", 11250762, 11213770),
    ("LeNet", 62006, 61706),
    ("MLP", 411146, 118282),
];

#[test]
fn parameter_counts_match_reference() {
    assert_eq!(COUNTS.len(), Arch::REFERENCE_NAMES.len());
    for &(name, rgb, gray) in COUNTS {
        assert_eq!(
            net(name, shape(3, 32), 10).num_params(),
            rgb,
            "{name} 3x32x32"
        );
        assert_eq!(
            net(name, shape(1, 28), 10).num_params(),
            gray,
            "{name} 1x28x28"
        );
    }
}

#[test]
fn names_parse_print_and_serialise() {
    for name in Arch::REFERENCE_NAMES {
        let arch: Arch = name.parse().unwrap();
        assert_eq!(arch.to_string().parse::<Arch>().unwrap(), arch, "{name}");
        assert_eq!(name.to_lowercase().parse::<Arch>().unwrap(), arch);
        let json = serde_json::to_string(&arch).unwrap();
        assert_eq!(serde_json::from_str::<Arch>(&json).unwrap(), arch);
    }
    // A single change prints as the reference name; defaults print as plain ConvNet.
    for name in [
        "ConvNetD1",
        "ConvNetW32",
        "ConvNetAL",
        "ConvNetBN",
        "ConvNetMP",
        "AlexNetBN",
    ] {
        assert_eq!(name.parse::<Arch>().unwrap().to_string(), name);
    }
    assert_eq!(
        "ConvNetASwishBN".parse::<Arch>().unwrap().to_string(),
        "ConvNetASwishBN"
    );
    assert_eq!(
        "resnet18bn_ap".parse::<Arch>().unwrap().to_string(),
        "ResNet18BN_AP"
    );
    assert_eq!("ConvNetIN".parse::<Arch>().unwrap().to_string(), "ConvNet");
    let c = match "convnetd4w64ln".parse::<Arch>().unwrap() {
        Arch::ConvNet(c) => c,
        other => panic!("{other}"),
    };
    assert_eq!((c.depth, c.width, c.norm), (4, 64, Norm::Layer));
    for bad in [
        "ConvNetD0",
        "ConvNetBNIN",
        "ConvNetXY",
        "ResNet50",
        "",
        "ConvNetW",
    ] {
        let err = bad.parse::<Arch>().unwrap_err().to_string();
        assert!(err.contains("ResNet18BN_AP"), "{bad}: {err}");
    }
}

#[test]
fn layout_follows_named_parameters() {
    let names = |n: &Network| {
        n.params()
            .iter()
            .map(|e| e.name.clone())
            .collect::<Vec<_>>()
    };
    let convnet = net("ConvNet", shape(3, 32), 10);
    assert_eq!(
        names(&convnet),
        [
            "features.0.weight",
            "features.0.bias",
            "features.1.weight",
            "features.1.bias",
            "features.4.weight",
            "features.4.bias",
            "features.5.weight",
            "features.5.bias",
            "features.8.weight",
            "features.8.bias",
            "features.9.weight",
            "features.9.bias",
            "classifier.weight",
            "classifier.bias",
        ]
    );
    assert_eq!(convnet.params()[12].shape, [10, 2048]);
    let mut end = 0;
    for e in convnet.params() {
        assert_eq!(e.offset, end);
        end += e.numel();
    }
    assert_eq!(end, convnet.num_params());

    let alex = names(&net("AlexNetBN", shape(3, 32), 10));
    let convs: Vec<_> = alex
        .iter()
        .filter(|n| n.ends_with(".bias"))
        .step_by(2)
        .collect();
    assert_eq!(
        convs,
        [
            "features.0.bias",
            "features.4.bias",
            "features.8.bias",
            "features.11.bias",
            "features.14.bias",
            "fc.bias"
        ]
    );
    let vgg = names(&net("VGG11", shape(1, 28), 10));
    assert!(vgg.contains(&"features.26.weight".to_string()), "{vgg:?}");
    let resnet = net("ResNet18BN_AP", shape(3, 32), 10);
    let rn = names(&resnet);
    assert_eq!(&rn[..3], ["conv1.weight", "bn1.weight", "bn1.bias"]);
    assert!(rn.contains(&"layer2.0.shortcut.2.weight".to_string()));
    assert!(
        names(&net("ResNet18", shape(3, 32), 10)).contains(&"layer4.0.shortcut.1.bias".to_string())
    );
    let buffers: Vec<_> = resnet.buffers().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(&buffers[..2], ["bn1.running_mean", "bn1.running_var"]);
    // 20 BatchNorm layers: stem, 2 per block, 3 shortcuts.
    assert_eq!(buffers.len(), 2 * 20);
    assert!(net("ConvNet", shape(3, 32), 10).buffers().is_empty());
}

#[test]
fn unsupported_shapes_are_errors_naming_what_works() {
    let err = |name: &str, s| {
        Network::new(&name.parse().unwrap(), s, 10)
            .unwrap_err()
            .to_string()
    };
    assert!(err("AlexNet", shape(3, 64)).contains("3x32x32"));
    assert!(err("VGG11", shape(3, 28)).contains("1x28x28"));
    assert!(err("LeNet", shape(3, 28)).contains("3x32x32"));
    assert!(err("MLP", shape(3, 28)).contains("3x32x32"));
    assert!(err("ResNet18_AP", shape(1, 32)).contains("1x28x28"));
    assert!(err("ResNet18", shape(3, 64)).contains("25 to 56"));
    assert!(err("ConvNetD4", shape(3, 8)).contains("16 pixels"));
    let gn = Arch::ConvNet(ConvNetConfig {
        width: 6,
        norm: Norm::Group,
        ..Default::default()
    });
    assert!(Network::new(&gn, shape(3, 32), 10).is_err());
    // ConvNet follows the input size (64x64 as for Tiny ImageNet).
    assert_eq!(net("ConvNet", shape(3, 64), 200).embed_dim(), 128 * 8 * 8);
}

#[test]
fn init_is_pytorch_default() {
    let n = net("ConvNetLN", shape(3, 32), 10);
    let p = to_vec(n.init(&mut Rng::new(1), &Device::flex()));
    assert_eq!(p.len(), n.num_params());
    let bound = |name: &str| match n.params().iter().find(|e| e.name == name).unwrap().init {
        Init::Uniform(b) => b,
        Init::Const(_) => panic!("{name}"),
    };
    assert_eq!(bound("features.0.weight"), 1.0 / 27f32.sqrt());
    assert_eq!(bound("features.4.bias"), 1.0 / 1152f32.sqrt());
    assert_eq!(bound("classifier.weight"), 1.0 / 2048f32.sqrt());
    let mut fan_in = 0;
    for e in n.params() {
        let v = &p[e.offset..e.offset + e.numel()];
        let is_norm = ["features.1.", "features.5.", "features.9."]
            .iter()
            .any(|k| e.name.starts_with(k));
        match e.init {
            Init::Const(c) => {
                assert!(is_norm, "{}", e.name);
                assert_eq!(c, if e.name.ends_with("weight") { 1.0 } else { 0.0 });
                assert!(v.iter().all(|&x| x == c));
            }
            Init::Uniform(b) => {
                assert!(!is_norm, "{}", e.name);
                if e.name.ends_with("weight") {
                    fan_in = e.shape[1..].iter().product::<usize>();
                }
                // Biases share their weight's bound.
                assert_eq!(b, 1.0 / (fan_in as f32).sqrt(), "{}", e.name);
                assert!(v.iter().all(|x| x.abs() <= b), "{}", e.name);
                if v.len() >= 1000 {
                    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let mean = v.iter().sum::<f32>() / v.len() as f32;
                    let var = v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32;
                    assert!(max > 0.99 * b && mean.abs() < 0.1 * b, "{}", e.name);
                    assert!((var / (b * b / 3.0) - 1.0).abs() < 0.05, "{}", e.name);
                }
            }
        }
    }
    let again = to_vec(n.init(&mut Rng::new(1), &Device::flex()));
    assert_eq!(p, again);
}

#[test]
fn every_arch_runs_on_both_shapes() {
    let dev = Device::flex();
    let mut rng = Rng::new(3);
    for &(name, _, _) in COUNTS {
        for s in [shape(3, 32), shape(1, 28)] {
            let n = net(name, s, 10);
            // A few runs cover the big families.
            let big = name.starts_with("ResNet")
                || name.starts_with("VGG")
                || name.starts_with("AlexNet");
            let chosen = [
                ("ResNet18", 3),
                ("ResNet18BN_AP", 1),
                ("VGG11BN", 3),
                ("AlexNetBN", 1),
            ];
            if big && !chosen.contains(&(name, s.channels)) {
                continue;
            }
            let p = n.init(&mut rng, &dev);
            let x = upload4(
                &randn(&mut rng, 2 * s.numel()),
                [2, s.channels, s.height, s.width],
                &dev,
            );
            let mut state = n.init_state(&dev);
            let e = n.embed(&p, x.clone(), BnMode::Batch);
            assert_eq!(e.dims(), [2, n.embed_dim()], "{name}");
            let y = n.forward(&p, x, BnMode::Train(&mut state));
            assert_eq!(y.dims(), [2, 10], "{name}");
            assert!(to_vec(y).iter().all(|v| v.is_finite()), "{name}");
            assert_eq!(state.running.is_some(), n.arch().has_batch_norm(), "{name}");
        }
    }
    let dims = |name: &str| net(name, shape(3, 32), 10).embed_dim();
    assert_eq!(
        (dims("ConvNet"), dims("ResNet18"), dims("ResNet18_AP")),
        (2048, 512, 8192)
    );
    assert_eq!(
        (dims("AlexNet"), dims("VGG11"), dims("LeNet"), dims("MLP")),
        (3072, 512, 84, 128)
    );
}

// ---------------------------------------------------------------------------------------
// An independent float64 ConvNet, reading the flat vector in PyTorch's order.

enum RefBn<'a> {
    Batch,
    Train(&'a mut Vec<f64>),
    Eval(&'a [f64]),
}

struct Dims {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
}

fn ref_conv(
    x: &[f64],
    d: &Dims,
    wt: &[f64],
    b: &[f64],
    cout: usize,
    pad: usize,
) -> (Vec<f64>, Dims) {
    let (h2, w2) = (d.h + 2 * pad - 2, d.w + 2 * pad - 2);
    let mut y = vec![0.0; d.n * cout * h2 * w2];
    for n in 0..d.n {
        for o in 0..cout {
            for i in 0..h2 {
                for j in 0..w2 {
                    let mut s = b[o];
                    for c in 0..d.c {
                        for ki in 0..3 {
                            for kj in 0..3 {
                                let (yi, xj) = (
                                    (i + ki) as isize - pad as isize,
                                    (j + kj) as isize - pad as isize,
                                );
                                if yi < 0 || xj < 0 || yi >= d.h as isize || xj >= d.w as isize {
                                    continue;
                                }
                                let xv = x[((n * d.c + c) * d.h + yi as usize) * d.w + xj as usize];
                                s += xv * wt[((o * d.c + c) * 3 + ki) * 3 + kj];
                            }
                        }
                    }
                    y[((n * cout + o) * h2 + i) * w2 + j] = s;
                }
            }
        }
    }
    (
        y,
        Dims {
            n: d.n,
            c: cout,
            h: h2,
            w: w2,
        },
    )
}

/// Normalises `x` in place over groups of `len` consecutive values: biased variance.
fn ref_standardise(x: &mut [f64], len: usize) {
    for g in x.chunks_mut(len) {
        let m = g.iter().sum::<f64>() / len as f64;
        let v = g.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / len as f64;
        g.iter_mut().for_each(|a| *a = (*a - m) / (v + 1e-5).sqrt());
    }
}

fn ref_convnet(
    cfg: &ConvNetConfig,
    s: ImageShape,
    p: &[f64],
    x: &[f64],
    n: usize,
    mut bn: RefBn,
) -> Vec<f64> {
    let classes = 3; // every test ConvNet has 3 classes
    let mut at = 0;
    let mut take = |len: usize| {
        at += len;
        p[at - len..at].to_vec()
    };
    let mut stat_at = 0;
    let mut d = Dims {
        n,
        c: s.channels,
        h: s.height,
        w: s.width,
    };
    let mut x = x.to_vec();
    for depth in 0..cfg.depth {
        let pad = if s.channels == 1 && depth == 0 { 3 } else { 1 };
        let wt = take(cfg.width * d.c * 9);
        let b = take(cfg.width);
        (x, d) = ref_conv(&x, &d, &wt, &b, cfg.width, pad);
        let hw = d.h * d.w;
        let chw = d.c * hw;
        match cfg.norm {
            Norm::None => {}
            Norm::Instance | Norm::Group => {
                let groups = if cfg.norm == Norm::Group { 4 } else { d.c };
                ref_standardise(&mut x, chw / groups);
                let (g, b) = (take(d.c), take(d.c));
                x.iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v = *v * g[i / hw % d.c] + b[i / hw % d.c]);
            }
            Norm::Layer => {
                ref_standardise(&mut x, chw);
                let (g, b) = (take(chw), take(chw));
                x.iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v = *v * g[i % chw] + b[i % chw]);
            }
            Norm::Batch => {
                let (g, b) = (take(d.c), take(d.c));
                let count = (n * hw) as f64;
                for c in 0..d.c {
                    let idx: Vec<usize> = (0..n)
                        .flat_map(|k| (0..hw).map(move |i| (k * d.c + c) * hw + i))
                        .collect();
                    let mean = idx.iter().map(|&i| x[i]).sum::<f64>() / count;
                    let var = idx.iter().map(|&i| (x[i] - mean).powi(2)).sum::<f64>() / count;
                    let (mean, var) = match &mut bn {
                        RefBn::Eval(r) => (r[stat_at + c], r[stat_at + d.c + c]),
                        RefBn::Train(r) => {
                            r[stat_at + c] = 0.9 * r[stat_at + c] + 0.1 * mean;
                            r[stat_at + d.c + c] =
                                0.9 * r[stat_at + d.c + c] + 0.1 * var * count / (count - 1.0);
                            (mean, var)
                        }
                        RefBn::Batch => (mean, var),
                    };
                    for &i in &idx {
                        x[i] = (x[i] - mean) / (var + 1e-5).sqrt() * g[c] + b[c];
                    }
                }
                stat_at += 2 * d.c;
            }
        }
        for v in x.iter_mut() {
            let sig = 1.0 / (1.0 + (-*v).exp());
            *v = match cfg.act {
                Act::Relu => v.max(0.0),
                Act::Sigmoid => sig,
                Act::LeakyRelu => {
                    if *v < 0.0 {
                        0.01 * *v
                    } else {
                        *v
                    }
                }
                Act::Swish => *v * sig,
            };
        }
        if cfg.pool != Pool::None {
            let (h2, w2) = (d.h / 2, d.w / 2);
            let mut y = vec![0.0; n * d.c * h2 * w2];
            for (o, out) in y.iter_mut().enumerate() {
                let (nc, i, j) = (o / (h2 * w2), o / w2 % h2, o % w2);
                let win = [(0, 0), (0, 1), (1, 0), (1, 1)]
                    .map(|(a, b)| x[(nc * d.h + 2 * i + a) * d.w + 2 * j + b]);
                *out = if cfg.pool == Pool::Max {
                    win.iter().fold(f64::MIN, |m, &v| m.max(v))
                } else {
                    win.iter().sum::<f64>() / 4.0
                };
            }
            (x, d.h, d.w) = (y, h2, w2);
        }
    }
    let fin = d.c * d.h * d.w;
    let (wt, b) = (take(classes * fin), take(classes));
    let mut y = vec![0.0; n * classes];
    for k in 0..n {
        for o in 0..classes {
            y[k * classes + o] = b[o]
                + (0..fin)
                    .map(|i| wt[o * fin + i] * x[k * fin + i])
                    .sum::<f64>();
        }
    }
    y
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

/// Small ConvNets covering every norm, activation and pooling.
fn small_configs() -> Vec<(ConvNetConfig, ImageShape)> {
    let c = |width, depth, act, norm, pool| ConvNetConfig {
        width,
        depth,
        act,
        norm,
        pool,
    };
    vec![
        (c(2, 1, Act::Relu, Norm::Instance, Pool::Avg), shape(1, 4)),
        (c(2, 1, Act::Relu, Norm::Instance, Pool::Avg), shape(2, 4)),
        (c(3, 2, Act::LeakyRelu, Norm::Batch, Pool::Max), shape(2, 4)),
        (c(2, 2, Act::Sigmoid, Norm::Layer, Pool::Avg), shape(3, 4)),
        (c(4, 1, Act::Swish, Norm::Group, Pool::None), shape(2, 3)),
        (c(2, 2, Act::Relu, Norm::None, Pool::Avg), shape(1, 4)),
    ]
}

#[test]
fn convnet_forward_matches_float64() {
    let dev = Device::flex();
    let mut rng = Rng::new(11);
    for (cfg, s) in small_configs() {
        let n = Network::new(&Arch::ConvNet(cfg), s, 3).unwrap();
        // Random (not default) norm weights so the affine parts are exercised.
        let p = randn(&mut rng, n.num_params());
        let x = randn(&mut rng, 3 * s.numel());
        let pt = Tensor::from_data(TensorData::new(p.clone(), [p.len()]), &dev);
        let xt = upload4(&x, [3, s.channels, s.height, s.width], &dev);
        let got = to_vec(n.forward(&pt, xt, BnMode::Batch));
        let want = ref_convnet(&cfg, s, &f64s(&p), &f64s(&x), 3, RefBn::Batch);
        assert_close(&got, &want, 1e-4, &format!("{}", Arch::ConvNet(cfg)));
    }
}

#[test]
fn batchnorm_running_stats_follow_pytorch() {
    let dev = Device::flex();
    let mut rng = Rng::new(5);
    let (cfg, s) = small_configs()[2];
    let n = Network::new(&Arch::ConvNet(cfg), s, 3).unwrap();
    assert_eq!(n.buffers().len(), 4);
    let p = randn(&mut rng, n.num_params());
    let pt = Tensor::from_data(TensorData::new(p.clone(), [p.len()]), &dev);
    let mut state = n.init_state(&dev);
    let mut running = to_vec(state.running.clone().unwrap());
    assert_eq!(
        running,
        [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    );
    let mut want_running = f64s(&running);
    for step in 0..2 {
        let x = randn(&mut rng, 4 * s.numel());
        let xt = upload4(&x, [4, s.channels, s.height, s.width], &dev);
        let got = to_vec(n.forward(&pt, xt, BnMode::Train(&mut state)));
        let want = ref_convnet(
            &cfg,
            s,
            &f64s(&p),
            &f64s(&x),
            4,
            RefBn::Train(&mut want_running),
        );
        assert_close(&got, &want, 1e-4, &format!("train logits {step}"));
        running = to_vec(state.running.clone().unwrap());
        assert_close(
            &running,
            &want_running,
            1e-5,
            &format!("running stats {step}"),
        );
    }
    let x = randn(&mut rng, 2 * s.numel());
    let xt = upload4(&x, [2, s.channels, s.height, s.width], &dev);
    let got = to_vec(n.forward(&pt, xt.clone(), BnMode::Eval(&state)));
    let want = ref_convnet(&cfg, s, &f64s(&p), &f64s(&x), 2, RefBn::Eval(&want_running));
    assert_close(&got, &want, 1e-4, "eval logits");
    // Batch mode leaves the state alone and differs from eval.
    let batch = to_vec(n.forward(&pt, xt, BnMode::Batch));
    assert!(batch.iter().zip(&got).any(|(a, b)| (a - b).abs() > 1e-3));
    assert_eq!(to_vec(state.running.unwrap()), running);
}

#[test]
fn gradients_match_float64_finite_differences() {
    let dev = Device::flex().autodiff();
    let mut rng = Rng::new(9);
    for (cfg, s) in small_configs() {
        let n = Network::new(&Arch::ConvNet(cfg), s, 3).unwrap();
        let p = randn(&mut rng, n.num_params());
        let x = randn(&mut rng, 2 * s.numel());
        let r = randn(&mut rng, 2 * 3);
        let pt = Tensor::<1>::from_data(TensorData::new(p.clone(), [p.len()]), &dev).require_grad();
        let xt = upload4(&x, [2, s.channels, s.height, s.width], &dev).require_grad();
        let rt = Tensor::<2>::from_data(TensorData::new(r.clone(), [2, 3]), &dev);
        let loss = (n.forward(&pt, xt.clone(), BnMode::Batch) * rt).sum();
        let grads = loss.backward();
        let gp = to_vec(pt.grad(&grads).unwrap());
        let gx = to_vec(xt.grad(&grads).unwrap());

        let (p64, x64, r64) = (f64s(&p), f64s(&x), f64s(&r));
        let loss64 = |p: &[f64], x: &[f64]| -> f64 {
            let y = ref_convnet(&cfg, s, p, x, 2, RefBn::Batch);
            y.iter().zip(&r64).map(|(a, b)| a * b).sum()
        };
        let h = 1e-6;
        let central = |v: &[f64], i: usize, f: &dyn Fn(&[f64]) -> f64| {
            let (mut a, mut b) = (v.to_vec(), v.to_vec());
            a[i] += h;
            b[i] -= h;
            (f(&a) - f(&b)) / (2.0 * h)
        };
        let what = Arch::ConvNet(cfg).to_string();
        let want_p: Vec<f64> = (0..p.len())
            .map(|i| central(&p64, i, &|q| loss64(q, &x64)))
            .collect();
        assert_close(&gp, &want_p, 2e-3, &format!("{what} d/dparams"));
        let want_x: Vec<f64> = (0..x.len())
            .map(|i| central(&x64, i, &|q| loss64(&p64, q)))
            .collect();
        assert_close(&gx, &want_x, 2e-3, &format!("{what} d/dx"));
    }
}

#[test]
fn big_nets_backpropagate() {
    let dev = Device::flex().autodiff();
    let mut rng = Rng::new(4);
    for name in ["ResNet18BN", "LeNet"] {
        let s = shape(3, 32);
        let n = net(name, s, 10);
        let p = n.init(&mut rng, &dev).require_grad();
        let x = upload4(&randn(&mut rng, 2 * s.numel()), [2, 3, 32, 32], &dev).require_grad();
        let mut state = n.init_state(&dev);
        let loss = n
            .forward(&p, x.clone(), BnMode::Train(&mut state))
            .square()
            .sum();
        let grads = loss.backward();
        let gp = to_vec(p.grad(&grads).unwrap());
        assert!(gp.iter().all(|g| g.is_finite()), "{name}");
        // Every parameter tensor gets some gradient.
        for e in n.params() {
            let g = &gp[e.offset..e.offset + e.numel()];
            assert!(g.iter().any(|&v| v != 0.0), "{name} {}", e.name);
        }
        assert!(
            to_vec(x.grad(&grads).unwrap()).iter().any(|&v| v != 0.0),
            "{name}"
        );
    }
}

#[test]
fn cross_entropy_matches_float64() {
    let device = Device::flex();
    let logits = [[1.0f64, 2.0, 0.5], [-1.0, 0.0, 3.0]];
    let labels = [1u16, 0];
    let flat: Vec<f32> = logits.iter().flatten().map(|&v| v as f32).collect();
    let t = Tensor::<2>::from_data(TensorData::new(flat, [2, 3]), &device);
    let got = cross_entropy(t, &labels).into_scalar::<f32>() as f64;
    let want: f64 = logits
        .iter()
        .zip(labels)
        .map(|(row, l)| {
            let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
            lse - row[l as usize]
        })
        .sum::<f64>()
        / 2.0;
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
}

/// Pieces hold each entry's numbers, layers read the same values from pieces as from the
/// flat vector, and the flat vector comes back whole; the gradient of a loss on the pieces
/// is the flat vector's, cut the same way.
#[test]
fn parameter_pieces_round_trip_and_read_as_the_flat_vector() {
    let device = Device::flex().autodiff();
    let n = net("ConvNet", shape(3, 8), 4);
    let mut rng = Rng::new(3);
    let flat = n.init(&mut rng, &device);
    let pieces = ParamPieces::split(&n, &flat);
    assert_eq!(pieces.pieces().len(), n.params().len());
    assert_eq!(to_vec(pieces.flat()), to_vec(flat.clone()));
    for (e, piece) in n.params().iter().zip(pieces.pieces()) {
        assert_eq!(piece.dims(), [e.numel()], "{}", e.name);
        let shape4 = |s: &[usize]| -> [usize; 4] {
            let mut d = [1; 4];
            d[4 - s.len()..].copy_from_slice(s);
            d
        };
        let d = shape4(&e.shape);
        assert_eq!(
            to_vec(Params::take(&pieces, e.offset, d)),
            to_vec(Params::take(&flat, e.offset, d)),
            "{}",
            e.name
        );
    }
    let leaves = pieces.map(Tensor::require_grad);
    let weights: Vec<f32> = (0..n.num_params()).map(|i| (i % 7) as f32 - 3.0).collect();
    let w = Tensor::<1>::from_data(TensorData::new(weights.clone(), [n.num_params()]), &device);
    let grads = (leaves.flat() * w).sum().backward();
    let got: Vec<f32> = leaves
        .pieces()
        .iter()
        .flat_map(|p| to_vec(p.grad(&grads).unwrap()))
        .collect();
    assert_eq!(got, weights);
}
