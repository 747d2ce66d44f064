//! The parent's network routes: `/ws/feedsync/network/...`. Every route needs a child's token
//! (`Authorization: Bearer <name>.<secret>`); anything else gets 401 and nothing more. What the
//! routes do is `feedsync_node::parent`; this module reads requests and writes replies, and
//! turns a [`ParentError`] into a status code.

use std::collections::BTreeMap;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use feedsync_db::Session;
use feedsync_node::exchange;
use feedsync_node::parent::{self, Child, ParentError};
use feedsync_node::{search, sequencer};
use feedsync_wire::network::{ChildReport, Hello, ITEMS_PER_MESSAGE_MAX, PUSH_BODY_BYTES_MAX, PushRequest};

use crate::server::{App, HttpError, Reply, read_body};

/// Sequencer batches a patient fetch runs first, so rows pushed just before it are in the record.
const FETCH_SEQUENCER_BATCHES_MAX: usize = 8;

impl From<ParentError> for HttpError {
    fn from(e: ParentError) -> Self {
        let status = match &e {
            ParentError::PushTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ParentError::UnknownTable { .. } | ParentError::WrongResource { .. } => StatusCode::BAD_REQUEST,
            ParentError::CategoryNotAllowed { .. } => StatusCode::FORBIDDEN,
            ParentError::NoSuchPatient { .. } => StatusCode::NOT_FOUND,
            ParentError::SearchTooBroad { .. } | ParentError::FetchReasonMissing => StatusCode::BAD_REQUEST,
            ParentError::FetchRateExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ParentError::Apply(_) => StatusCode::SERVICE_UNAVAILABLE,
            ParentError::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        match e {
            ParentError::Database(db) => HttpError::from(db),
            e => HttpError::new(status, e.to_string(), e.hint()),
        }
    }
}

// ---- HTTP ----

fn unauthorized(message: &str) -> HttpError {
    HttpError::new(StatusCode::UNAUTHORIZED, message.to_owned(), "send Authorization: Bearer <token> with the token `feed-publisher child add` printed")
}

/// The child a request's token belongs to, or 401.
async fn authenticate(session: &mut Session, request: &Request<Incoming>) -> Result<Child, HttpError> {
    let token = crate::dashboard::bearer_token(request.headers()).ok_or_else(|| unauthorized("this endpoint needs a child's token"))?;
    parent::child_for_token(session, token).await?.ok_or_else(|| unauthorized("token not accepted"))
}

/// Largest body a patient fetch accepts (`{"reason": ...}`).
const FETCH_BODY_BYTES_MAX: usize = 4 << 10;

pub(crate) async fn route(app: &App, request: Request<Incoming>, rest: &str) -> Result<Reply, HttpError> {
    // The network tables were made when the server started (`App::new`), not per request:
    // a child polls every few seconds.
    let mut session = app.database.session().await?;
    let child = authenticate(&mut session, &request).await?;
    let query: BTreeMap<String, String> = request
        .uri()
        .query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let method = request.method().clone();
    let json = |value: &dyn erased::Json| Ok(Reply::json(StatusCode::OK, value.to_json(), false));
    match (method, rest) {
        (Method::GET, "/hello") => {
            let last_seq = parent::last_seq(&mut session).await?;
            let commands = parent::pending_commands(&mut session, &child.name).await?;
            json(&Hello { child: child.name.clone(), categories: child.categories.clone(), policy: app.config.network.clone(), last_seq, commands })
        }
        (Method::GET, "/changes") => {
            let after = number(&query, "after", 0)?;
            let limit = number(&query, "limit", ITEMS_PER_MESSAGE_MAX as i64)?.clamp(1, ITEMS_PER_MESSAGE_MAX as i64) as usize;
            let mut page = parent::changes(&mut session, &app.model, &child, after, limit).await?;
            // Users are metadata every child receives; their credentials only over TLS or to
            // this machine, never across a link in clear (`--insecure-http`).
            let peer = request.extensions().get::<crate::server::PeerAddr>().map(|p| p.0);
            if !crate::server::credentials_may_travel(true, crate::server::arrived_over_tls(&request), peer) {
                for item in &mut page.items {
                    item.resource = item.resource.take().map(|r| feedsync_node::lookup::without_credentials(&app.model, r));
                }
            }
            json(&page)
        }
        (Method::POST, "/push") => {
            // No database connection is held while a (slow) child sends its body.
            drop(session);
            let (body, _slot) = read_body(app, request, PUSH_BODY_BYTES_MAX, "send fewer items per push").await?;
            let mut session = app.database.session().await?;
            let push: PushRequest = serde_json::from_slice(&body).map_err(|e| {
                HttpError::new(StatusCode::BAD_REQUEST, format!("push body is not a valid push: {e}"), "send {\"through_seq\": N, \"items\": [...]} as feed-subscriber does")
            })?;
            json(&parent::push_items(&mut session, &app.model, &app.config.network, &child, push).await?)
        }
        (Method::POST, "/report") => {
            drop(session);
            let (body, _slot) = read_body(app, request, PUSH_BODY_BYTES_MAX, "send fewer items per push").await?;
            let mut session = app.database.session().await?;
            let report: ChildReport = serde_json::from_slice(&body)
                .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, format!("report body is not a valid child report: {e}"), "send the report feed-subscriber builds"))?;
            parent::store_report(&mut session, &child.name, &report).await?;
            json(&serde_json::json!({ "stored": true }))
        }
        (Method::GET, "/patients") => {
            let text = query.get("q").map(String::as_str).unwrap_or_default();
            let parsed = search::parse_query(text).map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, e, "search by identifier, or by name with birth date (YYYY-MM-DD) and gender"))?;
            parent::check_child_search(&parsed)?;
            let limit = number(&query, "limit", 10)?.clamp(1, 50) as usize;
            let found = search::find_patients(&mut session, &parsed, limit).await?;
            let shown: Vec<&str> = found.iter().map(|c| c.uuid.as_str()).collect();
            exchange::audit(&mut session, &child.name, "patient-find", None, &format!("query {text:?}: {} candidates shown: {}", found.len(), shown.join(", "))).await?;
            json(&search::PatientsFound { candidates: found })
        }
        (Method::POST, path) if path.starts_with("/patients/") && path.ends_with("/fetch") => {
            let uuid = path.strip_prefix("/patients/").and_then(|rest| rest.strip_suffix("/fetch")).unwrap_or_default();
            if uuid.is_empty() || uuid.contains('/') {
                return Err(HttpError::new(StatusCode::BAD_REQUEST, format!("{path}: no patient uuid"), "POST patients/{uuid}/fetch with a uuid a patient search returned"));
            }
            // The body says why (`{"reason": "..."}`); reading it takes the request's slot.
            drop(session);
            let (body, _slot) = read_body(app, request, FETCH_BODY_BYTES_MAX, "send {\"reason\": \"...\"} and nothing else").await?;
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let reason = parent::fetch_reason(body.get("reason").and_then(|r| r.as_str()))?.to_owned();
            let mut session = app.database.session().await?;
            parent::check_fetch_rate(&mut session, &child.name, app.config.limits.patient_fetches_per_child_per_hour_max).await?;
            // A patient found by search may have rows a child pushed that the sequencer has not
            // published yet; the record is read from the events, so publish them first (under the
            // sequencer's lock, like its own loop) or the fetch would miss them.
            sequencer::drain(&mut session, &app.model, &app.config, FETCH_SEQUENCER_BATCHES_MAX).await?;
            json(&parent::fetch_patient(&mut session, &app.model, &child, uuid, &reason).await?)
        }
        (_, path) => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            format!("no network route {path}"),
            "network routes: GET hello, GET changes?after=N, POST push, GET patients?q=, POST patients/{uuid}/fetch",
        )),
    }
}

/// Serializes any reply body (a tiny object-safe wrapper over `Serialize`).
mod erased {
    pub trait Json {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("replies serialize")
        }
    }
}

fn number(query: &BTreeMap<String, String>, name: &str, default: i64) -> Result<i64, HttpError> {
    match query.get(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| HttpError::new(StatusCode::BAD_REQUEST, format!("{name}={v:?} is not a number"), "pass whole numbers")),
    }
}

