//! The cluster's certificate authority: a CA per cluster, and the certificates it issues
//! (etcd members: server and peer; clients: the workers' proxies and clusterform's own
//! day-2 calls), made with rcgen (Ed25519), never by running openssl. Private keys are
//! [`SecretPem`]: their `Debug` never shows them. No I/O.
//!
//! Only the CA's key is random. Every certificate it issues is a function of the CA and
//! of what the certificate is for (its key derived from the CA's key with HKDF-SHA256,
//! its validity counted from the CA's, Ed25519 signatures being deterministic), so the
//! config a machine is rendered with is the same on every run: a plan of an unchanged
//! cluster changes nothing, and nothing but the CA has to be stored. Whoever holds the
//! CA's key can issue any certificate anyway, so deriving from it gives nothing away.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519, SanType,
};
use ring::hkdf;
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

impl From<String> for SecretPem {
    fn from(pem: String) -> Self {
        SecretPem(pem)
    }
}

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
    /// The CA key's PKCS#8 DER: the secret the issued keys are derived from.
    seed: hkdf::Prk,
    /// The start of the CA's validity: every issued certificate's starts there too.
    not_before: OffsetDateTime,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// The HKDF salt of issued keys; a new one would re-key every certificate.
const DERIVE_SALT: &[u8] = b"clusterform etcd pki v1";

/// The PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410), before its 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn window(valid_for: Duration) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    // An hour back, so that a clock a little behind still accepts a fresh certificate.
    let from = OffsetDateTime::now_utc() - time::Duration::hours(1);
    Ok((from, after(from, valid_for)?))
}

fn after(from: OffsetDateTime, valid_for: Duration) -> Result<OffsetDateTime, PkiError> {
    let secs = i64::try_from(valid_for.as_secs()).map_err(|_| PkiError::Validity(valid_for))?;
    from.checked_add(time::Duration::seconds(secs))
        .ok_or(PkiError::Validity(valid_for))
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

/// The CA certificate of cluster `cluster`, valid for `valid_for` from now (a random
/// serial number).
fn ca_params(cluster: &str, valid_for: Duration) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(rc("CA parameters"))?;
    p.distinguished_name = name(&format!("{cluster} etcd CA"), "clusterform");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (p.not_before, p.not_after) = window(valid_for)?;
    Ok(p)
}

impl Ca {
    /// A new CA for `cluster`, valid for `valid_for`, with a fresh random Ed25519 key.
    pub fn generate(cluster: &str, valid_for: Duration) -> Result<Ca, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(rc("generate the CA key"))?;
        let p = ca_params(cluster, valid_for)?;
        let cert = p.self_signed(&key).map_err(rc("sign the CA certificate"))?;
        let key_pem = SecretPem(key.serialize_pem());
        Ok(Ca {
            seed: hkdf::Salt::new(hkdf::HKDF_SHA256, DERIVE_SALT).extract(&key.serialize_der()),
            not_before: p.not_before,
            cert_pem: cert.pem(),
            issuer: Issuer::new(p, key),
            key_pem,
        })
    }

    /// The CA of an earlier run, from its certificate and key.
    pub fn load(cert_pem: &str, key_pem: &SecretPem) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem.expose()).map_err(rc("read the CA key"))?;
        let not_before = validity(cert_pem)?.0;
        let seed = hkdf::Salt::new(hkdf::HKDF_SHA256, DERIVE_SALT).extract(&key.serialize_der());
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(rc("read the CA certificate"))?;
        Ok(Ca {
            issuer,
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.clone(),
            seed,
            not_before,
        })
    }

    /// The same CA (its key, its name: cluster `cluster`'s) with a new validity window
    /// from now and a new serial number: a certificate issued by either verifies under the other (same
    /// issuer name, same key), so members move to certificates of the renewed CA one at a
    /// time while the others still trust the old certificate. The issued keys stay the
    /// same (they derive from the CA's key); their certificates start anew.
    pub fn renewed(&self, cluster: &str, valid_for: Duration) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(self.key_pem.expose()).map_err(rc("read the CA key"))?;
        let mut p = ca_params(cluster, valid_for)?;
        // Not the key's hash (rcgen's default, the first certificate's serial): the
        // renewed certificate gets its own, from the key and its start.
        let mut input = key.public_key_pem().into_bytes();
        input.extend_from_slice(&p.not_before.unix_timestamp().to_be_bytes());
        let digest = ring::digest::digest(&ring::digest::SHA256, &input);
        let mut serial = digest.as_ref()[..20].to_vec();
        serial[0] &= 0x7f;
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let cert = p.self_signed(&key).map_err(rc("sign the CA certificate"))?;
        Ca::load(&cert.pem(), &self.key_pem)
    }

    /// The CA certificate, PEM (what every member and client trusts).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM.
    pub fn key_pem(&self) -> &SecretPem {
        &self.key_pem
    }

    /// The Ed25519 key of the certificate `label` names, derived from the CA's key.
    fn derived_key(&self, label: &str) -> Result<KeyPair, PkiError> {
        let info = [label.as_bytes()];
        let okm = self
            .seed
            .expand(&info, hkdf::HKDF_SHA256)
            .map_err(|_| PkiError::Parse(format!("derive the key of {label}")))?;
        let mut der = [0u8; 48];
        der[..16].copy_from_slice(&ED25519_PKCS8_PREFIX);
        okm.fill(&mut der[16..])
            .map_err(|_| PkiError::Parse(format!("derive the key of {label}")))?;
        KeyPair::try_from(&der[..]).map_err(rc(format!("the key of {label}")))
    }

    fn issue(
        &self,
        mut p: CertificateParams,
        usages: Vec<ExtendedKeyUsagePurpose>,
        valid_for: Duration,
        label: &str,
    ) -> Result<Issued, PkiError> {
        let key = self.derived_key(label)?;
        p.extended_key_usages = usages;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        p.not_before = self.not_before;
        p.not_after = after(self.not_before, valid_for)?;
        let not_after = system_time(p.not_after);
        let cert = p
            .signed_by(&key, &self.issuer)
            .map_err(rc(format!("sign the certificate of {label}")))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: SecretPem(key.serialize_pem()),
            not_after,
        })
    }

    /// An etcd member's certificate, for its client and peer URLs alike (server and client
    /// auth: members are each other's clients): named `name`, valid for its host name,
    /// `addresses`, and `localhost`/127.0.0.1 (etcdctl on the machine itself). The same
    /// arguments give the same certificate and key; another address, another key.
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
            &format!(
                "member `{name}` at {}",
                join_ips(&addresses_sorted(addresses))
            ),
        )
    }

    /// A client certificate (a worker's proxy, clusterform's own calls) for `name`; the
    /// same name gives the same certificate and key. It has no common name (`name` is its
    /// organizational unit): etcd's gRPC proxy refuses a client certificate with one, as
    /// etcd would take it for a user name.
    pub fn client(&self, name: &str, valid_for: Duration) -> Result<Issued, PkiError> {
        let mut p = CertificateParams::new(Vec::<String>::new())
            .map_err(rc(format!("parameters of client `{name}`")))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "clusterform");
        dn.push(DnType::OrganizationalUnitName, name);
        p.distinguished_name = dn;
        self.issue(
            p,
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            valid_for,
            &format!("client `{name}`"),
        )
    }
}

