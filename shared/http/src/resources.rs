//! Resources by their links, with as few requests as the publisher allows
//! ([`HttpClient::fetch_resources`]): the batch endpoint takes up to
//! [`crate::ClientLimits::batch_links_max`] links per request, and one GET per link is the fallback
//! for publishers without it. On a 2G link the difference between 1 request and 200 is the
//! difference between minutes and hours. Here rather than in the subscriber because it is the
//! client side of the publisher's resource routes, and needs the client's retry loop.

use hyper::{Method, StatusCode};
use url::Url;

use feedsync_wire::resource::{BATCH_PATH, BatchItem, BatchRequest, BatchResponse, RESOURCE_PATH, Resource, Tombstone};

use crate::client::{HttpClient, HttpResponse, encode_json, is_success};
use crate::error::{ClientError, body_excerpt, status_error, status_is_retryable};

/// What a resource link gave, in the order the links were given.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    Resource(Resource),
    /// The entity was deleted (410 Gone with a tombstone).
    Deleted(Tombstone),
    /// Neither: `reason` says why, `retryable` whether asking again later may help.
    Failed { link: String, reason: String, retryable: bool },
}

impl HttpClient {
    /// Fetches resources by their links: through the publisher's batch endpoint where the
    /// links allow (`<origin><prefix>/ws/feedsync/resource/...`), else one GET per link. One
    /// answer per link, in link order; a link that fails is [`Fetched::Failed`] and never
    /// stops the others.
    pub async fn fetch_resources(&self, links: &[String]) -> Vec<Fetched> {
        let mut answers: Vec<Option<Fetched>> = vec![None; links.len()];
        let mut endpoints_without_batch: Vec<String> = Vec::new();
        for group in plan_batches(links, self.limits().batch_links_max) {
            let chunk: Vec<&str> = group.indexes.iter().map(|&i| links[i].as_str()).collect();
            let batched = match &group.endpoint {
                Some(endpoint) if !endpoints_without_batch.contains(endpoint) => match self.fetch_batch(endpoint, &chunk).await {
                    BatchOutcome::Answered(fetched) => Some(fetched),
                    BatchOutcome::Unsupported => {
                        tracing::info!(%endpoint, "no batch fetch here; fetching one link at a time");
                        endpoints_without_batch.push(endpoint.clone());
                        None
                    }
                    BatchOutcome::OneByOne => None,
                },
                _ => None,
            };
            let fetched = match batched {
                Some(fetched) => fetched,
                None => {
                    let mut one_by_one = Vec::with_capacity(chunk.len());
                    for link in &chunk {
                        one_by_one.push(self.fetch_one(link).await);
                    }
                    one_by_one
                }
            };
            assert_eq!(fetched.len(), group.indexes.len(), "one answer per link");
            for (index, answer) in group.indexes.iter().zip(fetched) {
                answers[*index] = Some(answer);
            }
        }
        answers.into_iter().map(|answer| answer.expect("every link is in exactly one group")).collect()
    }

    async fn fetch_batch(&self, endpoint: &str, chunk: &[&str]) -> BatchOutcome {
        let request = BatchRequest { resources: chunk.iter().map(|link| link.to_string()).collect() };
        let body = match encode_json(endpoint, &request) {
            Ok(body) => body,
            Err(e) => return BatchOutcome::Answered(failed_all(chunk, &e.to_string(), false)),
        };
        // The batch POST only reads, so retrying it is as safe as retrying a GET.
        let accepted = |status: StatusCode| is_success(status) || matches!(status.as_u16(), 404 | 405 | 413);
        match self.send_with_retries(Method::POST, endpoint, Some(body), accepted).await {
            Ok(response) => match response.status.as_u16() {
                404 | 405 => BatchOutcome::Unsupported,
                // Over the publisher's request limits: each link on its own is still fine.
                413 => BatchOutcome::OneByOne,
                _ => BatchOutcome::Answered(batch_answers(endpoint, chunk, &response.body)),
            },
            // One resource too large for the whole answer: one by one, only it fails.
            Err(ClientError::TooLarge { .. }) => BatchOutcome::OneByOne,
            Err(e) => BatchOutcome::Answered(failed_all(chunk, &e.to_string(), e.is_retryable())),
        }
    }

    async fn fetch_one(&self, link: &str) -> Fetched {
        let accepted = |status: StatusCode| is_success(status) || matches!(status.as_u16(), 404 | 410);
        match self.send_with_retries(Method::GET, link, None, accepted).await {
            Ok(response) => single_answer(link, &response),
            Err(e) => Fetched::Failed { link: link.to_owned(), reason: e.to_string(), retryable: e.is_retryable() },
        }
    }
}

enum BatchOutcome {
    /// One answer per link of the chunk.
    Answered(Vec<Fetched>),
    /// The server has no batch endpoint: never ask it again.
    Unsupported,
    /// This chunk must go one link at a time.
    OneByOne,
}

