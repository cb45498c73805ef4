//! The ACME account: loaded from the state when there is one, else registered with the CA
//! (contact address, external account binding) and stored. One per CA directory.

use std::sync::Arc;

use instant_acme::{Account, AccountCredentials, ExternalAccountKey, NewAccount};
use tracing::info;

use crate::client::{CaClient, RetryAfter};
use crate::store::CertificateStore;
use crate::{AcmeError, AcmeSettings};

pub(crate) struct Accounts {
    settings: AcmeSettings,
    disk: Arc<dyn CertificateStore>,
    retry_after: RetryAfter,
    slot: tokio::sync::Mutex<Option<Account>>,
}

impl Accounts {
    pub fn new(
        settings: AcmeSettings,
        disk: Arc<dyn CertificateStore>,
        retry_after: RetryAfter,
    ) -> Self {
        Accounts {
            settings,
            disk,
            retry_after,
            slot: tokio::sync::Mutex::new(None),
        }
    }

    fn ca_client(&self) -> Result<Box<CaClient>, AcmeError> {
        Ok(Box::new(CaClient::new(
            self.settings.ca_roots.as_deref(),
            self.retry_after.clone(),
        )?))
    }

    fn ca_error(&self, action: &'static str) -> impl FnOnce(instant_acme::Error) -> AcmeError + '_ {
        move |source| AcmeError::Ca {
            directory: self.settings.directory_url.clone(),
            action,
            source,
        }
    }

    /// The account, loaded from the state if there is one; `None` otherwise (never creates).
    pub async fn existing(&self) -> Option<Account> {
        let mut slot = self.slot.lock().await;
        if let Some(a) = slot.as_ref() {
            return Some(a.clone());
        }
        let creds = self
            .disk
            .load_account(&self.settings.directory_url)
            .ok()??;
        let creds: AccountCredentials = serde_json::from_slice(&creds).ok()?;
        let a = Account::builder_with_http(self.ca_client().ok()?)
            .from_credentials(creds)
            .await
            .ok()?;
        *slot = Some(a.clone());
        Some(a)
    }

    /// The account: loaded from the state, or registered with the CA and stored.
    pub async fn get_or_register(&self) -> Result<Account, AcmeError> {
        let mut slot = self.slot.lock().await;
        if let Some(a) = slot.as_ref() {
            return Ok(a.clone());
        }
        let dir = &self.settings.directory_url;
        let account = match self.disk.load_account(dir)? {
            Some(bytes) => {
                let creds: AccountCredentials =
                    serde_json::from_slice(&bytes).map_err(|e| AcmeError::BadFile {
                        path: self.disk.describe().into(),
                        reason: format!("the stored account for {dir} is unreadable: {e}"),
                    })?;
                Account::builder_with_http(self.ca_client()?)
                    .from_credentials(creds)
                    .await
                    .map_err(self.ca_error("loading the account"))?
            }
            None => {
                let contact: Vec<String> = self
                    .settings
                    .email
                    .iter()
                    .map(|e| format!("mailto:{e}"))
                    .collect();
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let eab = self
                    .settings
                    .eab
                    .as_ref()
                    .map(|e| ExternalAccountKey::new(e.kid.clone(), &e.hmac_key));
                let (account, creds) = Account::builder_with_http(self.ca_client()?)
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        dir.clone(),
                        eab.as_ref(),
                    )
                    .await
                    .map_err(self.ca_error("registering the account"))?;
                let bytes = serde_json::to_vec_pretty(&creds)
                    .map_err(|e| AcmeError::Certificate(format!("account credentials: {e}")))?;
                self.disk.save_account(dir, &bytes)?;
                info!(directory = %dir, account = %account.id(), "ACME account registered");
                account
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }
}
