//! ferry-bench: compares ferry's port-forward with a direct connection, the dashboard path
//! (an nginx reverse proxy in front of the ferry forward stands in until ferry's gateway
//! exists), `ssh -L`, SSH carried inside the ferry tunnel, wireguard-go with the kernel's TCP
//! in network namespaces, and onetun, on one machine in one run.
//!
//! `compare` starts an in-process service (TCP sink, source, echo, connection probe, a minimal
//! HTTP server, and UDP echo), sets up each path with processes it starts itself (and kills
//! when the path is done), drives the same workloads through each, and writes a markdown
//! table, JSON and SVG charts into a results folder. `check` runs `compare` and fails when a
//! path's ratio to direct fell more than a tolerance below a baseline's.
//!
//! All traffic stays on loopback or inside the network namespaces the harness creates.

mod netns;
mod paths;
mod procs;
mod report;
mod service;
mod svg;
mod workload;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};

use crate::paths::{Env, PATHS, SshTools};
use crate::procs::TempDir;
use crate::report::{Machine, Report};
use crate::service::Service;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Measure every path; write a table, JSON and SVG charts.
    Compare(CompareArgs),
    /// Run compare and fail if a path's ratio to direct fell below a baseline's.
    Check {
        /// JSON written by an earlier compare (results.json in its results folder).
        #[arg(long, value_name = "FILE")]
        baseline: PathBuf,
        /// Allowed relative drop of a ratio to direct (0.25 = 25 %).
        #[arg(long, default_value_t = 0.25)]
        tolerance: f64,
        /// Metrics to show but not gate (comma list, e.g. conn_per_s,udp64_pps).
        #[arg(long, value_delimiter = ',', value_name = "METRICS")]
        info_only: Vec<String>,
        /// Also gate median latencies (rr_p50, http_rr_p50, udp*_rtt_p50); tail latencies
        /// (*_p99) are never gated.
        #[arg(long)]
        gate_latency: bool,
        /// Run compare this many times (1 to 9) and gate the median ratio of each metric.
        #[arg(long, default_value_t = 1)]
        runs: usize,
        #[command(flatten)]
        compare: CompareArgs,
    },
}

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Seconds of each bulk measurement (TCP up/down, 1 and N streams; HTTP GET), at most 120.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Seconds of each latency or rate measurement (request/response, HTTP GET 64 B, new
    /// connections, UDP round trips, UDP rate), at most 60.
    #[arg(long, default_value_t = 2.0)]
    rr_seconds: f64,
    /// Streams of the multi-stream bulk measurements, 2 to 64.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Results folder [default: results/<UTC timestamp>].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Also write the results as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Also write the tables as markdown here.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// The ferry binary [default: ferry next to this binary, or on PATH].
    #[arg(long, value_name = "FILE")]
    ferry: Option<PathBuf>,
    /// Only run these paths (comma list): direct, ferry, dashboard-nginx,
    /// ssh-in-ferry-aes128-gcm, ssh-in-ferry-chacha20, ssh-aes128-gcm, ssh-chacha20,
    /// wireguard-go, ferry-wireguard-go, onetun.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

fn main() {
    procs::install_signal_cleanup();
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Compare(args) => compare(&args).map(|_| 0),
        Cmd::Check {
            baseline,
            tolerance,
            info_only,
            gate_latency,
            runs,
            compare: args,
        } => check(
            &args,
            &baseline,
            runs,
            &report::Gate {
                tolerance,
                latency: gate_latency,
                info_only: &info_only,
            },
        ),
    };
    match code {
        Ok(c) => std::process::exit(c),
        Err(e) => {
            eprintln!("ferry-bench: {e}");
            std::process::exit(2);
        }
    }
}

static START: OnceLock<Instant> = OnceLock::new();

/// One progress line on stderr, with the time since the run started.
pub fn progress(msg: &str) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[{t:6.1}s] {msg}");
}

