//! Hand-written SVG: grouped horizontal bar charts, one group per path, one bar per series,
//! each bar labelled with its value ("n/a" where a metric does not apply or failed).

use crate::report::Report;

const COLORS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round step for about five grid lines up to `max`.
fn nice_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(1e-12);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let step = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 2.5 {
        2.5
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    step * mag
}

fn fmt_value(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Axis labels: whole numbers without decimals.
fn fmt_tick(t: f64) -> String {
    if t >= 1.0 && (t - t.round()).abs() < 1e-9 {
        format!("{t:.0}")
    } else {
        fmt_value(t)
    }
}

/// `groups`: (path label, one value per series).
/// With `log`, the axis is logarithmic (powers of ten), for values spanning decades.
pub fn bar_chart(
    title: &str,
    unit: &str,
    series: &[&str],
    groups: &[(String, Vec<Option<f64>>)],
    log: bool,
) -> String {
    let (left, right, top) = (250.0, 90.0, 70.0);
    let width = 960.0;
    let plot_w = width - left - right;
    let bar_h = 13.0;
    let group_gap = 12.0;
    let group_h = bar_h * series.len() as f64 + group_gap;
    let height = top + group_h * groups.len() as f64 + 40.0;
    let values = || groups.iter().flat_map(|(_, v)| v.iter().flatten().copied());
    let max = values().fold(0.0f64, f64::max);
    let min_pos = values().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    // Linear: 0..axis_max in `step`s. Log: 10^lo..10^hi, one grid line per decade.
    let step = nice_step(if max > 0.0 { max } else { 1.0 });
    let axis_max = (max / step).ceil().max(1.0) * step;
    let (lo, hi) = if log && min_pos.is_finite() {
        let lo = (min_pos * 0.99).log10().floor();
        (lo, max.log10().ceil().max(lo + 1.0))
    } else {
        (0.0, 1.0)
    };
    let log = log && min_pos.is_finite();
    let x = |v: f64| {
        let frac = if log {
            (v.max(10f64.powf(lo)).log10() - lo) / (hi - lo)
        } else {
            v / axis_max
        };
        left + plot_w * frac.clamp(0.0, 1.0)
    };
    let ticks: Vec<f64> = if log {
        (lo as i32..=hi as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        let n = (axis_max / step).round() as usize;
        (0..=n).map(|i| i as f64 * step).collect()
    };

    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" font-size=\"16\" font-weight=\"bold\">{}</text>\n",
        10,
        esc(title)
    );
    // Legend.
    let mut lx = left;
    for (i, name) in series.iter().enumerate() {
        s.push_str(&format!(
            "<rect x=\"{lx}\" y=\"36\" width=\"12\" height=\"12\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"46\">{}</text>\n",
            COLORS[i % COLORS.len()],
            lx + 16.0,
            esc(name)
        ));
        lx += 24.0 + 7.0 * name.chars().count() as f64;
    }
    // Grid and axis labels.
    let bottom = height - 30.0;
    for t in ticks {
        let gx = x(t);
        s.push_str(&format!(
            "<line x1=\"{gx:.1}\" y1=\"{}\" x2=\"{gx:.1}\" y2=\"{bottom}\" stroke=\"#ddd\"/>\
             <text x=\"{gx:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#555\">{}</text>\n",
            top - 6.0,
            bottom + 14.0,
            fmt_tick(t)
        ));
    }
    s.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#555\">{}</text>\n",
        width - 10.0,
        bottom + 28.0,
        esc(&if log {
            format!("{unit}, log scale")
        } else {
            unit.to_string()
        })
    ));
    // Bars.
    for (gi, (label, values)) in groups.iter().enumerate() {
        let gy = top + group_h * gi as f64;
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            left - 8.0,
            gy + bar_h * series.len() as f64 / 2.0 + 4.0,
            esc(label)
        ));
        for (si, v) in values.iter().enumerate() {
            let y = gy + bar_h * si as f64;
            match v {
                Some(v) => s.push_str(&format!(
                    "<rect x=\"{left}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\">\
                     <title>{}: {} {}</title></rect>\
                     <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{}</text>\n",
                    (x(*v) - left).max(0.5),
                    bar_h - 2.0,
                    COLORS[si % COLORS.len()],
                    esc(series.get(si).copied().unwrap_or("")),
                    fmt_value(*v),
                    esc(unit),
                    x(*v) + 3.0,
                    y + bar_h - 4.0,
                    fmt_value(*v)
                )),
                None => s.push_str(&format!(
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#999\">n/a</text>\n",
                    left + 3.0,
                    y + bar_h - 4.0
                )),
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

fn ok_paths(r: &Report) -> impl Iterator<Item = &crate::report::PathResult> {
    r.paths.iter().filter(|p| p.status == "ok")
}

fn label(p: &crate::report::PathResult) -> String {
    if p.label.is_empty() {
        p.name.clone()
    } else {
        p.label.clone()
    }
}

pub fn throughput_chart(r: &Report) -> String {
    let up_n = format!("up {} streams", r.streams);
    let down_n = format!("down {} streams", r.streams);
    let series = [
        "up 1 stream",
        "down 1 stream",
        up_n.as_str(),
        down_n.as_str(),
        "HTTP GET down",
    ];
    let groups: Vec<_> = ok_paths(r)
        .map(|p| {
            (
                label(p),
                vec![
                    p.up_gbit_s,
                    p.down_gbit_s,
                    p.up8_gbit_s,
                    p.down8_gbit_s,
                    p.http_down_gbit_s,
                ],
            )
        })
        .collect();
    bar_chart(
        &format!("Throughput per path ({})", r.date_utc),
        "Gbit/s (receiver goodput)",
        &series,
        &groups,
        false,
    )
}

pub fn latency_chart(r: &Report) -> String {
    let series = [
        "TCP 64 B rr p50",
        "TCP 64 B rr p99",
        "HTTP GET 64 B p50",
        "UDP 64 B RTT p50",
        "UDP 1200 B RTT p50",
    ];
    let groups: Vec<_> = ok_paths(r)
        .map(|p| {
            (
                label(p),
                vec![
                    p.rr_p50_us,
                    p.rr_p99_us,
                    p.http_rr_p50_us,
                    p.udp_for(64).and_then(|u| u.rtt_p50_us),
                    p.udp_for(1200).and_then(|u| u.rtt_p50_us),
                ],
            )
        })
        .collect();
    bar_chart(
        &format!("Latency per path, lower is better ({})", r.date_utc),
        "µs",
        &series,
        &groups,
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_is_well_formed_and_labels_missing_values() {
        let svg = bar_chart(
            "t <1>",
            "Gbit/s",
            &["a", "b"],
            &[
                ("direct".into(), vec![Some(12.5), None]),
                ("x & y".into(), vec![Some(0.004), Some(3.0)]),
            ],
            false,
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("t &lt;1&gt;") && svg.contains("x &amp; y"));
        assert!(svg.contains(">n/a<") && svg.contains(">12.5<"));
        assert_eq!(svg.matches("<rect").count(), 1 + 2 + 3);
    }

    #[test]
    fn log_axis_has_a_line_per_decade() {
        let svg = bar_chart(
            "lat",
            "µs",
            &["p50"],
            &[
                ("a".into(), vec![Some(15.0)]),
                ("b".into(), vec![Some(4000.0)]),
            ],
            true,
        );
        for t in [">10<", ">100<", ">1000<", ">10000<", "log scale"] {
            assert!(svg.contains(t), "{t}");
        }
    }

    #[test]
    fn steps_are_round() {
        for (max, step) in [(20.0, 5.0), (0.9, 0.2), (1000.0, 200.0), (7.0, 2.0)] {
            assert!((nice_step(max) - step).abs() < 1e-9, "{max}");
        }
    }
}
