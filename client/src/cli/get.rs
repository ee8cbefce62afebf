//! `memseal get NAME [-o FILE] [--version N | --hash HEX]`

use super::args::GetArgs;
use super::failure::Failure;
use super::output::Output;
use memseal::Client;
use std::fs::File;
use std::io::Write;

/// Fetch the asset and write its bytes out. `--json` does not apply: the
/// output is the asset itself.
pub fn run(client: &mut Client, args: &GetArgs, out: &mut Output) -> Result<(), Failure> {
    // Fetch first, so a failed fetch leaves an existing output file alone.
    let asset = client.fetch_with(&args.name, args.selector.selector())?;
    match &args.output {
        None => out.bytes(&asset),
        Some(path) => {
            let describe = || format!("cannot write {}", path.display());
            let mut file = File::create(path).map_err(|e| Failure::io(describe(), e))?;
            file.write_all(&asset)
                .and_then(|()| file.flush())
                .map_err(|e| Failure::io(describe(), e))
        }
    }
}