/// The batch endpoint serving `link`: everything before `/ws/feedsync/resource/` (origin and
/// path prefix) plus the batch path. `None` for links that are not absolute feed-publisher
/// resource links; those are fetched on their own.
pub fn batch_endpoint(link: &str) -> Option<String> {
    let url = Url::parse(link).ok()?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return None;
    }
    let after_authority = link.find("://").map(|i| i + 3)?;
    let path_start = after_authority + link[after_authority..].find('/')?;
    let marker = format!("{RESOURCE_PATH}/");
    let at = path_start + link[path_start..].find(&marker)?;
    Some(format!("{}{BATCH_PATH}", &link[..at]))
}

/// Links of one request: the same batch endpoint (or none), at most `batch_links_max`.
#[derive(Debug, PartialEq)]
struct LinkGroup {
    endpoint: Option<String>,
    /// Positions in the caller's list, ascending.
    indexes: Vec<usize>,
}

/// Groups links by batch endpoint, in order of first appearance, chunked.
fn plan_batches(links: &[String], batch_links_max: usize) -> Vec<LinkGroup> {
    let batch_links_max = batch_links_max.max(1);
    let mut by_endpoint: Vec<(Option<String>, Vec<usize>)> = Vec::new();
    for (index, link) in links.iter().enumerate() {
        let endpoint = batch_endpoint(link);
        match by_endpoint.iter_mut().find(|(e, _)| *e == endpoint) {
            Some((_, indexes)) => indexes.push(index),
            None => by_endpoint.push((endpoint, vec![index])),
        }
    }
    let mut groups = Vec::new();
    for (endpoint, indexes) in by_endpoint {
        for chunk in indexes.chunks(batch_links_max) {
            groups.push(LinkGroup { endpoint: endpoint.clone(), indexes: chunk.to_vec() });
        }
    }
    groups
}

fn failed_all(chunk: &[&str], reason: &str, retryable: bool) -> Vec<Fetched> {
    chunk.iter().map(|link| Fetched::Failed { link: link.to_string(), reason: reason.to_owned(), retryable }).collect()
}

/// One answer per link from a batch answer body; answers are matched by position and must
/// name the link asked for.
fn batch_answers(endpoint: &str, chunk: &[&str], body: &[u8]) -> Vec<Fetched> {
    let response: BatchResponse = match serde_json::from_slice(body) {
        Ok(response) => response,
        Err(e) => {
            let reason = format!("the batch answer from {endpoint} is not a batch response ({e}): {}", body_excerpt(body));
            return failed_all(chunk, &reason, false);
        }
    };
    if response.resources.len() != chunk.len() {
        let reason = format!("the batch answer from {endpoint} has {} items for {} links", response.resources.len(), chunk.len());
        return failed_all(chunk, &reason, false);
    }
    chunk
        .iter()
        .zip(response.resources)
        .map(|(link, item)| {
            if item.link != *link {
                let reason = format!("the batch answer from {endpoint} names {:?} where {link:?} was asked for", item.link);
                return Fetched::Failed { link: link.to_string(), reason, retryable: false };
            }
            batch_item(item)
        })
        .collect()
}

fn batch_item(item: BatchItem) -> Fetched {
    match (item.status, item.resource, item.tombstone) {
        (200, Some(resource), _) => Fetched::Resource(resource),
        (410, _, Some(tombstone)) => Fetched::Deleted(tombstone),
        (status, _, _) => {
            let said = item.error.unwrap_or_else(|| "no resource or tombstone given".into());
            Fetched::Failed { link: item.link, reason: format!("status {status}: {said}"), retryable: status_is_retryable(status) }
        }
    }
}

