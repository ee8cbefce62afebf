//! What the fleet tests run against: a real S3-compatible server process
//! (moto_server, installed by scripts/s3-test-server.sh) on 127.0.0.1 over
//! HTTP, real memseald daemons as nodes, and the real memseal-fleet binary.

use memseal_fleet::test_server;
use memseal_tests::Daemon;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The bucket every test uses on its own server.
pub const BUCKET: &str = "fleet-test";
/// The prefix under it.
pub const PREFIX: &str = "fleet";

/// `s3://BUCKET/PREFIX`.
pub fn remote() -> String {
    format!("s3://{BUCKET}/{PREFIX}")
}

/// The moto_server program (installed on first use; scripts/test installs
/// it up front), or `None` if it cannot be had; the caller then skips,
/// which MEMSEAL_REQUIRE_ALL=1 turns into a failure.
fn moto_server() -> Option<PathBuf> {
    static SERVER: OnceLock<Option<PathBuf>> = OnceLock::new();
    SERVER.get_or_init(test_server::moto_server).clone()
}

/// A running moto_server, killed when dropped.
pub struct S3Server {
    child: Option<Child>,
    port: u16,
    /// Its stderr: werkzeug's access log, one line per request.
    log: PathBuf,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// A server with one empty bucket, or `None` (the test is skipped)
    /// when moto cannot be installed here.
    pub fn start(test: &str) -> Option<S3Server> {
        S3Server::start_with_env(test, &[])
    }

    /// A server that checks every request's signature against the
    /// accounts it knows, of which it has none: it refuses every key.
    pub fn start_refusing_every_key(test: &str) -> Option<S3Server> {
        S3Server::start_with_env(test, &[("INITIAL_NO_AUTH_ACTION_COUNT", "0")])
    }

    /// A server with extra environment (moto reads its settings there).
    fn start_with_env(test: &str, env: &[(&str, &str)]) -> Option<S3Server> {
        let Some(program) = moto_server() else {
            memseal_tests::skip(
                test,
                "moto_server could not be installed (scripts/s3-test-server.sh)",
            );
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("memseal-s3-")
            .tempdir()
            .expect("temporary directory");
        let log = dir.path().join("moto.log");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, port) =
            test_server::start_on_free_port(&program, &env, &log).unwrap_or_else(|e| {
                panic!(
                    "moto_server did not start ({e}):\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                )
            });
        let server = S3Server {
            child: Some(child),
            port,
            log,
            env,
            _dir: dir,
        };
        server.create_bucket();
        Some(server)
    }

    /// The test bucket, unless the server checks signatures (it would
    /// refuse the unsigned request; the tests that ask for such a server
    /// need no bucket).
    fn create_bucket(&self) {
        if self.env.is_empty() {
            test_server::create_bucket(self.port, BUCKET).expect("the test bucket");
        }
    }

    /// SIGKILL the server: every connection dies mid-transfer, and its
    /// in-memory state is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port (empty, with the bucket).
    pub fn restart(&mut self) {
        let program = moto_server().expect("installed");
        let deadline = Instant::now() + Duration::from_secs(30);
        // The port can stay busy for a moment after the kill.
        loop {
            match test_server::start(&program, self.port, &self.env, &self.log) {
                Ok(child) => break self.child = Some(child),
                Err(test_server::StartError::PortTaken) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("moto_server did not restart ({e}):\n{}", self.log_text()),
            }
        }
        self.create_bucket();
    }

    /// The environment a client of this server needs.
    pub fn client_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "fleet-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "fleet-test-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// An object_store client of the bucket, for the test's own reads and
    /// for damaging objects on purpose.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        let mut builder = AmazonS3Builder::new().with_bucket_name(BUCKET);
        for (key, value) in self.client_env() {
            builder = builder.with_config(key.to_ascii_lowercase().parse().expect("key"), value);
        }
        Arc::new(builder.build().expect("test store"))
    }

