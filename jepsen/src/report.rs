//! `report.html`: one self-contained page per run (inline SVG and CSS, no script, nothing
//! fetched) with the verdict, a timeline of every client operation per process, and latency and
//! throughput plots, all three with the nemesis's faults as shaded bands.
//!
//! Pure: it reads the history's events and writes one file; `check` regenerates it from a
//! saved history. The drawing is capped ([`OPS_DRAWN_MAX`], [`LANES_MAX`]) so a million-op
//! history still makes a page a browser can open.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::history::{Actor, Call, Event, EventKind};

/// Operations drawn in the timeline and the latency plot; the rest are counted, not drawn.
pub const OPS_DRAWN_MAX: usize = 20_000;

/// Timeline lanes (client processes); later processes share the last lane.
pub const LANES_MAX: usize = 200;

const WIDTH_PX: f64 = 1100.0;
const MARGIN_LEFT_PX: f64 = 70.0;
const MARGIN_RIGHT_PX: f64 = 20.0;
const LANE_PX: f64 = 8.0;
const PLOT_HEIGHT_PX: f64 = 240.0;
const MARGIN_TOP_PX: f64 = 10.0;
const MARGIN_BOTTOM_PX: f64 = 30.0;

/// How a client operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Ok,
    Fail,
    /// Indeterminate, or still in flight when the history ended.
    Info,
}

impl Ending {
    fn color(self) -> &'static str {
        match self {
            Ending::Ok => "#2e9d4f",
            Ending::Fail => "#d33c3c",
            Ending::Info => "#f0a020",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Ending::Ok => "ok",
            Ending::Fail => "fail",
            Ending::Info => "info",
        }
    }
}

/// One client operation, from invocation to completion.
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    pub process: u64,
    pub node: Option<usize>,
    pub call: &'static str,
    pub start_ns: u64,
    pub end_ns: u64,
    pub ending: Ending,
}

/// A fault as drawn: from its start to its stop (`end_ns == start_ns` for an instantaneous
/// fault such as a compaction).
#[derive(Clone, Debug, PartialEq)]
pub struct Band {
    pub start_ns: u64,
    pub end_ns: u64,
    pub label: String,
}

fn call_name(call: &Call) -> &'static str {
    match call {
        Call::Read { .. } => "read",
        Call::Write { .. } => "write",
        Call::Cas { .. } => "cas",
        Call::Add { .. } => "add",
        Call::ReadSet => "read_set",
        Call::Txn { .. } => "txn",
        Call::Put { .. } => "put",
        Call::PutTxn { .. } => "put_txn",
        Call::Delete { .. } => "delete",
        Call::Compact { .. } => "compact",
        Call::ReadPrefix => "read_prefix",
        Call::LockAdd { .. } => "lock_add",
        Call::LockRead => "lock_read",
        Call::KvRange { .. } => "kv_range",
        Call::KvCas { .. } => "kv_cas",
    }
}

/// Client operations in invocation order; one still open at the end is `info` until then.
pub fn bars(events: &[Event]) -> Vec<Bar> {
    let end_ns = events.last().map_or(0, |e| e.time_ns);
    let mut open: HashMap<u64, usize> = HashMap::new();
    let mut bars: Vec<Bar> = Vec::new();
    for event in events {
        let Actor::Client(process) = event.actor else {
            continue;
        };
        let ending = match &event.kind {
            EventKind::Invoke { call } => {
                open.insert(process, bars.len());
                bars.push(Bar {
                    process,
                    node: event.node,
                    call: call_name(call),
                    start_ns: event.time_ns,
                    end_ns,
                    ending: Ending::Info,
                });
                continue;
            }
            EventKind::Ok { .. } => Ending::Ok,
            EventKind::Fail { .. } => Ending::Fail,
            EventKind::Info { .. } => Ending::Info,
            EventKind::Nemesis { .. } | EventKind::Watch { .. } => continue,
        };
        if let Some(at) = open.remove(&process) {
            bars[at].end_ns = event.time_ns;
            bars[at].ending = ending;
        }
    }
    bars
}

