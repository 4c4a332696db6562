//! `warren workers`: the fleet as Postgres knows it.

use crate::args::{Global, WorkersArgs};
use crate::output::{or_dash, print_json, table, time};
use chrono::Utc;
use warren_shared::store;

pub(crate) async fn run(global: &Global, args: WorkersArgs) -> anyhow::Result<()> {
    let pool = super::database(global).await?;
    let client = pool.get().await?;
    let workers = store::list_workers(&client, args.all).await?;
    if args.json {
        return print_json(&workers);
    }
    let mut t = table(&[
        "WORKER",
        "INCARNATION",
        "STATE",
        "HOST",
        "PID",
        "TASKS",
        "VERSION",
        "STARTED (UTC)",
        "LAST HEARTBEAT",
        "IN FLIGHT",
    ]);
    for w in &workers {
        let ago = (Utc::now() - w.last_heartbeat).num_seconds().max(0);
        t.add_row(vec![
            w.id.clone(),
            or_dash(w.incarnation.map(|n| format!("#{n}"))),
            w.state.clone(),
            w.host.clone(),
            w.pid.to_string(),
            w.tasks.join(", "),
            w.version.clone(),
            time(w.started_at),
            match w.stopped_at {
                Some(at) => format!("stopped {}", time(at)),
                None => format!("{ago} s ago"),
            },
            or_dash(Some(w.runs_in_flight)),
        ]);
    }
    println!("{t}");
    let stale = workers.iter().filter(|w| w.state == "stale").count();
    println!(
        "{} replica(s){}",
        workers.len(),
        if stale > 0 {
            format!(
                ", {stale} stale (no heartbeat: crashed or cut off; their runs are taken over when their messages come back)"
            )
        } else {
            String::new()
        }
    );
    Ok(())
}
