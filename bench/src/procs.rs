//! The processes, network namespaces and temporary folders the harness creates, and the
//! machinery that undoes them on every exit path: `Drop` on the normal and error paths, and a
//! signal thread (SIGINT, SIGTERM, SIGHUP) that kills what is still registered, deletes the
//! namespaces and the temporary folder, then exits.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use crate::Result;

// ------------------------------------------------------------------ registry

struct Registry {
    pids: Vec<u32>,
    netns: Vec<String>,
    dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    pids: Vec::new(),
    netns: Vec::new(),
    dirs: Vec::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn register_netns(name: &str) {
    registry().netns.push(name.to_string());
}

pub fn unregister_netns(name: &str) {
    registry().netns.retain(|n| n != name);
}

/// Write end of the self-pipe the signal handler writes the signal number into.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    let b = sig as u8;
    #[allow(unsafe_code)]
    // SAFETY: write(2) is async-signal-safe; `b` lives for the call.
    unsafe {
        libc::write(fd, (&b as *const u8).cast(), 1);
    }
}

/// Catches SIGINT, SIGTERM and SIGHUP with a handler that only writes to a pipe; a thread
/// reading the pipe kills what is registered, deletes the namespaces and the temporary
/// folder, then exits. (Handlers, unlike a blocked mask, are not inherited across exec: the
/// processes we start get default signal handling.)
pub fn install_signal_cleanup() {
    let mut fds = [0 as libc::c_int; 2];
    #[allow(unsafe_code)]
    // SAFETY: pipe writes two descriptors into the array we own; sigaction reads the struct we
    // initialise; the handler only calls write(2).
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return;
        }
        SIGNAL_PIPE.store(fds[1], Ordering::Relaxed);
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        action.sa_flags = libc::SA_RESTART;
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaction(s, &action, std::ptr::null_mut());
        }
    }
    let read_fd = fds[0];
    thread::spawn(move || {
        let mut b = 0u8;
        #[allow(unsafe_code)]
        // SAFETY: reads one byte into `b` from the pipe's read end, which stays open.
        let n = unsafe { libc::read(read_fd, (&mut b as *mut u8).cast(), 1) };
        if n == 1 {
            eprintln!("\nferry-bench: signal {b}, cleaning up");
            cleanup_everything();
            std::process::exit(128 + i32::from(b));
        }
    });
}

/// Kills every registered process tree, deletes registered namespaces and folders.
fn cleanup_everything() {
    let reg = registry();
    let tree = descendants(&reg.pids);
    for &pid in &tree {
        signal(pid, libc::SIGTERM);
    }
    thread::sleep(Duration::from_millis(500));
    for &pid in &tree {
        if is_running(pid) {
            signal(pid, libc::SIGKILL);
        }
    }
    thread::sleep(Duration::from_millis(100));
    for ns in &reg.netns {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
    for d in &reg.dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

// ------------------------------------------------------------------ temp dir

pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("ferry-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        registry().dirs.push(path.clone());
        Ok(TempDir { path })
    }

    /// A fresh sub-folder for one path's keys, configs and logs.
    pub fn sub(&self, name: &str) -> Result<PathBuf> {
        let p = self.path.join(name);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        registry().dirs.retain(|d| d != &self.path);
    }
}

// ------------------------------------------------------------------ processes

struct Proc {
    name: String,
    child: Child,
}

/// The processes of one path; every one (with its descendants) is killed on drop.
#[derive(Default)]
pub struct Procs {
    list: Vec<Proc>,
}

fn log_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{}.log", name.replace([' ', '/'], "-")))
}

impl Procs {
    fn push(&mut self, name: &str, child: Child) {
        registry().pids.push(child.id());
        self.list.push(Proc {
            name: name.into(),
            child,
        });
    }

    /// Spawns `cmd` with stdout discarded and stderr written to `dir/NAME.log`.
    pub fn spawn_logged(&mut self, name: &str, mut cmd: Command, dir: &Path) -> Result<u32> {
        let log = std::fs::File::create(log_file(dir, name))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let pid = child.id();
        self.push(name, child);
        Ok(pid)
    }

    /// Spawns a ferry process and waits for "Ready" on its stderr, which is then drained
    /// into `dir/NAME.log`.
    pub fn spawn_ready(&mut self, name: &str, mut cmd: Command, dir: &Path) -> Result<()> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let stderr = child.stderr.take();
        self.push(name, child);
        let Some(stderr) = stderr else {
            return Err(format!("{name}: no stderr").into());
        };
        let (tx, rx) = mpsc::channel();
        let log_path = log_file(dir, name);
        thread::spawn(move || {
            let mut log = std::fs::File::create(log_path).ok();
            let mut ready = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(log) = log.as_mut() {
                    let _ = writeln!(log, "{line}");
                }
                if line.contains("Ready")
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(()) => Ok(()),
            Err(_) => Err(format!(
                "{name} did not print Ready within 15 s (log in {})",
                dir.display()
            )
            .into()),
        }
    }

