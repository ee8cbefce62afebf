//! `memseal ls [PREFIX]`

use crate::args::LsArgs;
use crate::failure::Failure;
use crate::format::{age, asset_json, human_size, table, HASH_PREFIX_LEN};
use crate::output::Output;
use memseal::proto::message::hash_to_hex;
use memseal::Client;
use serde_json::Value;

/// List the latest version of each name under the prefix.
pub fn run(client: &mut Client, args: &LsArgs, out: &mut Output) -> Result<(), Failure> {
    let assets = client.list(&args.prefix)?;
    if out.json {
        return out.json(&Value::Array(assets.iter().map(asset_json).collect()));
    }
    if assets.is_empty() {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = assets
        .iter()
        .map(|info| {
            vec![
                info.name.clone(),
                info.version.to_string(),
                human_size(info.size),
                hash_to_hex(&info.hash)[..HASH_PREFIX_LEN].to_owned(),
                age(info.published_ms),
            ]
        })
        .collect();
    out.text(&table(
        &["NAME", "VERSION", "SIZE", "HASH", "AGE"],
        &rows,
        &[1, 2, 4],
    ))
}
