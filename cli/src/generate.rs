//! `memseal completions SHELL` and `memseal man`: both generated from the
//! clap definition in [`crate::args`], so they never drift from it.

use crate::args::{Cli, CompletionsArgs};
use crate::failure::Failure;
use crate::output::Output;
use clap::CommandFactory;

/// Write the completion script for the shell.
pub fn completions(args: &CompletionsArgs, out: &mut Output) -> Result<(), Failure> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "memseal", &mut script);
    out.bytes(&script)
}

/// Write the man page, in roff.
pub fn man(out: &mut Output) -> Result<(), Failure> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .map_err(|e| Failure::io("cannot render the man page", e))?;
    out.bytes(&page)
}
