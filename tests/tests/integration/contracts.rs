//! The descriptions around the code stay true to it: the SAM template deploys exactly the
//! workspace's functions with nothing local in it, and openapi.yaml documents every route and
//! every error code.

use integration_tests::{withdrawal_body, ApiRequest, TestEnv, DEPOSIT_CALLER};
use shared::http::api::ApiError;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn repo_file(name: &str) -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(name),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn function_crates() -> BTreeSet<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../functions");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// `(indent, key)` of YAML mapping keys, enough for the shapes checked here.
fn keys(yaml: &str) -> Vec<(usize, String)> {
    yaml.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let indent = l.len() - l.trim_start().len();
            let t = l.trim_start();
            let key = t.split(':').next()?;
            (t.contains(':') && !key.contains(' ') && !t.starts_with('-'))
                .then(|| (indent, key.trim_matches('"').to_string()))
        })
        .collect()
}

#[test]
fn the_template_builds_each_function_binary_for_arm64_with_bootstrap() {
    let t = repo_file("template.yaml");
    let binaries: BTreeSet<String> = t
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Binary: "))
        .map(str::to_string)
        .collect();
    assert_eq!(
        binaries,
        function_crates(),
        "template Binary entries vs functions/*"
    );
    assert_eq!(
        t.matches("BuildMethod: rust-cargolambda").count(),
        binaries.len()
    );
    assert_eq!(
        t.matches("Type: AWS::Serverless::Function").count(),
        binaries.len()
    );
    for needle in [
        "Runtime: provided.al2023",
        "Architectures: [arm64]",
        "Handler: bootstrap",
        "LogFormat: JSON",
    ] {
        assert!(t.contains(needle), "template lacks {needle}");
    }
}

#[test]
fn the_template_has_no_local_only_settings_and_keeps_auth_on() {
    let t = repo_file("template.yaml");
    for local in [
        "LOCAL_AUTH_SECRET",
        "AWS_ENDPOINT_URL",
        "localhost",
        "127.0.0.1",
        "local-dev-only",
        "whsec_local",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "sandbox-key",
    ] {
        assert!(
            !t.contains(local),
            "template contains local-only setting {local}"
        );
    }
    assert!(t.contains("DefaultAuthorizer: JwtAuthorizer"));
    // The internal credit API's two routes, and nothing else, use IAM (SigV4); which principals
    // pass is the function's check (scripts/check-template.py holds the transformed routes to it).
    assert_eq!(t.matches("Authorizer: AWS_IAM").count(), 2);
    for route in ["InternalCredit:", "InternalGetCredit:"] {
        let section = &t[t.find(route).unwrap()..];
        assert!(section[..260].contains("Path: ") && section[..260].contains("/internal/credits"));
        assert!(section[..260].contains("Authorizer: AWS_IAM"), "{route}");
    }
    // Exactly one route opts out of the JWT authorizer: the signed provider webhook.
    assert_eq!(t.matches("Authorizer: NONE").count(), 1);
    let webhook = &t[t.find("ProviderCallback:").unwrap()..];
    let webhook = &webhook[..webhook.find("Outputs:").unwrap_or(webhook.len())];
    assert!(webhook.contains("Path: /webhooks/provider") && webhook.contains("Authorizer: NONE"));
    // Secrets are never echoed.
    for param in ["ProviderApiKey:", "ProviderWebhookSecret:"] {
        let section = &t[t.find(param).unwrap()..];
        assert!(
            section[..200].contains("NoEcho: true"),
            "{param} must be NoEcho"
        );
    }
    // No action wildcard in any policy.
    assert!(
        !t.contains("dynamodb:*") && !t.contains("Action: \"*\"") && !t.contains("Action: '*'")
    );
}

#[test]
fn the_template_table_matches_the_store_schema() {
    let t = repo_file("template.yaml");
    for name in [
        "PK",
        "SK",
        "pending_pk",
        "pending_sk",
        "pending-index",
        "expires_at",
    ] {
        assert!(t.contains(name), "template table lacks {name}");
    }
    for setting in [
        "PAY_PER_REQUEST",
        "PointInTimeRecoveryEnabled: true",
        "DeletionProtectionEnabled: true",
        "SSEEnabled: true",
    ] {
        assert!(t.contains(setting), "{setting}");
    }
}

/// Routes as (METHOD, path) from openapi.yaml.
fn openapi_routes() -> BTreeSet<(String, String)> {
    let spec = repo_file("openapi.yaml");
    let mut routes = BTreeSet::new();
    let mut in_paths = false;
    let mut current = String::new();
    for (indent, key) in keys(&spec) {
        if indent == 0 {
            in_paths = key == "paths";
            continue;
        }
        if !in_paths {
            continue;
        }
        if indent == 2 && key.starts_with('/') {
            current = key;
        } else if indent == 4 && ["get", "post", "delete", "put", "patch"].contains(&key.as_str()) {
            routes.insert((key.to_uppercase(), current.clone()));
        }
    }
    routes
}

