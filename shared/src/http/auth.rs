//! Who is calling. In AWS the HTTP API's JWT authorizer has verified the token and the handler
//! reads `sub` from the request context. Locally (`cargo lambda watch`) there is no authorizer, so
//! the handler verifies an HS256 token minted by the operator CLI itself. Either way a request
//! without a verified identity gets 401; there is no mode without authentication.
//!
//! The internal API (`/internal/…`, for the platform's own services) is authorized by AWS IAM
//! (SigV4) instead: API Gateway verifies the signature and puts the caller's ARN on the request,
//! and [`InternalAuth`] admits only the principals the template names. Locally the same
//! HS256 tokens stand in, with their own audience, so a user's token never opens the internal
//! API and a service token never acts as a user.

use crate::domain::UserId;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use lambda_http::request::RequestContext;
use lambda_http::{Request, RequestExt};
use serde::{Deserialize, Serialize};

/// Issuer and audience of locally minted tokens.
pub const LOCAL_ISSUER: &str = "withdrawal-pipeline-local";
pub const LOCAL_AUDIENCE: &str = "withdrawal-api";
/// The audience of locally minted tokens for the internal API (their `sub` is the caller's ARN).
pub const LOCAL_SERVICE_AUDIENCE: &str = "withdrawal-internal";
/// The environment variable that switches the handler to local token verification. The
/// deployed template never sets it (a test asserts that).
pub const LOCAL_AUTH_SECRET_ENV: &str = "LOCAL_AUTH_SECRET";
/// Comma-separated IAM ARNs that may call the internal API: a role's ARN admits every session of
/// that role; any other ARN admits exactly that principal. Empty or unset: nobody.
pub const INTERNAL_CALLERS_ENV: &str = "INTERNAL_CALLERS";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no verified identity on the request")]
    Missing,
    #[error("token is not valid: {0}")]
    Invalid(&'static str),
    #[error("{0} is not an allowed caller")]
    NotAllowed(String),
    #[error("{INTERNAL_CALLERS_ENV}: {0}")]
    BadCallerList(String),
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
                key.verify(bearer(req)?, chrono::Utc::now().timestamp())?
                    .sub
            }
        };
        UserId::parse(&sub).map_err(|_| AuthError::Invalid("sub is not a valid user id"))
    }
}

/// One principal the internal API admits.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Principal {
    /// Every session of this role (`arn:<partition>:iam::<account>:role/[path/]<name>`): the
    /// caller's ARN is then `arn:<partition>:sts::<account>:assumed-role/<name>/<session>`.
    Role {
        partition: String,
        account: String,
        name: String,
    },
    /// Exactly this ARN (an IAM user).
    Exact(String),
}

/// The principals allowed to call the internal API ([`INTERNAL_CALLERS_ENV`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedCallers(Vec<Principal>);

impl AllowedCallers {
    pub fn parse(list: &str) -> Result<Self, AuthError> {
        let mut out = Vec::new();
        for arn in list.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let bad =
                || AuthError::BadCallerList(format!("{arn:?} is not an IAM role or user ARN"));
            let parts: Vec<&str> = arn.splitn(6, ':').collect();
            let ["arn", partition, "iam", "", account, resource] = parts[..] else {
                return Err(bad());
            };
            if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            // `role/` or `user/`, then a path and a name: non-empty segments (the template's
            // AllowedPattern accepts exactly these, so a deployed list never fails here).
            let segments_ok =
                |rest: &str| rest.split('/').all(|s| !s.is_empty() && !s.contains(' '));
            if let Some(path_and_name) = resource.strip_prefix("role/") {
                if !segments_ok(path_and_name) {
                    return Err(bad());
                }
                let name = path_and_name.rsplit('/').next().unwrap_or_default();
                out.push(Principal::Role {
                    partition: partition.to_string(),
                    account: account.to_string(),
                    name: name.to_string(),
                });
            } else if resource.strip_prefix("user/").is_some_and(segments_ok) {
                out.push(Principal::Exact(arn.to_string()));
            } else {
                return Err(bad());
            }
        }
        Ok(Self(out))
    }

    /// Whether the principal API Gateway verified (its ARN) is one of these.
    pub fn permits(&self, caller: &str) -> bool {
        let assumed = {
            let parts: Vec<&str> = caller.splitn(6, ':').collect();
            match parts[..] {
                ["arn", partition, "sts", "", account, resource] => resource
                    .strip_prefix("assumed-role/")
                    .and_then(|r| r.split_once('/'))
                    .map(|(name, _session)| (partition, account, name)),
                _ => None,
            }
        };
        self.0.iter().any(|p| match (p, assumed) {
            (
                Principal::Role {
                    partition,
                    account,
                    name,
                },
                Some((cp, ca, cn)),
            ) => partition == cp && account == ca && name == cn,
            (Principal::Exact(arn), _) => arn == caller,
            _ => false,
        })
    }
}

