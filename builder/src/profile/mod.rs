//! Profiles (pinned component versions) and roles, resolved into the one
//! manifest that says what goes into an image.

pub mod resolved;
