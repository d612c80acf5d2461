//! The one error-chain printer: an error with its causes on one line
//! (`error sending request: ... : connection reset by peer`), so that the
//! user sees the cause and not just the top line, without the `Debug` noise
//! of SDK errors.

use std::error::Error;

use crate::aws::AwsError;

/// `err` and each of its sources, joined by `: `; a source whose text is
/// empty or already shown is left out, and the chain ends at an
/// [`AwsError`], whose text already says what its sources say (the
/// service's code and message, not the SDK's `service error` wrapper).
pub fn chain(err: &(dyn Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = if summarised_below(err) { None } else { err.source() };
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = if summarised_below(s) { None } else { s.source() };
    }
    parts.join(": ")
}

/// Whether `err`'s own text already covers its sources.
fn summarised_below(err: &(dyn Error + 'static)) -> bool {
    err.is::<AwsError>()
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug, thiserror::Error)]
    #[error("service error")]
    struct Outer(#[source] Inner);
    #[derive(Debug, thiserror::Error)]
    #[error("NoSuchBucket: The specified bucket does not exist")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("fetching x: connection reset")]
    struct Repeats(#[source] Reset);
    #[derive(Debug, thiserror::Error)]
    #[error("connection reset")]
    struct Reset;

    #[test]
    fn error_chain_without_debug_noise() {
        assert_eq!(
            chain(&Outer(Inner)),
            "service error: NoSuchBucket: The specified bucket does not exist"
        );
        assert_eq!(chain(&Repeats(Reset)), "fetching x: connection reset");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("S3 GetObject s3://b/k: {source}")]
    struct Call {
        source: crate::aws::AwsError,
    }

    #[test]
    fn an_aws_error_shows_the_service_code_and_message_once_and_keeps_its_source() {
        use aws_sdk_s3::operation::get_object::GetObjectError;
        use aws_smithy_runtime_api::client::result::SdkError;
        use aws_smithy_runtime_api::http::{Response, StatusCode};
        use aws_smithy_types::body::SdkBody;
        use aws_smithy_types::error::ErrorMetadata;

        let service = GetObjectError::generic(
            ErrorMetadata::builder().code("AccessDenied").message("Access Denied").build(),
        );
        let raw = Response::new(StatusCode::try_from(403).unwrap(), SdkBody::empty());
        let e = Call { source: SdkError::service_error(service, raw).into() };
        assert_eq!(chain(&e), "S3 GetObject s3://b/k: AccessDenied: Access Denied");
        assert_eq!(e.to_string(), chain(&e));
        // The SDK's error is still there, below the summary.
        let sdk = std::error::Error::source(&e).and_then(|s| s.source()).unwrap();
        assert_eq!(sdk.to_string(), "service error");

        let timeout = SdkError::<GetObjectError, Response>::timeout_error("no answer in 60 s");
        let e = Call { source: timeout.into() };
        assert_eq!(chain(&e), "S3 GetObject s3://b/k: request has timed out: no answer in 60 s");
    }
}
