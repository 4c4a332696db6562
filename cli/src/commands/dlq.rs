//! `warren dlq list | show | replay | purge`.

use super::{redact, within_timeout};
use crate::args::{DlqArgs, DlqCommand, Global};
use crate::output::{or_dash, print_json, table, time};
use chrono::Utc;
use warren_shared::store;
use warren_worker::Registry;
use warren_worker::dlq::{DeadLetter, DeadLetterQueue};

pub(crate) async fn run(global: &Global, args: DlqArgs, registry: &Registry) -> anyhow::Result<()> {
    let task = match &args.command {
        DlqCommand::List { task, .. }
        | DlqCommand::Replay { task, .. }
        | DlqCommand::Purge { task, .. } => Some(task.as_str()),
        DlqCommand::Show { task, .. } => task.as_deref(),
    };
    let topology = super::topology(global, task.as_slice())?;
    let connection = within_timeout(
        &format!("the broker at {}", redact(&global.amqp_url)),
        warren_shared::amqp::connect(&global.amqp_url, "warren-cli dlq"),
    )
    .await?;
    let result = match args.command {
        DlqCommand::List { task, limit, json } => {
            let dlq = DeadLetterQueue::new(&connection, &topology, &task);
            let count = dlq.count().await?;
            let letters = dlq.peek(limit).await?;
            if json {
                print_json(
                    &serde_json::json!({ "task": task, "count": count, "dead_letters": letters }),
                )
            } else {
                print_list(&task, count, &letters);
                Ok(())
            }
        }
        DlqCommand::Show { id, task, json } => {
            let tasks: Vec<String> = match task {
                Some(task) => vec![task],
                None => registry.tasks().map(|t| t.id().to_owned()).collect(),
            };
            let mut found = None;
            for task in &tasks {
                let dlq = DeadLetterQueue::new(&connection, &topology, task);
                if let Some(letter) = dlq.find(&id).await? {
                    found = Some((task.clone(), letter));
                    break;
                }
            }
            let Some((task, letter)) = found else {
                anyhow::bail!(
                    "no dead letter with message id or run id {id:?} in {}",
                    tasks.join(", ")
                );
            };
            let runs = match super::database(global).await {
                Ok(pool) => {
                    let client = pool.get().await?;
                    let key = letter
                        .run_id
                        .clone()
                        .unwrap_or_else(|| letter.message_id.clone());
                    store::find_runs(&client, &key).await?
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no run timeline: the database is unreachable");
                    Vec::new()
                }
            };
            if json {
                print_json(
                    &serde_json::json!({ "task": task, "dead_letter": letter, "runs": runs }),
                )
            } else {
                print_letter(&task, &letter);
                for run in runs.iter().filter(|r| r.summary.task == task) {
                    println!();
                    super::runs::print_run(run);
                }
                Ok(())
            }
        }
        DlqCommand::Replay {
            task,
            id,
            all: _,
            limit,
        } => {
            let pool = super::database(global).await?;
            let dlq = DeadLetterQueue::new(&connection, &topology, &task);
            let operator = super::operator();
            let report = match &id {
                Some(id) => dlq.replay(&pool, |l| l.is(id), 1, &operator).await?,
                None => dlq.replay(&pool, |_| true, limit, &operator).await?,
            };
            if let (Some(id), true) = (&id, report.replayed.is_empty()) {
                anyhow::bail!(
                    "no dead letter with message id or run id {id:?} in {}",
                    topology.dead_letter_queue(&task)
                );
            }
            println!(
                "replayed {} dead letter(s) to {}",
                report.replayed.len(),
                topology.task_queue(&task)
            );
            Ok(())
        }
        DlqCommand::Purge {
            task,
            older_than,
            yes,
        } => {
            if !yes {
                anyhow::bail!("purging deletes dead letters for good: add --yes to confirm");
            }
            let purged = DeadLetterQueue::new(&connection, &topology, &task)
                .purge(older_than)
                .await?;
            println!(
                "purged {purged} dead letter(s) from {}",
                topology.dead_letter_queue(&task)
            );
            Ok(())
        }
    };
    warren_shared::amqp::close(&connection, "bye").await;
    result
}

fn age(letter: &DeadLetter) -> String {
    letter.last_failed_at.map_or_else(
        || "-".into(),
        |at| {
            let secs = (Utc::now() - at).num_seconds().max(0);
            humantime::format_duration(std::time::Duration::from_secs(
                u64::try_from(secs).unwrap_or(0),
            ))
            .to_string()
        },
    )
}

fn print_list(task: &str, count: u32, letters: &[DeadLetter]) {
    println!("{count} dead letter(s) for task {task}");
    if letters.is_empty() {
        return;
    }
    let mut t = table(&["ID", "EVENT", "REASON", "ATTEMPTS", "AGE", "MESSAGE"]);
    for l in letters {
        let mut message = l.message.clone();
        if message.chars().count() > 80 {
            message = format!("{}…", message.chars().take(79).collect::<String>());
        }
        t.add_row(vec![
            l.message_id.clone(),
            l.event.clone(),
            l.reason.clone(),
            l.attempts.to_string(),
            age(l),
            message,
        ]);
    }
    println!("{t}");
    if letters.len() < count as usize {
        println!("(showing {} of {count}; --limit shows more)", letters.len());
    }
}

fn print_letter(task: &str, l: &DeadLetter) {
    println!("dead letter  {}", l.message_id);
    println!("task         {task}");
    println!("event        {}", l.event);
    println!("reason       {}", l.reason);
    println!("message      {}", l.message);
    println!("attempts     {}", l.attempts);
    println!("first failed {}", or_dash(l.first_failed_at.map(time)));
    println!(
        "dead since   {} ({} ago)",
        or_dash(l.last_failed_at.map(time)),
        age(l)
    );
    println!("run          {}", or_dash(l.run_id.clone()));
    println!("\nheaders");
    let mut t = table(&["NAME", "VALUE"]);
    for (name, value) in &l.headers {
        t.add_row(vec![name.clone(), value.clone()]);
    }
    println!("{t}");
    println!("\npayload\n{}", l.payload);
}
