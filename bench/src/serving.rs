//! Measurements 3 and 4: feed pages and batch fetch served over HTTP by the publisher running
//! in this process (`App::new` and `server::serve` on 127.0.0.1:0), driven by the bench's own
//! keep-alive client. The database is fresh: dump, capture, the seeded workload, everything
//! published. Client and server share this machine's cores, so the figures include the
//! client's (small) cost; that is the same for every case compared.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use feedsync_node::sequencer::ALL_FEED;
use feedsync_wire::resource::BATCH_PATH;

use crate::client::{self, Connection, LoadResult};
use crate::server::Server;
use crate::stats::Summary;

/// Links per batch-fetch request, as a subscriber would send them.
pub const BATCH_LINKS: usize = 200;
/// Longest one load run may take; a run that hits it reports what it did and says so.
const LOAD_RUN_DEADLINE_MS: u64 = 20_000;
/// Most feed pages read while collecting resource links.
const FEED_PAGES_MAX: i64 = 1_000;

/// One feed-page case: a page and whether the client accepts gzip.
#[derive(Debug, Clone)]
pub struct PageCase {
    pub page: &'static str,
    pub path: String,
    pub gzip: bool,
    pub entries: usize,
    /// Body size uncompressed, from the check before timing.
    pub body_bytes_identity: usize,
}

impl PageCase {
    pub fn label(&self) -> String {
        format!(
            "{} {}",
            self.page,
            if self.gzip { "gzip" } else { "identity" }
        )
    }
}

#[derive(Debug)]
pub struct PageResult {
    pub case: PageCase,
    pub requests_per_second: Summary,
    /// Head and body of one answer, as sent.
    pub response_bytes: Summary,
    pub runs: Vec<LoadResult>,
}

/// The open page of the `all` feed and the number of the newest archived page.
pub async fn feed_pages(server: &Server) -> anyhow::Result<(i64, i64)> {
    let recent = server
        .get(&format!("/ws/atomfeed/{ALL_FEED}/recent"), false)
        .await?;
    let text = String::from_utf8_lossy(&recent.body);
    let open = link_target(&text, "via")
        .and_then(|url| url.rsplit('/').next()?.parse::<i64>().ok())
        .context("/recent has no via link")?;
    ensure!(
        open >= 2,
        "the all feed has only one page, so nothing is archived yet; run with more --patients"
    );
    Ok((open, open - 1))
}

fn link_target(xml: &str, rel: &str) -> Option<String> {
    let at = xml.find(&format!("rel=\"{rel}\""))?;
    let rest = &xml[at..];
    let href = rest.find("href=\"")? + 6;
    let end = rest[href..].find('"')?;
    Some(rest[href..href + end].to_owned())
}

/// Requests per second for the newest archived page and for /recent of the `all` feed, each
/// with and without gzip. Cases rotate within each round so drift spreads over all of them.
pub async fn pages(
    server: &Server,
    connections: usize,
    requests_per_connection: usize,
    repeats: usize,
) -> anyhow::Result<Vec<PageResult>> {
    let (_, archived) = feed_pages(server).await?;
    let mut cases = Vec::new();
    for (page, path) in [
        ("archived", format!("/ws/atomfeed/{ALL_FEED}/{archived}")),
        ("recent", format!("/ws/atomfeed/{ALL_FEED}/recent")),
    ] {
        let identity = server.get(&path, false).await?;
        let compressed = server.get(&path, true).await?;
        ensure!(
            compressed.gzip,
            "{path} was not gzip-encoded although the client accepts gzip"
        );
        ensure!(
            compressed.decoded_body()? == identity.body,
            "{path}: the gzip body does not decode to the identity body"
        );
        let entries = String::from_utf8_lossy(&identity.body)
            .matches("<entry>")
            .count();
        for gzip in [false, true] {
            cases.push(PageCase {
                page,
                path: path.clone(),
                gzip,
                entries,
                body_bytes_identity: identity.body.len(),
            });
        }
    }
    let total = connections * requests_per_connection;
    let mut runs: Vec<Vec<LoadResult>> = vec![Vec::new(); cases.len()];
    for round in 0..repeats {
        for k in 0..cases.len() {
            let i = (k + round) % cases.len();
            let case = &cases[i];
            let request = Arc::new(vec![client::request(
                "GET",
                &case.path,
                server.addr,
                case.gzip,
                None,
            )]);
            let result = client::drive(
                server.addr,
                connections,
                request,
                total,
                Duration::from_millis(LOAD_RUN_DEADLINE_MS),
            )
            .await?;
            ensure!(
                result.not_ok == 0,
                "{}: {} answers were not 200",
                case.label(),
                result.not_ok
            );
            ensure!(
                case.gzip == (result.gzip_responses == result.requests),
                "{}: gzip answers {} of {}",
                case.label(),
                result.gzip_responses,
                result.requests
            );
            runs[i].push(result);
        }
        eprintln!("  pages round {}/{repeats} done", round + 1);
    }
    Ok(cases
        .into_iter()
        .zip(runs)
        .map(|(case, runs)| PageResult {
            requests_per_second: Summary::of(
                &runs
                    .iter()
                    .map(LoadResult::requests_per_second)
                    .collect::<Vec<_>>(),
            ),
            response_bytes: Summary::of(
                &runs
                    .iter()
                    .map(LoadResult::response_bytes_per_request)
                    .collect::<Vec<_>>(),
            ),
            case,
            runs,
        })
        .collect())
}

