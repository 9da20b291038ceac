//! Login tokens and the shared secret.
//!
//! Tokens are JWTs signed with HS256 by the app backend: `sub` is the user ID (1..=128 bytes),
//! `exp` (unix seconds) is required. Any other algorithm — including `none` and the other HMAC
//! sizes — is refused, as are missing claims and expired tokens (with `[auth] leeway` of clock
//! skew allowed). User IDs starting with [`RESERVED_PREFIX`] (`system:`) belong to the
//! server API's senders and cannot log in.
//!
//! The HMAC key comes from the environment variable [`SECRET_ENV`] if set, else from
//! `[auth] secret_file`: the file's content with surrounding whitespace trimmed, so app backends
//! can use the very same text. If the file does not exist the broker creates it with 32 random
//! bytes written as 64 hex characters, mode 0600. [`KeyFile`] is that logic, shared with the
//! admin API's bearer token.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::protocol::MAX_USER_ID;

/// Environment variable that overrides the secret file.
pub const SECRET_ENV: &str = "RINGPOST_AUTH_SECRET";

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
}

/// Verifies login tokens against one HMAC key.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    pub fn new(secret: &[u8], leeway: Duration) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = leeway.as_secs();
        validation.validate_exp = true;
        Verifier {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Returns the user ID (`sub`) of a valid token.
    pub fn verify(&self, token: &str) -> Result<String, AuthError> {
        // `decode` deserializes into the claims type *before* checking required claims, so a
        // struct with a mandatory `exp`/`sub` would turn "missing claim" into a JSON error.
        // Only `sub` is read here, optionally; jsonwebtoken checks presence and `exp` itself.
        let data = jsonwebtoken::decode::<ReceivedClaims>(token, &self.key, &self.validation)
            .map_err(|e| reason(token, &e))?;
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

/// Maps a jsonwebtoken error to [`AuthError`] with a reason a client developer can act on.
fn reason(token: &str, e: &jsonwebtoken::errors::Error) -> AuthError {
    let failed = |r: &str| AuthError::Failed(r.to_owned());
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::InvalidSignature => failed("bad signature"),
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
    let claims = Claims {
        sub: user.to_owned(),
        exp: exp_unix,
        iat: Some(now_unix()),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| AuthError::Failed(format!("cannot sign token: {e}")))
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
