//! `--tls` / `--ca-file` / `--tls-name`, shared by `chat` and every `load` scenario.

use std::path::PathBuf;
use std::sync::Arc;

use ringpost::client::{ClientOptions, TlsClientConfig, TlsOptions};

/// A CA file, read and checked when the arguments are parsed.
#[derive(Clone)]
pub struct CaFile {
    pub path: PathBuf,
    pub config: Arc<TlsClientConfig>,
}

impl std::fmt::Debug for CaFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

/// clap value parser: reads the PEM file and builds the client config from it.
pub fn parse_ca_file(s: &str) -> Result<CaFile, String> {
    let path = PathBuf::from(s);
    let pem = std::fs::read(&path).map_err(|e| format!("cannot read {s}: {e}"))?;
    let config = ringpost::client::tls_client_config(&pem).map_err(|e| format!("{s}: {e}"))?;
    Ok(CaFile { path, config })
}

#[derive(clap::Args, Debug, Clone)]
pub struct TlsArgs {
    /// Connect with TLS (the broker's `[tls]` is on); needs --ca-file.
    #[arg(long, requires = "ca_file")]
    pub tls: bool,
    /// PEM file of the CA certificate(s) that signed the broker's certificate.
    #[arg(long, requires = "tls", value_parser = parse_ca_file)]
    pub ca_file: Option<CaFile>,
    /// Name the broker's certificate must be for (default: the IP address connected to).
    #[arg(long, requires = "tls")]
    pub tls_name: Option<String>,
}

impl TlsArgs {
    /// `opts` with TLS when `--tls` is given.
    pub fn apply(&self, mut opts: ClientOptions) -> Result<ClientOptions, String> {
        let Some(ca) = self.ca_file.as_ref().filter(|_| self.tls) else {
            return Ok(opts);
        };
        opts.tls = Some(TlsOptions::for_addr(ca.config.clone(), opts.addr));
        match &self.tls_name {
            Some(name) => opts.tls_name(name).map_err(|e| e.to_string()),
            None => Ok(opts),
        }
    }

    /// The same arguments for a child process.
    pub fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let (true, Some(ca)) = (self.tls, &self.ca_file) {
            out.push("--tls".into());
            out.push("--ca-file".into());
            out.push(ca.path.display().to_string());
            if let Some(name) = &self.tls_name {
                out.push("--tls-name".into());
                out.push(name.clone());
            }
        }
        out
    }
}
