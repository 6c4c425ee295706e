//! `benmo-node`: see `benmo-node --help`.

use std::io::IsTerminal;

use anyhow::Result;
use benmo_node::options::Options;
use clap::Parser;
use tracing_subscriber::EnvFilter;

// glibc's malloc showed up at the top of the node's profile (a tenth of its CPU under load);
// mimalloc is faster for this small-object, one-thread-allocates-another-frees pattern.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    without_transparent_huge_pages();
    let options = Options::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    let settings = options.settings()?;
    let runtime = if settings.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.threads)
            .enable_all()
            .thread_name("benmo-io")
            .build()?
    };
    runtime.block_on(benmo_node::service::serve(settings))
}

/// mimalloc asks for transparent huge pages, and the kernel zeroes each one whole on its first
/// touch: a profile at 64 clients had `clear_page_erms` at 7% of all CPU, for buffers that use a
/// fraction of a 2 MiB page before mimalloc returns it. With 4 KiB pages only what is touched is
/// zeroed (interleaved runs at 64 clients: ~4% more transfers/s, p99 9.4 -> 8.1 ms).
fn without_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes only this process's
        // page-fault policy. It fails only on kernels without it, where there is nothing to do.
        let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}
