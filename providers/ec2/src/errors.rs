//! EC2 API errors: each SDK failure sorted into what the engine can act on (throttling
//! and 5xx are transient and retried by the engine, with backoff it counts and shows; a
//! missing object; a dependency still in the way; anything else is permanent). Messages
//! carry the operation, EC2's error code and message, never credentials.

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use clusterform_provider::ProviderError;

/// What kind of failure an EC2 call had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Throttled, a 5xx, a dropped connection or a timeout: worth retrying. Every create
    /// is safe to retry (ClientToken, and a lookup by the op tag before a second try).
    Transient,
    /// The object is not there (`*.NotFound`).
    NotFound,
    /// Another object still depends on it (`DependencyViolation`): teardown waits.
    Dependency,
    /// The rule being added exists already (`InvalidPermission.Duplicate`, ...).
    Duplicate,
    /// No credentials, or they were refused.
    Credentials,
    /// The request went out and its outcome is unknown (a wait that timed out): the
    /// next run looks the object up by its op tag.
    Unknown,
    /// Anything else: EC2 said no.
    Permanent,
}

/// An EC2 call that failed.
#[derive(Clone, Debug, thiserror::Error)]
#[error("EC2 {op}: {message}")]
pub struct ApiError {
    /// The API operation, e.g. `RunInstances`.
    pub op: &'static str,
    /// EC2's error code, e.g. `RequestLimitExceeded`.
    pub code: Option<String>,
    /// EC2's message (or the SDK's, for failures before an answer).
    pub message: String,
    /// How to handle it.
    pub class: Class,
}

/// Error codes EC2 uses for throttling and for being briefly unable to serve.
const TRANSIENT_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "InsufficientInstanceCapacity",
];

const CREDENTIAL_CODES: &[&str] = &[
    "AuthFailure",
    "UnauthorizedOperation",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "RequestExpired",
];

/// Sort an EC2 error code (and HTTP status) into a [`Class`].
pub fn classify_code(code: Option<&str>, status: u16) -> Class {
    let code = code.unwrap_or("");
    if TRANSIENT_CODES.contains(&code) || status == 429 || status >= 500 {
        Class::Transient
    } else if code.ends_with(".NotFound") || code == "Gateway.NotAttached" {
        Class::NotFound
    } else if code == "DependencyViolation" {
        Class::Dependency
    } else if code.ends_with(".Duplicate")
        || code == "RouteAlreadyExists"
        || code == "Resource.AlreadyAssociated"
    {
        Class::Duplicate
    } else if CREDENTIAL_CODES.contains(&code) {
        Class::Credentials
    } else {
        Class::Permanent
    }
}

impl ApiError {
    /// Sort an SDK error of operation `op`.
    pub fn from_sdk<E>(op: &'static str, e: SdkError<E>) -> ApiError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &e {
            SdkError::ServiceError(ctx) => {
                let status = ctx.raw().status().as_u16();
                let code = ctx.err().code().map(str::to_string);
                let message = match (ctx.err().code(), ctx.err().message()) {
                    (Some(c), Some(m)) => format!("{c}: {m}"),
                    (Some(c), None) => c.to_string(),
                    (None, Some(m)) => m.to_string(),
                    (None, None) => format!("HTTP {status}"),
                };
                ApiError {
                    op,
                    class: classify_code(code.as_deref(), status),
                    code,
                    message,
                }
            }
            SdkError::ResponseError(ctx) => {
                let status = ctx.raw().status().as_u16();
                ApiError {
                    op,
                    code: None,
                    message: format!("unreadable answer (HTTP {status})"),
                    class: Class::Transient,
                }
            }
            SdkError::TimeoutError(_) => ApiError {
                op,
                code: None,
                message: "timed out".to_string(),
                class: Class::Transient,
            },
            SdkError::DispatchFailure(_) => {
                let text = DisplayErrorContext(&e).to_string();
                if text.to_ascii_lowercase().contains("credential") {
                    ApiError {
                        op,
                        code: None,
                        message: "no AWS credentials found".to_string(),
                        class: Class::Credentials,
                    }
                } else {
                    ApiError {
                        op,
                        code: None,
                        message: format!("could not reach EC2: {text}"),
                        class: Class::Transient,
                    }
                }
            }
            _ => ApiError {
                op,
                code: None,
                message: DisplayErrorContext(&e).to_string(),
                class: Class::Permanent,
            },
        }
    }

    /// True when the object is not there.
    pub fn is_not_found(&self) -> bool {
        self.class == Class::NotFound
    }

    /// An error made by the provider itself (not from the SDK).
    pub fn other(op: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            op,
            code: None,
            message: message.into(),
            class: Class::Permanent,
        }
    }
}

impl From<ApiError> for ProviderError {
    fn from(e: ApiError) -> ProviderError {
        match e.class {
            Class::Transient => ProviderError::Transient {
                message: e.to_string(),
                retry_after: None,
            },
            Class::Unknown => ProviderError::Ambiguous(e.to_string()),
            Class::Credentials => ProviderError::Config(format!(
                "{e}: give clusterform AWS credentials through the default chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or `profile` in [provider.ec2], `aws sso login`, or an instance role)"
            )),
            _ => ProviderError::Permanent(e.to_string()),
        }
    }
}

/// Shorthand: map an SDK result's error into an [`ApiError`].
pub trait Op<T> {
    /// Name the operation the error comes from.
    fn op(self, op: &'static str) -> Result<T, ApiError>;
}

impl<T, E> Op<T> for Result<T, SdkError<E>>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    fn op(self, op: &'static str) -> Result<T, ApiError> {
        self.map_err(|e| ApiError::from_sdk(op, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_5xx_are_transient() {
        assert_eq!(
            classify_code(Some("RequestLimitExceeded"), 503),
            Class::Transient
        );
        assert_eq!(
            classify_code(Some("RequestLimitExceeded"), 400),
            Class::Transient
        );
        assert_eq!(classify_code(Some("Whatever"), 500), Class::Transient);
        assert_eq!(classify_code(None, 502), Class::Transient);
        assert_eq!(classify_code(None, 429), Class::Transient);
    }

    #[test]
    fn other_codes() {
        assert_eq!(
            classify_code(Some("InvalidInstanceID.NotFound"), 400),
            Class::NotFound
        );
        assert_eq!(
            classify_code(Some("InvalidVpcID.NotFound"), 400),
            Class::NotFound
        );
        assert_eq!(
            classify_code(Some("DependencyViolation"), 400),
            Class::Dependency
        );
        assert_eq!(
            classify_code(Some("InvalidPermission.Duplicate"), 400),
            Class::Duplicate
        );
        assert_eq!(classify_code(Some("AuthFailure"), 401), Class::Credentials);
        assert_eq!(
            classify_code(Some("InvalidAMIID.Malformed"), 400),
            Class::Permanent
        );
        assert_eq!(
            classify_code(Some("OperationNotPermitted"), 400),
            Class::Permanent
        );
    }

    #[test]
    fn transient_maps_to_the_engines_retry() {
        let e = ApiError {
            op: "RunInstances",
            code: Some("RequestLimitExceeded".into()),
            message: "RequestLimitExceeded: slow down".into(),
            class: Class::Transient,
        };
        let p: ProviderError = e.into();
        assert!(p.is_transient(), "{p}");
        assert!(
            p.to_string()
                .contains("EC2 RunInstances: RequestLimitExceeded"),
            "{p}"
        );
        let p: ProviderError = ApiError::other("RunInstances", "no").into();
        assert!(matches!(p, ProviderError::Permanent(_)));
    }
}
