//! Results: the JSON model, the markdown tables, and the regression check's ratios.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct UdpResult {
    pub bytes: usize,
    pub rtt_p50_us: Option<f64>,
    pub rtt_p99_us: Option<f64>,
    pub rtt_p999_us: Option<f64>,
    /// Datagrams without an answer within 200 ms in the round-trip measurement.
    pub rtt_lost: Option<u64>,
    /// Answered datagrams per second with 32 in flight.
    pub pps: Option<f64>,
    pub loss_pct: Option<f64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct MetricError {
    pub metric: String,
    pub error: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct PathResult {
    pub name: String,
    #[serde(default)]
    pub label: String,
    /// "ok", "skipped" or "failed".
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bulk TCP, receiver goodput, one stream.
    pub up_gbit_s: Option<f64>,
    pub down_gbit_s: Option<f64>,
    /// Bulk TCP, receiver goodput, `streams` streams together.
    #[serde(default)]
    pub up8_gbit_s: Option<f64>,
    #[serde(default)]
    pub down8_gbit_s: Option<f64>,
    /// HTTP GET download (keep-alive, one connection).
    #[serde(default)]
    pub http_down_gbit_s: Option<f64>,
    /// 64 B request/response on one TCP connection.
    pub rr_p50_us: Option<f64>,
    pub rr_p99_us: Option<f64>,
    pub rr_p999_us: Option<f64>,
    pub rr_count: Option<u64>,
    /// HTTP GET of 64 bytes on a keep-alive connection.
    #[serde(default)]
    pub http_rr_p50_us: Option<f64>,
    #[serde(default)]
    pub http_rr_p99_us: Option<f64>,
    /// New connections per second (connect, 1 byte each way, close).
    #[serde(default)]
    pub conn_per_s: Option<f64>,
    #[serde(default)]
    pub conn_p50_us: Option<f64>,
    #[serde(default)]
    pub udp: Vec<UdpResult>,
    /// CPU seconds of the forwarding processes per GiB moved in the bulk windows (TCP and HTTP).
    pub cpu_s_per_gib: Option<f64>,
    /// Sum of the forwarding processes' peak RSS (VmHWM).
    pub peak_rss_mib: Option<f64>,
    /// CPU used by processes other than this harness and the path's forwarders while the path
    /// was measured, in cores (user + system time): other jobs on the machine skew the figures.
    #[serde(default)]
    pub other_cpu_cores: Option<f64>,
    /// Metrics that apply to this path but failed.
    #[serde(default)]
    pub errors: Vec<MetricError>,
    #[serde(default)]
    pub processes: Vec<String>,
}

impl PathResult {
    pub fn udp_for(&self, bytes: usize) -> Option<&UdpResult> {
        self.udp.iter().find(|u| u.bytes == bytes)
    }

    fn failed(&self, metric: &str) -> bool {
        self.errors.iter().any(|e| e.metric == metric)
    }

    fn title(&self) -> &str {
        if self.label.is_empty() {
            &self.name
        } else {
            &self.label
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Machine {
    pub nproc: usize,
    pub kernel: String,
    pub cpu_model: String,
    pub load_avg_start: String,
    pub load_avg_end: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Report {
    #[serde(default)]
    pub date_utc: String,
    #[serde(default)]
    pub machine: Machine,
    pub seconds: f64,
    pub rr_seconds: f64,
    pub rr_message_bytes: usize,
    #[serde(default)]
    pub streams: usize,
    #[serde(default)]
    pub mtu: u32,
    pub paths: Vec<PathResult>,
}

// ------------------------------------------------------------------ markdown

fn f(v: Option<f64>, digits: usize) -> Option<String> {
    v.map(|v| format!("{v:.digits$}"))
}

/// Throughput figures: three significant digits or so.
fn g(v: Option<f64>) -> Option<String> {
    v.map(|v| {
        if v >= 10.0 {
            format!("{v:.1}")
        } else if v >= 0.1 {
            format!("{v:.2}")
        } else {
            format!("{v:.3}")
        }
    })
}

/// A cell: the value, "error" when the metric failed, "n/a" when it does not apply.
fn cell(p: &PathResult, metric: &str, v: Option<String>) -> String {
    match v {
        Some(v) => v,
        None if p.failed(metric) => "error".into(),
        None => "n/a".into(),
    }
}

fn row(p: &PathResult, cells: Vec<String>, columns: usize) -> String {
    if p.status != "ok" {
        let mut s = format!("| {} | {}", p.title(), p.status);
        if let Some(r) = &p.reason {
            s.push_str(&format!(": {r}"));
        }
        s.push_str(" |");
        for _ in 1..columns {
            s.push_str(" |");
        }
        return s + "\n";
    }
    format!("| {} | {} |\n", p.title(), cells.join(" | "))
}

fn three(a: Option<f64>, b: Option<f64>, c: Option<f64>) -> Option<String> {
    Some(format!("{} / {} / {}", f(a, 0)?, f(b, 0)?, f(c, 0)?))
}

pub fn markdown(r: &Report) -> String {
    let m = &r.machine;
    let mut s = format!(
        "Run {} on {} ({} CPUs), kernel {}; load average at start {}, at end {}.\n\
         Bulk windows {} s each, latency and rate windows {} s each; {} streams for the \
         multi-stream rows; WireGuard inner MTU {}.\n\n",
        r.date_utc,
        m.cpu_model,
        m.nproc,
        m.kernel,
        m.load_avg_start,
        m.load_avg_end,
        r.seconds,
        r.rr_seconds,
        r.streams,
        r.mtu
    );
    s.push_str(&format!(
        "### Throughput (Gbit/s, receiver goodput)\n\n\
         | path | up 1 stream | down 1 stream | up {n} streams | down {n} streams | HTTP GET down | forwarder CPU s/GiB | forwarder peak RSS MiB | other processes' CPU (cores) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        n = r.streams
    ));
    for p in &r.paths {
        s.push_str(&row(
            p,
            vec![
                cell(p, "up", g(p.up_gbit_s)),
                cell(p, "down", g(p.down_gbit_s)),
                cell(p, "up8", g(p.up8_gbit_s)),
                cell(p, "down8", g(p.down8_gbit_s)),
                cell(p, "http_down", g(p.http_down_gbit_s)),
                cell(p, "cpu", f(p.cpu_s_per_gib, 2)),
                cell(p, "rss", f(p.peak_rss_mib, 1)),
                cell(p, "other", f(p.other_cpu_cores, 2)),
            ],
            8,
        ));
    }
    s.push_str(&format!(
        "\n### Latency (µs) and connection rate\n\n\
         | path | TCP {b} B rr p50 | p99 | p99.9 | HTTP GET {b} B p50 | p99 | new conn/s | conn p50 |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        b = r.rr_message_bytes
    ));
    for p in &r.paths {
        s.push_str(&row(
            p,
            vec![
                cell(p, "rr", f(p.rr_p50_us, 0)),
                cell(p, "rr", f(p.rr_p99_us, 0)),
                cell(p, "rr", f(p.rr_p999_us, 0)),
                cell(p, "http_rr", f(p.http_rr_p50_us, 0)),
                cell(p, "http_rr", f(p.http_rr_p99_us, 0)),
                cell(p, "conn", f(p.conn_per_s, 0)),
                cell(p, "conn", f(p.conn_p50_us, 0)),
            ],
            7,
        ));
    }
    s.push_str(
        "\n### UDP echo\n\n\
         | path | 64 B RTT p50 / p99 / p99.9 µs | 64 B kpps (loss) | 1200 B RTT p50 / p99 / p99.9 µs | 1200 B kpps (loss) | 1200 B Mbit/s each way |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for p in &r.paths {
        let rtt = |b: usize| {
            let u = p.udp_for(b);
            cell(
                p,
                &format!("udp{b}_rtt"),
                u.and_then(|u| three(u.rtt_p50_us, u.rtt_p99_us, u.rtt_p999_us)),
            )
        };
        let pps = |b: usize| {
            let u = p.udp_for(b);
            cell(
                p,
                &format!("udp{b}_pps"),
                u.and_then(|u| {
                    Some(format!(
                        "{:.1} ({:.1} %)",
                        u.pps? / 1000.0,
                        u.loss_pct.unwrap_or(0.0)
                    ))
                }),
            )
        };
        let mbit = cell(
            p,
            "udp1200_pps",
            p.udp_for(1200)
                .and_then(|u| u.pps)
                .map(|pps| format!("{:.0}", pps * 1200.0 * 8.0 / 1e6)),
        );
        s.push_str(&row(
            p,
            vec![rtt(64), pps(64), rtt(1200), pps(1200), mbit],
            5,
        ));
    }
    let mut notes = Vec::new();
    for p in &r.paths {
        for e in &p.errors {
            notes.push(format!("- {} {}: {}", p.name, e.metric, e.error));
        }
    }
    if !notes.is_empty() {
        s.push_str("\nErrors:\n");
        s.push_str(&notes.join("\n"));
        s.push('\n');
    }
    s
}

// ------------------------------------------------------------------ check

/// How the check treats a metric.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Throughput and rates: gated.
    Rate,
    /// Median latency: gated only with `--gate-latency` (on a VM, direct's loopback latency
    /// alone flips between about 20 and 100 µs from run to run).
    Latency,
    /// Tail latency: shown only.
    Tail,
}

/// A metric the check compares, as a ratio of the path's figure to direct's in the same run.
pub struct Ratio {
    pub metric: String,
    /// Higher is better: throughput and rates are path / direct, latencies direct / path.
    pub value: f64,
    pub kind: Kind,
}

/// Every metric as (name, value, higher_is_better, kind).
fn metrics(p: &PathResult) -> Vec<(String, Option<f64>, bool, Kind)> {
    use Kind::*;
    let mut v = vec![
        ("up".to_string(), p.up_gbit_s, true, Rate),
        ("down".into(), p.down_gbit_s, true, Rate),
        ("up8".into(), p.up8_gbit_s, true, Rate),
        ("down8".into(), p.down8_gbit_s, true, Rate),
        ("http_down".into(), p.http_down_gbit_s, true, Rate),
        ("rr_p50".into(), p.rr_p50_us, false, Latency),
        ("rr_p99".into(), p.rr_p99_us, false, Tail),
        ("http_rr_p50".into(), p.http_rr_p50_us, false, Latency),
        ("http_rr_p99".into(), p.http_rr_p99_us, false, Tail),
        ("conn_per_s".into(), p.conn_per_s, true, Rate),
    ];
    for b in [64, 1200] {
        let u = p.udp_for(b);
        v.push((
            format!("udp{b}_rtt_p50"),
            u.and_then(|u| u.rtt_p50_us),
            false,
            Latency,
        ));
        v.push((
            format!("udp{b}_rtt_p99"),
            u.and_then(|u| u.rtt_p99_us),
            false,
            Tail,
        ));
        v.push((format!("udp{b}_pps"), u.and_then(|u| u.pps), true, Rate));
    }
    v
}

pub fn ratios(report: &Report) -> BTreeMap<String, Vec<Ratio>> {
    let mut out = BTreeMap::new();
    let Some(direct) = report
        .paths
        .iter()
        .find(|p| p.name == "direct" && p.status == "ok")
    else {
        return out;
    };
    let base = metrics(direct);
    for p in report
        .paths
        .iter()
        .filter(|p| p.status == "ok" && p.name != "direct")
    {
        let mut v = Vec::new();
        for ((metric, a, higher, kind), (_, d, _, _)) in metrics(p).into_iter().zip(&base) {
            let (Some(a), Some(d)) = (a, *d) else {
                continue;
            };
            if a <= 0.0 || d <= 0.0 {
                continue;
            }
            let value = if higher { a / d } else { d / a };
            v.push(Ratio {
                metric,
                value,
                kind,
            });
        }
        out.insert(p.name.clone(), v);
    }
    out
}

/// What the check gates, and how much a ratio may drop.
pub struct Gate<'a> {
    /// Allowed relative drop of a ratio below its baseline (0.25 = 25 %).
    pub tolerance: f64,
    /// Also gate median latencies.
    pub latency: bool,
    /// Metrics shown but not gated.
    pub info_only: &'a [String],
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Compares the median over `runs` of each ratio with `base`'s. Returns the report lines and
/// the failures (each naming path and metric).
pub fn compare_ratios(base: &Report, runs: &[Report], gate: &Gate) -> (Vec<String>, Vec<String>) {
    let base_ratios = ratios(base);
    let run_ratios: Vec<_> = runs.iter().map(ratios).collect();
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    for (path, metrics) in &base_ratios {
        let in_runs: Vec<&PathResult> = runs
            .iter()
            .filter_map(|r| r.paths.iter().find(|p| &p.name == path))
            .collect();
        if !run_ratios.iter().any(|r| r.contains_key(path)) {
            if in_runs.iter().any(|p| p.status == "failed") {
                failures.push(format!("{path}: failed in this run"));
                lines.push(format!("FAIL {path:26} failed in this run"));
            } else {
                let status = in_runs.first().map_or("not run", |p| p.status.as_str());
                lines.push(format!(
                    "note {path}: in the baseline but {status} in this run"
                ));
            }
            continue;
        }
        for base_ratio in metrics {
            let metric = &base_ratio.metric;
            let gated = match base_ratio.kind {
                Kind::Rate => true,
                Kind::Latency => gate.latency,
                Kind::Tail => false,
            } && !gate.info_only.iter().any(|m| m == metric);
            let values: Vec<f64> = run_ratios
                .iter()
                .filter_map(|r| r.get(path)?.iter().find(|x| &x.metric == metric))
                .map(|x| x.value)
                .collect();
            if values.is_empty() {
                let family = metric
                    .trim_end_matches("_p50")
                    .trim_end_matches("_p99")
                    .trim_end_matches("_per_s");
                let failed = in_runs
                    .iter()
                    .any(|p| p.errors.iter().any(|e| e.metric == family));
                if failed && gated {
                    failures.push(format!("{path} {metric}: failed in this run"));
                    lines.push(format!("FAIL {path:26} {metric:16} failed in this run"));
                }
                continue;
            }
            let runs_note = if values.len() > 1 {
                format!(
                    "median of {}: {}; ",
                    values.len(),
                    values
                        .iter()
                        .map(|v| format!("{v:.3}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            } else {
                String::new()
            };
            let ratio = median(values);
            let floor = base_ratio.value * (1.0 - gate.tolerance);
            let below = ratio < floor;
            let verdict = match (gated, below) {
                (false, _) => "info",
                (true, true) => "FAIL",
                (true, false) => "ok",
            };
            lines.push(format!(
                "{verdict:4} {path:26} {metric:16} ratio to direct {ratio:.3} ({runs_note}baseline {:.3}, floor {floor:.3})",
                base_ratio.value
            ));
            if gated && below {
                failures.push(format!(
                    "{path} {metric}: ratio to direct {ratio:.3} < {floor:.3} (baseline {:.3} - {:.0}%)",
                    base_ratio.value,
                    gate.tolerance * 100.0
                ));
            }
        }
    }
    (lines, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str, up: f64, rr: f64) -> PathResult {
        PathResult {
            name: name.into(),
            status: "ok".into(),
            up_gbit_s: Some(up),
            rr_p50_us: Some(rr),
            rr_p99_us: Some(rr * 3.0),
            udp: vec![UdpResult {
                bytes: 64,
                pps: Some(up * 1000.0),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn report(paths: Vec<PathResult>) -> Report {
        Report {
            date_utc: String::new(),
            machine: Machine::default(),
            seconds: 1.0,
            rr_seconds: 1.0,
            rr_message_bytes: 64,
            streams: 8,
            mtu: 1420,
            paths,
        }
    }

    fn gate(info_only: &[String]) -> Gate<'_> {
        Gate {
            tolerance: 0.25,
            latency: true,
            info_only,
        }
    }

    #[test]
    fn check_flags_a_drop_beyond_the_tolerance_and_names_it() {
        let base = report(vec![path("direct", 10.0, 20.0), path("ferry", 5.0, 40.0)]);
        // Same ratios on a machine twice as slow: passes.
        let slow = report(vec![path("direct", 5.0, 40.0), path("ferry", 2.5, 80.0)]);
        let (_, fails) = compare_ratios(&base, &[slow], &gate(&[]));
        assert!(fails.is_empty(), "{fails:?}");
        // ferry's upload ratio drops from 0.5 to 0.3: fails, naming path and metric.
        let worse = report(vec![path("direct", 10.0, 20.0), path("ferry", 3.0, 40.0)]);
        let (_, fails) = compare_ratios(&base, &[worse], &gate(&[]));
        assert!(
            fails.iter().any(|f| f.starts_with("ferry up:")),
            "{fails:?}"
        );
        assert!(
            fails.iter().any(|f| f.starts_with("ferry udp64_pps:")),
            "{fails:?}"
        );
        // Latency twice as bad: rr_p50 fails, rr_p99 is information only.
        let slower = report(vec![path("direct", 10.0, 20.0), path("ferry", 5.0, 80.0)]);
        let (lines, fails) = compare_ratios(&base, std::slice::from_ref(&slower), &gate(&[]));
        assert!(fails.iter().any(|f| f.starts_with("ferry rr_p50:")));
        assert!(!fails.iter().any(|f| f.starts_with("ferry rr_p99:")));
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("info") && l.contains("rr_p99"))
        );
        // --info-only rr_p50 turns that failure into information.
        let info = ["rr_p50".to_string(), "http_rr_p50".to_string()];
        let (_, fails) = compare_ratios(&base, std::slice::from_ref(&slower), &gate(&info));
        assert!(fails.is_empty(), "{fails:?}");
        // Without --gate-latency, median latency is information only too.
        let no_latency = Gate {
            latency: false,
            ..gate(&[])
        };
        let (_, fails) = compare_ratios(&base, std::slice::from_ref(&slower), &no_latency);
        assert!(fails.is_empty(), "{fails:?}");
        // The median of several runs decides: one bad run out of three passes.
        let good = report(vec![path("direct", 10.0, 20.0), path("ferry", 5.0, 40.0)]);
        let bad = report(vec![path("direct", 10.0, 20.0), path("ferry", 1.0, 40.0)]);
        let (_, fails) = compare_ratios(&base, &[good.clone(), bad.clone(), good], &gate(&[]));
        assert!(fails.is_empty(), "{fails:?}");
        let (_, fails) = compare_ratios(&base, &[bad.clone(), bad], &gate(&[]));
        assert!(
            fails.iter().any(|f| f.starts_with("ferry up:")),
            "{fails:?}"
        );
    }

    #[test]
    fn old_baselines_still_parse() {
        let old = r#"{"seconds":5.0,"rr_seconds":2.0,"rr_message_bytes":64,"paths":[
            {"name":"direct","status":"ok","up_gbit_s":20.0,"down_gbit_s":19.0,"rr_p50_us":20,
             "rr_p99_us":40,"rr_p999_us":60,"rr_count":1000,"cpu_s_per_gib":null,
             "peak_rss_mib":null,"processes":[]}]}"#;
        let r: Report = serde_json::from_str(old).unwrap();
        assert_eq!(r.paths[0].rr_p50_us, Some(20.0));
    }

    #[test]
    fn markdown_marks_skips_errors_and_na() {
        let mut skipped = PathResult {
            name: "onetun".into(),
            status: "skipped".into(),
            reason: Some("onetun not installed".into()),
            ..Default::default()
        };
        skipped.label = "onetun".into();
        let mut errored = path("ferry", 1.0, 30.0);
        errored.errors.push(MetricError {
            metric: "down".into(),
            error: "boom".into(),
        });
        let md = markdown(&report(vec![path("direct", 10.0, 20.0), errored, skipped]));
        assert!(md.contains("skipped: onetun not installed"));
        assert!(md.contains("| error |"));
        assert!(md.contains("n/a"));
        assert!(md.contains("ferry down: boom"));
    }
}
