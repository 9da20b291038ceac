//! Login tokens and the shared secret.
//!
//! Tokens are JWTs signed with HS256 by the app backend: `sub` is the user ID (1..=128 bytes),
//! `exp` (unix seconds) is required. Any other algorithm — including `none` and the other HMAC
//! sizes — is refused, as are missing claims and expired tokens (with `[auth] leeway` of clock
//! skew allowed). User IDs starting with [`RESERVED_PREFIX`] (`system:`) belong to the
//! server API's senders and cannot log in. With `[auth] issuer` / `audience` set, `iss` /
//! `aud` are required and must match; a token that carries an `aud` while no audience is
//! configured is refused (RFC 7519 4.1.3: a recipient that does not identify with the audience
//! must reject the token).
//!
//! The primary HMAC key comes from the environment variable [`SECRET_ENV`] if set, else from
//! `[auth] secret_file`: the file's content with surrounding whitespace trimmed, so app backends
//! can use the very same text. If the file does not exist the broker creates it with 32 random
//! bytes written as 64 hex characters, mode 0600. [`KeyFile`] is that logic, shared with the
//! admin API's bearer token.
//!
//! ## Several keys at once (rotation without downtime)
//!
//! `[auth] secret_dir` names a directory of further keys: every regular file in it whose name
//! does not start with `.` holds one key, and its file name is the key's ID. The primary key's
//! ID is its file name too (or `env` when it comes from [`SECRET_ENV`]). A token whose header
//! has a `kid` is checked against that key alone (an unknown `kid` is refused); a token
//! without one is checked against every key in turn (at most [`MAX_KEYS`], so a login costs
//! at most that many HMACs). SIGHUP re-reads the primary file and the directory
//! ([`KeySet::load`]); new logins use the new set, connections already logged in are not
//! touched. Rotating: add the new key's file, SIGHUP, let the app backend mint with the new
//! `kid`, wait for the old tokens to expire, remove the old file, SIGHUP.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::protocol::MAX_USER_ID;

/// Environment variable that overrides the secret file.
pub const SECRET_ENV: &str = "RINGPOST_AUTH_SECRET";
/// Keys accepted at once (primary plus `secret_dir`).
pub const MAX_KEYS: usize = 16;
/// Key ID of a primary key taken from [`SECRET_ENV`].
pub const ENV_KID: &str = "env";

/// User IDs with this prefix are reserved for senders of the server API (`POST
/// /v1/messages` with `from = "system:…"`); no client may log in as one.
pub const RESERVED_PREFIX: &str = "system:";
/// Who the server API's group operations are recorded as (the `from_user` of membership events
/// it makes).
pub const RESERVED_ADMIN_ACTOR: &str = "system:admin";

/// True for a user ID reserved for the server API's senders.
pub fn is_reserved(user: &str) -> bool {
    user.starts_with(RESERVED_PREFIX)
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("token expired")]
    Expired,
    #[error("authentication failed: {0}")]
    Failed(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
}

/// The claims a token must carry beyond `sub` and `exp` (`[auth] issuer`, `audience`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expect {
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's audiences), if set.
    pub audience: Option<String>,
}

/// Verifies login tokens against a set of HMAC keys (see the module doc).
pub struct Verifier {
    /// (key ID, key), the primary first.
    keys: Vec<(String, DecodingKey)>,
    validation: Validation,
}

impl Verifier {
    /// A verifier with one key and no `iss`/`aud` requirement.
    pub fn new(secret: &[u8], leeway: Duration) -> Verifier {
        Verifier::with_keys(&KeySet::single(secret.to_vec()), leeway, &Expect::default())
    }

