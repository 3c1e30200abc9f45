//! Writes a fresh test PKI into a folder: `ca.pem`; `server.pem` and
//! `server.key` (for localhost, 127.0.0.1, ::1 and example.com);
//! `client.pem` and `client.key` (signed by the same CA); `other_ca.pem` (a
//! CA that signed nothing, for "wrong CA" tests). Nothing is checked in:
//! tests and the demo run this first.
//!
//! Usage: grpc_certs DIR

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::path::Path;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn ca(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

fn leaf(
    dir: &Path,
    name: &str,
    sans: &[&str],
    issuer: &CertifiedIssuer<'static, KeyPair>,
) -> Result<()> {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem())?;
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
    Ok(())
}

fn main() -> Result<()> {
    let dir = std::env::args().nth(1).ok_or("usage: grpc_certs DIR")?;
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir)?;
    let ca1 = ca("resty-ffi test CA")?;
    std::fs::write(dir.join("ca.pem"), ca1.pem())?;
    leaf(
        dir,
        "server",
        &["localhost", "127.0.0.1", "::1", "example.com"],
        &ca1,
    )?;
    leaf(dir, "client", &["client.example.com"], &ca1)?;
    std::fs::write(dir.join("other_ca.pem"), ca("resty-ffi other CA")?.pem())?;
    Ok(())
}
