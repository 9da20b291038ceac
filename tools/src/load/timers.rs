//! `load timers`: the machine's wake-up floor, with no broker and no network.
//!
//! `--tasks` tasks on one glommio executor (the load generator's own runtime) each follow an
//! open-loop schedule at `--rate / --tasks` per second, as `load p2p`'s senders do, sleeping
//! until each due time; the lag is how late each one woke. Nothing else runs, so the lag is the
//! floor the OS, the hypervisor and the runtime put under every latency percentile a load run
//! on this machine can report: a message crosses several such wake-ups (the generator's timer,
//! the broker's socket read, the mesh, the sync's completion, the recipient's read).

use std::cell::RefCell;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{new_histogram, parse_duration, percentiles_json};

#[derive(clap::Args, Debug)]
pub struct TimersArgs {
    /// Tasks, each with its own schedule (phases spread evenly over one interval).
    #[arg(long, default_value_t = 100)]
    pub tasks: usize,
    /// Wake-ups per second, over all tasks.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// How long to measure, e.g. "5s".
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Print exactly one JSON object on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// What a run saw: the lag of every wake-up (µs).
struct Outcome {
    wakeups: u64,
    lag: hdrhistogram::Histogram<u64>,
}

pub fn run(args: TimersArgs) -> ExitCode {
    if args.tasks == 0 || !(args.rate > 0.0 && args.rate.is_finite()) {
        eprintln!("--tasks must be at least 1 and --rate a positive number");
        return ExitCode::from(2);
    }
    let per_task = (args.duration.as_secs_f64() * args.rate / args.tasks as f64).floor() as u64;
    if per_task == 0 {
        eprintln!("--duration is shorter than one interval of a task (--tasks / --rate)");
        return ExitCode::from(2);
    }
    let interval = Duration::from_secs_f64(args.tasks as f64 / args.rate);
    let tasks = args.tasks;
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("timers")
        .spawn(move || measure(tasks, interval, per_task));
    let outcome = match executor.map(|h| h.join()) {
        Ok(Ok(Ok(o))) => o,
        Ok(Ok(Err(e))) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
        Ok(Err(e)) | Err(e) => {
            eprintln!("cannot run the executor: {e}");
            return ExitCode::FAILURE;
        }
    };
    let lag = percentiles_json(&outcome.lag);
    if args.json {
        println!(
            "{}",
            json!({"scenario": "timers", "tasks": args.tasks, "rate": args.rate,
                   "interval_us": interval.as_micros() as u64, "wakeups": outcome.wakeups,
                   "lag_us": lag})
        );
    } else {
        println!(
            "timers: {} tasks, {} wake-ups/s ({} µs apart per task), {} wake-ups",
            args.tasks,
            args.rate,
            interval.as_micros(),
            outcome.wakeups
        );
        println!("lag µs  {lag}");
    }
    ExitCode::SUCCESS
}

async fn measure(tasks: usize, interval: Duration, per_task: u64) -> Result<Outcome, String> {
    let lag = Rc::new(RefCell::new(new_histogram()?));
    let t0 = Instant::now() + Duration::from_millis(10);
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let lag = lag.clone();
            let phase = interval.mul_f64(i as f64 / tasks as f64);
            glommio::spawn_local(async move {
                for k in 0..per_task {
                    let due = t0 + phase + interval.mul_f64(k as f64);
                    let wait = due.saturating_duration_since(Instant::now());
                    if !wait.is_zero() {
                        glommio::timer::sleep(wait).await;
                    }
                    let late = Instant::now().saturating_duration_since(due).as_micros() as u64;
                    let _ = lag.borrow_mut().record(late.max(1));
                }
            })
        })
        .collect();
    for h in handles {
        h.await;
    }
    let lag = lag.borrow().clone();
    Ok(Outcome {
        wakeups: lag.len(),
        lag,
    })
}
