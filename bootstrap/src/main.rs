//! keel-bootstrap: configures a Keel node at boot (see `keel_bootstrap::node`
//! and DESIGN.md): identity from the metadata service, user data, the
//! role's assets from S3 and KMS, peers from EC2, then the role's
//! configuration. One console line per step; one clear line and a non-zero
//! exit on failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use keel_bootstrap::{imds, node, retry, status};

/// Configures this node at boot from its metadata, user data and assets.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Root of the file system to configure (tests use a temporary one).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// The instance metadata service.
    #[arg(long, default_value = imds::DEFAULT_BASE_URL, env = "KEEL_IMDS_URL")]
    imds_url: String,
    /// After etcd started: promote this learner once it is in sync, then
    /// free the join lock (keel-etcd-promote.service runs this).
    #[arg(long)]
    etcd_promote: bool,
    /// On the etcd leader: seal a snapshot into S3 and prune old ones
    /// (keel-etcd-snapshot.timer runs this).
    #[arg(long, conflicts_with = "etcd_promote")]
    etcd_snapshot: bool,
    /// On a controller: point kube-apiserver at etcd's current members,
    /// restarting it only if they changed (keel-etcd-servers.timer).
    #[arg(long, conflicts_with_all = ["etcd_promote", "etcd_snapshot"])]
    refresh_etcd_servers: bool,
    /// On a controller, after its API server starts: apply the objects
    /// nodes need to join (keel-join.service), then exit.
    #[arg(long, conflicts_with_all = ["etcd_promote", "etcd_snapshot", "refresh_etcd_servers"])]
    apply_join: bool,
    /// The API server --apply-join talks to.
    #[arg(long, default_value = "https://127.0.0.1:6443")]
    api_server: String,
}

fn main() -> ExitCode {
    keel_bootstrap::aws::install_crypto_provider();
    let args = Args::parse();
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                println!("keel-bootstrap: failed: starting the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
    if args.etcd_promote {
        let layout = keel_bootstrap::layout::Layout::new(&args.root);
        return match runtime
            .block_on(node::etcd::promote_node(&layout, node::etcd::PROMOTE_DEADLINE))
        {
            Ok(()) => {
                println!("keel-bootstrap: etcd member is a voting member");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("keel-bootstrap: etcd promote: failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.apply_join {
        let layout = keel_bootstrap::layout::Layout::new(&args.root);
        let each = retry::Policy::quick();
        let apply =
            node::apply::apply_join(&layout, &args.api_server, &node::apply::READY_POLICY, &each);
        return match runtime.block_on(apply) {
            Ok(applied) => {
                for a in &applied {
                    println!("keel-bootstrap: applied {a}");
                }
                println!("keel-bootstrap: join objects applied to {}", args.api_server);
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("keel-bootstrap: failed: applying the join objects: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let opts = node::Options {
        root: args.root,
        imds_url: args.imds_url,
        imds_policy: retry::Policy::quick(),
        console: Box::new(std::io::stdout()),
    };
    let task = if args.etcd_snapshot {
        Some(("etcd snapshot", runtime.block_on(node::etcd_snapshot(&opts))))
    } else if args.refresh_etcd_servers {
        Some(("etcd servers", runtime.block_on(node::refresh_etcd_servers(&opts))))
    } else {
        None
    };
    if let Some((what, result)) = task {
        return match result {
            Ok(line) => {
                println!("keel-bootstrap: {line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("keel-bootstrap: {what}: failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(node::run(opts)) {
        Ok(done) => {
            if let Err(e) = status::notify_ready() {
                println!("keel-bootstrap: notify: failed: {e}");
                return ExitCode::FAILURE;
            }
            println!(
                "keel-bootstrap: configured {} node {} in {} ms",
                done.role, done.identity.instance_id, done.status.elapsed_millis
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("keel-bootstrap: failed: {e}");
            ExitCode::FAILURE
        }
    }
}
