//! A throw-away CA and a server certificate for loopback addresses,
//! written as PEM files for docker-registry, sochi (`--ca-file`), reqwest
//! and skopeo (a cert dir holding `ca.crt`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The PEM files of one test CA and its server certificate.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate (trust anchor for clients).
    pub ca: PathBuf,
    /// The server certificate, signed by the CA.
    pub cert: PathBuf,
    /// The server's private key (PKCS#8).
    pub key: PathBuf,
    /// A directory holding only `ca.crt`, as skopeo's `--*-cert-dir` wants.
    pub cert_dir: PathBuf,
}

/// Writes a new CA and a server certificate for `ip`, `127.0.0.1`,
/// `127.0.0.2`, `::1` and `localhost` under `dir`.
pub fn write_tls_files(dir: &Path, ip: Ipv4Addr) -> TlsFiles {
    let (ca_pem, cert_pem, key_pem) = match generate(ip) {
        Ok(pems) => pems,
        Err(err) => panic!("generating the test CA and certificate: {err}"),
    };
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
        cert_dir: dir.join("certs.d"),
    };
    write(&files.ca, &ca_pem);
    write(&files.cert, &cert_pem);
    write(&files.key, &key_pem);
    if let Err(err) = std::fs::create_dir_all(&files.cert_dir) {
        panic!("creating {}: {err}", files.cert_dir.display());
    }
    write(&files.cert_dir.join("ca.crt"), &ca_pem);
    files
}

fn write(path: &Path, contents: &str) {
    if let Err(err) = std::fs::write(path, contents) {
        panic!("writing {}: {err}", path.display());
    }
}

/// (CA certificate, server certificate, server key), all PEM.
fn generate(ip: Ipv4Addr) -> Result<(String, String, String), rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    let mut ca_name = DistinguishedName::new();
    ca_name.push(DnType::CommonName, "sochi e2e test CA");
    ca_params.distinguished_name = ca_name;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut names = vec![ip.to_string()];
    for name in ["127.0.0.1", "127.0.0.2", "::1", "localhost"] {
        if !names.iter().any(|known| known == name) {
            names.push(name.to_string());
        }
    }
    let mut server_params = CertificateParams::new(names)?;
    let mut server_name = DistinguishedName::new();
    server_name.push(DnType::CommonName, ip.to_string());
    server_params.distinguished_name = server_name;
    server_params.is_ca = IsCa::ExplicitNoCa;
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params.signed_by(&server_key, &issuer)?;

    Ok((ca_cert.pem(), server_cert.pem(), server_key.serialize_pem()))
}
