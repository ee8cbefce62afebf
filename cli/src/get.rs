//! `memseal get NAME [-o FILE] [--version N | --hash HEX]`

use crate::args::GetArgs;
use crate::failure::Failure;
use crate::format::human_size;
use crate::output::Output;
use crate::progress::Progress;
use memseal::Client;
use std::fs::File;
use std::io::Write;

/// How much is written per call, so the progress bar moves.
const CHUNK: usize = 8 << 20;

/// Fetch the asset and write its bytes out. `--json` does not apply: the
/// output is the asset itself.
pub fn run(client: &mut Client, args: &GetArgs, out: &mut Output) -> Result<(), Failure> {
    // Fetch first, so a failed fetch leaves an existing output file alone.
    let asset = client.fetch_with(&args.name, args.selector.selector())?;
    let progress = Progress::bytes(
        asset.size(),
        &format!("{} ({})", args.name, human_size(asset.size())),
    );
    match &args.output {
        None => {
            for chunk in asset.chunks(CHUNK) {
                out.bytes(chunk)?;
                progress.advance(chunk.len() as u64);
            }
            Ok(())
        }
        Some(path) => {
            let describe = || format!("cannot write {}", path.display());
            let mut file = File::create(path).map_err(|e| Failure::io(describe(), e))?;
            for chunk in asset.chunks(CHUNK) {
                file.write_all(chunk)
                    .map_err(|e| Failure::io(describe(), e))?;
                progress.advance(chunk.len() as u64);
            }
            file.flush().map_err(|e| Failure::io(describe(), e))
        }
    }
}
