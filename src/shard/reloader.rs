//! What SIGHUP reloads while the broker runs: the login keys (`[auth] secret_file`, the files
//! of `secret_dir`) and the TLS certificate and key (`[tls]`). Each is read and checked in
//! full first; a value that fails to load leaves the current one in place, and the failure is
//! logged with the reason. New logins and handshakes use the new values (each shard picks them
//! up at its next login, see [`crate::reload`]); connections already open are not touched.

use std::sync::Arc;

use super::gate::GateShared;
use crate::auth::{self, PrimaryKey};
use crate::config::Config;

/// Reloads the broker's keys and certificate; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct ReloadHandle {
    cfg: Arc<Config>,
    primary: PrimaryKey,
    gate: GateShared,
}

/// The outcome of one reload, per part: the new generation, or why the old value stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub keys: Result<u64, String>,
    /// None: TLS is off.
    pub tls: Option<Result<u64, String>>,
}

impl ReloadHandle {
    pub(super) fn new(cfg: Arc<Config>, primary: PrimaryKey, gate: GateShared) -> ReloadHandle {
        ReloadHandle { cfg, primary, gate }
    }

    pub fn tls_on(&self) -> bool {
        self.gate.tls.is_some()
    }

    /// Reads everything again and swaps in what loaded (see the module doc); logs each part.
    pub fn reload(&self) -> Reloaded {
        let keys = self
            .primary
            .reread()
            .and_then(|primary| auth::verifier_for(&self.cfg.auth, &primary))
            .map_err(|e| e.to_string())
            .map(|(verifier, ids)| {
                let generation = self.gate.verifier.replace(verifier);
                tracing::info!(generation, keys = ?ids, "auth keys reloaded (generation {generation})");
                generation
            });
        if let Err(e) = &keys {
            tracing::error!(error = %e, "auth keys not reloaded; the previous keys stay in use");
        }
        let tls = match (&self.gate.tls, &self.cfg.tls.files) {
            (Some(shared), Some((cert, key))) => {
                let outcome = crate::wire::tls::server_config(cert, key)
                    .map(|config| {
                        let generation = shared.replace(config);
                        tracing::info!(
                            generation,
                            "tls certificate reloaded (generation {generation})"
                        );
                        generation
                    })
                    .map_err(|e| e.to_string());
                if let Err(e) = &outcome {
                    tracing::error!(error = %e, "tls certificate not reloaded; the previous one stays in use");
                }
                Some(outcome)
            }
            _ => None,
        };
        Reloaded { keys, tls }
    }
}
