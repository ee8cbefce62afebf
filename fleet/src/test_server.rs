//! The S3-compatible server the fleet's tests and its benchmark run
//! against: `moto_server` (from the `moto[server]` package on PyPI,
//! installed by scripts/s3-test-server.sh) on 127.0.0.1, speaking the S3
//! API over plain HTTP. The agent itself never uses this module.
//!
//! It is the one place that knows how to find the program, start it on a
//! free port, tell when it answers, and create a bucket in it.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How many free ports to try when another process takes the one picked.
const PORT_ATTEMPTS: usize = 5;

/// The moto_server program: `$MEMSEAL_S3_SERVER` if set, otherwise the one
/// scripts/s3-test-server.sh installs (installing it if it is missing).
/// `None` when it cannot be had.
pub fn moto_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MEMSEAL_S3_SERVER") {
        return Some(PathBuf::from(path));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/s3-test-server.sh");
    let output = Command::new(script)
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    let path = String::from_utf8(output.stdout).ok()?;
    let path = path.trim();
    (output.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
}

/// Why a server did not start.
#[derive(Debug)]
pub enum StartError {
    /// It exited at once: another process holds the port.
    PortTaken,
    /// It ran but did not answer within 30 s (it has been killed).
    NoAnswer,
    /// It could not be started at all.
    Io(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::PortTaken => write!(f, "its port was taken"),
            StartError::NoAnswer => write!(f, "it did not answer within {START_TIMEOUT:?}"),
            StartError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Start `program` on 127.0.0.1:`port` with `env` added to its
/// environment, its output appended to `log`; returns once it answers HTTP.
pub fn start(
    program: &Path,
    port: u16,
    env: &[(String, String)],
    log: &Path,
) -> Result<Child, StartError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(StartError::Io)?;
    let mut child = Command::new(program)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        // Its access log, one line per request, as the requests happen.
        .env("PYTHONUNBUFFERED", "1")
        .envs(env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(StartError::Io)?)
        .stderr(log)
        .spawn()
        .map_err(StartError::Io)?;
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if child.try_wait().map_err(StartError::Io)?.is_some() {
            return Err(StartError::PortTaken);
        }
        if http_status(port, "GET", "/moto-api/").is_some() {
            return Ok(child);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(StartError::NoAnswer)
}

/// [`start`] on a port nobody uses, trying another one if a process takes
/// it in between; returns the server and its port.
pub fn start_on_free_port(
    program: &Path,
    env: &[(String, String)],
    log: &Path,
) -> Result<(Child, u16), StartError> {
    let mut last = StartError::PortTaken;
    for _ in 0..PORT_ATTEMPTS {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(StartError::Io)?
            .port();
        match start(program, port, env, log) {
            Ok(child) => return Ok((child, port)),
            Err(StartError::PortTaken) => last = StartError::PortTaken,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Create `bucket`. moto takes an unsigned request for that when it does
/// not check signatures (its default).
pub fn create_bucket(port: u16, bucket: &str) -> Result<(), String> {
    match http_status(port, "PUT", &format!("/{bucket}")) {
        Some(200) => Ok(()),
        other => Err(format!(
            "creating the bucket {bucket}: the server answered {other:?}"
        )),
    }
}

/// One plain HTTP/1.1 request without a body; the status code of the
/// answer, if anything answered.
pub fn http_status(port: u16, method: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.split_whitespace().nth(1)?.parse().ok()
}
