//! Setting the agent up from the command line, and the one-shot commands'
//! output.

use crate::agent::{Agent, Pushed, Want};
use crate::cli::{Cli, Command, Global};
use crate::download::Transfer;
use crate::error::Error;
use crate::local::Local;
use crate::manifest::Manifest;
use crate::metrics::Metrics;
use crate::rate::RateLimit;
use crate::remote::{ManifestRead, Remote};
use crate::run::{run, RunOptions};
use crate::state::State;
use futures::{StreamExt, TryStreamExt};
use memseal::proto::message::{hash_from_hex, hash_to_hex};
use memseal_text::{age, human_size, table};
use std::sync::Arc;

/// Manifests read at once by `ls`.
const LS_CONCURRENCY: usize = 16;

/// Carry out the command line.
pub async fn execute(cli: Cli) -> Result<(), Error> {
    let global = cli.global;
    let url = global.remote.clone().ok_or_else(|| {
        Error::Usage(
            "no store given: pass --remote s3://BUCKET/PREFIX (or set MEMSEAL_FLEET_REMOTE)".into(),
        )
    })?;
    let remote = Remote::from_env(&url)?;
    let is_run = matches!(cli.command, Command::Run(_));
    match remote.check().await {
        Ok(()) => {}
        // The agent outlives a store that is down when it starts; its
        // loops retry. A wrong set-up, though, is reported once and ends it.
        Err(e) if is_run && e.is_transient() => {
            tracing::warn!("{e}; starting anyway, the store is retried as needed");
        }
        Err(e) => return Err(e),
    }
    if let Command::Ls { prefix, json } = &cli.command {
        return ls(&remote, prefix, *json).await;
    }
    let agent = Arc::new(agent(&global, remote).await?);
    match cli.command {
        Command::Run(args) => {
            let options = RunOptions {
                pull: args.pull,
                push: args.push,
                poll: args.poll,
            };
            run(agent, options).await
        }
        Command::Push { name } => push(&agent, &name).await,
        Command::Pull { name, hash } => pull(&agent, &name, hash.as_deref()).await,
        Command::Ls { .. } => unreachable!("handled above"),
    }
}

/// The agent the options describe.
async fn agent(global: &Global, remote: Remote) -> Result<Agent, Error> {
    let local = Local::connect(global.socket.clone()).await?;
    let state_dir = global.state_dir.clone().unwrap_or_else(State::default_dir);
    let state = State::open(&state_dir)?;
    let metrics = Arc::new(Metrics::new(global.metrics_file.clone()));
    let transfer = Transfer {
        piece_size: global.piece_size,
        connections: usize::from(global.connections),
        retry_for: global.retry_for,
        rate: global.max_rate.map(|rate| Arc::new(RateLimit::new(rate))),
        retry_refused_after: global.retry_refused_after,
    };
    Ok(Agent::new(remote, local, state, metrics, transfer))
}

async fn pull(agent: &Agent, name: &str, hash: Option<&str>) -> Result<(), Error> {
    let want =
        match hash {
            None => Want::Latest,
            Some(hex) => Want::Hash(hash_from_hex(hex).ok_or_else(|| {
                Error::Usage(format!("--hash {hex:?} is not 64 hexadecimal digits"))
            })?),
        };
    let pulled = agent.pull(name, want).await?;
    let info = &pulled.info;
    match pulled.downloaded_in {
        Some(took) => println!(
            "pulled {name}: version {}, {} ({} bytes), blake3 {}, in {:.2} s",
            info.version,
            human_size(info.size),
            info.size,
            hash_to_hex(&info.hash),
            took.as_secs_f64()
        ),
        None => println!(
            "{name} is already present: version {}, blake3 {}",
            info.version,
            hash_to_hex(&info.hash)
        ),
    }
    Ok(())
}

async fn push(agent: &Agent, name: &str) -> Result<(), Error> {
    let (info, pushed) = agent.push_name(name).await?;
    let url = agent.remote().url();
    let version = info.version;
    let hash = hash_to_hex(&info.hash);
    match pushed {
        Pushed::Pushed { blob, renamed } => {
            if renamed {
                println!(
                    "pushed {name} version {version} to {url}: {blob} ({}), blake3 {hash}",
                    human_size(info.size)
                );
            } else {
                println!("{url} already names {name} version {version} (blake3 {hash}); {blob}");
            }
        }
        Pushed::PulledHere => {
            println!("{name} version {version} was pulled from the store; not pushing it back")
        }
        Pushed::Gone => println!("{name} version {version} was removed before it could be read"),
    }
    Ok(())
}

/// `ls`: the manifests under a prefix, as a table or as JSON lines.
async fn ls(remote: &Remote, prefix: &str, json: bool) -> Result<(), Error> {
    let names = remote.names(prefix).await?;
    let manifests: Vec<Option<Manifest>> = futures::stream::iter(names)
        .map(|name| async move {
            match remote.manifest(&name, None).await? {
                ManifestRead::Found(manifest, _) => Ok(Some(manifest)),
                // Removed since the listing.
                _ => Ok::<_, Error>(None),
            }
        })
        .buffered(LS_CONCURRENCY)
        .try_collect()
        .await?;
    let manifests: Vec<Manifest> = manifests.into_iter().flatten().collect();
    if json {
        for manifest in &manifests {
            println!("{}", serde_json::to_string(manifest).unwrap_or_default());
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = manifests
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                human_size(m.size),
                m.blake3[..12].to_owned(),
                age(m.published_ms),
                m.publisher.host.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["NAME", "SIZE", "HASH", "AGE", "FROM"], &rows, &[1, 3])
    );
    Ok(())
}
