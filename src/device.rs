//! Device choice: a GPU through wgpu (Vulkan, Metal, DX12, WebGPU), CUDA when built with
//! the `cuda` feature, or Burn's pure-Rust `flex` CPU backend.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;
#[cfg(not(target_arch = "wasm32"))]
use burn::tensor::wgpu::WgpuSetup;

use crate::error::{Error, Result};

/// What the user asked for with `device`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A hardware GPU adapter when one exists, otherwise the CPU backend.
    #[default]
    Auto,
    /// Any wgpu adapter, software ones (lavapipe, SwiftShader) included, on the graphics
    /// API named, else on those [`GraphicsApi::requested`] lists.
    Gpu(Option<GraphicsApi>),
    /// Burn's `flex` CPU backend.
    Cpu,
    /// NVIDIA GPU through CUDA (needs the `cuda` cargo feature).
    Cuda,
}

/// A graphics API wgpu runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphicsApi {
    Vulkan,
    Metal,
    Dx12,
    Gl,
    WebGpu,
}

impl GraphicsApi {
    const ALL: [GraphicsApi; 5] = [
        GraphicsApi::Vulkan,
        GraphicsApi::Metal,
        GraphicsApi::Dx12,
        GraphicsApi::Gl,
        GraphicsApi::WebGpu,
    ];

    /// The name `gpu:NAME` and `WGPU_BACKEND` take.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vulkan => "vulkan",
            Self::Metal => "metal",
            Self::Dx12 => "dx12",
            Self::Gl => "gl",
            Self::WebGpu => "webgpu",
        }
    }

    /// The APIs tried, best first, when none is named: the platform's own, Metal on
    /// macOS, Vulkan then DX12 elsewhere. OpenGL only when named: probing it opens the
    /// windowing system, which on a machine without a display prints errors of its own
    /// (`XDG_RUNTIME_DIR is invalid or not set`) and finds nothing a compute job wants.
    pub fn preferred() -> &'static [GraphicsApi] {
        if cfg!(target_arch = "wasm32") {
            &[GraphicsApi::WebGpu]
        } else if cfg!(target_os = "macos") {
            &[GraphicsApi::Metal]
        } else {
            &[GraphicsApi::Vulkan, GraphicsApi::Dx12]
        }
    }

    /// The APIs to try: `named`, else those the `WGPU_BACKEND` environment variable
    /// lists (wgpu's own, comma-separated), else [`GraphicsApi::preferred`].
    pub fn requested(named: Option<GraphicsApi>) -> Result<Vec<GraphicsApi>> {
        if let Some(api) = named {
            return Ok(vec![api]);
        }
        match std::env::var("WGPU_BACKEND") {
            Ok(list) if !list.trim().is_empty() => list
                .split(',')
                .map(|name| {
                    name.parse().map_err(|e: Error| {
                        Error::Device(format!("the environment variable WGPU_BACKEND: {e}"))
                    })
                })
                .collect(),
            _ => Ok(Self::preferred().to_vec()),
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn wgpu(self) -> burn::tensor::wgpu::WgpuBackend {
        use burn::tensor::wgpu::WgpuBackend;
        match self {
            Self::Vulkan => WgpuBackend::Vulkan,
            Self::Metal => WgpuBackend::Metal,
            Self::Dx12 => WgpuBackend::Dx12,
            Self::Gl => WgpuBackend::Gl,
            Self::WebGpu => WgpuBackend::WebGpu,
        }
    }
}

impl FromStr for GraphicsApi {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        let lower = match lower.as_str() {
            // wgpu's own spellings in WGPU_BACKEND.
            "vk" => "vulkan",
            "mtl" => "metal",
            "opengl" | "gles" => "gl",
            "browser" | "browserwebgpu" => "webgpu",
            "d3d12" | "directx" => "dx12",
            other => other,
        };
        Self::ALL
            .into_iter()
            .find(|a| a.name() == lower)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown graphics API `{s}`: use vulkan, metal, dx12, gl or webgpu"
                ))
            })
    }
}

