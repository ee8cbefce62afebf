//! Assets declared as files: a host ships them, memseald serves them.
//!
//! The assets directory (`--assets-dir`, default /etc/memseal/assets.d)
//! holds small TOML files named `*.asset`:
//!
//! ```toml
//! name = "fonts/dejavu-sans.ttf"
//! path = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
//! ```
//!
//! A relative `path` is taken from the directory of the `.asset` file. At
//! start and on every reload (SIGHUP, `systemctl reload`) each declared
//! file is copied kernel-side into a sealed memfd and published as the
//! daemon's own uid; an asset whose content did not change keeps its
//! version. A broken declaration is logged and skipped: it never keeps the
//! others from being served.

use crate::blob;
use crate::state::State;
use memseal_proto::name::validate_name;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{info, warn};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Declaration {
    name: String,
    path: PathBuf,
}

/// What a pass over the directory did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub published: usize,
    pub unchanged: usize,
    pub failed: usize,
}

/// One `.asset` file and what it declares (or why it declares nothing).
type Parsed = (PathBuf, Result<Declaration, String>);

/// Read every `*.asset` file in `dir`, in name order.
fn declarations(dir: &Path) -> Result<Vec<Parsed>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "asset"))
        .collect();
    files.sort();
    Ok(files
        .into_iter()
        .map(|file| {
            let parsed = std::fs::read_to_string(&file)
                .map_err(|e| e.to_string())
                .and_then(|text| toml::from_str::<Declaration>(&text).map_err(|e| e.to_string()))
                .and_then(|mut declaration| {
                    validate_name(&declaration.name).map_err(|e| format!("invalid name: {e}"))?;
                    if declaration.path.is_relative() {
                        let base = file.parent().unwrap_or(Path::new("."));
                        declaration.path = base.join(&declaration.path);
                    }
                    Ok(declaration)
                });
            (file, parsed)
        })
        .collect())
}

/// Publish every declared asset whose content changed.
pub async fn publish_declared(state: &Arc<State>, dir: &Path) -> Outcome {
    let mut outcome = Outcome::default();
    let declared = match declarations(dir) {
        Ok(declared) => declared,
        Err(e) => {
            warn!("declared assets: {e}");
            return outcome;
        }
    };
    let uid = rustix::process::geteuid().as_raw();
    for (file, declaration) in declared {
        let result = match declaration {
            Ok(declaration) => publish_one(state, &declaration, uid).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(true) => outcome.published += 1,
            Ok(false) => outcome.unchanged += 1,
            Err(e) => {
                warn!("declared asset {}: {e}", file.display());
                outcome.failed += 1;
            }
        }
    }
    info!(
        dir = %dir.display(),
        published = outcome.published,
        unchanged = outcome.unchanged,
        failed = outcome.failed,
        "declared assets loaded"
    );
    outcome
}

async fn publish_one(
    state: &Arc<State>,
    declaration: &Declaration,
    uid: u32,
) -> Result<bool, String> {
    let path = &declaration.path;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    let reservation = state.reserve(size, uid, true).map_err(|e| e.to_string())?;
    let (blob, _) =
        tokio::task::spawn_blocking(move || blob::from_descriptor(file.into(), size, uid))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{}: {e}", path.display()))?;
    let (info, published) = state.publish_if_changed(reservation, &declaration.name, blob);
    if published {
        info!(name = %info.name, version = info.version, size = info.size, "published declared asset");
    }
    Ok(published)
}