/// How the internal API learns its caller.
#[derive(Clone)]
pub enum CallerSource {
    /// The ARN API Gateway's IAM authorizer verified (`requestContext.authorizer.iam.userArn`).
    ApiGatewayIam,
    /// `Authorization: Bearer <HS256 token>` with the internal audience (local runs only).
    LocalToken(LocalTokenKey),
}

/// Admits the internal API's callers: verified, then one of the allowed principals.
#[derive(Clone)]
pub struct InternalAuth {
    source: CallerSource,
    allowed: AllowedCallers,
}

impl std::fmt::Debug for InternalAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match self.source {
            CallerSource::ApiGatewayIam => "ApiGatewayIam",
            CallerSource::LocalToken(_) => "LocalToken(<secret>)",
        };
        f.debug_struct("InternalAuth")
            .field("source", &source)
            .field("allowed", &self.allowed)
            .finish()
    }
}

impl InternalAuth {
    pub fn new(source: CallerSource, allowed: AllowedCallers) -> Self {
        Self { source, allowed }
    }

    /// Nobody is admitted (no callers configured).
    pub fn closed() -> Self {
        Self::new(CallerSource::ApiGatewayIam, AllowedCallers::default())
    }

    /// The verified caller's ARN, if it is allowed: `Missing`/`Invalid` → 401, `NotAllowed` →
    /// 403.
    pub fn authorize(&self, req: &Request) -> Result<String, AuthError> {
        let caller = match &self.source {
            CallerSource::ApiGatewayIam => match req.request_context_ref() {
                Some(RequestContext::ApiGatewayV2(ctx)) => ctx
                    .authorizer
                    .as_ref()
                    .and_then(|a| a.iam.as_ref())
                    .and_then(|iam| iam.user_arn.clone())
                    .ok_or(AuthError::Missing)?,
                _ => return Err(AuthError::Missing),
            },
            CallerSource::LocalToken(key) => {
                let token = bearer(req)?;
                key.verify_for(
                    token,
                    LOCAL_SERVICE_AUDIENCE,
                    chrono::Utc::now().timestamp(),
                )?
                .sub
            }
        };
        if self.allowed.permits(&caller) {
            Ok(caller)
        } else {
            Err(AuthError::NotAllowed(caller))
        }
    }
}

