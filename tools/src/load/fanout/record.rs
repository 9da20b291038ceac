//! The record of a crash test: a header, one flushed line per SendAck{OK}, and a trailer of
//! how far each sender wrote.

use super::*;

/// Writes the record's header; returns its path for the generator threads to append to.
pub(super) fn open_record(args: &FanoutArgs, plan: &Plan) -> Result<Option<PathBuf>, String> {
    let Some(path) = args.record.as_ref().filter(|_| args.phase == Phase::Send) else {
        return Ok(None);
    };
    let senders = plan.groups[0].senders.len();
    let header = format!(
        "# ringpost fanout record run={:08x} groups={} members={} senders={senders} per_sender={} size={}\n",
        plan.run_id,
        plan.groups.len(),
        plan.groups[0].members.len(),
        plan.per_sender,
        plan.size,
    );
    std::fs::write(path, header).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(path.clone()))
}

/// After the sends: how far each sender wrote (`w <sender> <n>`), so verify knows which
/// numbers may legitimately arrive unrecorded (written, stored, the ack lost in a crash).
pub(super) fn write_trailer(path: &std::path::Path, plan: &Plan) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    let mut text = String::new();
    for (s, w) in plan.written.iter().enumerate() {
        text += &format!("w {s} {}\n", w.load(Ordering::Acquire));
    }
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// The plan a record was written for, and what it says was acked.
pub(super) fn read_record(path: &std::path::Path) -> Result<(Plan, Vec<Vec<Answer>>), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = std::io::BufReader::new(file).lines();
    let header = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    let field = |key: &str| -> Result<u64, String> {
        header
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| {
                if key == "run=" {
                    u64::from_str_radix(v, 16).ok()
                } else {
                    v.parse().ok()
                }
            })
            .ok_or_else(|| format!("the record's header has no {key}: {header:?}"))
    };
    let mut plan = Plan::new(
        field("run=")? as u32,
        field("groups=")? as usize,
        field("members=")? as usize,
        field("senders=")? as usize,
        0.0,
        field("per_sender=")?,
    );
    plan.size = field("size=")? as usize;
    let mut answers = vec![vec![Answer::None; plan.per_sender as usize]; plan.senders.len()];
    let mut trailer = false;
    for line in lines.map_while(Result::ok) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
        // A line cut short by a crash of this tool itself is ignored; a broker crash cannot cut
        // one (each is written whole).
        match (words.first(), num(1), num(2)) {
            (Some(&"w"), Some(s), Some(n)) if (s as usize) < plan.senders.len() => {
                trailer = true;
                plan.written[s as usize].store(n, Ordering::Release);
            }
            (Some(_), _, _) => {
                if let (Some(s), Some(k)) = (num(0), num(1)) {
                    let slot = answers
                        .get_mut(s as usize)
                        .and_then(|a| a.get_mut((k as usize).wrapping_sub(1)));
                    if let Some(slot) = slot {
                        *slot = Answer::Ok;
                    }
                }
            }
            _ => {}
        }
    }
    if !trailer {
        // The send phase did not finish: a number up to per_sender may have been written.
        for w in &plan.written {
            w.store(plan.per_sender, Ordering::Release);
        }
    }
    Ok((plan, answers))
}
