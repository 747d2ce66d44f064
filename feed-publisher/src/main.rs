//! `feed-publisher`: install change capture in an OpenMRS database, check what it publishes,
//! serve its feeds. Errors print one line and a hint; exit codes: 0 success, 1 failure,
//! 2 bad command line.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use feedsync_node::config::Config;
use feed_publisher::server;
use feedsync_node::load_model;
use feedsync_node::capture;
use feedsync_db::Database;
use feedsync_core::model::Model;
use feedsync_core::profile::Profile;

#[derive(Parser)]
#[command(
    name = "feed-publisher",
    version,
    about = "Publish an OpenMRS database's changes as paged Atom feeds of entity links",
    long_about = "Publish an OpenMRS database's changes as paged Atom feeds of entity links.\n\n\
        First `install` (adds triggers and feedsync_* tables, and snapshots existing rows), then \
        `serve`. `check` shows what would be published and why some tables are not. \
        `uninstall` removes exactly what install added.",
    after_help = "Database URLs: mysql://user:password@host:3306/openmrs (MySQL 5.6+, MariaDB 10.x) or sqlite://path/to/openmrs.sqlite\n\
        Example: feed-publisher install --db mysql://openmrs:secret@127.0.0.1:3306/openmrs\n         \
        feed-publisher serve --db mysql://openmrs:secret@127.0.0.1:3306/openmrs --listen 0.0.0.0:8086"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    tls: feedsync_cli::TlsArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Prepare a database: feedsync_* tables, capture triggers, snapshot of existing rows.
    /// Safe to run again (after an OpenMRS or module upgrade, run it again).
    Install(Common),
    /// Remove every trigger and table install added (named feedsync_*), and nothing else.
    Uninstall(Common),
    /// Report which tables are published (category, identity, references) and which are not, with the reason.
    Check(Common),
    /// Serve the feeds, resources and batch fetch over HTTP, publishing new changes as they commit.
    Serve(ServeArgs),
    /// This server and its children at a glance: problems first (alerts, each with what to do),
    /// then the journal, events, held changes and conflicts here, and every child.
    Status(StatusArgs),
    /// Register, list and revoke the children that sync with this server as their parent.
    #[command(subcommand)]
    Child(ChildCommand),
    /// Tokens for feed readers (subscribers, replicas, monitoring): create, list, revoke, rotate.
    /// They are checked when `[auth] required = true`.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Conflicts found when children pushed changes this server also changed.
    #[command(subcommand)]
    Conflicts(feedsync_cli::ConflictsCommand),
    /// Sync a child without network: import its USB export, write the reply it imports next.
    #[command(subcommand, long_about = USB_HELP)]
    Usb(UsbCommand),
    /// Certificates for a network without a PKI: `tls init` writes a private CA and this
    /// server's certificate; children trust the CA with `--ca ca.pem`.
    #[command(subcommand)]
    Tls(TlsCommand),
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Write ca.pem, ca-key.pem, server.pem and server-key.pem into DIR. A CA already in DIR is
    /// kept (run again after an address change: children keep trusting it). Keep ca-key.pem
    /// off the server if you can; give children ca.pem only.
    Init {
        /// Folder for the files (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// A host name or IP address children reach this server by; repeatable.
        #[arg(long = "name", value_name = "HOST", required = true)]
        names: Vec<String>,
        /// Days the server certificate is valid.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
}

/// How the USB round trip goes, for `usb --help` on both binaries.
const USB_HELP: &str = feedsync_cli::usb_help!("Sync a child that has no network, with files carried on a USB stick.");

#[derive(Subcommand)]
enum UsbCommand {
    /// Import a child's export: apply its changes and write the reply file the child imports next.
    Import {
        #[command(flatten)]
        common: Common,
        /// The child's export file (from `feed-subscriber usb export`).
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// Where to write the reply for the child (written whole or not at all).
        #[arg(long, value_name = "FILE")]
        reply_out: PathBuf,
    },
    /// Show a USB file's header (child, direction, event range, created_at) without opening it.
    Inspect {
        /// An export or a reply.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
    },
}