fn bearer(req: &Request) -> Result<&str, AuthError> {
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or(AuthError::Missing)?;
    header
        .strip_prefix("Bearer ")
        .ok_or(AuthError::Invalid("expected a Bearer token"))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

/// An HS256 signing key for local tokens (minted and verified by `jsonwebtoken`).
#[derive(Clone)]
pub struct LocalTokenKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl LocalTokenKey {
    pub fn new(secret: &[u8]) -> Result<Self, AuthError> {
        if secret.len() < 32 {
            return Err(AuthError::Invalid(
                "local auth secret must be at least 32 bytes",
            ));
        }
        let refused = |_| AuthError::Invalid("local auth secret is not a usable HS256 key");
        Ok(Self {
            encoding: EncodingKey::from_secret(secret).map_err(refused)?,
            decoding: DecodingKey::from_secret(secret).map_err(refused)?,
        })
    }

    /// A user's token for the user API.
    pub fn mint(&self, user: &UserId, now_secs: i64, ttl_secs: i64) -> String {
        self.mint_for(user.as_str(), LOCAL_AUDIENCE, now_secs, ttl_secs)
    }

    /// A token for the internal API, for the service whose ARN is `caller`.
    pub fn mint_service(&self, caller: &str, now_secs: i64, ttl_secs: i64) -> String {
        self.mint_for(caller, LOCAL_SERVICE_AUDIENCE, now_secs, ttl_secs)
    }

    fn mint_for(&self, sub: &str, audience: &str, now_secs: i64, ttl_secs: i64) -> String {
        let claims = Claims {
            sub: sub.to_string(),
            iss: LOCAL_ISSUER.into(),
            aud: audience.into(),
            iat: now_secs,
            exp: now_secs + ttl_secs,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signs any claims")
    }

    /// A user's token (the user API's audience).
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<Claims, AuthError> {
        self.verify_for(token, LOCAL_AUDIENCE, now_secs)
    }

    pub fn verify_for(
        &self,
        token: &str,
        audience: &str,
        now_secs: i64,
    ) -> Result<Claims, AuthError> {
        // Only HS256: the "alg: none" and algorithm-confusion holes stay closed.
        let mut rules = Validation::new(Algorithm::HS256);
        rules.set_issuer(&[LOCAL_ISSUER]);
        rules.set_audience(&[audience]);
        rules.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // Expiry is checked below against the caller's clock (`now`), with no leeway.
        rules.validate_exp = false;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &rules)
            .map_err(|e| {
                AuthError::Invalid(match e.kind() {
                    ErrorKind::InvalidSignature => "bad signature",
                    ErrorKind::InvalidAlgorithm => "unsupported algorithm",
                    ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => {
                        "wrong issuer or audience"
                    }
                    _ => "malformed token",
                })
            })?
            .claims;
        if claims.exp <= now_secs {
            return Err(AuthError::Invalid("token expired"));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

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

    #[test]
    fn user_and_service_tokens_never_stand_in_for_each_other() {
        let key = LocalTokenKey::new(SECRET).unwrap();
        let user = key.mint(&UserId::parse("alice").unwrap(), 1_000, 60);
        let service = key.mint_service(DEPOSIT_SESSION, 1_000, 60);
        assert!(key.verify(&service, 1_010).is_err());
        assert!(key
            .verify_for(&user, LOCAL_SERVICE_AUDIENCE, 1_010)
            .is_err());
        assert_eq!(
            key.verify_for(&service, LOCAL_SERVICE_AUDIENCE, 1_010)
                .unwrap()
                .sub,
            DEPOSIT_SESSION
        );
    }

    const DEPOSIT_SESSION: &str = "arn:aws:sts::123456789012:assumed-role/deposit-service/i-0abc";

    #[test]
    fn a_role_admits_its_sessions_and_nothing_else() {
        let allowed = AllowedCallers::parse(
            "arn:aws:iam::123456789012:role/payments/deposit-service, arn:aws:iam::123456789012:user/ops",
        )
        .unwrap();
        assert!(allowed.permits(DEPOSIT_SESSION));
        assert!(allowed.permits("arn:aws:iam::123456789012:user/ops"));
        for other in [
            // another account, another role, a role whose name only starts alike, another
            // partition, the role's own ARN (never a caller), a user of the same name
            "arn:aws:sts::210987654321:assumed-role/deposit-service/s",
            "arn:aws:sts::123456789012:assumed-role/support/s",
            "arn:aws:sts::123456789012:assumed-role/deposit-service-x/s",
            "arn:aws-cn:sts::123456789012:assumed-role/deposit-service/s",
            "arn:aws:iam::123456789012:role/payments/deposit-service",
            "arn:aws:iam::123456789012:user/deposit-service",
            "arn:aws:iam::123456789012:user/ops2",
            "",
        ] {
            assert!(!allowed.permits(other), "{other}");
        }
        assert!(!AllowedCallers::parse("").unwrap().permits(DEPOSIT_SESSION));
    }

    #[test]
    fn a_caller_list_that_is_not_arns_fails_at_cold_start() {
        for bad in [
            "deposit-service",
            "arn:aws:iam::1234:role/x",
            "arn:aws:sts::123456789012:assumed-role/x/y",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::123456789012:role/deposit-service/",
            "arn:aws:iam::123456789012:role//deposit-service",
            "arn:aws:iam::123456789012:user/",
            "arn:aws:iam::123456789012:group/x",
        ] {
            assert!(AllowedCallers::parse(bad).is_err(), "{bad}");
        }
    }
}
