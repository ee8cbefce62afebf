//! The run: set up the daemon and its peers once, then measure section by
//! section.
//!
//! Everything the run creates lives in one temporary directory in tmpfs
//! (`/dev/shm`), so the files that read() and `cp` work on are in memory
//! like the memfds they are compared with, and nothing is left behind.

use crate::affinity::Placement;
use crate::daemon::{Daemon, DaemonConfig};
use crate::data::{self, size_label};
use crate::procfs::Machine;
use crate::redis::{RedisServer, RespClient};
use crate::report::{Report, Section, Target};
use crate::scenario;
use crate::worker::Worker;
use crate::workload::{Method, Spec};
use std::io;
use std::path::{Path, PathBuf};

/// Sizes of the fetch comparisons.
const FETCH_SIZES: [usize; 4] = [4 << 10, 1 << 20, 64 << 20, 1 << 30];

/// The sections of a run, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Fetch latency against the floor, one client and several.
    Fetch,
    /// Fetch against Redis GET and read().
    Compare,
    /// Memory of many readers of one asset.
    Memory,
    /// Publish throughput.
    Publish,
    /// The daemon's memory and start-up time.
    Footprint,
    /// What the client's mapping options, cache and private view buy.
    Options,
    /// Many assets in one round trip: fetch_many against single fetches.
    Batch,
    /// Cost as the catalog, the clients and the restored data grow.
    Scale,
}

impl Part {
    /// Every section.
    pub const ALL: [Part; 8] = [
        Part::Fetch,
        Part::Compare,
        Part::Memory,
        Part::Publish,
        Part::Footprint,
        Part::Options,
        Part::Batch,
        Part::Scale,
    ];
}

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Small sizes and few iterations: a smoke test, not a measurement.
    pub quick: bool,
    /// The `memseald` to measure.
    pub daemon: PathBuf,
    /// The `redis-server` to compare with; `None` skips the Redis rows.
    pub redis: Option<PathBuf>,
    /// The sections to run.
    pub parts: Vec<Part>,
}

/// How much work each measurement does, full or quick.
#[derive(Debug, Clone, Copy)]
pub struct Effort {
    /// Timed fetches per size and method, one client.
    pub fetches: usize,
    /// Untimed fetches before them.
    pub warmup: usize,
    /// Clients in the concurrent rows.
    pub clients: usize,
    /// Timed fetches per client in the concurrent rows.
    pub concurrent_fetches: usize,
    /// Size of the memory test's asset.
    pub memory_size: usize,
    /// Processes in the memory test.
    pub memory_processes: usize,
    /// Timed runs of each publish method.
    pub publish_runs: usize,
    /// Daemon starts for the start-up times.
    pub starts: usize,
}

impl Effort {
    fn new(quick: bool) -> Effort {
        if quick {
            Effort {
                fetches: 300,
                warmup: 20,
                clients: 4,
                concurrent_fetches: 100,
                memory_size: 32 << 20,
                memory_processes: 16,
                publish_runs: 2,
                starts: 2,
            }
        } else {
            Effort {
                fetches: 20_000,
                warmup: 500,
                clients: 4,
                concurrent_fetches: 5_000,
                memory_size: 256 << 20,
                memory_processes: 16,
                publish_runs: 5,
                starts: 7,
            }
        }
    }

    /// Timed operations for methods that copy every byte (Redis, read,
    /// fetch + touch): fewer for large sizes, where each takes milliseconds.
    pub fn copies(&self, size: usize) -> usize {
        let full = match size {
            s if s <= 64 << 10 => 5_000,
            s if s <= 4 << 20 => 1_000,
            s if s <= 128 << 20 => 50,
            _ => 7,
        };
        if self.fetches < 1_000 {
            (full / 20).max(3)
        } else {
            full
        }
    }
}

/// Everything the measurements share: the daemon with one asset per size,
/// the floor server, Redis, and the same bytes as files in tmpfs.
pub struct Bench {
    /// The run's options.
    pub options: Options,
    /// Its effort.
    pub effort: Effort,
    /// The run's directory in tmpfs.
    pub dir: tempfile::TempDir,
    /// How daemons are started.
    pub daemon_config: DaemonConfig,
    /// The daemon the fetch rows use.
    pub daemon: Daemon,
    /// The floor server process.
    pub floor: Worker,
    /// The floor server's socket.
    pub floor_socket: PathBuf,
    /// The floor's index of the first of the batch table's assets (they
    /// follow the fetch rows' ones).
    pub floor_batch_first: usize,
    /// Redis, when available.
    pub redis: Option<RedisServer>,
    /// Asset sizes of the fetch rows.
    pub sizes: Vec<usize>,
    /// Skipped measurements, and why.
    pub notes: Vec<String>,
}