#[derive(Subcommand)]
enum ChildCommand {
    /// Register a child and print its token (shown once; give it to the child's operator for
    /// `feed-subscriber run --parent URL --token TOKEN`).
    Add {
        #[command(flatten)]
        common: Common,
        /// The child's name: letters, digits, '-' and '_'.
        #[arg(long)]
        name: String,
        /// Categories the child may write, comma-separated (see `check`); `*` (the default) is
        /// every category but users, roles, privileges and global properties, which need
        /// naming (e.g. `*,user`) or `privileged` for all of them.
        #[arg(long, value_delimiter = ',')]
        categories: Vec<String>,
        /// Send the child every patient, not only its catchment (small networks that want
        /// every record everywhere).
        #[arg(long)]
        all_patients: bool,
        /// Catchment rule: also every patient with an identifier, visit or encounter at this
        /// location (uuid; repeatable).
        #[arg(long = "location")]
        locations: Vec<String>,
        /// Catchment rule: also every patient with an identifier starting with this (repeatable).
        #[arg(long = "identifier-prefix")]
        identifier_prefixes: Vec<String>,
        /// Catchment rule: also every patient with an address where COLUMN=VALUE (person_address
        /// column, e.g. county_district=Gasabo; repeat for several, all must match).
        #[arg(long = "address")]
        address: Vec<String>,
    },
    /// Every registered child: last contact, acknowledged events, catchment size, held changes.
    List(ListArgs),
    /// End a child's access: its token gets 401 from now on. Its data stays, and the name may
    /// be registered again with `child add` (a new token, positions afresh, its catchment kept).
    Revoke(NamedArgs),
    /// Give a child a new token (printed as the last line); the old one keeps working for
    /// `--overlap-hours` so the child's operator can switch without a gap.
    Rotate(RotateArgs),
}

#[derive(Args)]
struct Common {
    /// Database URL (overrides database_url in the config file).
    #[arg(long, env = "FEEDSYNC_DB")]
    db: Option<String>,
    /// TOML config file; see examples/feed-publisher.toml for every key and its default.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it as the last line of standard output (shown once).
    Create {
        #[command(flatten)]
        common: Common,
        /// A name for who holds it: letters, digits, '-' and '_'.
        #[arg(long)]
        name: String,
        /// What it is for, comma-separated: feeds, replica, admin, metrics.
        #[arg(long)]
        scope: String,
        /// Categories it may read, comma-separated; `*` (the default) for all.
        #[arg(long, value_delimiter = ',')]
        categories: Vec<String>,
        /// When it stops working: e.g. 90d or 12h; never when omitted.
        #[arg(long)]
        expires: Option<String>,
    },
    /// The tokens, without their values.
    List(ListArgs),
    /// End a token now.
    Revoke(NamedArgs),
    /// Give a token a new value (printed as the last line); the old one works for
    /// `--overlap-hours` more.
    Rotate(RotateArgs),
}

/// A list of children or tokens.
#[derive(Args)]
struct ListArgs {
    #[command(flatten)]
    common: Common,
    /// As JSON, for scripts.
    #[arg(long)]
    json: bool,
}

/// A child or token by name.
#[derive(Args)]
struct NamedArgs {
    #[command(flatten)]
    common: Common,
    /// The child's or token's name.
    #[arg(long)]
    name: String,
}

/// A new token for a child or a feed reader, the old one valid a while longer.
#[derive(Args)]
struct RotateArgs {
    #[command(flatten)]
    common: Common,
    /// The child's or token's name.
    #[arg(long)]
    name: String,
    /// How long the old token stays valid, in hours (0: it ends now; at most 720).
    #[arg(long, default_value_t = 24)]
    overlap_hours: u64,
}

impl RotateArgs {
    fn overlap_s(&self) -> anyhow::Result<u64> {
        anyhow::ensure!(self.overlap_hours <= 720, "--overlap-hours {} is more than 720 (30 days): give the old token less time", self.overlap_hours);
        Ok(self.overlap_hours * 3_600)
    }
}

