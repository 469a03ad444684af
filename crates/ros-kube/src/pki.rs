//! The cluster's certificates: a CA made on the first start and kept, the API server's serving
//! certificate (127.0.0.1, the node's addresses and names), client certificates (the admin's,
//! later the nodes'), the join token that pins the CA (k3s's `K10<sha256 of the CA PEM>::...`),
//! and the admin kubeconfig.
//!
//! Keys are ECDSA P-256 made by graviola and signed through rcgen's `SigningKey` seam: rcgen's
//! own key generation needs ring or aws-lc, both C.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use graviola::hashing::Sha256;
use graviola::signing::ecdsa::{P256, SigningKey as EcdsaKey};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
    SignatureAlgorithm, SigningKey,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("making a certificate: {0}")]
    Make(String),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> PkiError {
    PkiError::File {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// An ECDSA P-256 key: graviola's, shown to rcgen as a signer.
pub struct Key {
    key: EcdsaKey<P256>,
    public: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(P-256)")
    }
}

impl Key {
    pub fn generate() -> Result<Key, PkiError> {
        let key = EcdsaKey::<P256>::generate().map_err(|e| PkiError::Make(format!("{e:?}")))?;
        Key::from_ecdsa(key)
    }

    fn from_ecdsa(key: EcdsaKey<P256>) -> Result<Key, PkiError> {
        let public = key.private_key.public_key_uncompressed().to_vec();
        Ok(Key { key, public })
    }

    pub fn pkcs8_der(&self) -> Result<Vec<u8>, PkiError> {
        let mut buf = [0u8; 256];
        Ok(self
            .key
            .to_pkcs8_der(&mut buf)
            .map_err(|e| PkiError::Make(format!("{e:?}")))?
            .to_vec())
    }

    pub fn pem(&self) -> Result<String, PkiError> {
        Ok(pem("PRIVATE KEY", &self.pkcs8_der()?))
    }

    fn load(path: &Path) -> Result<Key, PkiError> {
        let der = PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))?;
        let key = EcdsaKey::<P256>::from_pkcs8_der(der.secret_der())
            .map_err(|e| file_err(path, format!("not a P-256 PKCS#8 key: {e:?}")))?;
        Key::from_ecdsa(key)
    }
}

impl PublicKeyData for Key {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for Key {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let mut buf = [0u8; 80];
        self.key
            .sign_asn1::<Sha256>(&[msg], &mut buf)
            .map(<[u8]>::to_vec)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut b = [0u8; 16];
    graviola::random::fill(&mut b).map_err(|e| PkiError::Make(format!("{e:?}")))?;
    b[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&b))
}

