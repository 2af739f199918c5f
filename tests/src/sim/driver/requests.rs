//! The user API's operations through the real handler: credits, requests, cancels, reads.

use super::{ulid_text, user, Done, World, CALL_TIMEOUT};
use crate::faults::{Fault as StoreFault, FaultyStore, When};
use crate::sim::model::{Fact, Model};
use crate::sim::ops::{Invalid, KeyUse, RefUse, RequestSpec, StoreFaultSpec, CCYS};
use crate::{credit_record, ApiRequest, ACCOUNTS};
use rust_decimal::Decimal;
use serde_json::json;
use shared::store::Refusal;
use shared::store::{Store, StoreError};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

impl World {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn credit(
        &self,
        model: &Model,
        step: usize,
        u: usize,
        ccy: usize,
        amount: &str,
        reference: &RefUse,
        fault: Option<&StoreFaultSpec>,
    ) -> Done {
        let mut d = Done::default();
        let (reference, who, ccy_code, amount, conflict) = match reference {
            RefUse::New => {
                let n = {
                    let mut s = self.credit_seq.lock().unwrap();
                    *s += 1;
                    *s
                };
                (
                    format!("cr-{}-{step}-{n}", self.seed),
                    user(u),
                    CCYS[ccy].to_string(),
                    amount.to_string(),
                    false,
                )
            }
            RefUse::Replay(pick) | RefUse::Conflict(pick) => {
                let Some((r, (who, c, a))) = model.earlier_credit(*pick) else {
                    d.line("no credit to replay");
                    return d;
                };
                let conflict = matches!(reference, RefUse::Conflict(_));
                let a = if conflict { a + Decimal::ONE } else { a };
                (r, who, c, a.to_string(), conflict)
            }
        };
        let record = credit_record(
            self.p.env.currencies.get(&ccy_code).unwrap(),
            &who,
            &amount,
            &reference,
        );
        let value = record.amount.value();
        let attempt = |faulty: Option<Arc<FaultyStore>>, limit: Duration| {
            let store = self.p.env.store.clone();
            let record = record.clone();
            async move {
                let call = async {
                    match &faulty {
                        Some(f) => f.credit(&record).await,
                        None => store.credit(&record).await,
                    }
                };
                tokio::time::timeout(limit, call).await.ok()
            }
        };
        let hangs = fault.is_some_and(|f| matches!(f.when, When::HangBefore | When::HangAfter));
        let faulty = fault.map(|f| {
            Arc::new(FaultyStore::new(
                self.p.env.store.clone(),
                vec![StoreFault::new(f.method, f.nth, f.when)],
            ))
        });
        let mut result = attempt(
            faulty.clone(),
            if hangs {
                CALL_TIMEOUT
            } else {
                Duration::from_secs(10)
            },
        )
        .await;
        let fired = self.count_fired(&faulty);
        let mut tries = 1;
        // An operator whose credit got no clear answer runs it again: a reference credits once.
        while !matches!(
            result,
            Some(Ok(_)) | Some(Err(StoreError::Refused(Refusal::ReferenceReused(_))))
        ) && tries < 3
        {
            result = attempt(None, Duration::from_secs(10)).await;
            tries += 1;
        }
        let landed = match &result {
            Some(Ok(_)) => Some(true),
            Some(Err(StoreError::Refused(Refusal::ReferenceReused(_)))) => Some(false),
            _ => None,
        };
        if conflict && landed == Some(true) {
            d.bad(format!(
                "credit {reference} reused for another amount was accepted"
            ));
        }
        if !conflict && landed == Some(false) {
            d.bad(format!(
                "credit {reference} replayed as the same credit was refused"
            ));
        }
        d.line(format!(
            "credit {reference} {who} {ccy_code} {amount}: {} (faults {fired:?}, tries {tries})",
            match &result {
                Some(Ok(o)) => format!("{o:?}").split('(').next().unwrap_or("").to_string(),
                Some(Err(e)) => format!("error {e}"),
                None => "no answer".into(),
            }
        ));
        d.facts.push(Fact::Credit {
            reference,
            user: who,
            ccy: ccy_code,
            amount: value,
            landed,
        });
        d
    }

