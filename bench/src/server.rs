//! The publisher running in this process: `App::new` and `server::serve` on a loopback port,
//! as `feed-publisher serve` runs them, so the benches measure the real server code over real
//! HTTP without a second process.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::ensure;
use feedsync_node::config::Config;
use feed_publisher::server::{self, App};
use feedsync_db::Database;
use feedsync_core::model::Model;

use crate::client::{self, Connection};

/// The publisher serving a database on a loopback port until dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Server {
    pub async fn start(
        database: &Database,
        model: Model,
        config: Config,
    ) -> anyhow::Result<Server> {
        let app = Arc::new(App::new(database.clone(), model, config).await?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(server::serve(app.clone(), listener, stopped));
        Ok(Server { addr, app, stop })
    }

    /// One GET on a fresh connection, for setup and checks (not timed).
    pub async fn get(&self, path: &str, gzip: bool) -> anyhow::Result<client::Response> {
        let response = Connection::connect(self.addr)
            .await?
            .send(&client::request("GET", path, self.addr, gzip, None))
            .await?;
        ensure!(
            response.status == 200,
            "GET {path} answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
        Ok(response)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

