//! `warren publish`: one event from --data/--file, or many from NDJSON on standard input.

use super::{redact, within_timeout};
use crate::args::{Global, PublishArgs};
use anyhow::Context;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use std::io::IsTerminal;
use tokio::io::{AsyncBufReadExt, BufReader};
use warren_producer::{Producer, PublishOptions};

/// Unconfirmed publishes in flight during a bulk publish.
const WINDOW: usize = 512;

pub(crate) async fn run(global: &Global, args: PublishArgs) -> anyhow::Result<()> {
    warren_shared::contract::validate_event_name(&args.event)?;
    let single = match (&args.data, &args.file) {
        (Some(data), _) => Some(data.clone().into_bytes()),
        (None, Some(path)) => {
            Some(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?)
        }
        (None, None) => None,
    };
    if let Some(body) = &single {
        serde_json::from_slice::<serde::de::IgnoredAny>(body)
            .context("the payload is not valid JSON")?;
    }
    let producer = within_timeout(
        &format!("the broker at {}", redact(&global.amqp_url)),
        Producer::connect(&global.amqp_url, super::topology(global)),
    )
    .await?;
    let options = PublishOptions {
        message_id: args.message_id.clone(),
        idempotency_key: args.idempotency_key.clone(),
        tenant: args.tenant.clone(),
        traceparent: None,
        headers: args.headers.clone(),
        delay: match (args.delay, args.at) {
            (Some(delay), _) => Some(delay),
            (None, Some(at)) => Some((at - chrono::Utc::now()).to_std().unwrap_or_default()),
            (None, None) => None,
        },
    };
    match single {
        Some(body) => {
            let published = producer
                .publish_json(&args.event, &body, options)
                .await
                .with_context(|| format!("publishing {} failed", args.event))?;
            let due = options_due(&args);
            if args.json {
                let answer = serde_json::json!({
                    "event": args.event, "message_id": published.message_id, "due": due
                });
                println!("{answer}");
            } else if let Some(due) = due {
                println!(
                    "published {} as message {}, due {due}",
                    args.event, published.message_id
                );
            } else {
                println!(
                    "published {} as message {}",
                    args.event, published.message_id
                );
            }
        }
        None => bulk(&producer, &args, options).await?,
    }
    Ok(())
}

/// When a delayed publish is due, for the confirmation line.
fn options_due(args: &PublishArgs) -> Option<String> {
    let at = match (args.delay, args.at) {
        (Some(delay), _) => chrono::Utc::now() + chrono::Duration::from_std(delay).ok()?,
        (None, Some(at)) => at,
        (None, None) => return None,
    };
    Some(warren_shared::contract::format_time(at))
}

/// Publishes one event per non-empty line of standard input, keeping up to [`WINDOW`] confirms
/// in flight; stops at the first failure, naming its line.
async fn bulk(
    producer: &Producer,
    args: &PublishArgs,
    options: PublishOptions,
) -> anyhow::Result<()> {
    if args.message_id.is_some() || args.idempotency_key.is_some() {
        anyhow::bail!(
            "--message-id and --idempotency-key apply to a single publish, not to NDJSON input"
        );
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        anyhow::bail!(
            "give the payload with --data or --file, or pipe NDJSON (one payload per line) into standard input"
        );
    }
    let progress = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {pos} published ({per_sec}) {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut in_flight = FuturesOrdered::new();
    let mut line_no = 0usize;
    let mut published = 0usize;
    while let Some(line) = lines
        .next_line()
        .await
        .context("cannot read standard input")?
    {
        line_no += 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        serde_json::from_str::<serde::de::IgnoredAny>(line)
            .with_context(|| format!("line {line_no} is not valid JSON"))?;
        let (_, pending) = producer
            .start_json(&args.event, line.as_bytes(), options.clone())
            .await
            .with_context(|| format!("publishing line {line_no} failed"))?;
        in_flight.push_back(async move { pending.wait().await.map(|()| line_no) });
        if in_flight.len() >= WINDOW {
            settle(&mut in_flight).await?;
            published += 1;
            progress.inc(1);
        }
    }
    while !in_flight.is_empty() {
        settle(&mut in_flight).await?;
        published += 1;
        progress.inc(1);
    }
    progress.finish_and_clear();
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "event": args.event, "published": published })
        );
    } else {
        println!("published {published} {} events", args.event);
    }
    Ok(())
}

async fn settle<F>(in_flight: &mut FuturesOrdered<F>) -> anyhow::Result<()>
where
    F: std::future::Future<Output = Result<usize, warren_producer::PublishError>>,
{
    match in_flight.next().await {
        Some(Ok(_)) | None => Ok(()),
        Some(Err(e)) => Err(anyhow::Error::new(e).context("a publish was not confirmed")),
    }
}
