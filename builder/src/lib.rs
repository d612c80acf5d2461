//! keel: builds immutable Kubernetes node images for AWS, publishes them as
//! AMIs, and creates the cluster's encrypted TLS assets.
//!
//! The library behind the `keel` command: [`Cli`] is the command line,
//! [`run`] hands each subcommand to the module that does the work; the
//! pipeline itself reads top to bottom in those modules (see DESIGN.md).
//! Besides the command line, the public API is [`Tools`], the build's
//! tools tree, which the QEMU benchmark harness uses too, and
//! [`fetch_file`], the verified artifact cache for test fixture steps.

use clap::{CommandFactory, Parser, Subcommand};

mod assets;
mod etcd;
mod fetch;
mod iam_policy;
mod image;
mod man;
mod pin;
mod profile;
mod publish;
mod secureboot;
mod userdata;

pub use fetch::{fetch_file, FetchError};
pub use image::tools::Tools;
pub use image::BuildError;

/// Build, publish and provision immutable Kubernetes node images for AWS.
#[derive(Debug, Parser)]
#[command(name = "keel", version, max_term_width = 80)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the fully resolved, pinned manifest for a profile and role.
    Resolve(profile::command::ResolveArgs),
    /// Download and verify a profile's artifacts into the cache.
    Fetch(fetch::command::FetchArgs),
    /// Bump one component's pinned version and digest in a profile.
    Pin(pin::PinArgs),
    /// Publish a built image as an AMI in one or more regions.
    Publish(publish::PublishArgs),
    /// Create, publish and list the cluster's encrypted TLS assets.
    #[command(subcommand)]
    Assets(assets::Command),
    /// Render a node's user data for a launch template.
    Userdata(userdata::UserdataArgs),
    /// Print the IAM policy of a node role's instance profile.
    IamPolicy(iam_policy::IamPolicyArgs),
    /// Build a role's bootable disk image (GPT, UKI, verified /usr).
    Build(image::command::BuildArgs),
    /// Print the manifest stored inside a disk image.
    Inspect(image::command::InspectArgs),
    /// List the etcd cluster's snapshots in S3; choose one to restore.
    #[command(subcommand)]
    Etcd(etcd::Command),
    /// Explain how two images differ: manifest, SBOM, partitions, then the
    /// first differing file in /usr.
    Diff(image::diff::DiffArgs),
    /// Create the UEFI Secure Boot keys that sign images.
    #[command(subcommand)]
    Keys(secureboot::command::Command),
    /// Write a man page for keel and each of its subcommands.
    Man(man::ManArgs),
}

/// Runs one `keel` command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Resolve(args) => profile::command::run(&args),
        Command::Fetch(args) => fetch::command::run(&args).await,
        Command::Pin(args) => pin::run(&args).await,
        Command::Publish(args) => publish::run(args).await,
        Command::Assets(command) => assets::run(command).await,
        Command::Userdata(args) => userdata::run(&args),
        Command::IamPolicy(args) => iam_policy::run(&args),
        Command::Build(args) => image::command::run(&args).await,
        Command::Inspect(args) => image::command::inspect(&args),
        Command::Etcd(command) => etcd::run(command).await,
        Command::Diff(args) => image::diff::run(&args),
        Command::Keys(command) => secureboot::command::run(&command),
        Command::Man(args) => man::run(&args, Cli::command()),
    }
}
