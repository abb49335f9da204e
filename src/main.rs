//! The `as2box` command: a thin shell around [`as2box::cli`].

fn main() -> std::process::ExitCode {
    as2box::cli::main()
}
