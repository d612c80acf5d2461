//! The one error-chain printer: an error with its causes on one line
//! (`error sending request: ... : connection reset by peer`), so that the
//! user sees the cause and not just the top line, without the `Debug` noise
//! of SDK errors.

use std::error::Error;

/// `err` and each of its sources, joined by `: `; a source whose text is
/// empty or already shown is left out.
pub fn chain(err: &dyn Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
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
}
