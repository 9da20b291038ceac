//! A validated [`Config`] written back as a TOML file, so the config target can check that
//! what the parser accepted reads back as the same configuration (sizes as bytes, durations
//! in ms, every key spelled out).

use std::time::Duration;

use ringpost::config::{Config, FsyncPolicy};
use ringpost::wire::upgrade::OriginPolicy;
use toml::{Table, Value};

fn ms(d: Duration) -> Value {
    Value::String(format!("{}ms", d.as_millis()))
}

fn int(n: u64) -> Value {
    // Every integer key is range-checked far below i64::MAX, except max_bytes_per_shard, which
    // is a size and may also be written as a string.
    match i64::try_from(n) {
        Ok(n) => Value::Integer(n),
        Err(_) => Value::String(n.to_string()),
    }
}

fn text(s: impl ToString) -> Value {
    Value::String(s.to_string())
}

fn origins(p: &OriginPolicy) -> Value {
    let list = match p {
        OriginPolicy::Any => vec![text("*")],
        OriginPolicy::Listed { loopback, exact } => (*loopback)
            .then(|| text("loopback"))
            .into_iter()
            .chain(exact.iter().map(text))
            .collect(),
    };
    Value::Array(list)
}

fn table(entries: Vec<(&str, Value)>) -> Value {
    Value::Table(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}

/// The TOML text of `cfg`, with every key.
pub fn render(cfg: &Config) -> String {
    let s = &cfg.server;
    let mut server = vec![
        ("listen", text(s.listen)),
        ("shards", int(s.shards as u64)),
        ("shutdown_grace", ms(s.shutdown_grace)),
        ("mesh_queue", int(s.mesh_queue as u64)),
        ("listen_backlog", int(u64::from(s.listen_backlog))),
        ("park_after", ms(s.park_after)),
        ("own_send_sync", Value::Boolean(s.own_send_sync)),
        (
            "ws_listen",
            text(s.ws_listen.map_or(String::new(), |a| a.to_string())),
        ),
        ("ws_allowed_origins", origins(&s.ws_allowed_origins)),
    ];
    if let Some(cpus) = &s.cpus {
        let list = cpus.iter().map(|&c| int(c as u64)).collect();
        server.push(("cpus", Value::Array(list)));
    }
    let st = &cfg.storage;
    let fsync = match st.fsync {
        FsyncPolicy::Always => "always",
        FsyncPolicy::Interval => "interval",
        FsyncPolicy::Never => "never",
    };
    let path = |p: &std::path::Path| text(p.to_str().expect("config paths come from TOML strings"));
    let storage = vec![
        ("data_dir", path(&st.data_dir)),
        ("segment_size", int(st.segment_size as u64)),
        ("fsync", text(fsync)),
        ("fsync_interval", ms(st.fsync_interval)),
        ("retention", ms(st.retention)),
        ("max_bytes_per_shard", int(st.max_bytes_per_shard)),
    ];
    let auth = vec![
        ("secret_file", path(&cfg.auth.secret_file)),
        ("leeway", ms(cfg.auth.leeway)),
    ];
    let l = &cfg.limits;
    let limits = vec![
        ("max_frame", int(l.max_frame as u64)),
        ("login_timeout", ms(l.login_timeout)),
        ("idle_timeout", ms(l.idle_timeout)),
        ("dedup_window", ms(l.dedup_window)),
        ("dedup_entries", int(l.dedup_entries as u64)),
        ("max_devices", int(l.max_devices as u64)),
        ("sends_per_sec", int(u64::from(l.sends_per_sec))),
        ("max_inbox", int(l.max_inbox as u64)),
        ("max_group_members", int(l.max_group_members as u64)),
        ("max_groups_per_user", int(l.max_groups_per_user as u64)),
        ("max_outbound", int(l.max_outbound as u64)),
        ("slow_consumer_timeout", ms(l.slow_consumer_timeout)),
    ];
    let mut root = Table::new();
    root.insert("server".into(), table(server));
    root.insert("storage".into(), table(storage));
    root.insert("auth".into(), table(auth));
    root.insert("limits".into(), table(limits));
    toml::to_string(&root).expect("a TOML table always serialises")
}
