//! The `haba` command line: parse, pick the device, call the library, report errors.

mod cli;

/// Reuses large tensor buffers instead of returning them to the system (see `haba::alloc`).
#[global_allocator]
static ALLOCATOR: haba::alloc::CachingAllocator = haba::alloc::CachingAllocator;

fn main() -> std::process::ExitCode {
    // `haba compare ... | head` ends quietly, as other command-line tools do, instead of
    // panicking on the closed pipe (Rust ignores SIGPIPE by default).
    #[cfg(target_os = "linux")]
    // SAFETY: restoring the default action of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    haba::alloc::set_cache_limit(haba::alloc::default_cache_limit());
    match cli::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", cli::flags::phrase(&format!("{err:#}")));
            std::process::ExitCode::FAILURE
        }
    }
}
