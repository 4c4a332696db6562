//! `warren tokens create|list|revoke`: API tokens for the console and the HTTP API. A token's
//! secret is printed once, at creation; Postgres keeps only its hash.

use crate::args::Global;
use crate::output::{print_json, table};
use clap::{Args, Subcommand};
use warren_console::tokens::{self, Scope};

#[derive(Args, Debug)]
pub(crate) struct TokensArgs {
    #[command(subcommand)]
    command: TokensCommand,
}

#[derive(Subcommand, Debug)]
enum TokensCommand {
    /// Create a token and print its secret (shown this once).
    Create {
        /// A unique name, recorded as the actor of what the token does.
        name: String,
        /// Comma-separated: read, publish, admin (admin implies the other two).
        #[arg(long, value_delimiter = ',', required = true, value_parser = parse_scope)]
        scopes: Vec<Scope>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every token (never their secrets), newest first.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: it and the console sessions made from it stop working at once.
    Revoke {
        /// The token's name.
        name: String,
    },
}

fn parse_scope(text: &str) -> Result<Scope, String> {
    text.parse().map_err(|e: tokens::TokenError| e.to_string())
}

pub(crate) async fn run(global: &Global, args: TokensArgs) -> anyhow::Result<()> {
    let pool = super::database(global).await?;
    let mut client = pool.get().await?;
    let by = super::operator();
    match args.command {
        TokensCommand::Create { name, scopes, json } => {
            let created = tokens::create(&mut client, &name, &scopes, &by).await?;
            if json {
                return print_json(&created);
            }
            let scopes: Vec<&str> = created.record.scopes.iter().map(|s| s.as_str()).collect();
            println!("{}", created.token);
            eprintln!(
                "token {name:?} created with scopes {}: the line above is its secret, shown only now",
                scopes.join(",")
            );
        }
        TokensCommand::List { json } => {
            let all = tokens::list(&client).await?;
            if json {
                return print_json(&all);
            }
            let mut t = table(&["NAME", "SCOPES", "CREATED", "BY", "LAST USED", "REVOKED"]);
            let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or_else(
                    || "-".to_owned(),
                    |t| t.format("%Y-%m-%d %H:%M").to_string(),
                )
            };
            for token in &all {
                let scopes: Vec<&str> = token.scopes.iter().map(|s| s.as_str()).collect();
                t.add_row(vec![
                    token.name.clone(),
                    scopes.join(","),
                    when(Some(token.created_at)),
                    token.created_by.clone(),
                    when(token.last_used_at),
                    when(token.revoked_at),
                ]);
            }
            println!("{t}");
            println!("{} token(s)", all.len());
        }
        TokensCommand::Revoke { name } => {
            if !tokens::revoke(&mut client, &name, &by).await? {
                anyhow::bail!("no live token named {name:?}");
            }
            println!("token {name:?} revoked");
        }
    }
    Ok(())
}