/// The nemesis's faults: each `start …` lasts until the next `stop …`; a start followed by
/// another start, or by no stop at all, was instantaneous (the nemesis stops every fault it
/// holds before its final `heal all`).
pub fn bands(events: &[Event]) -> Vec<Band> {
    let mut bands: Vec<Band> = Vec::new();
    let mut open: Option<Band> = None;
    for event in events {
        let EventKind::Nemesis { action } = &event.kind else {
            continue;
        };
        if let Some(label) = action.strip_prefix("start ") {
            bands.extend(open.take());
            open = Some(Band {
                start_ns: event.time_ns,
                end_ns: event.time_ns,
                label: label.to_string(),
            });
        } else if action.starts_with("stop ") {
            if let Some(mut band) = open.take() {
                band.end_ns = event.time_ns;
                bands.push(band);
            }
        }
    }
    bands.extend(open);
    bands
}

/// Maps a data range onto a pixel range, linearly or logarithmically.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scale {
    lo: f64,
    hi: f64,
    px_lo: f64,
    px_hi: f64,
    log: bool,
}

impl Scale {
    /// A linear scale; an empty range is widened so nothing divides by zero.
    pub fn linear(lo: f64, hi: f64, px_lo: f64, px_hi: f64) -> Scale {
        let hi = if hi > lo { hi } else { lo + 1.0 };
        Scale {
            lo,
            hi,
            px_lo,
            px_hi,
            log: false,
        }
    }

    /// A base-10 logarithmic scale over whole decades covering `[lo, hi]` (both > 0).
    pub fn log(lo: f64, hi: f64, px_lo: f64, px_hi: f64) -> Scale {
        let lo = 10f64.powf(lo.max(f64::MIN_POSITIVE).log10().floor());
        let hi = 10f64.powf(hi.max(lo).log10().ceil()).max(lo * 10.0);
        Scale {
            lo,
            hi,
            px_lo,
            px_hi,
            log: true,
        }
    }

    /// The pixel of `value`, clamped to the range.
    pub fn px(&self, value: f64) -> f64 {
        let fraction = if self.log {
            (value.max(self.lo).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (value - self.lo) / (self.hi - self.lo)
        };
        self.px_lo + fraction.clamp(0.0, 1.0) * (self.px_hi - self.px_lo)
    }

    /// Round tick values: each decade on a log scale, else 1, 2 or 5 × 10^k steps, about
    /// `count` of them.
    pub fn ticks(&self, count: usize) -> Vec<f64> {
        if self.log {
            let mut ticks = Vec::new();
            let mut t = self.lo;
            while t <= self.hi * 1.0001 {
                ticks.push(t);
                t *= 10.0;
            }
            return ticks;
        }
        let raw = (self.hi - self.lo) / count.max(1) as f64;
        let magnitude = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * magnitude)
            .find(|&s| s >= raw)
            .unwrap_or(10.0 * magnitude);
        let first = (self.lo / step).ceil() * step;
        (0..)
            .map(|i| first + i as f64 * step)
            .take_while(|&t| t <= self.hi + step * 1e-9)
            .collect()
    }
}

