//! `ringpost-tools inspect <shard-dir>`: what a shard's log holds, read-only.
//!
//! Lists the segments, counts records by kind, shows every user's head seq and device cursors,
//! and reports the first invalid record of each segment (a torn tail, or corruption). Unlike the
//! broker's recovery it never writes: it is safe on a live or damaged directory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use ringpost::log::record::{self, Framed, Record, KIND_CURSOR, KIND_MESSAGE};
use ringpost::log::segment;
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// A shard directory, e.g. data/shard-000.
    pub shard_dir: PathBuf,
    /// One JSON object on stdout instead of the text report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Default)]
struct UserSummary {
    head_seq: u64,
    messages: u64,
    cursors: BTreeMap<String, u64>,
}

pub fn run(args: &InspectArgs) -> ExitCode {
    let entries = match std::fs::read_dir(&args.shard_dir) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot read {}: {e}", args.shard_dir.display());
            return ExitCode::from(1);
        }
    };
    let mut bases: Vec<u64> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| segment::parse_name(&e.file_name().to_string_lossy()))
        .collect();
    bases.sort_unstable();
    let mut segments = Vec::new();
    let mut users: BTreeMap<String, UserSummary> = BTreeMap::new();
    let (mut messages, mut cursors, mut problems) = (0u64, 0u64, 0u64);
    // Records of the other kinds (own-send copies, group entries, checkpoints…), by name.
    let mut others: BTreeMap<&'static str, u64> = BTreeMap::new();
    for base in bases {
        let path = args.shard_dir.join(segment::file_name(base));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("cannot read {}: {e}", path.display());
                return ExitCode::from(1);
            }
        };
        let (mut off, mut records) = (0usize, 0u64);
        let mut problem: Option<String> = None;
        while off < bytes.len() {
            match record::parse(&bytes[off..]) {
                Framed::End => break,
                Framed::Bad(why) => {
                    problem = Some(format!(
                        "invalid record at position {}: {why}",
                        base + off as u64
                    ));
                    break;
                }
                Framed::Record {
                    kind,
                    payload,
                    size,
                } => {
                    match record::decode(kind, payload) {
                        Ok(Record::Message(m)) => {
                            let u = users.entry(m.to).or_default();
                            u.head_seq = u.head_seq.max(m.seq);
                            u.messages += 1;
                            messages += 1;
                        }
                        Ok(Record::Cursor(c)) => {
                            let u = users.entry(c.user).or_default();
                            let cur = u.cursors.entry(c.device).or_default();
                            *cur = (*cur).max(c.acked);
                            cursors += 1;
                        }
                        Ok(other) => {
                            let name = match other {
                                Record::Outgoing(_) => "outgoing",
                                Record::Group(_) => "group",
                                Record::GroupSnapshot(_) => "group_snapshot",
                                Record::Fanout(_) => "fanout",
                                Record::Anchor(_) => "anchor",
                                Record::Message(_) | Record::Cursor(_) => "other",
                            };
                            *others.entry(name).or_default() += 1;
                        }
                        Err(e) => {
                            problem = Some(format!(
                                "record at position {} (kind {kind}) does not decode: {e}",
                                base + off as u64
                            ));
                            break;
                        }
                    }
                    records += 1;
                    off += size;
                }
            }
        }
        problems += u64::from(problem.is_some());
        segments.push(json!({
            "file": segment::file_name(base), "base": base, "size": bytes.len(),
            "used": off, "records": records, "problem": problem,
        }));
    }
    if args.json {
        let users: serde_json::Map<String, serde_json::Value> = users
            .iter()
            .map(|(name, u)| {
                (
                    name.clone(),
                    json!({"head_seq": u.head_seq, "messages": u.messages, "cursors": u.cursors}),
                )
            })
            .collect();
        println!(
            "{}",
            json!({"segments": segments, "messages": messages, "cursors": cursors,
                   "other_records": others, "users": users, "problems": problems})
        );
    } else {
        println!(
            "{} segment(s) in {}",
            segments.len(),
            args.shard_dir.display()
        );
        for s in &segments {
            println!(
                "  {}  used {:>10} of {:>10} bytes  {:>8} records{}",
                s["file"].as_str().unwrap_or("?"),
                s["used"],
                s["size"],
                s["records"],
                s["problem"]
                    .as_str()
                    .map(|p| format!("  !! {p}"))
                    .unwrap_or_default()
            );
        }
        println!("records: {messages} messages (kind {KIND_MESSAGE}), {cursors} cursors (kind {KIND_CURSOR})");
        for (name, n) in &others {
            println!("         {n} {name}");
        }
        println!("users: {}", users.len());
        for (name, u) in &users {
            let cur: Vec<String> = u.cursors.iter().map(|(d, a)| format!("{d}={a}")).collect();
            println!(
                "  {name:<32} head_seq {:>8}  retained {:>8}  cursors [{}]",
                u.head_seq,
                u.messages,
                cur.join(", ")
            );
        }
        if problems > 0 {
            println!("{problems} segment(s) with an invalid record (the broker cuts a torn tail off at start)");
        }
    }
    if problems > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}
