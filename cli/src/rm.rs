//! `memseal rm NAME [--version N]`

use crate::args::RmArgs;
use crate::failure::Failure;
use crate::output::Output;
use memseal::Client;
use serde_json::json;

/// Remove one version or all versions of a name.
pub fn run(client: &mut Client, args: &RmArgs, out: &mut Output) -> Result<(), Failure> {
    let removed = client.remove(&args.name, args.version)?;
    if out.json {
        return out.json(&json!({ "name": args.name, "removed": removed }));
    }
    let what = match args.version {
        Some(version) => format!("version {version} of {}", args.name),
        None => format!("{} version(s) of {}", removed, args.name),
    };
    out.text(&format!("removed {what}\n"))
}