fn compare(args: &CompareArgs) -> Result<Report> {
    if !(args.seconds > 0.0 && args.seconds <= 120.0) {
        return Err("--seconds must be in (0, 120]".into());
    }
    if !(args.rr_seconds > 0.0 && args.rr_seconds <= 60.0) {
        return Err("--rr-seconds must be in (0, 60]".into());
    }
    if !(2..=64).contains(&args.streams) {
        return Err("--streams must be in 2..=64".into());
    }
    if let Some(bad) = args
        .only
        .iter()
        .find(|o| !PATHS.iter().any(|p| p.name == o.as_str()))
    {
        return Err(format!("--only: unknown path {bad}").into());
    }
    START.get_or_init(Instant::now);
    let date = utc_now();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("results").join(date.replace(':', "-")));
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let service = Service::start(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
    let tmp = TempDir::new()?;
    let env = Env {
        args,
        service: &service,
        ferry: paths::find_ferry(args.ferry.as_deref()),
        ssh: SshTools::find(),
    };
    let load_avg_start = load_avg();
    progress(&format!(
        "results in {}; load average {load_avg_start}",
        out.display()
    ));
    let selected: Vec<_> = PATHS
        .iter()
        .filter(|p| args.only.is_empty() || args.only.iter().any(|o| o == p.name))
        .collect();
    let mut results = Vec::new();
    for (i, def) in selected.iter().enumerate() {
        progress(&format!(
            "== {}/{} {} ({})",
            i + 1,
            selected.len(),
            def.name,
            def.label
        ));
        let dir = tmp.sub(def.name)?;
        results.push(paths::run_path(def, &env, &dir));
        copy_logs(&dir, &out.join("logs").join(def.name));
    }
    let report = Report {
        date_utc: date,
        machine: Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: read_trim("/proc/sys/kernel/osrelease"),
            cpu_model: cpu_model(),
            load_avg_start,
            load_avg_end: load_avg(),
        },
        seconds: args.seconds,
        rr_seconds: args.rr_seconds,
        rr_message_bytes: workload::RR_BYTES,
        streams: args.streams,
        mtu: netns::TUNNEL_MTU,
        paths: results,
    };
    let table = report::markdown(&report);
    let json = serde_json::to_string_pretty(&report)? + "\n";
    println!("{table}");
    std::fs::write(out.join("results.md"), &table)?;
    std::fs::write(out.join("results.json"), &json)?;
    std::fs::write(out.join("throughput.svg"), svg::throughput_chart(&report))?;
    std::fs::write(out.join("latency.svg"), svg::latency_chart(&report))?;
    if let Some(path) = &args.markdown {
        std::fs::write(path, &table)?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, &json)?;
    }
    progress(&format!(
        "wrote results.md, results.json, throughput.svg, latency.svg and logs/ in {}",
        out.display()
    ));
    Ok(report)
}

fn check(args: &CompareArgs, baseline: &Path, runs: usize, gate: &report::Gate) -> Result<i32> {
    if !(gate.tolerance > 0.0 && gate.tolerance < 1.0) {
        return Err("--tolerance must be in (0, 1)".into());
    }
    if !(1..=9).contains(&runs) {
        return Err("--runs must be in 1..=9".into());
    }
    let text = std::fs::read_to_string(baseline)
        .map_err(|e| format!("cannot read baseline {}: {e}", baseline.display()))?;
    let base: Report = serde_json::from_str(&text)
        .map_err(|e| format!("baseline {} is not compare JSON: {e}", baseline.display()))?;
    if report::ratios(&base).is_empty() {
        return Err("the baseline has no successful direct path".into());
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("results").join(utc_now().replace(':', "-")));
    let mut reports = Vec::new();
    for i in 1..=runs {
        let mut a = args.clone();
        a.out = Some(if runs == 1 {
            out.clone()
        } else {
            out.join(format!("run-{i}"))
        });
        if runs > 1 {
            progress(&format!("check: run {i} of {runs}"));
        }
        let now = compare(&a)?;
        if !now
            .paths
            .iter()
            .any(|p| p.name == "direct" && p.status == "ok")
        {
            return Err(format!("run {i} has no successful direct path").into());
        }
        reports.push(now);
    }
    let (lines, failures) = report::compare_ratios(&base, &reports, gate);
    println!(
        "check against {} over {runs} run(s): a gated ratio to direct may fall to {:.2} × its \
         baseline (tolerance {:.0} %); median latencies {}gated, tail latencies never",
        baseline.display(),
        1.0 - gate.tolerance,
        gate.tolerance * 100.0,
        if gate.latency { "" } else { "not " }
    );
    for l in &lines {
        println!("{l}");
    }
    if failures.is_empty() {
        println!("check passed");
        Ok(0)
    } else {
        for f in &failures {
            eprintln!("regression: {f}");
        }
        Ok(1)
    }
}

fn copy_logs(from: &Path, to: &Path) {
    let Ok(entries) = std::fs::read_dir(from) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "log") && std::fs::create_dir_all(to).is_ok() {
            let _ = std::fs::copy(&p, to.join(e.file_name()));
        }
    }
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn load_avg() -> String {
    read_trim("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn cpu_model() -> String {
    read_trim("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default()
}

/// "YYYY-MM-DDTHH:MM:SSZ" now.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc(secs)
}

fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::utc(1_798_761_599), "2026-12-31T23:59:59Z");
    }
}
