//! Configuration, read once at cold start. Every environment variable a function reads is read
//! here, into one typed config per function — [`RequestConfig`], [`PayoutConfig`],
//! [`WebhookConfig`], [`PublisherConfig`], with the batcher's [`BatcherConfig`] — and a bad value fails the cold start with one error
//! type that names the variable. The DynamoDB endpoint is the SDK's own
//! `AWS_ENDPOINT_URL_DYNAMODB`, set only locally.

use crate::domain::Currencies;
use crate::http::auth::{AllowedCallers, Authenticator, CallerSource, InternalAuth, LocalTokenKey};
use crate::payouts::signature::DEFAULT_TOLERANCE_SECS;
use crate::requests::beneficiaries::BeneficiaryRules;
use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

/// A setting that cannot be used, by the variable it was read from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration: {variable} {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl ConfigError {
    pub fn new(variable: &'static str, problem: impl Into<String>) -> Self {
        Self {
            variable,
            problem: problem.into(),
        }
    }
}

/// Where settings are read from: the process environment at a cold start, a list in tests.
pub trait Vars {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Vars for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Vars for [(&str, &str)] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

impl<const N: usize> Vars for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<String> {
        Vars::get(&self[..], name)
    }
}

impl Vars for Vec<(&str, &str)> {
    fn get(&self, name: &str) -> Option<String> {
        Vars::get(&self[..], name)
    }
}

/// A variable that must be set to something.
fn required(v: &dyn Vars, name: &'static str) -> Result<String, ConfigError> {
    v.get(name)
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ConfigError::new(name, "is not set"))
}

/// A whole number in `range`, or `default` when the variable is not set.
fn number<T>(
    v: &dyn Vars,
    name: &'static str,
    default: T,
    range: RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + Display + Copy,
{
    match v.get(name) {
        None => Ok(default),
        Some(s) => s
            .trim()
            .parse::<T>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                ConfigError::new(
                    name,
                    format!(
                        "must be a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                )
            }),
    }
}

fn seconds(v: &dyn Vars, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
    number(v, name, default, 1..=u64::MAX / 1000).map(Duration::from_secs)
}

/// What every function that opens the table needs.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub table_name: String,
    pub currencies: Currencies,
    /// Open (pending or submitted) withdrawals a user may have per currency.
    pub max_open_per_currency: u32,
    /// Shards of each currency's pending index (`PENDING_SHARDS`). Lowering it is safe: the
    /// request function records the highest count at cold start and the batcher reads that many.
    pub pending_shards: u32,
}

impl StoreConfig {
    pub const DEFAULT_MAX_OPEN: u32 = 5;

    /// `TABLE_NAME` (required), `CURRENCIES` (`CODE:scale:min:max[:daily],…`),
    /// `MAX_OPEN_WITHDRAWALS`, `PENDING_SHARDS`.
    pub fn from_vars(v: &dyn Vars) -> Result<Self, ConfigError> {
        let table_name = required(v, "TABLE_NAME")?;
        if table_name.len() < 3 {
            return Err(ConfigError::new(
                "TABLE_NAME",
                "needs at least 3 characters",
            ));
        }
        Ok(Self {
            table_name,
            currencies: currencies(v)?,
            max_open_per_currency: number(
                v,
                "MAX_OPEN_WITHDRAWALS",
                Self::DEFAULT_MAX_OPEN,
                1..=u32::MAX,
            )?,
            pending_shards: number(
                v,
                "PENDING_SHARDS",
                crate::store::DynamoStore::DEFAULT_PENDING_SHARDS,
                1..=64,
            )?,
        })
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&ProcessEnv)
    }

    /// The store as configured, over a client built from the environment.
    pub async fn store(&self) -> crate::store::DynamoStore {
        crate::store::DynamoStore::new(
            dynamodb_client().await,
            &self.table_name,
            self.currencies.clone(),
        )
        .with_pending_shards(self.pending_shards)
    }
}

