//! Registry credentials. The ECR authorization token comes from the SDK
//! (GetAuthorizationToken) and lives only in a `SecretString`; it is never printed or logged.

use crate::error::{Error, Result};
use base64::Engine as _;
use bollard::auth::DockerCredentials;
use secrecy::{ExposeSecret, SecretString};
use std::fmt;

/// Credentials for one registry host.
pub struct RegistryAuth {
    /// Registry host (no scheme), e.g. `123456789012.dkr.ecr.us-east-1.amazonaws.com`.
    pub host: String,
    username: String,
    password: SecretString,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("host", &self.host)
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .finish()
    }
}

impl RegistryAuth {
    /// Decode an ECR token (`base64("AWS:<password>")`) for `proxy_endpoint`.
    pub fn from_ecr_token(token: &SecretString, proxy_endpoint: &str) -> Result<Self> {
        let bad = || {
            Error::failure("ECR returned an authorization token in an unexpected format")
                .with_help("retry; if it persists, check the ECR endpoint configuration")
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token.expose_secret().trim())
            .map_err(|_| bad())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
        let (username, password) = decoded.split_once(':').ok_or_else(bad)?;
        Ok(Self {
            host: registry_host(proxy_endpoint),
            username: username.to_string(),
            password: SecretString::from(password.to_string()),
        })
    }

    /// The engine's `X-Registry-Auth` payload. The returned value holds the secret: pass it
    /// straight to bollard, never format it.
    pub fn docker_credentials(&self) -> DockerCredentials {
        DockerCredentials {
            username: Some(self.username.clone()),
            password: Some(self.password.expose_secret().to_string()),
            serveraddress: Some(self.host.clone()),
            ..Default::default()
        }
    }
}

/// `https://host/` -> `host`.
pub fn registry_host(endpoint: &str) -> String {
    let host = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .unwrap_or(endpoint);
    host.trim_end_matches('/').to_string()
}

/// Ask ECR for a registry token (valid 12 hours).
pub async fn ecr_auth(ecr: &aws_sdk_ecr::Client) -> Result<RegistryAuth> {
    let out = ecr.get_authorization_token().send().await.map_err(|e| {
        let detail = aws_sdk_ecr::error::DisplayErrorContext(&e).to_string();
        Error::failure(format!("ECR authorization failed: {detail}")).with_help(
            "check the AWS credentials and region (the caller needs ecr:GetAuthorizationToken)",
        )
    })?;
    let data = out
        .authorization_data()
        .first()
        .ok_or_else(|| Error::failure("ECR returned no authorization data"))?;
    let token = data
        .authorization_token()
        .map(|t| SecretString::from(t.to_string()))
        .ok_or_else(|| Error::failure("ECR returned no authorization token"))?;
    let endpoint = data
        .proxy_endpoint()
        .ok_or_else(|| Error::failure("ECR returned no registry endpoint"))?;
    RegistryAuth::from_ecr_token(&token, endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_token_and_never_debug_prints_it() {
        let token = SecretString::from(
            base64::engine::general_purpose::STANDARD.encode("AWS:s3cr3t-password"),
        );
        let auth = RegistryAuth::from_ecr_token(
            &token,
            "https://123456789012.dkr.ecr.us-east-1.amazonaws.com",
        )
        .expect("valid token");
        assert_eq!(auth.host, "123456789012.dkr.ecr.us-east-1.amazonaws.com");
        let shown = format!("{auth:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        let creds = auth.docker_credentials();
        assert_eq!(creds.username.as_deref(), Some("AWS"));
        assert_eq!(creds.password.as_deref(), Some("s3cr3t-password"));
        assert!(RegistryAuth::from_ecr_token(&SecretString::from("!!".to_string()), "h").is_err());
    }
}
