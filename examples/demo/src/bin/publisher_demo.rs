//! `feedsync-publisher-demo`: the publisher alone, with nothing installed. An OpenMRS 2.5 schema
//! in a SQLite file, seeded once with a simulated clinic's records, captured and served; write
//! to the database and watch the feeds grow. Exit codes: 0 stopped by Ctrl-C, 1 failure (one
//! line saying what happened and what to do), 2 bad command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use feedsync_node::config::Config;
use feed_publisher::server;
use feedsync_node::load_model;
use feedsync_node::capture;
use feedsync_db::Database;
use feedsync_core::profile::Profile;
use feedsync_sim::workload::{self, WorkloadConfig};

/// The OpenMRS 2.5 schema and core metadata for SQLite, generated from the real dump.
const SQLITE_OPENMRS_SCHEMA: &str = include_str!("../../../../shared/sim/schema/openmrs-2.5.sqlite.sql");

#[derive(Parser)]
#[command(
    name = "feedsync-publisher-demo",
    version,
    about = "Try the publisher with nothing installed: an OpenMRS schema in SQLite, seeded with a simulated clinic's records, captured and served",
    after_help = "From the source tree: cargo run --release --bin feedsync-publisher-demo -- [OPTIONS]"
)]
struct Cli {
    /// Folder for the demo database (created if missing; reused if present).
    #[arg(long, default_value = "feedsync-demo")]
    dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8086")]
    listen: String,
    /// Patients the simulated clinic registers on first start.
    #[arg(long, default_value_t = 20)]
    patients: usize,
    /// Seed of the simulated clinic (same seed, same records).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cli.dir).with_context(|| format!("cannot create {}", cli.dir.display()))?;
    let file = cli.dir.join("openmrs.sqlite");
    let fresh = !file.exists();
    let mut config = Config { database_url: format!("sqlite://{}", file.display()), ..Config::default() };
    config.server.listen = cli.listen;
    let database = Database::from_url(&config.database_url)?;
    if fresh {
        eprintln!("creating an OpenMRS 2.5 database in {}", file.display());
        database.session().await?.execute_script(SQLITE_OPENMRS_SCHEMA).await?;
    }
    let model = load_model(&database, &Profile::openmrs()).await?;
    let mut session = database.session().await?;
    capture::install(&mut session, &model).await?;
    if fresh {
        let clinic = WorkloadConfig { seed: cli.seed, patients: cli.patients, ..Default::default() };
        let log = workload::run(&mut session, &clinic).await?;
        eprintln!("simulated clinic: {} patients registered, {} rows written", cli.patients, log.writes().count());
    }
    drop(session);
    let shown = database.display_name();
    let (_keep, never) = tokio::sync::watch::channel(false);
    server::serve_until_stopped(
        database,
        model,
        config,
        |local| {
            println!("feeds:      http://{local}/ws/atomfeed/all/recent (every change), http://{local}/ws/atomfeed/patient/recent");
            println!("categories: http://{local}/ws/atomfeed");
            println!("database:   {shown} (write to it and watch the feed grow); Ctrl-C stops");
        },
        never,
    )
    .await
}

fn main() {
    let cli = Cli::parse();
    feedsync_cli::run_main(run(cli));
}
