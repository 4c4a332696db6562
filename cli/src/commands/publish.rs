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

/// How far in the past `--at` may be and still mean "now": clocks of two machines disagree by
/// this much without anyone having made a mistake. Further back is a typo (a wrong year, day or
/// time zone) and is refused rather than published at once.
const CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(60);

pub(crate) async fn run(global: &Global, args: PublishArgs) -> anyhow::Result<()> {
    warren_shared::contract::validate_event_name(&args.event)?;
    if let Some(at) = args.at {
        check_not_past(at, chrono::Utc::now())?;
    }
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
        Producer::connect(&global.amqp_url, super::topology(global, &[])?),
    )
    .await?;
    let options = PublishOptions {
        message_id: args.message_id.clone(),
        idempotency_key: args.idempotency_key.clone(),
        tenant: args.tenant.clone(),
        traceparent: None,
        headers: args.headers.clone(),
        priority: args.priority,
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

/// Refuses an `--at` more than [`CLOCK_SKEW`] before `now`.
fn check_not_past(
    at: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    let behind = (now - at).to_std().unwrap_or_default();
    if behind > CLOCK_SKEW {
        anyhow::bail!(
            "--at {} is {} in the past: a delayed event must be due later (up to {}s of clock skew publishes at once); leave --at out to publish now",
            warren_shared::contract::format_time(at),
            humantime::format_duration(std::time::Duration::from_secs(behind.as_secs())),
            CLOCK_SKEW.as_secs()
        );
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
/// in flight. Stops reading at the first line that fails (not JSON, refused or unroutable), waits
/// for the confirms of what it already sent, and says which line failed, why, and what went
/// out, so that the operator knows where to resume.
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
    let mut outcome = BulkOutcome::default();
    loop {
        let line_no = outcome.read + 1;
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                outcome.fail(line_no, anyhow::Error::new(e).context("cannot read it"));
                break;
            }
        };
        outcome.read = line_no;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(line) {
            outcome.fail(line_no, anyhow::anyhow!("{}", json_problem(&e)));
            break;
        }
        match producer
            .start_json(&args.event, line.as_bytes(), options.clone())
            .await
        {
            Ok((_, pending)) => {
                outcome.last_sent = line_no;
                in_flight.push_back(async move { pending.wait().await.map_err(|e| (line_no, e)) });
            }
            Err(e) => {
                outcome.fail(line_no, e.into());
                break;
            }
        }
        if in_flight.len() >= WINDOW {
            let settled = in_flight.next().await;
            if !outcome.settle(settled, &progress) {
                break;
            }
        }
    }
    while let Some(settled) = in_flight.next().await {
        outcome.settle(Some(settled), &progress);
    }
    progress.finish_and_clear();
    let published = outcome.published;
    if let Some(error) = outcome.error() {
        return Err(error);
    }
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

/// What a bulk publish did, line by line.
#[derive(Default)]
struct BulkOutcome {
    /// Lines read (empty ones included), so the number of the last one.
    read: usize,
    /// The last line sent to the broker.
    last_sent: usize,
    /// Events the broker confirmed.
    published: usize,
    /// Lines that failed, each with why.
    failed: Vec<(usize, anyhow::Error)>,
}

impl BulkOutcome {
    fn fail(&mut self, line: usize, error: anyhow::Error) {
        self.failed.push((line, error));
    }

    /// Counts a confirm; `false` when it was a failure.
    fn settle(
        &mut self,
        settled: Option<Result<(), (usize, warren_producer::PublishError)>>,
        progress: &indicatif::ProgressBar,
    ) -> bool {
        match settled {
            Some(Ok(())) => {
                self.published += 1;
                progress.inc(1);
                true
            }
            Some(Err((line, e))) => {
                self.fail(line, anyhow::Error::new(e).context("not published"));
                false
            }
            None => true,
        }
    }

    /// The first failure, with what went out around it.
    fn error(mut self) -> Option<anyhow::Error> {
        self.failed.sort_by_key(|(line, _)| *line);
        let lines: Vec<usize> = self.failed.iter().map(|(line, _)| *line).collect();
        let (line, error) = self.failed.into_iter().next()?;
        let problem = crate::report::one_line(error.chain().map(ToString::to_string));
        let published = self.published;
        let summary = if lines.len() == 1 && self.last_sent < line {
            format!(
                "published {published} event(s), every line before it; nothing from line {line} on was sent"
            )
        } else {
            const NAMED: usize = 5;
            let mut named: Vec<String> =
                lines.iter().take(NAMED).map(ToString::to_string).collect();
            if lines.len() > NAMED {
                named.push(format!("and {} more", lines.len() - NAMED));
            }
            format!(
                "published {published} event(s) of lines 1 to {last}, {} failed (line {}); nothing after line {last} was sent",
                lines.len(),
                named.join(", "),
                last = self.last_sent
            )
        };
        Some(anyhow::anyhow!("line {line}: {problem}; {summary}"))
    }
}

/// A JSON error of one NDJSON line: the line is known, so only the column is worth saying.
fn json_problem(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let message = message.strip_suffix(&position).unwrap_or(&message);
    format!("not valid JSON: {message} at column {}", e.column())
}

#[cfg(test)]
mod tests {
    use super::{check_not_past, json_problem};
    use chrono::{Duration, TimeZone, Utc};

    #[test]
    fn a_time_in_the_past_beyond_clock_skew_is_refused() {
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap();
        let error = check_not_past(now - Duration::hours(2), now).unwrap_err();
        assert_eq!(
            error.to_string(),
            "--at 2026-11-24T07:00:00.000Z is 2h in the past: a delayed event must be due later (up to 60s of clock skew publishes at once); leave --at out to publish now"
        );
        check_not_past(now - Duration::seconds(30), now).unwrap();
        check_not_past(now + Duration::days(3), now).unwrap();
    }

    #[test]
    fn a_json_problem_names_the_column_only() {
        let error = serde_json::from_str::<serde::de::IgnoredAny>("{oops").unwrap_err();
        assert_eq!(
            json_problem(&error),
            "not valid JSON: key must be a string at column 2"
        );
    }
}