    pub fn with_keys(keys: &KeySet, leeway: Duration, expect: &Expect) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &expect.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        if let Some(aud) = &expect.audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation.leeway = leeway.as_secs();
        validation.validate_exp = true;
        Verifier {
            keys: keys
                .keys
                .iter()
                .map(|(kid, k)| (kid.clone(), DecodingKey::from_secret(k)))
                .collect(),
            validation,
        }
    }

    /// Returns the user ID (`sub`) of a valid token.
    pub fn verify(&self, token: &str) -> Result<String, AuthError> {
        // `decode` deserializes into the claims type *before* checking required claims, so a
        // struct with a mandatory `exp`/`sub` would turn "missing claim" into a JSON error.
        // Only `sub` is read here, optionally; jsonwebtoken checks presence and `exp` itself.
        let kid = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid);
        let decode = |key: &DecodingKey| {
            jsonwebtoken::decode::<ReceivedClaims>(token, key, &self.validation)
                .map_err(|e| reason(token, &e))
        };
        let data = match kid {
            Some(kid) => match self.keys.iter().find(|(id, _)| *id == kid) {
                Some((_, key)) => decode(key)?,
                None => {
                    return Err(AuthError::Failed(format!(
                        "unknown key id `{kid:.64}` (kid)"
                    )))
                }
            },
            None => {
                // Without a kid, every key is tried; only a bad signature moves to the next
                // key (any other refusal means this key signed it).
                let mut outcome = Err(AuthError::Failed(BAD_SIGNATURE.into()));
                for (_, key) in &self.keys {
                    outcome = decode(key);
                    if !matches!(&outcome, Err(AuthError::Failed(r)) if r == BAD_SIGNATURE) {
                        break;
                    }
                }
                outcome?
            }
        };
        let sub = data
            .claims
            .sub
            .ok_or_else(|| AuthError::Failed("missing claim `sub`".into()))?;
        if sub.is_empty() || sub.len() > MAX_USER_ID {
            return Err(AuthError::Failed(format!(
                "`sub` must be 1..={MAX_USER_ID} bytes, got {}",
                sub.len()
            )));
        }
        if is_reserved(&sub) {
            return Err(AuthError::Failed(format!(
                "user IDs starting with `{RESERVED_PREFIX}` are reserved for the server API"
            )));
        }
        Ok(sub)
    }
}

/// What `verify` reads from a token's claims; everything else is checked by jsonwebtoken.
#[derive(Debug, Deserialize)]
struct ReceivedClaims {
    #[serde(default)]
    sub: Option<String>,
}

const ALG_NOT_ALLOWED: &str = "algorithm not allowed (HS256 only)";
const BAD_SIGNATURE: &str = "bad signature";

/// Maps a jsonwebtoken error to [`AuthError`] with a reason a client developer can act on.
fn reason(token: &str, e: &jsonwebtoken::errors::Error) -> AuthError {
    let failed = |r: &str| AuthError::Failed(r.to_owned());
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::InvalidSignature => failed(BAD_SIGNATURE),
        ErrorKind::InvalidIssuer => failed("`iss` is not this broker's [auth] issuer"),
        ErrorKind::InvalidAudience => failed(
            "`aud` does not name this broker's [auth] audience (a token with an `aud` needs [auth] audience set to it)",
        ),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => failed(ALG_NOT_ALLOWED),
        ErrorKind::MissingRequiredClaim(c) => AuthError::Failed(format!("missing claim `{c}`")),
        ErrorKind::InvalidClaimFormat(c) => {
            AuthError::Failed(format!("claim `{c}` has the wrong type"))
        }
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => failed("not a JWT"),
        // A JSON error is either the header (e.g. `"alg":"none"`, which jsonwebtoken's
        // `Algorithm` cannot even represent) or the claims; re-reading the header tells which.
        ErrorKind::Json(_) => match jsonwebtoken::decode_header(token) {
            Err(h) => match h.kind() {
                ErrorKind::Json(j) if j.to_string().contains("unknown variant") => {
                    failed(ALG_NOT_ALLOWED)
                }
                ErrorKind::Json(j) => AuthError::Failed(format!("malformed JWT header: {j}")),
                _ => failed("not a JWT"),
            },
            Ok(_) => failed("claims are not a JSON object with a string `sub`"),
        },
        _ => AuthError::Failed(e.to_string()),
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Mints an HS256 token for `user` valid for `ttl` (tools and tests; app backends do the same).
pub fn mint(secret: &[u8], user: &str, ttl: Duration) -> Result<String, AuthError> {
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
    mint_with_exp(secret, user, now_unix().saturating_add(ttl))
}

/// Mints with an explicit `exp` (unix seconds), e.g. one in the past for expiry tests.
pub fn mint_with_exp(secret: &[u8], user: &str, exp_unix: i64) -> Result<String, AuthError> {
    mint_full(secret, user, exp_unix, &Mint::default())
}

/// Optional parts of a minted token: the header's `kid`, the `iss` and `aud` claims.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mint {
    pub kid: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// Mints an HS256 token for `user` valid for `ttl`, with `extra`'s kid/iss/aud.
pub fn mint_with(
    secret: &[u8],
    user: &str,
    ttl: Duration,
    extra: &Mint,
) -> Result<String, AuthError> {
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
    mint_full(secret, user, now_unix().saturating_add(ttl), extra)
}

fn mint_full(secret: &[u8], user: &str, exp_unix: i64, extra: &Mint) -> Result<String, AuthError> {
    let claims = Claims {
        sub: user.to_owned(),
        exp: exp_unix,
        iat: Some(now_unix()),
        iss: extra.issuer.clone(),
        aud: extra.audience.clone(),
    };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = extra.kid.clone();
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret))
        .map_err(|e| AuthError::Failed(format!("cannot sign token: {e}")))
}