/// `90d`, `12h`, `30m` as seconds.
fn parse_duration_s(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| anyhow::anyhow!("--expires {text:?}: write a number and a unit, e.g. 90d, 12h or 30m"))?;
    let unit_s = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        _ => anyhow::bail!("--expires {text:?}: the unit is d, h or m (e.g. 90d)"),
    };
    Ok(n.saturating_mul(unit_s))
}

async fn token_command(command: TokenCommand) -> anyhow::Result<()> {
    use feedsync_node::auth;
    let common = match &command {
        TokenCommand::Create { common, .. } | TokenCommand::List(ListArgs { common, .. }) => common,
        TokenCommand::Revoke(NamedArgs { common, .. }) | TokenCommand::Rotate(RotateArgs { common, .. }) => common,
    };
    let config = load_config(common)?;
    config.validate()?;
    let database = Database::from_url(&config.database_url)?;
    let mut session = database.session().await?;
    if !capture::list_tables(&mut session).await?.iter().any(|t| t == capture::EVENT_TABLE) {
        bail!("capture is not installed on {}: run `feed-publisher install --db ...` first (tokens live beside the feeds)", database.display_name());
    }
    match &command {
        TokenCommand::Create { name, scope, categories, expires, .. } => {
            let scopes = auth::parse_scopes(scope)?;
            let expires_s = expires.as_deref().map(parse_duration_s).transpose()?;
            let token = auth::create_token(&mut session, name, &scopes, categories, expires_s).await?;
            cli_audit(&mut session, "token-create", &format!("token {name}: scopes {scope}")).await?;
            if !config.auth.required {
                eprintln!("note: [auth] required is off in this config, so the feeds do not ask for tokens yet");
            }
            show_secret(&format!("token {name} created"), &token);
        }
        TokenCommand::List(ListArgs { json, .. }) => {
            let tokens = auth::list_tokens(&mut session).await?;
            if *json {
                let list: Vec<serde_json::Value> = tokens
                    .iter()
                    .map(|t| {
                        serde_json::json!({
                            "name": t.name,
                            "scopes": t.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                            "categories": t.categories,
                            "created_at": t.created_at,
                            "expires_at": t.expires_at,
                            "revoked_at": t.revoked_at,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if tokens.is_empty() {
                println!("no tokens; `feed-publisher token create --name NAME --scope feeds` makes one");
            } else {
                for t in &tokens {
                    let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
                    let state = match (&t.revoked_at, &t.expires_at) {
                        (Some(at), _) => format!("revoked {at}"),
                        (None, Some(at)) => format!("expires {at}"),
                        (None, None) => "no expiry".to_owned(),
                    };
                    println!("{}  scopes {}  categories {}  created {}  {state}", t.name, scopes.join(","), t.categories.join(","), t.created_at);
                }
            }
        }
        TokenCommand::Revoke(NamedArgs { name, .. }) => {
            auth::revoke_token(&mut session, name).await?;
            cli_audit(&mut session, "token-revoke", &format!("token {name}")).await?;
            println!("token {name} revoked: it is refused from now on");
        }
        TokenCommand::Rotate(args) => {
            let (name, overlap_hours) = (&args.name, args.overlap_hours);
            let token = auth::rotate_token(&mut session, name, args.overlap_s()?).await?;
            cli_audit(&mut session, "token-rotate", &format!("token {name}: old value valid {overlap_hours} h more")).await?;
            show_secret(&format!("token {name} has a new value (the old one works for {overlap_hours} h more)"), &token);
        }
    }
    drop(session);
    database.close().await;
    Ok(())
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    common: Common,
    /// Machine-readable output (the same JSON as GET /ws/feedsync/status).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// Address to listen on, e.g. 0.0.0.0:8086 (default 127.0.0.1:8086).
    #[arg(long)]
    listen: Option<String>,
    /// Entries per feed page (default 500).
    #[arg(long)]
    page_size: Option<u32>,
    /// Path prefix before /ws/..., e.g. /openmrs.
    #[arg(long)]
    path_prefix: Option<String>,
    /// Scheme, host and port clients use to reach this server, for absolute feed links.
    #[arg(long)]
    public_url: Option<String>,
    /// PEM certificate (then its chain): serve https only. Reloaded when the file changes or
    /// on SIGHUP. Without it, plain http is served on a loopback address only (see --insecure-http).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

fn load_config(common: &Common) -> anyhow::Result<Config> {
    let mut config = match &common.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(db) = &common.db {
        config.database_url = db.clone();
    }
    Ok(config)
}

fn profile(config: &Config) -> anyhow::Result<Profile> {
    Ok(match &config.profile {
        Some(path) => Profile::load(path)?,
        None => Profile::openmrs(),
    })
}

async fn open(config: &Config) -> anyhow::Result<(Database, Model)> {
    config.validate()?;
    let database = Database::from_url(&config.database_url)?;
    let model = load_model(&database, &profile(config)?)
        .await
        .with_context(|| format!("reading the schema of {}", database.display_name()))?;
    if model.entities.is_empty() {
        bail!("{} has no publishable tables; is it an OpenMRS database? (`feed-publisher check` lists every table with its reason)", database.display_name());
    }
    Ok((database, model))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    cli.tls.install()?;
    match cli.command {
        Command::Install(common) => {
            let config = load_config(&common)?;
            let (database, model) = open(&config).await?;
            let mut session = database.session().await?;
            eprintln!("installing change capture on {} ({} tables)...", database.display_name(), model.entities.len());
            let report = capture::install(&mut session, &model).await.context("install failed; nothing half-done stays harmful: run install again after fixing the cause")?;
            println!(
                "installed: {} triggers created, {} replaced, {} unchanged; snapshot journaled {} rows from {} tables",
                report.triggers_created, report.triggers_replaced, report.triggers_unchanged, report.snapshot_rows, report.snapshot_tables
            );
            drop(session);
            database.close().await;
        }
        Command::Uninstall(common) => {
            let config = load_config(&common)?;
            config.validate()?;
            let database = Database::from_url(&config.database_url)?;
            let mut session = database.session().await?;
            let report = capture::uninstall(&mut session).await?;
            println!("uninstalled: {} triggers and {} tables removed (all named feedsync_*)", report.triggers_dropped, report.tables_dropped);
            drop(session);
            database.close().await;
        }
        Command::Check(common) => {
            let config = load_config(&common)?;
            let (database, model) = open(&config).await?;
            print_check(&model);
            let mut session = database.session().await?;
            if capture::list_tables(&mut session).await?.is_empty() {
                println!("\ncapture is not installed: run `feed-publisher install --db {}`", database.display_name());
            } else {
                let missing = capture::missing_triggers(&mut session, &model).await?;
                if missing.is_empty() {
                    println!("\ncapture is installed on every published table");
                } else {
                    println!("\ncapture is missing on {} tables ({}): run `feed-publisher install` again", missing.len(), missing.join(", "));
                }
            }
            drop(session);
            database.close().await;
        }
        Command::Serve(args) => {
            // A guessable admin token would open the dashboard to anyone who tries: refuse to start.
            if let Ok(token) = std::env::var(feed_publisher::dashboard::ADMIN_TOKEN_ENV)
                && !token.trim().is_empty()
                && let Some(problem) = feed_publisher::dashboard::admin_token_problem(&token)
            {
                anyhow::bail!("{problem}; set it to at least 32 random characters (e.g. `openssl rand -hex 16`), or unset it to serve the dashboard to this machine only");
            }
            let mut config = load_config(&args.common)?;
            if let Some(listen) = args.listen {
                config.server.listen = listen;
            }
            if let Some(size) = args.page_size {
                config.feed.page_size = size;
            }
            if let Some(prefix) = args.path_prefix {
                config.server.path_prefix = prefix;
            }
            if let Some(url) = args.public_url {
                config.server.public_url = url;
            }
            if args.tls_cert.is_some() {
                (config.server.tls_cert, config.server.tls_key) = (args.tls_cert, args.tls_key);
            }
            config.server.insecure_http |= cli.tls.insecure_http();
            let (database, model) = open(&config).await?;
            let mut session = database.session().await?;
            if !capture::list_tables(&mut session).await?.iter().any(|t| t == capture::EVENT_TABLE) {
                bail!("capture is not installed on {}: run `feed-publisher install --db ...` first", database.display_name());
            }
            let missing = capture::missing_triggers(&mut session, &model).await?;
            if !missing.is_empty() {
                tracing::warn!(tables = %missing.join(", "), "changes to these tables are not captured; run `feed-publisher install` again");
            }
            drop(session);
            server::serve_until_ctrl_c(database, model, config).await?;
        }
        Command::Child(command) => child_command(command).await?,
        Command::Token(command) => token_command(command).await?,
        Command::Conflicts(command) => feedsync_cli::conflicts(command).await?,
        Command::Usb(command) => usb_command(command).await?,
        Command::Tls(TlsCommand::Init { dir, names, days }) => {
            let written = feed_publisher::tls::init(&dir, &names, days)?;
            let ca = if written.new_ca { "a new CA" } else { "the CA already there" };
            println!("wrote {} and {} for {}, signed by {ca} ({})", written.server_cert.display(), written.server_key.display(), names.join(", "), written.ca_cert.display());
            println!("serve with:    feed-publisher serve --tls-cert {} --tls-key {} --listen 0.0.0.0:8443 ...", written.server_cert.display(), written.server_key.display());
            println!("children with: feed-subscriber run --ca {} --parent https://{}:8443 ...", written.ca_cert.display(), names[0]);
            println!("keep {} secret and off the network: whoever holds it can impersonate this server", written.ca_key.display());
        }
        Command::Status(args) => {
            let config = load_config(&args.common)?;
            config.validate()?;
            let database = Database::from_url(&config.database_url)?;
            let mut session = database.session().await?;
            if !capture::list_tables(&mut session).await?.iter().any(|t| t == capture::EVENT_TABLE) {
                bail!("capture is not installed on {}: run `feed-publisher install --db ...` first", database.display_name());
            }
            let status = feed_publisher::status::compute(&mut session, &config).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", feed_publisher::status::render_text(&status, &database.display_name()));
            }
            drop(session);
            database.close().await;
        }
    }
    Ok(())
}

fn read_usb_file(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {} (is the stick mounted? check the path)", path.display()))
}

async fn usb_command(command: UsbCommand) -> anyhow::Result<()> {
    use feed_publisher::usb;
    use feedsync_node::sequencer;
    match command {
        UsbCommand::Inspect { input } => {
            let bytes = read_usb_file(&input)?;
            let header = feedsync_wire::bundle::read_header(&bytes).with_context(|| format!("{}", input.display()))?;
            println!("{}", feedsync_node::usb::describe_header(&header));
        }
        UsbCommand::Import { common, input, reply_out } => {
            let bytes = read_usb_file(&input)?;
            let config = load_config(&common)?;
            let (database, model) = open(&config).await?;
            let mut session = database.session().await?;
            if !capture::list_tables(&mut session).await?.iter().any(|t| t == capture::EVENT_TABLE) {
                bail!("capture is not installed on {}: run `feed-publisher install --db ...` first", database.display_name());
            }
            // The reply carries the latest changes; afterwards the child's data gets event
            // numbers and flows on to the other children (the server does both when it runs).
            sequencer::drain(&mut session, &model, &config, 100_000).await?;
            let imported = usb::import(&mut session, &model, &config.network, &bytes).await.with_context(|| format!("{}", input.display()))?;
            sequencer::drain(&mut session, &model, &config, 100_000).await?;
            feedsync_node::usb::write_file_atomically(&reply_out, &imported.reply).with_context(|| {
                format!(
                    "the export was imported, but the reply could not be written to {} (stick full, read-only or removed?); import the same export again \
                     to write the reply: it applies nothing twice",
                    reply_out.display()
                )
            })?;
            println!("{}", imported.describe());
            println!("reply written to {}: import it at the child with `feed-subscriber usb import`", reply_out.display());
            drop(session);
            database.close().await;
        }
    }
    Ok(())
}

async fn child_command(command: ChildCommand) -> anyhow::Result<()> {
    use feedsync_node::parent as network;
    let common = match &command {
        ChildCommand::Add { common, .. } | ChildCommand::List(ListArgs { common, .. }) => common,
        ChildCommand::Revoke(NamedArgs { common, .. }) | ChildCommand::Rotate(RotateArgs { common, .. }) => common,
    };
    let config = load_config(common)?;
    config.validate()?;
    let database = Database::from_url(&config.database_url)?;
    let mut session = database.session().await?;
    match &command {
        ChildCommand::Add { name, categories, all_patients, locations, identifier_prefixes, address, .. } => {
            let rules = network::CatchmentRules {
                locations: locations.clone(),
                identifier_prefixes: identifier_prefixes.clone(),
                address: network::CatchmentRules::parse_address(address).map_err(|e| anyhow::anyhow!(e))?,
            };
            let token = network::add_child_with_rules(&mut session, name, categories, *all_patients, &rules).await?;
            cli_audit(&mut session, "child-add", &format!("child {name}: categories {}", if categories.is_empty() { "*".to_owned() } else { categories.join(",") })).await?;
            show_secret(&format!("child {name} registered"), &token);
        }
        ChildCommand::List(ListArgs { json, .. }) => {
            let children = network::list_children(&mut session).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&children)?);
            } else {
                for c in &children {
                    println!(
                        "{:<24} {} last contact {}; acknowledged through event {}; {} patients in catchment; {} changes held; may write {}",
                        c.name,
                        if c.revoked_at.is_some() { "REVOKED" } else { "active" },
                        c.last_contact.as_deref().unwrap_or("never"),
                        c.acked_seq,
                        c.catchment_patients,
                        c.held_items,
                        c.categories.join(",")
                    );
                }
                println!("{} children", children.len());
            }
        }
        ChildCommand::Revoke(NamedArgs { name, .. }) => {
            network::revoke_child(&mut session, name).await?;
            cli_audit(&mut session, "child-revoke", &format!("child {name}")).await?;
            println!("child {name} revoked: its token is refused from now on");
        }
        ChildCommand::Rotate(args) => {
            let (name, overlap_hours) = (&args.name, args.overlap_hours);
            let token = network::rotate_child_token(&mut session, name, args.overlap_s()?).await?;
            cli_audit(&mut session, "child-rotate", &format!("child {name}: new token, the old one valid {overlap_hours} h more")).await?;
            show_secret(&format!("child {name} has a new token (the old one works for {overlap_hours} h more)"), &token);
        }
    }
    drop(session);
    database.close().await;
    Ok(())
}

/// An audit row for an action taken from the command line (actor `feed-publisher`).
async fn cli_audit(session: &mut feedsync_db::Session, action: &str, detail: &str) -> anyhow::Result<()> {
    Ok(feedsync_node::exchange::audit(session, "feed-publisher", action, None, detail).await?)
}

/// Prints a token once: what it is on standard error, the token itself as the last line of
/// standard output (so scripts take `| tail -1`).
fn show_secret(what: &str, token: &str) {
    eprintln!("{what}; it is shown once, keep it secret:");
    println!("{token}");
}

fn print_check(model: &Model) {
    println!("published tables ({}):", model.entities.len());
    for table in &model.snapshot_order {
        let e = &model.entities[table];
        let undeclared = e.references.iter().filter(|r| !r.declared).count();
        println!(
            "  {table:<36} category {:<24} identity: {}; {} references ({undeclared} from the profile){}",
            e.category,
            capture::describe_identity(&e.identity),
            e.references.len(),
            if e.patient_path.is_empty() && !e.is_patient_root { "" } else { "; patient data" }
        );
    }
    println!("\nnot published ({}):", model.not_published.len());
    for (table, reason) in &model.not_published {
        println!("  {table:<36} {reason}");
    }
}

fn main() {
    let cli = Cli::parse();
    feedsync_cli::run_main(run(cli));
}