/// `CURRENCIES` and, on top of them, `REVIEW_THRESHOLDS` (empty or unset: nothing is reviewed)
/// and `WITHDRAWAL_FEES` (empty or unset: withdrawals are free). Every function reads all three
/// (the template sets them once, in Globals): a bank return applies its currency's fee policy
/// wherever it is recorded.
fn currencies(v: &dyn Vars) -> Result<Currencies, ConfigError> {
    let mut currencies = match v.get("CURRENCIES") {
        Some(c) if !c.trim().is_empty() => {
            Currencies::parse_config(&c).map_err(|e| ConfigError::new("CURRENCIES", e))?
        }
        _ => Currencies::default(),
    };
    if let Some(r) = v.get("REVIEW_THRESHOLDS") {
        currencies = currencies
            .with_review_thresholds(&r)
            .map_err(|e| ConfigError::new("REVIEW_THRESHOLDS", e))?;
    }
    if let Some(f) = v.get("WITHDRAWAL_FEES") {
        currencies = currencies
            .with_fees(&f)
            .map_err(|e| ConfigError::new("WITHDRAWAL_FEES", e))?;
    }
    Ok(currencies)
}

/// How often a Secrets Manager value is read again (`SECRETS_TTL_SECS`, default 300): a
/// rotation needs no deploy.
fn secrets_ttl(v: &dyn Vars) -> Result<Duration, ConfigError> {
    seconds(
        v,
        "SECRETS_TTL_SECS",
        crate::platform::secrets::DEFAULT_TTL.as_secs(),
    )
}

/// `withdrawal-request`: the user API and the internal credit API.
#[derive(Debug)]
pub struct RequestConfig {
    pub store: StoreConfig,
    /// Users: API Gateway's JWT authorizer, or (`LOCAL_AUTH_SECRET`, local runs) a token
    /// verified here.
    pub users: Authenticator,
    /// The credit API's callers (`INTERNAL_CALLERS`: IAM role or user ARNs; none admits
    /// nobody).
    pub internal: InternalAuth,
    /// `BENEFICIARY_COOLING_OFF_SECS` (default a day; at most 30 days) and
    /// `MAX_BENEFICIARIES` (default 10, 1 to 100).
    pub beneficiaries: BeneficiaryRules,
}

impl RequestConfig {
    pub fn from_vars(v: &dyn Vars) -> Result<Self, ConfigError> {
        let local_key = match v.get(crate::http::auth::LOCAL_AUTH_SECRET_ENV) {
            Some(secret) => Some(
                LocalTokenKey::new(secret.as_bytes())
                    .map_err(|e| ConfigError::new("LOCAL_AUTH_SECRET", e.to_string()))?,
            ),
            None => None,
        };
        let callers = AllowedCallers::parse(
            &v.get(crate::http::auth::INTERNAL_CALLERS_ENV)
                .unwrap_or_default(),
        )
        .map_err(|e| ConfigError::new("INTERNAL_CALLERS", e.to_string()))?;
        let (users, source) = match local_key {
            Some(key) => (
                Authenticator::LocalToken(key.clone()),
                CallerSource::LocalToken(key),
            ),
            None => (Authenticator::ApiGatewayJwt, CallerSource::ApiGatewayIam),
        };
        let cooling_off: u64 = number(
            v,
            "BENEFICIARY_COOLING_OFF_SECS",
            crate::requests::beneficiaries::DEFAULT_COOLING_OFF_SECS,
            0..=30 * 24 * 3600,
        )?;
        Ok(Self {
            store: StoreConfig::from_vars(v)?,
            users,
            internal: InternalAuth::new(source, callers),
            beneficiaries: BeneficiaryRules {
                cooling_off: chrono::Duration::seconds(cooling_off as i64),
                max_per_user: number(
                    v,
                    "MAX_BENEFICIARIES",
                    crate::requests::beneficiaries::DEFAULT_MAX_BENEFICIARIES,
                    1..=100,
                )?,
            },
        })
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&ProcessEnv)
    }
}

/// `payout-batcher` (and the operator tools that run its steps).
#[derive(Debug, Clone)]
pub struct PayoutConfig {
    pub store: StoreConfig,
    pub batcher: BatcherConfig,
    /// The provider's base URL (`PROVIDER_URL`).
    pub provider_url: String,
    /// The Secrets Manager secret holding the provider's API key
    /// (`PROVIDER_API_KEY_SECRET_ARN`).
    pub api_key_secret: String,
    pub secrets_ttl: Duration,
}

