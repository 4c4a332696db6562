//! `warren schedules create | list | show | pause | resume | delete | trigger`: schedules made
//! at run time, and a look at every schedule (declared ones too). Replicas running the task
//! fire them; this command only writes Postgres.

use crate::args::Global;
use crate::output::{or_dash, print_json, short_json, table, time};
use clap::{Args, Subcommand};
use serde::Serialize;
use std::time::{Duration, Instant};
use warren_shared::schedule::{DEFAULT_CATCH_UP_LIMIT, Missed, Timing, validate_name};
use warren_shared::store::schedules::{self, Definition, Fire, Schedule};

#[derive(Args, Debug)]
pub(crate) struct SchedulesArgs {
    #[command(subcommand)]
    command: SchedulesCommand,
}

#[derive(Subcommand, Debug)]
enum SchedulesCommand {
    /// Create a schedule that starts runs of a task.
    Create {
        /// Its unique name.
        name: String,
        /// The task whose runs it starts.
        #[arg(long)]
        task: String,
        /// A cron expression: five fields (minute hour day month weekday), or six with seconds
        /// first.
        #[arg(long, conflicts_with = "every", required_unless_present = "every")]
        cron: Option<String>,
        /// A fixed interval instead (30s, 5m, 1h), aligned to the Unix epoch.
        #[arg(long)]
        every: Option<String>,
        /// The IANA time zone of the cron expression.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// Each run's input, a JSON object.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// Slots missed during downtime: skip, latest (run the latest once) or all (up to
        /// --catch-up-limit).
        #[arg(long, default_value = "latest")]
        missed: String,
        /// How many missed slots `--missed all` runs at most.
        #[arg(long, default_value_t = DEFAULT_CATCH_UP_LIMIT)]
        catch_up_limit: u32,
    },
    /// Every schedule, with its next fire time.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A schedule's definition, its next 5 fire times and its last 10 fires with their runs.
    Show {
        /// The schedule.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop firing a schedule (a trigger still fires it).
    Pause {
        /// The schedule.
        name: String,
    },
    /// Fire a paused schedule again, from its next slot after now.
    Resume {
        /// The schedule.
        name: String,
    },
    /// Delete a schedule and its fire records (its runs stay). A declared schedule comes back
    /// when a replica of its task starts.
    Delete {
        /// The schedule.
        name: String,
    },
    /// Fire a schedule now, once, as a manual slot (paused or not); waits until a replica that
    /// runs its task has fired it.
    Trigger {
        /// The schedule.
        name: String,
        /// How long to wait for a replica to fire it.
        #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
}

pub(crate) async fn run(global: &Global, args: SchedulesArgs) -> anyhow::Result<()> {
    // Checked before connecting: a mistake in the definition is reported as such.
    let create = match &args.command {
        SchedulesCommand::Create {
            name,
            task,
            cron,
            every,
            timezone,
            payload,
            missed,
            catch_up_limit,
        } => Some(definition(
            name,
            task,
            cron.as_deref(),
            every.as_deref(),
            timezone,
            payload,
            missed,
            *catch_up_limit,
        )?),
        _ => None,
    };
    let pool = super::database(global).await?;
    let client = pool.get().await?;
    let missing = |name: &str| anyhow::anyhow!("no schedule named {name:?}");
    match args.command {
        SchedulesCommand::Create { name, .. } => {
            let Some((definition, timing)) = create else {
                unreachable!("checked above")
            };
            let next = timing.next_after(chrono::Utc::now());
            if !schedules::create(&client, &definition, next).await? {
                anyhow::bail!("a schedule named {name:?} exists already");
            }
            println!(
                "created schedule {name}: next fire at {} UTC",
                or_dash(next.map(time))
            );
        }
        SchedulesCommand::List { json } => {
            let all = schedules::list(&client).await?;
            if json {
                return print_json(&all);
            }
            let mut t = table(&[
                "NAME",
                "TASK",
                "WHEN",
                "ZONE",
                "MISSED",
                "STATE",
                "SOURCE",
                "NEXT (UTC)",
            ]);
            for s in &all {
                t.add_row(vec![
                    s.definition.name.clone(),
                    s.definition.task.clone(),
                    when(&s.definition),
                    s.definition.timezone.clone(),
                    s.definition.missed.to_string(),
                    state(s).to_owned(),
                    s.source.clone(),
                    or_dash(s.next_fire_at.map(time)),
                ]);
            }
            println!("{t}");
            println!("{} schedule(s)", all.len());
        }
        SchedulesCommand::Show { name, json } => {
            let schedule = schedules::get(&client, &name)
                .await?
                .ok_or_else(|| missing(&name))?;
            let upcoming = match (schedule.paused, schedule.definition.timing()) {
                (false, Ok(timing)) => match schedule.next_fire_at {
                    Some(next) => {
                        let mut slots = vec![next];
                        slots.extend(timing.upcoming(next, 4));
                        slots
                    }
                    None => Vec::new(),
                },
                _ => Vec::new(),
            };
            let fires = schedules::recent_fires(&client, &name, 10).await?;
            if json {
                #[derive(Serialize)]
                struct Shown<'a> {
                    schedule: &'a Schedule,
                    upcoming: &'a [chrono::DateTime<chrono::Utc>],
                    fires: &'a [Fire],
                }
                return print_json(&Shown {
                    schedule: &schedule,
                    upcoming: &upcoming,
                    fires: &fires,
                });
            }
            show(&schedule, &upcoming, &fires);
        }
        SchedulesCommand::Pause { name } => {
            if !schedules::set_paused(&client, &name, true, None).await? {
                return Err(missing(&name));
            }
            println!("paused schedule {name}");
        }
        SchedulesCommand::Resume { name } => {
            let schedule = schedules::get(&client, &name)
                .await?
                .ok_or_else(|| missing(&name))?;
            let timing = schedule.definition.timing()?;
            let next = timing.next_after(chrono::Utc::now());
            schedules::set_paused(&client, &name, false, next).await?;
            println!(
                "resumed schedule {name}: next fire at {} UTC",
                or_dash(next.map(time))
            );
        }
        SchedulesCommand::Delete { name } => {
            if !schedules::delete(&client, &name).await? {
                return Err(missing(&name));
            }
            println!("deleted schedule {name}");
        }
        SchedulesCommand::Trigger { name, wait } => {
            let slot = schedules::request_trigger(&client, &name)
                .await?
                .ok_or_else(|| missing(&name))?;
            let deadline = Instant::now() + wait;
            loop {
                let fires = schedules::recent_fires(&client, &name, 50).await?;
                if let Some(fire) = fires.iter().find(|f| f.manual && f.slot == slot) {
                    println!(
                        "triggered schedule {name}: slot {} UTC, run {}",
                        time(slot),
                        fire.run_id
                    );
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    anyhow::bail!(
                        "schedule {name} was triggered but not fired within {}s: no replica running its task fired it (the request stays until one does)",
                        wait.as_secs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(())
}

/// The definition given on the command line, checked; each mistake is one line.
#[allow(clippy::too_many_arguments)]
fn definition(
    name: &str,
    task: &str,
    cron: Option<&str>,
    every: Option<&str>,
    timezone: &str,
    payload: &str,
    missed: &str,
    catch_up_limit: u32,
) -> anyhow::Result<(Definition, Timing)> {
    validate_name(name)?;
    warren_shared::contract::validate_event_name(task)
        .map_err(|_| anyhow::anyhow!("invalid task name {task:?}"))?;
    let missed: Missed = missed.parse()?;
    let zone = warren_shared::schedule::parse_zone(timezone)?;
    let payload: serde_json::Value = serde_json::from_str(payload)
        .map_err(|e| anyhow::anyhow!("invalid --payload: not JSON ({e})"))?;
    if !payload.is_object() {
        anyhow::bail!("invalid --payload: it must be a JSON object");
    }
    let (timing, cron, every_secs) = match (cron, every) {
        (Some(expr), None) => (Timing::cron(expr, timezone)?, Some(expr.trim()), None),
        (None, Some(every)) => {
            let timing = Timing::every(every)?;
            let seconds = match timing {
                Timing::Every { seconds } => Some(seconds),
                Timing::Cron { .. } => None,
            };
            (timing, None, seconds)
        }
        _ => anyhow::bail!("give either --cron or --every"),
    };
    Ok((
        Definition {
            name: name.to_owned(),
            task: task.to_owned(),
            payload,
            cron: cron.map(str::to_owned),
            every_secs,
            timezone: zone.name().to_owned(),
            missed,
            catch_up_limit,
        },
        timing,
    ))
}

fn when(d: &Definition) -> String {
    match (&d.cron, d.every_secs) {
        (Some(cron), _) => cron.clone(),
        (None, Some(seconds)) => format!(
            "every {}",
            humantime::format_duration(Duration::from_secs(seconds.unsigned_abs()))
        ),
        (None, None) => "-".into(),
    }
}

fn state(s: &Schedule) -> &'static str {
    match (s.paused, s.next_fire_at) {
        (true, _) => "paused",
        (false, None) => "done",
        (false, Some(_)) => "active",
    }
}

fn show(s: &Schedule, upcoming: &[chrono::DateTime<chrono::Utc>], fires: &[Fire]) {
    let d = &s.definition;
    println!("schedule   {}", d.name);
    println!("task       {}", d.task);
    println!("when       {}", when(d));
    println!("zone       {}", d.timezone);
    println!("payload    {}", short_json(Some(&d.payload), 200));
    println!(
        "missed     {}{}",
        d.missed,
        if d.missed == Missed::All {
            format!(" (up to {})", d.catch_up_limit)
        } else {
            String::new()
        }
    );
    println!("state      {} ({})", state(s), s.source);
    println!();
    if upcoming.is_empty() {
        println!("next fires: none");
    } else {
        println!("next fires (UTC):");
        for at in upcoming {
            println!("  {}", time(*at));
        }
    }
    println!();
    if fires.is_empty() {
        println!("last fires: none");
        return;
    }
    let mut t = table(&["SLOT (UTC)", "FIRED", "LATE", "RUN", "STATUS"]);
    for f in fires {
        let late = (f.fired_at - f.slot).num_milliseconds().max(0) as f64 / 1000.0;
        t.add_row(vec![
            format!(
                "{}{}",
                time(f.slot),
                if f.manual { " (manual)" } else { "" }
            ),
            time(f.fired_at),
            format!("{late:.3}s"),
            f.run_id.to_string(),
            or_dash(f.status.clone()),
        ]);
    }
    println!("last fires:");
    println!("{t}");
}
