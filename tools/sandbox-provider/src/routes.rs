//! The HTTP API: the provider's payout routes (docs/provider-api.md) and the sandbox's own
//! routes for tests (ledger, faults, memory, sent events).

use crate::{Fault, LedgerEntry, MemoryChange, Sandbox, StoredBatch};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use shared::payouts::provider::{BatchState, ItemStatus, PayoutBatchRequest};

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// A refused submit: its status, code and message.
type Refused = (StatusCode, &'static str, &'static str);

/// The batch a submit carries, once its caller, its body and its key are as the API requires.
fn submitted_batch(
    sb: &Sandbox,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<PayoutBatchRequest, Refused> {
    if !sb.authorized(headers) {
        return Err((StatusCode::UNAUTHORIZED, "unauthorized", "bad api key"));
    }
    let Ok(req) = serde_json::from_slice::<PayoutBatchRequest>(body) else {
        return Err((
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "unreadable batch",
        ));
    };
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok());
    if key != Some(req.batch_id.as_str()) {
        return Err((
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Idempotency-Key must equal batch_id",
        ));
    }
    Ok(req)
}

pub(crate) async fn submit(
    State(sb): State<Sandbox>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let req = match submitted_batch(&sb, &headers, &body) {
        Ok(req) => req,
        Err((status, code, message)) => return error(status, code, message),
    };
    let fault = {
        let mut inner = sb.inner.lock().unwrap();
        inner.submit_calls += 1;
        if inner.rejected.contains(&req.batch_id) {
            drop(inner);
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "batch_rejected",
                "batch was rejected",
            );
        }
        inner.faults.pop_front()
    };
    match fault {
        Some(Fault::ErrorBeforeRecord) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "injected")
        }
        Some(Fault::TimeoutBeforeRecord) => {
            tokio::time::sleep(sb.config.hang).await;
            return error(StatusCode::GATEWAY_TIMEOUT, "timeout", "injected");
        }
        Some(Fault::Reject) => {
            sb.inner
                .lock()
                .unwrap()
                .rejected
                .insert(req.batch_id.clone());
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "batch_rejected",
                "payout limit exceeded for this currency",
            );
        }
        _ => {}
    }
    let fingerprint = hex::encode(Sha256::digest(&body));
    let provider_batch_id = match sb.record(&req, &fingerprint) {
        Ok(id) => id,
        Err(()) => {
            return error(
                StatusCode::CONFLICT,
                "idempotency_mismatch",
                "same Idempotency-Key, different batch",
            )
        }
    };
    match fault {
        Some(Fault::ErrorAfterRecord) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "injected")
        }
        Some(Fault::TimeoutAfterRecord) => {
            tokio::time::sleep(sb.config.hang).await;
            error(StatusCode::GATEWAY_TIMEOUT, "timeout", "injected")
        }
        _ => (
            StatusCode::ACCEPTED,
            Json(json!({"provider_batch_id": provider_batch_id})),
        )
            .into_response(),
    }
}

pub(crate) async fn status(
    State(sb): State<Sandbox>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !sb.authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "bad api key");
    }
    let mut inner = sb.inner.lock().unwrap();
    // A lost batch is unknown to the status endpoint even though it was accepted and paid.
    let found = inner.batches.contains_key(&id) && !inner.memory.lost_batches.contains(&id);
    let Some(b) = inner.batches.get(&id).filter(|_| found) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such batch");
    };
    let answer = BatchState {
        batch_id: id.clone(),
        provider_batch_id: b.provider_batch_id.clone(),
        currency: b.request.currency.clone(),
        items: b.items.values().cloned().collect(),
    };
    let holds_pending = answer.items.iter().any(|i| i.status == ItemStatus::Pending);
    if holds_pending && inner.memory.lose_next_found > 0 {
        // This answer is the last it gives for the batch; what it still held pending it pays
        // all the same (no callback: its records are gone).
        inner.memory.lose_next_found -= 1;
        inner.memory.lost_batches.insert(id.clone());
        inner.memory.lost_after_found.insert(id.clone());
        let paid = pay_pending(inner.batches.get_mut(&id).expect("found above"));
        inner.ledger.extend(paid);
    }
    Json(answer).into_response()
}

/// Marks a stored batch's pending items paid; their ledger entries.
fn pay_pending(b: &mut StoredBatch) -> Vec<LedgerEntry> {
    let mut paid = Vec::new();
    for item in b.items.values_mut() {
        if item.status == ItemStatus::Pending {
            item.status = ItemStatus::Paid;
            paid.push(LedgerEntry::paid(&b.request, &b.provider_batch_id, item));
        }
    }
    paid
}

pub(crate) async fn ledger(State(sb): State<Sandbox>) -> Response {
    Json(json!({
        "entries": sb.ledger(),
        "payouts_by_reference": sb.payouts_by_reference(),
        "expired_keys": sb.expired_keys(),
    }))
    .into_response()
}

pub(crate) async fn memory(State(sb): State<Sandbox>) -> Response {
    Json(sb.memory()).into_response()
}

pub(crate) async fn change_memory(
    State(sb): State<Sandbox>,
    Json(change): Json<MemoryChange>,
) -> Response {
    Json(sb.change_memory(change)).into_response()
}

#[derive(Deserialize)]
pub(crate) struct FaultsBody {
    faults: Vec<Fault>,
}

pub(crate) async fn add_faults(
    State(sb): State<Sandbox>,
    Json(body): Json<FaultsBody>,
) -> Response {
    sb.inject(&body.faults);
    StatusCode::NO_CONTENT.into_response()
}

pub(crate) async fn events(State(sb): State<Sandbox>) -> Response {
    Json(sb.sent_events()).into_response()
}
