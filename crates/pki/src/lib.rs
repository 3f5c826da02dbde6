//! The cluster's certificate authority: a CA per cluster, and the certificates it issues
//! (etcd members: server and peer; clients: the workers' proxies and clusterform's own
//! day-2 calls), made with rcgen (ECDSA P-256), never by running openssl. Private keys
//! are [`SecretPem`]: their `Debug` never shows them. No I/O.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

/// How long certificates are valid unless said otherwise: 5 years.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

/// What went wrong making or reading a certificate.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused (bad parameters, a key or certificate that does not parse).
    #[error("{what}: {source}")]
    Rcgen {
        /// What was being done.
        what: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// A validity that does not fit in a date.
    #[error("a validity of {0:?} does not fit in a date")]
    Validity(Duration),
    /// A certificate that does not parse.
    #[error("{0}")]
    Parse(String),
}

fn rc(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |source| PkiError::Rcgen { what, source }
}

/// A private key in PEM. Its `Debug` is masked; read it with [`SecretPem::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct SecretPem(String);

impl SecretPem {
    /// The PEM text, for the one place that must write it (an Ignition file, a 0600 file).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretPem(<sensitive>)")
    }
}

/// A certificate and its key.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: SecretPem,
    /// When it stops being valid.
    pub not_after: SystemTime,
}

/// A certificate authority that can issue certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: SecretPem,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

fn window(valid_for: Duration) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    // An hour back, so that a clock a little behind still accepts a fresh certificate.
    let now = OffsetDateTime::now_utc();
    let from = now - time::Duration::hours(1);
    let secs = i64::try_from(valid_for.as_secs()).map_err(|_| PkiError::Validity(valid_for))?;
    let until = now
        .checked_add(time::Duration::seconds(secs))
        .ok_or(PkiError::Validity(valid_for))?;
    Ok((from, until))
}

fn system_time(t: OffsetDateTime) -> SystemTime {
    let secs = t.unix_timestamp();
    match u64::try_from(secs) {
        Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

fn name(cn: &str, org: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, org);
    dn
}

impl Ca {
    /// A new CA for `cluster`, valid for `valid_for`.
    pub fn generate(cluster: &str, valid_for: Duration) -> Result<Ca, PkiError> {
        let key = KeyPair::generate().map_err(rc("generate the CA key"))?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(rc("CA parameters"))?;
        p.distinguished_name = name(&format!("{cluster} etcd CA"), "clusterform");
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        (p.not_before, p.not_after) = window(valid_for)?;
        let cert = p.self_signed(&key).map_err(rc("sign the CA certificate"))?;
        let key_pem = SecretPem(key.serialize_pem());
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(p, key),
            key_pem,
        })
    }

    /// The CA of an earlier run, from its certificate and key.
    pub fn load(cert_pem: &str, key_pem: &SecretPem) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem.expose()).map_err(rc("read the CA key"))?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(rc("read the CA certificate"))?;
        Ok(Ca {
            issuer,
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.clone(),
        })
    }

    /// The CA certificate, PEM (what every member and client trusts).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM.
    pub fn key_pem(&self) -> &SecretPem {
        &self.key_pem
    }

    fn issue(
        &self,
        mut p: CertificateParams,
        usages: Vec<ExtendedKeyUsagePurpose>,
        valid_for: Duration,
        what: &str,
    ) -> Result<Issued, PkiError> {
        let key = KeyPair::generate().map_err(rc(format!("generate the key of {what}")))?;
        p.extended_key_usages = usages;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.use_authority_key_identifier_extension = true;
        (p.not_before, p.not_after) = window(valid_for)?;
        let not_after = system_time(p.not_after);
        let cert = p
            .signed_by(&key, &self.issuer)
            .map_err(rc(format!("sign the certificate of {what}")))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: SecretPem(key.serialize_pem()),
            not_after,
        })
    }

    /// An etcd member's certificate, for its client and peer URLs alike (server and client
    /// auth: members are each other's clients): named `name`, valid for its host name,
    /// `addresses`, and `localhost`/127.0.0.1 (etcdctl on the machine itself).
    pub fn member(
        &self,
        name: &str,
        addresses: &[IpAddr],
        valid_for: Duration,
    ) -> Result<Issued, PkiError> {
        let mut p = CertificateParams::new(vec![name.to_string(), "localhost".to_string()])
            .map_err(rc(format!("parameters of member `{name}`")))?;
        p.distinguished_name = name_of(name);
        let loopback: IpAddr = IpAddr::from([127, 0, 0, 1]);
        for ip in addresses.iter().chain(std::iter::once(&loopback)) {
            let san = SanType::IpAddress(*ip);
            if !p.subject_alt_names.contains(&san) {
                p.subject_alt_names.push(san);
            }
        }
        self.issue(
            p,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            valid_for,
            &format!("member `{name}`"),
        )
    }

    /// A client certificate (a worker's proxy, clusterform's own calls), named `name`.
    pub fn client(&self, name: &str, valid_for: Duration) -> Result<Issued, PkiError> {
        let mut p = CertificateParams::new(Vec::<String>::new())
            .map_err(rc(format!("parameters of client `{name}`")))?;
        p.distinguished_name = name_of(name);
        self.issue(
            p,
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            valid_for,
            &format!("client `{name}`"),
        )
    }
}

