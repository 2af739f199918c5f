//! Reading and cancelling: listing, one withdrawal, cancel while pending.

use super::create;
use futures::future::join_all;
use integration_tests::BalanceView;
use integration_tests::{withdrawal_body, ApiRequest, TestEnv};

#[tokio::test]
async fn cancel_returns_funds_once_and_only_while_pending() {
    let env = TestEnv::new().await;
    env.credit("liam", "EUR", "500").await;
    let w = env
        .call(create("liam", withdrawal_body("EUR", "200")).build())
        .await
        .json();
    let path = format!("/withdrawals/{}", w["id"].as_str().unwrap());

    let c = env
        .call(ApiRequest::new("DELETE", &path).user("liam").build())
        .await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(c.json()["status"], "CANCELLED");
    assert_eq!(
        env.balance("liam", "EUR").await,
        BalanceView {
            available: "500.00".into(),
            locked: "0.00".into(),
            paid_out: "0.00".into(),
            credited: "500.00".into()
        }
    );
    let again = env
        .call(ApiRequest::new("DELETE", &path).user("liam").build())
        .await;
    assert_eq!(
        (again.status, again.error_code().as_str()),
        (409, "not_cancellable")
    );
    assert_eq!(
        env.balance("liam", "EUR").await.available,
        "500.00",
        "funds returned once"
    );

    // Racing cancels: exactly one wins.
    let w = env
        .call(create("liam", withdrawal_body("EUR", "100")).build())
        .await
        .json();
    let path = format!("/withdrawals/{}", w["id"].as_str().unwrap());
    let results =
        join_all((0..8).map(|_| env.call(ApiRequest::new("DELETE", &path).user("liam").build())))
            .await;
    assert_eq!(results.iter().filter(|r| r.status == 200).count(), 1);
    assert!(results
        .iter()
        .all(|r| r.status == 200 || r.error_code() == "not_cancellable"));
    assert_eq!(env.balance("liam", "EUR").await.available, "500.00");
    env.assert_conserved().await;
}

#[tokio::test]
async fn listing_is_newest_first_paginated_and_filterable() {
    let env = TestEnv::new().await;
    env.credit("mia", "USD", "1000").await;
    let mut ids = Vec::new();
    for amount in ["1", "2", "3", "4", "5"] {
        let r = env
            .call(create("mia", withdrawal_body("USD", amount)).build())
            .await;
        ids.push(r.json()["id"].as_str().unwrap().to_string());
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let cancel = env
        .call(
            ApiRequest::new("DELETE", &format!("/withdrawals/{}", ids[1]))
                .user("mia")
                .build(),
        )
        .await;
    assert_eq!(cancel.status, 200);

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/withdrawals?limit=2&cursor={c}"),
            None => "/withdrawals?limit=2".to_string(),
        };
        let page = env
            .call(ApiRequest::new("GET", &q).user("mia").build())
            .await
            .json();
        for w in page["items"].as_array().unwrap() {
            seen.push(w["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    let cancelled = env
        .call(
            ApiRequest::new("GET", "/withdrawals?status=CANCELLED")
                .user("mia")
                .build(),
        )
        .await
        .json();
    assert_eq!(cancelled["items"].as_array().unwrap().len(), 1);
    assert_eq!(cancelled["items"][0]["id"], ids[1].as_str());
    let pending = env
        .call(
            ApiRequest::new("GET", "/withdrawals?status=PENDING&limit=3")
                .user("mia")
                .build(),
        )
        .await
        .json();
    assert_eq!(pending["items"].as_array().unwrap().len(), 3);
    assert!(pending["next_cursor"].is_string());

    for bad in [
        "/withdrawals?status=nope",
        "/withdrawals?limit=0",
        "/withdrawals?limit=101",
        "/withdrawals?cursor=xyz",
    ] {
        let r = env
            .call(ApiRequest::new("GET", bad).user("mia").build())
            .await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "invalid_parameter"),
            "{bad}"
        );
    }
    env.assert_conserved().await;
}