    pub(super) async fn request(
        &self,
        model: &Model,
        spec: &RequestSpec,
        fault: Option<&StoreFaultSpec>,
        shared_key: Option<String>,
    ) -> Done {
        let mut d = Done::default();
        let who = user(spec.user);
        // Resolve the key (and, for a replay, the earlier request's body).
        let (key, spec) = match &spec.key {
            KeyUse::Fresh => (
                Some(shared_key.unwrap_or_else(|| format!("k-{}", ulid_text()))),
                spec.clone(),
            ),
            KeyUse::Missing => (None, spec.clone()),
            KeyUse::Replay(pick) => match model.earlier_key(&who, *pick) {
                Some((k, body)) => (
                    Some(k),
                    spec_from_normal(spec.user, &body, spec.key.clone()),
                ),
                None => (Some(format!("k-{}", ulid_text())), spec.clone()),
            },
            KeyUse::Reuse(pick) => match model.earlier_key(&who, *pick) {
                Some((k, body)) => {
                    let mut s = spec.clone();
                    if normal_body(&s) == body {
                        s.account = (s.account + 1) % ACCOUNTS.len();
                    }
                    (Some(k), s)
                }
                None => (Some(format!("k-{}", ulid_text())), spec.clone()),
            },
        };
        let (app, faulty) = self.request_app(fault);
        let mut ev = ApiRequest::new("POST", "/withdrawals")
            .user(&who)
            .body(request_body(&spec));
        if let Some(k) = &key {
            ev = ev.header("idempotency-key", k);
        }
        let hangs = fault.is_some_and(|f| matches!(f.when, When::HangBefore | When::HangAfter));
        let resp = self.api_maybe_hanging(&app, ev.build(), hangs).await;
        let fired = self.count_fired(&faulty);
        self.stat(|s| {
            s.requests += 1;
            if spec.invalid.is_none() && key.is_some() {
                s.valid_requests += 1;
            }
        });
        let (status, code, replayed, id) = match &resp {
            Some(r) => (
                r.status,
                r.error_code(),
                r.replayed,
                r.json()["id"].as_str().map(str::to_string),
            ),
            None => (0, String::new(), false, None),
        };
        d.line(format!(
            "POST {who} {} key={} → {status} {code}{}{} (faults {fired:?})",
            normal_body(&spec),
            key.as_deref().map(|k| &k[..k.len().min(10)]).unwrap_or("-"),
            id.as_deref().map(|i| format!(" {i}")).unwrap_or_default(),
            if replayed { " replayed" } else { "" },
        ));
        if status == 201 && !replayed {
            self.stat(|s| s.accepted += 1);
        }
        if replayed {
            self.stat(|s| s.replays += 1);
        }
        if key.is_none() {
            if status != 400 || code != "missing_idempotency_key" {
                d.bad(format!("a POST without a key answered {status} {code}"));
            }
            return d;
        }
        if let Some(invalid) = spec.invalid {
            // The key wins: under a recorded key the refused body is another request (422);
            // under any other, the refusal. The record is read only on this path, so a fault
            // there answers 503 (or hangs) like any.
            let refused = status == 400 && code == invalid.code();
            let reused = status == 422 && code == "idempotency_key_reused";
            let recorded = key.as_deref().and_then(|k| model.key_recorded(&who, k));
            let ok = match (status, recorded) {
                (0, _) => hangs,
                (500..=599, _) => !fired.is_empty(),
                (_, Some(true)) => reused,
                (_, Some(false)) => refused,
                (_, None) => refused || reused,
            };
            if !ok {
                d.bad(format!(
                    "invalid request ({invalid:?}) under a key recorded {recorded:?} answered {status} {code}"
                ));
            }
            return d;
        }
        let ok = match status {
            // The client stops waiting on a call armed to hang, whether or not the hang was
            // reached yet (a slow machine): the same ambiguous answer either way.
            0 => hangs,
            201 => id.is_some(),
            409 => [
                "insufficient_funds",
                "too_many_pending",
                "daily_limit_exceeded",
            ]
            .contains(&code.as_str()),
            422 => code == "idempotency_key_reused",
            500..=599 => !fired.is_empty(),
            _ => false,
        };
        if !ok {
            d.bad(format!("request answered {status} {code}"));
        }
        let amount = Decimal::from_str_exact(&spec.amount).unwrap_or_default();
        d.facts.push(Fact::Request {
            user: who,
            key,
            body: normal_body(&spec),
            ccy: CCYS[spec.ccy].to_string(),
            amount,
            status,
            id,
            replayed,
        });
        d
    }