/// The keys a [`Verifier`] accepts: (key ID, key bytes), the primary first.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key bytes.
        f.debug_list()
            .entries(self.keys.iter().map(|(kid, _)| kid))
            .finish()
    }
}

impl KeySet {
    /// One key, with the ID `primary`.
    pub fn single(secret: Vec<u8>) -> KeySet {
        KeySet {
            keys: vec![("primary".into(), secret)],
        }
    }

    /// The primary key (`kid`: the secret file's name, or [`ENV_KID`]) plus every key in
    /// `dir` (see the module doc). Err names the file or directory that could not be read.
    pub fn load(primary: (String, Vec<u8>), dir: Option<&Path>) -> Result<KeySet, SecretError> {
        let mut keys = vec![primary];
        if let Some(dir) = dir {
            let read_dir = |source| SecretError::Read {
                what: "the key directory ([auth] secret_dir)",
                env: None,
                path: dir.to_path_buf(),
                source,
            };
            let mut names: Vec<(String, PathBuf)> = Vec::new();
            for entry in std::fs::read_dir(dir).map_err(read_dir)? {
                let entry = entry.map_err(read_dir)?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue; // a key ID must be text
                };
                let is_file = std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file());
                if !name.starts_with('.') && is_file {
                    names.push((name, entry.path()));
                }
            }
            names.sort();
            for (kid, path) in names {
                if keys.iter().any(|(k, _)| *k == kid) {
                    return Err(SecretError::DuplicateKid(kid));
                }
                keys.push((kid, read_secret_file(&path)?));
            }
        }
        if keys.len() > MAX_KEYS {
            return Err(SecretError::TooMany(keys.len()));
        }
        Ok(KeySet { keys })
    }

    /// The key IDs, primary first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(kid, _)| kid.as_str())
    }
}

/// The primary key and where it came from, so that a reload can read it again.
#[derive(Clone)]
pub struct PrimaryKey {
    pub secret: Vec<u8>,
    pub source: SecretSource,
}

impl PrimaryKey {
    /// The key as its source holds it now (the environment's value does not change).
    pub fn reread(&self) -> Result<PrimaryKey, SecretError> {
        match &self.source {
            SecretSource::Env => Ok(self.clone()),
            SecretSource::File(p) | SecretSource::Created(p) => Ok(PrimaryKey {
                secret: read_secret_file(p)?,
                source: SecretSource::File(p.clone()),
            }),
        }
    }
}

/// The verifier `[auth]` describes: `primary` plus `secret_dir`'s keys, `issuer`, `audience`.
pub fn verifier_for(
    cfg: &crate::config::AuthConfig,
    primary: &PrimaryKey,
) -> Result<(Verifier, KeySet), SecretError> {
    let keys = KeySet::load(
        (primary_kid(&primary.source), primary.secret.clone()),
        cfg.secret_dir.as_deref(),
    )?;
    let expect = Expect {
        issuer: cfg.issuer.clone(),
        audience: cfg.audience.clone(),
    };
    Ok((Verifier::with_keys(&keys, cfg.leeway, &expect), keys))
}