impl PayoutConfig {
    pub fn from_vars(v: &dyn Vars) -> Result<Self, ConfigError> {
        Ok(Self {
            store: StoreConfig::from_vars(v)?,
            batcher: batcher(v)?,
            provider_url: required(v, "PROVIDER_URL")?,
            api_key_secret: required(v, "PROVIDER_API_KEY_SECRET_ARN")?,
            secrets_ttl: secrets_ttl(v)?,
        })
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&ProcessEnv)
    }
}

/// `BATCH_MAX_SIZE`, `BATCH_MAX_ATTEMPTS`, `BATCH_STALE_AFTER_SECS`,
/// `BATCH_ESCALATE_AFTER_SECS`, `RECONCILE_AFTER_SECS`, `RECONCILE_AGAIN_AFTER_SECS`,
/// `PROVIDER_TIMEOUT_MS`, `FUNCTION_TIMEOUT_SECS`; the stop margin is derived, never set on its
/// own.
fn batcher(v: &dyn Vars) -> Result<BatcherConfig, ConfigError> {
    let d = BatcherConfig::default();
    let provider_timeout = Duration::from_millis(number(
        v,
        "PROVIDER_TIMEOUT_MS",
        d.provider_timeout.as_millis() as u64,
        1..=u64::MAX,
    )?);
    let config = BatcherConfig {
        max_batch_size: number(v, "BATCH_MAX_SIZE", d.max_batch_size, 1..=usize::MAX)?,
        max_attempts: number(v, "BATCH_MAX_ATTEMPTS", d.max_attempts, 1..=u32::MAX)?,
        stale_after: seconds(v, "BATCH_STALE_AFTER_SECS", d.stale_after.as_secs())?,
        escalate_after: seconds(v, "BATCH_ESCALATE_AFTER_SECS", d.escalate_after.as_secs())?,
        reconcile_after: seconds(v, "RECONCILE_AFTER_SECS", d.reconcile_after.as_secs())?,
        reconcile_again_after: seconds(
            v,
            "RECONCILE_AGAIN_AFTER_SECS",
            d.reconcile_again_after.as_secs(),
        )?,
        provider_timeout,
        safety_margin: BatcherConfig::stop_margin(provider_timeout, d.lease_margin),
        lease_margin: d.lease_margin,
    };
    let function_timeout = match v.get("FUNCTION_TIMEOUT_SECS") {
        Some(_) => Some(seconds(v, "FUNCTION_TIMEOUT_SECS", 0)?),
        None => None,
    };
    config.validate(function_timeout)?;
    Ok(config)
}

#[derive(Debug, Clone)]
pub struct BatcherConfig {
    pub max_batch_size: usize,
    /// Ambiguous sends before a batch is flagged for an operator.
    pub max_attempts: u32,
    /// An accepted batch without final answers after this long is checked with the provider.
    pub stale_after: Duration,
    /// An accepted batch the provider still reports unfinished (or cannot be asked about) this
    /// long after acceptance is handed to an operator.
    pub escalate_after: Duration,
    /// A final batch is compared with the provider's status endpoint this long after it ended
    /// (late returns have had time to arrive).
    pub reconcile_after: Duration,
    /// …and once more this long after the first comparison: bank returns arrive days later.
    pub reconcile_again_after: Duration,
    /// Stop starting new work this long before the deadline.
    pub safety_margin: Duration,
    /// The provider client's timeout: a lease must outlive our last call.
    pub provider_timeout: Duration,
    /// Extra lease time past the deadline and the last call, for clock skew.
    pub lease_margin: Duration,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        let provider_timeout = Duration::from_secs(10);
        let lease_margin = Duration::from_secs(5);
        Self {
            max_batch_size: 500,
            max_attempts: 5,
            stale_after: Duration::from_secs(3600),
            escalate_after: Duration::from_secs(24 * 3600),
            reconcile_after: Duration::from_secs(3600),
            reconcile_again_after: Duration::from_secs(7 * 24 * 3600),
            safety_margin: Self::stop_margin(provider_timeout, lease_margin),
            provider_timeout,
            lease_margin,
        }
    }
}