    pub(super) async fn cancel(
        &self,
        model: &Model,
        u: usize,
        pick: u64,
        fault: Option<&StoreFaultSpec>,
    ) -> Done {
        let mut d = Done::default();
        let who = user(u);
        let mine = model.accepted_of(&who);
        let (id, known) = if mine.is_empty() {
            (shared::domain::WithdrawalId::new().to_string(), false)
        } else {
            (mine[(pick % mine.len() as u64) as usize].clone(), true)
        };
        let (app, faulty) = self.request_app(fault);
        let hangs = fault.is_some_and(|f| matches!(f.when, When::HangBefore | When::HangAfter));
        let req = ApiRequest::new("DELETE", &format!("/withdrawals/{id}"))
            .user(&who)
            .build();
        let resp = self.api_maybe_hanging(&app, req, hangs).await;
        let fired = self.count_fired(&faulty);
        let (status, code) = resp
            .as_ref()
            .map(|r| (r.status, r.error_code()))
            .unwrap_or((0, String::new()));
        d.line(format!(
            "DELETE {who} {id} → {status} {code} (faults {fired:?})"
        ));
        let ok = match (status, known) {
            (200, true) => resp.as_ref().unwrap().json()["status"] == "CANCELLED",
            (409, true) => code == "not_cancellable",
            (404, false) => true,
            (0, _) => hangs,
            (500..=599, _) => !fired.is_empty(),
            _ => false,
        };
        if !ok {
            d.bad(format!("cancel of {id} answered {status} {code}"));
        }
        d
    }

    pub(super) async fn get(&self, model: &Model, u: usize, pick: u64) -> Done {
        let mut d = Done::default();
        let who = user(u);
        let mine = model.accepted_of(&who);
        if mine.is_empty() {
            return d;
        }
        let id = &mine[(pick % mine.len() as u64) as usize];
        let (app, _) = self.request_app(None);
        let req = ApiRequest::new("GET", &format!("/withdrawals/{id}"))
            .user(&who)
            .build();
        let Some(r) = self.api(&app, req).await else {
            d.bad("GET hung");
            return d;
        };
        let status = r.json()["status"].as_str().unwrap_or("").to_string();
        d.line(format!("GET {who} {id} → {} {status}", r.status));
        if r.status != 200 || r.json()["id"] != id.as_str() {
            d.bad(format!("GET of own {id} answered {}", r.status));
        }
        d.facts.push(Fact::Seen {
            user: who,
            id: id.clone(),
            status,
        });
        d
    }