impl fmt::Display for GraphicsApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Vulkan => "Vulkan",
            Self::Metal => "Metal",
            Self::Dx12 => "DX12",
            Self::Gl => "OpenGL",
            Self::WebGpu => "WebGPU",
        })
    }
}

impl FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        match lower.split_once(':') {
            Some(("gpu" | "wgpu", api)) => Ok(Self::Gpu(Some(api.parse()?))),
            None if lower == "auto" => Ok(Self::Auto),
            None if lower == "gpu" || lower == "wgpu" => Ok(Self::Gpu(None)),
            None if lower == "cpu" || lower == "flex" => Ok(Self::Cpu),
            None if lower == "cuda" => Ok(Self::Cuda),
            _ => Err(Error::Config(format!(
                "unknown device `{s}`: use auto, gpu, gpu:vulkan (metal, dx12, gl, webgpu), \
                 cpu or cuda"
            ))),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Gpu(None) => f.write_str("gpu"),
            Self::Gpu(Some(api)) => write!(f, "gpu:{}", api.name()),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda => f.write_str("cuda"),
        }
    }
}

/// Which backend a selected device runs on; decides e.g. whether WGSL kernels can launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Wgpu,
    Cuda,
    Flex,
}

/// A device ready for tensors, with a one-line account of why it was chosen.
#[derive(Clone, Debug)]
pub struct Selected {
    pub device: Device,
    pub backend: BackendKind,
    /// e.g. "wgpu: NVIDIA GeForce RTX 4090 (Vulkan)".
    pub name: String,
    /// Why this device, for the one line every command prints.
    pub reason: String,
}

/// The wgpu adapter Burn opened, shared by every caller in the process (Burn's wgpu
/// runtime can be initialised only once).
struct WgpuAdapter {
    device: Device,
    /// The wgpu instance, adapter, device and queue Burn runs on, for a renderer that
    /// draws with the same device (the viewer).
    #[cfg(not(target_arch = "wasm32"))]
    setup: WgpuSetup,
    name: String,
    software: bool,
}

/// The process's wgpu adapter: the first of `apis` that opens one, on the first call
/// (Burn's wgpu runtime can be initialised only once; later calls get the same one).
#[cfg(not(target_arch = "wasm32"))]
fn wgpu_adapter(apis: &[GraphicsApi]) -> &'static std::result::Result<WgpuAdapter, String> {
    static ADAPTER: std::sync::OnceLock<std::result::Result<WgpuAdapter, String>> =
        std::sync::OnceLock::new();
    ADAPTER.get_or_init(|| {
        let mut failed = Vec::new();
        for &api in apis {
            let opened = Device::wgpu_options()
                .graphics_api(api.wgpu())
                .init_with_setup();
            match opened {
                Ok((device, setup)) => {
                    let info = setup.adapter.get_info();
                    let software = info.device_type == burn::tensor::wgpu::wgpu::DeviceType::Cpu;
                    return Ok(WgpuAdapter {
                        device,
                        setup,
                        name: format!("wgpu on {api}: {}", info.name),
                        software,
                    });
                }
                Err(e) => failed.push(format!("{api}: {e}")),
            }
        }
        Err(failed.join("; "))
    })
}

/// The process-wide wgpu device (any adapter, software ones included) on the APIs
/// [`GraphicsApi::requested`] lists. Everything that wants wgpu goes through here.
pub fn wgpu_device() -> Result<Device> {
    wgpu_adapter(&GraphicsApi::requested(None)?)
        .as_ref()
        .map(|a| a.device.clone())
        .map_err(|e| Error::Device(format!("no wgpu adapter could be opened: {e}")))
}

