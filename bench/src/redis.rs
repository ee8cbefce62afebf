//! A real `redis-server` on a Unix socket, and a small RESP client for it.
//!
//! The client is deliberately minimal (a command written in one call, the
//! reply read straight into a fresh `Vec`), so the Redis rows measure
//! Redis and the copy of the bytes, not the overhead of a client library.
//! Persistence is off and the bulk-length and query-buffer limits are
//! raised so that values of 1 GiB can be stored at all.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running redis-server, killed when dropped.
pub struct RedisServer {
    child: Child,
    socket: PathBuf,
}

impl RedisServer {
    /// Find `redis-server` on the PATH.
    pub fn find() -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join("redis-server"))
            .find(|candidate| candidate.is_file())
    }

    /// Start `binary` with its socket and working files in `dir`, and wait
    /// until it answers PING.
    pub fn start(binary: &Path, dir: &Path) -> io::Result<RedisServer> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("redis.sock");
        let log = std::fs::File::create(dir.join("redis.log"))?;
        let child = Command::new(binary)
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(dir)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--proto-max-bulk-len", "2gb"])
            .args(["--client-query-buffer-limit", "2gb"])
            .args(["--maxmemory", "0"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut server = RedisServer { child, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut client) = RespClient::connect(&server.socket) {
                if client.ping().is_ok() {
                    return Ok(server);
                }
            }
            if let Some(status) = server.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "redis-server exited at start ({status}); see {}",
                    dir.join("redis.log").display()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("redis-server did not answer PING in 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its Unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking RESP2 client over a Unix socket.
pub struct RespClient {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl RespClient {
    /// Connect to a Redis Unix socket.
    pub fn connect(socket: &Path) -> io::Result<RespClient> {
        let stream = UnixStream::connect(socket)?;
        Ok(RespClient {
            writer: stream.try_clone()?,
            reader: BufReader::with_capacity(64 * 1024, stream),
        })
    }

    /// PING, expecting PONG.
    pub fn ping(&mut self) -> io::Result<()> {
        self.command(&[b"PING"])?;
        match self.reply()? {
            Reply::Status(s) if s == "PONG" => Ok(()),
            other => Err(unexpected("PONG", &other)),
        }
    }

    /// SET `key` to `value`.
    pub fn set(&mut self, key: &str, value: &[u8]) -> io::Result<()> {
        self.command(&[b"SET", key.as_bytes(), value])?;
        match self.reply()? {
            Reply::Status(s) if s == "OK" => Ok(()),
            other => Err(unexpected("OK", &other)),
        }
    }

    /// GET `key`: the value, copied into a new buffer.
    pub fn get(&mut self, key: &str) -> io::Result<Vec<u8>> {
        self.command(&[b"GET", key.as_bytes()])?;
        match self.reply()? {
            Reply::Bulk(bytes) => Ok(bytes),
            other => Err(unexpected("a bulk string", &other)),
        }
    }

    /// Write one command as a RESP array of bulk strings. Small commands go
    /// out in one write; a large argument is written from where it lies.
    fn command(&mut self, args: &[&[u8]]) -> io::Result<()> {
        let mut head = format!("*{}\r\n", args.len()).into_bytes();
        for (i, arg) in args.iter().enumerate() {
            head.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            if arg.len() > 64 * 1024 {
                // Only the last argument (a SET value) is ever this large.
                debug_assert_eq!(i, args.len() - 1);
                self.writer.write_all(&head)?;
                self.writer.write_all(arg)?;
                head.clear();
            } else {
                head.extend_from_slice(arg);
            }
            head.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&head)
    }

    fn reply(&mut self) -> io::Result<Reply> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(line.len().min(1));
        match kind {
            "+" => Ok(Reply::Status(rest.to_owned())),
            "-" => Err(io::Error::other(format!("redis: {rest}"))),
            "$" => {
                let len: i64 = rest
                    .parse()
                    .map_err(|_| io::Error::other(format!("bad bulk length {rest:?}")))?;
                let Ok(len) = usize::try_from(len) else {
                    return Ok(Reply::Nil);
                };
                let mut bytes = vec![0u8; len];
                self.reader.read_exact(&mut bytes)?;
                let mut crlf = [0u8; 2];
                self.reader.read_exact(&mut crlf)?;
                Ok(Reply::Bulk(bytes))
            }
            _ => Err(io::Error::other(format!("unexpected reply {line:?}"))),
        }
    }
}

#[derive(Debug)]
enum Reply {
    Status(String),
    Bulk(Vec<u8>),
    Nil,
}

fn unexpected(wanted: &str, got: &Reply) -> io::Error {
    let got = match got {
        Reply::Status(s) => format!("status {s:?}"),
        Reply::Bulk(b) => format!("{} bytes", b.len()),
        Reply::Nil => "nil".to_owned(),
    };
    io::Error::other(format!("redis answered {got}, expected {wanted}"))
}