    pub(super) async fn list(&self, model: &Model, u: usize, status: Option<&'static str>) -> Done {
        let mut d = Done::default();
        let who = user(u);
        let (app, _) = self.request_app(None);
        let mut cursor: Option<String> = None;
        let mut seen = BTreeSet::new();
        for _ in 0..50 {
            let mut q = String::from("/withdrawals?limit=7");
            if let Some(s) = status {
                q.push_str(&format!("&status={s}"));
            }
            if let Some(c) = &cursor {
                q.push_str(&format!("&cursor={c}"));
            }
            let Some(r) = self
                .api(&app, ApiRequest::new("GET", &q).user(&who).build())
                .await
            else {
                d.bad("list hung");
                return d;
            };
            if r.status != 200 {
                d.bad(format!("list answered {} {}", r.status, r.error_code()));
                return d;
            }
            let v = r.json();
            for item in v["items"].as_array().cloned().unwrap_or_default() {
                let id = item["id"].as_str().unwrap_or("").to_string();
                let st = item["status"].as_str().unwrap_or("").to_string();
                if status.is_some_and(|s| s != st) {
                    d.bad(format!("list filtered by {status:?} returned {id} {st}"));
                }
                if !seen.insert(id.clone()) {
                    d.bad(format!("list returned {id} twice"));
                }
                d.facts.push(Fact::Seen {
                    user: who.clone(),
                    id,
                    status: st,
                });
            }
            cursor = v["next_cursor"].as_str().map(str::to_string);
            if cursor.is_none() {
                break;
            }
        }
        if status.is_none() {
            for id in model.accepted_of(&who) {
                if !seen.contains(&id) {
                    d.bad(format!("{who}: {id} answered 201 but not listed"));
                }
            }
        }
        d.line(format!("list {who} {status:?} → {} items", seen.len()));
        d
    }

    pub(super) async fn balances(&self, u: usize) -> Done {
        let mut d = Done::default();
        let who = user(u);
        let (app, _) = self.request_app(None);
        let Some(r) = self
            .api(&app, ApiRequest::new("GET", "/balances").user(&who).build())
            .await
        else {
            d.bad("balances hung");
            return d;
        };
        if r.status != 200 {
            d.bad(format!("balances answered {}", r.status));
        }
        for b in r.json().as_array().cloned().unwrap_or_default() {
            for field in ["available", "locked"] {
                let v: Decimal = b[field].as_str().unwrap_or("0").parse().unwrap_or_default();
                if v < Decimal::ZERO {
                    d.bad(format!("{who} {}: {field} {v} < 0", b["currency"]));
                }
            }
        }
        d.line(format!("balances {who} → {}", r.body));
        d
    }
}

fn request_body(spec: &RequestSpec) -> String {
    let ccy = CCYS[spec.ccy];
    let yen = ccy == "JPY";
    let mut v = json!({"currency": ccy, "amount": spec.amount, "beneficiary_id": super::beneficiary(spec.account)});
    match spec.invalid {
        None => {}
        Some(Invalid::Currency) => v["currency"] = json!("GBP"),
        Some(Invalid::BelowMinimum) => v["amount"] = json!(if yen { "50" } else { "0.50" }),
        Some(Invalid::AboveMaximum) => {
            v["amount"] = json!(if yen { "5000001" } else { "50000.01" })
        }
        Some(Invalid::BankAccount) => v["bank_account"] = json!("DE89370400440532013001"),
        Some(Invalid::ExtraField) => v["user_id"] = json!("someone-else"),
        Some(Invalid::Json) => return r#"{"currency":"USD","amount":"#.to_string(),
        Some(Invalid::Amount) => v["amount"] = json!(if yen { "1.5" } else { "1.001" }),
    }
    v.to_string()
}

/// The model's form of a valid request: "USD|12.50|0".
fn normal_body(spec: &RequestSpec) -> String {
    format!("{}|{}|{}", CCYS[spec.ccy], spec.amount, spec.account)
}

fn spec_from_normal(user: usize, body: &str, key: KeyUse) -> RequestSpec {
    let parts: Vec<&str> = body.split('|').collect();
    RequestSpec {
        user,
        ccy: CCYS.iter().position(|c| *c == parts[0]).unwrap(),
        amount: parts[1].to_string(),
        account: parts[2].parse().unwrap(),
        key,
        invalid: None,
    }
}