impl Bench {
    /// Start everything and load the assets.
    pub fn set_up(options: Options) -> io::Result<Bench> {
        let effort = Effort::new(options.quick);
        let sizes: Vec<usize> = if options.quick {
            FETCH_SIZES[..3].to_vec()
        } else {
            FETCH_SIZES.to_vec()
        };
        let mut notes = Vec::new();
        let dir = match tempfile::Builder::new()
            .prefix("memseal-bench-")
            .tempdir_in("/dev/shm")
        {
            Ok(dir) => dir,
            Err(e) => {
                notes.push(format!(
                    "/dev/shm unavailable ({e}); files live in the default temporary directory"
                ));
                tempfile::Builder::new()
                    .prefix("memseal-bench-")
                    .tempdir()?
            }
        };
        let daemon_config = DaemonConfig {
            binary: options.daemon.clone(),
            max_total_bytes: 8 << 30,
            max_asset_size: 2 << 30,
        };
        eprintln!("starting memseald, the floor server and redis-server");
        let daemon = crate::daemon::start(&daemon_config, &dir.path().join("daemon"), None)?;

        let floor_socket = dir.path().join("floor.sock");
        // The fetch rows' sizes, then the batch table's assets.
        let floor_batch_first = sizes.len();
        let size_list: Vec<String> = sizes
            .iter()
            .chain(std::iter::repeat_n(
                &scenario::batch::ASSET_SIZE,
                scenario::batch::BATCH,
            ))
            .map(usize::to_string)
            .collect();
        let floor = Worker::start(&[
            "floor-server".to_owned(),
            "--socket".to_owned(),
            floor_socket.display().to_string(),
            "--sizes".to_owned(),
            size_list.join(","),
        ])?;

        let redis = match &options.redis {
            Some(binary) => Some(RedisServer::start(binary, &dir.path().join("redis"))?),
            None => {
                notes.push(
                    "redis-server not found: the Redis rows are skipped \
                     (scripts/bench installs it from Debian's packages when run as root)"
                        .to_owned(),
                );
                None
            }
        };

        let mut client = memseal::Client::connect_to(daemon.socket()).map_err(io::Error::other)?;
        for &size in &sizes {
            eprintln!("loading the {} asset", size_label(size));
            let bytes = data::content(size);
            let memfd = data::sealed_memfd("bench", &bytes)?;
            client
                .publish_sealed(&asset_name(size), std::os::fd::AsFd::as_fd(&memfd))
                .map_err(io::Error::other)?;
            data::write_file(&file_path(dir.path(), size), &bytes)?;
            if let Some(redis) = &redis {
                RespClient::connect(redis.socket())?.set(&asset_name(size), &bytes)?;
            }
        }
        Ok(Bench {
            options,
            effort,
            dir,
            daemon_config,
            daemon,
            floor,
            floor_socket,
            floor_batch_first,
            redis,
            sizes,
            notes,
        })
    }

    /// Place this process, the daemon, the floor server and Redis.
    pub fn place(&self, placement: Placement) -> io::Result<()> {
        placement.apply_to_self()?;
        placement.apply_to_process(self.daemon.pid())?;
        placement.apply_to_process(self.floor.pid())?;
        if let Some(redis) = &self.redis {
            placement.apply_to_process(redis.pid())?;
        }
        Ok(())
    }

    /// How `method` reaches the asset of `size`.
    pub fn spec(&self, method: Method, size: usize) -> Option<Spec> {
        let index = self.sizes.iter().position(|&s| s == size)?;
        let (path, key) = match method {
            Method::Memseal => (self.daemon.socket().to_owned(), asset_name(size)),
            Method::Floor => (self.floor_socket.clone(), index.to_string()),
            Method::Redis => (self.redis.as_ref()?.socket().to_owned(), asset_name(size)),
            Method::Read => (file_path(self.dir.path(), size), String::new()),
        };
        Some(Spec {
            method,
            path,
            key,
            size,
        })
    }

    /// Run every section and tear everything down.
    pub fn run(mut self) -> io::Result<Report> {
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut sections: Vec<Section> = Vec::new();
        let mut targets: Vec<Target> = Vec::new();

        let parts = self.options.parts.clone();
        let wanted = |part| parts.contains(&part);
        if wanted(Part::Fetch) {
            eprintln!("1/8 fetch latency against the floor");
            let (fetch, fetch_targets) = scenario::fetch::run(&self)?;
            sections.extend(fetch);
            targets.extend(fetch_targets);
        }
        if wanted(Part::Compare) {
            eprintln!("2/8 fetch against Redis GET and read()");
            let (compare, compare_targets) = scenario::compare::run(&self)?;
            sections.push(compare);
            targets.extend(compare_targets);
        }
        // The rest is measured as deployed: no pinning.
        self.place(Placement::Default)?;
        if wanted(Part::Memory) {
            eprintln!("3/8 memory of many readers");
            let (memory, memory_targets) = scenario::memory::run(&self)?;
            sections.push(memory);
            targets.extend(memory_targets);
        }
        if wanted(Part::Publish) {
            eprintln!("4/8 publish throughput");
            let (publish, publish_targets) = scenario::publish::run(&self)?;
            sections.extend(publish);
            targets.extend(publish_targets);
        }
        if wanted(Part::Footprint) {
            eprintln!("5/8 daemon footprint and start-up");
            sections.push(scenario::footprint::run(&self)?);
        }
        if wanted(Part::Options) {
            eprintln!("6/8 what the mapping options buy");
            sections.extend(scenario::options::run(&self)?);
        }
        if wanted(Part::Batch) {
            eprintln!("7/8 many assets in one round trip");
            let (batch, batch_targets) = scenario::batch::run(&self)?;
            sections.push(batch);
            targets.extend(batch_targets);
        }
        if wanted(Part::Scale) {
            eprintln!("8/8 cost as the work grows");
            let (scale, scale_targets) = scenario::scale::run(&self)?;
            sections.extend(scale);
            targets.extend(scale_targets);
        }

        let notes = std::mem::take(&mut self.notes);
        self.floor.finish()?;
        Ok(Report {
            machine: Machine::describe(),
            quick: self.options.quick,
            started_unix,
            sections,
            targets,
            notes,
        })
    }
}

/// The daemon's (and Redis') name for the asset of `size`.
pub fn asset_name(size: usize) -> String {
    format!("bench/{size}")
}

/// The tmpfs file holding the same bytes as the asset of `size`.
pub fn file_path(dir: &Path, size: usize) -> PathBuf {
    dir.join(format!("asset-{size}.bin"))
}