/// The process-wide wgpu device with the wgpu objects it was opened on (instance,
/// adapter, device, queue), so a renderer can draw on the very device Burn computes on.
#[cfg(not(target_arch = "wasm32"))]
pub fn wgpu_setup() -> Result<(Device, WgpuSetup)> {
    wgpu_adapter(&GraphicsApi::requested(None)?)
        .as_ref()
        .map(|a| (a.device.clone(), a.setup.clone()))
        .map_err(|e| Error::Device(format!("no wgpu adapter could be opened: {e}")))
}

/// The wgpu device for tests that need one. Without an adapter, such a test fails when
/// the `CI` environment variable is set (CI installs lavapipe, so the tests must run there)
/// and is skipped with a note otherwise.
#[doc(hidden)]
pub fn gpu_for_tests() -> Option<Device> {
    match wgpu_device() {
        Ok(device) => Some(device),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("CI is set but {e}: install mesa-vulkan-drivers")
        }
        Err(e) => {
            eprintln!("skipping a wgpu test: {e}");
            None
        }
    }
}

/// In a browser the adapter can only be opened asynchronously: [`select_async`] opens it,
/// after which the synchronous selection sees it too.
#[cfg(target_arch = "wasm32")]
static BROWSER_ADAPTER: std::sync::OnceLock<std::result::Result<WgpuAdapter, String>> =
    std::sync::OnceLock::new();

#[cfg(target_arch = "wasm32")]
fn wgpu_adapter(_apis: &[GraphicsApi]) -> &'static std::result::Result<WgpuAdapter, String> {
    static NOT_YET: std::result::Result<WgpuAdapter, String> = Err(String::new());
    BROWSER_ADAPTER.get().unwrap_or(&NOT_YET)
}

/// [`select`] for a browser: WebGPU's adapter can only be requested asynchronously. `Auto`
/// takes WebGPU whenever the browser offers an adapter, software ones too (a page is there
/// to show WebGPU; on a CPU-only machine SwiftShader was slower than the CPU backend, so
/// the reason says so), and otherwise the CPU backend, saying why.
#[cfg(target_arch = "wasm32")]
pub async fn select_async(choice: DeviceChoice, seed: u64) -> Result<Selected> {
    if matches!(choice, DeviceChoice::Gpu(_) | DeviceChoice::Auto)
        && BROWSER_ADAPTER.get().is_none()
    {
        let opened = match Device::wgpu_options().init_with_setup_async().await {
            Ok((device, setup)) => {
                let info = setup.adapter.get_info();
                let name = if info.name.is_empty() {
                    "the browser's adapter".to_string()
                } else {
                    info.name
                };
                Ok(WgpuAdapter {
                    device,
                    name: format!("WebGPU: {name}"),
                    software: info.device_type == burn::tensor::wgpu::wgpu::DeviceType::Cpu,
                })
            }
            Err(e) => Err(e.to_string()),
        };
        let _ = BROWSER_ADAPTER.set(opened);
    }
    match (choice, wgpu_adapter(&[])) {
        (DeviceChoice::Auto | DeviceChoice::Gpu(_), Ok(a)) => {
            let selected = Selected {
                device: a.device.clone(),
                backend: BackendKind::Wgpu,
                name: a.name.clone(),
                reason: if a.software {
                    "the browser's WebGPU adapter, a software one: expect it to be slower than \
                     the CPU backend"
                        .into()
                } else {
                    "the browser's WebGPU adapter".into()
                },
            };
            selected.device.seed(seed);
            Ok(selected)
        }
        (DeviceChoice::Auto, Err(e)) => {
            let selected = flex(format!(
                "this browser offers no WebGPU adapter ({e}); WebGPU runs in Chrome and Edge \
                 113 or later, Safari 26 and Firefox 141 or later on Windows"
            ));
            selected.device.seed(seed);
            Ok(selected)
        }
        _ => select(choice, seed),
    }
}

fn flex(reason: String) -> Selected {
    Selected {
        device: Device::flex(),
        backend: BackendKind::Flex,
        name: "cpu: flex".into(),
        reason,
    }
}

