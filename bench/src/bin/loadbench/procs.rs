//! The processes a run starts, each stopped (SIGTERM, then SIGKILL) when its guard drops,
//! so an error anywhere in the run still leaves nothing behind. `bench/run.sh` also
//! kills whatever is left in its process group if the driver itself is killed.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::http1;

#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
}

impl Process {
    /// Start `command` with its stdout and stderr in `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, mut command: Command, log_dir: &Path) -> anyhow::Result<Self> {
        let log = File::create(log_dir.join(format!("{name}.log")))?;
        command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = command.spawn().with_context(|| format!("cannot start {name}: {command:?}"))?;
        Ok(Self { name: name.to_owned(), child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fail if the process has already exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early ({status}); see its log in the run directory", self.name);
        }
        Ok(())
    }

    /// Peak and current resident set size, in KiB, from /proc.
    pub fn memory_kib(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        };
        Some((field("VmHWM:")?, field("VmRSS:")?))
    }

    /// Poll `GET path` every millisecond until it answers 200; the time that took.
    pub fn wait_http_ok(&mut self, addr: SocketAddr, path: &str, limit: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            if let Ok(answer) = http1::get(addr, path)
                && answer.status == 200
            {
                return Ok(started.elapsed());
            }
            self.check_running()?;
            if started.elapsed() > limit {
                bail!("{} did not answer 200 on {path} within {limit:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SIGTERM lets nginx's master stop its workers; SIGKILL if it does not go.
        let _ = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound and released; the benchmark is the only user here).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// `program` as a command, run on CPU `cpu` only when given (`taskset -c`, which execs
/// the program, so the process keeps the pid the caller sees).
pub fn command_on(program: &Path, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(cpu.to_string()).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// Busy time of CPU `cpu` so far, in clock ticks (user, nice, system, irq, softirq,
/// steal from `/proc/stat`), or `None` off Linux.
pub fn cpu_busy_ticks(cpu: usize) -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.split_whitespace().next() == Some(&format!("cpu{cpu}")))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| fields.get(i)).sum();
    Some(busy)
}
