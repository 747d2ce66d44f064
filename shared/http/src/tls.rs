//! TLS for every connection the toolkit makes or accepts, with rustls (ring as the crypto
//! provider): what a client trusts ([`ClientTls`]: the system's roots, plus a private CA given
//! with `--ca FILE`), whether plain HTTP may leave this machine ([`plain_http_allowed`]), and
//! reading PEM certificates and keys for a server ([`load_certificates`], [`load_private_key`]).
//!
//! A process sets its trust once at start ([`install`], from `--ca` / `FEEDSYNC_CA` and
//! `--insecure-http`); every [`crate::HttpClient`] made afterwards uses it. A test or a program
//! that needs two trusts in one process gives a client its own with
//! [`crate::HttpClient::with_tls`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use url::{Host, Url};

/// Environment variable naming PEM files (separated by the platform's path separator, `:` on
/// Linux) of CAs to trust besides the system's: the network's private CA.
pub const CA_ENV: &str = "FEEDSYNC_CA";

/// Environment variable that, set to `1` or `true`, allows plain HTTP to other machines (as
/// `--insecure-http`).
pub const INSECURE_HTTP_ENV: &str = "FEEDSYNC_INSECURE_HTTP";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}. Check that the folder exists and is writable")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no PEM certificate (a file starting with -----BEGIN CERTIFICATE-----); {hint}")]
    NoCertificate { path: PathBuf, hint: &'static str },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1); {hint}")]
    NoKey { path: PathBuf, hint: &'static str },
    #[error("{path}: {message}")]
    Bad { path: PathBuf, message: String },
    #[error("the TLS configuration was set twice in one process")]
    AlreadyInstalled,
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

const PEM_HINT: &str = "`feed-publisher tls init` writes such files for a network without a PKI";

/// What a client trusts and whether it may speak plain HTTP to another machine.
#[derive(Clone)]
pub struct ClientTls {
    pub(crate) config: Arc<ClientConfig>,
    pub(crate) insecure_http: bool,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("insecure_http", &self.insecure_http).finish()
    }
}

/// The crypto provider every configuration names: the process never depends on which
/// provider happens to be installed as the default. ring, not aws-lc-rs: it builds on every
/// machine with a C compiler only, and the database driver uses it too. rustls 0.23.48 marks
/// it deprecated because it has no post-quantum key exchange (a known debt in ARCHITECTURE).
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ClientTls {
    /// Trusts the operating system's roots and the CAs in `ca_files`.
    pub fn new(ca_files: &[PathBuf], insecure_http: bool) -> Result<ClientTls, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            tracing::debug!(%error, "a system root certificate could not be read");
        }
        let (added, _ignored) = roots.add_parsable_certificates(native.certs);
        for path in ca_files {
            for certificate in load_certificates(path)? {
                roots.add(certificate).map_err(|e| TlsError::Bad { path: path.clone(), message: format!("not a usable CA certificate: {e}") })?;
            }
        }
        if added == 0 && ca_files.is_empty() {
            tracing::warn!("no trusted root certificates on this machine: https will fail until --ca FILE (or {CA_ENV}) names the CA that signed the server's certificate");
        }
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls { config: Arc::new(config), insecure_http })
    }

    /// Whether plain HTTP may go to other machines.
    pub fn insecure_http(&self) -> bool {
        self.insecure_http
    }
}

static INSTALLED: OnceLock<ClientTls> = OnceLock::new();

/// Sets this process's trust once, at start, before any client is made. `ca_files` empty
/// means the system's roots only.
pub fn install(tls: ClientTls) -> Result<(), TlsError> {
    if tls.insecure_http {
        tracing::warn!("--insecure-http: plain HTTP to other machines is allowed; tokens and patient data may cross the network in clear");
    }
    INSTALLED.set(tls).map_err(|_| TlsError::AlreadyInstalled)
}

/// [`install`] from the environment ([`CA_ENV`], [`INSECURE_HTTP_ENV`]) plus what the
/// command line gave; the command line adds to the environment.
pub fn install_from(ca_files: &[PathBuf], insecure_http: bool) -> Result<(), TlsError> {
    let mut files: Vec<PathBuf> = std::env::var_os(CA_ENV).map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect()).unwrap_or_default();
    files.extend(ca_files.iter().cloned());
    install(ClientTls::new(&files, insecure_http || insecure_http_from_env())?)
}