fn name_of(cn: &str) -> DistinguishedName {
    name(cn, "clusterform")
}

/// etcd's flags for a member with TLS on its client and peer URLs that requires client
/// certificates of the cluster's CA: its certificate and key files and the CA's file.
pub fn etcd_member_tls_flags(cert: &str, key: &str, ca: &str) -> Vec<String> {
    vec![
        format!("--cert-file={cert}"),
        format!("--key-file={key}"),
        format!("--trusted-ca-file={ca}"),
        "--client-cert-auth".to_string(),
        format!("--peer-cert-file={cert}"),
        format!("--peer-key-file={key}"),
        format!("--peer-trusted-ca-file={ca}"),
        "--peer-client-cert-auth".to_string(),
    ]
}

/// When a PEM certificate stops being valid.
pub fn not_after(cert_pem: &str) -> Result<SystemTime, PkiError> {
    let bad = |why: String| PkiError::Parse(why);
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| bad(format!("not a PEM certificate ({e})")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| bad(format!("not an X.509 certificate ({e})")))?;
    let secs = cert.validity().not_after.timestamp();
    Ok(u64::try_from(secs).map_or(SystemTime::UNIX_EPOCH, |s| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }))
}

/// True when the certificate expires within `within` of `now` (or has expired).
pub fn expires_within(cert_pem: &str, now: SystemTime, within: Duration) -> Result<bool, PkiError> {
    Ok(not_after(cert_pem)? <= now + within)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_member_and_client_certificates_that_load_back() {
        let ca = Ca::generate("prod", DEFAULT_VALIDITY).expect("CA");
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let m = ca
            .member(
                "prod-central-0",
                &[IpAddr::from([10, 0, 1, 101])],
                DEFAULT_VALIDITY,
            )
            .expect("member");
        assert!(m.key_pem.expose().contains("PRIVATE KEY"));
        assert!(
            !format!("{m:?}").contains("PRIVATE KEY"),
            "the key is masked"
        );
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
        let c = ca.client("clusterform", DEFAULT_VALIDITY).expect("client");
        assert_ne!(m.cert_pem, c.cert_pem);

        // A CA read back from its PEM issues certificates too.
        let again = Ca::load(ca.cert_pem(), ca.key_pem()).expect("load");
        again
            .client("proxy", DEFAULT_VALIDITY)
            .expect("client of the loaded CA");
    }

    #[test]
    fn expiry_is_read_back_and_warned_about() {
        let ca = Ca::generate("prod", DEFAULT_VALIDITY).expect("CA");
        let short = ca
            .client("soon", Duration::from_secs(10 * 24 * 3600))
            .expect("client");
        let now = SystemTime::now();
        let read = not_after(&short.cert_pem).expect("not_after");
        let diff = read
            .duration_since(short.not_after)
            .unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_secs(2), "{diff:?}");
        let month = Duration::from_secs(30 * 24 * 3600);
        assert!(expires_within(&short.cert_pem, now, month).expect("read"));
        assert!(!expires_within(ca.cert_pem(), now, month).expect("read"));
    }
}
