//! Worker processes: the harness starts its own binary again to play a
//! client (or the floor server) in a process of its own, as real clients
//! are. Each worker prints `ready` once set up, then waits for the harness
//! on its standard input, so that concurrent clients start together and
//! set-up never counts.

use crate::workload::{self, Spec};
use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// What a fetching worker reports.
#[derive(Debug, Serialize, Deserialize)]
pub struct FetchReport {
    /// One latency per timed fetch, in nanoseconds.
    pub latencies_ns: Vec<u64>,
    /// From the first timed fetch to the end of the last.
    pub wall_ns: u64,
}

/// Body of `memseal-bench worker-fetch`: connect, warm up, print `ready`,
/// then for every line the harness writes, time `iterations` fetches and
/// print a [`FetchReport`] as one line of JSON. Ends when standard input
/// closes. Several rounds on one connection let the harness alternate
/// between methods without reconnecting.
pub fn fetch_main(spec: &Spec, warmup: usize, iterations: usize, touch: bool) -> io::Result<()> {
    let mut fetcher = workload::open(spec)?;
    for _ in 0..warmup {
        fetcher.fetch(touch)?;
    }
    println!("ready");
    io::stdout().flush()?;
    let mut line = String::new();
    while io::stdin().lock().read_line(&mut line)? > 0 {
        line.clear();
        let start = Instant::now();
        let latencies = workload::time_fetches(fetcher.as_mut(), 0, iterations, touch)?;
        let report = FetchReport {
            latencies_ns: latencies.iter().map(|d| d.as_nanos() as u64).collect(),
            wall_ns: start.elapsed().as_nanos() as u64,
        };
        let mut out = io::stdout().lock();
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
        out.flush()?;
    }
    Ok(())
}

/// Body of `memseal-bench worker-hold`: fetch once, read every page, and
/// hold the bytes until standard input closes.
pub fn hold_main(spec: &Spec) -> io::Result<()> {
    let mut fetcher = workload::open(spec)?;
    let bytes = fetcher.fetch_and_keep()?;
    crate::data::touch_pages(bytes);
    println!("ready");
    io::stdout().flush()?;
    io::copy(&mut io::stdin(), &mut io::sink())?;
    Ok(())
}

/// A worker process as the harness sees it.
pub struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    /// Start this binary with `args` and wait for its `ready` line.
    pub fn start(args: &[String]) -> io::Result<Worker> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut worker = Worker {
            child,
            stdin,
            stdout,
        };
        let line = worker.read_line()?;
        if line.trim() != "ready" {
            return Err(io::Error::other(format!(
                "worker {:?} failed to start (said {line:?})",
                args.first()
            )));
        }
        Ok(worker)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Tell a waiting fetch worker to run one round.
    pub fn go(&mut self) -> io::Result<()> {
        let stdin = self.stdin.as_mut().expect("stdin is open until finish");
        stdin.write_all(b"go\n")?;
        stdin.flush()
    }

    /// Read the report of the round a fetch worker just ran.
    pub fn report(&mut self) -> io::Result<FetchReport> {
        let line = self.read_line()?;
        serde_json::from_str(&line).map_err(|e| io::Error::other(format!("bad worker report: {e}")))
    }

    /// Run one round and read its report.
    pub fn round(&mut self) -> io::Result<FetchReport> {
        self.go()?;
        self.report()
    }

    /// Close its standard input (which ends every kind of worker) and wait
    /// for it.
    pub fn finish(mut self) -> io::Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            return Err(io::Error::other(format!("worker failed: {status}")));
        }
        Ok(())
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            return Err(io::Error::other(format!("worker exited early: {status}")));
        }
        Ok(line)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.stdin.take());
        // A worker still running here was abandoned after an error.
        if matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
            if matches!(self.child.try_wait(), Ok(None)) {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

/// Arguments that start a fetch worker.
pub fn fetch_args(spec: &Spec, warmup: usize, iterations: usize, touch: bool) -> Vec<String> {
    let mut args = vec![
        "worker-fetch".to_owned(),
        "--spec".to_owned(),
        serde_json::to_string(spec).expect("a spec always serialises"),
        "--warmup".to_owned(),
        warmup.to_string(),
        "--iterations".to_owned(),
        iterations.to_string(),
    ];
    if touch {
        args.push("--touch".to_owned());
    }
    args
}

/// Arguments that start a holding worker.
pub fn hold_args(spec: &Spec) -> Vec<String> {
    vec![
        "worker-hold".to_owned(),
        "--spec".to_owned(),
        serde_json::to_string(spec).expect("a spec always serialises"),
    ]
}
