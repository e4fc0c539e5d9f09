//! Passkeys through webauthn-rs: the options a browser needs to create or use one, and the
//! checks of what it answers (origin, challenge, relying party, signature, user verification).
//! Everything here is JSON in and JSON out, so that the store keeps webauthn-rs's own
//! serialisation and the endpoints never see its types.
//!
//! Every passkey is asked for user verification (a PIN or a biometric on the authenticator),
//! which is what makes a passkey alone an `aal2` sign-in, and registration asks for a
//! discoverable credential, so that the passkey a user adds as a second factor also signs them
//! in without a user name.

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyAuthentication, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, Url, Webauthn, WebauthnBuilder,
};
use webauthn_rs_proto::{AuthenticatorSelectionCriteria, ResidentKeyRequirement};

use crate::config::WebauthnConfig;

/// Why a passkey ceremony cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum PasskeyError {
    /// What the browser sent does not pass (for the logs at debug level, never the client).
    #[error("rejected: {0}")]
    Rejected(String),
    /// Our own state did not read back, or the library refused to start.
    #[error("internal: {0}")]
    Internal(String),
}

fn rejected(e: impl std::fmt::Display) -> PasskeyError {
    PasskeyError::Rejected(e.to_string())
}

fn internal(e: impl std::fmt::Display) -> PasskeyError {
    PasskeyError::Internal(e.to_string())
}

/// A ceremony begun: the options for the browser, the state to keep until it answers, and the
/// challenge that answer will sign (by which the state is found again).
#[derive(Debug)]
pub struct Started {
    pub options: Value,
    pub state: Value,
    pub challenge: Vec<u8>,
}

/// A passkey registered: its credential id and the credential to store.
#[derive(Debug)]
pub struct Registered {
    pub credential_id: Vec<u8>,
    pub credential: Value,
}

/// The relying party of `[webauthn]`.
pub struct Passkeys {
    webauthn: Webauthn,
}

impl Passkeys {
    pub fn new(config: &WebauthnConfig) -> Result<Passkeys, String> {
        let origins = config
            .origins
            .iter()
            .map(|o| Url::parse(o).map_err(|e| format!("webauthn.origins: {o:?}: {e}")))
            .collect::<Result<Vec<Url>, String>>()?;
        let (first, rest) = origins
            .split_first()
            .ok_or("webauthn.origins must list an origin")?;
        let mut builder = WebauthnBuilder::new(&config.rp_id, first)
            .map_err(|e| {
                format!(
                    "webauthn: rp_id {:?} does not fit {first}: {e}",
                    config.rp_id
                )
            })?
            .rp_name(&config.rp_name);
        for origin in rest {
            builder = builder.append_allowed_origin(origin);
        }
        let webauthn = builder.build().map_err(|e| format!("webauthn: {e}"))?;
        Ok(Passkeys { webauthn })
    }