fn addresses_sorted(addresses: &[IpAddr]) -> Vec<IpAddr> {
    let mut a = addresses.to_vec();
    a.sort();
    a.dedup();
    a
}

fn join_ips(a: &[IpAddr]) -> String {
    a.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
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

/// A PEM certificate's validity: (not before, not after).
fn validity(cert_pem: &str) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let bad = |why: String| PkiError::Parse(why);
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| bad(format!("not a PEM certificate ({e})")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| bad(format!("not an X.509 certificate ({e})")))?;
    let v = cert.validity();
    Ok((v.not_before.to_datetime(), v.not_after.to_datetime()))
}

/// When a PEM certificate stops being valid.
pub fn not_after(cert_pem: &str) -> Result<SystemTime, PkiError> {
    Ok(system_time(validity(cert_pem)?.1))
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
    fn issuing_is_repeatable_and_only_the_ca_is_random() {
        let ca = Ca::generate("prod", DEFAULT_VALIDITY).expect("CA");
        let at = [IpAddr::from([10, 0, 1, 101])];
        let a = ca
            .member("prod-central-0", &at, DEFAULT_VALIDITY)
            .expect("member");
        // The same CA, read back (as a later run does), issues the very same certificate.
        let again = Ca::load(ca.cert_pem(), ca.key_pem()).expect("load");
        let b = again
            .member("prod-central-0", &at, DEFAULT_VALIDITY)
            .expect("member");
        assert_eq!(a.cert_pem, b.cert_pem);
        assert_eq!(a.key_pem, b.key_pem);
        assert_eq!(
            ca.client("proxy", DEFAULT_VALIDITY).expect("c").key_pem,
            again.client("proxy", DEFAULT_VALIDITY).expect("c").key_pem
        );
        // Another name, another address, another purpose, another CA: another key.
        let keys = [
            ca.member("prod-central-1", &at, DEFAULT_VALIDITY)
                .expect("m")
                .key_pem,
            ca.member(
                "prod-central-0",
                &[IpAddr::from([10, 0, 1, 102])],
                DEFAULT_VALIDITY,
            )
            .expect("m")
            .key_pem,
            ca.client("prod-central-0", DEFAULT_VALIDITY)
                .expect("c")
                .key_pem,
            Ca::generate("prod", DEFAULT_VALIDITY)
                .expect("CA")
                .member("prod-central-0", &at, DEFAULT_VALIDITY)
                .expect("m")
                .key_pem,
        ];
        for k in &keys {
            assert_ne!(k, &a.key_pem);
        }
        // Address order does not matter.
        let two = [
            IpAddr::from([10, 0, 1, 101]),
            IpAddr::from([192, 168, 0, 1]),
        ];
        let rev = [two[1], two[0]];
        assert_eq!(
            ca.member("m", &two, DEFAULT_VALIDITY).expect("m").key_pem,
            ca.member("m", &rev, DEFAULT_VALIDITY).expect("m").key_pem
        );
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
