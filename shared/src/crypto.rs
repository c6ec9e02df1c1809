//! Credentials at rest: sealed with AES-256-GCM under the fleet's credentials key, bound to
//! the job id (as associated data) so a sealed blob cannot be moved to another job.
//!
//! Orchestrators seal, worker nodes open; nothing else ever sees the plaintext.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::JobId;
use crate::job::Credentials;

/// Why sealing or opening failed. Messages never include key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The configured key is not 32 bytes of base64.
    #[error("the credentials key must be 32 bytes encoded as base64 ({0})")]
    BadKey(String),
    /// The sealed blob was tampered with, belongs to another job, or another key sealed it.
    #[error("sealed credentials could not be opened (wrong key, wrong job or corrupted)")]
    Open,
    /// Encryption failed (should not happen with a valid key).
    #[error("credentials could not be sealed")]
    Seal,
}

/// Credentials encrypted for storage: base64 nonce and ciphertext (which includes the tag).
///
/// AES-256-GCM under the fleet's credentials key, with the job id's bytes as associated data;
/// the plaintext is the JSON of `{"apiKey": ..., "apiSecret": ...}`. Both fields are standard
/// base64 with padding.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct SealedCredentials {
    /// The 96-bit (12-byte) random nonce, base64: 16 characters.
    #[schemars(regex(pattern = NONCE_PATTERN))]
    pub nonce: String,
    /// The ciphertext followed by the 16-byte authentication tag, base64.
    #[schemars(regex(pattern = CIPHERTEXT_PATTERN), length(min = 24))]
    pub ciphertext: String,
}

/// The shape of a sealed nonce: 12 bytes as standard base64 (the admission script checks it).
pub const NONCE_PATTERN: &str = "^[A-Za-z0-9+/]{16}$";

/// The shape of a sealed ciphertext: standard base64 with padding (the admission script checks
/// it, and that it holds at least the 16-byte tag).
pub const CIPHERTEXT_PATTERN: &str =
    "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$";

impl std::fmt::Debug for SealedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealedCredentials(..)")
    }
}

/// Seals and opens [`Credentials`] with one 256-bit key.
#[derive(Clone)]
pub struct CredentialCipher {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for CredentialCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialCipher(..)")
    }
}

impl CredentialCipher {
    /// A cipher from a base64-encoded 32-byte key (as configured).
    pub fn from_base64(key: &str) -> Result<Self, CryptoError> {
        let bytes = B64
            .decode(key.trim())
            .map_err(|_| CryptoError::BadKey("not valid base64".into()))?;
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey(format!(
                "decoded to {} bytes",
                bytes.len()
            )));
        }
        Ok(Self {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
        })
    }

    /// A cipher with a fresh random key: for the embedded mode, where one process both seals
    /// and opens.
    pub fn ephemeral() -> Self {
        Self {
            cipher: Aes256Gcm::new(&Aes256Gcm::generate_key(OsRng)),
        }
    }

    /// A fresh random key as base64, for operators to put in their config.
    pub fn generate_key_base64() -> String {
        B64.encode(Aes256Gcm::generate_key(OsRng))
    }

    /// Encrypts `credentials` for `job`.
    pub fn seal(
        &self,
        job: &JobId,
        credentials: &Credentials,
    ) -> Result<SealedCredentials, CryptoError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let plaintext = serde_json::to_vec(credentials).map_err(|_| CryptoError::Seal)?;
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plaintext,
                    aad: job.as_str().as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Seal)?;
        Ok(SealedCredentials {
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(ciphertext),
        })
    }

    /// Decrypts credentials sealed for `job`.
    pub fn open(
        &self,
        job: &JobId,
        sealed: &SealedCredentials,
    ) -> Result<Credentials, CryptoError> {
        let nonce = B64.decode(&sealed.nonce).map_err(|_| CryptoError::Open)?;
        if nonce.len() != 12 {
            return Err(CryptoError::Open);
        }
        let ciphertext = B64
            .decode(&sealed.ciphertext)
            .map_err(|_| CryptoError::Open)?;
        let plaintext = self
            .cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: job.as_str().as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Open)?;
        serde_json::from_slice(&plaintext).map_err(|_| CryptoError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            api_key: "key-abc".into(),
            api_secret: "secret-xyz".into(),
        }
    }

    #[test]
    fn round_trip_and_no_plaintext_in_the_sealed_form() {
        let c = CredentialCipher::from_base64(&CredentialCipher::generate_key_base64()).unwrap();
        let job = JobId::new("job-1");
        let sealed = c.seal(&job, &creds()).unwrap();
        let stored = serde_json::to_string(&sealed).unwrap();
        assert!(!stored.contains("secret-xyz") && !stored.contains("key-abc"));
        assert_eq!(c.open(&job, &sealed).unwrap(), creds());
    }

    #[test]
    fn sealed_credentials_are_bound_to_their_job_and_key() {
        let c = CredentialCipher::ephemeral();
        let sealed = c.seal(&JobId::new("job-1"), &creds()).unwrap();
        assert!(c.open(&JobId::new("job-2"), &sealed).is_err());
        assert!(
            CredentialCipher::ephemeral()
                .open(&JobId::new("job-1"), &sealed)
                .is_err()
        );
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(CredentialCipher::from_base64("not base64!").is_err());
        assert!(CredentialCipher::from_base64("c2hvcnQ=").is_err());
    }
}
