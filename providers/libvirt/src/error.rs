//! Errors of the libvirt provider and how libvirt's own errors become messages that say
//! what to do (socket permission, daemon not running, missing image, name clashes).

use clusterform_provider::ProviderError;
use virt::error::{Error as VirtError, ErrorNumber};

/// What went wrong in the libvirt provider.
#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    /// Connecting failed.
    #[error("cannot connect to libvirt at `{uri}`: {message}")]
    Connect {
        /// The URI.
        uri: String,
        /// What libvirt said, with what to do.
        message: String,
    },
    /// A libvirt call failed.
    #[error("{what}: {source}")]
    Call {
        /// What was being done.
        what: String,
        /// libvirt's error.
        source: VirtError,
    },
    /// An object with the name exists and is not this resource's.
    #[error("{0}")]
    Clash(String),
    /// The image cannot be used.
    #[error("{0}")]
    Image(String),
    /// A local file could not be written or read.
    #[error("{what} `{path}`: {source}")]
    File {
        /// What was being done.
        what: String,
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A bad attribute value.
    #[error("{0}")]
    Invalid(String),
    /// Something this provider did not expect from libvirt.
    #[error("{0}")]
    Unexpected(String),
}

/// The provider's result type.
pub type Result<T, E = LibvirtError> = std::result::Result<T, E>;

/// Attach what was being done to a libvirt call's error.
pub(crate) trait Ctx<T> {
    /// `what` failed.
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Ctx<T> for std::result::Result<T, VirtError> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| LibvirtError::Call {
            what: what(),
            source,
        })
    }
}

/// True when libvirt says the object does not exist.
pub(crate) fn is_missing(e: &VirtError) -> bool {
    matches!(
        e.code().unwrap_or(ErrorNumber::InternalError),
        ErrorNumber::NoDomain
            | ErrorNumber::NoNetwork
            | ErrorNumber::NoStoragePool
            | ErrorNumber::NoStorageVolume
    )
}

/// True when the driver does not implement the call (the test driver lacks some).
pub(crate) fn is_unsupported(e: &VirtError) -> bool {
    matches!(
        e.code().unwrap_or(ErrorNumber::InternalError),
        ErrorNumber::NoSupport | ErrorNumber::OperationUnsupported
    )
}

/// The message for a failed connection: what libvirt said and what to do about it.
pub(crate) fn connect_error(uri: &str, e: &VirtError) -> LibvirtError {
    let said = e.message().to_string();
    let lower = said.to_ascii_lowercase();
    let hint = if lower.contains("permission denied")
        || lower.contains("authentication")
        || matches!(
            e.code().unwrap_or(ErrorNumber::InternalError),
            ErrorNumber::AuthFailed
                | ErrorNumber::AuthUnavailable
                | ErrorNumber::AuthCancelled
                | ErrorNumber::OperationDenied
        ) {
        "permission denied on libvirt's socket: add your user to the `libvirt` group (`sudo usermod -aG libvirt $USER`, then log in again), run as root, or set `[provider.libvirt] uri` to `qemu:///session`"
    } else if lower.contains("no such file") || lower.contains("connection refused") {
        "libvirt's daemon is not running or the socket is elsewhere: start it (`sudo systemctl start libvirtd`, or `virtqemud`), or fix `[provider.libvirt] uri` / `LIBVIRT_DEFAULT_URI`"
    } else {
        "check `[provider.libvirt] uri` (or `LIBVIRT_DEFAULT_URI`) and that libvirt runs there"
    };
    LibvirtError::Connect {
        uri: uri.to_string(),
        message: format!("{said}; {hint}"),
    }
}

impl LibvirtError {
    /// As the engine's error: connection problems and timeouts are transient (retried),
    /// the rest permanent.
    pub fn into_provider(self) -> ProviderError {
        match &self {
            LibvirtError::Call { source, .. }
                if matches!(
                    source.code().unwrap_or(ErrorNumber::InternalError),
                    ErrorNumber::OperationTimeout | ErrorNumber::Rpc
                ) =>
            {
                ProviderError::Transient {
                    message: self.to_string(),
                    retry_after: None,
                }
            }
            _ => ProviderError::Permanent(self.to_string()),
        }
    }
}