    /// The WebAuthn user handle of `user_id`: the id itself when it is a UUID (the seed's are),
    /// otherwise one derived from it (stable, so a passkey finds its user again).
    pub fn user_handle(user_id: &str) -> Uuid {
        Uuid::parse_str(user_id).unwrap_or_else(|_| {
            let digest = Sha256::digest(user_id.as_bytes());
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&digest[..16]);
            uuid::Builder::from_custom_bytes(bytes).into_uuid()
        })
    }

    /// Registration for `user_id`, excluding the credentials they already hold (a browser
    /// will not make a second passkey on the same authenticator).
    pub fn start_registration(
        &self,
        user_id: &str,
        email: &str,
        display_name: &str,
        existing: &[Value],
    ) -> Result<Started, PasskeyError> {
        let exclude: Vec<_> = passkeys(existing)
            .iter()
            .map(|p| p.cred_id().clone())
            .collect();
        let display = if display_name.is_empty() {
            email
        } else {
            display_name
        };
        let (mut ccr, state) = self
            .webauthn
            .start_passkey_registration(Self::user_handle(user_id), email, display, Some(exclude))
            .map_err(internal)?;
        // A discoverable credential: the same passkey signs in without a user name.
        let selection = ccr
            .public_key
            .authenticator_selection
            .get_or_insert_with(AuthenticatorSelectionCriteria::default);
        selection.resident_key = Some(ResidentKeyRequirement::Required);
        selection.require_resident_key = true;
        let challenge = ccr.public_key.challenge.to_vec();
        Ok(Started {
            options: serde_json::to_value(&ccr).map_err(internal)?,
            state: serde_json::to_value(&state).map_err(internal)?,
            challenge,
        })
    }

    /// Checks a registration answer against its state: the passkey to store.
    pub fn finish_registration(
        &self,
        answer: &RegisterPublicKeyCredential,
        state: &Value,
    ) -> Result<Registered, PasskeyError> {
        let state: PasskeyRegistration = serde_json::from_value(state.clone()).map_err(internal)?;
        let passkey = self
            .webauthn
            .finish_passkey_registration(answer, &state)
            .map_err(rejected)?;
        Ok(Registered {
            credential_id: passkey.cred_id().to_vec(),
            credential: serde_json::to_value(&passkey).map_err(internal)?,
        })
    }

    /// A second-factor check with one of `credentials` (the user's passkeys).
    pub fn start_verification(&self, credentials: &[Value]) -> Result<Started, PasskeyError> {
        let keys = passkeys(credentials);
        if keys.is_empty() {
            return Err(rejected("no passkey to verify with"));
        }
        let (rcr, state) = self
            .webauthn
            .start_passkey_authentication(&keys)
            .map_err(internal)?;
        let challenge = rcr.public_key.challenge.to_vec();
        Ok(Started {
            options: serde_json::to_value(&rcr).map_err(internal)?,
            state: serde_json::to_value(&state).map_err(internal)?,
            challenge,
        })
    }

    /// Checks a second-factor answer against its state; the credential id it was made with.
    pub fn finish_verification(
        &self,
        answer: &PublicKeyCredential,
        state: &Value,
    ) -> Result<Used, PasskeyError> {
        let state: PasskeyAuthentication =
            serde_json::from_value(state.clone()).map_err(internal)?;
        let result = self
            .webauthn
            .finish_passkey_authentication(answer, &state)
            .map_err(rejected)?;
        Ok(Used { result })
    }

    /// A passwordless sign-in: options with no credentials listed (the browser offers the
    /// passkeys it holds for this relying party).
    pub fn start_passwordless(&self) -> Result<Started, PasskeyError> {
        let (mut rcr, state) = self
            .webauthn
            .start_discoverable_authentication()
            .map_err(internal)?;
        // webauthn-rs asks for conditional mediation (autofill); the page chooses how to ask.
        rcr.mediation = None;
        let challenge = rcr.public_key.challenge.to_vec();
        Ok(Started {
            options: serde_json::to_value(&rcr).map_err(internal)?,
            state: serde_json::to_value(&state).map_err(internal)?,
            challenge,
        })
    }

    /// The user handle and credential id a passwordless answer names (unchecked until
    /// [`Passkeys::finish_passwordless`]).
    pub fn identify(&self, answer: &PublicKeyCredential) -> Result<(Uuid, Vec<u8>), PasskeyError> {
        self.webauthn
            .identify_discoverable_authentication(answer)
            .map(|(user, credential_id)| (user, credential_id.to_vec()))
            .map_err(rejected)
    }

    /// Checks a passwordless answer against its state and the stored `credential` it names.
    pub fn finish_passwordless(
        &self,
        answer: &PublicKeyCredential,
        state: &Value,
        credential: &Value,
    ) -> Result<Used, PasskeyError> {
        let state: DiscoverableAuthentication =
            serde_json::from_value(state.clone()).map_err(internal)?;
        let passkey: Passkey = serde_json::from_value(credential.clone()).map_err(internal)?;
        let result = self
            .webauthn
            .finish_discoverable_authentication_v2(answer, state, &passkey)
            .map_err(rejected)?;
        Ok(Used { result })
    }
}

/// A passkey that signed a challenge.
pub struct Used {
    result: webauthn_rs::prelude::AuthenticationResult,
}

impl Used {
    pub fn credential_id(&self) -> &[u8] {
        self.result.cred_id()
    }

