//! Device choice: a GPU through wgpu (Vulkan, Metal, DX12, WebGPU), CUDA when built with
//! the `cuda` feature, or Burn's pure-Rust `flex` CPU backend.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;
#[cfg(not(target_arch = "wasm32"))]
use burn::tensor::wgpu::WgpuSetup;

use crate::error::{Error, Result};

/// What the user asked for with `--device`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// A hardware GPU adapter when one exists, otherwise the CPU backend.
    #[default]
    Auto,
    /// Any wgpu adapter, software ones (lavapipe, SwiftShader) included.
    Gpu,
    /// Burn's `flex` CPU backend.
    Cpu,
    /// NVIDIA GPU through CUDA (needs the `cuda` cargo feature).
    Cuda,
}

impl FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "gpu" | "wgpu" => Ok(Self::Gpu),
            "cpu" | "flex" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            _ => Err(Error::Config(format!(
                "unknown device `{s}`: use auto, gpu, cpu or cuda"
            ))),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Gpu => "gpu",
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        })
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

#[cfg(not(target_arch = "wasm32"))]
fn wgpu_adapter() -> &'static std::result::Result<WgpuAdapter, String> {
    static ADAPTER: std::sync::OnceLock<std::result::Result<WgpuAdapter, String>> =
        std::sync::OnceLock::new();
    ADAPTER.get_or_init(|| {
        let (device, setup) = Device::wgpu_options()
            .init_with_setup()
            .map_err(|e| e.to_string())?;
        let info = setup.adapter.get_info();
        let software = info.device_type == burn::tensor::wgpu::wgpu::DeviceType::Cpu;
        Ok(WgpuAdapter {
            device,
            setup,
            name: format!("wgpu: {} ({:?})", info.name, info.backend),
            software,
        })
    })
}

/// The process-wide wgpu device (any adapter, software ones included). Everything that
/// wants wgpu goes through here: Burn's wgpu runtime can be initialised only once.
pub fn wgpu_device() -> Result<Device> {
    wgpu_adapter()
        .as_ref()
        .map(|a| a.device.clone())
        .map_err(|e| Error::Device(format!("no wgpu adapter could be opened: {e}")))
}

/// The process-wide wgpu device with the wgpu objects it was opened on (instance,
/// adapter, device, queue), so a renderer can draw on the very device Burn computes on.
#[cfg(not(target_arch = "wasm32"))]
pub fn wgpu_setup() -> Result<(Device, WgpuSetup)> {
    wgpu_adapter()
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
fn wgpu_adapter() -> &'static std::result::Result<WgpuAdapter, String> {
    static NOT_YET: std::result::Result<WgpuAdapter, String> = Err(String::new());
    BROWSER_ADAPTER.get().unwrap_or(&NOT_YET)
}

/// [`select`] for a browser: WebGPU's adapter can only be requested asynchronously. `Auto`
/// takes WebGPU whenever the browser offers an adapter, software ones too (a page is there
/// to show WebGPU; on a CPU-only machine SwiftShader was slower than the CPU backend, so
/// the reason says so), and otherwise the CPU backend, saying why.
#[cfg(target_arch = "wasm32")]
pub async fn select_async(choice: DeviceChoice, seed: u64) -> Result<Selected> {
    if matches!(choice, DeviceChoice::Gpu | DeviceChoice::Auto) && BROWSER_ADAPTER.get().is_none() {
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
    match (choice, wgpu_adapter()) {
        (DeviceChoice::Auto | DeviceChoice::Gpu, Ok(a)) => {
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
    let selected = match choice {
        DeviceChoice::Cpu => flex("asked for with `device = cpu`".into()),
        DeviceChoice::Gpu => match wgpu_adapter() {
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
                    "asked for with `device = gpu` (a software adapter: expect it to be slow)"
                        .into()
                } else {
                    "asked for with `device = gpu`".into()
                },
            },
            Err(e) => {
                return Err(Error::Device(format!(
                    "no GPU adapter could be opened ({e}). Install a Vulkan, Metal or DX12 \
                     driver (on Linux without a GPU, Mesa's lavapipe: package \
                     mesa-vulkan-drivers), or use `device = cpu`"
                )));
            }
        },
        DeviceChoice::Cuda => cuda()?,
        DeviceChoice::Auto => match wgpu_adapter() {
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
            Err(_) => flex("auto: no GPU adapter was found".into()),
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
    let probe = std::panic::catch_unwind(|| {
        burn::tensor::Tensor::<1>::zeros([1], &device).into_scalar::<f32>()
    });
    if probe.is_err() {
        return Err(Error::Device(
            "CUDA device 0 could not be used: is an NVIDIA driver installed? \
             Use `device = gpu` or `device = cpu` otherwise"
                .into(),
        ));
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
        assert_eq!("GPU".parse::<DeviceChoice>().unwrap(), DeviceChoice::Gpu);
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        let err = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(err.contains("tpu") && err.contains("auto"), "{err}");
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

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_says_how_to_get_it() {
        let err = select(DeviceChoice::Cuda, 0).unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
