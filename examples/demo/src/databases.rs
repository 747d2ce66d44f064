//! The demo's OpenMRS databases: SQLite files from the schema built into the binary (nothing
//! to install), or MariaDB databases loaded from the real OpenMRS 2.5 dump.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use feedsync_db::{Database, redact};

/// The OpenMRS 2.5 schema and core metadata for SQLite, generated from the real dump.
const SQLITE_OPENMRS_SCHEMA: &str = include_str!("../../../shared/sim/schema/openmrs-2.5.sqlite.sql");
/// The dump's file name in `../shared/openmrs` (see FIELD.md).
pub const DUMP_FILE_NAME: &str = "openmrs-2.5-fhir2.sql";
/// Every MariaDB database the demo creates (and replaces on the next run) starts with this.
pub const MARIADB_DATABASE_PREFIX: &str = "feedsync_demo_";

/// Where the demo's databases live.
pub enum Backend {
    /// One file per node in the demo's folder.
    Sqlite { dir: PathBuf },
    /// One database per node on this server (`mysql://user:password@host:3306`), loaded from
    /// `dump`.
    MariaDb { server: String, dump: PathBuf },
}

impl Backend {
    /// Checks the options before anything is created: the server URL names no database, the
    /// dump exists (found beside the repository unless given), the server answers.
    pub async fn mariadb(server: &str, dump: Option<&Path>) -> anyhow::Result<Backend> {
        let server = server.trim_end_matches('/').to_owned();
        let parsed = url::Url::parse(&server.replacen("mariadb://", "mysql://", 1)).with_context(|| format!("--mysql {}: not a URL", redact(&server)))?;
        if parsed.scheme() != "mysql" {
            bail!("--mysql {}: expected mysql://user:password@host:3306 (or mariadb://...)", redact(&server));
        }
        if !parsed.path().trim_matches('/').is_empty() {
            bail!(
                "--mysql {}: give the server only, without a database (mysql://user:password@host:3306); the demo creates its own databases named {MARIADB_DATABASE_PREFIX}*",
                redact(&server)
            );
        }
        let dump = match dump {
            Some(path) if path.is_file() => path.to_owned(),
            Some(path) => bail!("--dump {}: no such file", path.display()),
            None => find_dump().ok_or_else(|| {
                anyhow::anyhow!(
                    "the OpenMRS 2.5 dump ({DUMP_FILE_NAME}) was not found in ../shared/openmrs beside the repository, nor in FEEDSYNC_OPENMRS_DUMPS: \
                     pass --dump PATH (a mysqldump of an OpenMRS 2.x database with its core metadata)"
                )
            })?,
        };
        let backend = Backend::MariaDb { server, dump };
        let admin = backend.admin()?;
        let reachable = admin.session().await;
        admin.close().await;
        if let Err(e) = reachable {
            bail!(
                "MariaDB at {} is not reachable ({e}). Start it, check --mysql (mysql://user:password@host:3306), or leave out --mysql to run on SQLite \
                 with nothing to install",
                backend.describe()
            );
        }
        Ok(backend)
    }

    /// A connection to the server without a database of the demo's (to create them).
    fn admin(&self) -> anyhow::Result<Database> {
        let Backend::MariaDb { server, .. } = self else { unreachable!("only MariaDB has a server") };
        Ok(Database::from_url(&format!("{server}/information_schema"))?)
    }

    pub fn describe(&self) -> String {
        match self {
            Backend::Sqlite { dir } => format!("SQLite files in {}", dir.display()),
            Backend::MariaDb { server, .. } => redact(server),
        }
    }

    /// The database's own client on `node`'s database, ready for a quoted SQL statement.
    pub fn client_command(&self, node: &str) -> String {
        match self {
            Backend::Sqlite { .. } => format!("sqlite3 {}", self.location(node)),
            Backend::MariaDb { server, .. } => {
                let mut command = "mariadb".to_owned();
                if let Ok(url) = url::Url::parse(&server.replacen("mariadb://", "mysql://", 1)) {
                    command += &format!(" -h {} -P {}", url.host_str().unwrap_or("127.0.0.1"), url.port().unwrap_or(3306));
                    if !url.username().is_empty() {
                        command += &format!(" -u {}", url.username());
                    }
                    if url.password().is_some() {
                        command += " -p";
                    }
                }
                format!("{command} {} -e", mariadb_name(node))
            }
        }
    }

