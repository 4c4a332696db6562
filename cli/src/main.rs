//! The `warren` binary with the demo tasks. A program that embeds the worker library builds its
//! own `warren` the same way, passing its registry to [`warren_cli::main`].

fn main() -> std::process::ExitCode {
    warren_cli::main(warren_worker::demo::registry())
}