/// Completions per `bucket_ns`-wide bucket, by ending: (bucket start, ok, fail, info).
pub fn throughput(bars: &[Bar], end_ns: u64, bucket_ns: u64) -> Vec<(u64, u64, u64, u64)> {
    let buckets = (end_ns / bucket_ns + 1) as usize;
    let mut counts = vec![(0u64, 0u64, 0u64); buckets];
    for bar in bars {
        let b = ((bar.end_ns / bucket_ns) as usize).min(buckets - 1);
        match bar.ending {
            Ending::Ok => counts[b].0 += 1,
            Ending::Fail => counts[b].1 += 1,
            Ending::Info => counts[b].2 += 1,
        }
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(b, (ok, fail, info))| (b as u64 * bucket_ns, ok, fail, info))
        .collect()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Fault bands across a plot of height `height`, with their labels as tooltips.
fn draw_bands(svg: &mut String, bands: &[Band], x: &Scale, top: f64, height: f64) {
    for band in bands {
        let x0 = x.px(seconds(band.start_ns));
        let x1 = x.px(seconds(band.end_ns));
        let label = escape(&band.label);
        if band.end_ns > band.start_ns {
            let _ = write!(
                svg,
                r##"<rect x="{x0:.1}" y="{top:.1}" width="{:.1}" height="{height:.1}" fill="#8888cc" fill-opacity="0.18"><title>{label}</title></rect>"##,
                (x1 - x0).max(1.0)
            );
        } else {
            let _ = write!(
                svg,
                r##"<line x1="{x0:.1}" x2="{x0:.1}" y1="{top:.1}" y2="{:.1}" stroke="#6666aa" stroke-dasharray="3,2"><title>{label}</title></line>"##,
                top + height
            );
        }
    }
}

/// The time axis along the bottom of a plot.
fn draw_time_axis(svg: &mut String, x: &Scale, y: f64) {
    let _ = write!(
        svg,
        r##"<line x1="{MARGIN_LEFT_PX}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#333"/>"##,
        WIDTH_PX - MARGIN_RIGHT_PX
    );
    for t in x.ticks(10) {
        let px = x.px(t);
        let _ = write!(
            svg,
            r##"<line x1="{px:.1}" x2="{px:.1}" y1="{y:.1}" y2="{:.1}" stroke="#333"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{t}s</text>"##,
            y + 4.0,
            y + 16.0
        );
    }
}

fn timeline(bars: &[Bar], bands: &[Band], x: &Scale) -> String {
    let mut lanes: HashMap<u64, usize> = HashMap::new();
    for bar in bars.iter().take(OPS_DRAWN_MAX) {
        let next = lanes.len().min(LANES_MAX - 1);
        lanes.entry(bar.process).or_insert(next);
    }
    let lane_count = lanes.values().max().map_or(1, |&m| m + 1);
    let height = lane_count as f64 * LANE_PX;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH_PX}" height="{:.0}">"#,
        height + MARGIN_TOP_PX + MARGIN_BOTTOM_PX
    );
    draw_bands(&mut svg, bands, x, MARGIN_TOP_PX, height);
    for bar in bars.iter().take(OPS_DRAWN_MAX) {
        let lane = lanes[&bar.process];
        let x0 = x.px(seconds(bar.start_ns));
        let x1 = x.px(seconds(bar.end_ns));
        let y = MARGIN_TOP_PX + lane as f64 * LANE_PX;
        let node = bar.node.map_or(String::new(), |n| format!(" on n{n}"));
        let _ = write!(
            svg,
            r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>process {} {}{node}: {} ({:.1} ms, from {:.3} s)</title></rect>"#,
            y + 1.0,
            (x1 - x0).max(1.0),
            LANE_PX - 2.0,
            bar.ending.color(),
            bar.process,
            bar.call,
            bar.ending.name(),
            (bar.end_ns - bar.start_ns) as f64 / 1e6,
            seconds(bar.start_ns),
        );
    }
    let _ = write!(
        svg,
        r#"<text x="4" y="{:.1}">processes</text>"#,
        MARGIN_TOP_PX + 10.0
    );
    draw_time_axis(&mut svg, x, MARGIN_TOP_PX + height);
    svg.push_str("</svg>");
    svg
}

fn latency_plot(bars: &[Bar], bands: &[Band], x: &Scale) -> String {
    let latencies_ms: Vec<f64> = bars
        .iter()
        .take(OPS_DRAWN_MAX)
        .map(|b| ((b.end_ns - b.start_ns) as f64 / 1e6).max(0.01))
        .collect();
    let max_ms = latencies_ms.iter().copied().fold(1.0, f64::max);
    let min_ms = latencies_ms.iter().copied().fold(max_ms, f64::min);
    let bottom = MARGIN_TOP_PX + PLOT_HEIGHT_PX;
    let y = Scale::log(min_ms, max_ms, bottom, MARGIN_TOP_PX);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH_PX}" height="{:.0}">"#,
        bottom + MARGIN_BOTTOM_PX
    );
    draw_bands(&mut svg, bands, x, MARGIN_TOP_PX, PLOT_HEIGHT_PX);
    for tick in y.ticks(5) {
        let py = y.px(tick);
        let _ = write!(
            svg,
            r##"<line x1="{MARGIN_LEFT_PX}" x2="{:.1}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{tick} ms</text>"##,
            WIDTH_PX - MARGIN_RIGHT_PX,
            MARGIN_LEFT_PX - 4.0,
            py + 4.0
        );
    }
    for (bar, ms) in bars.iter().zip(&latencies_ms) {
        let _ = write!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{}"/>"#,
            x.px(seconds(bar.end_ns)),
            y.px(*ms),
            bar.ending.color()
        );
    }
    draw_time_axis(&mut svg, x, bottom);
    svg.push_str("</svg>");
    svg
}