    /// `credential` as it is after this use (its counter moved on), if that changed it.
    pub fn updated(&self, credential: &Value) -> Option<Value> {
        let mut passkey: Passkey = serde_json::from_value(credential.clone()).ok()?;
        match passkey.update_credential(&self.result) {
            Some(true) => serde_json::to_value(&passkey).ok(),
            _ => None,
        }
    }
}

/// The stored credentials that read as passkeys (one that does not is skipped, not fatal).
fn passkeys(credentials: &[Value]) -> Vec<Passkey> {
    credentials
        .iter()
        .filter_map(|c| serde_json::from_value(c.clone()).ok())
        .collect()
}

/// The challenge an answer signed, as the browser wrote it into `clientDataJSON`.
pub fn challenge_of(client_data_json: &[u8]) -> Option<Vec<u8>> {
    let client_data: Value = serde_json::from_slice(client_data_json).ok()?;
    let challenge = client_data.get("challenge")?.as_str()?;
    URL_SAFE_NO_PAD
        .decode(challenge)
        .or_else(|_| URL_SAFE.decode(challenge))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WebauthnConfig {
        WebauthnConfig {
            rp_id: "example.com".into(),
            rp_name: "Example".into(),
            origins: vec![
                "https://app.example.com".into(),
                "https://example.com:8443".into(),
            ],
        }
    }

    #[test]
    fn registration_asks_for_a_discoverable_user_verified_credential() {
        let passkeys = Passkeys::new(&config()).unwrap();
        let user = "d97464f9-9e80-4a15-8b8b-3faea09de7c9";
        let started = passkeys
            .start_registration(user, "grace@example.com", "Grace Hopper", &[])
            .unwrap();
        let pk = &started.options["publicKey"];
        assert_eq!(pk["rp"]["id"], "example.com");
        assert_eq!(pk["rp"]["name"], "Example");
        assert_eq!(pk["authenticatorSelection"]["residentKey"], "required");
        assert_eq!(pk["authenticatorSelection"]["requireResidentKey"], true);
        assert_eq!(pk["authenticatorSelection"]["userVerification"], "required");
        assert_eq!(pk["user"]["name"], "grace@example.com");
        // The seed's user ids are UUIDs: the handle is the id.
        let handle = URL_SAFE_NO_PAD
            .decode(pk["user"]["id"].as_str().unwrap())
            .unwrap();
        assert_eq!(handle, Uuid::parse_str(user).unwrap().as_bytes());
        assert_eq!(started.challenge.len(), 32);
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(pk["challenge"].as_str().unwrap())
                .unwrap(),
            started.challenge
        );
    }

    #[test]
    fn passwordless_options_list_no_credentials_and_leave_mediation_to_the_page() {
        let passkeys = Passkeys::new(&config()).unwrap();
        let started = passkeys.start_passwordless().unwrap();
        assert!(started.options.get("mediation").is_none());
        let pk = &started.options["publicKey"];
        assert_eq!(pk["rpId"], "example.com");
        assert_eq!(pk["userVerification"], "required");
        assert!(pk["allowCredentials"]
            .as_array()
            .is_none_or(|a| a.is_empty()));
        // The state reads back.
        let _: DiscoverableAuthentication = serde_json::from_value(started.state).unwrap();
    }

    #[test]
    fn a_user_id_that_is_not_a_uuid_has_a_stable_handle_of_its_own() {
        let a = Passkeys::user_handle("42");
        assert_eq!(a, Passkeys::user_handle("42"));
        assert_ne!(a, Passkeys::user_handle("43"));
    }

    #[test]
    fn an_origin_outside_the_rp_id_is_refused() {
        let mut bad = config();
        bad.origins = vec!["https://evil.example.net".into()];
        assert!(Passkeys::new(&bad).is_err());
    }

    #[test]
    fn the_challenge_is_read_from_client_data() {
        let client_data =
            br#"{"type":"webauthn.get","challenge":"AAECAw","origin":"https://example.com"}"#;
        assert_eq!(challenge_of(client_data), Some(vec![0, 1, 2, 3]));
        assert_eq!(challenge_of(b"{}"), None);
        assert_eq!(challenge_of(b"\xff"), None);
    }
}