/// Whether [`INSECURE_HTTP_ENV`] allows plain http to other machines (`1`, `true`, `yes`).
pub fn insecure_http_from_env() -> bool {
    std::env::var(INSECURE_HTTP_ENV).is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

/// The process's trust: what [`install`] set, or the system's roots and no plain HTTP to
/// other machines.
pub(crate) fn installed() -> ClientTls {
    INSTALLED
        .get_or_init(|| {
            ClientTls::new(&[], insecure_http_from_env()).unwrap_or_else(|e| {
                // Only a CA file can fail to load, and none is named here.
                unreachable!("system roots only: {e}")
            })
        })
        .clone()
}

/// Whether `host` is this machine: `localhost`, 127.0.0.0/8 or ::1. Plain HTTP never leaves
/// the machine to reach it.
pub fn is_loopback_host(host: Option<Host<&str>>) -> bool {
    match host {
        Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost") || name.to_ascii_lowercase().ends_with(".localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        None => false,
    }
}

/// The one rule for plain HTTP: to this machine always, to another only when the operator
/// allowed it. Pure.
pub fn plain_http_allowed(url: &Url, insecure_http: bool) -> bool {
    insecure_http || is_loopback_host(url.host())
}

/// The certificates of a PEM file, in order (a server's own first, then its chain).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Bad { path: path.to_owned(), message: format!("not a PEM certificate file: {e}") })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned(), hint: PEM_HINT });
    }
    Ok(certificates)
}

/// The first private key of a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey { path: path.to_owned(), hint: PEM_HINT },
        other => TlsError::Bad { path: path.to_owned(), message: format!("not a PEM private key: {other}") },
    })
}

/// Explains a failed handshake found in an error chain, naming the host and what to do;
/// `None` when the chain is not about a certificate.
pub(crate) fn explain_handshake(url: &Url, chain: &str) -> Option<String> {
    let host = url.host_str().unwrap_or("the server");
    let lower = chain.to_ascii_lowercase();
    let (what, hint) = if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
        (
            "is signed by a CA this machine does not trust",
            "pass --ca FILE (or set FEEDSYNC_CA) with the network's CA certificate, e.g. the ca.pem `feed-publisher tls init` wrote",
        )
    } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        ("does not name this host", "connect with a name the certificate lists, or issue a certificate for this name (`feed-publisher tls init --name HOST`)")
    } else if lower.contains("expired") {
        ("has expired", "renew the server's certificate (and check this machine's clock)")
    } else if lower.contains("notvalidyet") {
        ("is not valid yet", "check this machine's clock")
    } else if lower.contains("invalid peer certificate") || lower.contains("badsignature") {
        ("was refused", "check the server's certificate chain")
    } else if lower.contains("corrupt message") || lower.contains("invalidcontenttype") || lower.contains("received corrupt") {
        return Some(format!("{host} did not answer TLS (is it serving plain HTTP? then it needs --tls-cert/--tls-key, or use an http:// URL on this machine only)"));
    } else {
        return None;
    };
    let detail = chain.rsplit(": ").next().unwrap_or(chain);
    Some(format!("the TLS certificate of {host} {what} ({detail}); {hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_stays_on_this_machine_unless_allowed() {
        for (url, local) in [
            ("http://127.0.0.1:8086/x", true),
            ("http://127.8.0.1/x", true),
            ("http://localhost:8080/openmrs", true),
            ("http://LOCALHOST/", true),
            ("http://a.localhost/", true),
            ("http://[::1]:8086/", true),
            ("http://[::ffff:127.0.0.1]/", true),
            ("http://10.0.0.5:8086/", false),
            ("http://parent.example/", false),
            ("http://localhost.example/", false),
            ("http://[::2]/", false),
            ("http://0.0.0.0/", false),
        ] {
            let url = Url::parse(url).unwrap();
            assert_eq!(plain_http_allowed(&url, false), local, "{url}");
            assert!(plain_http_allowed(&url, true), "{url} with --insecure-http");
        }
    }

    #[test]
    fn handshake_failures_name_the_host_and_what_to_do() {
        let url = Url::parse("https://parent.example:8443/ws").unwrap();
        let unknown = explain_handshake(&url, "client error (Connect): invalid peer certificate: UnknownIssuer").unwrap();
        assert!(unknown.contains("parent.example") && unknown.contains("--ca"), "{unknown}");
        let name = explain_handshake(&url, "invalid peer certificate: NotValidForName").unwrap();
        assert!(name.contains("does not name this host"), "{name}");
        assert!(explain_handshake(&url, "connection refused").is_none());
        let plain = explain_handshake(&url, "received corrupt message of type InvalidContentType").unwrap();
        assert!(plain.contains("plain HTTP"), "{plain}");
    }

    #[test]
    fn pem_files_that_hold_nothing_say_so() {
        let dir = std::env::temp_dir().join(format!("feedsync-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        assert!(matches!(load_certificates(&empty), Err(TlsError::NoCertificate { .. })));
        assert!(matches!(load_private_key(&empty), Err(TlsError::NoKey { .. })));
        assert!(matches!(load_certificates(&dir.join("missing.pem")), Err(TlsError::Read { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