/// Opens the device the user asked for, and seeds Burn's own generator with `seed`
/// (our code draws its random numbers from [`crate::rng::Rng`]; this covers Burn's).
pub fn select(choice: DeviceChoice, seed: u64) -> Result<Selected> {
    // WGPU_BACKEND matters (and a bad value is an error) only where wgpu is asked.
    let apis = match choice {
        DeviceChoice::Gpu(api) => GraphicsApi::requested(api)?,
        DeviceChoice::Auto => GraphicsApi::requested(None)?,
        DeviceChoice::Cpu | DeviceChoice::Cuda => Vec::new(),
    };
    let tried = || {
        let names: Vec<String> = apis.iter().map(ToString::to_string).collect();
        names.join(" or ")
    };
    let selected = match choice {
        DeviceChoice::Cpu => flex("asked for with `device = cpu`".into()),
        DeviceChoice::Gpu(_) => match wgpu_adapter(&apis) {
            #[cfg(target_arch = "wasm32")]
            Err(e) if e.is_empty() => {
                return Err(Error::Device(
                    "in a browser the GPU is opened with device::select_async".into(),
                ));
            }
            Ok(a) => Selected {
                device: a.device.clone(),
                backend: BackendKind::Wgpu,
                name: a.name.clone(),
                reason: if a.software {
                    format!(
                        "asked for with `device = {choice}` (a software adapter: expect it to \
                         be slow)"
                    )
                } else {
                    format!("asked for with `device = {choice}`")
                },
            },
            Err(e) => {
                return Err(Error::Device(format!(
                    "no GPU adapter could be opened on {} ({e}). Install a Vulkan, Metal or \
                     DX12 driver (on Linux without a GPU, Mesa's lavapipe: package \
                     mesa-vulkan-drivers), name another API (`device = gpu:gl`), or use \
                     `device = cpu`",
                    tried()
                )));
            }
        },
        DeviceChoice::Cuda => cuda()?,
        DeviceChoice::Auto => match wgpu_adapter(&apis) {
            Ok(a) if !a.software => Selected {
                device: a.device.clone(),
                backend: BackendKind::Wgpu,
                name: a.name.clone(),
                reason: "auto: a hardware GPU adapter was found".into(),
            },
            Ok(a) => flex(format!(
                "auto: the only GPU adapter is a software one ({}), slower than the CPU backend",
                a.name
            )),
            Err(_) => flex(format!("auto: no GPU adapter was found on {}", tried())),
        },
    };
    selected.device.seed(seed);
    Ok(selected)
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<Selected> {
    // Burn's CUDA runtime loads the driver lazily; probe it so a missing driver is an
    // error here rather than a panic inside the first kernel.
    let device = Device::cuda(0);
    // The runtime panics where it finds no driver; its message is replaced by ours, so
    // the default hook (which would print it) is set aside for the probe.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let probe = std::panic::catch_unwind(|| {
        burn::tensor::Tensor::<1>::zeros([1], &device).into_scalar::<f32>()
    });
    std::panic::set_hook(hook);
    if let Err(panic) = probe {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("no reason given");
        return Err(Error::Device(format!(
            "CUDA device 0 could not be used: no NVIDIA GPU or driver answered (the CUDA \
             runtime reported `{}`). Install the NVIDIA driver, or use `device = gpu` or \
             `device = cpu`",
            why.lines().next().unwrap_or(why)
        )));
    }
    Ok(Selected {
        device: Device::cuda(0),
        backend: BackendKind::Cuda,
        name: "cuda: device 0".into(),
        reason: "asked for with `device = cuda`".into(),
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<Selected> {
    Err(Error::Device(
        "this build has no CUDA support: rebuild with `cargo build --release --features cuda`, \
         or use `device = gpu`"
            .into(),
    ))
}

/// The process's peak resident set (`VmHWM`), where the system reports it (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The machine's physical memory, where the system reports it (Linux).
pub fn host_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// `Ok` when `bytes` (`None`: too many to count) fit in this machine's memory, else the
/// estimate and the limit in words, for the caller to say what asked for them.
pub fn fits_in_memory(bytes: Option<u128>) -> std::result::Result<(), String> {
    // Where the system does not say, 1 TiB: beyond any machine these runs are for.
    let limit = host_memory_bytes().map_or(1u128 << 40, u128::from);
    let gb = |b: u128| format!("{:.1} GB", b as f64 / 1e9);
    match bytes {
        Some(b) if b <= limit => Ok(()),
        Some(b) => Err(format!(
            "needs at least {}, more than this machine's {}",
            gb(b),
            gb(limit)
        )),
        None => Err(format!(
            "needs more memory than can be counted (this machine has {})",
            gb(limit)
        )),
    }
}

/// The memory a run holds: what a GPU's allocator has reserved, or on the CPU backend the
/// process's peak resident memory.
pub fn memory_bytes(device: &Device) -> Option<u64> {
    device
        .memory_pool_usage()
        .map(|u| u.bytes_reserved)
        .or_else(peak_rss_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_estimates_beyond_the_machine_are_refused() {
        assert!(fits_in_memory(Some(1 << 20)).is_ok());
        let err = fits_in_memory(Some(1 << 60)).unwrap_err();
        assert!(err.contains("more than this machine's"), "{err}");
        assert!(
            fits_in_memory(None)
                .unwrap_err()
                .contains("than can be counted")
        );
    }

    #[test]
    fn parses_choices_and_rejects_others() {
        assert_eq!(
            "GPU".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Gpu(None)
        );
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        for (name, api) in [
            ("gpu:vulkan", GraphicsApi::Vulkan),
            ("gpu:Metal", GraphicsApi::Metal),
            ("gpu:dx12", GraphicsApi::Dx12),
            ("gpu:gl", GraphicsApi::Gl),
            ("wgpu:webgpu", GraphicsApi::WebGpu),
            ("gpu:vk", GraphicsApi::Vulkan),
            ("gpu:mtl", GraphicsApi::Metal),
        ] {
            let choice = name.parse::<DeviceChoice>().unwrap();
            assert_eq!(choice, DeviceChoice::Gpu(Some(api)));
            assert_eq!(choice.to_string().parse::<DeviceChoice>().unwrap(), choice);
        }
        let err = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(err.contains("tpu") && err.contains("auto"), "{err}");
        let err = "gpu:glide".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(err.contains("glide") && err.contains("vulkan"), "{err}");
        // Without a named API: the platform's own, OpenGL never among them.
        assert_eq!(
            GraphicsApi::requested(Some(GraphicsApi::Gl)).unwrap(),
            [GraphicsApi::Gl]
        );
        assert!(!GraphicsApi::preferred().contains(&GraphicsApi::Gl));
    }

    #[test]
    fn cpu_is_always_available_and_seeding_repeats() {
        use burn::tensor::{Distribution, Tensor};
        let draw = || {
            let s = select(DeviceChoice::Cpu, 3).unwrap();
            assert_eq!(s.backend, BackendKind::Flex);
            Tensor::<1>::random([8], Distribution::Default, &s.device).into_data()
        };
        assert_eq!(draw(), draw());
    }

    /// Without an NVIDIA driver (the machines this project is built on), `cuda` is an
    /// error that says so; and CUDA devices take the tensor-op path of the hallucinators'
    /// modulation (WGSL kernels launch on wgpu only), which its tests check against.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_without_a_driver_is_an_error_and_modulates_with_tensor_ops() {
        assert!(!crate::kernels::wgsl_kernels_available(&Device::cuda(0)));
        if std::path::Path::new("/proc/driver/nvidia").exists() {
            return;
        }
        let err = select(DeviceChoice::Cuda, 0).unwrap_err().to_string();
        assert!(
            err.contains("NVIDIA") && err.contains("device = cpu"),
            "{err}"
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_says_how_to_get_it() {
        let err = select(DeviceChoice::Cuda, 0).unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
