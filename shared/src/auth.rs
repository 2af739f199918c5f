//! Who is calling. In AWS the HTTP API's JWT authorizer has verified the token and the handler
//! reads `sub` from the request context. Locally (`cargo lambda watch`) there is no authorizer, so
//! the handler verifies an HS256 token minted by the operator CLI itself. Either way a request
//! without a verified identity gets 401; there is no mode without authentication.

use crate::domain::UserId;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use lambda_http::request::RequestContext;
use lambda_http::{Request, RequestExt};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Issuer and audience of locally minted tokens.
pub const LOCAL_ISSUER: &str = "withdrawal-pipeline-local";
pub const LOCAL_AUDIENCE: &str = "withdrawal-api";
/// The environment variable that switches the handler to local token verification. The
/// deployed template never sets it (a test asserts that).
pub const LOCAL_AUTH_SECRET_ENV: &str = "LOCAL_AUTH_SECRET";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no verified identity on the request")]
    Missing,
    #[error("token is not valid: {0}")]
    Invalid(&'static str),
}

#[derive(Clone)]
pub enum Authenticator {
    /// Trust the claims API Gateway's JWT authorizer verified.
    ApiGatewayJwt,
    /// Verify `Authorization: Bearer <HS256 token>` here (local runs only).
    LocalToken(LocalTokenKey),
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ApiGatewayJwt => f.write_str("ApiGatewayJwt"),
            Self::LocalToken(_) => f.write_str("LocalToken(<secret>)"),
        }
    }
}

impl Authenticator {
    pub fn from_env() -> Result<Self, AuthError> {
        match std::env::var(LOCAL_AUTH_SECRET_ENV) {
            Ok(secret) => Ok(Self::LocalToken(LocalTokenKey::new(secret.as_bytes())?)),
            Err(_) => Ok(Self::ApiGatewayJwt),
        }
    }

    pub fn authenticate(&self, req: &Request) -> Result<UserId, AuthError> {
        let sub = match self {
            Self::ApiGatewayJwt => match req.request_context_ref() {
                Some(RequestContext::ApiGatewayV2(ctx)) => ctx
                    .authorizer
                    .as_ref()
                    .and_then(|a| a.jwt.as_ref())
                    .and_then(|j| j.claims.get("sub"))
                    .cloned()
                    .ok_or(AuthError::Missing)?,
                _ => return Err(AuthError::Missing),
            },
            Self::LocalToken(key) => {
                let header = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .ok_or(AuthError::Missing)?;
                let token = header
                    .strip_prefix("Bearer ")
                    .ok_or(AuthError::Invalid("expected a Bearer token"))?;
                key.verify(token, chrono::Utc::now().timestamp())?.sub
            }
        };
        UserId::parse(&sub).map_err(|_| AuthError::Invalid("sub is not a valid user id"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

/// An HS256 signing key for local tokens.
#[derive(Clone)]
pub struct LocalTokenKey(Vec<u8>);

impl LocalTokenKey {
    pub fn new(secret: &[u8]) -> Result<Self, AuthError> {
        if secret.len() < 32 {
            return Err(AuthError::Invalid(
                "local auth secret must be at least 32 bytes",
            ));
        }
        Ok(Self(secret.to_vec()))
    }

    pub fn mint(&self, user: &UserId, now: i64, ttl_secs: i64) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = Claims {
            sub: user.as_str().to_string(),
            iss: LOCAL_ISSUER.into(),
            aud: LOCAL_AUDIENCE.into(),
            iat: now,
            exp: now + ttl_secs,
        };
        let payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let signing_input = format!("{header}.{payload}");
        let sig =
            URL_SAFE_NO_PAD.encode(self.mac(signing_input.as_bytes()).finalize().into_bytes());
        format!("{signing_input}.{sig}")
    }

    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, AuthError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Invalid("malformed token"));
        };
        #[derive(Deserialize)]
        struct Header {
            alg: String,
        }
        let header: Header = decode_json(h)?;
        // Only HS256: refusing everything else closes the "alg: none" and algorithm-confusion
        // holes.
        if header.alg != "HS256" {
            return Err(AuthError::Invalid("unsupported algorithm"));
        }
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| AuthError::Invalid("malformed signature"))?;
        self.mac(format!("{h}.{p}").as_bytes())
            .verify_slice(&sig)
            .map_err(|_| AuthError::Invalid("bad signature"))?;
        let claims: Claims = decode_json(p)?;
        if claims.iss != LOCAL_ISSUER || claims.aud != LOCAL_AUDIENCE {
            return Err(AuthError::Invalid("wrong issuer or audience"));
        }
        if claims.exp <= now {
            return Err(AuthError::Invalid("token expired"));
        }
        Ok(claims)
    }

    fn mac(&self, data: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(data);
        mac
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Invalid("malformed token"))?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Invalid("malformed token"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn minted_tokens_verify_and_carry_the_user() {
        let key = LocalTokenKey::new(SECRET).unwrap();
        let user = UserId::parse("alice").unwrap();
        let t = key.mint(&user, 1_000, 60);
        assert_eq!(key.verify(&t, 1_030).unwrap().sub, "alice");
    }

    #[test]
    fn expired_tampered_foreign_and_unsigned_tokens_fail() {
        let key = LocalTokenKey::new(SECRET).unwrap();
        let other = LocalTokenKey::new(b"another-secret-another-secret-xx").unwrap();
        let user = UserId::parse("alice").unwrap();
        let t = key.mint(&user, 1_000, 60);
        assert_eq!(
            key.verify(&t, 1_060),
            Err(AuthError::Invalid("token expired"))
        );
        assert!(other.verify(&t, 1_010).is_err());
        let parts: Vec<&str> = t.split('.').collect();
        let forged_payload = URL_SAFE_NO_PAD.encode(
            br#"{"sub":"mallory","iss":"withdrawal-pipeline-local","aud":"withdrawal-api","iat":1000,"exp":9999999999}"#,
        );
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert!(key.verify(&forged, 1_010).is_err());
        let none_alg = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            forged_payload
        );
        assert!(key.verify(&none_alg, 1_010).is_err());
        assert!(key.verify("a.b", 1_010).is_err());
        assert!(LocalTokenKey::new(b"short").is_err());
    }
}
