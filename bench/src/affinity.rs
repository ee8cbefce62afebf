//! Where clients and servers run: pinned to one CPU, or wherever the
//! scheduler puts them.
//!
//! On a machine with few CPUs, a round trip between two processes on
//! different CPUs pays for waking the other CPU, which can double the time
//! of a small request. The headline rows therefore pin the client and the
//! server to the same CPU; the default placement is reported beside them.
//!
//! Pinning a running server means pinning every one of its threads
//! (`/proc/PID/task`): `sched_setaffinity` acts on one thread, and threads
//! the server starts later inherit the mask of the thread that starts them.

use rustix::process::Pid;
use rustix::thread::{sched_setaffinity, CpuSet};
use serde::Serialize;
use std::fmt;
use std::io;

/// How the processes of one measurement are placed on CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Client(s) and server on one CPU (CPU 0).
    SameCpu,
    /// No pinning: the scheduler decides.
    Default,
}

impl Placement {
    /// Both placements, headline first.
    pub const ALL: [Placement; 2] = [Placement::SameCpu, Placement::Default];

    /// The CPU mask this placement gives every process.
    fn cpus(self) -> CpuSet {
        let mut set = CpuSet::new();
        match self {
            Placement::SameCpu => set.set(0),
            Placement::Default => {
                for cpu in 0..online_cpus() {
                    set.set(cpu);
                }
            }
        }
        set
    }

    /// Apply to the calling thread (and so to threads and processes it
    /// starts afterwards).
    pub fn apply_to_self(self) -> io::Result<()> {
        Ok(sched_setaffinity(None, &self.cpus())?)
    }

    /// Apply to every thread of the running process `pid`.
    pub fn apply_to_process(self, pid: u32) -> io::Result<()> {
        let cpus = self.cpus();
        for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let Some(tid) = entry?
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
                .and_then(Pid::from_raw)
            else {
                continue;
            };
            match sched_setaffinity(Some(tid), &cpus) {
                // A thread that exited since the listing needs no pinning.
                Ok(()) | Err(rustix::io::Errno::SRCH) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Placement::SameCpu => "same CPU",
            Placement::Default => "default",
        })
    }
}

/// CPUs of the machine, at least one. Counted from /proc/cpuinfo rather
/// than `available_parallelism`, which shrinks to one once this process is
/// pinned.
pub fn online_cpus() -> usize {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|info| info.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(1)
        .max(1)
}
