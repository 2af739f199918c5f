//! Store faults injected behind the pipeline's own traits.

use super::{audit, scale, scenario, Row};
use integration_tests::faults::{Fault as StoreFault, FaultyStore, When};
use integration_tests::{withdrawal_body, ApiRequest, TestEnv, TestResponse, REQUEST_FN};
use shared::requests::withdrawals::WithdrawalService;
use shared::store::Failure;
use std::sync::Arc;
use withdrawal_request::App;

#[test]
fn s5_store_faults() {
    scenario(|rt| vec![rt.block_on(store_faults())]);
}

// 5 ------------------------------------------------------------------------------------------
async fn store_faults() -> Row {
    let env = TestEnv::with_max_open(100).await;
    env.credit("faulty", "USD", "1000").await;
    let conflict =
        shared::store::StoreError::Failed(Failure::Unavailable("TransactionConflict".into()));
    let throttled = shared::store::StoreError::Failed(Failure::Unavailable(
        "ProvisionedThroughputExceededException".into(),
    ));
    let mut faults = Vec::new();
    // Every 3rd write fails before DynamoDB, every 3rd+1 after it was written; reads throttle too.
    for n in (1..=60).step_by(3) {
        faults.push(StoreFault {
            error: conflict.clone(),
            ..StoreFault::new("request_withdrawal", n, When::Before)
        });
        faults.push(StoreFault {
            error: throttled.clone(),
            ..StoreFault::new("request_withdrawal", n + 1, When::After)
        });
    }
    faults.push(StoreFault {
        error: throttled.clone(),
        ..StoreFault::new("withdrawal", 1, When::Before)
    });
    faults.push(StoreFault {
        error: throttled,
        ..StoreFault::new("balances", 1, When::Before)
    });
    let faulty = Arc::new(FaultyStore::new(env.store_for(REQUEST_FN), faults));
    let app = App::new(
        WithdrawalService::new(faulty.clone(), env.currencies.clone(), 100),
        shared::http::auth::Authenticator::ApiGatewayJwt,
    );
    let n = scale(30).min(60);
    let mut ops = 0;
    let mut failures = 0;
    let mut saw_503 = 0;
    for i in 0..n {
        let key = format!("fault-{i}");
        let mut outcome = None;
        for _ in 0..5 {
            ops += 1;
            let r: TestResponse = app
                .handle(
                    ApiRequest::new("POST", "/withdrawals")
                        .user("faulty")
                        .header("idempotency-key", &key)
                        .body(withdrawal_body("USD", "5.00"))
                        .build(),
                )
                .await
                .into();
            match r.status {
                503 => {
                    saw_503 += 1;
                    if r.error_code() != "try_again"
                        || r.body.contains("Transaction")
                        || r.body.contains("Provisioned")
                    {
                        failures += 1; // a clear code and no internals
                    }
                }
                201 => {
                    outcome = Some(r);
                    break;
                }
                _ => {
                    failures += 1;
                    break;
                }
            }
        }
        if outcome.is_none() {
            failures += 1;
        }
    }
    for path in ["/balances", "/withdrawals/wd_01JZZZZZZZZZZZZZZZZZZZZZZZ"] {
        ops += 1;
        let r: TestResponse = app
            .handle(ApiRequest::new("GET", path).user("faulty").build())
            .await
            .into();
        if r.status != 503 {
            failures += 1;
        }
        saw_503 += 1;
    }
    // Exactly one withdrawal per key, whatever failed on the way.
    let report = env.store.scan_all().await.unwrap();
    let count = report.withdrawals.len();
    failures += count.abs_diff(n);
    let (violations, lost) = audit(&env, None).await;
    Row {
        scenario: "5. DynamoDB faults (conflict, throttling, lost answers)",
        operations: ops,
        failures: failures + violations,
        money_lost: lost,
        note: format!("{saw_503} injected faults answered 503 try_again; {n} keys retried → {count} withdrawals, none half-written"),
    }
}