/// Every distinct resource link on the `all` feed, oldest first, read page by page as a
/// subscriber would.
pub async fn resource_links(server: &Server) -> anyhow::Result<Vec<String>> {
    let (open, _) = feed_pages(server).await?;
    ensure!(
        open <= FEED_PAGES_MAX,
        "the all feed has {open} pages; the bench reads at most {FEED_PAGES_MAX}"
    );
    let mut seen = BTreeSet::new();
    let mut links = Vec::new();
    for page in 1..=open {
        let body = server
            .get(&format!("/ws/atomfeed/{ALL_FEED}/{page}"), false)
            .await?
            .body;
        let text = String::from_utf8(body).context("feed page is not UTF-8")?;
        // Entry content is one CDATA section holding the entry's JSON links (see atom.rs).
        for piece in text.split("<![CDATA[").skip(1) {
            let json = piece.split("]]>").next().unwrap_or_default();
            let content: serde_json::Value = serde_json::from_str(json)
                .with_context(|| format!("entry content is not JSON: {json}"))?;
            let Some(link) = content["resource"].as_str() else {
                bail!("entry content has no resource link: {json}")
            };
            if seen.insert(link.to_owned()) {
                links.push(link.to_owned());
            }
        }
    }
    Ok(links)
}

/// One batch-fetch case: connections and encoding.
#[derive(Debug, Clone, Copy)]
pub struct BatchCase {
    pub connections: usize,
    pub gzip: bool,
}

impl BatchCase {
    pub fn label(&self) -> String {
        format!(
            "{} conn {}",
            self.connections,
            if self.gzip { "gzip" } else { "identity" }
        )
    }
}

#[derive(Debug)]
pub struct BatchResult {
    pub case: BatchCase,
    pub resources: usize,
    pub requests: usize,
    pub resources_per_second: Summary,
    /// Request and answer bytes (heads and bodies) per resource.
    pub request_bytes_per_resource: Summary,
    pub response_bytes_per_resource: Summary,
}

/// Item statuses of one untimed pass over every batch (200 found, 410 deleted, ...).
#[derive(Debug, Default)]
pub struct BatchCheck {
    pub statuses: std::collections::BTreeMap<u16, usize>,
}

/// Fetches every link in batches of [`BATCH_LINKS`]: once untimed to check the answers (and
/// warm the buffer pool), then timed for each case, rotating cases within each round.
pub async fn batches(
    server: &Server,
    links: &[String],
    connections: usize,
    repeats: usize,
) -> anyhow::Result<(BatchCheck, Vec<BatchResult>)> {
    let bodies: Vec<Vec<u8>> = links
        .chunks(BATCH_LINKS)
        .map(|chunk| {
            serde_json::to_vec(&serde_json::json!({ "resources": chunk })).expect("links serialize")
        })
        .collect();
    let mut check = BatchCheck::default();
    let mut connection = Connection::connect(server.addr).await?;
    for body in &bodies {
        let response = connection
            .send(&client::request(
                "POST",
                BATCH_PATH,
                server.addr,
                true,
                Some(body),
            ))
            .await?;
        ensure!(
            response.status == 200,
            "batch fetch answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
        let answer: serde_json::Value = serde_json::from_slice(&response.decoded_body()?)?;
        for item in answer["resources"]
            .as_array()
            .context("batch answer has no resources array")?
        {
            *check
                .statuses
                .entry(item["status"].as_u64().unwrap_or(0) as u16)
                .or_default() += 1;
        }
    }
    ensure!(
        check.statuses.values().sum::<usize>() == links.len(),
        "batch answers hold {:?} items for {} links",
        check.statuses,
        links.len()
    );

    let cases = [
        BatchCase {
            connections: 1,
            gzip: true,
        },
        BatchCase {
            connections,
            gzip: true,
        },
        BatchCase {
            connections: 1,
            gzip: false,
        },
    ];
    let mut runs: Vec<Vec<LoadResult>> = vec![Vec::new(); cases.len()];
    for round in 0..repeats {
        for k in 0..cases.len() {
            let i = (k + round) % cases.len();
            let case = cases[i];
            let requests: Vec<Vec<u8>> = bodies
                .iter()
                .map(|b| client::request("POST", BATCH_PATH, server.addr, case.gzip, Some(b)))
                .collect();
            let total = requests.len();
            let result = client::drive(
                server.addr,
                case.connections,
                Arc::new(requests),
                total,
                Duration::from_millis(LOAD_RUN_DEADLINE_MS),
            )
            .await?;
            ensure!(
                result.not_ok == 0,
                "batch {}: {} answers were not 200",
                case.label(),
                result.not_ok
            );
            ensure!(
                !result.deadline_hit,
                "batch {}: the pass over {} links did not finish within {LOAD_RUN_DEADLINE_MS} ms",
                case.label(),
                links.len()
            );
            runs[i].push(result);
        }
        eprintln!("  batch round {}/{repeats} done", round + 1);
    }
    let resources = links.len() as f64;
    let results = cases
        .into_iter()
        .zip(runs)
        .map(|(case, runs)| BatchResult {
            case,
            resources: links.len(),
            requests: bodies.len(),
            resources_per_second: Summary::of(
                &runs
                    .iter()
                    .map(|r| resources / r.seconds)
                    .collect::<Vec<_>>(),
            ),
            request_bytes_per_resource: Summary::of(
                &runs
                    .iter()
                    .map(|r| r.request_bytes as f64 / resources)
                    .collect::<Vec<_>>(),
            ),
            response_bytes_per_resource: Summary::of(
                &runs
                    .iter()
                    .map(|r| r.response_bytes as f64 / resources)
                    .collect::<Vec<_>>(),
            ),
        })
        .collect();
    Ok((check, results))
}
