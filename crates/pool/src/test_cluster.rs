//! A private PostgreSQL server for tests and benchmarks: `initdb` into a
//! temporary directory, listening only on a Unix socket in it, gone when the
//! process that started it ends (however it ends).
//!
//! The server runs under a small shell that holds the read end of a pipe
//! whose write end only this process has: when this process exits, even by
//! `kill -9`, the shell reads end-of-file, stops the server (SIGQUIT, an
//! immediate shutdown that releases its shared memory) and deletes the
//! directory. As root (CI), the server runs as the `postgres` user, since
//! PostgreSQL refuses to run as root.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The superuser `initdb` makes; the tests' databases belong to it.
const USER: &str = "idlemesh";
/// Only names the socket file (`.s.PGSQL.5432`): no TCP port is opened.
const PORT: u16 = 5432;

/// A running private server.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    /// The watchdog shell; its stdin is the pipe that keeps the server alive.
    _watchdog: Child,
    databases: AtomicU32,
}

/// Where PostgreSQL's server programs are: `$PATH`, else Debian's versioned directory.
fn bin_dir() -> io::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
    {
        // /usr/local/bin/initdb may be a link into the directory with the rest (psql, createdb...).
        let real = std::fs::canonicalize(dir.join("initdb"))?;
        return Ok(real.parent().map_or(dir, Path::to_path_buf));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "PostgreSQL's initdb was not found: install it (scripts/setup)")
    })
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() == 0 }
}

/// `program args…`, as the `postgres` user when we are root.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--clear-groups", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut c: Command, what: &str) -> io::Result<()> {
    let out = c.stdin(Stdio::null()).output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )))
}

impl Cluster {
    /// One server for the whole test binary, started on first use.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            Cluster::start(&[("fsync", "off"), ("synchronous_commit", "off")]).expect("a private PostgreSQL server")
        })
    }

    /// Starts a server with these settings (`-c name=value`), e.g. `fsync=off` for tests.
    pub fn start(settings: &[(&str, &str)]) -> io::Result<Cluster> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new().prefix("idlemesh-pg-").tempdir()?;
        // Should initdb fail, the directory goes with `dir`; once the server
        // runs, the watchdog deletes it.
        init(dir.path(), &bin)?;
        let dir = dir.keep();
        let data = dir.join("data");
        let mut server = as_server_user(&bin.join("postgres"));
        server.arg("-D").arg(&data).arg("-k").arg(&dir).args(["-p", &PORT.to_string(), "-c", "listen_addresses="]);
        for (name, value) in settings {
            server.args(["-c", &format!("{name}={value}")]);
        }
        let server = shell_words(&server);
        let script = format!(
            "trap '' INT TERM HUP\n\
             {server} >'{log}' 2>&1 & pid=$!\n\
             read _ignored\n\
             kill -QUIT $pid 2>/dev/null\n\
             i=0; while [ $i -lt 100 ] && kill -0 $pid 2>/dev/null; do sleep 0.1; i=$((i+1)); done\n\
             kill -KILL $pid 2>/dev/null; wait\n\
             rm -rf '{dir}'\n",
            log = dir.join("server.log").display(),
            dir = dir.display(),
        );
        let watchdog = Command::new("sh").arg("-c").arg(script).stdin(Stdio::piped()).stdout(Stdio::null()).spawn()?;
        let cluster = Cluster { dir, bin, _watchdog: watchdog, databases: AtomicU32::new(0) };
        cluster.wait_ready()?;
        Ok(cluster)
    }

    fn wait_ready(&self) -> io::Result<()> {
        let started = Instant::now();
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h"])
                .arg(&self.dir)
                .args(["-p", &PORT.to_string()])
                .status()?;
            if ready.success() {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(60) {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                return Err(io::Error::other(format!("PostgreSQL did not start within 60 s:\n{log}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// A new, empty database; returns its URL.
    pub fn create_database(&self) -> io::Result<String> {
        let name = format!("t{}_{}", std::process::id(), self.databases.fetch_add(1, Ordering::Relaxed));
        let mut c = Command::new(self.bin.join("createdb"));
        c.arg("-h").arg(&self.dir).args(["-p", &PORT.to_string(), "-U", USER, &name]);
        run(c, "createdb")?;
        Ok(self.url(&name))
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgresql://{USER}@/{name}?host={}&port={PORT}", self.dir.display())
    }

    /// Runs SQL through `psql` on database `name` (for tests that look behind the pool's back).
    pub fn psql(&self, name: &str, sql: &str) -> io::Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(&self.dir)
            .args(["-p", &PORT.to_string(), "-U", USER, "-d", name, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Cluster {
    /// Runs `pgbench` (the server's own load generator) on database `name`
    /// with these arguments; returns what it printed.
    pub fn pgbench(&self, name: &str, args: &[&str]) -> io::Result<String> {
        let out = Command::new(self.bin.join("pgbench"))
            .arg("-h")
            .arg(&self.dir)
            .args(["-p", &PORT.to_string(), "-U", USER])
            .args(args)
            .arg(name)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!("pgbench failed: {}", String::from_utf8_lossy(&out.stderr))));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// `initdb` into `dir/data`, as the server's user.
fn init(dir: &Path, bin: &Path) -> io::Result<()> {
    if is_root() {
        let mut chown = Command::new("chown");
        chown.arg("postgres:postgres").arg(dir);
        run(chown, "chown postgres")?;
    }
    let mut initdb = as_server_user(&bin.join("initdb"));
    initdb.args(["--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C", "-U", USER, "-D"]).arg(dir.join("data"));
    run(initdb, "initdb")
}

/// The command as one line of `sh`, each word single-quoted.
fn shell_words(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy().replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}