/// The answer to a GET of one resource link (200, 404 or 410: others were errors already).
fn single_answer(link: &str, response: &HttpResponse) -> Fetched {
    let failed = |reason: String, retryable| Fetched::Failed { link: link.to_owned(), reason, retryable };
    match response.status.as_u16() {
        200..=299 => match serde_json::from_slice::<Resource>(&response.body) {
            Ok(resource) => Fetched::Resource(resource),
            Err(e) => failed(format!("{} answered 200 but not with a resource ({e}): {}", response.url, body_excerpt(&response.body)), false),
        },
        410 => match serde_json::from_slice::<Tombstone>(&response.body) {
            Ok(tombstone) => Fetched::Deleted(tombstone),
            Err(e) => failed(format!("{} answered 410 Gone but not with a tombstone ({e}): {}", response.url, body_excerpt(&response.body)), false),
        },
        _ => {
            let error = status_error(response);
            failed(error.to_string(), error.is_retryable())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::tests::response;

    #[test]
    fn batch_endpoint_keeps_origin_and_prefix() {
        assert_eq!(
            batch_endpoint("http://h:8086/openmrs/ws/feedsync/resource/obs/o1").as_deref(),
            Some("http://h:8086/openmrs/ws/feedsync/resources")
        );
        assert_eq!(batch_endpoint("http://h/ws/feedsync/resource/patient/a%2Bb").as_deref(), Some("http://h/ws/feedsync/resources"));
        assert_eq!(batch_endpoint("/ws/feedsync/resource/obs/o1"), None, "relative: no origin");
        assert_eq!(batch_endpoint("http://h/openmrs/ws/rest/v1/patient/x?v=full"), None);
        assert_eq!(batch_endpoint("http://h/ws/feedsync/resources"), None, "the batch path itself is no resource");
        assert_eq!(batch_endpoint("not a url"), None);
    }

    #[test]
    fn batches_group_by_endpoint_keep_order_and_respect_the_chunk_size() {
        let links: Vec<String> = [
            "http://a/ws/feedsync/resource/t/1",
            "http://b/p/ws/feedsync/resource/t/2",
            "http://a/ws/feedsync/resource/t/3",
            "http://a/ws/rest/v1/patient/4",
            "http://a/ws/feedsync/resource/t/5",
            "http://a/ws/feedsync/resource/t/6",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let groups = plan_batches(&links, 2);
        let summary: Vec<(Option<&str>, Vec<usize>)> = groups.iter().map(|g| (g.endpoint.as_deref(), g.indexes.clone())).collect();
        assert_eq!(
            summary,
            vec![
                (Some("http://a/ws/feedsync/resources"), vec![0, 2]),
                (Some("http://a/ws/feedsync/resources"), vec![4, 5]),
                (Some("http://b/p/ws/feedsync/resources"), vec![1]),
                (None, vec![3]),
            ]
        );
        let mut all: Vec<usize> = groups.iter().flat_map(|g| g.indexes.clone()).collect();
        all.sort();
        assert_eq!(all, (0..links.len()).collect::<Vec<_>>(), "every link exactly once");
        assert!(plan_batches(&[], 200).is_empty());
    }

    fn item(link: &str, status: u16) -> BatchItem {
        BatchItem { link: link.into(), status, resource: None, tombstone: None, error: Some("no such row".into()) }
    }

    #[test]
    fn batch_answers_are_matched_to_links() {
        let resource = Resource { table: "obs".into(), category: "observation".into(), key: "o1".into(), columns: Default::default(), hash: "sha256:x".into() };
        let tombstone = Tombstone { table: "obs".into(), category: "observation".into(), key: "o2".into(), deleted: true, deleted_at: "t".into() };
        let items = vec![
            BatchItem { link: "l1".into(), status: 200, resource: Some(resource.clone()), tombstone: None, error: None },
            BatchItem { link: "l2".into(), status: 410, resource: None, tombstone: Some(tombstone.clone()), error: None },
            item("l3", 404),
            item("other", 200),
        ];
        let body = serde_json::to_vec(&BatchResponse { resources: items }).unwrap();
        let answers = batch_answers("http://h/b", &["l1", "l2", "l3", "l4"], &body);
        assert_eq!(answers[0], Fetched::Resource(resource));
        assert_eq!(answers[1], Fetched::Deleted(tombstone));
        assert!(matches!(&answers[2], Fetched::Failed { link, reason, retryable: false } if link == "l3" && reason.contains("404") && reason.contains("no such row")));
        assert!(matches!(&answers[3], Fetched::Failed { link, reason, .. } if link == "l4" && reason.contains("\"other\"")));

        let short = batch_answers("http://h/b", &["l1", "l2"], &serde_json::to_vec(&BatchResponse { resources: vec![item("l1", 404)] }).unwrap());
        assert!(short.iter().all(|f| matches!(f, Fetched::Failed { reason, .. } if reason.contains("1 items for 2 links"))));
        let garbage = batch_answers("http://h/b", &["l1"], b"<html>oops</html>");
        assert!(matches!(&garbage[0], Fetched::Failed { reason, retryable: false, .. } if reason.contains("not a batch response") && reason.contains("oops")));
    }

    #[test]
    fn single_answers_say_exactly_what_went_wrong() {
        assert!(matches!(single_answer("l", &response(200, "{garbage")), Fetched::Failed { reason, retryable: false, .. } if reason.contains("not with a resource")));
        assert!(matches!(single_answer("l", &response(410, "{}")), Fetched::Failed { reason, .. } if reason.contains("not with a tombstone")));
        let missing = single_answer("l", &response(404, r#"{"error":"no obs with identity \"x\" here","hint":"h","status":404}"#));
        assert!(matches!(&missing, Fetched::Failed { reason, retryable: false, .. } if reason.contains("404") && reason.contains("no obs with identity")), "{missing:?}");
    }
}