/// A run needs at least this long after its stop margin to do anything useful.
const MIN_WORK: Duration = Duration::from_secs(10);
/// A provider call longer than this is a misconfiguration (the function's own limit is 15 min).
const MAX_PROVIDER_TIMEOUT: Duration = Duration::from_secs(60);

impl BatcherConfig {
    /// How long before the deadline a run stops starting work: a provider call started just
    /// before must time out and its answer be recorded (the lease margin) before Lambda kills
    /// the invocation — otherwise the run dies mid-send, the errors alarm fires and the
    /// invocation is retried.
    pub fn stop_margin(provider_timeout: Duration, lease_margin: Duration) -> Duration {
        provider_timeout + lease_margin
    }

    /// Checks the settings against each other and, when known, the function's timeout
    /// (`FUNCTION_TIMEOUT_SECS`, set by the template from the same parameter as `Timeout`).
    pub fn validate(&self, function_timeout: Option<Duration>) -> Result<(), ConfigError> {
        if self.max_batch_size > crate::store::MAX_BATCH_MEMBERS {
            return Err(ConfigError::new(
                "BATCH_MAX_SIZE",
                format!(
                    "must be at most {} (a batch's record lists every member in one DynamoDB \
                     item of at most 400 KB)",
                    crate::store::MAX_BATCH_MEMBERS
                ),
            ));
        }
        if self.provider_timeout > MAX_PROVIDER_TIMEOUT {
            return Err(ConfigError::new(
                "PROVIDER_TIMEOUT_MS",
                format!("must be at most {} ms", MAX_PROVIDER_TIMEOUT.as_millis()),
            ));
        }
        if self.safety_margin < Self::stop_margin(self.provider_timeout, self.lease_margin) {
            // Derived, never set: only a config built by hand can get it wrong.
            return Err(ConfigError::new(
                "PROVIDER_TIMEOUT_MS",
                "is not covered by the stop margin (it must cover the provider timeout and the \
                 lease margin)",
            ));
        }
        if let Some(timeout) = function_timeout {
            if timeout < self.safety_margin + MIN_WORK {
                return Err(ConfigError::new(
                    "FUNCTION_TIMEOUT_SECS",
                    format!(
                        "({} s) leaves no time to work: it must be at least the provider \
                         timeout + {} s lease margin + {} s ({} s)",
                        timeout.as_secs(),
                        self.lease_margin.as_secs(),
                        MIN_WORK.as_secs(),
                        (self.safety_margin + MIN_WORK).as_secs()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `provider-webhook`.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub store: StoreConfig,
    /// The Secrets Manager secret holding the signing secrets, comma separated, the new one
    /// first during a rotation (`PROVIDER_WEBHOOK_SECRETS_ARN`).
    pub secrets_arn: String,
    pub secrets_ttl: Duration,
    /// How far a signature's timestamp may be from now (`WEBHOOK_TOLERANCE_SECS`, default 300).
    pub tolerance_secs: i64,
}

impl WebhookConfig {
    pub fn from_vars(v: &dyn Vars) -> Result<Self, ConfigError> {
        Ok(Self {
            store: StoreConfig::from_vars(v)?,
            secrets_arn: required(v, "PROVIDER_WEBHOOK_SECRETS_ARN")?,
            secrets_ttl: secrets_ttl(v)?,
            tolerance_secs: number(
                v,
                "WEBHOOK_TOLERANCE_SECS",
                DEFAULT_TOLERANCE_SECS,
                1..=i64::MAX,
            )?,
        })
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&ProcessEnv)
    }
}

/// `event-publisher`: the bus, and the currencies (the codec needs each one's precision).
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// The table (read only for operators' skipped records) and the currencies images decode in.
    pub store: StoreConfig,
    /// The bus the events go to (`EVENT_BUS_NAME`; template.yaml creates it, locally moto's).
    pub bus_name: String,
}

impl PublisherConfig {
    pub fn from_vars(v: &dyn Vars) -> Result<Self, ConfigError> {
        Ok(Self {
            store: StoreConfig::from_vars(v)?,
            bus_name: required(v, "EVENT_BUS_NAME")?,
        })
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&ProcessEnv)
    }
}

/// The SDK's shared configuration (region, credentials, endpoints), read once per client.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// An SDK client (`sdk_client!(aws_sdk_dynamodb)`), built from the environment's region,
/// credentials and endpoint (locally `AWS_ENDPOINT_URL_<SERVICE>`), with the call recorder where
/// `CALL_LOG_DIR` is set (local runs only). A second argument adjusts the builder first.
#[macro_export]
macro_rules! sdk_client {
    ($sdk:ident) => {
        $crate::sdk_client!($sdk, |builder| builder)
    };
    ($sdk:ident, $adjust:expr) => {{
        let config = $crate::platform::config::sdk_config().await;
        let mut builder = ($adjust)($sdk::config::Builder::from(&config));
        if let Some(recorder) = $crate::platform::calls::CallRecorder::from_env() {
            builder = builder.interceptor(recorder);
        }
        $sdk::Client::from_conf(builder.build())
    }};
}

/// The DynamoDB client every function's store uses.
pub async fn dynamodb_client() -> aws_sdk_dynamodb::Client {
    crate::sdk_client!(aws_sdk_dynamodb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_margin_covers_a_provider_call_and_recording_its_answer() {
        let c = BatcherConfig::default();
        assert_eq!(c.safety_margin, c.provider_timeout + c.lease_margin);
        assert!(c.validate(Some(Duration::from_secs(120))).is_ok());
    }

    #[test]
    fn a_function_timeout_that_cannot_fit_one_provider_call_is_refused() {
        let c = BatcherConfig::default(); // 10 s provider + 5 s lease margin
        let err = c.validate(Some(Duration::from_secs(20))).unwrap_err();
        assert_eq!(err.variable, "FUNCTION_TIMEOUT_SECS", "{err}");
        assert!(c.validate(Some(Duration::from_secs(25))).is_ok());
        let slow = BatcherConfig {
            provider_timeout: Duration::from_secs(61),
            safety_margin: Duration::from_secs(66),
            ..c.clone()
        };
        assert_eq!(
            slow.validate(None).unwrap_err().variable,
            "PROVIDER_TIMEOUT_MS"
        );
        let short = BatcherConfig {
            safety_margin: Duration::from_secs(5),
            ..c
        };
        assert!(short.validate(None).is_err());
    }

    #[test]
    fn a_batch_larger_than_one_record_can_hold_is_refused() {
        assert_eq!(crate::store::MAX_BATCH_MEMBERS, 1260);
        let at_bound = BatcherConfig {
            max_batch_size: crate::store::MAX_BATCH_MEMBERS,
            ..BatcherConfig::default()
        };
        assert!(at_bound.validate(None).is_ok());
        let over = BatcherConfig {
            max_batch_size: crate::store::MAX_BATCH_MEMBERS + 1,
            ..at_bound
        };
        let err = over.validate(None).unwrap_err();
        assert!(
            err.variable == "BATCH_MAX_SIZE" && err.to_string().contains("1260"),
            "{err}"
        );
    }

    const STORE: [(&str, &str); 1] = [("TABLE_NAME", "withdrawals")];

    fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut v = STORE.to_vec();
        v.extend_from_slice(extra);
        v
    }

    fn refused<T: std::fmt::Debug>(r: Result<T, ConfigError>) -> (&'static str, String) {
        let e = r.expect_err("refused");
        (e.variable, e.to_string())
    }

    #[test]
    fn defaults_apply_where_nothing_is_set() {
        let c = StoreConfig::from_vars(&STORE).unwrap();
        assert_eq!(
            (c.max_open_per_currency, c.pending_shards),
            (StoreConfig::DEFAULT_MAX_OPEN, 4)
        );
        assert!(c.currencies.get("JPY").is_ok());
        let w =
            WebhookConfig::from_vars(&with(&[("PROVIDER_WEBHOOK_SECRETS_ARN", "arn:x")])).unwrap();
        assert_eq!(w.tolerance_secs, DEFAULT_TOLERANCE_SECS);
        assert_eq!(w.secrets_ttl, crate::platform::secrets::DEFAULT_TTL);
    }

    #[test]
    fn every_refusal_names_its_variable() {
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![], "TABLE_NAME"),
            (vec![("TABLE_NAME", "ab")], "TABLE_NAME"),
            (with(&[("PENDING_SHARDS", "65")]), "PENDING_SHARDS"),
            (with(&[("PENDING_SHARDS", "0")]), "PENDING_SHARDS"),
            (
                with(&[("MAX_OPEN_WITHDRAWALS", "-1")]),
                "MAX_OPEN_WITHDRAWALS",
            ),
            (with(&[("CURRENCIES", "USD:x")]), "CURRENCIES"),
            (
                with(&[("WITHDRAWAL_FEES", "EUR:1:2:0:0")]),
                "WITHDRAWAL_FEES",
            ),
            (
                with(&[("REVIEW_THRESHOLDS", "GBP:100")]),
                "REVIEW_THRESHOLDS",
            ),
        ];
        for (vars, variable) in cases {
            let (got, message) = refused(StoreConfig::from_vars(&vars));
            assert_eq!(got, variable, "{vars:?}");
            assert!(message.contains(variable), "{message}");
        }
        let payout = |extra: &[(&'static str, &'static str)]| {
            let mut v = with(&[
                ("PROVIDER_URL", "http://provider"),
                ("PROVIDER_API_KEY_SECRET_ARN", "arn:key"),
            ]);
            v.extend_from_slice(extra);
            PayoutConfig::from_vars(&v)
        };
        assert!(payout(&[]).is_ok());
        for (extra, variable) in [
            (("BATCH_MAX_SIZE", "1468"), "BATCH_MAX_SIZE"),
            (("BATCH_MAX_ATTEMPTS", "0"), "BATCH_MAX_ATTEMPTS"),
            (("PROVIDER_TIMEOUT_MS", "60001"), "PROVIDER_TIMEOUT_MS"),
            (("FUNCTION_TIMEOUT_SECS", "20"), "FUNCTION_TIMEOUT_SECS"),
            (("SECRETS_TTL_SECS", "soon"), "SECRETS_TTL_SECS"),
        ] {
            assert_eq!(refused(payout(&[extra])).0, variable, "{extra:?}");
        }
        assert_eq!(refused(PayoutConfig::from_vars(&STORE)).0, "PROVIDER_URL");
        assert_eq!(
            refused(WebhookConfig::from_vars(&with(&[
                ("PROVIDER_WEBHOOK_SECRETS_ARN", "arn:x"),
                ("WEBHOOK_TOLERANCE_SECS", "0"),
            ])))
            .0,
            "WEBHOOK_TOLERANCE_SECS"
        );
        assert_eq!(
            refused(RequestConfig::from_vars(&with(&[(
                "LOCAL_AUTH_SECRET",
                "short"
            )])))
            .0,
            "LOCAL_AUTH_SECRET"
        );
        assert_eq!(
            refused(RequestConfig::from_vars(&with(&[(
                "INTERNAL_CALLERS",
                "bob"
            )])))
            .0,
            "INTERNAL_CALLERS"
        );
        assert_eq!(refused(PublisherConfig::from_vars(&[])).0, "TABLE_NAME");
        assert_eq!(
            refused(PublisherConfig::from_vars(&STORE)).0,
            "EVENT_BUS_NAME"
        );
    }

    #[test]
    fn a_local_secret_verifies_users_and_callers_here() {
        let secret = "0123456789abcdef0123456789abcdef";
        let local = RequestConfig::from_vars(&with(&[("LOCAL_AUTH_SECRET", secret)])).unwrap();
        assert!(matches!(local.users, Authenticator::LocalToken(_)));
        let deployed = RequestConfig::from_vars(&STORE).unwrap();
        assert!(matches!(deployed.users, Authenticator::ApiGatewayJwt));
    }
}
