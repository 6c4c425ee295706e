//! `benmoctl`: see `benmoctl --help`.

fn main() {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("benmoctl: cannot start: {error}");
            std::process::exit(1);
        }
    };
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let mut terminal = benmoctl::Terminal {
        out: &mut out,
        err: &mut err,
    };
    let code = runtime.block_on(benmoctl::run(std::env::args_os(), &mut terminal));
    std::process::exit(code);
}
