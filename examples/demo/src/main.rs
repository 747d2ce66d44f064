//! `feedsync-demo`: a parent and its children syncing OpenMRS databases, with a clinic
//! simulator keeping them busy, in one process with nothing to install. A thin CLI over
//! `feed_subscriber::demo`. Exit codes: 0 stopped cleanly, 1 failure (one line saying what
//! happened and what to do), 2 bad command line, 130 stopped at once by a second Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use feedsync_demo::{self as demo, DemoOptions};

const LONG_ABOUT: &str = "\
A parent and its children (health facilities) syncing OpenMRS databases, with a clinic simulator \
keeping them busy. Nothing to install: by default every database is an SQLite file holding the \
OpenMRS 2.5 schema and core metadata, in a new temporary folder.

What runs:
  - the parent: the publisher serving its feeds, the network endpoints and the dashboard over HTTP;
  - the children (kigali-hc in Rwanda, zomba-dh in Malawi, beira-cs in Mozambique, kisumu-hc in \
Kenya, then more of each country): each syncs with the parent every --round-interval-ms, as \
`feed-subscriber run --parent` does;
  - the clinic simulator: patients registered with names of the region and identifiers carrying the \
facility's prefix (KGL-000001), visits, vital signs and lab results as obs, name corrections, \
address changes, obs corrected and voided. Concepts, locations and clinicians are created at the \
parent first and reach every facility by sync.

Scenes, in this order, early in the run (at speed 2, within the first minute):
  1. a patient registered at zomba-dh moves to kigali-hc: found at the parent by a misspelled name, \
the record fetched, a visit there;
  2. both facilities edit that patient's name before either syncs: a conflict, kept at the parent;
  3. beira-cs goes offline: its clinic keeps working, nothing syncs;
  4. beira-cs syncs by USB stick: export, import at the parent, reply imported (files in DIR/usb);
  5. beira-cs comes back online.

The parent prints its address first: the dashboard is at http://ADDRESS/dashboard, the feeds at \
http://ADDRESS/ws/atomfeed/all/recent.

Ctrl-C stops: the clinics close, each facility finishes its round, every facility (an offline one \
comes back) syncs what is left, and the demo prints where the databases are and how to look at \
them. A second Ctrl-C stops at once.";

const AFTER_HELP: &str = "\
Examples:
  feedsync-demo                                   3 facilities, 2 actions per second, until Ctrl-C
  feedsync-demo --children 4 --speed 10 --seed 7  a busier network, another story
  feedsync-demo --duration 60 --dir ./demo        stop by itself after a minute, keep the files in ./demo
  feedsync-demo --mysql mysql://root@127.0.0.1:3306
                                                  MariaDB databases feedsync_demo_parent, feedsync_demo_kigali_hc, ...
From the source tree: cargo run --release --bin feedsync-demo -- [OPTIONS]";

#[derive(Parser)]
#[command(name = "feedsync-demo", version, about = "A parent and its children syncing OpenMRS databases, with a simulated clinic at each child", long_about = LONG_ABOUT, after_help = AFTER_HELP)]
struct Cli {
    /// Seed of the simulation: the same seed tells the same story (patients, names,
    /// identifiers, values, scenes).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Facilities (children), 1 to 12. Scenes with a moving patient need 2; with 3 or more,
    /// the facility that goes offline is the third.
    #[arg(long, default_value_t = 3)]
    children: usize,
    /// Clinic actions per second, all facilities together.
    #[arg(long, default_value_t = 2.0, value_name = "ACTIONS_PER_SECOND")]
    speed: f64,
    /// Folder for the SQLite databases, the USB files and the children's tokens (created; must
    /// not hold an earlier demo's databases). Default: a new folder in the system's temporary
    /// folder, kept after the demo.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Address the parent serves on; 127.0.0.1:0 picks a free port (the address is printed).
    #[arg(long, default_value = "127.0.0.1:8086")]
    listen: String,
    /// Use MariaDB (or MySQL) instead of SQLite: the server's URL without a database, e.g.
    /// mysql://root@127.0.0.1:3306. Creates, replacing any earlier demo's, the databases
    /// feedsync_demo_parent and feedsync_demo_<child> ('-' as '_'), loaded from the OpenMRS 2.5
    /// dump.
    #[arg(long, value_name = "URL")]
    mysql: Option<String>,
    /// The OpenMRS dump --mysql loads (default: ../shared/openmrs/openmrs-2.5-fhir2.sql beside
    /// the repository, or in FEEDSYNC_OPENMRS_DUMPS).
    #[arg(long, value_name = "FILE", requires = "mysql")]
    dump: Option<PathBuf>,
    /// Stop by itself after this many seconds of simulation (default: until Ctrl-C).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// How often each facility syncs with the parent.
    #[arg(long, default_value_t = 2_000, value_name = "MS")]
    round_interval_ms: u64,
}

fn main() {
    let cli = Cli::parse();
    // The terminal is for the story: the toolkit's own logs only when something goes wrong
    // (RUST_LOG=info for all of them). Conflicts are told by the story, so their warning is not.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,feedsync_node::exchange=error".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let duration = match cli.duration {
        Some(seconds) if !(seconds > 0.0 && seconds.is_finite()) => anyhow::bail!("--duration {seconds}: give a number of seconds above 0"),
        Some(seconds) => Some(Duration::from_secs_f64(seconds)),
        None => None,
    };
    let dir = cli.dir.unwrap_or_else(|| {
        let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
        std::env::temp_dir().join(format!("feedsync-demo-{stamp}-{}", std::process::id()))
    });
    let options = DemoOptions {
        seed: cli.seed,
        children: cli.children,
        speed: cli.speed,
        dir: dir.clone(),
        listen: cli.listen,
        mysql: cli.mysql,
        dump: cli.dump,
        duration,
        round_interval: Duration::from_millis(cli.round_interval_ms),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        eprintln!("\nstopping: the clinics close, each facility finishes its round and syncs what is left (Ctrl-C again to stop at once)");
        let _ = stop.send(true);
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("stopped at once; the databases are in {}", dir.display());
            std::process::exit(130);
        }
    });
    let summary = demo::run(options, stopped).await?;
    summary.print();
    Ok(())
}
