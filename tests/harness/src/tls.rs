//! Test certificates for TLS scenarios, made at test time with rcgen: a CA, and broker
//! certificates it signs for 127.0.0.1 and localhost.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};

/// A certificate authority whose PEM lives in a test directory.
pub struct TestCa {
    dir: PathBuf,
    name: String,
    cert: Certificate,
    key: KeyPair,
}

/// A broker certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestCa {
    /// A new CA named `name`, its certificate written to `dir/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("ringpost test CA {name}"));
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca certificate");
        std::fs::write(dir.join(format!("{name}-ca.pem")), cert.pem()).expect("write ca");
        TestCa {
            dir: dir.to_path_buf(),
            name: name.to_owned(),
            cert,
            key,
        }
    }

    /// The CA certificate's PEM file (what clients trust).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// A broker certificate for 127.0.0.1 and localhost signed by this CA, written to
    /// `dir/<name>-<tag>-{cert,key}.pem`.
    pub fn issue(&self, tag: &str) -> ServerCert {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("ringpost test broker {tag}"));
        let key = KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("server certificate");
        let out = ServerCert {
            cert_file: self.dir.join(format!("{}-{tag}-cert.pem", self.name)),
            key_file: self.dir.join(format!("{}-{tag}-key.pem", self.name)),
        };
        std::fs::write(&out.cert_file, cert.pem()).expect("write cert");
        std::fs::write(&out.key_file, key.serialize_pem()).expect("write key");
        out
    }
}

impl ServerCert {
    /// The `[tls]` lines for a broker config.
    pub fn config_lines(&self) -> String {
        format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"",
            self.cert_file.display(),
            self.key_file.display()
        )
    }

    /// Replaces this certificate's files with `other`'s (for a reload).
    pub fn replace_with(&self, other: &ServerCert) {
        std::fs::copy(&other.cert_file, &self.cert_file).expect("copy cert");
        std::fs::copy(&other.key_file, &self.key_file).expect("copy key");
    }
}
