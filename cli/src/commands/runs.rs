//! `warren runs list | show | cancel | retry`.

use super::within_timeout;
use crate::args::{Global, RunsArgs, RunsCommand};
use crate::output::{or_dash, print_json, short_json, table, time};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use std::collections::HashMap;
use uuid::Uuid;
use warren_shared::store::cancel::{Cancelled, Retried};
use warren_shared::store::logs::{self, RunLogs};
use warren_shared::store::{self, RunDetail, RunFilter, RunSummary, children, outbox};
use warren_worker::{Registry, control};

pub(crate) async fn run(
    global: &Global,
    args: RunsArgs,
    registry: &Registry,
) -> anyhow::Result<()> {
    let pool = super::database(global).await?;
    let client = pool.get().await?;
    match args.command {
        RunsCommand::List {
            task,
            status,
            parent,
            tenant,
            since,
            until,
            after,
            limit,
            json,
        } => {
            let page = store::page_runs(
                &client,
                &RunFilter {
                    task: task.clone(),
                    status,
                    tenant,
                    created_after: since,
                    created_before: until,
                    parent,
                    after,
                    limit,
                },
            )
            .await?;
            let runs = page.runs;
            // JSON stays an array of runs; the cursor goes where a script's parser does not look.
            let next = page
                .next
                .map(|cursor| format!("next page: --after {cursor}"));
            if let Some(task) = &task
                && runs.is_empty()
            {
                check_known(&client, registry, task).await?;
            }
            if json {
                if let Some(next) = next {
                    eprintln!("{next}");
                }
                return print_json(&with_message_ids(&client, runs).await?);
            }
            let mut t = table(&[
                "RUN",
                "TASK",
                "STATUS",
                "STAGE/OUTCOME",
                "ATTEMPT",
                "ERROR",
                "CREATED (UTC)",
                "FINISHED",
            ]);
            for run in &runs {
                t.add_row(vec![
                    run.id.to_string(),
                    run.task.clone(),
                    run.status.clone(),
                    or_dash(run.outcome.clone().or_else(|| run.stage.clone())),
                    run.attempt.to_string(),
                    or_dash(run.error_code.clone()),
                    time(run.created_at),
                    or_dash(run.finished_at.map(time)),
                ]);
            }
            println!("{t}");
            println!("{} run(s)", runs.len());
            if let Some(next) = next {
                println!("{next}");
            }
        }
        RunsCommand::Show { id, json } => {
            let runs = store::find_runs(&client, &id).await?;
            if runs.is_empty() {
                anyhow::bail!("no run with id or message id {id:?}");
            }
            let mut shown = Vec::with_capacity(runs.len());
            for run in runs {
                let family = children::family(&client, run.summary.id).await?;
                let unsent = outbox::unsent_for_run(&client, run.summary.id).await?;
                let logs = logs::run_logs(&client, run.summary.id).await?;
                shown.push(Shown {
                    run,
                    family,
                    unsent,
                    logs,
                });
            }
            if json {
                return if shown.len() == 1 {
                    print_json(&shown[0])
                } else {
                    print_json(&shown)
                };
            }
            for (i, run) in shown.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print_run(&run.run);
                print_logs(&run.logs);
                print_family(&run.family, &run.unsent);
            }
        }
        RunsCommand::Cancel { id } => {
            let by = super::operator();
            match control::cancel(&pool, id, &by).await? {
                Cancelled::NotFound => anyhow::bail!("no run with id {id}"),
                Cancelled::AlreadyFinished(status) => {
                    println!("run {id} already finished ({status}); nothing changed");
                }
                Cancelled::Cancelled(runs) => {
                    println!("run {id} cancelled by {by}");
                    if runs.len() > 1 {
                        println!("{} of its descendants cancelled with it", runs.len() - 1);
                    }
                }
            }
        }
        RunsCommand::Retry { id } => {
            let topology = super::topology(global, &[])?;
            let by = super::operator();
            match control::retry(&pool, &topology, id, &by).await? {
                Retried::NotFound => anyhow::bail!("no run with id {id}"),
                Retried::NotRetryable(status) => anyhow::bail!(
                    "run {id} is {status}: only a dead or cancelled run can be retried"
                ),
                Retried::Queued { attempt, .. } => {
                    // The fleet's relays send the message within a second; sending it here
                    // says at once whether the broker took it.
                    let sent = send_now(global, &pool).await;
                    println!("run {id} queued again from its first step (attempt {attempt})");
                    if let Err(e) = sent {
                        println!(
                            "its message is in the outbox; a worker replica sends it (not sent from here: {e:#})"
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// Relays the outbox's due rows (the retried run's message among them) through a connection
/// of this command's own.
async fn send_now(global: &Global, pool: &deadpool_postgres::Pool) -> anyhow::Result<()> {
    let publisher = within_timeout(
        &format!("the broker at {}", super::redact(&global.amqp_url)),
        warren_producer::Publisher::connect(&global.amqp_url, "warren-cli runs retry"),
    )
    .await?;
    let relayed = warren_producer::relay::relay_due(pool, &publisher).await;
    publisher.close().await;
    relayed?;
    Ok(())
}

/// `runs show`: the run, its family and its unsent messages.
#[derive(Serialize)]
struct Shown {
    #[serde(flatten)]
    run: RunDetail,
    family: children::Family,
    unsent: Vec<outbox::Unsent>,
    logs: RunLogs,
}

/// The lines the run's steps logged, one per line as written (not in a table: a line is
/// copied, searched, and may be long), after how many older ones were dropped.
fn print_logs(logs: &RunLogs) {
    if logs.lines.is_empty() && logs.dropped == 0 {
        return;
    }
    println!("\nlogs");
    if logs.dropped > 0 {
        println!(
            "({} older line(s) dropped: a run keeps its newest)",
            logs.dropped
        );
    }
    let width = logs
        .lines
        .iter()
        .map(|l| l.step.chars().count())
        .max()
        .unwrap_or(0)
        .max("STEP".len());
    println!("{:23}  {:width$}  ATTEMPT  LINE", "AT (UTC)", "STEP");
    for line in &logs.lines {
        println!(
            "{}  {:width$}  {:<7}  {}",
            time(line.at),
            line.step,
            line.attempt,
            line.line
        );
    }
}

fn print_family(family: &children::Family, unsent: &[outbox::Unsent]) {
    if family.parent.is_none() && family.children.is_empty() && family.join.is_none() {
        if unsent.is_empty() {
            return;
        }
    } else {
        println!("\nfamily");
        if let Some(parent) = family.parent {
            println!("parent     {parent}");
        }
        if !family.children.is_empty() {
            let counts: Vec<String> = family
                .children
                .iter()
                .map(|(status, n)| format!("{n} {status}"))
                .collect();
            println!(
                "children   {} (warren runs list --parent ID)",
                counts.join(", ")
            );
        }
        if let Some((step, total, started, ended)) = &family.join {
            println!(
                "waiting    step {step}: {ended} of {total} children ended, {started} started"
            );
        }
    }
    if !unsent.is_empty() {
        println!("\nunsent messages (outbox)");
        let mut t = table(&["KIND", "TO", "MESSAGE", "DUE", "TRIES", "LAST ERROR"]);
        for row in unsent {
            t.add_row(vec![
                row.kind.clone(),
                row.routing_key.clone(),
                or_dash(row.message_id.clone()),
                time(row.available_at),
                row.attempts.to_string(),
                or_dash(row.last_error.clone()),
            ]);
        }
        println!("{t}");
    }
}

/// A task is known when this program runs it or the database has a run of it (a task another
/// program runs, or one since retired). Anything else is a typo, and an empty table would say
/// "no runs" where the truth is "no such task".
async fn check_known(
    client: &impl GenericClient,
    registry: &Registry,
    task: &str,
) -> anyhow::Result<()> {
    if registry.tasks().any(|t| t.id() == task) {
        return Ok(());
    }
    let any = store::list_runs(
        client,
        &RunFilter {
            task: Some(task.to_owned()),
            limit: 1,
            ..RunFilter::default()
        },
    )
    .await?;
    if any.is_empty() {
        let known: Vec<&str> = registry.tasks().map(|t| t.id()).collect();
        anyhow::bail!(
            "unknown task {task:?}: no run of it in the database, and this program's tasks are {}",
            known.join(", ")
        );
    }
    Ok(())
}

/// A `runs list --json` row: the summary and the message id, which `runs show` and `dlq show`
/// also accept and which the producer knows.
#[derive(Serialize)]
struct ListedRun {
    #[serde(flatten)]
    summary: RunSummary,
    message_id: Option<String>,
}

async fn with_message_ids(
    client: &impl GenericClient,
    runs: Vec<RunSummary>,
) -> anyhow::Result<Vec<ListedRun>> {
    let ids: Vec<Uuid> = runs.iter().map(|run| run.id).collect();
    let rows = client
        .query(
            "SELECT id, message_id FROM runs WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
    let mut message_ids: HashMap<Uuid, String> =
        rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    Ok(runs
        .into_iter()
        .map(|summary| ListedRun {
            message_id: message_ids.remove(&summary.id),
            summary,
        })
        .collect())
}

pub(crate) fn print_run(run: &RunDetail) {
    let s = &run.summary;
    println!("run        {}", s.id);
    println!("task       {} (event {})", s.task, s.event);
    println!("message    {}", run.message_id);
    println!(
        "status     {}{}",
        s.status,
        s.outcome
            .as_ref()
            .map(|o| format!(" ({o})"))
            .unwrap_or_default()
    );
    println!("stage      {}", or_dash(s.stage.clone()));
    println!("attempt    {}", s.attempt);
    if let Some(code) = &s.error_code {
        println!("error      {code}: {}", or_dash(run.error_message.clone()));
    }
    println!("published  {}", or_dash(run.published_at.map(time)));
    println!("created    {}", time(s.created_at));
    println!("finished   {}", or_dash(s.finished_at.map(time)));
    println!("worker     {}", or_dash(run.worker.clone()));
    if let Some(by) = &run.cancelled_by {
        println!(
            "cancelled  by {by} at {}",
            or_dash(run.cancelled_at.map(time))
        );
    }
    println!("input      {}", short_json(run.input.as_ref(), 200));
    println!("output     {}", short_json(run.output.as_ref(), 200));

    println!("\nsteps");
    let mut steps = table(&[
        "#",
        "STEP",
        "STATUS",
        "ATTEMPT",
        "RUNS",
        "TOOK",
        "OUTPUT / ERROR",
    ]);
    for step in &run.steps {
        let took = (step.finished_at - step.started_at).num_milliseconds();
        let detail = match &step.error_code {
            Some(code) => format!("{code}: {}", or_dash(step.error_message.clone())),
            None => short_json(step.output.as_ref(), 80),
        };
        steps.add_row(vec![
            step.position.to_string(),
            step.step.clone(),
            step.status.clone(),
            step.attempt.to_string(),
            step.executions.to_string(),
            format!("{took} ms"),
            detail,
        ]);
    }
    println!("{steps}");

    println!("\ntimeline");
    let mut timeline = table(&[
        "AT (UTC)", "FROM", "TO", "STAGE", "STEP", "ATTEMPT", "WORKER", "REASON",
    ]);
    for tr in &run.transitions {
        timeline.add_row(vec![
            time(tr.at),
            or_dash(tr.from_status.clone()),
            tr.to_status.clone(),
            or_dash(tr.stage.clone()),
            or_dash(tr.step.clone()),
            tr.attempt.to_string(),
            or_dash(tr.worker.clone()),
            or_dash(tr.reason.clone()),
        ]);
    }
    println!("{timeline}");
}
