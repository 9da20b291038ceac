//! The Prometheus exposition: every shard's counters summed (or labelled by shard), the gauges
//! the shards reported for this scrape, and the process's own figures, written with the
//! `prometheus-client` crate's OpenMetrics text encoder.
//!
//! Family names are an interface (dashboards in `deploy/`, alerts, the tests): change none.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::login_stages::LoginStage;
use super::process::ProcessStats;
use super::stages::Stage;
use super::{CodeCounters, Histogram, ShardGauges, ShardMetrics};
use crate::protocol::code_name;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything one scrape shows.
#[derive(Debug)]
pub struct Scrape {
    pub shards: Arc<[Arc<ShardMetrics>]>,
    /// `gauges[i]`: what shard i reported for this scrape (`None`: it did not answer in time).
    pub gauges: Vec<Option<ShardGauges>>,
    pub process: ProcessStats,
    pub version: &'static str,
}

/// The exposition text of `scrape`.
pub fn render(scrape: Scrape) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail; an encoder error would be a bug in a family below.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "metrics exposition failed");
    }
    out
}

type Labels<'a> = Vec<(&'static str, String)>;

/// Writes one family: descriptor, then each labelled sample.
fn family<'a, M: EncodeMetric>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (Labels<'a>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, unit, metric_type)?;
    let mut samples: Vec<(Labels<'a>, M)> = samples.into_iter().collect();
    if let [(labels, _)] = &samples[..] {
        if labels.is_empty() {
            // A single unlabelled sample: `name value`, not `name{} value`.
            let (_, metric) = samples.remove(0);
            return metric.encode(m);
        }
    }
    for (labels, metric) in samples {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

/// A family of counters by code, summed over shards; codes never seen are left out.
fn by_code(
    shards: &[Arc<ShardMetrics>],
    pick: impl Fn(&ShardMetrics) -> &CodeCounters,
    label: &'static str,
) -> Vec<(Labels<'static>, ConstCounter<u64>)> {
    let mut sums: Vec<(Option<crate::protocol::Code>, u64)> = Vec::new();
    for s in shards {
        for (i, (code, n)) in pick(s).iter().enumerate() {
            match sums.get_mut(i) {
                Some(slot) => slot.1 += n,
                None => sums.push((code, n)),
            }
        }
    }
    sums.into_iter()
        .filter(|&(_, n)| n > 0)
        .map(|(code, n)| {
            let name = code.map_or("UNKNOWN", code_name);
            (vec![(label, name.to_string())], counter(n))
        })
        .collect()
}

/// Per-bucket (upper bound, count) pairs, the sum, the count of a histogram summed over shards.
type Summed = (Vec<(f64, u64)>, f64, u64);

/// Sums one histogram over shards: (upper bound, count) per bucket in the exposed unit (the
/// last bound is `f64::MAX`, printed `+Inf`), the sum, the count. `per_unit` recorded units
/// make one exposed unit (nanoseconds → seconds: 1e9; a division, so that bounds such as
/// 1,000 ns print as 0.000001 and not 0.0000010000000000000002).
fn summed(
    shards: &[Arc<ShardMetrics>],
    pick: impl Fn(&ShardMetrics) -> &Histogram,
    per_unit: f64,
) -> Option<Summed> {
    let bounds = pick(shards.first()?).bounds();
    let mut buckets = vec![0u64; bounds.len() + 1];
    let (mut sum, mut count) = (0u64, 0u64);
    for s in shards {
        let (b, s_sum, s_count) = pick(s).read();
        for (acc, v) in buckets.iter_mut().zip(b) {
            *acc += v;
        }
        sum += s_sum;
        count += s_count;
    }
    // Per-bucket counts: the encoder accumulates them.
    let pairs: Vec<(f64, u64)> = buckets
        .iter()
        .enumerate()
        .map(|(i, &n)| (bounds.get(i).map_or(f64::MAX, |&b| b as f64 / per_unit), n))
        .collect();
    Some((pairs, sum as f64 / per_unit, count))
}

/// Sums one histogram over shards and writes it.
fn histogram(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    shards: &[Arc<ShardMetrics>],
    pick: impl Fn(&ShardMetrics) -> &Histogram,
    per_unit: f64,
) -> Result<(), std::fmt::Error> {
    let Some((pairs, sum, count)) = summed(shards, pick, per_unit) else {
        return Ok(());
    };
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(sum, count, &pairs, None)
}

/// A family of nanosecond histograms in seconds, one per `stage` label, each summed over
/// shards: `stages` are the label and how to find that stage's histogram in a shard's struct.
fn stage_histograms<S: Copy>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    shards: &[Arc<ShardMetrics>],
    stages: impl IntoIterator<Item = (&'static str, S)>,
    pick: impl Fn(&ShardMetrics, S) -> &Histogram,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (label, stage) in stages {
        let Some((pairs, sum, count)) = summed(shards, |s| pick(s, stage), 1e9) else {
            return Ok(());
        };
        let labels = vec![("stage", label.to_string())];
        m.encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &pairs, None)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shards = &self.shards[..];
        let shard_label = |i: usize| vec![("shard", i.to_string())];

        let mut build = enc.encode_descriptor(
            "ringpost_build",
            "The broker's version",
            None,
            MetricType::Info,
        )?;
        build.encode_info(&[("version", self.version)])?;

        let connections = self.gauges.iter().enumerate().flat_map(|(i, g)| {
            g.iter().flat_map(move |g| {
                [
                    ("active", g.connections.saturating_sub(g.parked)),
                    ("parked", g.parked),
                ]
                .map(|(state, n)| {
                    (
                        vec![("shard", i.to_string()), ("state", state.to_string())],
                        ConstGauge::new(n as i64),
                    )
                })
            })
        });
        family(
            &mut enc,
            "ringpost_connections",
            "Logged-in connections served by each shard: active (a session task) or parked (idle, in the shard's epoll set)",
            None,
            MetricType::Gauge,
            connections,
        )?;
        let logins = by_code(shards, |s| &s.logins, "result");
        let abandoned: u64 = shards.iter().map(|s| s.logins_abandoned.get()).sum();
        family(
            &mut enc,
            "ringpost_logins",
            "Login attempts by result: OK, the code of the refusal, or CLOSED (the client left before a whole Login frame)",
            None,
            MetricType::Counter,
            logins
                .into_iter()
                .chain((abandoned > 0).then(|| (vec![("result", "CLOSED".into())], counter(abandoned)))),
        )?;
        family(
            &mut enc,
            "ringpost_messages_accepted",
            "Messages appended to the inbox of a user owned by the shard",
            None,
            MetricType::Counter,
            shards
                .iter()
                .map(|s| (shard_label(s.shard), counter(s.accepted.get()))),
        )?;
        family(
            &mut enc,
            "ringpost_messages_delivered",
            "Deliver frames queued to devices served by the shard (live and replay)",
            None,
            MetricType::Counter,
            shards
                .iter()
                .map(|s| (shard_label(s.shard), counter(s.delivered.get()))),
        )?;
        family(
            &mut enc,
            "ringpost_replayed_messages",
            "Messages logins asked to be replayed: durable messages after the device's last seq at login",
            None,
            MetricType::Counter,
            [(vec![], counter(shards.iter().map(|s| s.replayed.get()).sum()))],
        )?;
        family(
            &mut enc,
            "ringpost_send_rejected",
            "Sends refused, by the status code of their SendAck (or server API answer)",
            None,
            MetricType::Counter,
            by_code(shards, |s| &s.send_rejected, "code"),
        )?;
        family(
            &mut enc,
            "ringpost_goaway",
            "GoAway frames sent, by code",
            None,
            MetricType::Counter,
            by_code(shards, |s| &s.goaway, "code"),
        )?;
        let mesh = shards.iter().flat_map(|s| {
            s.mesh_in
                .iter()
                .enumerate()
                .filter(move |&(from, _)| from != s.shard)
                .map(move |(from, c)| {
                    (
                        vec![("from", from.to_string()), ("to", s.shard.to_string())],
                        counter(c.get()),
                    )
                })
        });
        family(
            &mut enc,
            "ringpost_mesh_envelopes",
            "Envelopes (messages, acks, hand-offs) carried from one shard to another",
            None,
            MetricType::Counter,
            mesh,
        )?;
        let gauge_of = |pick: fn(&ShardGauges) -> u64| {
            self.gauges.iter().enumerate().filter_map(move |(i, g)| {
                g.as_ref()
                    .map(|g| (shard_label(i), ConstGauge::new(pick(g) as i64)))
            })
        };
        family(
            &mut enc,
            "ringpost_mesh_queue_depth",
            "Envelopes waiting in the shard's outboxes to enter the mesh (backpressure builds here)",
            None,
            MetricType::Gauge,
            gauge_of(|g| g.mesh_queued as u64),
        )?;
        family(
            &mut enc,
            "ringpost_log",
            "Bytes of the shard's segment files on disk (preallocated, so this is capacity)",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            gauge_of(|g| g.log_bytes),
        )?;
        family(
            &mut enc,
            "ringpost_users",
            "Users the shard holds state for (inbox, cursors or connections)",
            None,
            MetricType::Gauge,
            gauge_of(|g| g.users as u64),
        )?;
        histogram(
            &mut enc,
            "ringpost_log_sync",
            "Duration of each group-commit sync (msync) of the log",
            Some(&Unit::Seconds),
            shards,
            |s| &s.log_sync,
            1e9,
        )?;
        histogram(
            &mut enc,
            "ringpost_commit_batch_size",
            "Messages made durable by one group commit",
            None,
            shards,
            |s| &s.commit_batch,
            1.0,
        )?;
        stage_histograms(
            &mut enc,
            "ringpost_message_stage",
            "Time 1:1 messages spend in each stage inside the broker, from one stamp to the next (see the README's metrics table)",
            shards,
            Stage::ALL.map(|s| (s.name(), s)),
            |m, stage| m.stages.get(stage),
        )?;
        stage_histograms(
            &mut enc,
            "ringpost_login_stage",
            "Time successful logins spend in each stage inside the broker, from accept(2) to LoginOk handed to the kernel (see the README's metrics table)",
            shards,
            LoginStage::ALL.map(|s| (s.name(), s)),
            |m, stage| m.login_stages.get(stage),
        )?;
        family(
            &mut enc,
            "ringpost_groups",
            "Groups the shard owns (it orders their entries)",
            None,
            MetricType::Gauge,
            gauge_of(|g| g.groups as u64),
        )?;
        family(
            &mut enc,
            "ringpost_group_fanout_pending",
            "Entries of the shard's groups that a member shard has not yet durably applied (fan-out backlog)",
            None,
            MetricType::Gauge,
            gauge_of(|g| g.group_fanout_pending as u64),
        )?;
        family(
            &mut enc,
            "ringpost_group_messages",
            "Messages to groups the shard owns, stored with their group_seq",
            None,
            MetricType::Counter,
            shards
                .iter()
                .map(|s| (shard_label(s.shard), counter(s.group_messages.get()))),
        )?;
        family(
            &mut enc,
            "ringpost_group_member_entries",
            "Group entries (messages and membership events) appended to streams of members the shard owns: the fan-out",
            None,
            MetricType::Counter,
            shards
                .iter()
                .map(|s| (shard_label(s.shard), counter(s.group_member_entries.get()))),
        )?;
        self.encode_process(&mut enc)
    }
}

impl Scrape {
    fn encode_process(&self, enc: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let p = &self.process;
        let one = |v: Option<u64>| v.map(|v| (vec![], ConstGauge::new(v as i64))).into_iter();
        if let Some(cpu) = p.cpu_seconds {
            family(
                enc,
                "process_cpu",
                "User and system CPU time spent",
                Some(&Unit::Seconds),
                MetricType::Counter,
                [(vec![], ConstCounter::new(cpu))],
            )?;
        }
        family(
            enc,
            "process_resident_memory",
            "Resident memory size",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            one(p.resident_bytes),
        )?;
        family(
            enc,
            "process_virtual_memory",
            "Virtual memory size",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            one(p.virtual_bytes),
        )?;
        family(
            enc,
            "process_open_fds",
            "Open file descriptors (past 4096, the count taken just after the previous scrape: counting costs ~1 µs per fd)",
            None,
            MetricType::Gauge,
            one(p.open_fds),
        )?;
        family(
            enc,
            "process_max_fds",
            "Limit on open file descriptors (RLIMIT_NOFILE)",
            None,
            MetricType::Gauge,
            one(p.max_fds),
        )?;
        family(
            enc,
            "process_threads",
            "Threads of the process",
            None,
            MetricType::Gauge,
            one(p.threads),
        )?;
        family(
            enc,
            "process_start_time",
            "Start time of the process since the Unix epoch",
            Some(&Unit::Seconds),
            MetricType::Gauge,
            p.start_time_seconds.map(|v| (vec![], ConstGauge::new(v))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::login_stages::LoginStamps;
    use crate::protocol::Code;

    fn scrape() -> String {
        let shards = ShardMetrics::for_shards(2);
        shards[0].accepted.add(3);
        shards[1].accepted.add(4);
        shards[1].delivered.add(7);
        shards[0].logins.inc(Code::OK);
        shards[1].logins.inc(Code::OK);
        shards[1].logins.inc(Code::AUTH_FAILED);
        shards[0].logins_abandoned.inc();
        shards[0].send_rejected.inc(Code::INBOX_FULL);
        shards[1].goaway.inc(Code::KICKED);
        shards[1].mesh_received(0, 5);
        shards[0].log_sync.observe(60_000);
        shards[1].log_sync.observe(3_000_000_000);
        shards[0].commit_batch.observe(3);
        shards[1].group_messages.add(4);
        shards[0].group_member_entries.add(12);
        shards[0].stages.between(Stage::Sync, 1_000, 121_000);
        shards[1].stages.between(Stage::Sync, 1_000, 3_001_000);
        let login = LoginStamps {
            accepted_ns: 1_000,
            read_ns: 3_000,
        };
        shards[0].login_stages.record(login, 4_000, 1_004_000);
        shards[1].login_stages.record(login, 4_000, 30_004_000);
        render(Scrape {
            shards,
            gauges: vec![
                Some(ShardGauges {
                    connections: 5,
                    parked: 2,
                    mesh_queued: 1,
                    log_bytes: 4096,
                    users: 9,
                    groups: 2,
                    group_fanout_pending: 6,
                }),
                None,
            ],
            process: ProcessStats::read(),
            version: "9.9.9",
        })
    }

    #[test]
    fn families_have_their_documented_names_and_sums() {
        let text = scrape();
        for line in [
            "ringpost_build_info{version=\"9.9.9\"} 1",
            "ringpost_connections{shard=\"0\",state=\"active\"} 3",
            "ringpost_connections{shard=\"0\",state=\"parked\"} 2",
            "ringpost_logins_total{result=\"OK\"} 2",
            "ringpost_logins_total{result=\"AUTH_FAILED\"} 1",
            "ringpost_logins_total{result=\"CLOSED\"} 1",
            "ringpost_messages_accepted_total{shard=\"0\"} 3",
            "ringpost_messages_accepted_total{shard=\"1\"} 4",
            "ringpost_messages_delivered_total{shard=\"1\"} 7",
            "ringpost_replayed_messages_total 0",
            "ringpost_send_rejected_total{code=\"INBOX_FULL\"} 1",
            "ringpost_goaway_total{code=\"KICKED\"} 1",
            "ringpost_mesh_envelopes_total{from=\"0\",to=\"1\"} 5",
            "ringpost_mesh_envelopes_total{from=\"1\",to=\"0\"} 0",
            "ringpost_mesh_queue_depth{shard=\"0\"} 1",
            "ringpost_log_bytes{shard=\"0\"} 4096",
            "ringpost_groups{shard=\"0\"} 2",
            "ringpost_group_fanout_pending{shard=\"0\"} 6",
            "ringpost_group_messages_total{shard=\"1\"} 4",
            "ringpost_group_member_entries_total{shard=\"0\"} 12",
            "ringpost_log_sync_seconds_bucket{le=\"0.00005\"} 0",
            "ringpost_log_sync_seconds_bucket{le=\"0.0001\"} 1",
            "ringpost_log_sync_seconds_bucket{le=\"2.5\"} 1",
            "ringpost_log_sync_seconds_bucket{le=\"+Inf\"} 2",
            "ringpost_log_sync_seconds_count 2",
            "ringpost_commit_batch_size_bucket{le=\"4.0\"} 1",
            "ringpost_commit_batch_size_sum 3.0",
            "ringpost_message_stage_seconds_bucket{le=\"0.0001\",stage=\"sync\"} 0",
            "ringpost_message_stage_seconds_bucket{le=\"0.00015\",stage=\"sync\"} 1",
            "ringpost_message_stage_seconds_bucket{le=\"0.003\",stage=\"sync\"} 2",
            "ringpost_message_stage_seconds_bucket{le=\"0.000001\",stage=\"mesh\"} 0",
            "ringpost_message_stage_seconds_count{stage=\"sync\"} 2",
            "ringpost_message_stage_seconds_count{stage=\"mesh\"} 0",
            "ringpost_login_stage_seconds_bucket{le=\"0.000002\",stage=\"login_read\"} 2",
            "ringpost_login_stage_seconds_bucket{le=\"0.001\",stage=\"total\"} 0",
            "ringpost_login_stage_seconds_bucket{le=\"0.0015\",stage=\"total\"} 1",
            "ringpost_login_stage_seconds_bucket{le=\"0.05\",stage=\"total\"} 2",
            "ringpost_login_stage_seconds_count{stage=\"register\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Shard 1 did not answer: no gauges for it rather than a wrong zero.
        assert!(!text.contains("ringpost_connections{shard=\"1\""), "{text}");
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "missing {name} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
