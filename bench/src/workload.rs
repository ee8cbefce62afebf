//! The ways of getting an asset's bytes that the harness compares, behind
//! one small trait so every one runs through the same timing loop, in this
//! process or in a worker process.

use crate::data::touch_pages;
use crate::floor::FloorClient;
use crate::mapping::SealedMap;
use crate::redis::RespClient;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Which way of getting the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// `memseal::Client::fetch`: request, descriptor, seal check, map.
    Memseal,
    /// The harness's minimal handoff (see [`crate::floor`]).
    Floor,
    /// Redis GET over a Unix socket: the bytes are copied to the client.
    Redis,
    /// open + read() of a file in tmpfs into a buffer.
    Read,
}

/// Everything a process needs to fetch one asset: serialisable, so the
/// harness can hand it to a worker process on its command line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// How to fetch.
    pub method: Method,
    /// The daemon's, floor server's or Redis socket, or the file to read.
    pub path: PathBuf,
    /// Asset name (memseal), key (Redis) or index (floor); unused for read.
    pub key: String,
    /// The asset's size in bytes.
    pub size: usize,
}

/// One way of getting one asset's bytes.
pub trait Fetcher {
    /// Fetch once and release everything again; with `touch`, read one
    /// byte of every page before releasing.
    fn fetch(&mut self, touch: bool) -> io::Result<()>;

    /// Fetch once and keep the bytes until the fetcher is dropped.
    fn fetch_and_keep(&mut self) -> io::Result<&[u8]>;
}

/// Connect (or open) as `spec` says.
pub fn open(spec: &Spec) -> io::Result<Box<dyn Fetcher>> {
    Ok(match spec.method {
        Method::Memseal => Box::new(MemsealFetcher {
            client: memseal::Client::connect_to(&spec.path).map_err(io::Error::other)?,
            name: spec.key.clone(),
            kept: None,
        }),
        Method::Floor => Box::new(FloorFetcher {
            client: FloorClient::connect(&spec.path)?,
            index: spec
                .key
                .parse()
                .map_err(|_| io::Error::other("a floor key is an index"))?,
            kept: None,
        }),
        Method::Redis => Box::new(RedisFetcher {
            client: RespClient::connect(&spec.path)?,
            key: spec.key.clone(),
            kept: Vec::new(),
        }),
        Method::Read => Box::new(ReadFetcher {
            path: spec.path.clone(),
            buffer: vec![0; spec.size],
        }),
    })
}

/// Run `warmup` untimed fetches, then time `iterations` fetches one after
/// another.
pub fn time_fetches(
    fetcher: &mut dyn Fetcher,
    warmup: usize,
    iterations: usize,
    touch: bool,
) -> io::Result<Vec<Duration>> {
    for _ in 0..warmup {
        fetcher.fetch(touch)?;
    }
    let mut latencies = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let start = Instant::now();
        fetcher.fetch(touch)?;
        latencies.push(start.elapsed());
    }
    Ok(latencies)
}

struct MemsealFetcher {
    client: memseal::Client,
    name: String,
    kept: Option<memseal::Asset>,
}

impl Fetcher for MemsealFetcher {
    fn fetch(&mut self, touch: bool) -> io::Result<()> {
        let asset = self.client.fetch(&self.name).map_err(io::Error::other)?;
        if touch {
            touch_pages(&asset);
        }
        Ok(())
    }

    fn fetch_and_keep(&mut self) -> io::Result<&[u8]> {
        let asset = self.client.fetch(&self.name).map_err(io::Error::other)?;
        Ok(self.kept.insert(asset))
    }
}

struct FloorFetcher {
    client: FloorClient,
    index: usize,
    kept: Option<SealedMap>,
}

impl Fetcher for FloorFetcher {
    fn fetch(&mut self, touch: bool) -> io::Result<()> {
        let map = self.client.fetch(self.index)?;
        if touch {
            touch_pages(map.as_slice());
        }
        Ok(())
    }

    fn fetch_and_keep(&mut self) -> io::Result<&[u8]> {
        let map = self.client.fetch(self.index)?;
        Ok(self.kept.insert(map).as_slice())
    }
}

struct RedisFetcher {
    client: RespClient,
    key: String,
    kept: Vec<u8>,
}

impl Fetcher for RedisFetcher {
    fn fetch(&mut self, touch: bool) -> io::Result<()> {
        let value = self.client.get(&self.key)?;
        if touch {
            touch_pages(&value);
        }
        Ok(())
    }

    fn fetch_and_keep(&mut self) -> io::Result<&[u8]> {
        self.kept = self.client.get(&self.key)?;
        Ok(&self.kept)
    }
}

/// Reads into a buffer allocated once: the cheapest way read() can be
/// used, so the comparison does not charge it for allocation.
struct ReadFetcher {
    path: PathBuf,
    buffer: Vec<u8>,
}

impl ReadFetcher {
    fn read_all(&mut self) -> io::Result<()> {
        let mut file = File::open(&self.path)?;
        file.read_exact(&mut self.buffer)
    }
}

impl Fetcher for ReadFetcher {
    fn fetch(&mut self, touch: bool) -> io::Result<()> {
        self.read_all()?;
        if touch {
            touch_pages(&self.buffer);
        }
        Ok(())
    }

    fn fetch_and_keep(&mut self) -> io::Result<&[u8]> {
        self.read_all()?;
        Ok(&self.buffer)
    }
}
