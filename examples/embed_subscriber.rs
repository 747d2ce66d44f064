//! Embedding the subscriber in another program: a [`Sink`] that counts patients by gender as
//! their changes arrive, run against the feed URL given on the command line.
//!
//! ```text
//! cargo run -p feed-subscriber --example embed_subscriber -- http://127.0.0.1:8086/ws/atomfeed/all/recent
//! cargo run -p feed-subscriber --example embed_subscriber -- \
//!     http://127.0.0.1:8080/openmrs/ws/atomfeed/patient/recent --user admin:Admin123
//! ```
//!
//! It reads feed-publisher feeds (`person` and `patient` resources) and OpenMRS atomfeed feeds
//! (patient REST or FHIR JSON) alike. The counts live in memory, so by default every run keeps
//! its marker in a fresh temporary state database and reads the feed from the start; with
//! `--state sqlite://file` a run resumes after the last one and counts only what is new (a real
//! program would store its counts where it can update them together with its own state).

use std::collections::{BTreeMap, HashMap, HashSet};

use feed_subscriber::client::HttpClient;
use feed_subscriber::sink::{Delivery, DeliveryBody, Sink, SinkError, SinkLimits, run_sink};
use feedsync_db::Database;

/// Each person's latest gender and which persons are patients: a person changed twice is
/// counted once, with the gender it has now.
#[derive(Default)]
struct GenderCount {
    gender_by_person: HashMap<String, String>,
    patients: HashSet<String>,
}

impl GenderCount {
    fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for patient in &self.patients {
            let gender = self.gender_by_person.get(patient).map_or("unknown yet", String::as_str);
            *counts.entry(gender.to_owned()).or_default() += 1;
        }
        counts
    }

    /// OpenMRS REST (`{"uuid", "person": {"gender"}}`) or FHIR (`{"id", "gender"}`) patient JSON.
    fn read_openmrs_json(&mut self, json: &serde_json::Value) {
        let uuid = json.get("uuid").or_else(|| json.get("id")).and_then(|v| v.as_str());
        let gender = json.pointer("/person/gender").or_else(|| json.get("gender")).and_then(|v| v.as_str());
        if let Some(uuid) = uuid {
            self.patients.insert(uuid.to_owned());
            if let Some(gender) = gender {
                self.gender_by_person.insert(uuid.to_owned(), gender.to_owned());
            }
        }
    }
}

impl Sink for GenderCount {
    async fn deliver(&mut self, batch: &[Delivery]) -> Result<(), SinkError> {
        for delivery in batch {
            match &delivery.body {
                // A patient's identity is its person's uuid, so the two tables meet by key.
                DeliveryBody::Resource(resource) if resource.table == "person" => {
                    if let Some(gender) = resource.columns.get("gender").and_then(|v| v.as_str()) {
                        self.gender_by_person.insert(resource.key.clone(), gender.to_owned());
                    }
                }
                DeliveryBody::Resource(resource) if resource.table == "patient" => {
                    self.patients.insert(resource.key.clone());
                }
                DeliveryBody::Tombstone(tombstone) if tombstone.table == "patient" => {
                    self.patients.remove(&tombstone.key);
                }
                DeliveryBody::Rest { json, .. } => self.read_openmrs_json(json),
                DeliveryBody::Failed { link, reason } => eprintln!("entry {} not counted ({link:?}): {reason}", delivery.entry_id),
                _ => {}
            }
        }
        eprintln!("{} entries read; patients by gender: {:?}", batch.len(), self.counts());
        Ok(())
    }
}

struct Args {
    feed_url: String,
    state_url: Option<String>,
    user_password: Option<String>,
    follow: bool,
}

const USAGE: &str = "usage: embed_subscriber FEED_URL [--state sqlite://FILE] [--user USER:PASSWORD] [--follow]";

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args { feed_url: String::new(), state_url: None, user_password: None, follow: false };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--state" => parsed.state_url = Some(args.next().ok_or("--state needs a database URL")?),
            "--user" => parsed.user_password = Some(args.next().ok_or("--user needs USER:PASSWORD")?),
            "--follow" => parsed.follow = true,
            _ if parsed.feed_url.is_empty() && !arg.starts_with("--") => parsed.feed_url = arg,
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    if parsed.feed_url.is_empty() {
        return Err("no feed URL given".into());
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args().map_err(|why| anyhow::anyhow!("{why}\n{USAGE}"))?;
    // Without --state, a state database of this run's own, removed at the end.
    let scratch = args.state_url.is_none().then(|| std::env::temp_dir().join(format!("embed_subscriber_{}", std::process::id())));
    let state_url = match (&args.state_url, &scratch) {
        (Some(url), _) => url.clone(),
        (None, Some(dir)) => {
            std::fs::create_dir_all(dir)?;
            format!("sqlite://{}", dir.join("state.sqlite").display())
        }
        (None, None) => unreachable!("a scratch folder exists whenever no --state is given"),
    };
    let state_db = Database::from_url(&state_url)?;
    let mut client = HttpClient::default();
    if let Some(user_password) = &args.user_password {
        // Only to the feed's own server, never to another host its links name.
        client = client.with_basic_auth(user_password).with_credentials_only_to(&[args.feed_url.as_str()]);
    }
    let mut sink = GenderCount::default();
    // With --follow this polls until interrupted; without, it stops once caught up.
    let result = run_sink(&client, std::slice::from_ref(&args.feed_url), &state_db, &mut sink, !args.follow, &SinkLimits::default()).await;
    if let Some(dir) = scratch {
        let _ = std::fs::remove_dir_all(dir);
    }
    let progress = result?;
    println!("{} entries in {} batches; patients by gender:", progress.entries_delivered, progress.batches_delivered);
    for (gender, patients) in sink.counts() {
        println!("  {gender}: {patients}");
    }
    Ok(())
}