    /// The SQLite file of `node`, or its MariaDB database name.
    pub fn location(&self, node: &str) -> String {
        match self {
            Backend::Sqlite { dir } => dir.join(format!("{node}.sqlite")).display().to_string(),
            Backend::MariaDb { .. } => mariadb_name(node),
        }
    }

    pub fn url(&self, node: &str) -> String {
        match self {
            Backend::Sqlite { .. } => format!("sqlite://{}", self.location(node)),
            Backend::MariaDb { server, .. } => format!("{server}/{}", mariadb_name(node)),
        }
    }

    /// Refuses to start over an earlier demo's SQLite files (MariaDB databases are the demo's
    /// own by name and are replaced).
    pub fn check_fresh(&self, nodes: &[&str]) -> anyhow::Result<()> {
        if let Backend::Sqlite { dir } = self {
            for node in nodes {
                let path = PathBuf::from(self.location(node));
                if path.exists() {
                    bail!(
                        "{} already holds a demo network ({} exists): pass another --dir, or delete that folder (without --dir each run gets a new one)",
                        dir.display(),
                        path.display()
                    );
                }
            }
        }
        Ok(())
    }

    /// Creates the OpenMRS database of `node` and returns it, ready for capture.
    pub async fn create(&self, node: &str) -> anyhow::Result<Database> {
        match self {
            Backend::Sqlite { .. } => {
                let database = Database::from_url(&self.url(node))?;
                let mut session = database.session().await.with_context(|| format!("creating {}", self.location(node)))?;
                session.execute_script(SQLITE_OPENMRS_SCHEMA).await.with_context(|| format!("loading the OpenMRS 2.5 schema into {}", self.location(node)))?;
                Ok(database)
            }
            Backend::MariaDb { dump, .. } => {
                let name = mariadb_name(node);
                let text = std::fs::read_to_string(dump).with_context(|| format!("reading the dump {}", dump.display()))?;
                let admin = self.admin()?;
                let mut session = admin.session().await?;
                session.execute_script(&format!("DROP DATABASE IF EXISTS `{name}`")).await?;
                session
                    .execute_script(&format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
                    .await
                    .with_context(|| format!("creating database {name} (the --mysql user needs CREATE and DROP on {MARIADB_DATABASE_PREFIX}*)"))?;
                drop(session);
                admin.close().await;
                // The dump changes its connection's character set and SQL mode as it goes: load
                // it through a pool of its own, closed afterwards, so no later statement runs
                // on that connection.
                let loader = Database::from_url(&self.url(node))?;
                let mut session = loader.session().await?;
                session.execute_script(&text).await.with_context(|| format!("loading {} into {name}", dump.display()))?;
                drop(session);
                loader.close().await;
                Ok(Database::from_url(&self.url(node))?)
            }
        }
    }
}

/// `feedsync_demo_<node>`, with `-` made `_` so the name needs no quoting in a shell.
pub fn mariadb_name(node: &str) -> String {
    format!("{MARIADB_DATABASE_PREFIX}{}", node.replace('-', "_"))
}

/// The 2.5 dump: in `FEEDSYNC_OPENMRS_DUMPS`, beside the repository this binary was built
/// from, or beside the current folder's repository.
fn find_dump() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("FEEDSYNC_OPENMRS_DUMPS") {
        candidates.push(PathBuf::from(dir).join(DUMP_FILE_NAME));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/openmrs").join(DUMP_FILE_NAME));
    candidates.push(PathBuf::from("../shared/openmrs").join(DUMP_FILE_NAME));
    candidates.into_iter().find(|p| p.is_file())
}
