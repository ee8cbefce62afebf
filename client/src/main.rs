//! `memseal`: the command-line client of memseald.
//!
//! Everything lives in the [`cli`] module tree; this file only hands the
//! process over to it and turns its outcome into an exit status.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
