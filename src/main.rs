//! The `haba` command line: parse, pick the device, call the library, report errors.

mod cli;

/// Reuses large tensor buffers instead of returning them to the system (see `haba::alloc`).
#[global_allocator]
static ALLOCATOR: haba::alloc::CachingAllocator = haba::alloc::CachingAllocator;

/// Mesa's Vulkan drivers install an implicit layer (`VK_LAYER_MESA_device_select`) that
/// asks the Wayland compositor which GPU it draws on. Without `XDG_RUNTIME_DIR` no
/// compositor can be reached, and libwayland says so on stderr (`error: XDG_RUNTIME_DIR
/// is invalid or not set in the environment.`, once per Vulkan instance) before every
/// command's device line, which reads like a failure. There is nothing for the layer to
/// ask then: it is turned off (`NODEVICE_SELECT=1`, its own switch) unless the user set
/// that variable. The adapters and their order are wgpu's either way.
fn quiet_device_select() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("XDG_RUNTIME_DIR").is_none()
        && std::env::var_os("WAYLAND_DISPLAY").is_none()
        && std::env::var_os("NODEVICE_SELECT").is_none()
    {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

fn main() -> std::process::ExitCode {
    // `haba compare ... | head` ends quietly, as other command-line tools do, instead of
    // panicking on the closed pipe (Rust ignores SIGPIPE by default).
    #[cfg(target_os = "linux")]
    // SAFETY: restoring the default action of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    quiet_device_select();
    haba::alloc::set_cache_limit(haba::alloc::default_cache_limit());
    match cli::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", cli::flags::message(&err));
            std::process::ExitCode::FAILURE
        }
    }
}
