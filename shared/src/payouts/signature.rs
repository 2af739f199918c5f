//! Webhook signatures: `Payout-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` over
//! `"<t>.<raw body>"` with the shared secret. Several `v1=` entries may be present while a secret
//! is rotated; any one matching a configured secret is enough.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const HEADER: &str = "payout-signature";
/// Default tolerance between the signature's time and ours.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature header missing")]
    Missing,
    #[error("signature header malformed")]
    Malformed,
    #[error("signature timestamp outside the tolerance")]
    Stale,
    #[error("no signature matches")]
    Mismatch,
}

/// A webhook secret. Never printed: `Debug` shows nothing of it.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, String> {
        let s = secret.as_ref();
        if s.len() < 16 {
            return Err("webhook secret must be at least 16 bytes".into());
        }
        Ok(Self(s.to_vec()))
    }

    fn mac(&self, timestamp_secs: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(timestamp_secs.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The header value for `body` signed at `timestamp_secs`.
    pub fn sign(&self, timestamp_secs: i64, body: &[u8]) -> String {
        let sig = hex::encode(self.mac(timestamp_secs, body).finalize().into_bytes());
        format!("t={timestamp_secs},v1={sig}")
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// Checks `header` against the raw `body` before anything parses it. Comparison is constant
/// time (`Mac::verify_slice`).
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[WebhookSecret],
    now_secs: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    if header.len() > 2048 {
        return Err(SignatureError::Malformed);
    }
    let mut timestamp: Option<i64> = None;
    let mut signatures: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match k {
            "t" => {
                if timestamp.is_some() || v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(SignatureError::Malformed);
                }
                timestamp = Some(v.parse().map_err(|_| SignatureError::Malformed)?);
            }
            "v1" => signatures.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            // Unknown schemes are ignored so the provider can add new ones.
            _ => {}
        }
    }
    let t = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if (now_secs - t).abs() > tolerance_secs {
        return Err(SignatureError::Stale);
    }
    let matched = secrets.iter().any(|secret| {
        signatures
            .iter()
            .any(|sig| secret.mac(t, body).verify_slice(sig).is_ok())
    });
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> WebhookSecret {
        WebhookSecret::new(s).unwrap()
    }

    #[test]
    fn a_signed_body_verifies_and_anything_changed_does_not() {
        let k = secret("whsec_0123456789abcdef");
        let body = br#"{"id":"evt_1"}"#;
        let h = k.sign(1000, body);
        let keys = std::slice::from_ref(&k);
        assert_eq!(verify(Some(&h), body, keys, 1000, 300), Ok(()));
        assert_eq!(
            verify(Some(&h), b"{\"id\":\"evt_2\"}", keys, 1000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                Some(&h),
                body,
                &[secret("whsec_another_secret_x")],
                1000,
                300
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&h), body, keys, 1301, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(Some(&h), body, keys, 699, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(None, body, keys, 1000, 300),
            Err(SignatureError::Missing)
        );
        for bad in [
            "",
            "t=1000",
            "v1=abcd",
            "t=x,v1=00",
            "t=1000,v1=zz",
            "t=1000,t=1000,v1=00",
        ] {
            assert!(verify(Some(bad), body, keys, 1000, 300).is_err(), "{bad}");
        }
    }

    #[test]
    fn rotation_accepts_either_secret_and_either_signature() {
        let old = secret("whsec_old_old_old_old");
        let new = secret("whsec_new_new_new_new");
        let body = b"payload";
        let new_sig = new.sign(50, body);
        let both = format!(
            "{},v1={}",
            old.sign(50, body),
            new_sig.split("v1=").nth(1).unwrap()
        );
        assert_eq!(
            verify(Some(&both), body, std::slice::from_ref(&new), 50, 300),
            Ok(())
        );
        assert_eq!(
            verify(Some(&both), body, std::slice::from_ref(&old), 50, 300),
            Ok(())
        );
        let only_old = old.sign(50, body);
        assert_eq!(verify(Some(&only_old), body, &[new, old], 50, 300), Ok(()));
    }

    #[test]
    fn debug_hides_the_secret() {
        assert!(!format!("{:?}", secret("whsec_visible_visible")).contains("visible"));
    }
}
