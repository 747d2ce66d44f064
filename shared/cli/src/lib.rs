//! The edge both binaries share: logging to stderr (`RUST_LOG`, default info), the runtime,
//! and the one-line error with exit code 1 that ARCHITECTURE.md promises.

use std::future::Future;
use std::path::PathBuf;

/// `--ca FILE` and `--insecure-http`, the same on both binaries and every subcommand: what
/// this process's clients trust, and whether plain http may leave this machine (for the
/// publisher's `serve`, also whether it may be served to other machines).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM file of a CA to trust besides the system's (the network's private CA, e.g. the
    /// ca.pem of `feed-publisher tls init`); repeatable. Also FEEDSYNC_CA (':'-separated).
    #[arg(long = "ca", value_name = "FILE", global = true)]
    pub ca: Vec<PathBuf>,
    /// Allow plain http to and from other machines: tokens and patient data then cross the
    /// network in clear. Without it, http is for this machine (loopback) only. Also
    /// FEEDSYNC_INSECURE_HTTP=1.
    #[arg(long, global = true)]
    pub insecure_http: bool,
}

impl TlsArgs {
    /// Sets this process's trust; call first, before any client is made.
    pub fn install(&self) -> anyhow::Result<()> {
        feedsync_http::tls::install_from(&self.ca, self.insecure_http).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Whether plain http to other machines was allowed here or in the environment.
    pub fn insecure_http(&self) -> bool {
        self.insecure_http || feedsync_http::tls::insecure_http_from_env()
    }
}

/// `usb --help` on both binaries: the binary's own first line, then how the round trip goes,
/// written once so the two cannot drift apart.
#[macro_export]
macro_rules! usb_help {
    ($first_line:literal) => {
        concat!($first_line, "\n\n", "The round trip:\n  \
    1. at the child:  feed-subscriber usb export --db CHILD_DB --token TOKEN --out /media/stick/north.fsync\n     \
    (everything the parent has not acknowledged: the child's own changes since its last reply or online sync)\n  \
    2. at the parent: feed-publisher usb import --db PARENT_DB --in /media/stick/north.fsync --reply-out /media/stick/north-reply.fsync\n     \
    (applies the child's changes and writes the reply: the parent's answers and its changes for the child)\n  \
    3. at the child:  feed-subscriber usb import --db CHILD_DB --token TOKEN --in /media/stick/north-reply.fsync\n\n\
    Files are encrypted and signed with the child's registration: a lost stick reveals nothing, and a changed, damaged, \
    truncated or wrong child's file is refused before anything is applied. Importing a file twice, an old file, or a file \
    overtaken by online sync changes nothing, so USB and online sync mix in any order. Import each reply before the next \
    export when you can. `usb inspect --in FILE` shows a file's header (child, direction, event range, when it was made) \
    without any key.")
    };
}

/// Runs a command's future; prints `error: ...` (with its causes) and exits 1 if it fails.
pub fn run_main(command: impl Future<Output = anyhow::Result<()>>) {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    if let Err(e) = runtime.block_on(command) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// `conflicts list|resolve`, the same on both binaries: on the parent for conflicts found
/// when children push, on a child for those found when it pulls.
#[derive(clap::Subcommand)]
pub enum ConflictsCommand {
    /// Conflict records: both versions and the fields both sides changed (open ones unless --all).
    List {
        /// Database URL.
        #[arg(long, env = "FEEDSYNC_DB")]
        db: String,
        /// Machine-readable output (every version in full).
        #[arg(long)]
        json: bool,
        /// Resolved ones too.
        #[arg(long)]
        all: bool,
    },
    /// Resolve one: the chosen version is written here as a local change and syncs everywhere.
    Resolve {
        #[arg(long, env = "FEEDSYNC_DB")]
        db: String,
        /// The conflict's number, from `conflicts list`.
        id: i64,
        /// mine (this database's version in the conflict), theirs (the other side's) or fields.
        #[arg(long)]
        take: String,
        /// With --take fields: NAME=mine or NAME=theirs (repeatable); other fields keep their current value.
        #[arg(long = "field")]
        fields: Vec<String>,
    },
}

pub async fn conflicts(command: ConflictsCommand) -> anyhow::Result<()> {
    use feedsync_node::exchange;
    let db = match &command {
        ConflictsCommand::List { db, .. } | ConflictsCommand::Resolve { db, .. } => db.clone(),
    };
    let database = feedsync_db::Database::from_url(&db)?;
    let mut session = database.session().await?;
    exchange::prepare_tables(&mut session).await?;
    match command {
        ConflictsCommand::List { json, all, .. } => {
            let list = exchange::list_conflicts(&mut session, all, 10_000).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for c in &list {
                    let (mine, theirs) = c.mine_theirs();
                    println!(
                        "conflict #{} {} {} {} ({}; with {}; {} won{})",
                        c.id,
                        c.status,
                        c.table,
                        c.key,
                        c.detected_at,
                        c.peer,
                        c.winner,
                        if c.entity_conflict { "; one side deleted it" } else { "" }
                    );
                    for field in &c.fields {
                        let show = |v: &Option<feedsync_wire::network::ConflictFields>| v.as_ref().and_then(|f| f.get(field)).map_or("(absent)".to_owned(), |v| v.to_string());
                        println!("  {field}: mine {} | theirs {}", show(mine), show(theirs));
                    }
                    if c.entity_conflict {
                        println!("  mine: {} | theirs: {}", if mine.is_some() { "present" } else { "deleted" }, if theirs.is_some() { "present" } else { "deleted" });
                    }
                }
                println!("{} conflicts{}", list.len(), if all { "" } else { " open" });
            }
        }
        ConflictsCommand::Resolve { id, take, fields, .. } => {
            let take = exchange::Take::parse(&take, &fields).map_err(|e| anyhow::anyhow!(e))?;
            let schema = feedsync_db::schema::read_schema(&mut session, database.schema_name()).await?;
            let model = feedsync_core::model::build(&schema, &feedsync_core::profile::Profile::openmrs());
            let result = exchange::resolve_conflict(&mut session, &model, id, &take).await?;
            println!(
                "conflict #{id} resolved: the chosen version ({}) is written here and syncs like any local change",
                if result.is_some() { "present" } else { "deleted" }
            );
        }
    }
    drop(session);
    database.close().await;
    Ok(())
}