    /// The first process that has exited, as a message.
    pub fn exited(&mut self) -> Option<String> {
        for p in &mut self.list {
            if let Ok(Some(st)) = p.child.try_wait() {
                return Some(format!("{} exited early: {st}", p.name));
            }
        }
        None
    }

    /// (pid, name) of the spawned processes.
    pub fn roots(&self) -> Vec<(u32, String)> {
        self.list
            .iter()
            .map(|p| (p.child.id(), p.name.clone()))
            .collect()
    }

    /// Stops every process: SIGTERM to descendants, then to the spawned processes, SIGKILL
    /// after a grace period, then SIGKILL to any descendant that outlived its parent.
    pub fn kill_all(&mut self) {
        if self.list.is_empty() {
            return;
        }
        let roots: HashSet<u32> = self.list.iter().map(|p| p.child.id()).collect();
        let tree = descendants(&roots.iter().copied().collect::<Vec<_>>());
        // Descendants first, while their parents live to reap them.
        for &pid in tree.iter().filter(|p| !roots.contains(p)) {
            signal(pid, libc::SIGTERM);
        }
        thread::sleep(Duration::from_millis(100));
        for p in self.list.iter().rev() {
            signal(p.child.id(), libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for p in self.list.iter_mut().rev() {
            while Instant::now() < deadline {
                if !matches!(p.child.try_wait(), Ok(None)) {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        for pid in tree.into_iter().filter(|p| !roots.contains(p)) {
            if is_running(pid) {
                signal(pid, libc::SIGKILL);
            }
        }
        registry().pids.retain(|p| !roots.contains(p));
        self.list.clear();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        #[allow(unsafe_code)]
        // SAFETY: kill has no memory-safety preconditions; the pid is one we spawned (or its
        // descendant, found through /proc just before).
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

// ------------------------------------------------------------------ /proc

fn proc_stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// True while the process exists and is not a zombie.
pub fn is_running(pid: u32) -> bool {
    proc_stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z"))
}

/// utime + stime in clock ticks.
fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let f = proc_stat_fields(pid)?;
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn proc_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Busy (user + nice + system) ticks of the whole machine, from /proc/stat.
pub fn machine_busy_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_string();
            let f: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .take(3)
                .filter_map(|v| v.parse().ok())
                .collect();
            Some(f.iter().sum())
        })
        .unwrap_or(0)
}

/// utime + stime of this process (all its threads, live and exited).
pub fn self_ticks() -> u64 {
    proc_cpu_ticks(std::process::id()).unwrap_or(0)
}

/// The roots and all their descendants.
pub fn descendants(roots: &[u32]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) =
                proc_stat_fields(pid).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()))
            {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut seen = HashSet::new();
    let mut stack: Vec<u32> = roots.to_vec();
    let mut out = Vec::new();
    while let Some(pid) = stack.pop() {
        if !seen.insert(pid) {
            continue;
        }
        out.push(pid);
        if let Some(c) = children.get(&pid) {
            stack.extend(c);
        }
    }
    out
}

/// CPU ticks per process of the trees under `roots`.
pub fn cpu_ticks(roots: &[u32]) -> HashMap<u32, u64> {
    descendants(roots)
        .into_iter()
        .filter_map(|pid| proc_cpu_ticks(pid).map(|t| (pid, t)))
        .collect()
}

pub fn cpu_delta(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> u64 {
    after
        .iter()
        .map(|(pid, a)| a.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum()
}

/// Sum of the peak RSS (VmHWM) of the trees under `roots`.
pub fn peak_rss_kib(roots: &[u32]) -> u64 {
    descendants(roots)
        .into_iter()
        .filter_map(proc_hwm_kib)
        .sum()
}

/// "pid comm" of each process in the trees under `roots`.
pub fn describe(roots: &[u32]) -> Vec<String> {
    descendants(roots)
        .into_iter()
        .filter_map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            Some(format!("{pid} {}", comm.trim()))
        })
        .collect()
}

/// The first process in the trees under `roots` whose command name is `comm`.
pub fn find_comm(roots: &[u32], comm: &str) -> Option<u32> {
    descendants(roots).into_iter().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
    })
}

pub fn clock_ticks_per_second() -> f64 {
    #[allow(unsafe_code)]
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

// ------------------------------------------------------------------ helpers

pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs a short command to completion (bounded by `timeout`), returning its stdout; the
/// error holds its stderr.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().map_err(|e| format!("{what}: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait()? {
            Some(_) => break,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what}: timed out after {timeout:?}").into());
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