fn throughput_plot(bars: &[Bar], bands: &[Band], x: &Scale, end_ns: u64) -> String {
    const BUCKET_NS: u64 = 1_000_000_000;
    let counts = throughput(bars, end_ns, BUCKET_NS);
    let max = counts
        .iter()
        .map(|&(_, ok, fail, info)| ok.max(fail).max(info))
        .max()
        .unwrap_or(0);
    let bottom = MARGIN_TOP_PX + PLOT_HEIGHT_PX;
    let y = Scale::linear(0.0, max.max(1) as f64, bottom, MARGIN_TOP_PX);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH_PX}" height="{:.0}">"#,
        bottom + MARGIN_BOTTOM_PX
    );
    draw_bands(&mut svg, bands, x, MARGIN_TOP_PX, PLOT_HEIGHT_PX);
    for tick in y.ticks(5) {
        let py = y.px(tick);
        let _ = write!(
            svg,
            r##"<line x1="{MARGIN_LEFT_PX}" x2="{:.1}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{tick}/s</text>"##,
            WIDTH_PX - MARGIN_RIGHT_PX,
            MARGIN_LEFT_PX - 4.0,
            py + 4.0
        );
    }
    for (ending, pick) in [(Ending::Ok, 0usize), (Ending::Fail, 1), (Ending::Info, 2)] {
        let points: Vec<String> = counts
            .iter()
            .map(|&(at, ok, fail, info)| {
                let value = [ok, fail, info][pick];
                format!(
                    "{:.1},{:.1}",
                    x.px(seconds(at + BUCKET_NS / 2)),
                    y.px(value as f64)
                )
            })
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
            ending.color(),
            points.join(" ")
        );
    }
    draw_time_axis(&mut svg, x, bottom);
    svg.push_str("</svg>");
    svg
}

