//! Amazon Verified Permissions (AVP) as a policy source, and publishing to it.
//!
//! The sidecar never asks AVP for a decision: [`mirror`] copies a policy store (schema,
//! templates, static and template-linked policies, under AVP's own policy ids) into a
//! [`PolicySnapshot`](crate::policy_store::PolicySnapshot) that decides in-process, and
//! [`refresh`] keeps it current within AVP's low request quotas. [`push`] goes the other
//! way, for teams that author in git.

pub mod mirror;
pub mod push;
pub mod refresh;

use aws_sdk_verifiedpermissions::error::{ProvideErrorMetadata, SdkError};

/// An AVP client, through `verifiedpermissions_endpoint` when configured.
pub fn client(base: &aws_config::SdkConfig, endpoint: Option<&str>) -> aws_sdk_verifiedpermissions::Client {
    let mut builder =
        aws_sdk_verifiedpermissions::config::Builder::from(base).interceptor(crate::otel::AwsTraceContext);
    if let Some(endpoint) = endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    aws_sdk_verifiedpermissions::Client::from_conf(builder.build())
}

/// Why a store could not be read, or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AvpError {
    #[error("Verified Permissions throttled {operation} on policy store `{store}`: {message}")]
    Throttled { operation: &'static str, store: String, message: String },
    #[error(
        "access denied: {operation} on policy store `{store}`: {message} (the role needs `verifiedpermissions:{operation}` on the store)"
    )]
    AccessDenied { operation: &'static str, store: String, message: String },
    #[error("{operation}: policy store `{store}` has no such {what}: {message}")]
    NotFound { operation: &'static str, store: String, what: &'static str, message: String },
    #[error("{operation} on policy store `{store}` failed: {message}")]
    Service { operation: &'static str, store: String, message: String },
    #[error(
        "a refresh may make at most {budget} calls to Verified Permissions, and the store was not read in full \
         ({remaining} definitions known to be left); what was fetched is kept and the next refresh goes on from there \
         (raise `[policies.avp] max_calls_per_refresh` to load faster)"
    )]
    Budget { budget: usize, remaining: usize },
}

impl AvpError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Throttled { .. } => "throttled",
            Self::AccessDenied { .. } => "access_denied",
            Self::NotFound { .. } => "not_found",
            Self::Service { .. } => "service",
            Self::Budget { .. } => "budget",
        }
    }

    /// Whether waiting longer than the poll interval before the next call helps.
    pub fn is_throttling(&self) -> bool {
        matches!(self, Self::Throttled { .. })
    }

    /// Classify an SDK error by its service error code; `what` names the thing a
    /// `ResourceNotFoundException` means is missing.
    pub fn from_sdk<E, R>(operation: &'static str, store: &str, what: &'static str, error: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let code = error.code().unwrap_or_default().to_owned();
        let message = match error.message() {
            Some(message) => format!("{code}: {message}"),
            None => aws_sdk_verifiedpermissions::error::DisplayErrorContext(&error).to_string(),
        };
        let store = store.to_owned();
        match code.as_str() {
            "ThrottlingException" | "TooManyRequestsException" | "ServiceQuotaExceededException" => {
                Self::Throttled { operation, store, message }
            }
            "AccessDeniedException" | "UnrecognizedClientException" | "ExpiredTokenException" => {
                Self::AccessDenied { operation, store, message }
            }
            "ResourceNotFoundException" => Self::NotFound { operation, store, what, message },
            _ => Self::Service { operation, store, message },
        }
    }
}
