//! The server's TLS: the certificate and key `serve --tls-cert/--tls-key` names, reloaded when
//! either file changes or on SIGHUP (a renewed certificate needs no restart; a broken new one
//! is logged and the old one kept), and `feed-publisher tls init`, a private CA and the
//! parent's certificate for a network without a PKI.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use feedsync_http::tls::{load_certificates, load_private_key, provider};
use feedsync_http::TlsError;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
pub use tokio_rustls::TlsAcceptor;

/// How often the certificate files are looked at for a change.
pub const RELOAD_CHECK_INTERVAL_MS: u64 = 2_000;

/// The server's certificate, swapped in place when its files change.
#[derive(Debug)]
pub struct ServerTls {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// Modification times of the files as last loaded (or last tried).
    stamps: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl ResolvesServerCert for ServerTls {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("certificate lock").clone())
    }
}

impl ServerTls {
    /// Loads the certificate chain and key; refuses a key that does not match the certificate.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerTls>, TlsError> {
        let stamps = (modified(cert_path), modified(key_path));
        let certified = certified_key(cert_path, key_path)?;
        Ok(Arc::new(ServerTls { cert_path: cert_path.to_owned(), key_path: key_path.to_owned(), current: RwLock::new(Arc::new(certified)), stamps: Mutex::new(stamps) }))
    }

    /// The acceptor for connections: TLS 1.2 and 1.3, HTTP/1.1.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Loads the files again if either changed since the last load (or always, when `force`):
    /// `Ok(true)` when a new certificate is in use. A file that does not load leaves the old
    /// certificate in use.
    pub fn reload_if_changed(&self, force: bool) -> Result<bool, TlsError> {
        let now = (modified(&self.cert_path), modified(&self.key_path));
        {
            let mut stamps = self.stamps.lock().expect("stamps lock");
            if !force && *stamps == now {
                return Ok(false);
            }
            // Tried once per change: a broken file is reported once, not every interval.
            *stamps = now;
        }
        let certified = certified_key(&self.cert_path, &self.key_path)?;
        *self.current.write().expect("certificate lock") = Arc::new(certified);
        Ok(true)
    }

    /// Reloads on SIGHUP and when the files change, until `shutdown`.
    pub async fn watch(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            let forced = tokio::select! {
                _ = async { match hangup.as_mut() { Some(signal) => { signal.recv().await; } None => std::future::pending().await } } => true,
                _ = tokio::time::sleep(Duration::from_millis(RELOAD_CHECK_INTERVAL_MS)) => false,
                _ = shutdown.changed() => return,
            };
            match self.reload_if_changed(forced) {
                Ok(true) => tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "the new TLS certificate does not load; the previous one stays in use"),
            }
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = load_certificates(cert_path)?;
    let key = load_private_key(key_path)?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsError::Bad {
        path: key_path.to_owned(),
        message: format!("this key does not go with the certificate in {} ({e})", cert_path.display()),
    })
}

/// What `tls init` wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// False when an existing CA in the folder signed the new certificate.
    pub new_ca: bool,
}

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
pub const SERVER_CERT_FILE: &str = "server.pem";
pub const SERVER_KEY_FILE: &str = "server-key.pem";
const CA_NAME: &str = "feedsync network CA";
/// The CA's lifetime: a network's CA outlives many server certificates.
const CA_DAYS: i64 = 3_650;

/// Writes a private CA (kept if the folder already holds one, so a new certificate after an
/// address change is still trusted by every child) and a certificate for `names` (host names
/// and IP addresses the parent is reached by) valid for `days`. Keys are written readable by
/// their owner only.
pub fn init(dir: &Path, names: &[String], days: u32) -> Result<Written, TlsError> {
    let bad = |message: String| TlsError::Bad { path: dir.to_owned(), message };
    if names.is_empty() {
        return Err(bad("no --name given: name every host name and IP address children use to reach this parent".into()));
    }
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write { path: dir.to_owned(), source })?;
    let (ca_cert_path, ca_key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    let existing = ca_key_path.exists();
    let ca_key = if existing {
        let pem = std::fs::read_to_string(&ca_key_path).map_err(|source| TlsError::Read { path: ca_key_path.clone(), source })?;
        rcgen::KeyPair::from_pem(&pem).map_err(|e| TlsError::Bad { path: ca_key_path.clone(), message: format!("not a CA key: {e}") })?
    } else {
        rcgen::KeyPair::generate().map_err(|e| bad(e.to_string()))?
    };
    // The same name and key as before make the same issuer: certificates it signed earlier
    // stay valid, and the one rewritten below is what children already trust.
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.distinguished_name = distinguished_name(CA_NAME);
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign, rcgen::KeyUsagePurpose::DigitalSignature];
    set_validity(&mut ca_params, CA_DAYS);
    // Signing needs only the issuer's name and key; an existing ca.pem is kept as it is.
    let ca_cert = ca_params.self_signed(&ca_key).map_err(|e| bad(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| bad(format!("{names:?} are not host names or IP addresses: {e}")))?;
    params.distinguished_name = distinguished_name(&names[0]);
    set_validity(&mut params, i64::from(days));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
    params.use_authority_key_identifier_extension = true;
    let server_key = rcgen::KeyPair::generate().map_err(|e| bad(e.to_string()))?;
    let server_cert = params.signed_by(&server_key, &ca_cert, &ca_key).map_err(|e| bad(e.to_string()))?;
    let written = Written {
        server_cert: dir.join(SERVER_CERT_FILE),
        server_key: dir.join(SERVER_KEY_FILE),
        ca_cert: ca_cert_path,
        ca_key: ca_key_path,
        new_ca: !existing,
    };
    if !existing {
        write_private(&written.ca_key, &ca_key.serialize_pem())?;
    }
    if !written.ca_cert.exists() {
        write_file(&written.ca_cert, &ca_cert.pem())?;
    }
    write_private(&written.server_key, &server_key.serialize_pem())?;
    // The chain a server sends: its own certificate, then the CA's.
    write_file(&written.server_cert, &format!("{}{}", server_cert.pem(), std::fs::read_to_string(&written.ca_cert).unwrap_or_else(|_| ca_cert.pem())))?;
    Ok(written)
}

fn distinguished_name(common_name: &str) -> rcgen::DistinguishedName {
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, common_name);
    name.push(rcgen::DnType::OrganizationName, "feedsync");
    name
}

/// From a day ago (clocks at facilities drift) to `days` from now.
fn set_validity(params: &mut rcgen::CertificateParams, days: i64) {
    use chrono::Datelike as _;
    let day = |offset: i64| {
        let date = (chrono::Utc::now() + chrono::Duration::days(offset)).date_naive();
        rcgen::date_time_ymd(date.year(), date.month() as u8, date.day() as u8)
    };
    params.not_before = day(-1);
    params.not_after = day(days);
}

fn write_file(path: &Path, text: &str) -> Result<(), TlsError> {
    std::fs::write(path, text).map_err(|source| TlsError::Write { path: path.to_owned(), source })
}

fn write_private(path: &Path, text: &str) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| TlsError::Write { path: path.to_owned(), source })?;
    file.write_all(text.as_bytes()).map_err(|source| TlsError::Write { path: path.to_owned(), source })
}