/// The whole page: `title`, the `summary` (verdict and checkers, preformatted), and the plots.
pub fn render(events: &[Event], title: &str, summary: &str) -> String {
    let bars = bars(events);
    let bands = bands(events);
    let end_ns = events.last().map_or(0, |e| e.time_ns);
    let x = Scale::linear(
        0.0,
        seconds(end_ns),
        MARGIN_LEFT_PX,
        WIDTH_PX - MARGIN_RIGHT_PX,
    );
    let omitted = bars.len().saturating_sub(OPS_DRAWN_MAX);
    let mut faults = String::new();
    for band in &bands {
        let _ = writeln!(
            faults,
            "<li>{:.2}–{:.2} s: {}</li>",
            seconds(band.start_ns),
            seconds(band.end_ns),
            escape(&band.label)
        );
    }
    let legend = [Ending::Ok, Ending::Fail, Ending::Info]
        .iter()
        .map(|e| format!(r#"<span style="color:{}">■ {}</span>"#, e.color(), e.name()))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:1em}} svg{{display:block;font-size:10px}} pre{{background:#f4f4f4;padding:.5em}}</style>
</head><body>
<h1>{title}</h1>
<pre>{summary}</pre>
<p>{legend} <span style="color:#6666aa">▒ fault (hover for what)</span>{omitted_note}</p>
<h2>Timeline: operations per client process</h2>
{timeline}
<h2>Latency (by completion time, log scale)</h2>
{latency}
<h2>Throughput (completions per second)</h2>
{throughput}
<h2>Faults</h2>
<ul>
{faults}</ul>
</body></html>
"#,
        title = escape(title),
        summary = escape(summary),
        omitted_note = if omitted > 0 {
            format!(" — the first {OPS_DRAWN_MAX} operations drawn, {omitted} more omitted")
        } else {
            String::new()
        },
        timeline = timeline(&bars, &bands, &x),
        latency = latency_plot(&bars, &bands, &x),
        throughput = throughput_plot(&bars, &bands, &x, end_ns),
    )
}

/// Writes `report.html` into `dir`.
pub fn write(dir: &Path, events: &[Event], title: &str, summary: &str) -> std::io::Result<()> {
    std::fs::write(dir.join("report.html"), render(events, title, summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Reply;

    fn event(time_ns: u64, actor: Actor, kind: EventKind) -> Event {
        Event {
            index: time_ns,
            time_ns,
            actor,
            node: Some(0),
            kind,
        }
    }

    fn nemesis(time_ns: u64, action: &str) -> Event {
        event(
            time_ns,
            Actor::Nemesis,
            EventKind::Nemesis {
                action: action.into(),
            },
        )
    }

    fn history() -> Vec<Event> {
        let read = || EventKind::Invoke {
            call: Call::Read { key: "k".into() },
        };
        vec![
            event(0, Actor::Client(0), read()),
            event(1, Actor::Client(1), read()),
            nemesis(2, "start partition n0 | n1,n2"),
            event(
                3,
                Actor::Client(0),
                EventKind::Ok {
                    reply: Reply::Read {
                        found: None,
                        mod_revision: 0,
                    },
                    revision: 1,
                },
            ),
            event(4, Actor::Client(1), EventKind::Fail { error: "no".into() }),
            nemesis(5, "stop heal partition n0 | n1,n2"),
            event(6, Actor::Client(2), read()),
            nemesis(7, "start compact at 3 on n0 (head 4): ok"),
            nemesis(8, "start kill n1"),
            nemesis(9, "stop restart n1"),
            event(
                10,
                Actor::Client(2),
                EventKind::Info {
                    error: "timeout".into(),
                },
            ),
            event(11, Actor::Client(3), read()),
            nemesis(12, "start defrag n0 ok"),
            nemesis(13, "heal all"),
        ]
    }

    #[test]
    fn bars_pair_invocations_with_completions() {
        let bars = bars(&history());
        let summary: Vec<(u64, u64, u64, Ending)> = bars
            .iter()
            .map(|b| (b.process, b.start_ns, b.end_ns, b.ending))
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, 0, 3, Ending::Ok),
                (1, 1, 4, Ending::Fail),
                (2, 6, 10, Ending::Info),
                // Never completed: info until the history's end.
                (3, 11, 13, Ending::Info),
            ]
        );
        assert_eq!(bars[0].call, "read");
    }

    #[test]
    fn bands_span_start_to_stop_and_instants_have_no_width() {
        let bands: Vec<(u64, u64)> = bands(&history())
            .iter()
            .map(|b| (b.start_ns, b.end_ns))
            .collect();
        assert_eq!(bands, vec![(2, 5), (7, 7), (8, 9), (12, 12)]);
    }

    #[test]
    fn scales_map_ranges_and_pick_round_ticks() {
        let x = Scale::linear(0.0, 10.0, 100.0, 200.0);
        assert_eq!(x.px(0.0), 100.0);
        assert_eq!(x.px(5.0), 150.0);
        assert_eq!(x.px(20.0), 200.0, "clamped");
        assert_eq!(x.ticks(5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        // Pixels may run downwards (a y axis).
        let y = Scale::linear(0.0, 50.0, 300.0, 0.0);
        assert_eq!(y.px(50.0), 0.0);
        assert_eq!(y.ticks(5), vec![0.0, 10.0, 20.0, 30.0, 40.0, 50.0]);
        // An empty range does not divide by zero.
        assert!(Scale::linear(3.0, 3.0, 0.0, 10.0).px(3.0).is_finite());

        let log = Scale::log(0.3, 450.0, 0.0, 300.0);
        assert_eq!(log.ticks(5), vec![0.1, 1.0, 10.0, 100.0, 1000.0]);
        assert_eq!(log.px(0.1), 0.0);
        assert!((log.px(10.0) - 150.0).abs() < 1e-9);
        assert_eq!(log.px(1000.0), 300.0);
    }

    #[test]
    fn throughput_counts_completions_per_bucket() {
        let counts = throughput(&bars(&history()), 13, 5);
        assert_eq!(counts, vec![(0, 1, 1, 0), (5, 0, 0, 0), (10, 0, 0, 2)]);
    }

    #[test]
    fn the_page_is_self_contained_and_escapes_text() {
        let page = render(&history(), "register <run>", "VERDICT: valid & sound");
        assert!(page.contains("register &lt;run&gt;"));
        assert!(page.contains("valid &amp; sound"));
        assert_eq!(page.matches("<svg").count(), 3);
        assert!(page.contains("partition n0 | n1,n2"));
        assert!(!page.contains("<script"));
        assert!(!page.contains("src=\"http"));
    }
}