#[test]
fn openapi_documents_every_error_code() {
    let spec = repo_file("openapi.yaml");
    for code in ApiError::CODES {
        assert!(
            spec.contains(&format!("- {code}\n")),
            "openapi.yaml Error.code enum lacks {code}"
        );
    }
}

#[test]
fn openapi_template_and_local_router_list_the_same_paths() {
    let documented: BTreeSet<String> = openapi_routes().into_iter().map(|(_, p)| p).collect();
    let template = repo_file("template.yaml");
    let deployed: BTreeSet<String> = template
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = &l[l.find("Path: ")? + 6..];
            Some(match rest.strip_prefix('"') {
                Some(quoted) => quoted.split('"').next()?.to_string(),
                None => rest.split([' ', '}', ',']).next()?.to_string(),
            })
        })
        .collect();
    assert_eq!(documented, deployed, "openapi.yaml vs template.yaml");
    let cargo = repo_file("Cargo.toml");
    let router = &cargo[cargo
        .find("[workspace.metadata.lambda.watch.router]")
        .unwrap()..];
    let local: BTreeSet<String> = router
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter_map(|l| l.split('=').next())
        .map(|k| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty())
        .collect();
    assert_eq!(
        documented, local,
        "openapi.yaml vs cargo lambda watch router"
    );
}

#[tokio::test]
async fn every_documented_user_route_answers() {
    let env = TestEnv::new().await;
    env.credit("route", "USD", "100").await;
    let created = env
        .call(
            ApiRequest::new("POST", "/withdrawals")
                .user("route")
                .fresh_key()
                .body(withdrawal_body("USD", "10"))
                .build(),
        )
        .await;
    let id = created.json()["id"].as_str().unwrap().to_string();
    // The credit the internal routes post (a replay then) and read.
    env.credit_ref("route", "USD", "5", "route-credit-1")
        .await
        .unwrap();
    let beneficiary = env
        .beneficiary("route", integration_tests::ACCOUNTS[1])
        .await;
    for (method, path) in openapi_routes() {
        if path.starts_with("/webhooks") {
            continue; // the webhook handler's routes are exercised in webhook.rs
        }
        let concrete = path
            .replace(
                "/beneficiaries/{id}",
                &format!("/beneficiaries/{beneficiary}"),
            )
            .replace("{id}", &id)
            .replace("{reference}", "route-credit-1");
        let mut event = ApiRequest::new(&method, &concrete);
        event = if path.starts_with("/internal/") {
            // The credit API: the deposit service's IAM identity, a credit whose reference the
            // GET then finds (POST comes first in the document).
            event.iam_caller(DEPOSIT_CALLER).body(
                r#"{"user_id":"route","currency":"USD","amount":"5","reference":"route-credit-1"}"#,
            )
        } else if path == "/withdrawals/quote" {
            ApiRequest::new("GET", "/withdrawals/quote?currency=USD&amount=10").user("route")
        } else if method == "POST" && path == "/beneficiaries" {
            event
                .user("route")
                .fresh_key()
                .body(r#"{"bank_account":"DE89370400440532013000","holder_name":"Route Test"}"#)
        } else if method == "POST" {
            event
                .user("route")
                .fresh_key()
                .body(withdrawal_body("USD", "1"))
        } else {
            event.user("route")
        };
        let r = env.call(event.build()).await;
        assert!(r.status < 300, "{method} {path} -> {} {}", r.status, r.body);
    }
}

#[test]
fn openapi_yaml_is_valid_yaml_with_every_route_and_template_yaml_parses() {
    // Read as text, an unquoted `: ` inside a description once went unnoticed while every
    // YAML-reading tool (validators, Schemathesis, API Gateway import) refused the file.
    let spec: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&repo_file("openapi.yaml")).expect("openapi.yaml is valid YAML");
    let paths = spec["paths"].as_mapping().expect("paths");
    for route in [
        "/withdrawals",
        "/withdrawals/quote",
        "/withdrawals/{id}",
        "/balances",
        "/internal/credits",
        "/internal/credits/{reference}",
        "/webhooks/provider",
    ] {
        assert!(paths.contains_key(route), "openapi.yaml lacks {route}");
    }
    let _: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&repo_file("template.yaml")).expect("template.yaml is valid YAML");
}

#[test]
fn the_templates_largest_batch_is_the_one_a_batch_record_can_hold() {
    let t: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&repo_file("template.yaml")).expect("template.yaml parses");
    let max = t["Parameters"]["BatchMaxSize"]["MaxValue"]
        .as_u64()
        .expect("BatchMaxSize has a MaxValue");
    assert_eq!(max as usize, shared::store::MAX_BATCH_MEMBERS);
    let default = t["Parameters"]["BatchMaxSize"]["Default"].as_u64().unwrap();
    assert!(default as usize <= shared::store::MAX_BATCH_MEMBERS);
}
