//! `keel keys init`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::init;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a Secure Boot key hierarchy (PK, KEK, db: RSA 2048) in a new
    /// directory. Prints names, expiry and fingerprints, never key material.
    Init(InitArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory to create (must be missing or empty).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Who owns the keys: certificate subjects are "CN=<OWNER> PK" etc.
    #[arg(long, default_value = "Keel", value_name = "OWNER")]
    pub owner: String,
}

pub fn run(command: &Command) -> anyhow::Result<()> {
    match command {
        Command::Init(args) => {
            let made = init(&args.out, &args.owner, time::OffsetDateTime::now_utc())?;
            println!("Secure Boot keys in {} (RSA 2048; keys 0600)", args.out.display());
            for s in &made {
                let expires = s
                    .not_after
                    .replace_nanosecond(0)
                    .unwrap_or(s.not_after)
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|_| s.not_after.to_string());
                println!("  {:<4} {}, expires {expires}", s.name, s.subject);
                println!("       sha256 {}", s.fingerprint);
            }
            println!("sign images with: keel build --secure-boot-key {}", args.out.display());
            println!("keep the .key files offline; only db.key is needed to sign");
            Ok(())
        }
    }
}