/// Random bytes as lowercase hex (passwords, tokens).
pub fn random_hex(bytes: usize) -> Result<String, PkiError> {
    let mut b = vec![0u8; bytes];
    graviola::random::fill(&mut b).map_err(|e| PkiError::Make(format!("{e:?}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn dn(cn: &str, orgs: &[&str]) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    for o in orgs {
        d.push(DnType::OrganizationName, *o);
    }
    d.push(DnType::CommonName, cn);
    d
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The CA and what it signs, kept in one folder.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    pub ca_pem: String,
    ca_params: CertificateParams,
    ca_key: Key,
}

impl Pki {
    /// The CA in `dir`, made on the first call.
    pub fn open(dir: &Path) -> Result<Pki, PkiError> {
        fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("ros-cluster-ca", &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        if crt.exists() && key.exists() {
            let ca_key = Key::load(&key)?;
            let ca_pem = fs::read_to_string(&crt).map_err(|e| file_err(&crt, e))?;
            // The issuer's name and key identifier come from these parameters; the subject must
            // be the one in the stored certificate, which these are made the same way as.
            return Ok(Pki {
                dir: dir.to_path_buf(),
                ca_pem,
                ca_params: params,
                ca_key,
            });
        }
        let ca_key = Key::generate()?;
        params.serial_number = Some(random_serial()?);
        let cert = params
            .self_signed(&ca_key)
            .map_err(|e| PkiError::Make(e.to_string()))?;
        let ca_pem = cert.pem();
        write_private(&key, &ca_key.pem()?)?;
        write_atomic(&crt, ca_pem.as_bytes(), 0o644)?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            ca_pem,
            ca_params: params,
            ca_key,
        })
    }

    /// The CA's hash as a join token carries it.
    pub fn ca_hash(&self) -> String {
        hex(&sha2::Sha256::digest(self.ca_pem.as_bytes()))
    }

    fn issue(
        &self,
        cn: &str,
        orgs: &[&str],
        sans: &[String],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<Pair, PkiError> {
        let key = Key::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(cn, orgs);
        p.serial_number = Some(random_serial()?);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![usage];
        p.use_authority_key_identifier_extension = true;
        for s in sans {
            p.subject_alt_names
                .push(match s.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(
                        s.clone()
                            .try_into()
                            .map_err(|e: rcgen::Error| PkiError::Make(format!("name {s}: {e}")))?,
                    ),
                });
        }
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = p
            .signed_by(&key, &issuer)
            .map_err(|e| PkiError::Make(e.to_string()))?;
        Ok(Pair {
            cert_pem: cert.pem(),
            key_pem: key.pem()?,
        })
    }

    /// A client certificate: user `cn`, groups `orgs`.
    pub fn client(&self, cn: &str, orgs: &[&str]) -> Result<Pair, PkiError> {
        self.issue(cn, orgs, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// The serving certificate for these names and addresses, kept in the folder and made
    /// again when the list changes (a new address after a DHCP change).
    pub fn serving(&self, sans: &[String]) -> Result<Pair, PkiError> {
        let (crt, key, list) = (
            self.dir.join("serving.crt"),
            self.dir.join("serving.key"),
            self.dir.join("serving.names"),
        );
        let want = sans.join("\n");
        if let (Ok(c), Ok(k), Ok(l)) = (
            fs::read_to_string(&crt),
            fs::read_to_string(&key),
            fs::read_to_string(&list),
        ) && l == want
        {
            return Ok(Pair {
                cert_pem: c,
                key_pem: k,
            });
        }
        let pair = self.issue(
            "ros-apiserver",
            &[],
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        write_private(&key, &pair.key_pem)?;
        write_atomic(&crt, pair.cert_pem.as_bytes(), 0o644)?;
        write_atomic(&list, want.as_bytes(), 0o644)?;
        Ok(pair)
    }

    /// A serving certificate for an agent's endpoint (made at each start; not kept).
    pub fn serving_for(&self, node: &str, sans: &[String]) -> Result<Pair, PkiError> {
        self.issue(
            &format!("system:node:{node}"),
            &["system:nodes"],
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// The admin's client certificate, made once and kept.
    pub fn admin(&self) -> Result<Pair, PkiError> {
        let (crt, key) = (self.dir.join("admin.crt"), self.dir.join("admin.key"));
        if let (Ok(c), Ok(k)) = (fs::read_to_string(&crt), fs::read_to_string(&key)) {
            return Ok(Pair {
                cert_pem: c,
                key_pem: k,
            });
        }
        let pair = self.client("system:admin", &["system:masters"])?;
        write_private(&key, &pair.key_pem)?;
        write_atomic(&crt, pair.cert_pem.as_bytes(), 0o644)?;
        Ok(pair)
    }

    /// The CA as rustls reads it.
    pub fn ca_der(&self) -> Result<CertificateDer<'static>, PkiError> {
        CertificateDer::from_pem_slice(self.ca_pem.as_bytes())
            .map_err(|e| PkiError::Make(format!("the CA: {e}")))
    }

    /// An admin kubeconfig as k3s writes it: cluster, user and context named `default`.
    pub fn kubeconfig(&self, server: &str) -> Result<String, PkiError> {
        let admin = self.admin()?;
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        Ok(format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: default\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\ncontexts:\n- name: default\n  context:\n    cluster: default\n    user: default\ncurrent-context: default\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b(&self.ca_pem),
            b(&admin.cert_pem),
            b(&admin.key_pem)
        ))
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn write_private(path: &Path, text: &str) -> Result<(), PkiError> {
    write_atomic(path, text.as_bytes(), 0o600)
}

/// Written beside, synced, renamed: a crash leaves the old file or the new one.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| file_err(&tmp, e))?;
    f.write_all(data).map_err(|e| file_err(&tmp, e))?;
    f.sync_all().map_err(|e| file_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_kept_and_signs_clients() -> Result<(), PkiError> {
        let d = tempfile::tempdir().map_err(|e| PkiError::Make(e.to_string()))?;
        let a = Pki::open(d.path())?;
        let b = Pki::open(d.path())?;
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.ca_hash().len(), 64);
        let s1 = a.serving(&["127.0.0.1".into(), "node1".into()])?;
        let s2 = b.serving(&["127.0.0.1".into(), "node1".into()])?;
        assert_eq!(s1.cert_pem, s2.cert_pem);
        let s3 = b.serving(&["127.0.0.1".into(), "10.0.2.15".into()])?;
        assert_ne!(s1.cert_pem, s3.cert_pem);
        let c = a.client("system:node:n1", &["system:nodes"])?;
        assert!(c.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        Ok(())
    }
}