    /// Everything the server logged.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Requests logged so far whose request line starts with `method` and
    /// a path that starts with `/BUCKET/PREFIX/` + `key_prefix`.
    pub fn requests(&self, method: &str, key_prefix: &str) -> usize {
        let needle = format!("{method} /{BUCKET}/{PREFIX}/{key_prefix}");
        self.log_text()
            .lines()
            .filter(|line| line.contains(&needle))
            .count()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A key under the prefix.
pub fn key(relative: &str) -> Key {
    Key::from(format!("{PREFIX}/{relative}"))
}

/// The blob key of `bytes`.
pub fn blob_key(bytes: &[u8]) -> Key {
    key(&format!("blobs/{}", blake3::hash(bytes).to_hex()))
}

/// Read an object from the store (test side).
pub fn read_object(store: &Arc<dyn ObjectStore>, key: &Key) -> Option<Vec<u8>> {
    block_on(async {
        match store.get(key).await {
            Ok(result) => Some(result.bytes().await.expect("body").to_vec()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("reading {key}: {e}"),
        }
    })
}

/// Write (or overwrite) an object in the store (test side).
pub fn write_object(store: &Arc<dyn ObjectStore>, key: &Key, bytes: Vec<u8>) {
    block_on(async {
        store
            .put(key, PutPayload::from(bytes))
            .await
            .unwrap_or_else(|e| panic!("writing {key}: {e}"));
    })
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// One node: a real memseald and the agent's state directory.
pub struct Node {
    pub daemon: Daemon,
    /// The `--remote` its commands get: the test bucket, unless a test
    /// points it elsewhere.
    pub remote: String,
    env: Vec<(&'static str, String)>,
}

impl Node {
    /// A node with a default daemon, using `server`.
    pub fn new(server: &S3Server) -> Node {
        Node::with_daemon(server, Daemon::start())
    }

    /// A node around `daemon`.
    pub fn with_daemon(server: &S3Server, daemon: Daemon) -> Node {
        Node {
            daemon,
            remote: remote(),
            env: server.client_env(),
        }
    }

    /// Publish `bytes` as `name` on this node's daemon and push that
    /// version to the store.
    pub fn publish_and_push(&self, name: &str, bytes: &[u8]) {
        self.daemon.client().publish_bytes(name, bytes).unwrap();
        self.fleet_ok(["push", name]);
    }

    /// `memseal-fleet ARGS` for this node: its socket, the test remote, its
    /// own state directory and metrics file, the server's credentials.
    pub fn fleet<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = Command::new(env!("CARGO_BIN_EXE_memseal-fleet"));
        command
            .args(args)
            .arg("--socket")
            .arg(self.daemon.socket())
            .arg("--remote")
            .arg(&self.remote)
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--metrics-file")
            .arg(self.metrics_file())
            .env_remove("MEMSEAL_SOCKET")
            .env_remove("MEMSEAL_FLEET_REMOTE")
            .env_remove("MEMSEAL_FLEET_STATE_DIR")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null());
        for (key, _) in std::env::vars() {
            if key.starts_with("AWS_") {
                command.env_remove(key);
            }
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    /// Run a one-shot command to its end.
    pub fn fleet_output<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.fleet(args).output().expect("run memseal-fleet")
    }

    /// Run a one-shot command that must succeed; its stdout.
    pub fn fleet_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let output = self.fleet_output(args);
        assert!(
            output.status.success(),
            "memseal-fleet failed ({}):\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Start `memseal-fleet ARGS` in the background.
    pub fn spawn_fleet<I, S>(&self, args: I) -> Background
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let log = self.daemon.dir().join(format!(
            "fleet-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        let mut command = self.fleet(args);
        command
            .stdout(fs::File::create(&log).expect("log"))
            .stderr(fs::OpenOptions::new().append(true).open(&log).expect("log"));
        let child = command.spawn().expect("spawn memseal-fleet");
        Background {
            child: Some(child),
            log,
        }
    }

    /// Start `memseal-fleet run ARGS` in the background and wait until
    /// memseald has made it the resolver of its `--pull` prefixes
    /// (pull-through), so that a fetch from then on reaches it.
    pub fn spawn_resolver<I, S>(&self, args: I) -> Background
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let run = std::iter::once(std::ffi::OsString::from("run"))
            .chain(args.into_iter().map(|a| a.as_ref().to_owned()));
        let agent = self.spawn_fleet(run);
        agent.wait_for(REGISTERED, 1, Duration::from_secs(20));
        agent
    }

    /// The agent's state directory on this node.
    pub fn state_dir(&self) -> PathBuf {
        self.daemon.dir().join("fleet-state")
    }

    /// The metrics file the agent writes.
    pub fn metrics_file(&self) -> PathBuf {
        self.daemon.dir().join("fleet.prom")
    }

    /// Wait (at most 10 s) until counter `name` reads `value`: a client
    /// woken by the agent's publish can be a moment ahead of the counters.
    pub fn wait_for_counter(&self, name: &str, value: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.read_counter(name) != Some(value) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(self.counter(name), value, "counter {name}");
    }

    /// One counter from the metrics file (`memseal_fleet_<name>_total`).
    pub fn counter(&self, name: &str) -> u64 {
        self.read_counter(name).unwrap_or_else(|| {
            panic!(
                "no counter {name} in:\n{}",
                fs::read_to_string(self.metrics_file()).unwrap_or_default()
            )
        })
    }

    fn read_counter(&self, name: &str) -> Option<u64> {
        let text = fs::read_to_string(self.metrics_file()).unwrap_or_default();
        let metric = format!("memseal_fleet_{name}_total ");
        text.lines()
            .find_map(|line| line.strip_prefix(&metric))
            .and_then(|value| value.trim().parse().ok())
    }
}

/// What a running agent logs each time memseald accepts it as a resolver.
pub const REGISTERED: &str = "memseald asks this agent for the names it lacks";

/// A memseal-fleet process in the background, killed when dropped.
pub struct Background {
    child: Option<Child>,
    log: PathBuf,
}

impl Background {
    /// Its stdout and stderr so far.
    pub fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until its output holds `text` at least `times` times; panics
    /// with the output after `timeout`.
    pub fn wait_for(&self, text: &str, times: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.output().matches(text).count() < times {
            assert!(
                Instant::now() < deadline,
                "memseal-fleet did not say {text:?} {times} time(s) within {timeout:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Wait for it to exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "memseal-fleet still running after {timeout:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill();
    }
}