/// The key ID of a primary secret from `source` (its file name, or [`ENV_KID`]).
pub fn primary_kid(source: &SecretSource) -> String {
    let name = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("primary")
            .to_owned()
    };
    match source {
        SecretSource::Env => ENV_KID.into(),
        SecretSource::File(p) | SecretSource::Created(p) => name(p),
    }
}

/// Where a key came from (for the startup log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env,
    File(PathBuf),
    Created(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {what} {path}: {source}{}", hint("create it, or set", *.env))]
    Read {
        what: &'static str,
        env: Option<&'static str>,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create {what} {path}: {source}{}", hint("check that its directory is writable, or set", *.env))]
    Create {
        what: &'static str,
        env: Option<&'static str>,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} is empty")]
    Empty { what: &'static str, path: PathBuf },
    #[error("two keys have the ID `{0}` ([auth] secret_file and a file of [auth] secret_dir share a name); rename one")]
    DuplicateKid(String),
    #[error("{0} auth keys (the secret file plus [auth] secret_dir); at most {MAX_KEYS} are accepted at once, remove old ones")]
    TooMany(usize),
}

fn hint(advice: &str, env: Option<&str>) -> String {
    env.map(|e| format!(" ({advice} {e})")).unwrap_or_default()
}

/// A key kept in a file, with an environment variable that overrides it: the login tokens'
/// HMAC secret ([`AUTH_SECRET`]) and the admin API's bearer token (`admin::ADMIN_TOKEN`).
///
/// The key is the file's content with surrounding whitespace trimmed; a missing file is
/// created (by the broker only) with 32 random bytes written as 64 hex characters, mode 0600.
#[derive(Debug, Clone, Copy)]
pub struct KeyFile {
    /// What the key is, for messages: "the auth secret".
    pub what: &'static str,
    /// The environment variable that overrides the file.
    pub env: &'static str,
}

/// The HMAC key of login tokens (`[auth] secret_file`, [`SECRET_ENV`]).
pub const AUTH_SECRET: KeyFile = KeyFile {
    what: "the auth secret",
    env: SECRET_ENV,
};

impl KeyFile {
    /// The key: `env_value` if non-empty, else `path`'s content (created if missing).
    pub fn load_or_create(
        &self,
        path: &Path,
        env_value: Option<String>,
    ) -> Result<(Vec<u8>, SecretSource), SecretError> {
        match self.load(path, env_value) {
            Err(SecretError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                self.create(path)?;
                let key = self.read(path, Some(self.env))?;
                Ok((key, SecretSource::Created(path.to_path_buf())))
            }
            other => other,
        }
    }

    /// The key: `env_value` if non-empty, else `path`'s content (never created).
    pub fn load(
        &self,
        path: &Path,
        env_value: Option<String>,
    ) -> Result<(Vec<u8>, SecretSource), SecretError> {
        if let Some(v) = env_value.filter(|v| !v.trim().is_empty()) {
            return Ok((v.trim().as_bytes().to_vec(), SecretSource::Env));
        }
        let key = self.read(path, Some(self.env))?;
        Ok((key, SecretSource::File(path.to_path_buf())))
    }

    /// The key from an existing file only (the environment variable is not consulted, so
    /// errors do not suggest it).
    pub fn read_file(&self, path: &Path) -> Result<Vec<u8>, SecretError> {
        self.read(path, None)
    }

    fn read(&self, path: &Path, env: Option<&'static str>) -> Result<Vec<u8>, SecretError> {
        let bytes = std::fs::read(path).map_err(|source| SecretError::Read {
            what: self.what,
            env,
            path: path.to_path_buf(),
            source,
        })?;
        let key = bytes.trim_ascii();
        if key.is_empty() {
            return Err(SecretError::Empty {
                what: self.what,
                path: path.to_path_buf(),
            });
        }
        Ok(key.to_vec())
    }

    fn create(&self, path: &Path) -> Result<(), SecretError> {
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source| SecretError::Create {
            what: self.what,
            env: Some(self.env),
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let random: [u8; 32] = rand::random();
        let mut text: String = random.iter().map(|b| format!("{b:02x}")).collect();
        text.push('\n');
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        file.write_all(text.as_bytes()).map_err(err)?;
        file.sync_all().map_err(err)
    }
}

/// The login HMAC key: `env_value` if non-empty, else `path`'s content (created if missing).
pub fn load_or_create_secret(
    path: &Path,
    env_value: Option<String>,
) -> Result<(Vec<u8>, SecretSource), SecretError> {
    AUTH_SECRET.load_or_create(path, env_value)
}

/// Reads the login HMAC key from an existing secret file (never creates it, ignores
/// [`SECRET_ENV`]).
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, SecretError> {
    AUTH_SECRET.read_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";

    fn verifier() -> Verifier {
        Verifier::new(SECRET, Duration::from_secs(5))
    }

    #[test]
    fn minted_tokens_verify() {
        let t = mint(SECRET, "alice", Duration::from_secs(60)).unwrap();
        assert_eq!(verifier().verify(&t).unwrap(), "alice");
    }

    #[test]
    fn wrong_secret_and_expiry() {
        let t = mint(b"other", "alice", Duration::from_secs(60)).unwrap();
        assert_eq!(
            verifier().verify(&t),
            Err(AuthError::Failed("bad signature".into()))
        );
        let old = mint_with_exp(SECRET, "alice", now_unix() - 3600).unwrap();
        assert_eq!(verifier().verify(&old), Err(AuthError::Expired));
        let within_leeway = mint_with_exp(SECRET, "alice", now_unix() - 2).unwrap();
        assert_eq!(verifier().verify(&within_leeway).unwrap(), "alice");
    }

    #[test]
    fn other_algorithms_are_refused() {
        let claims = Claims {
            sub: "alice".into(),
            exp: now_unix() + 60,
            iat: None,
            iss: None,
            aud: None,
        };
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let t = jsonwebtoken::encode(
                &Header::new(alg),
                &claims,
                &EncodingKey::from_secret(SECRET),
            )
            .unwrap();
            assert_eq!(
                verifier().verify(&t),
                Err(AuthError::Failed(ALG_NOT_ALLOWED.into())),
                "{alg:?}"
            );
        }
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(format!(r#"{{"sub":"alice","exp":{}}}"#, now_unix() + 60))
        );
        assert_eq!(
            verifier().verify(&none),
            Err(AuthError::Failed(ALG_NOT_ALLOWED.into()))
        );
    }

    #[test]
    fn missing_or_bad_claims_are_refused() {
        #[derive(Serialize)]
        struct NoExp {
            sub: String,
        }
        #[derive(Serialize)]
        struct NoSub {
            exp: i64,
        }
        let key = EncodingKey::from_secret(SECRET);
        let h = Header::new(Algorithm::HS256);
        let t = jsonwebtoken::encode(&h, &NoExp { sub: "a".into() }, &key).unwrap();
        assert_eq!(
            verifier().verify(&t),
            Err(AuthError::Failed("missing claim `exp`".into()))
        );
        let t = jsonwebtoken::encode(
            &h,
            &NoSub {
                exp: now_unix() + 60,
            },
            &key,
        )
        .unwrap();
        assert_eq!(
            verifier().verify(&t),
            Err(AuthError::Failed("missing claim `sub`".into()))
        );
        let empty = mint(SECRET, "", Duration::from_secs(60)).unwrap();
        assert!(matches!(
            verifier().verify(&empty),
            Err(AuthError::Failed(_))
        ));
        let long = mint(SECRET, &"x".repeat(129), Duration::from_secs(60)).unwrap();
        assert!(matches!(
            verifier().verify(&long),
            Err(AuthError::Failed(_))
        ));
    }

    #[test]
    fn wrongly_typed_claims_and_headers_are_named() {
        #[derive(Serialize)]
        struct NumSub {
            sub: u32,
            exp: i64,
        }
        #[derive(Serialize)]
        struct StrExp {
            sub: &'static str,
            exp: &'static str,
        }
        let key = EncodingKey::from_secret(SECRET);
        let h = Header::new(Algorithm::HS256);
        let exp = now_unix() + 60;
        let t = jsonwebtoken::encode(&h, &NumSub { sub: 7, exp }, &key).unwrap();
        assert_eq!(
            verifier().verify(&t),
            Err(AuthError::Failed(
                "claims are not a JSON object with a string `sub`".into()
            ))
        );
        // jsonwebtoken treats a non-numeric `exp` as absent.
        let t = jsonwebtoken::encode(
            &h,
            &StrExp {
                sub: "alice",
                exp: "soon",
            },
            &key,
        )
        .unwrap();
        assert_eq!(
            verifier().verify(&t),
            Err(AuthError::Failed("missing claim `exp`".into()))
        );
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let no_alg = format!(
            "{}.{}.sig",
            b64.encode(br#"{"typ":"JWT"}"#),
            b64.encode(b"{}")
        );
        let e = verifier().verify(&no_alg).unwrap_err().to_string();
        assert!(e.contains("malformed JWT header"), "{e}");
    }

    fn keys(pairs: &[(&str, &[u8])]) -> KeySet {
        KeySet {
            keys: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
        }
    }

    fn minted(secret: &[u8], kid: Option<&str>, iss: Option<&str>, aud: Option<&str>) -> String {
        let extra = Mint {
            kid: kid.map(Into::into),
            issuer: iss.map(Into::into),
            audience: aud.map(Into::into),
        };
        mint_with(secret, "alice", Duration::from_secs(60), &extra).unwrap()
    }

    #[test]
    fn several_keys_kid_picks_one_and_without_kid_each_is_tried() {
        let v = Verifier::with_keys(
            &keys(&[("old", b"k-old"), ("new", b"k-new")]),
            Duration::ZERO,
            &Expect::default(),
        );
        for secret in [&b"k-old"[..], b"k-new"] {
            assert_eq!(
                v.verify(&minted(secret, None, None, None)).unwrap(),
                "alice"
            );
        }
        assert_eq!(
            v.verify(&minted(b"k-new", Some("new"), None, None))
                .unwrap(),
            "alice"
        );
        // The kid decides: the right key under the wrong kid is a bad signature.
        assert_eq!(
            v.verify(&minted(b"k-new", Some("old"), None, None)),
            Err(AuthError::Failed(BAD_SIGNATURE.into()))
        );
        let e = v
            .verify(&minted(b"k-new", Some("gone"), None, None))
            .unwrap_err();
        assert!(e.to_string().contains("unknown key id `gone`"), "{e}");
        assert_eq!(
            v.verify(&minted(b"k-other", None, None, None)),
            Err(AuthError::Failed(BAD_SIGNATURE.into()))
        );
        // An expired token signed by the second key says expired, not bad signature.
        let old = mint_with_exp(b"k-new", "alice", now_unix() - 3600).unwrap();
        assert_eq!(v.verify(&old), Err(AuthError::Expired));
    }

    #[test]
    fn issuer_and_audience_are_required_when_configured() {
        let expect = Expect {
            issuer: Some("https://backend.example".into()),
            audience: Some("ringpost".into()),
        };
        let v = Verifier::with_keys(&KeySet::single(SECRET.to_vec()), Duration::ZERO, &expect);
        let good = minted(
            SECRET,
            None,
            Some("https://backend.example"),
            Some("ringpost"),
        );
        assert_eq!(v.verify(&good).unwrap(), "alice");
        let cases = [
            (
                minted(SECRET, None, None, Some("ringpost")),
                "missing claim `iss`",
            ),
            (
                minted(SECRET, None, Some("https://backend.example"), None),
                "missing claim `aud`",
            ),
            (
                minted(SECRET, None, Some("evil"), Some("ringpost")),
                "`iss`",
            ),
            (
                minted(SECRET, None, Some("https://backend.example"), Some("other")),
                "`aud`",
            ),
        ];
        for (token, want) in cases {
            let e = v.verify(&token).unwrap_err().to_string();
            assert!(e.contains(want), "{e} should say {want}");
        }
        // Unconfigured: iss is not looked at, an aud is refused (RFC 7519 4.1.3).
        let plain = verifier();
        assert_eq!(
            plain
                .verify(&minted(SECRET, None, Some("x"), None))
                .unwrap(),
            "alice"
        );
        let e = plain
            .verify(&minted(SECRET, None, None, Some("ringpost")))
            .unwrap_err();
        assert!(e.to_string().contains("[auth] audience"), "{e}");
    }

    #[test]
    fn a_key_directory_is_loaded_sorted_skipping_dot_files() {
        let dir = std::env::temp_dir().join(format!("ringpost-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("subdir")).unwrap();
        std::fs::write(dir.join("k2"), "two\n").unwrap();
        std::fs::write(dir.join("k1"), "one").unwrap();
        std::fs::write(dir.join(".swp"), "ignored").unwrap();
        let set = KeySet::load(("auth.secret".into(), b"p".to_vec()), Some(&dir)).unwrap();
        assert_eq!(set.ids().collect::<Vec<_>>(), ["auth.secret", "k1", "k2"]);
        assert_eq!(set.keys[2].1, b"two");
        assert!(
            !format!("{set:?}").contains("two"),
            "Debug never shows key bytes"
        );
        let dup = KeySet::load(("k1".into(), b"p".to_vec()), Some(&dir)).unwrap_err();
        assert!(dup.to_string().contains("`k1`"), "{dup}");
        for i in 0..MAX_KEYS {
            std::fs::write(dir.join(format!("many-{i:02}")), "x").unwrap();
        }
        let many = KeySet::load(("p".into(), b"p".to_vec()), Some(&dir)).unwrap_err();
        assert!(matches!(many, SecretError::TooMany(_)), "{many}");
        std::fs::write(dir.join("k3"), " \n").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let missing = KeySet::load(("p".into(), b"p".to_vec()), Some(&dir)).unwrap_err();
        assert!(missing.to_string().contains("ringpost-keys"), "{missing}");
    }

    #[test]
    fn reserved_user_ids_cannot_log_in() {
        let t = mint(SECRET, "system:billing", Duration::from_secs(60)).unwrap();
        let e = verifier().verify(&t).unwrap_err().to_string();
        assert!(e.contains("reserved"), "{e}");
        let t = mint(SECRET, "systemic", Duration::from_secs(60)).unwrap();
        assert_eq!(verifier().verify(&t).unwrap(), "systemic");
    }

    #[test]
    fn garbage_tokens_fail_cleanly() {
        for t in ["", "abc", "a.b.c", &"x".repeat(10_000)] {
            assert!(
                matches!(verifier().verify(t), Err(AuthError::Failed(_))),
                "{t:.20}"
            );
        }
    }

    #[test]
    fn secret_file_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ringpost-auth-{}", std::process::id()));
        let path = dir.join("nested/auth.secret");
        let _ = std::fs::remove_dir_all(&dir);
        let (key, src) = load_or_create_secret(&path, None).unwrap();
        assert_eq!(src, SecretSource::Created(path.clone()));
        assert_eq!(key.len(), 64);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 65);
        let (again, src) = load_or_create_secret(&path, None).unwrap();
        assert_eq!((again, src), (key, SecretSource::File(path.clone())));
        let (env, src) = load_or_create_secret(&path, Some("from-env".into())).unwrap();
        assert_eq!((env.as_slice(), src), (&b"from-env"[..], SecretSource::Env));
        std::fs::write(&path, "  \n").unwrap();
        assert!(matches!(
            load_or_create_secret(&path, None),
            Err(SecretError::Empty { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let bad = Path::new("/proc/ringpost-cannot-exist/auth.secret");
        let e = load_or_create_secret(bad, None).unwrap_err().to_string();
        assert!(e.contains("/proc/ringpost-cannot-exist"), "{e}");
        assert!(
            e.contains(SECRET_ENV),
            "the broker honours {SECRET_ENV}: {e}"
        );
        let e = read_secret_file(bad).unwrap_err().to_string();
        assert!(
            !e.contains(SECRET_ENV),
            "read_secret_file ignores {SECRET_ENV}: {e}"
        );
    }
}
